# Every target works on a fresh machine with Python 3.11+, Java 17 and Maven: the venv and the
# Kafka jars are made on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint kafka-start kafka-stop

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/auditwatch demo

# Uses $$AUDITWATCH_BOOTSTRAP or the local broker, starting (and then stopping) one if needed.
# Three processes (pytest-xdist; worksteal: a worker that runs out takes queued tests from the
# others): most Kafka tests wait on the broker or on workers they start, not on this CPU. Tests
# marked `serial` (they bound wall-clock time) run after, alone. Exit status: the first failure.
test: $(STAMP)
	$(PY) -m pytest -q -n 3 --dist worksteal -m 'not serial'; parallel=$$?; \
	$(PY) -m pytest -q -m serial; serial=$$?; \
	if [ $$parallel -ne 0 ]; then exit $$parallel; fi; exit $$serial

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

kafka-start: $(STAMP)
	$(VENV)/bin/auditwatch kafka start

kafka-stop: $(STAMP)
	$(VENV)/bin/auditwatch kafka stop

# Synthetic suite through replay, scored against its labelled episodes: eval/results.json and a
# table (scratch files in eval/out/); then the independent scenario suite (bench.scenarios) on
# its reporting seeds: eval/results_scenarios.json. About 9 minutes on two cores.
.PHONY: eval
eval: $(STAMP)
	$(PY) -m bench.evaluate --out eval/results.json

# Real captures from ../shared/datasets (OTRF CloudTrail exfiltration, PurpleSharp AD playbook,
# Stratus Red Team) replayed after a synthetic warm-up history: eval/realdata.json and a table.
# About 20 s.
.PHONY: realdata
realdata: $(STAMP)
	$(PY) -m bench.realdata --out eval/realdata.json

# Throughput, alert latency, state size and restore time against a plain-consumer ceiling, a
# faust peer and replay (bench/README.md): bench/results/latest.json and a table, under 10
# minutes on two cores. Other sizes: make bench BENCH_ARGS="--events 200000 --skip faust".
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	touch $(BENCH_STAMP)

.PHONY: bench
bench: $(BENCH_STAMP)
	$(PY) -m bench.perf $(BENCH_ARGS)

# Fuzz the decoders (tests/fuzz/): our mutation fuzzer over every target, then atheris
# (coverage-guided, every target from one process) when it installs. Longer runs:
# make fuzz FUZZ_INPUTS=20000000 FUZZ_SECONDS=3600. Keep a crash under tests/fuzz/regressions/.
FUZZ_INPUTS ?= 5000000
FUZZ_SECONDS ?= 600
FUZZ_STAMP := $(VENV)/.fuzz-installed
$(FUZZ_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,fuzz]' || \
		echo "atheris did not install: the mutation fuzzer only"
	touch $(FUZZ_STAMP)

.PHONY: fuzz
fuzz: $(FUZZ_STAMP)
	AUDITWATCH_FUZZ_INPUTS=$(FUZZ_INPUTS) AUDITWATCH_FUZZ_SEED=$${FUZZ_SEED:-$$(date +%s)} \
		AUDITWATCH_ATHERIS_RUNS=100000000 AUDITWATCH_ATHERIS_SECONDS=$(FUZZ_SECONDS) \
		$(PY) -m pytest -q -s -p no:cacheprovider -o timeout=0 tests/fuzz/test_fuzz.py
