# protojobs: `make run` and `make test` do all the set-up from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
KAFKA_LIB := .cache/kafka/lib
TOXIPROXY := .cache/bin/toxiproxy-server
TOXIPROXY_VERSION := v2.12.0
PYTEST_ARGS ?=

.PHONY: install run test lint unit broker-stop clean chaos bench

install: $(VENV)/.installed $(KAFKA_LIB)/.fetched $(TOXIPROXY)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Apache Kafka from Maven Central (kafka/pom.xml); ~/.m2 keeps the download for the next clone.
$(KAFKA_LIB)/.fetched: kafka/pom.xml
	rm -rf $(KAFKA_LIB)
	mvn -q -B -f kafka/pom.xml dependency:copy-dependencies -Dkafka.lib=$(abspath $(KAFKA_LIB))
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

# Every broker and toxiproxy the tests start is killed on exit, even when pytest is killed.
test: install
	@trap '$(PY) -m protojobs.testing.cleanup .protojobs/test' EXIT INT TERM; \
	$(MAKE) --no-print-directory lint && \
	$(PY) -m pytest $(PYTEST_ARGS)

broker-stop:
	-$(BIN)/protojobs broker stop

clean: broker-stop
	rm -rf $(VENV) .cache .protojobs
