# make demo   train the CPU demo (creates .venv on first use) and print where its grid is
# make demo-diffdis  train the DiffDis CPU demo and print its zero-shot accuracy
# make test   check the import layers (.importlinter), then run the test suite on 8 virtual
#             CPU devices (creates .venv on first use)
# make bench  run the CPU benchmarks
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
DEMO_DIR ?= workdirs/demo
DEMO_DIFFDIS_DIR ?= workdirs/demo_diffdis

.PHONY: demo demo-diffdis test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.base: setup.py | $(BIN)/python
	$(BIN)/pip install -q -e '.[tf]'
	touch $@

$(VENV)/.test: setup.py $(VENV)/.base
	$(BIN)/pip install -q -e '.[tf,test]'
	touch $@

demo: $(VENV)/.base
	XLA_FLAGS= $(BIN)/python launch/main.py --config=configs/demo.py --workdir=$(DEMO_DIR)
	@echo "sample grid: $$(ls -1 $(DEMO_DIR)/samples/*.png | tail -n 1)"

demo-diffdis: $(VENV)/.base
	XLA_FLAGS= $(BIN)/python launch/main.py --config=configs/demo_diffdis.py --workdir=$(DEMO_DIFFDIS_DIR)
	@grep zeroshot_top1 $(DEMO_DIFFDIS_DIR)/metrics.jsonl | tail -n 1
	@echo "text-to-image grid: $$(ls -1 $(DEMO_DIFFDIS_DIR)/samples/*.png | tail -n 1)"

test: $(VENV)/.test
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n 2 --durations=15 tests

bench: $(VENV)/.test
	XLA_FLAGS= $(BIN)/python bench/train_step.py --model=DiT-S/2 --method=dit --batch=8 --vs-torch
	XLA_FLAGS= $(BIN)/python bench/train_step.py --model=DiT-S/2 --method=sddit --batch=8
	XLA_FLAGS= $(BIN)/python bench/train_step.py --method=diffdis --size=tiny --batch=32 --vs-torch
	XLA_FLAGS= $(BIN)/python bench/conv.py --size=tiny --batch=32 --vs-torch
	XLA_FLAGS= $(BIN)/python bench/conv.py --size=sd15 --latent=32 --batch=1 --vs-torch

clean:
	rm -rf $(VENV)
