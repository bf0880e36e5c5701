# Set-up included: `make demo` and `make test` create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One stamp per install, redone when pyproject.toml changes.
$(VENV)/installed-data: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[data]'
	touch $@

$(VENV)/installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[test,data]'
	touch $@

# The recipe in miniature: the shipped raw corpus through the Beam pipelines (the data extra),
# tokenizer, training, evaluation and samples, to runs/demo/report.md.
# On the CPU, also where JAX's CUDA plugin is installed (make test installs it to compile for GPUs).
demo: $(VENV)/installed-data
	JAX_PLATFORMS=cpu $(BIN)/python -m llama_jax.recipe --config=configs/mini.py --workdir=runs/demo

lint: $(VENV)/installed-test
	$(BIN)/ruff check .

# Tests marked slow (the 3-kill soak, variants of faster tests) are left to test-all. The tests
# run in one worker process per core (at most 4: each simulates 8 devices), a test file to a
# worker so that its module fixtures are built once: about 10 minutes on two cores.
PYTEST := $(BIN)/python -m pytest -n auto --maxprocesses=4 --dist loadfile

test: lint
	$(PYTEST) -m "not slow"

test-all: lint
	$(PYTEST)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache runs
