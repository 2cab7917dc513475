# One command each: `make demo` (set up + run the main job), `make test` (set up + run the tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/demo.yaml
RUN ?= runs/demo

# LPIPS's SqueezeNet weights: use ../shared/weights/torch when it is there and TORCH_HOME is unset
# (elsewhere torchvision downloads them into ~/.cache/torch by itself).
SHARED_TORCH := $(abspath ../shared/weights/torch)
ifeq ($(origin TORCH_HOME),undefined)
ifneq ($(wildcard $(SHARED_TORCH)/hub/checkpoints/*.pth),)
export TORCH_HOME := $(SHARED_TORCH)
endif
endif

.PHONY: install demo compare test bench clean-runs lock chromium

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c requirements.lock -e '.[test]'
	@touch $@

demo: install
	$(BIN)/stylex run $(CONFIG) --out $(RUN)

# Every explainer on both synthetic tasks (the demo's, and eye size under the glasses shortcut): the saliency maps,
# StylEx, and the GAN-direction baselines with the classifier-free GAN they need (stage 09): ~2 h on 2 cores.
compare: install
	$(BIN)/stylex run configs/demo.yaml --out runs/demo --set compare.gan_baselines=true
	$(BIN)/stylex run configs/compare_eyes.yaml --out runs/compare_eyes --set compare.gan_baselines=true
	$(BIN)/stylex combine runs/compare/benchmark/methods.csv runs/demo runs/compare_eyes
	$(BIN)/stylex combine runs/compare/benchmark/paired.csv runs/demo runs/compare_eyes --table paired.csv
	$(BIN)/stylex combine runs/compare/benchmark/paired_gan.csv runs/demo runs/compare_eyes --table paired_gan.csv

test: install chromium
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m pip install --disable-pip-version-check -q -c requirements.lock -e '.[bench]'
	$(BIN)/python benchmarks/train_step.py

# Headless Chromium renders the HTML gallery (stage 06) and runs the browser tests (the gallery's screenshot, the
# attribute browser in JupyterLab): the Debian/Ubuntu package `chromium`, installed with apt-get when that works
# without a password prompt (as root, or with `sudo -n`). Otherwise one line says so and pytest skips only the
# browser tests, except under CI=true, where this fails.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$sudo" != none ]; then \
	  echo "installing chromium with apt-get (headless gallery rendering)"; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && exit 0; \
	fi; \
	if [ "$$CI" = true ]; then \
	  echo "CI=true: Chromium is required and could not be installed (apt-get as root or with passwordless sudo)" >&2; \
	  exit 1; \
	fi; \
	echo "Chromium not found and not installable without a password (apt-get install chromium): the browser tests will be skipped"

lock:  # refresh the pinned versions from the current environment
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^stylexlib' > requirements.lock

clean-runs:
	rm -rf runs
