# Two commands do everything on a fresh machine with Python 3.11+ and pip:
#   make reproduce   # set up .venv, run every notebook end to end on the embedded phantom
#   make test        # set up .venv, run the test suite
# Both create or refresh the virtual environment idempotently (re-installed only when
# pyproject.toml changes). PROFILE=smoke|quick|paper picks the profile (quick: CPU default);
# DATA / TUMOUR_DATA point the two tracks at real TotalSegmentator / KiTS23 folders, and
# NOTEBOOKS=05,06 runs only those notebooks (each reuses what the run folder already holds), and
# SET="train.steps=2000 train.batch_size=8" changes profile settings (coin reproduce --set).
# For a class (docs/teaching.md):
#   make lesson      # before class: synthetic-track data, classifier f and COIN (lesson profile),
#                    # then the from-scratch notebook once, in runs/lesson
#   make lab         # register the project's kernel ("coin") and open JupyterLab in notebooks/

PYTHON ?= python3
VENV ?= .venv
PROFILE ?= quick
RUN_DIR ?= runs/$(PROFILE)
DATA ?= phantom
TUMOUR_DATA ?= phantom
NOTEBOOKS ?=
SET ?=
STAMP := $(VENV)/.coin-installed

LAB_ARGS ?=
KERNEL ?= coin

.PHONY: setup reproduce test lesson lab clean-runs

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

reproduce: $(STAMP)
	$(VENV)/bin/coin reproduce --profile $(PROFILE) --run-dir $(RUN_DIR) --data $(DATA) \
		--tumour-data $(TUMOUR_DATA) $(if $(NOTEBOOKS),--notebooks $(NOTEBOOKS)) $(foreach s,$(SET),--set $(s))

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

lesson: $(STAMP)
	$(VENV)/bin/coin train --profile lesson --run-dir runs/lesson --data $(DATA)
	$(VENV)/bin/coin evaluate --profile lesson --run-dir runs/lesson --data $(DATA)
	$(VENV)/bin/coin reproduce --profile lesson --run-dir runs/lesson --data $(DATA) --notebooks 02_coin_from_scratch

# --user: the kernel spec goes to ~/.local/share/jupyter/kernels/$(KERNEL) (no root needed), so
# VS Code or another JupyterLab finds it too; it starts this checkout's .venv/bin/python.
lab: $(STAMP)
	$(VENV)/bin/python -m ipykernel install --user --name $(KERNEL) --display-name "COIN companion (.venv)"
	cd notebooks && $(abspath $(VENV))/bin/jupyter lab $(LAB_ARGS)

clean-runs:
	rm -rf runs
