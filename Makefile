# Two commands for a fresh clone: `make demo` (train on the phantom, then serve the demo) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
QUICKSTART_DIR ?= quickstart_output
PORT ?= 7860
# Every install of this repository (make test, make demo, CI) takes the versions the suite passed with.
LOCK := requirements/lock.txt
export HF_HUB_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: install test test-lowest test-latest lock lint demo quickstart benchmarks clean

# One venv; each stamp re-installs only when the project's dependencies or the lock change. The demo
# needs the model plus the [train] and [demo] extras; the tests, lint and benchmarks need [dev] (everything).
EXTRAS_demo := train,demo
EXTRAS_dev := dev

$(VENV)/.installed-%: pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) pip
	$(PY) -m pip install -c $(LOCK) -e ".[$(EXTRAS_$*)]"
	touch $@

install: $(VENV)/.installed-dev

test: install
	$(PY) -m pytest

# The lower bounds in pyproject.toml, tested: a venv of its own with every direct dependency pinned to
# its minimum (requirements/lowest.py; indirect ones float), then the tests that are neither slow nor
# browser tests. The minimal torch comes from PyPI as a CUDA build (a few GB on the first install).
# Bit-identical resume is checked on the locked versions (make test) only: at the lower bounds the
# resumed losses differ from the second epoch on (not accelerate's doing: 1.16 differs there too).
NOT_AT_LOWEST := tests/test_train.py::test_resume_after_an_interruption_matches_an_uninterrupted_run \
	tests/test_train.py::test_sigkill_in_the_middle_of_an_epoch_then_resume_matches_an_uninterrupted_run
VENV_LOWEST := .venv-lowest
PY_LOWEST := $(VENV_LOWEST)/bin/python

test-lowest:
	test -x $(PY_LOWEST) || $(PYTHON) -m venv $(VENV_LOWEST)
	$(PY_LOWEST) -m pip install -q --upgrade pip packaging "tomli; python_version < '3.11'"
	$(PY_LOWEST) requirements/lowest.py > $(VENV_LOWEST)/constraints.txt
	$(PY_LOWEST) -m pip install -c $(VENV_LOWEST)/constraints.txt -e ".[dev]"
	TEST_UNLOCKED=1 $(PY_LOWEST) -m pytest -m "not slow and not browser" $(foreach test,$(NOT_AT_LOWEST),--deselect $(test))

lint: install
	$(PY) -m ruff check .

quickstart: $(VENV)/.installed-demo
	test -f $(QUICKSTART_DIR)/run/best/config.json || $(PY) -m training.quickstart --output-dir $(QUICKSTART_DIR)

demo: quickstart
	$(PY) space/app.py --model $(QUICKSTART_DIR)/run/best --port $(PORT)

benchmarks: install
	$(PY) benchmarks/attention_overhead.py
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/explain_cost.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/demo_latency.py

# For the maintainer who refreshes the lock: the whole suite on the newest releases pyproject.toml
# allows, in a venv of their own made anew each time...
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip
	.venv-latest/bin/python -m pip install -e ".[dev]"
	TEST_UNLOCKED=1 .venv-latest/bin/python -m pytest

# ...and, only when it passed, those versions become the lock (and the Space's pins, taken from it).
lock: test-latest
	.venv-latest/bin/python requirements/lock.py .venv-latest/bin/python

clean:
	rm -rf $(QUICKSTART_DIR) .pytest_cache test-artifacts
