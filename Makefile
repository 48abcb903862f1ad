# Entry points of the README's Quick start. Everything runs from a project-local venv (.venv)
# that this Makefile creates and fills on first use, so a fresh machine needs only
# python3 (>= 3.11), gcc and make.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
JOBS    ?= auto

.PHONY: suite test payload bench mutate clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

payload: $(STAMP)
	$(MAKE) -C guest-payloads

## The main job: the integration suite on the emulated platform.
suite: $(STAMP) payload
	$(VPY) -m pytest suites -n $(JOBS) -p no:randomly $(ARGS)

## The project's own tests.
test: $(STAMP) payload
	$(VPY) -m pytest tests -n 2 $(ARGS)

## The fault catalog: the suite once per injected fault, kill matrix in reports/<run>/mutate.*
mutate: $(STAMP) payload
	$(VPY) -m snplab.cli mutate $(ARGS)

bench: $(STAMP) payload
	$(VPY) bench/run_all.py

clean:
	rm -rf $(VENV) guest-payloads/build reports/*/
