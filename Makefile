# Two commands do all set-up: `make train` and `make test` create .venv and install when needed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATASET ?= mnist
DATA_DIR ?= $(HOME)/tensorflow_datasets
WORKDIR ?= runs/ddpm_digits

.PHONY: train test lint bench data experiments clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

train: $(STAMP)
	$(PY) -m diffusion_jax train --config experiments/configs/ddpm_digits.py --workdir $(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -n 3 --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check diffusion_jax experiments tests bench

# The bench times a PyTorch + diffusers peer in the same run (extra "bench-peer"); without it
# the peer ratios read "unavailable".
PEER_STAMP := $(VENV)/.installed-bench-peer
$(PEER_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench-peer]'
	@touch $(PEER_STAMP)

bench: $(PEER_STAMP)
	$(PY) bench/run.py

data: $(STAMP)
	$(PY) -m pip install --quiet -e '.[prepare]'
	$(PY) -m diffusion_jax prepare --dataset $(DATASET) --data_dir $(DATA_DIR)

experiments: $(STAMP)
	$(PY) -m experiments.run_all

clean:
	rm -rf $(VENV) runs .pytest_cache
