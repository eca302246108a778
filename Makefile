# User-facing targets: `make demo`, `make test` (the whole suite, what CI runs) and `make test-fast` (unit
# tests only, the edit-test loop). They create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S ?= 0.1

.PHONY: demo test test-fast bench gpu-check lint dups clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vpace demo

test: $(STAMP)  # two pytest-xdist workers, each taking whole files (tests/conftest.py: LONGEST_FILES)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests

test-fast: $(STAMP)  # the edit-test loop: everything but the Ray end-to-end runs (`slow`)
	$(BIN)/python -m pytest -q -m "not slow" --durations=10 tests

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# On a bare GPU machine (no venv, vpace not installed): its python3, nothing installed. Exits non-zero on a
# wrong result; without CUDA it is a dry run at tiny sizes (benchmarks/gpu_check.py).
GPU_PY := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY))
gpu-check:
	$(GPU_PY) -m benchmarks.gpu_check

lint: $(STAMP)
	$(BIN)/ruff check vpace kernels tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
