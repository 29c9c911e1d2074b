# Two commands on a fresh machine: `make demo` (the main job on the embedded default) and
# `make test`. Each creates the virtualenv it needs (CPU torch; no CUDA build is pulled).
PYTHON ?= python3.11
# The CPU build only, on every Python: from the configured indexes first, then PyTorch's CPU
# index. When neither has one, stop with an error instead of falling back to PyPI's CUDA build
# (~6 GB); `make TORCH=torch==2.13.0` accepts that build on purpose.
TORCH ?= torch==2.13.0+cpu
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test bench venv-python

# The report test drives Debian's Chromium over WebDriver (never a downloaded browser build);
# installed from the system's package registry when missing (root, or sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
/usr/bin/chromium /usr/bin/chromedriver &:
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

# An existing $(VENV) of another Python version than $(PYTHON) would be reused as it is (the stamp
# is up to date): stop instead. Order-only, so it runs every time without forcing a reinstall.
venv-python:
	@if [ -x $(VENV)/bin/python ]; then \
	  have=$$($(VENV)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  want=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
	    || { echo "error: PYTHON=$(PYTHON) is not a Python interpreter on this machine" >&2; exit 2; }; \
	  [ "$$have" = "$$want" ] || { echo "error: $(VENV) was made with Python $$have but PYTHON=$(PYTHON) is Python $$want; remove $(VENV) (rm -rf $(VENV)) to rebuild it with $(PYTHON), or keep it with PYTHON=python$$have" >&2; exit 2; }; \
	fi

$(STAMP): pyproject.toml | venv-python
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q '$(TORCH)' 2>/dev/null \
	  || $(VENV)/bin/pip install -q '$(TORCH)' --extra-index-url $(TORCH_CPU_INDEX) \
	  || { echo "error: no $(TORCH) wheel for $$($(VENV)/bin/python -V) in the configured indexes or $(TORCH_CPU_INDEX); nothing was installed from CUDA builds. Install a CPU torch 2.13.0 into $(VENV) and re-run, or run 'make TORCH=torch==2.13.0 ...' to accept PyPI's CUDA build (~6 GB)." >&2; exit 2; }
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
