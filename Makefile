# The two quick-start commands (README): `make speedrun` and `make test`.
# Both build a local virtualenv first. TORCH pins the CPU build for machines without CUDA; on a GPU
# node install your CUDA torch yourself and `pip install -e '.[dev]'` instead.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
TRACK  ?= cpu-tiny
PYTEST_ARGS ?= -n 2

.PHONY: speedrun test data leaderboard clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Main job on the embedded default: build the Shakespeare shards, train the CPU track to its target,
# append the run to records/runs.jsonl and re-render leaderboard.md.
speedrun: $(VENV)/.installed
	$(PY) -m harness.data shakespeare
	$(PY) -m harness.run --track $(TRACK)

# The tests, and each pytest-benchmark benchmark once as a smoke test (timing them: `pytest benchmarks/ --benchmark-only`).
test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest --benchmark-disable $(PYTEST_ARGS)

data: $(VENV)/.installed
	$(PY) -m harness.data shakespeare

leaderboard: $(VENV)/.installed
	$(PY) -m harness.leaderboard

clean-venv:
	rm -rf $(VENV)
