# make demo   train the CPU demo (creates .venv on first use) and print where its grid is
# make demo-diffdis  train the DiffDis CPU demo and print its zero-shot accuracy
# make fmnist the ImageNet recipe in miniature on Fashion-MNIST: a VAE, its latents, a latent
#             SD-DiT, samples and their scores, in workdirs/fmnist/ (each stage resumes or is
#             skipped when done)
# make demo-diffdis-fmnist  DiffDis on the Fashion-MNIST latents (the VAE and latents of
#             make fmnist first, when missing): zero-shot with training and held-out prompts,
#             retrieval and text-to-image scores, in workdirs/fmnist/diffdis/
# make test   check the import layers (.importlinter), then run the test suite on 8 virtual
#             CPU devices (creates .venv on first use)
# make bench  run the CPU benchmarks
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
DEMO_DIR ?= workdirs/demo
DEMO_DIFFDIS_DIR ?= workdirs/demo_diffdis
FMNIST_DATA ?= /usr/share/datasets/fashion-mnist
FMNIST_DIR ?= workdirs/fmnist
MAIN := XLA_FLAGS= $(BIN)/python launch/main.py
FMNIST_DATA_PATHS := --config.data.vae_path=$(FMNIST_DIR)/vae/diffusers \
	--config.data.dir=$(FMNIST_DIR)/latents --config.data.extract.source_dir=$(FMNIST_DATA) \
	--config.eval.classifier_dir=$(FMNIST_DIR)/classifier
FMNIST_PATHS := $(FMNIST_DATA_PATHS) --config.sample.vae=$(FMNIST_DIR)/vae/diffusers

.PHONY: demo demo-diffdis demo-diffdis-fmnist fmnist fmnist-latents fmnist-data test bench clean

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

# Fashion-MNIST's four IDX files, from Debian's package when they are not there yet
fmnist-data:
	@if [ ! -f $(FMNIST_DATA)/t10k-labels-idx1-ubyte.gz ]; then \
	  if [ "$(FMNIST_DATA)" != /usr/share/datasets/fashion-mnist ]; then \
	    echo "error: no Fashion-MNIST in FMNIST_DATA=$(FMNIST_DATA); put its four .gz files there"; exit 2; \
	  elif [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y -q dataset-fashion-mnist >/dev/null || \
	      (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	  else \
	    echo "error: Fashion-MNIST is not installed; run: sudo apt-get install dataset-fashion-mnist"; exit 2; \
	  fi; \
	fi

# stages 1 and 2 of the recipe: the VAE (and the metric's classifier), then its latents
fmnist-latents: $(VENV)/.base fmnist-data
	@[ -f $(FMNIST_DIR)/vae/diffusers/config.json ] || $(MAIN) --config=configs/fmnist_vae.py \
	  --workdir=$(FMNIST_DIR)/vae --config.data.dir=$(FMNIST_DATA) \
	  --config.eval.classifier_dir=$(FMNIST_DIR)/classifier
	@[ -f $(FMNIST_DIR)/latents/dataset_info.json ] || $(MAIN) --mode=extract_latents \
	  --config=configs/fmnist_sddit.py --workdir=$(FMNIST_DIR)/latents $(FMNIST_PATHS)

fmnist: fmnist-latents
	@# trained, then scored once: from samples.npz (the end-of-training score would repeat it)
	@[ -f $(FMNIST_DIR)/sddit/samples.npz ] || $(MAIN) --config=configs/fmnist_sddit.py \
	  --workdir=$(FMNIST_DIR)/sddit --config.eval.metric_samples=0 $(FMNIST_PATHS)
	@[ -f $(FMNIST_DIR)/sddit/samples.npz ] || $(MAIN) --mode=sample \
	  --config=configs/fmnist_sddit.py --workdir=$(FMNIST_DIR)/sddit $(FMNIST_PATHS)
	@$(MAIN) --mode=eval --config=configs/fmnist_sddit.py --workdir=$(FMNIST_DIR)/sddit $(FMNIST_PATHS)
	@echo "VAE: $$(grep test_psnr $(FMNIST_DIR)/vae/metrics.jsonl | tail -n 1)"
	@echo "SD-DiT samples: $$(tr -d '\n ' < $(FMNIST_DIR)/sddit/eval.json | grep -o '"metrics":{[^}]*}' | tail -n 1)"
	@echo "scores and settings: $(FMNIST_DIR)/sddit/eval.json"
	@echo "sample grid: $$(ls -1 $(FMNIST_DIR)/sddit/samples/*.png | tail -n 1)"

# trained and scored once: the end of training writes metrics.jsonl and eval.json
demo-diffdis-fmnist: fmnist-latents
	@[ -f $(FMNIST_DIR)/diffdis/eval.json ] || $(MAIN) --config=configs/fmnist_diffdis.py \
	  --workdir=$(FMNIST_DIR)/diffdis $(FMNIST_DATA_PATHS)
	@echo "test split: $$(tr -d '\n ' < $(FMNIST_DIR)/diffdis/eval.json | grep -o '"metrics":{[^}]*}')"
	@echo "scores and settings: $(FMNIST_DIR)/diffdis/eval.json"
	@echo "text-to-image grid: $$(ls -1 $(FMNIST_DIR)/diffdis/samples/*.png | tail -n 1)"

test: $(VENV)/.test fmnist-data
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
