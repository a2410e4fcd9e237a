# make setup | run | test | clean — see README.md.
SHELL := /bin/bash
VENVS := .venvs
SUP_PY := $(VENVS)/supervisor/bin/python
PY36_PY := $(VENVS)/py36/bin/python
PY38_PY := $(VENVS)/py38/bin/python
SUPERVISOR_PYTHON ?= python3
PORT ?= 8081

.PHONY: setup run test chaos bench bench-compare clean

setup: $(VENVS)/supervisor/.ok $(VENVS)/py36/.ok $(VENVS)/py38/.ok

# Grafana's dashboard schema and TypeScript, for the dashboard type-check in `make test`.
NODE_PINS := @grafana/schema@13.2.3 typescript@5.9.3
$(VENVS)/node/.ok: Makefile
	@command -v npm >/dev/null || { echo "error: npm is needed for the dashboard schema check (apt-get install npm)" >&2; exit 1; }
	rm -rf $(VENVS)/node && mkdir -p $(VENVS)/node
	npm install --silent --no-audit --no-fund --prefix $(VENVS)/node $(NODE_PINS)
	touch $@

$(VENVS)/supervisor/.ok: requirements.txt requirements-dev.txt
	@$(SUPERVISOR_PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "error: the supervisor needs Python 3.11+; set SUPERVISOR_PYTHON=/path/to/python3.11" >&2; exit 1; }
	rm -rf $(VENVS)/supervisor
	$(SUPERVISOR_PYTHON) -m venv $(VENVS)/supervisor
	$(SUP_PY) -m pip install -q -r requirements-dev.txt
	touch $@

# The pip trap on 3.6: upgrade pip/setuptools/wheel to versions that still run on 3.6 first.
$(VENVS)/%/.ok: runners/%/requirements.txt scripts/find-python.sh
	@want=$$(echo $* | sed 's/py\([0-9]\)\([0-9]*\)/\1.\2/'); \
	  py=$$(scripts/find-python.sh $$want) || exit 1; \
	  echo "creating $(VENVS)/$* with $$py"; \
	  rm -rf $(VENVS)/$* && $$py -m venv $(VENVS)/$* && \
	  $(VENVS)/$*/bin/python -m pip install -q 'pip<22' 'setuptools<60' 'wheel<0.38' && \
	  $(VENVS)/$*/bin/python -m pip install -q -r runners/$*/requirements.txt
	touch $@

run: setup
	mkdir -p var
	$(SUP_PY) -m supervisor serve --port $(PORT) --db var/supervisor.db --spawn all

test: setup $(VENVS)/node/.ok
	$(SUP_PY) -m pytest -q tests

# The long chaos run (issue: fault tolerance): 5000 tasks, 40 kill -9s, a network-cut round (needs root).
chaos: setup
	mkdir -p var
	$(SUP_PY) -m tests.chaos.checker --tasks 5000 --runner-kills 20 --supervisor-kills 20 --netcut \
	  --json var/chaos-latest.json

# Speed and memory figures (issue: performance); JSON under bench/results/. Takes a few minutes.
# T1's load generator is wrk (Debian's package, installed here if missing).
WRK_INSTALL = command -v wrk >/dev/null || { echo "installing wrk"; \
	  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends wrk; }

bench: setup
	@$(WRK_INSTALL)
	$(SUP_PY) bench/run.py

# The same T1-T3 on Celery (prefork -c2, Redis from Debian's redis-server) in the same run, with ratios.
$(VENVS)/bench/.ok: Makefile
	rm -rf $(VENVS)/bench
	$(SUPERVISOR_PYTHON) -m venv $(VENVS)/bench
	$(VENVS)/bench/bin/python -m pip install -q 'celery[redis]==5.7.0' 'redis==8.1.0'
	touch $@

bench-compare: setup $(VENVS)/bench/.ok
	@$(WRK_INSTALL)
	@command -v redis-server >/dev/null || { echo "installing redis-server"; \
	  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends redis-server; }
	$(VENVS)/bench/bin/python bench/celery_compare.py

clean:
	rm -rf $(VENVS) var .pytest_cache
