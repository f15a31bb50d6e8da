# Quick start: make install && make demo && make test
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export PYTHONPATH := $(CURDIR)

.PHONY: install demo demo-ablation demo-long test bench

install:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	# CPU wheel on this machine; an unpinned `torch` would pull GBs of CUDA packages.
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt
	# DeepSpeed from its sdist, built against the torch above (no isolated build env,
	# no C++ ops ahead of time).
	DS_BUILD_OPS=0 $(PIP) install --no-build-isolation --no-deps deepspeed==0.19.8
	# dall-e declares torchvision as a dependency but never imports it.
	$(PIP) install --no-deps dall-e==0.1
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, deepspeed, dall_e, decord, av, h5py; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('install ok: torch', torch.__version__)"

demo:
	bash scripts/demo.sh

# The demo plus the ablation (block vs i.i.d. masking, MP-only vs MP+CL): adds <= 26 min on 2 CPU cores.
demo-ablation:
	bash scripts/demo.sh --ablation

# 4x the unlabelled pool and a longer tokenizer run (not timed yet: several times the default).
demo-long:
	bash scripts/demo.sh --profile long

test:
	$(PY) -m pytest -q tests

bench:
	$(PY) benchmarks/run_all.py $(ONLY)
