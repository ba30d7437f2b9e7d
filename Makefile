# Two commands do all the setup on a fresh Linux machine:
#   make serve   -> virtual environment + the service on its embedded default (no Redis needed)
#   make test    -> virtual environment + redis-server and chromium checks + the whole test suite
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: venv serve test lint check-deploy compose-smoke ci clean

# `make serve` installs what serving needs (the API and the model runtime); everything else (tests, lint,
# deployment checks) needs the development set, which adds the training package and the test tools.
venv: $(VENV)/.dev-installed

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"

$(VENV)/.serve-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -e ".[model]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -e ".[dev]"
	touch $@

serve: $(VENV)/.serve-installed
	$(VENV)/bin/facesr serve --host $(HOST) --port $(PORT)

test: venv
	scripts/ensure-redis.sh
	scripts/ensure-chromium.sh
	@$(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	PYTHON=$(PY) scripts/typecheck.sh


check-deploy: venv
	scripts/check-deploy.sh

# Builds the images and runs the compose stack for real on CPU (Docker engine, root; see docs/deploy.md,
# "Compose smoke test"): installs what is missing, cleans up after itself, `--purge` drops its caches.
compose-smoke:
	scripts/compose-smoke.sh

# What CI runs (.ci/run, which goes on after a failure and bounds the smoke test with a timeout).
ci: test lint check-deploy compose-smoke

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
