# Two commands matter:  `make demo` (the whole pipeline, locally)  and  `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3
# aws-sam-cli pins boto3 and pydantic below ours, so it gets a venv of its own.
SAM_VENV ?= .venv-sam
SAM      := $(SAM_VENV)/bin/sam

.PHONY: setup sam-setup demo test test-fast bench sam-build sam-validate clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements/*.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

sam-setup: $(SAM_VENV)/.installed

$(SAM_VENV)/.installed: requirements/sam.txt
	test -x $(SAM_VENV)/bin/python || $(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install -q --upgrade pip
	$(SAM_VENV)/bin/python -m pip install -q -r requirements/sam.txt
	touch $@

demo: setup
	$(VENV)/bin/orchestrator demo

test: setup sam-setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) bench/augment.py
	$(PY) bench/invoker.py
	$(PY) bench/predict.py
	$(PY) bench/costs.py
	$(PY) bench/train.py --quick

# The zip functions and the layer (the train image needs Docker: plain `sam build` builds all).
sam-build: sam-setup
	SAM_CLI_TELEMETRY=0 $(SAM) build --exclude TrainFunction

sam-validate: sam-setup
	SAM_CLI_TELEMETRY=0 $(SAM) validate --lint

clean:
	rm -rf .dlpipe .aws-sam build
