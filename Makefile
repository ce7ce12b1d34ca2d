# Two commands for a fresh machine: `make demo` and `make test`. Both create/update .venv idempotently.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.limace-installed
SYSDEPS := libxc-dev libopenblas-dev libfftw3-dev
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: venv sysdeps demo test test-fast dataset label sevenn-venv clean-venv

# System libraries GPAW builds against (Debian). Installed when missing and we are root; otherwise a hint.
sysdeps:
	@missing=""; for p in $(SYSDEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "limace: GPAW needs:$$missing (sudo apt-get install$$missing)"; fi; fi

$(STAMP): pyproject.toml .ci/gpaw-siteconfig.py
	@$(MAKE) --no-print-directory sysdeps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	GPAW_CONFIG=$(CURDIR)/.ci/gpaw-siteconfig.py $(PIP) install -q -e ".[dft,test,baselines]"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/limace demo

# Tests run in parallel, a test module per worker (module fixtures such as the screen are built once); one thread each.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

test: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile --durations=10

test-fast: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow and not dft" -x

# The dataset: plan -> label (resumable, background-friendly) -> pack into the package with its manifest.
label: venv
	$(VENV)/bin/limace data plan dft/li-in-sn-v1/inputs.extxyz
	$(VENV)/bin/limace data label dft/li-in-sn-v1/inputs.extxyz dft/li-in-sn-v1/labels.extxyz --workers $$(nproc)

dataset: venv
	$(VENV)/bin/limace data pack dft/li-in-sn-v1/labels.extxyz $(wildcard dft/li-in-sn-v1/screen_verify.extxyz) $(wildcard dft/li-in-sn-v1/extrapolation.extxyz) --name li-in-sn-v1 --into-package --force
	$(PY) scripts/dataset_report.py li-in-sn-v1

# SevenNet-0 needs e3nn >= 0.5 (mace-torch pins 0.4.4): its own venv, used by bench/baselines.py
sevenn-venv:
	test -x .venv-sevenn/bin/python || $(PYTHON) -m venv .venv-sevenn
	.venv-sevenn/bin/python -c "import torch" 2>/dev/null || .venv-sevenn/bin/pip install -q torch==2.13.0
	.venv-sevenn/bin/pip install -q sevenn ase

clean-venv:
	rm -rf $(VENV)
