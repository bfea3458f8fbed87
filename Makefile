# The two commands a user needs: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install run test lint format token clean faults soak bench bench-smoke bench-tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Independent AsyncAPI validator (Node.js, @asyncapi/parser): node tools/asyncapi/validate.mjs FILE...
ASYNCAPI_TOOL_STAMP := tools/asyncapi/node_modules/.installed

.PHONY: asyncapi-tool

$(ASYNCAPI_TOOL_STAMP): tools/asyncapi/package-lock.json
	npm ci --prefix tools/asyncapi --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(ASYNCAPI_TOOL_STAMP)

asyncapi-tool: $(ASYNCAPI_TOOL_STAMP)

## promtool (Prometheus's checker) from Debian's package, unpacked under .tools/ (no install):
## the monitoring tests use it to check the rules, the alerts and every dashboard query.
PROMTOOL := .tools/prometheus/usr/bin/promtool

.PHONY: promtool

$(PROMTOOL):
	mkdir -p .tools/download
	cd .tools/download && apt-get download prometheus
	dpkg -x .tools/download/prometheus_*.deb .tools/prometheus
	rm -rf .tools/download
	test -x $(PROMTOOL)

promtool: $(PROMTOOL)

## Debian's headless Chromium for the board's browser tests (Playwright drives it; it never
## downloads a browser of its own). Installed with apt-get when /usr/bin/chromium is missing.
.PHONY: chromium

chromium:
	@test -x /usr/bin/chromium || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }
	@test -x /usr/bin/chromium

## wrk (Debian's package) generates the benchmarks' HTTP load: C, one thread, little CPU.
bench-tools:
	@command -v wrk >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk; }
	@command -v wrk >/dev/null

## Benchmarks (bench/): every figure beside its ceiling measured in the same run. On a quiet
## machine; the full run takes long (1,000,000 stored events per store). BENCH_ARGS narrows it,
## e.g. BENCH_ARGS="--stores sqlite --phases 10000,100000".
bench: $(STAMP) bench-tools
	$(PY) -m bench $(BENCH_ARGS)

## The same at a tiny size: shows the harness works (CI runs it); its figures mean nothing.
bench-smoke: $(STAMP) bench-tools
	$(PY) -m bench --smoke $(BENCH_ARGS)

## Start the whole system on the embedded default (SQLite stores, local nats-server if needed).
run: $(STAMP)
	$(PY) -m shared run

## Run the whole test suite (PostgreSQL tests run when PostgreSQL is reachable; the AsyncAPI
## check runs when npm is there to install its validator).
test: $(STAMP) $(if $(shell command -v npm),$(ASYNCAPI_TOOL_STAMP))
	$(PY) -m pytest $(PYTEST_ARGS)

## Faults (also part of `make test`): kill -9 of every process under load, a NATS outage, the
## cluster's leader killed, duplicates, races, hostile input; then docs/reliability.md from the run.
faults: $(STAMP)
	$(PY) -m pytest tests/faults $(PYTEST_ARGS)
	$(PY) -m tests.faults.report

## The same, longer: several rounds of kills in random order, a 60 s outage, more generated input.
soak: $(STAMP)
	OKR_FAULTS_ROUNDS=$${OKR_FAULTS_ROUNDS:-5} OKR_FAULTS_OUTAGE_S=$${OKR_FAULTS_OUTAGE_S:-60} \
	  OKR_FAULTS_EXAMPLES=$${OKR_FAULTS_EXAMPLES:-200} OKR_FAULTS_RACE_ROUNDS=$${OKR_FAULTS_RACE_ROUNDS:-40} \
	  OKR_FAULTS_RACE_WINS=$${OKR_FAULTS_RACE_WINS:-10} OKR_FAULTS_RACE_ADJUSTMENTS=$${OKR_FAULTS_RACE_ADJUSTMENTS:-50} \
	  OKR_FAULTS_RACE_CHECK_INS=$${OKR_FAULTS_RACE_CHECK_INS:-50} \
	  $(PY) -m pytest tests/faults $(PYTEST_ARGS)
	$(PY) -m tests.faults.report

## The lint gate CI runs too.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy shared services bench

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## Mint a token for a local actor: make token SUB=alice ROLE=lead TEAM="growth data"
## (ROLE and TEAM take space-separated lists; ROLE defaults to admin)
ROLE ?= admin
token: $(STAMP)
	@$(PY) -m shared token $(or $(SUB),admin) $(foreach r,$(ROLE),--role $(r)) $(foreach t,$(TEAM),--team $(t))

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
