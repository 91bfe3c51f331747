# puyu: `make demo` and `make test` work on a fresh machine (they create .venv and install everything).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.puyu-installed
APT_PKGS := bubblewrap chromium tmux gcc libc6-dev

.PHONY: demo test test-fast lint install system-deps clean

$(STAMP): pyproject.toml
	$(MAKE) system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build on this machine's disk; a bare `torch` would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages: bubblewrap (interpreter sandbox), chromium (web-page test), tmux, gcc + libc6-dev (the
# engine's native decode kernel, src/puyu/engine/fused_decode.c, compiled on first use). Needs root.
system-deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else echo "warning: missing Debian packages:$$missing (run as root to install)"; fi; \
	fi

demo: $(STAMP)
	$(VENV)/bin/puyu demo

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
