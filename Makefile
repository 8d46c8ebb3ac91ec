# Two commands matter on a fresh machine: `make up` (the loop, embedded) and `make test`.
# Both create the virtual environment on first use; later runs reuse it until
# pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv up test bench clean

# torch first, pinned to the CPU build this machine ships, so that no dependency's
# looser range can pull a multi-GB CUDA build from the index.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

up: venv
	$(VENV)/bin/rlhf-loop up

test: venv
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: venv
	$(VENV)/bin/python -m bench.bus_throughput

clean:
	rm -rf $(VENV) .rlhf-loop .pytest_cache
