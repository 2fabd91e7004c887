# `make demo` and `make test` are the README's two commands; both set up .venv on first use.
VENV ?= .venv
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench default-model severity-model topic-model

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	# TSB-AD's metric code, the reference tests/test_labelled.py checks VUS-PR against; --no-deps
	# because the package pins numpy < 2 and pulls transformers, which its metrics do not use.
	$(PIP) install -q --no-deps tsb-ad==1.5
	$(VENV)/bin/python -c "from stream.heads.metrics import load_kernels; load_kernels()"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/tsguard demo

# Two workers: most of the suite's time is waiting on brokers, group joins and subprocesses, so
# two processes on two cores finish in about 6 minutes instead of about 9.5.
test: setup
	$(VENV)/bin/pytest -q -n 2

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	$(VENV)/bin/python -m benchmarks.run_all

default-model: setup
	PYTHON=$(VENV)/bin/python bash scripts/train_default_model.sh

# The log severity head (detector/logs/models/severity): needs ../shared/data/loghub; prints the
# leave-one-system-out F1 it was calibrated on.
severity-model: setup
	$(VENV)/bin/python -m training.severity

# The log topic head (detector/logs/models/topic): needs ../shared/data/loghub; prints the
# leave-one-system-out F1 it was calibrated on.
topic-model: setup
	$(VENV)/bin/python -m training.topic
