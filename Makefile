# Two commands do everything on a fresh machine with Python 3.11+ and pip:
#   make reproduce   # set up .venv, run every notebook end to end on the embedded phantom
#   make test        # set up .venv, run the test suite
# Both create or refresh the virtual environment idempotently (re-installed only when
# pyproject.toml changes). PROFILE=smoke|quick|paper picks the profile (quick: CPU default);
# DATA / TUMOUR_DATA point the two tracks at real TotalSegmentator / KiTS23 folders, and
# NOTEBOOKS=05,06 runs only those notebooks (each reuses what the run folder already holds).

PYTHON ?= python3
VENV ?= .venv
PROFILE ?= quick
RUN_DIR ?= runs/$(PROFILE)
DATA ?= phantom
TUMOUR_DATA ?= phantom
NOTEBOOKS ?=
STAMP := $(VENV)/.coin-installed

.PHONY: setup reproduce test clean-runs

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

reproduce: $(STAMP)
	$(VENV)/bin/coin reproduce --profile $(PROFILE) --run-dir $(RUN_DIR) --data $(DATA) \
		--tumour-data $(TUMOUR_DATA) $(if $(NOTEBOOKS),--notebooks $(NOTEBOOKS))

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

clean-runs:
	rm -rf runs
