# Conveyor: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

# make run, validate, monitor: LABEL is the label column (TARGET, its older name, still works)
DATA ?=
LABEL ?=
TARGET ?=
label = $(or $(LABEL),$(TARGET))
MODEL ?=
# make compile
GPUS ?= 0
GPU_TYPE ?=
GPU_NODE_SELECTOR ?=
IMAGE_REGISTRY ?=
# make images / push: docker when its daemon answers, else podman or buildah when installed,
# else docker if installed (make images then says its daemon is down); decided once, when first
# used. DOCKER= picks one, with its global options (DOCKER="buildah --storage-driver vfs");
# IMAGE_BUILD_FLAGS adds build options (IMAGE_BUILD_FLAGS="--isolation chroot"). See
# images/README.md.
docker_up = $(if $(shell docker info >/dev/null 2>&1 && echo up),docker)
installed = $(foreach engine,$(1),$(if $(shell command -v $(engine) 2>/dev/null),$(engine)))
DOCKER ?= $(eval DOCKER := $(firstword $(docker_up) $(call installed,podman buildah docker)))$(DOCKER)
IMAGE_BUILD_FLAGS ?=
# make serve
PORT ?= 8080
# make submit / schedule
KFP_HOST ?=
CONFIG ?= dev
EXPERIMENT ?= conveyor
CRON ?=
DRY_RUN ?=
# make submit-vertex / schedule-vertex / publish
PROJECT ?=
REGION ?=
PIPELINE_ROOT ?=
SERVICE_ACCOUNT ?=
TEMPLATE ?=
TIMEZONE ?= UTC
REPLACE ?=
REPO ?=
TAG ?=
# make drift
REFERENCE ?=
CURRENT ?=
SEGMENT ?=
REPORT ?= build/drift.html
# make validate, make monitor
SCHEMA ?= schema.json
WRITE ?=
INPUTS ?=
LABELS ?=
PUSHGATEWAY ?=
# make test
PYTEST_ARGS ?=
TEST_WORKERS ?= auto
# make bench
BENCH_ARGS ?=
DRIFT_BENCH_ARGS ?=
VALIDATION_BENCH_ARGS ?=
QUALITY_BENCH_ARGS ?=
SCALE_BENCH_ARGS ?=
GPU_CHECK_ARGS ?=
MLSERVER_VENV := .bench/mlserver-venv
MLSERVER_INSTALLED := $(MLSERVER_VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: gpu-install gpu-check
.PHONY: help install run serve compile check submit schedule submit-vertex schedule-vertex publish drift test golden wheel lint format images push lint-images bench bench-serving bench-drift bench-validation bench-quality bench-scale validate monitor lock clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# After make gpu-install: XGBoost's two builds share their files, so both go first.
	@if $(BIN)/python -m pip show --quiet xgboost 2>/dev/null; then \
		$(BIN)/python -m pip uninstall --quiet --yes xgboost xgboost-cpu; fi
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

install: $(INSTALLED) ## Create .venv and install Conveyor (editable) with its pinned dependencies

run: $(INSTALLED) ## Run the training pipeline locally [DATA=path/uri LABEL=column (or TARGET=) MODEL=name]
	$(BIN)/conveyor run $(if $(DATA),--data '$(DATA)') $(if $(label),--label '$(label)') $(if $(MODEL),--model '$(MODEL)')

serve: $(INSTALLED) ## Serve a model's champion from local runs on this machine [MODEL=name PORT=8080]
	$(BIN)/conveyor serve $(if $(MODEL),--model '$(MODEL)') --port $(PORT)

compile: $(INSTALLED) ## Write build/{training,monitoring}.{kubeflow,vertex}.yaml and build/components/ [GPUS= GPU_TYPE= IMAGE_REGISTRY=]
	$(BIN)/conveyor compile --output-dir build --gpus $(GPUS) \
		$(if $(GPU_TYPE),--gpu-type '$(GPU_TYPE)') \
		$(if $(GPU_NODE_SELECTOR),--gpu-node-selector '$(GPU_NODE_SELECTOR)') \
		$(if $(IMAGE_REGISTRY),--image-registry '$(IMAGE_REGISTRY)')

check: $(INSTALLED) ## Compile every pipeline for every target and check configs/*.yaml
	$(BIN)/conveyor check

submit: $(INSTALLED) ## Upload to Kubeflow and start a run [KFP_HOST= CONFIG=dev EXPERIMENT= DRY_RUN=1]
	$(BIN)/conveyor submit --target kubeflow --host '$(KFP_HOST)' --params configs/$(CONFIG).yaml \
		--experiment '$(EXPERIMENT)' $(if $(IMAGE_REGISTRY),--image-registry '$(IMAGE_REGISTRY)') \
		$(if $(DRY_RUN),--dry-run)

schedule: $(INSTALLED) ## Run on Kubeflow on a cron, in UTC [KFP_HOST= CRON="0 6 * * 1-5" CONFIG=dev DRY_RUN=1]
	$(BIN)/conveyor schedule --target kubeflow --host '$(KFP_HOST)' --params configs/$(CONFIG).yaml \
		--experiment '$(EXPERIMENT)' --cron '$(CRON)' \
		$(if $(IMAGE_REGISTRY),--image-registry '$(IMAGE_REGISTRY)') $(if $(DRY_RUN),--dry-run)

vertex_args = --project '$(PROJECT)' --region '$(REGION)' --pipeline-root '$(PIPELINE_ROOT)' \
	--params configs/$(CONFIG).yaml $(if $(SERVICE_ACCOUNT),--service-account '$(SERVICE_ACCOUNT)') \
	$(if $(TEMPLATE),--template '$(TEMPLATE)') $(if $(IMAGE_REGISTRY),--image-registry '$(IMAGE_REGISTRY)') \
	$(if $(DRY_RUN),--dry-run)

submit-vertex: $(INSTALLED) ## Submit to Vertex AI Pipelines [PROJECT= REGION= PIPELINE_ROOT=gs://… CONFIG=dev TEMPLATE= DRY_RUN=1]
	$(BIN)/conveyor submit --target vertex $(vertex_args)

schedule-vertex: $(INSTALLED) ## Run on Vertex AI on a cron [PROJECT= REGION= PIPELINE_ROOT= CRON= TIMEZONE=Europe/Paris REPLACE=1]
	$(BIN)/conveyor schedule --target vertex $(vertex_args) --cron '$(CRON)' --timezone '$(TIMEZONE)' \
		$(if $(REPLACE),--replace)

publish: $(INSTALLED) ## Publish the Vertex template to Artifact Registry [REPO=https://REGION-kfp.pkg.dev/P/R TAG=v1 DRY_RUN=1]
	$(BIN)/conveyor publish --target vertex --repo '$(REPO)' --tag '$(TAG)' \
		$(if $(IMAGE_REGISTRY),--image-registry '$(IMAGE_REGISTRY)') $(if $(DRY_RUN),--dry-run)

drift: $(INSTALLED) ## Compare CURRENT with REFERENCE for drift; exit 3 on drift [REFERENCE= CURRENT= SEGMENT= REPORT=build/drift.html]
	$(BIN)/conveyor drift --reference '$(REFERENCE)' --current '$(CURRENT)' --report '$(REPORT)' \
		$(if $(SEGMENT),--segment '$(SEGMENT)')

validate: $(INSTALLED) ## Check DATA against SCHEMA; exit 3 when a rule fails [DATA= SCHEMA=schema.json WRITE=1 LABEL= SEGMENT=]
	$(BIN)/conveyor validate --data '$(DATA)' --schema '$(SCHEMA)' \
		$(if $(WRITE),--write-schema $(if $(label),--label '$(label)') $(if $(SEGMENT),--segment '$(SEGMENT)'))

monitor: $(INSTALLED) ## Run the monitoring pipeline locally: INPUTS (and LABELS) vs MODEL's champion, retraining on DATA on drift or degradation [INPUTS= MODEL= DATA= LABEL= LABELS= PUSHGATEWAY=]
	$(BIN)/conveyor monitor --inputs '$(INPUTS)' --model '$(MODEL)' \
		$(if $(DATA),--data '$(DATA)') $(if $(label),--label '$(label)') \
		$(if $(LABELS),--labels '$(LABELS)') $(if $(PUSHGATEWAY),--pushgateway '$(PUSHGATEWAY)')

# A test file runs whole in one worker, so its servers (MLflow, Prometheus) start once.
test: $(INSTALLED) lint-images ## Run lint, lint-images and the test suite [PYTEST_ARGS=... TEST_WORKERS=auto]
	$(BIN)/ruff check components pipelines tests bench
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# After an intended change to a pipeline's or component's parameters, inputs, outputs or tasks.
golden: $(INSTALLED) ## Rewrite tests/golden/ (the compiled interfaces test_golden.py checks) from the code
	UPDATE_GOLDEN=1 $(BIN)/python -m pytest -q tests/test_golden.py

# setuptools stages a build in build/lib, which `make compile` shares: a stale one (from a
# release before the conveyor namespace) would put its top-level packages back in the wheel.
wheel: $(INSTALLED) ## Build dist/conveyor-<version>-py3-none-any.whl (one top-level package, conveyor)
	rm -rf build/lib build/bdist.*
	$(BIN)/python -m pip wheel --quiet --no-deps -w dist .

lint: $(INSTALLED) ## Check style with ruff
	$(BIN)/ruff check components pipelines tests bench
	$(BIN)/ruff format --check components pipelines tests bench

format: $(INSTALLED) ## Format the code with ruff
	$(BIN)/ruff format components pipelines tests bench
	$(BIN)/ruff check --fix components pipelines tests bench

# Images: images/<kind>/Dockerfile, named and tagged by components/images.py (tag = package
# version), exactly as compiled pipelines refer to them.
image = $(shell $(BIN)/python -c 'import sys; from conveyor.components.images import image; print(image(*sys.argv[1:]))' $(1) $(if $(IMAGE_REGISTRY),'$(IMAGE_REGISTRY)'))
# No engine is a make error, so even `make -n images` says so, in one line.
need_docker = $(if $(DOCKER),,$(error make $@: no container engine: install docker, podman or buildah, or name one with DOCKER=))@$(DOCKER) info >/dev/null 2>&1 || { echo "make $@: '$(DOCKER) info' failed: is $(firstword $(DOCKER)) working (and docker's daemon running)?" >&2; exit 1; }
# buildah caches layers only when asked: with them, the three builds install the venv once.
build_flags = $(if $(filter buildah,$(notdir $(firstword $(DOCKER)))),--layers) $(IMAGE_BUILD_FLAGS)

images: $(INSTALLED) ## Build the base, gpu and serving images with docker, podman or buildah [IMAGE_REGISTRY= DOCKER= IMAGE_BUILD_FLAGS=]
	$(need_docker)
	$(DOCKER) build $(build_flags) -f images/base/Dockerfile -t $(call image,base) .
	$(DOCKER) build $(build_flags) -f images/gpu/Dockerfile -t $(call image,gpu) .
	$(DOCKER) build $(build_flags) -f images/serving/Dockerfile -t $(call image,serving) .

push: $(INSTALLED) ## Push the three images that make images built [IMAGE_REGISTRY= DOCKER=]
	$(need_docker)
	$(DOCKER) push $(call image,base)
	$(DOCKER) push $(call image,gpu)
	$(DOCKER) push $(call image,serving)

lint-images: $(INSTALLED) ## Check the three Dockerfiles with hadolint
	$(BIN)/hadolint images/base/Dockerfile images/gpu/Dockerfile images/serving/Dockerfile

# MLServer pins an older FastAPI than KServe: it gets a venv of its own.
$(MLSERVER_INSTALLED): bench/mlserver-requirements.txt
	rm -rf $(MLSERVER_VENV) && $(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MLSERVER_VENV)/bin/python -m pip install --quiet -r bench/mlserver-requirements.txt
	@touch $@

bench: bench-serving bench-drift bench-validation bench-quality ## Every benchmark, each side by side over 5+ alternating rounds (median ratio, spread): serving vs MLServer, drift vs Evidently, validation vs a pandas read, quality vs a pyarrow read

bench-serving: $(INSTALLED) $(MLSERVER_INSTALLED) ## Serving throughput and latency vs MLServer, 5 alternating rounds; writes build/bench/serving.json [BENCH_ARGS=--rounds N --duration S]
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& { apt-get install -y -qq wrk >/dev/null 2>&1 \
			|| { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }; }; } \
		|| echo "bench: could not install wrk; the Python load generator stands in"
	$(BIN)/python -m bench.serving $(BENCH_ARGS)

bench-drift: $(INSTALLED) ## Drift on 1,000,000 x 30 rows vs Evidently's DataDriftPreset, same verdicts, 5 alternating rounds; writes build/bench/drift.json [DRIFT_BENCH_ARGS=--rows N --rounds N]
	$(BIN)/python -m bench.drift $(DRIFT_BENCH_ARGS)

bench-validation: $(INSTALLED) ## Validation of 1,000,000 x 30 rows of Parquet vs a plain pandas read, 5 alternating rounds; writes build/bench/validation.json [VALIDATION_BENCH_ARGS=--rows N --rounds N]
	$(BIN)/python -m bench.validation $(VALIDATION_BENCH_ARGS)

bench-quality: $(INSTALLED) ## Labels joined to 10,000,000 logged predictions, every metric, vs a plain pyarrow read, 5 alternating rounds; writes build/bench/quality.json [QUALITY_BENCH_ARGS=--rows N --rounds N]
	$(BIN)/python -m bench.quality $(QUALITY_BENCH_ARGS)

bench-scale: $(INSTALLED) ## Streaming drift + validation at 1M, 10M, 30M rows (time, peak memory) vs Evidently under a memory cap and timeout; not in make bench; writes build/bench/scale.json [SCALE_BENCH_ARGS=--sizes 1M,3M --skip-evidently [SIZES] --no-keep]
	$(BIN)/python -m bench.scale $(SCALE_BENCH_ARGS)

gpu-install: | $(INSTALLED) ## Put XGBoost's CUDA build in .venv in place of its CPU build, as the gpu image has it
	@version=$$($(BIN)/python -c 'import xgboost; print(xgboost.__version__)') \
		&& $(BIN)/python -m pip uninstall --quiet --yes xgboost-cpu \
		&& $(BIN)/python -m pip install --quiet --no-deps "xgboost==$$version" \
		&& echo "xgboost $$version (CUDA build) in $(VENV); back to the CPU build:" \
			"rm $(INSTALLED) && make install"

gpu-check: | $(INSTALLED) ## On a GPU machine: XGBoost through Conveyor on the CPU and the GPU, times and metrics side by side [GPU_CHECK_ARGS=--rows N]
	$(BIN)/python -m bench.gpu_check $(GPU_CHECK_ARGS)

lock: ## Re-pin every dependency into constraints.txt from a fresh resolve
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet '.[dev]'
	.lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^conveyor' > constraints.txt
	rm -rf .lock-venv

clean: ## Remove build outputs and local runs (keeps .venv)
	rm -rf build dist runs local_outputs .pytest_cache
