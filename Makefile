# Lamina developer commands. Every target creates and reuses .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= ../shared/data
HOME_DEMO ?= demo-data

.PHONY: venv demo test test-slow test-all bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/pip install --quiet torch torchvision
	$(BIN)/pip install --quiet -e ".[server,torch,test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m lamina.api.demo --home $(HOME_DEMO) $(DEMO_ARGS)

# Default: everything but the suites marked slow (chaos kills, Ray clusters, fuzzing, load,
# full disks...); CI runs both.
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python -m bench.run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(HOME_DEMO) .pytest_cache
