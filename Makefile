# Two commands matter:  `make demo` (the whole pipeline, locally)  and  `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3
# aws-sam-cli pins boto3 and pydantic below ours, so it gets a venv of its own.
SAM_VENV ?= .venv-sam
SAM      := $(SAM_VENV)/bin/sam

# The one lock: every install takes its exact versions from here (the layer and the train image too).
LOCK   := requirements/constraints.txt
# What ruff checks: every Python file of the repository.
LINTED := layers orchestrator functions tests bench

.PHONY: setup sam-setup demo test test-fast lint typecheck lock bench sam-build sam-validate clean

setup: $(VENV)/.installed

# The package, editable, with its [train] and [dev] extras, at the lock's versions.
$(VENV)/.installed: requirements/*.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e '.[train,dev]'
	touch $@

# Re-resolve every package to the newest versions the ranges in requirements/*.txt allow, in a
# scratch venv, and write them to the lock; then `make setup test` and commit the lock.
# pip freeze leaves out pip, setuptools and wheel; `tensorflow` is the aarch64 image's, at tensorflow-cpu's version.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q '.[train,dev]'
	.venv-lock/bin/python -m pip freeze --exclude-editable | grep -v -i -e '^#' -e '^dlpipe[ =@]' > .venv-lock/frozen.txt
	{ sed -n '/^#/p' $(LOCK); cat .venv-lock/frozen.txt; \
	  sed -n 's/^tensorflow[-_]cpu==/tensorflow==/p' .venv-lock/frozen.txt; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock

sam-setup: $(SAM_VENV)/.installed

$(SAM_VENV)/.installed: requirements/sam.txt
	test -x $(SAM_VENV)/bin/python || $(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install -q --upgrade pip
	$(SAM_VENV)/bin/python -m pip install -q -r requirements/sam.txt
	touch $@

demo: setup
	$(VENV)/bin/orchestrator demo

test: setup sam-setup lint typecheck
	$(PY) -m pytest -q

test-fast: setup lint typecheck
	$(PY) -m pytest -q -m "not slow"

# Seconds, not minutes: ruff's rules and format, mypy's settings and what it checks are in pyproject.toml.
lint: setup
	$(VENV)/bin/ruff check $(LINTED)

typecheck: setup
	$(PY) -m mypy

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
