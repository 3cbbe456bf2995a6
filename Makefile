# Conveyor: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

# make run
DATA ?=
TARGET ?=
MODEL ?=
# make compile
GPUS ?= 0
GPU_TYPE ?=
GPU_NODE_SELECTOR ?=
IMAGE_REGISTRY ?=
# make test
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run compile test lint format lock clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

install: $(INSTALLED) ## Create .venv and install Conveyor (editable) with its pinned dependencies

run: $(INSTALLED) ## Run the training pipeline locally [DATA=path/uri TARGET=column MODEL=name]
	$(BIN)/conveyor run $(if $(DATA),--data '$(DATA)') $(if $(TARGET),--target '$(TARGET)') $(if $(MODEL),--model '$(MODEL)')

compile: $(INSTALLED) ## Write build/training.{kubeflow,vertex}.yaml and build/components/ [GPUS= GPU_TYPE= IMAGE_REGISTRY=]
	$(BIN)/conveyor compile --output-dir build --gpus $(GPUS) \
		$(if $(GPU_TYPE),--gpu-type '$(GPU_TYPE)') \
		$(if $(GPU_NODE_SELECTOR),--gpu-node-selector '$(GPU_NODE_SELECTOR)') \
		$(if $(IMAGE_REGISTRY),--image-registry '$(IMAGE_REGISTRY)')

test: $(INSTALLED) ## Run lint and the test suite [PYTEST_ARGS=...]
	$(BIN)/ruff check components pipelines tests
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(INSTALLED) ## Check style with ruff
	$(BIN)/ruff check components pipelines tests
	$(BIN)/ruff format --check components pipelines tests

format: $(INSTALLED) ## Format the code with ruff
	$(BIN)/ruff format components pipelines tests
	$(BIN)/ruff check --fix components pipelines tests

lock: ## Re-pin every dependency into constraints.txt from a fresh resolve
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet '.[dev]'
	.lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^conveyor' > constraints.txt
	rm -rf .lock-venv

clean: ## Remove build outputs and local runs (keeps .venv)
	rm -rf build runs local_outputs .pytest_cache
