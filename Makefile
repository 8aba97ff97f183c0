# `make demo`: install kd into .venv and run the quickstart experiment (about 2 minutes on 2 CPU cores).
# `make test`: install the test extras too and run the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/quickstart
PYTEST_ARGS ?=
# Test processes (pytest-xdist); each test file runs whole in one of them, so its module fixtures are built once.
TEST_WORKERS ?= 2

.PHONY: demo test install install-test notebook clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed setup.py
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(PY) -m kd.main --config=experiments/quickstart.py --workdir=$(WORKDIR)

test: install-test
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) runs
