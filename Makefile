# The two commands of the README: `make serve` (main job) and `make test` (tests).
# Each sets up its own virtual environment in .venv the first time (about a minute: torch is large).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: serve test summary bench-backbone bench-service docker-build docker clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# The API on HOST:PORT (default 127.0.0.1:8000) with the demo models of service/models/; settings are
# environment variables (service/settings.py), e.g. `PORT=9000 MAX_BATCH=16 make serve`.
# MALLOC_ARENA_MAX=2: glibc's per-thread arenas otherwise grow the resident memory of a threaded server
# (measured in docs/BENCHMARKS.md).
serve: $(VENV)/.installed
	MALLOC_ARENA_MAX=$${MALLOC_ARENA_MAX:-2} $(PY) -m service

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

summary: $(VENV)/.installed
	$(PY) -m backbone.summary

bench-backbone: $(VENV)/.installed
	$(PY) -m bench.backbone

# Loopback load test of the API (about 3 minutes): batching on vs off vs a naive handler.
bench-service: $(VENV)/.installed
	$(PY) -m bench.service

# Containers (kept out of `make test`: several minutes and several GB). CONTAINER=docker COMPOSE="docker compose"
# for Docker; TORCH_INDEX_URL=https://pypi.org/simple where only PyPI is reachable.
CONTAINER ?= podman
COMPOSE ?= podman-compose
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
# podman writes OCI images by default, which drop HEALTHCHECK; the docker format keeps it.
BUILD_FORMAT := $(if $(filter podman,$(CONTAINER)),--format docker)
docker-build:
	$(CONTAINER) build $(BUILD_FORMAT) --network host -f docker/Dockerfile -t resdet:cpu \
		--build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL) .

# Build, start the compose `api` service, POST bus.jpg to /detect, stop it.
docker: docker-build
	CONTAINER=$(CONTAINER) COMPOSE="$(COMPOSE)" bash docker/smoke.sh

clean-venv:
	rm -rf $(VENV)
