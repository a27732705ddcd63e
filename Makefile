# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
# Everything else here is a step they call.

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.synctalk-deps-$(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
DEMO_DIR ?= demo-output

# Model files: tests and CI look in ../shared/models first (no download), when it is there.
SHARED_MODELS := $(abspath ../shared/models)
ifneq ($(wildcard $(SHARED_MODELS)/SHA256SUMS),)
export SYNCTALK_MODEL_SOURCES ?= $(SHARED_MODELS)
endif
# torch's guess of CUDA_HOME from the nvcc wrapper on PATH fails at link time: name the toolkit itself.
ifneq ($(wildcard /usr/local/cuda-13.0/include/cuda.h),)
export CUDA_HOME ?= /usr/local/cuda-13.0
endif
export PYTHONUNBUFFERED := 1

.PHONY: venv install models kernels test lint demo bench clean

venv: $(STAMP)

# Dependencies come pinned from requirements.lock; the project itself is installed editable on top.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -r requirements.lock
	@rm -f $(VENV)/.synctalk-deps-*
	@touch $@

install: venv
	@$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
	  || $(BIN)/python -m pip install --no-deps --no-build-isolation -e .

models: install
	$(BIN)/synctalk models fetch

# The CPU build of cuda_ext (cached on disk; a no-op when it is up to date).
kernels: install
	$(BIN)/python -m cuda_ext.build --cpu

test: install models kernels
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo: install models kernels
	$(BIN)/python -m services.demo --out $(DEMO_DIR)

bench: install kernels
	$(BIN)/python bench/kernels.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info .pytest_cache
