# Two entry points for a fresh machine:
#   make demo   set up .venv, train a character LSTM on the bundled tiny Shakespeare, generate text
#   make test   set up .venv with the dev extras and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: venv demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"

demo: venv
	$(BIN)/rnnkit demo

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache runs
