"""deploy/k8s, deploy/prometheus and deploy/grafana: valid, and in agreement with the code.

Kubernetes manifests are validated against the Kubernetes JSON schemas shipped in the
kubernetes-validate package (strict: an unknown field fails), offline. kubeconform would need
its schemas from GitHub, which CI cannot reach, and cannot read the bundled ones (their
$refs are absolute), so it adds nothing here. Alert rules and dashboard queries are parsed
as PromQL (promql-parser, with type checks) and every metric they name must be one a worker
exports; `promtool check` runs as well when promtool is installed (building it from the Go
module proxy takes over ten minutes, too long for CI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import orjson
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from schemas.codec import BundledSchemas
from streams.ops.config import Config, load_config
from streams.processor import Processor

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "auditwatch.json"
COMPOSE = ROOT / "docker-compose.yml"
DOCKER_CONFIG = ROOT / "deploy" / "config.docker.yaml"
DOCKERFILE = ROOT / "Dockerfile"
# The oldest Kubernetes still commonly run, and the newest the schemas cover.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
# Series Prometheus itself adds to every scrape.
PROMETHEUS_SERIES = {"up"}


def manifests() -> dict[str, list[dict[str, Any]]]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def resource(kind: str) -> dict[str, Any]:
    found = [d for docs in manifests().values() for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def workload() -> dict[str, Any]:
    return resource("StatefulSet")


def container() -> dict[str, Any]:
    (c,) = workload()["spec"]["template"]["spec"]["containers"]
    return c


def k8s_config() -> Config:
    data = resource("ConfigMap")["data"]["config.yaml"]
    # Through the real loader, so an unknown key or a bad value fails here.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(data)
        return load_config(path)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(manifests()))
def test_manifest_matches_the_kubernetes_schema(name: str, version: str) -> None:
    for doc in manifests()[name]:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_what_kubernetes_would() -> None:
    # A misspelt field must fail (strict), or the schema check proves nothing.
    bad = workload()
    probe = container()["readinessProbe"]
    bad = json.loads(json.dumps(bad))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = probe
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(manifests())


def test_workers_share_one_consumer_group_and_scale() -> None:
    spec = workload()["spec"]
    assert spec["replicas"] >= 2
    cfg = k8s_config()
    # Every replica reads the same ConfigMap: one group id, the partitions shared out.
    assert cfg.kafka.consumer_group
    assert spec["replicas"] <= cfg.topics.partitions, "workers beyond the partitions sit idle"
    env = {e["name"] for e in container().get("env", [])}
    assert not any(n.startswith("Quix__") for n in env), "nothing may override the group"
    assert "AUDITWATCH_BOOTSTRAP" not in env or cfg.kafka.bootstrap_servers is None
    # State on a per-pod volume, mounted where the config puts it.
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    assert mounts.get(cfg.kafka.state_dir) in claims
    assert cfg.topics.replication_factor >= 3, "a production cluster replicates"


def test_config_is_mounted_where_the_command_reads_it() -> None:
    args = container()["args"]
    assert args[0] == "run"
    config_path = Path(args[args.index("--config") + 1])
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    volume = mounts[str(config_path.parent)]
    volumes = {v["name"]: v for v in workload()["spec"]["template"]["spec"]["volumes"]}
    assert volumes[volume]["configMap"]["name"] == resource("ConfigMap")["metadata"]["name"]
    assert config_path.name in resource("ConfigMap")["data"]


def test_metrics_port_probes_and_service_agree() -> None:
    cfg = k8s_config()
    assert cfg.http.enabled and cfg.http.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports["metrics"] == cfg.http.port
    c = container()
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    service = resource("Service")
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in ("metrics", cfg.http.port)
    labels = workload()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert workload()["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert workload()["spec"]["serviceName"] == service["metadata"]["name"]
    annotations = workload()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(cfg.http.port)
    pdb = resource("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_resources_and_security() -> None:
    c = container()
    assert {"cpu", "memory"} <= c["resources"]["requests"].keys()
    assert "memory" in c["resources"]["limits"]
    pod = workload()["spec"]["template"]["spec"]
    uid = re.findall(r"^\s*USER\s+(\d+)", DOCKERFILE.read_text(), re.M)[-1]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == uid
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    # Longer than a commit takes: SIGTERM commits offsets and flushes state first.
    assert pod["terminationGracePeriodSeconds"] >= 30


# --- the digest CronJobs (`auditwatch report`) ---------------------------------------------


def cronjobs() -> dict[str, dict[str, Any]]:
    """The CronJobs by the period their digest covers."""
    out = {}
    for docs in manifests().values():
        for d in docs:
            if d["kind"] == "CronJob":
                (c,) = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
                out[c["args"][c["args"].index("--period") + 1]] = d
    return out


def test_digest_cronjobs_run_daily_and_weekly_after_the_period() -> None:
    from datetime import UTC, datetime

    from streams.tools.digest import period_ending

    jobs = cronjobs()
    assert sorted(jobs) == ["day", "week"]
    for period, job in jobs.items():
        spec = job["spec"]
        minute, hour, dom, month, dow = spec["schedule"].split()
        assert (dom, month, dow) == ("*", "*", "*" if period == "day" else "1")
        assert spec["timeZone"] in ("Etc/UTC", "UTC"), "periods are UTC days and ISO weeks"
        assert spec["concurrencyPolicy"] == "Forbid"
        # Run at the scheduled moment, the digest reports the period that has just ended.
        ran = datetime(2026, 12, 7, int(hour), int(minute), tzinfo=UTC)  # a Monday
        assert period_ending(period, ran).end == ran.replace(hour=0, minute=0)
        assert int(hour) * 60 + int(minute) >= 10, "give late events a few minutes"
        # Exit 2 (usage, config) fails the job at once; exit 1 (broker) is retried.
        rules = spec["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
        assert any(r["action"] == "FailJob" and r["onExitCodes"]["values"] == [2] for r in rules)


def test_digest_cronjobs_share_the_workers_image_and_config() -> None:
    from streams.cli.main import build_parser

    config_map = resource("ConfigMap")["metadata"]["name"]
    claims = {
        d["metadata"]["name"]
        for docs in manifests().values()
        for d in docs
        if d["kind"] == "PersistentVolumeClaim"
    }
    uid = re.findall(r"^\s*USER\s+(\d+)", DOCKERFILE.read_text(), re.M)[-1]
    jobs = cronjobs()
    assert len(jobs) == 2
    for job in jobs.values():
        pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["image"] == container()["image"]
        args = build_parser().parse_args(c["args"])  # the real command line: it parses
        assert args.command == "report" and args.out and args.config
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        config_volume = volumes[mounts[str(Path(args.config).parent)]]
        assert config_volume["configMap"]["name"] == config_map
        assert Path(args.config).name in resource("ConfigMap")["data"]
        # The digests go to a claim of their own, which outlives the job's pod.
        out_volume = volumes[mounts[args.out]]
        assert out_volume["persistentVolumeClaim"]["claimName"] in claims
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert str(pod["securityContext"]["runAsUser"]) == uid
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert "memory" in c["resources"]["limits"]


def test_compose_publishes_the_metrics_port() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    service = compose["services"]["auditwatch"]
    cfg = load_config(DOCKER_CONFIG)
    assert cfg.http.enabled and cfg.http.host == "0.0.0.0"
    published = {str(p).rsplit(":", 1)[-1] for p in service["ports"]}
    assert str(cfg.http.port) in published
    assert all(str(p).startswith("127.0.0.1:") for p in service["ports"]), "loopback only"
    probe = " ".join(service["healthcheck"]["test"])
    assert f"127.0.0.1:{cfg.http.port}/readyz" in probe


# --- Prometheus and Grafana ------------------------------------------------------------


def exported_series() -> set[str]:
    """Every sample name a worker's /metrics can show, from a Telemetry with each metric set."""
    from streams.ops.metrics import Telemetry

    t = Telemetry(Config(), Processor(Config(), BundledSchemas()))
    t.processor.metrics["deadlettered.oversize"] += 1
    t.processor.metrics["alerts.opened"] += 1
    t.pages[("new_resource", "high")] += 1
    t.input_idle_s = 1.0
    t.on_stats(
        orjson.dumps(
            {
                "topics": {
                    "audit.events": {
                        "partitions": {
                            "0": {"partition": 0, "fetch_state": "active", "consumer_lag": 1}
                        }
                    }
                }
            }
        ).decode()
    )
    names = set()
    for family in text_string_to_metric_families(t.scrape().decode()):
        names.update(s.name for s in family.samples)
    return names


@pytest.fixture(scope="module")
def series() -> set[str]:
    names = exported_series()
    assert "auditwatch_consumer_lag" in names and "auditwatch_pages_total" in names
    return names | PROMETHEUS_SERIES


def metric_names(expr: str) -> set[str]:
    """The series an expression selects, checking it parses (with PromQL's type rules)."""
    ast = promql_parser.parse(expr)
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(ast, visit)
    return names


def test_metric_names_are_extracted() -> None:
    assert metric_names('sum(rate(a_total{x="1"}[5m])) / on() b') == {"a_total", "b"}
    with pytest.raises(ValueError):
        metric_names("rate(a_total)")  # a range vector is required


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    assert set(data) == {"groups"}
    out = []
    for group in data["groups"]:
        assert set(group) <= {"name", "rules", "interval"} and group["rules"]
        out += group["rules"]
    return out


def test_rules_are_well_formed(series: set[str]) -> None:
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert re.fullmatch(r"Auditwatch[A-Za-z]+", rule["alert"])
        unknown = metric_names(rule["expr"]) - series
        assert not unknown, f"{rule['alert']} names series no worker exports: {unknown}"
        if "for" in rule:
            promql_parser.parse_duration(rule["for"])
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_rules_cover_the_operator_cases() -> None:
    exprs = {r["alert"]: r["expr"] for r in rules()}
    # Lag, dead-letter rate, no input, a worker down.
    assert "auditwatch_consumer_lag" in exprs["AuditwatchConsumerLagHigh"]
    assert "auditwatch_deadlettered_total" in exprs["AuditwatchDeadLetterRateHigh"]
    assert "auditwatch_input_quiet" in exprs["AuditwatchNoInput"]
    assert exprs["AuditwatchWorkerDown"].startswith("up{")


def test_rule_tests_name_real_alerts() -> None:
    # promtool runs them (below) where it is installed; here at least they stay in step.
    data = yaml.safe_load(RULES_TEST.read_text())
    assert data["rule_files"] == [RULES.name]
    names = {r["alert"] for r in rules()}
    tested = {t["alertname"] for case in data["tests"] for t in case["alert_rule_test"]}
    assert tested <= names


def test_rule_test_annotations_match_the_rules() -> None:
    # Without promtool (CI) nothing else notices a rule's text changing under its test.
    descriptions = {r["alert"]: r["annotations"]["description"] for r in rules()}
    data = yaml.safe_load(RULES_TEST.read_text())
    for case in data["tests"]:
        for t in case["alert_rule_test"]:
            for exp in t["exp_alerts"]:
                if "description" in exp.get("exp_annotations", {}):
                    assert exp["exp_annotations"]["description"] == descriptions[t["alertname"]]


def _instant(expr: Any, series: dict[str, list[float]]) -> float | list[float]:
    """Evaluates the instant-vector part of a rule (selectors, aggregations without `by`,
    comparisons with a number, clamp_min/clamp_max) over one sample per series, named by
    metric: enough to check a condition without promtool. Labels are not modelled."""
    if isinstance(expr, promql_parser.ParenExpr):
        return _instant(expr.expr, series)
    if isinstance(expr, promql_parser.NumberLiteral):
        return float(expr.val)
    if isinstance(expr, promql_parser.VectorSelector):
        return list(series.get(expr.name, []))
    if isinstance(expr, promql_parser.AggregateExpr):
        values = _instant(expr.expr, series)
        assert isinstance(values, list)
        op = str(expr.op)
        if not values:
            return []
        return [{"sum": sum, "max": max, "min": min, "count": len}[op](values)]  # type: ignore[operator]
    if isinstance(expr, promql_parser.Call):
        name = str(expr.func.name)
        vec, bound = (_instant(a, series) for a in expr.args)
        assert isinstance(vec, list) and isinstance(bound, float)
        pick = max if name == "clamp_min" else min
        assert name in {"clamp_min", "clamp_max"}, name
        return [pick(v, bound) for v in vec]
    if isinstance(expr, promql_parser.BinaryExpr):
        lhs, rhs = _instant(expr.lhs, series), _instant(expr.rhs, series)
        op = str(expr.op)
        cmp = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "==": float.__eq__}
        arith = {"-": float.__sub__, "+": float.__add__}
        assert isinstance(lhs, list) and isinstance(rhs, float), f"unsupported: {expr}"
        if op in cmp:
            return [v for v in lhs if cmp[op](v, rhs)]
        return [arith[op](v, rhs) for v in lhs]
    raise AssertionError(f"not modelled here: {type(expr).__name__} {expr}")


@pytest.mark.parametrize(
    ("lags", "fires"),
    [
        # Exactly-once, idle: every partition of a transactional topic keeps a committed lag
        # of 1, the commit marker of its last transaction.
        ([1.0] * 16, False),
        ([0.0] * 8 + [1.0] * 8, False),
        ([], False),
        ([0.0] * 15 + [2.0], True),
        ([1.0] * 15 + [40.0], True),
    ],
)
def test_stalled_rule_ignores_commit_markers(lags: list[float], fires: bool) -> None:
    (expr,) = [r["expr"] for r in rules() if r["alert"] == "AuditwatchStalled"]
    ast = promql_parser.parse(expr)
    assert isinstance(ast, promql_parser.BinaryExpr) and str(ast.op) == "and"
    # The left side is "nothing read in 10 minutes"; the right side says whether work waits.
    assert metric_names(str(ast.lhs)) == {"auditwatch_events_in_total"}
    waiting = _instant(ast.rhs, {"auditwatch_consumer_lag": lags})
    assert bool(waiting) is fires


def test_rules_and_scrape_config_name_the_same_job() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"] for j in config["scrape_configs"]}
    assert config["rule_files"] == [RULES.name]
    for rule in rules():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, f"{rule['alert']}: job {job!r} is not scraped"
    relabel = config["scrape_configs"][0]["relabel_configs"][0]
    service = resource("Service")
    assert (
        relabel["regex"] == f"{service['metadata']['name']};{service['spec']['ports'][0]['name']}"
    )


def dashboard_targets() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def test_dashboard_queries_parse_and_name_exported_series(series: set[str]) -> None:
    targets = dashboard_targets()
    assert len(targets) >= 15
    for title, expr in targets:
        # Grafana's interval macros are substituted before the query is sent.
        concrete = re.sub(r"\$__(rate_interval|interval|range)", "5m", expr)
        unknown = metric_names(concrete) - series
        assert not unknown, f"panel {title!r} names series no worker exports: {unknown}"
    shown = {n for _, e in targets for n in re.findall(r"auditwatch_[a-z_]+", e)}
    # Every family a worker exports is on the dashboard somewhere.
    families = {
        re.sub(r"_(bucket|count|sum)$", "", s) for s in series if s.startswith("auditwatch_")
    }
    missing = {f for f in families if not any(n == f or n.startswith(f + "_") for n in shown)} - {
        "auditwatch_build_info",
        "auditwatch_input_quiet",
        "auditwatch_seeded_events_total",
        "auditwatch_registry_retries_total",
        "auditwatch_key_mismatch_total",
        "auditwatch_assigned_partitions",
    }
    assert not missing, f"exported but not on the dashboard: {sorted(missing)}"


def test_dashboard_layout() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "auditwatch" and dash["schemaVersion"] >= 36
    (ds,) = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${" + ds["name"] + "}", p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def _promtool() -> str:
    tool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if tool is None:
        pytest.skip(
            "promtool is not installed (go install github.com/prometheus/prometheus/cmd/"
            "promtool@v0.316.0, or set $PROMTOOL); the PromQL checks above ran without it"
        )
    return tool


def test_promtool_accepts_rules_and_config_and_the_rules_fire() -> None:
    tool = _promtool()
    for args in (
        ["check", "rules", str(RULES)],
        ["check", "config", str(PROMETHEUS)],
        ["test", "rules", str(RULES_TEST)],
    ):
        done = subprocess.run(
            [tool, *args], check=False, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
