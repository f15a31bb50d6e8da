# Quick start: make install && make demo && make test
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Where torch comes from. Empty (default): the CPU wheel this machine's pip resolves. On a CUDA
# machine, PyTorch's index for a CUDA build your driver supports, e.g.
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_INDEX ?=
export PYTHONPATH := $(CURDIR)

.PHONY: install demo demo-ablation demo-long demo-varied test bench gpu-wheels

install:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	# CPU wheel on this machine (TORCH_INDEX: a CUDA build); an unpinned `torch` would pull GBs of CUDA packages.
	$(PIP) install torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -r requirements.txt
	# DeepSpeed from its sdist, built against the torch above (no isolated build env,
	# no C++ ops ahead of time).
	DS_BUILD_OPS=0 $(PIP) install --no-build-isolation --no-deps deepspeed==0.19.8
	# dall-e declares torchvision as a dependency but never imports it.
	$(PIP) install --no-deps dall-e==0.1
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, deepspeed, dall_e, decord, av, h5py; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('install ok: torch', torch.__version__)"

# Both regimes (shared looks; every video its own looks), one combined report: snap/demo_report.md.
demo:
	bash scripts/demo.sh --profile default varied

# The default regime with every pre-training variant of vimpac/demo/layout.py (VARIANTS) and the all-labels
# ceiling (not timed yet with the test-split protocol: hours on 2 CPU cores).
demo-ablation:
	bash scripts/demo.sh --ablation

# 4x the unlabelled pool and a longer tokenizer run (not timed yet: several times the default).
demo-long:
	bash scripts/demo.sh --profile long

# Only the varied regime: every video its own background and colours, H.264 crf 28, 512 codes (the looks of row 1
# of README's "What makes pre-training help" table); same objects, sizes and budget as the default regime.
demo-varied:
	bash scripts/demo.sh --profile varied

test:
	$(PY) -m pytest -q tests

bench:
	$(PY) benchmarks/run_all.py $(ONLY)

# Wheels for scripts/gpu_check.sh, for the GPU machine: Python 3.12 with torch 2.11 (cu130), numpy,
# h5py, safetensors, einops, sympy, tqdm, matplotlib, tensorboard, psutil, py-cpuinfo, msgpack, ninja,
# attrs, requests, pytest but none of the packages below. Same versions as this venv (what `make
# test` passes with); never torch, torchvision or nvidia-*. typing-extensions is there too, but
# pydantic 2.14 needs >= 4.16.0. DeepSpeed is built from its sdist without ops, as in `install`.
GPU_WHEELS := gpu_wheels
GPU_WHEEL_PKGS := av decord dall-e vector-quantize-pytorch einx frozendict torch-einops-utils loguru \
	hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions
gpu-wheels:
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(PIP) download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 \
		-d $(GPU_WHEELS) $$($(PY) -c "import sys, importlib.metadata as m; print(*(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" $(GPU_WHEEL_PKGS))
	DS_BUILD_OPS=0 $(PIP) wheel --quiet --no-cache-dir --no-deps --no-build-isolation -w $(GPU_WHEELS) \
		deepspeed==$$($(PY) -c "import importlib.metadata as m; print(m.version('deepspeed'))")
	! ls $(GPU_WHEELS) | grep -iE '^((torch|torchvision|torchaudio|triton)-[0-9]|nvidia)'
	ls -1 $(GPU_WHEELS)
	du -sh --apparent-size $(GPU_WHEELS)  # travels to the GPU machine with the repo: 64 MiB in all
