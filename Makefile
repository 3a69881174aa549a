# Two commands: `make demo` and `make test`. Both create .venv on first use and install the pinned stack.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_output

# No model or data is ever downloaded: any accidental hub call fails at once instead of hanging.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: demo demo-full test install clean-demo

$(STAMP): requirements.txt requirements-sam2.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -r requirements.txt -r requirements-dev.txt
	SAM2_BUILD_CUDA=0 $(PIP) install -q --no-build-isolation -c constraints.txt -r requirements-sam2.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# the whole chain on the simulated dataset with the model zoo: data -> synthesis -> nnU-Net -> 3D evaluation
demo: $(STAMP)
	$(PY) scripts/run_pipeline.py --config training_configs/pipeline/demo.yml out=$(DEMO_OUT)

# the whole chain, training every model from scratch instead of using the model zoo
demo-full: $(STAMP)
	$(PY) scripts/run_pipeline.py --config training_configs/pipeline/demo.yml models.train=true out=$(DEMO_OUT)_full

clean-demo:
	rm -rf $(DEMO_OUT)
