# The two commands: `make study` runs the main job, `make test` the test suite. Each first sets up
# .venv where something is missing (scripts/setup.sh: torch, the project and its extras, SmolLM2,
# Chromium) and costs about a second when nothing is. ARGS passes arguments on, e.g.
# `make study ARGS=--quick` or `make test ARGS="tests/test_stats.py -x"`.
VENV ?= .venv
ARGS ?=
BIN = $(abspath $(VENV))/bin
# the venv's commands (sftrl, accelerate, torchrun) first on PATH, as an activated venv would have them
RUN = PATH="$(BIN):$$PATH"

.PHONY: setup study test
setup:
	@VENV=$(VENV) sh scripts/setup.sh

study: setup
	$(RUN) $(BIN)/sftrl study $(ARGS)

test: setup
	$(RUN) $(BIN)/python -m pytest -q $(ARGS)
