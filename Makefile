# Set-up and day-to-day commands. `make run` serves the demo; `make test` runs the suite
# on SQLite and on a throwaway PostgreSQL server. Both create .venv on first use.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv run test lint clean

help:
	@echo "make run    serve the demo programme on 127.0.0.1, port PORT (default 5000)"
	@echo "make test   run the test suite on SQLite and on PostgreSQL"
	@echo "make lint   ruff check"
	@echo "make clean  remove .venv, instance/ and caches"

# Internal: the virtualenv with the project installed (editable) and its dev extras.
venv: $(STAMP)

$(PY):
	python3 -m venv $(VENV)

# Re-installs whenever pyproject.toml changes; the stamp lives inside .venv, so a new
# .venv always gets a fresh install.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

run: venv
	exec $(VENV)/bin/carepulse serve --host 127.0.0.1 --port $${PORT:-5000} --demo

test: venv
	scripts/test-suite

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -maxdepth 2 -name '*.egg-info' -type d -prune -exec rm -rf {} +
