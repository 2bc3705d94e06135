# Lamina developer commands. Every target creates and reuses .venv.
#
# Two installs, each with its own stamp:
#   make demo  -> .[server]: the store, search, indexer, page and CLI with the weights-free
#                 classic encoder. No torch, no test tools.
#   make venv  -> .[server,torch,test] (what `make test` / `make lint` / `make bench` need).
# torch: on a machine without an NVIDIA driver the CPU build is tried first from
# $(TORCH_CPU_INDEX) (short timeout); when that index cannot be reached, PyPI's build is
# installed instead (with CUDA libraries, several GB) and a line says why. TORCH=cpu|cuda forces
# a choice; TORCH=cuda, or a machine where `nvidia-smi -L` lists a GPU, installs from PyPI.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_STAMP := $(VENV)/.installed-demo
STAMP := $(VENV)/.installed-dev
SHARED ?= ../shared/data
HOME_DEMO ?= demo-data
TORCH ?= auto
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PINS := "torch==2.14.1" "torchvision==0.29.1"

.PHONY: venv torch demo test test-slow test-all bench lint clean

$(BIN)/python:
	@echo "== creating $(VENV) with $(PYTHON) and upgrading pip (~15 MB)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	@echo "== installing lamina[server] in editable mode: numpy, faiss-cpu, duckdb, pyarrow,"
	@echo "   OpenSlide, scikit-image, scikit-learn, Flask... (~220 MB of wheels, ~0.8 GB on disk; no torch)"
	$(BIN)/pip install --progress-bar on -e ".[server]"
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	@$(MAKE) --no-print-directory torch
	@echo "== installing lamina[server,torch,test]: the server, timm, and the test tools"
	@echo "   (TensorFlow CPU, ONNX Runtime, Ray, Playwright, pytest, ruff, mypy; ~3 GB on disk besides torch)"
	$(BIN)/pip install --progress-bar on -e ".[server,torch,test]"
	touch $(STAMP) $(DEMO_STAMP)

# torch + torchvision, CPU build where there is no GPU (see the header).
torch: | $(BIN)/python
	@gpu=no; if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu=yes; fi; \
	want="$(TORCH)"; if [ "$$want" = auto ]; then want=cpu; [ $$gpu = yes ] && want=cuda; fi; \
	if [ "$$want" = cpu ]; then \
	  echo "== checking that $(TORCH_CPU_INDEX) answers (15 s at most)"; \
	  if $(BIN)/python -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=15)" 2>/dev/null; then \
	    echo "== installing CPU torch + torchvision from $(TORCH_CPU_INDEX) (~200 MB of wheels)"; \
	    if $(BIN)/pip install --progress-bar on --index-url $(TORCH_CPU_INDEX) $(TORCH_PINS); then exit 0; fi; \
	  fi; \
	  echo "== the CPU index $(TORCH_CPU_INDEX) could not be reached or had no matching build;"; \
	  echo "   installing torch from PyPI instead: it carries CUDA libraries (5.3 GB on disk) that"; \
	  echo "   a machine without a GPU never uses. Re-run with network access to the CPU index to avoid it."; \
	else \
	  echo "== installing CUDA torch + torchvision from PyPI (~3 GB of wheels, 5.3 GB on disk with its CUDA libraries)"; \
	fi; \
	$(BIN)/pip install --progress-bar on $(TORCH_PINS) || $(BIN)/pip install --progress-bar on torch torchvision

venv: $(STAMP)

demo: $(DEMO_STAMP)
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
