# emotion-engine: every target sets itself up, so `make run` and `make test` work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= $(abspath ../shared/data)
export EMOTION_ENGINE_DATA ?= $(DATA_DIR)

.PHONY: help setup system-deps kernels run demo test unit lint typecheck format train evaluate loco bench fuzz clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

system-deps:  ## Debian packages: PortAudio (microphone); sipp, baresip, PulseAudio, Chromium, espeak-ng (tests)
	@# libasound2-plugins: ALSA's "pulse" device, the way PortAudio reaches PulseAudio.
	@# --no-install-recommends: pulseaudio recommends logind/systemd, none of which the
	@# tests' private daemon needs.
	@missing=""; \
	ldconfig -p 2>/dev/null | grep -q 'libportaudio.so.2' || missing="$$missing libportaudio2"; \
	command -v sipp >/dev/null || missing="$$missing sip-tester"; \
	command -v pulseaudio >/dev/null || missing="$$missing pulseaudio"; \
	{ command -v pactl && command -v paplay; } >/dev/null || missing="$$missing pulseaudio-utils"; \
	dpkg -s libasound2-plugins >/dev/null 2>&1 || missing="$$missing libasound2-plugins"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v baresip >/dev/null || missing="$$missing baresip-core"; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	if [ -n "$$missing" ]; then \
	  echo ">> installing$$missing (microphone support; sipp, baresip, PulseAudio, Chromium and espeak-ng for the tests)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
	  || echo "!! could not install$$missing: microphone ingest may be unavailable and tests/test_sipp.py, tests/test_sip_sipp.py, tests/test_sip_baresip.py, tests/test_mic.py, tests/test_agent_page.py and the synthetic-speech cases of tests/test_confidence.py will skip"; \
	fi

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the engine with its dev tools

run: $(STAMP) kernels  ## start the live server on localhost and stream the bundled demo call into it (Ctrl-C stops)
	$(BIN)/emotion-engine serve --demo

kernels: $(STAMP)  ## compile the numba feature kernels once (cached on disk)
	@$(BIN)/python -c "from emotion_engine.features import compile_kernels; compile_kernels()"

test: $(STAMP)  ## lint, type-check and run the test suite
	$(BIN)/ruff check emotion_engine tests benchmarks
	$(BIN)/mypy
	@$(MAKE) --no-print-directory kernels
	$(BIN)/pytest -q

unit: $(STAMP)  ## tests only
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check emotion_engine tests benchmarks
	$(BIN)/ruff format --check emotion_engine tests benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix emotion_engine tests benchmarks
	$(BIN)/ruff format emotion_engine tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

train: $(STAMP)  ## retrain the shipped model from ../shared/data (seed 0)
	$(BIN)/emotion-engine train --data $(DATA_DIR) --out models --seed 0

evaluate: $(STAMP)  ## model card numbers: RAVDESS speaker k-fold + leave-one-corpus-out vs eGeMAPS+SVM
	$(BIN)/emotion-engine evaluate --data $(DATA_DIR) --card models/README.md --harness

loco: $(STAMP)  ## leave-one-corpus-out over all corpora through the engine's window path, every recipe, stitched calls per language (models/loco.json)
	$(BIN)/python -m emotion_engine.training.loco --data $(DATA_DIR) --recipes all --stitched --card models/README.md

bench: $(STAMP)  ## benchmarks (results in benchmarks/results/)
	$(BIN)/emotion-engine bench

FUZZ_RUNS ?= 1000000
FUZZ_ARGS ?=
fuzz: $(STAMP)  ## every ingest parser under atheris, FUZZ_RUNS inputs each (summary in benchmarks/results/fuzz-*.json)
	$(BIN)/python -m benchmarks.fuzz --runs $(FUZZ_RUNS) $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
