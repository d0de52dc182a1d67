# The two commands of the README: `make serve` (main job) and `make test` (tests).
# Each sets up its own virtual environment in .venv the first time (about a minute: torch is large).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: serve test summary bench-backbone clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

serve: $(VENV)/.installed
	$(PY) -m backbone.summary

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

summary: $(VENV)/.installed
	$(PY) -m backbone.summary

bench-backbone: $(VENV)/.installed
	$(PY) -m bench.backbone

clean-venv:
	rm -rf $(VENV)
