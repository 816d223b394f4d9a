# The two commands: `make study` runs the main job, `make test` the test suite. Each first sets up
# .venv where something is missing (scripts/setup.sh: torch, the project and its extras, SmolLM2,
# Chromium) and costs about a second when nothing is. ARGS passes arguments on, e.g.
# `make study ARGS=--quick` or `make test ARGS="tests/test_stats.py -x"`.
VENV ?= .venv
ARGS ?=

.PHONY: setup study test
setup:
	@VENV=$(VENV) sh scripts/setup.sh

study: setup
	$(VENV)/bin/sftrl study $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q $(ARGS)
