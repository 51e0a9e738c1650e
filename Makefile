# protojobs: `make run` and `make test` do all the set-up from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
KAFKA_LIB := .cache/kafka/lib
TOXIPROXY := .cache/bin/toxiproxy-server
TOXIPROXY_VERSION := v2.12.0
PYTEST_ARGS ?=

.PHONY: install chromium run test lint unit broker-stop clean chaos bench

install: $(VENV)/.installed $(KAFKA_LIB)/.fetched $(TOXIPROXY) chromium

# Debian's chromium and chromedriver for the dashboard's browser tests (tests/test_dashboard.py);
# nothing downloads a browser of its own.
chromium:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null \
		|| echo "make install: chromium could not be installed: the dashboard's browser tests will be skipped"; fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Apache Kafka from Maven Central (protojobs/local/pom.xml); ~/.m2 keeps the download for the next clone.
$(KAFKA_LIB)/.fetched: protojobs/local/pom.xml
	rm -rf $(KAFKA_LIB)
	mvn -q -B -f protojobs/local/pom.xml dependency:copy-dependencies -Dkafka.lib=$(abspath $(KAFKA_LIB))
	touch $@

# toxiproxy-server from its Go module; Go's module and build caches keep it for the next clone.
$(TOXIPROXY):
	mkdir -p .cache/bin
	cd / && GOBIN=$(abspath .cache/gobin) go install github.com/Shopify/toxiproxy/v2/cmd/server@$(TOXIPROXY_VERSION)
	mv .cache/gobin/server $@ && rm -rf .cache/gobin

run: install
	$(BIN)/protojobs broker start --if-needed --config jobs.toml
	$(BIN)/protojobs run --config jobs.toml

lint: install
	$(BIN)/ruff check protojobs tests chaos
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache --no-logo

# Every broker and toxiproxy the tests start is killed on exit, even when pytest is killed.
# The tests keep their state in $PROTOJOBS_TEST_STATE (default .protojobs/test, the plugin's).
TEST_STATE := $(or $(PROTOJOBS_TEST_STATE),.protojobs/test)
test: install
	@trap '$(PY) -m protojobs.testing.cleanup $(TEST_STATE)' EXIT INT TERM; \
	$(MAKE) --no-print-directory lint && \
	$(PY) -m pytest $(PYTEST_ARGS)

# Fault injection (chaos/README.md): hypothesis + toxiproxy against real 1- and 3-node clusters,
# about 11 minutes on 2 cores (budget 15). REPLAY=<schedule.json> re-runs one example exactly;
# CHAOS_EXAMPLES (per cluster and mode, default 3), CHAOS_STEPS (default 8) and CHAOS_RATE (background
# jobs/s, default 150) scale it.
# Report: chaos/reports/latest.md and latest.json. Every process it starts is killed on exit.
CHAOS_STATE ?= .protojobs/chaos
CHAOS_PORT_BASE ?= 28100
chaos: install
	@trap '$(PY) -m protojobs.testing.cleanup $(CHAOS_STATE)' EXIT INT TERM; \
	PROTOJOBS_TEST_STATE=$(CHAOS_STATE) PROTOJOBS_TEST_PORT_BASE=$(CHAOS_PORT_BASE) \
	REPLAY='$(REPLAY)' CHAOS_EXAMPLES='$(CHAOS_EXAMPLES)' CHAOS_STEPS='$(CHAOS_STEPS)' CHAOS_RATE='$(CHAOS_RATE)' \
	$(PY) -m pytest chaos -p no:cacheprovider $(PYTEST_ARGS)

broker-stop:
	-$(BIN)/protojobs broker stop

# Benchmarks (bench/, README "Benchmarks"): a separate environment with the bench extra (plots,
# peer job systems), redis-server from Debian for the Dramatiq peer, then every scenario.
# BENCH_QUICK=1 for the reduced run (< 3 min); BENCH_ARGS="--profile" adds results/profile.txt.
BENCH_VENV := .cache/bench-venv
BENCH_ARGS ?=
$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[bench]'
	touch $@

bench: install $(BENCH_VENV)/.installed
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server) \
		|| echo "bench: redis-server could not be installed: the Dramatiq peer will report 'not run'"
	$(BENCH_VENV)/bin/python bench/run.py $(BENCH_ARGS)

clean: broker-stop
	rm -rf $(VENV) .cache .protojobs
