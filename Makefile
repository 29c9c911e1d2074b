# Two commands on a fresh machine: `make demo` (the main job on the embedded default) and
# `make test`. Each creates the virtualenv it needs (CPU torch; no CUDA build is pulled).
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test bench

# The report test drives Debian's Chromium over WebDriver (never a downloaded browser build);
# installed from the system's package registry when missing (root, or sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
/usr/bin/chromium /usr/bin/chromedriver &:
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(VENV)/bin/ensemble-da run

test: $(STAMP) /usr/bin/chromium /usr/bin/chromedriver
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/exactness.py
	$(VENV)/bin/python benchmarks/guidance_cost.py
