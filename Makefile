# The two commands of the README: `make serve` (main job) and `make test` (tests).
# Each sets up its own virtual environment in .venv the first time (minutes: torch is large; README.md), with
# every extra (the dev extra pulls train: TensorBoard and matplotlib; video: PyAV; export: ONNX), so `make test` runs it all.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: serve test summary bench-backbone bench-service soak demo-models mutants docker-build docker clean-venv

# torch first, as the image gets it (docker/install-torch.sh): from the CPU wheel index when it answers within 5 s,
# else from pip's own index. A failed install stops here, and .installed is not written.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	sh docker/install-torch.sh $(PY) pyproject.toml
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# The API on HOST:PORT (default 127.0.0.1:8000) with the demo models of service/models/; settings are
# environment variables (service/settings.py), e.g. `PORT=9000 MAX_BATCH=16 make serve`.
# MALLOC_ARENA_MAX=2: glibc's per-thread arenas otherwise grow the resident memory of a threaded server
# (measured in docs/BENCHMARKS.md). RUNTIME=auto: both models' networks run under OpenVINO where installed (the
# venv has it), else ONNX Runtime, else eager PyTorch (/models says which and why); the first start exports them
# into $RESDET_CACHE (~/.cache/resdet) while /readyz answers 503 saying so. RUNTIME=torch for eager PyTorch.
serve: $(VENV)/.installed
	MALLOC_ARENA_MAX=$${MALLOC_ARENA_MAX:-2} RUNTIME=$${RUNTIME:-auto} $(PY) -m service

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

summary: $(VENV)/.installed
	$(PY) -m backbone.summary

bench-backbone: $(VENV)/.installed
	$(PY) -m bench.backbone

# Retrain the two demo models shipped in service/models/ (about 1 hour on a 2-core CPU): the synthetic
# shapes detector (training/train_det.py --recipe synthetic) and a CIFAR-10 ResNet-20 (training/pretrain.py,
# the paper's recipe scaled to 1000 iterations). Needs ../shared/data/cifar10-jpeg.tar.gz for the classifier.
demo-models: $(VENV)/.installed
	$(PY) -m detection.data.synthetic --out runs/shapes128 --num-train 1000 --num-val 200 --image-size 128 --seed 0
	$(PY) training/train_det.py --recipe synthetic --dataset coco --data_path runs/shapes128/coco \
		--output_dir runs/synth_r18w16_fpn
	OMP_NUM_THREADS=1 $(PY) training/pretrain.py --recipe cifar10 --data_path ../shared/data/cifar10-jpeg.tar.gz \
		--model cifar_resnet20 --max_iterations 1000 --lr_milestones 500 750 --eval_every 100 --log_every 10 \
		--workers 1 --decoder torchvision --output_dir runs/cifar_resnet20
	cp runs/synth_r18w16_fpn/model.safetensors service/models/demo_detector.safetensors
	cp runs/cifar_resnet20/model.safetensors service/models/demo_classifier.safetensors

# Mutation testing (not part of `make test`: tens of minutes on 2 cores) of detection/evaluation/,
# training/run_checkpoint.py, training/sampler.py, service/security.py, service/body_limit.py and service/images.py,
# configured in pyproject.toml [tool.mutmut]. MUTANTS narrows the run to names matching a glob, e.g.
# `make mutants MUTANTS='training.run_checkpoint*'`; results stay in mutants/ (`$(VENV)/bin/mutmut results`).
MUTANTS ?=
mutants: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check 'mutmut>=3.3'
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run $(if $(MUTANTS),"$(MUTANTS)")
	$(VENV)/bin/mutmut results

# Loopback load test of the API (about 5 minutes): batching on vs off vs a naive handler in the route.
bench-service: $(VENV)/.installed
	$(PY) -m bench.service

# Good beside hostile traffic at concurrency 16 for 5 minutes against a server it starts on 127.0.0.1
# (issue 10's goals: no 5xx but deliberate 503s, good p99 within 1.5x, flat memory); `--url` for a running one.
soak: $(VENV)/.installed
	$(PY) -m bench.soak

# Containers (kept out of `make test`: several minutes and several GB; docs/DEPLOYMENT.md). podman, or Docker:
# COMPOSE="docker compose" is podman-compose through ../shared/tools/container-kit.sh --docker-shim, or Docker's.
# TORCH_INDEX_URL: the index tried first for torch (docker/install-torch.sh); empty for pip's own index only.
# The image resdet:cpu, labelled with the torch index it got.
docker-build:
	bash docker/smoke.sh build

# The container smoke stage of .ci/run: build, up, POST bus.jpg, compare with detection.predict, down, clean up.
docker: $(VENV)/.installed
	PYTHON=$(PY) bash docker/smoke.sh

clean-venv:
	rm -rf $(VENV)
