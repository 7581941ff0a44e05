"""The one configuration model: validated at start, errors name the bad key and value.

Also the one place that builds librdkafka settings, so TLS/SASL options later pass through
`kafka.librdkafka` without code changes.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from detectors.combined import CombinedParams
from detectors.config import DetectorConfig, Override, Suppression
from detectors.rate import RateParams
from schemas.event import Limits

if TYPE_CHECKING:
    from schemas.signing import Key as SigningKey
    from schemas.signing import Keyring

# Settings whose name contains one of these are never printed.
_SECRET_WORDS = ("password", "secret", "key", "token", "user_info", "userinfo")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN", "OAUTHBEARER"]

# Each setting of SecuritySettings that the environment can give when the config file does not.
SECURITY_ENV = {
    "protocol": "AUDITWATCH_SECURITY_PROTOCOL",
    "sasl_mechanism": "AUDITWATCH_SASL_MECHANISM",
    "username": "AUDITWATCH_SASL_USERNAME",
    "password": "AUDITWATCH_SASL_PASSWORD",
    "password_file": "AUDITWATCH_SASL_PASSWORD_FILE",
    "ssl_ca_location": "AUDITWATCH_SSL_CA_LOCATION",
    "ssl_certificate_location": "AUDITWATCH_SSL_CERTIFICATE_LOCATION",
    "ssl_key_location": "AUDITWATCH_SSL_KEY_LOCATION",
    "ssl_key_password": "AUDITWATCH_SSL_KEY_PASSWORD",
}


class SecuritySettings(_Model):
    """TLS and SASL for every Kafka client auditwatch makes. A setting left out here is taken
    from its environment variable (SECURITY_ENV: `AUDITWATCH_SECURITY_PROTOCOL`...), so a
    whole deployment or test run can be switched by environment; the file wins."""

    protocol: SecurityProtocol | None = Field(
        None,
        description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL. Unset: "
        "$AUDITWATCH_SECURITY_PROTOCOL, then PLAINTEXT.",
    )
    sasl_mechanism: SaslMechanism | None = Field(
        None,
        description="SCRAM-SHA-512, SCRAM-SHA-256, PLAIN or OAUTHBEARER. Unset: "
        "$AUDITWATCH_SASL_MECHANISM, then SCRAM-SHA-512.",
    )
    username: str | None = Field(None, description="SASL user. Unset: $AUDITWATCH_SASL_USERNAME.")
    password: SecretStr | None = Field(
        None,
        description="SASL password; prefer password_file or $AUDITWATCH_SASL_PASSWORD(_FILE) "
        "over a password in the file.",
    )
    password_file: str | None = Field(
        None,
        description="A file holding the SASL password (e.g. a mounted Kubernetes secret), read "
        "when a client is made. Unset: $AUDITWATCH_SASL_PASSWORD_FILE.",
    )
    ssl_ca_location: str | None = Field(
        None,
        description="PEM file of the CA(s) that signed the brokers' certificates. Unset: "
        "$AUDITWATCH_SSL_CA_LOCATION, then the system's trust store.",
    )
    ssl_certificate_location: str | None = Field(
        None, description="Client certificate (PEM) for brokers that require mutual TLS."
    )
    ssl_key_location: str | None = Field(None, description="The client certificate's key.")
    ssl_key_password: SecretStr | None = None
    ssl_verify_hostname: bool = Field(
        True, description="Check that the broker's certificate names the host connected to."
    )
    oauthbearer: dict[str, str] = Field(
        default_factory=dict,
        description="OAUTHBEARER: librdkafka's sasl.oauthbearer.* settings without the prefix "
        "(method: oidc, client.id, client.secret, token.endpoint.url, scope, extensions).",
    )

    @model_validator(mode="after")
    def _one_password(self) -> SecuritySettings:
        if self.password is not None and self.password_file:
            raise ValueError("set password or password_file, not both")
        return self

    def effective(self) -> SecuritySettings:
        """These settings with the environment's filling the ones left out. Raises ConfigError
        naming the variable when one holds something that is not a valid setting."""
        update: dict[str, Any] = {}
        for name, var in SECURITY_ENV.items():
            value = os.environ.get(var, "").strip()
            if getattr(self, name) is None and value:
                update[name] = value
        if not update:
            return self
        if "password" in update and self.password_file:
            del update["password"]  # the file's own setting wins over the environment
        if "password_file" in update and (self.password is not None or "password" in update):
            del update["password_file"]
        try:
            return SecuritySettings.model_validate({**self.model_dump(), **update})
        except ValidationError as e:
            bad = [
                f"${SECURITY_ENV[str(err['loc'][0])]}: {err['msg']}"
                for err in e.errors()
                if err["loc"] and err["loc"][0] in SECURITY_ENV
            ]
            raise ConfigError(
                "invalid Kafka security setting in the environment: " + "; ".join(bad or [str(e)])
            ) from None

    def password_value(self) -> str | None:
        """The SASL password, read from password_file when that is where it is."""
        if self.password is not None:
            return self.password.get_secret_value()
        if not self.password_file:
            return None
        try:
            return Path(self.password_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(
                f"kafka.security.password_file: cannot read {self.password_file}: {e.strerror}"
            ) from None

    def librdkafka(self) -> dict[str, Any]:
        """librdkafka's settings for these (the environment's included); none for PLAINTEXT.
        Raises ConfigError when a SASL protocol lacks its user or password."""
        s = self.effective()
        protocol = s.protocol or "PLAINTEXT"
        out: dict[str, Any] = {}
        if protocol != "PLAINTEXT":
            out["security.protocol"] = protocol
        if protocol.endswith("SSL"):
            for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
                value = getattr(s, name)
                if value:
                    out[name.replace("_", ".")] = value
            if s.ssl_key_password is not None:
                out["ssl.key.password"] = s.ssl_key_password.get_secret_value()
            if not s.ssl_verify_hostname:
                out["ssl.endpoint.identification.algorithm"] = "none"
        if protocol.startswith("SASL"):
            mechanism = s.sasl_mechanism or "SCRAM-SHA-512"
            out["sasl.mechanism"] = mechanism
            if mechanism == "OAUTHBEARER":
                out.update({f"sasl.oauthbearer.{k}": v for k, v in s.oauthbearer.items()})
            else:
                password = s.password_value()
                if not s.username or password is None:
                    missing = "username" if not s.username else "password"
                    raise ConfigError(
                        f"kafka.security: {protocol} with {mechanism} needs a {missing}: "
                        f"kafka.security.{missing}"
                        + (" or password_file" if missing == "password" else "")
                        + f", or ${SECURITY_ENV[missing]}"
                        + ("(_FILE)" if missing == "password" else "")
                    )
                out["sasl.username"] = s.username
                out["sasl.password"] = password
        return out


class KafkaSettings(_Model):
    bootstrap_servers: str | None = Field(
        None,
        description="host:port list. Unset: $AUDITWATCH_BOOTSTRAP, then the local broker "
        "started by `auditwatch kafka start`, then 127.0.0.1:9092.",
    )
    consumer_group: str = "auditwatch"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    processing_guarantee: Literal["at-least-once", "exactly-once"] = "at-least-once"
    commit_interval_s: float = Field(5.0, gt=0)
    state_dir: str = Field(
        "state", description="Local snapshots of the partitions' state (see snapshot_interval_s)."
    )
    batch_max_records: int = Field(
        1_000,
        ge=1,
        description="Records one poll of the micro-batch loop takes at most "
        "(`consume(num_messages=...)`); the loop processes them, then commits when due.",
    )
    batch_max_wait_s: float = Field(
        0.1,
        gt=0,
        le=5,
        description="How long one poll waits for a batch to fill: the added latency when "
        "input is sparse.",
    )
    partitioner: Literal["murmur2", "consistent_random"] = Field(
        "murmur2",
        description="The partitioner producers use for keys: murmur2 (Java clients, Kafka's "
        "tools, `auditwatch produce`) or consistent_random (CRC32: librdkafka clients such as "
        "kcat and rsyslog's omkafka by default). An event found in another partition than its "
        "machine's is forwarded once to the repartition topic.",
    )
    instance_id: str | None = Field(
        None,
        description="Static group membership (`group.instance.id`) and the transactional id's "
        "suffix: stable across restarts, so a restarted worker gets its partitions back at "
        "once and fences its previous incarnation. Unset: $AUDITWATCH_INSTANCE_ID, then "
        "$POD_NAME, then the host name with a digest of the state directory. '' turns static "
        "membership off.",
    )
    session_timeout_s: float = Field(
        45.0,
        ge=6,
        le=300,
        description="How long the group waits for a silent worker (crashed, or stopped: a "
        "static member does not leave the group) before its partitions move to another.",
    )
    event_id_cache: int = Field(
        100_000,
        ge=1_000,
        description="Event ids per partition kept in memory (about 150 bytes each) in front "
        "of the partition's on-disk index in state_dir, which keeps every id as long as the "
        "archive keeps events.",
    )
    snapshot_interval_s: float = Field(
        300.0,
        ge=0,
        description="How often each partition's state is also written to state_dir after a "
        "commit (and always on revocation and shutdown), so a restart reads only the "
        "changelog's tail; 0: only on revocation and shutdown.",
    )
    transaction_timeout_s: float = Field(
        60.0,
        ge=5,
        description="exactly-once: the broker aborts a transaction open longer than this.",
    )
    working_copy_machines: int = Field(
        20_000,
        ge=0,
        description="Machine states kept decoded between commits (roughly 10 KB of memory "
        "each), written to the partition's state and its changelog at each commit; 0 writes "
        "every event's state through instead.",
    )
    security: SecuritySettings = Field(
        default_factory=SecuritySettings,
        description="TLS and SASL for every client (workers, produce, alerts, webhook, tools).",
    )
    librdkafka: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Extra librdkafka settings for every client; they win over all others.",
    )

    def bootstrap(self) -> str:
        if self.bootstrap_servers:
            return self.bootstrap_servers
        env = os.environ.get("AUDITWATCH_BOOTSTRAP")
        if env:
            return env
        from streams.ops import kafka_local

        return kafka_local.bootstrap_from_env_or_file() or "127.0.0.1:9092"

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by consumers, producers and admin clients.

        librdkafka's own log lines (`%3|...|rdkafka#consumer-1|...` on stderr otherwise) go
        to the `auditwatch.librdkafka` logger, so they take the worker's log format
        (`--log-format json`). confluent-kafka hands them over when the client is polled
        (consumers also on close); an admin client that is never polled drops them, and
        reports its failures through its futures instead."""
        return {
            "bootstrap.servers": self.bootstrap(),
            "logger": logging.getLogger("auditwatch.librdkafka"),
            **self.security.librdkafka(),
            **self.librdkafka,
        }

    def sasl_username(self) -> str | None:
        """The SASL user the clients authenticate as, if any (for messages)."""
        s = self.security.effective()
        return s.username if (s.protocol or "").startswith("SASL") else None


class TopicSettings(_Model):
    events: str = "audit.events"
    alerts: str = "audit.alerts"
    archive: str = "audit.archive"
    deadletter: str = "audit.deadletter"
    detect: str = Field(
        "audit.detect",
        description="Internal, the repartition topic: events that arrived in another input "
        "partition than their machine's, forwarded once, keyed by machine id.",
    )
    state: str | None = Field(
        None,
        description="Internal, compacted: each input partition's state changelog. Unset: "
        "`<consumer_group>.state`.",
    )
    peers: str | None = Field(
        None,
        description="Internal, compacted: peer-group knowledge every worker reads in full. "
        "Unset: `<consumer_group>.peers`.",
    )
    ledger: str | None = Field(
        None,
        description="Internal, compacted: what became of every record each input partition "
        "read (`auditwatch compliance check` reconciles it). Unset: `<consumer_group>.ledger`.",
    )
    control: str = Field(
        "audit.control",
        description="On-call decisions (`auditwatch alerts ack/snooze`), keyed by alert_id, "
        "compacted; every worker reads all of it.",
    )
    partitions: int = Field(8, ge=1)
    replication_factor: int = Field(1, ge=1)
    events_retention_ms: int = Field(7 * 86_400_000, ge=-1)
    alerts_retention_ms: int = Field(90 * 86_400_000, ge=-1)
    archive_retention_ms: int = Field(
        -1, ge=-1, description="-1 keeps the audit record forever (compaction only)."
    )


class SchemaRegistrySettings(_Model):
    url: str
    basic_auth_user_info: SecretStr | None = None
    ssl_ca_location: str | None = Field(
        None, description="https: PEM of the CA that signed the registry's certificate."
    )
    ssl_certificate_location: str | None = Field(
        None, description="https: client certificate (PEM) for a registry requiring mutual TLS."
    )
    ssl_key_location: str | None = Field(None, description="The client certificate's key.")


class InputSettings(_Model):
    format: Literal["auto", "avro", "json"] = "auto"
    schema_registry: SchemaRegistrySettings | None = None
    max_value_bytes: int = Field(65_536, ge=256)
    max_field_chars: int = Field(2_048, ge=16)
    max_attributes: int = Field(64, ge=0)
    max_future_s: int = Field(3_600, ge=0)

    def limits(self) -> Limits:
        return Limits(
            max_value_bytes=self.max_value_bytes,
            max_field_chars=self.max_field_chars,
            max_attributes=self.max_attributes,
            max_future_ms=self.max_future_s * 1000,
        )


class RateSettings(_Model):
    interval_s: int = Field(60, ge=1)
    alpha: float = Field(0.02, gt=0, lt=1)
    z: float = Field(6.0, gt=0)
    min_ratio: float = Field(3.0, ge=1)
    min_count: int = Field(20, ge=1)
    warmup_intervals: int = Field(60, ge=0)


class RatePatch(_Model):
    """A partial RateSettings, for overrides: unset fields keep the base value."""

    interval_s: int | None = Field(None, ge=1)
    alpha: float | None = Field(None, gt=0, lt=1)
    z: float | None = Field(None, gt=0)
    min_ratio: float | None = Field(None, ge=1)
    min_count: int | None = Field(None, ge=1)
    warmup_intervals: int | None = Field(None, ge=0)


class DetectorPatch(_Model):
    """A partial set of detector settings, for per-group and per-machine overrides."""

    warmup_s: int | None = Field(None, ge=0)
    warmup_events: int | None = Field(None, ge=0)
    resource_depth: int | None = Field(None, ge=0)
    max_resources: int | None = Field(None, ge=1)
    fanout_window_s: int | None = Field(None, ge=1)
    cooldown_s: int | None = Field(None, ge=0)
    update_every_s: int | None = Field(None, ge=0)
    max_operations: int | None = Field(None, ge=1)
    failure_min_count: int | None = Field(None, ge=1)
    failure_min_ratio: float | None = Field(None, gt=0, le=1)
    rate: RatePatch | None = None

    def values(self) -> tuple[tuple[str, Any], ...]:
        # Hashable and ordered, so the override is part of the config version.
        return tuple(
            (name, tuple(sorted(value.items())) if name == "rate" else value)
            for name, value in self.model_dump(exclude_none=True).items()
        )


class GroupSettings(_Model):
    attribute: str | None = Field(
        None, description="Event attribute naming the peer group (wins over patterns)."
    )
    patterns: list[str] = Field(
        default_factory=list,
        description="Regexes tried in order on machine_id; the named group 'group' (else the "
        "first group, else the match) is the peer group. Then the built-in rules.",
    )

    @field_validator("patterns")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"{p!r} is not a valid regular expression: {e}") from None
        return patterns


class SuppressionSettings(_Model):
    machine: str = "*"
    resource: str = "*"
    detector: str = "*"
    until: datetime | date | None = Field(
        None, description="Expiry (event time); a date means midnight UTC at its start."
    )
    reason: str = ""

    def until_ms(self) -> int | None:
        if self.until is None:
            return None
        if isinstance(self.until, datetime):
            moment = self.until if self.until.tzinfo else self.until.replace(tzinfo=UTC)
        else:
            moment = datetime(self.until.year, self.until.month, self.until.day, tzinfo=UTC)
        return int(moment.timestamp() * 1000)


class OverrideSettings(_Model):
    machine: str = "*"
    group: str = "*"
    settings: DetectorPatch


class CombinedSettings(_Model):
    """The combined score: one river HalfSpaceTrees per peer group over window features."""

    enabled: bool = True
    window_s: int = Field(300, ge=60)
    n_trees: int = Field(10, ge=1, le=50)
    height: int = Field(5, ge=1, le=10)
    window_size: int = Field(100, ge=10, le=60000)
    min_events: int = Field(5, ge=1)
    page_at: float = Field(0.8, gt=0, lt=1)

    def build(self) -> CombinedParams | None:
        if not self.enabled:
            return None
        return CombinedParams(**self.model_dump(exclude={"enabled"}))


# Detector settings a release retired, with what replaced them: a config file written for the
# earlier release still loads (the key is ignored, with a warning) instead of failing to start.
RETIRED_DETECTOR_SETTINGS = {
    "silence_min_active_hours": "silence_expect_share and silence_gap_factor (issue 16: silence "
    "is expected from the machine's own earlier days at this hour)",
}


class DetectorSettings(_Model):
    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in RETIRED_DETECTOR_SETTINGS):
            data = dict(data)
            for key, instead in RETIRED_DETECTOR_SETTINGS.items():
                if key in data:
                    del data[key]
                    logging.getLogger("auditwatch.config").warning(
                        "detectors.%s is no longer used and is ignored; see %s", key, instead
                    )
        return data

    warmup_s: int = Field(3600, ge=0)
    warmup_events: int = Field(50, ge=0)
    mature_after_s: int = Field(86_400, ge=0)
    resource_depth: int = Field(2, ge=0)
    max_resources: int = Field(1000, ge=1)
    resource_horizon_days: float = Field(30, gt=0)
    fanout_window_s: int = Field(300, ge=1)
    cooldown_s: int = Field(900, ge=0)
    update_every_s: int = Field(60, ge=0)
    max_operations: int = Field(128, ge=1)
    rate_peak_ratio: float = Field(1.5, ge=1)
    rate_group_peak_ratio: float = Field(1.5, ge=0)
    rate_peak_half_life_s: int = Field(7 * 86400, ge=60)
    failure_min_count: int = Field(5, ge=1)
    failure_min_ratio: float = Field(0.3, gt=0, le=1)
    silence_min_rate: float = Field(0.5, gt=0)
    silence_min_gap_s: int = Field(300, ge=60)
    silence_expect_share: float = Field(0.5, gt=0, le=1)
    silence_gap_factor: float = Field(2.0, ge=1)
    off_hours_max_share: float = Field(0.1, gt=0, le=1)
    off_hours_ratio: float = Field(4.0, ge=1)
    off_hours_min_events: int = Field(5, ge=1)
    off_hours_window_s: int = Field(1800, ge=60)
    off_hours_spread: int = Field(2, ge=0)
    off_hours_burst_events: int = Field(2, ge=2)
    off_hours_burst_p: float = Field(1e-3, gt=0, lt=1)
    off_hours_min_active_windows: int = Field(24, ge=0)
    off_hours_schedule_ratio: float = Field(1.0, ge=0)
    max_machines: int = Field(100_000, ge=1)
    machine_idle_days: float = Field(30, gt=0)
    max_pages_per_minute: int = Field(20, ge=1)
    max_new_identity_pages_per_minute: int = Field(5, ge=1)
    rate: RateSettings = RateSettings()
    combined: CombinedSettings = CombinedSettings()
    groups: GroupSettings = GroupSettings()
    suppress: list[SuppressionSettings] = Field(default_factory=list)
    overrides: list[OverrideSettings] = Field(default_factory=list)

    def build(self) -> DetectorConfig:
        return DetectorConfig(
            rate=RateParams(**self.rate.model_dump()),
            warmup_s=self.warmup_s,
            warmup_events=self.warmup_events,
            mature_after_s=self.mature_after_s,
            resource_depth=self.resource_depth,
            max_resources=self.max_resources,
            resource_horizon_s=int(self.resource_horizon_days * 86400),
            fanout_window_s=self.fanout_window_s,
            cooldown_s=self.cooldown_s,
            update_every_s=self.update_every_s,
            max_operations=self.max_operations,
            rate_peak_ratio=self.rate_peak_ratio,
            rate_group_peak_ratio=self.rate_group_peak_ratio,
            rate_peak_half_life_s=self.rate_peak_half_life_s,
            failure_min_count=self.failure_min_count,
            failure_min_ratio=self.failure_min_ratio,
            silence_min_rate=self.silence_min_rate,
            silence_min_gap_s=self.silence_min_gap_s,
            silence_expect_share=self.silence_expect_share,
            silence_gap_factor=self.silence_gap_factor,
            off_hours_max_share=self.off_hours_max_share,
            off_hours_ratio=self.off_hours_ratio,
            off_hours_min_events=self.off_hours_min_events,
            off_hours_window_s=self.off_hours_window_s,
            off_hours_spread=self.off_hours_spread,
            off_hours_burst_events=self.off_hours_burst_events,
            off_hours_burst_p=self.off_hours_burst_p,
            off_hours_min_active_windows=self.off_hours_min_active_windows,
            off_hours_schedule_ratio=self.off_hours_schedule_ratio,
            combined=self.combined.build(),
            max_machines=self.max_machines,
            machine_idle_horizon_s=int(self.machine_idle_days * 86400),
            max_pages_per_minute=self.max_pages_per_minute,
            max_new_identity_pages_per_minute=self.max_new_identity_pages_per_minute,
            group_attribute=self.groups.attribute,
            group_patterns=tuple(self.groups.patterns),
            suppressions=tuple(
                Suppression(s.machine, s.resource, s.detector, s.until_ms(), s.reason)
                for s in self.suppress
            ),
            overrides=tuple(
                Override(o.machine, o.group, o.settings.values()) for o in self.overrides
            ),
        )


class HttpSettings(_Model):
    """The worker's HTTP endpoint: /metrics (Prometheus), /healthz, /readyz, /machines/ID."""

    enabled: bool = True
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address to listen on; 0.0.0.0 in a container so Prometheus can scrape.",
    )
    port: int = Field(9464, ge=0, le=65535, description="0: any free port (logged at start).")


class MonitoringSettings(_Model):
    """How the worker watches itself and its input."""

    stats_interval_s: float = Field(
        5.0, gt=0, le=3600, description="How often librdkafka reports consumer lag."
    )
    input_quiet_s: int = Field(
        900,
        ge=0,
        description="Alert (detector auditwatch_input_quiet) when the input topic has had no "
        "new record for this long; 0 turns it off.",
    )
    input_check_interval_s: float = Field(30.0, gt=0, le=3600)


AlertStatus = Literal["opened", "updated", "escalated", "resolved"]


def _webhook_statuses() -> list[AlertStatus]:
    return ["opened", "escalated", "resolved"]


class WebhookSettings(_Model):
    """`auditwatch webhook`: alert states POSTed as JSON (with a Slack-compatible `text`)."""

    url: SecretStr | None = Field(
        None,
        description="http(s) URL to POST to (or --url); secret, since chat webhook URLs "
        "carry their token.",
    )
    min_severity: Literal["info", "low", "medium", "high", "critical"] = "medium"
    statuses: list[AlertStatus] = Field(
        default_factory=_webhook_statuses,
        description="Alert states to send; `updated` (repeats) is off by default: it is "
        "frequent and never pages.",
    )
    consumer_group: str = "auditwatch-webhook"
    timeout_s: float = Field(10.0, gt=0, le=300)
    max_attempts: int = Field(5, ge=1, le=100)
    backoff_s: float = Field(0.5, gt=0, description="First retry delay; doubles each time.")
    max_backoff_s: float = Field(30.0, gt=0)
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Extra request headers (e.g. Authorization)."
    )

    @field_validator("url")
    @classmethod
    def _http(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and not url.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        if url is not None:
            from urllib.parse import urlsplit

            try:
                parts = urlsplit(url.get_secret_value())
                parts.port  # noqa: B018 - parsing it is the check
            except ValueError as e:
                # The message may quote the URL, whose path can carry a token: not repeated.
                raise ValueError(f"not a usable URL ({type(e).__name__})") from None
            if not parts.hostname:
                raise ValueError("names no host")
        return url

    @model_validator(mode="after")
    def _retries_fit_a_poll_interval(self) -> WebhookSettings:
        # The sink retries between two consumer polls and raises its max.poll.interval.ms to
        # cover them (streams/cli/webhook.py); librdkafka accepts at most 24 h there.
        worst = worst_case_delivery_s(self)
        if worst + 60 > _MAX_POLL_INTERVAL_S:
            raise ValueError(
                f"retries of one alert state could take {worst:,.0f} s (max_attempts "
                f"{self.max_attempts} x timeout_s {self.timeout_s:g} + backoffs up to "
                f"max_backoff_s {self.max_backoff_s:g}), more than Kafka's longest poll "
                f"interval ({_MAX_POLL_INTERVAL_S - 60:,} s); lower one of them"
            )
        return self


_MAX_POLL_INTERVAL_S = 86_400  # librdkafka's ceiling for max.poll.interval.ms


def worst_case_delivery_s(w: WebhookSettings) -> float:
    """The longest one alert state can hold the webhook sink: every attempt times out and
    every pause between attempts is the longest allowed."""
    return w.max_attempts * w.timeout_s + (w.max_attempts - 1) * w.max_backoff_s


class SigningKeySettings(_Model):
    """One key of a signing machine (schemas.signing). Secrets come from a file or an
    environment variable, never from the config itself."""

    key_id: str = Field(min_length=1, max_length=256)
    algorithm: Literal["hmac-sha256", "ed25519"]
    secret_file: str | None = Field(
        None,
        description="hmac-sha256: a file holding the shared secret (one trailing line "
        "break is not part of it).",
    )
    secret_env: str | None = Field(
        None, description="hmac-sha256: an environment variable holding the shared secret."
    )
    public_key_file: str | None = Field(
        None, description="ed25519: the machine's public key, PEM or 32 bytes in base64."
    )

    @model_validator(mode="after")
    def _one_source(self) -> SigningKeySettings:
        given = [n for n in ("secret_file", "secret_env", "public_key_file") if getattr(self, n)]
        hmac = ("secret_file", "secret_env")
        wanted = ("public_key_file",) if self.algorithm == "ed25519" else hmac
        if len(given) != 1 or given[0] not in wanted:
            raise ValueError(
                f"key {self.key_id!r} ({self.algorithm}) needs exactly one of {' or '.join(wanted)}"
            )
        self.load()  # a missing file or variable is refused at start, not at the first event
        return self

    def load(self) -> SigningKey:
        from schemas.signing import Key, public_key_from_bytes, secret_from_bytes

        where = self.secret_file or self.public_key_file
        try:
            if self.secret_env:
                value = os.environ.get(self.secret_env)
                if not value:
                    raise ValueError(f"environment variable {self.secret_env} is unset or empty")
                return Key(self.key_id, self.algorithm, secret=value.encode())
            assert where is not None
            data = Path(where).read_bytes()
            if self.algorithm == "hmac-sha256":
                return Key(self.key_id, self.algorithm, secret=secret_from_bytes(data))
            return Key(self.key_id, self.algorithm, public=public_key_from_bytes(data))
        except OSError as e:
            raise ValueError(f"key {self.key_id!r}: cannot read {where}: {e.strerror}") from None
        except ValueError as e:
            # Never the secret itself: the messages above and cryptography's name none.
            raise ValueError(f"key {self.key_id!r}: {e}") from None


class SigningSettings(_Model):
    """Producer authenticity (schemas.signing): the machines that sign, each with its keys
    (several during a rotation). Only these machines' events are checked; a machine id may be
    a glob (`payments-api-*`)."""

    keys: dict[str, list[SigningKeySettings]] = Field(default_factory=dict)

    @field_validator("keys", mode="before")
    @classmethod
    def _one_key_alone(cls, v: Any) -> Any:
        # `machine: {key_id: ...}` for the usual single key, a list during a rotation.
        if isinstance(v, dict):
            return {m: [k] if isinstance(k, dict) else k for m, k in v.items()}
        return v

    @model_validator(mode="after")
    def _distinct_ids(self) -> SigningSettings:
        for machine, keys in self.keys.items():
            ids = [k.key_id for k in keys]
            if not keys or len(set(ids)) != len(ids):
                raise ValueError(f"machine {machine!r} needs one or more keys with distinct ids")
        return self

    def keyring(self) -> Keyring | None:
        """The keys, read from their files and variables; None when no machine signs (then
        nothing is checked, at no cost per event)."""
        if not self.keys:
            return None
        from schemas.signing import Keyring

        return Keyring({m: [k.load() for k in keys] for m, keys in self.keys.items()})


class Config(_Model):
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    input: InputSettings = InputSettings()
    detectors: DetectorSettings = DetectorSettings()
    http: HttpSettings = HttpSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    webhook: WebhookSettings = WebhookSettings()
    signing: SigningSettings = SigningSettings()

    @property
    def state_topic(self) -> str:
        return self.topics.state or f"{self.kafka.consumer_group}.state"

    @property
    def peers_topic(self) -> str:
        return self.topics.peers or f"{self.kafka.consumer_group}.peers"

    def masked(self) -> dict[str, Any]:
        """The effective config for logs and `config check`: security settings with the
        environment's filled in, secrets masked by SecretStr, and librdkafka and oauthbearer
        values that look like secrets masked too."""
        d = self.model_dump(mode="json")
        d["kafka"]["security"] = self.kafka.security.effective().model_dump(mode="json")
        for section in (d["kafka"]["librdkafka"], d["kafka"]["security"]["oauthbearer"]):
            for k in list(section):
                if any(word in k for word in _SECRET_WORDS):
                    section[k] = "**********"
        return d


class ConfigError(ValueError):
    """An invalid config; the message names every bad key with its value."""


def _format(e: ValidationError, source: str) -> str:
    lines = [f"invalid config in {source}:"]
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        if any(word in key for word in _SECRET_WORDS):
            value = "**********"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {value!r})")
        else:
            lines.append(f"  {key} = {value!r}: {err['msg']}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config (or defaults when `path` is None) and validate it."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config {path} is not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
        data = loaded
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e, source)) from None
    # Security settings from the environment are checked now, not when a client is made.
    cfg.kafka.security.librdkafka()
    return cfg
