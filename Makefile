# Two entry points: `make finetune` (the main job) and `make test`. Both set up .venv on first use.
# torch==2.13.0 as pip resolves it (PyPI's Linux wheel is the CUDA build: for the CPU one, or a GPU build of your
# platform, install torch into .venv first; see docs/installation.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: setup finetune test docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml or constraints.txt change; torch is pinned separately (GPU builds differ).
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[demo,dev]"
	touch $@

setup: $(VENV)/.installed

# -q: on a user error the script's one-line message stands alone, without the launcher's own traceback.
# accelerate gives a process one CPU thread unless told; one process, every core (a GPU ignores it). The launcher's
# own defaults are given so that it prints no warning about them: the script sets its precision itself
# (--mixed_precision auto: bf16 where the hardware runs it natively).
THREADS ?= $(shell nproc 2>/dev/null || echo 1)
finetune: setup
	$(BIN)/accelerate launch -q --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		--num_cpu_threads_per_process $(THREADS) scripts/finetune.py $(ARGS)

# ruff first (configured in pyproject.toml): a lint failure fails the suite. Two pytest workers, each handed a whole
# file at a time: most of the suite waits on launched processes, a file's fixtures are built once, and the Ray
# cluster tests (one file) share ~/.ray. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/ruff check hfreg scripts benchmarks tests configs
	$(BIN)/python -m pytest -q -m "slow or not slow" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# the documentation site (docs/ and the docstrings) into site/; strict: a broken link or reference fails
docs: setup
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV)
