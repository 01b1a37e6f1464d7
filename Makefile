# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when missing and install the pinned
# dependencies once (a stamp file makes the second run a no-op).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.arena_dist-installed
SYSTEM_STAMP := $(VENV)/.arena_dist-system-deps
DS_OP_STAMP := $(VENV)/.arena_dist-deepspeed-shm-op
DS_INSTALL = DS_BUILD_SHM_COMM=1 $(PY) -m pip install -q --no-build-isolation --no-cache-dir -c $(CONSTRAINTS)
DS_OP_BUILT = $(PY) -c 'import sys, deepspeed.git_version_info as v; \
	sys.exit(not v.installed_ops.get("deepspeed_shm_comm"))'
CONSTRAINTS := requirements/constraints.txt
# Constrain build environments too: an unconstrained build dependency must never pull a CUDA torch.
export PIP_CONSTRAINT := $(abspath $(CONSTRAINTS))
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# DeepSpeed's CPU shared-memory collectives op (every ZeRO-3 rank on the CPU loads it) is compiled once, when
# DeepSpeed is installed (DS_BUILD_SHM_COMM=1; --no-cache-dir so that pip builds it rather than reusing a wheel
# built without it). Left to DeepSpeed's first-use build it is rebuilt whenever a process finds another ninja on
# its PATH than the one that built it last (ninja 1.11 and 1.13 hash commands differently): ~1 min of both
# cores each time. Any other op DeepSpeed compiles on first use is cached inside the venv.
export TORCH_EXTENSIONS_DIR := $(abspath $(VENV))/torch_extensions
export DS_ACCELERATOR := cpu
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: setup system-deps demo test test-fast bench bench-scale clean

setup: $(STAMP) $(DS_OP_STAMP) system-deps

$(STAMP): $(CONSTRAINTS) setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" "setuptools>=68" wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements/base.txt -c $(CONSTRAINTS)
	$(DS_INSTALL) deepspeed
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -m pip check
	@touch $@

# A venv set up before DeepSpeed's op was built at install gets it here, once (and a fresh one is only checked).
$(DS_OP_STAMP): | $(STAMP)
	@$(DS_OP_BUILT) 2>/dev/null || $(DS_INSTALL) --force-reinstall --no-deps deepspeed
	@$(DS_OP_BUILT) 2>/dev/null || { echo "DeepSpeed was installed without its shm-comm op" >&2; exit 1; }
	@touch $@

# Debian packages for the Slurm and multi-host tests (root only; skipped elsewhere, and those tests then skip).
system-deps: $(SYSTEM_STAMP)
$(SYSTEM_STAMP): | $(STAMP)
	@bash scripts/install_system_deps.sh
	@touch $@

demo: setup
	$(PY) -m arena_dist.demo

# Two pytest-xdist workers: most of a test's time is process start-up, imports and Ray / DeepSpeed set-up, which two
# workers overlap on two cores (a file's tests stay on one worker; files with slow tests go first, see
# tests/conftest.py). TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -rfEs --durations=25 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

test-fast: setup
	$(PY) -m pytest -q -rfEs -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" tests

bench: setup
	$(PY) -m bench.run_all

# The data and label layers at 1M pool rows (and 100k, for the memory ratios) plus the 32-actor fan-out simulation:
# tens of minutes, so not part of `make bench`. Adds its rows to the README table.
bench-scale: setup
	$(PY) -m bench.scale
	$(PY) -m bench.readme_table > /dev/null

clean:
	rm -rf $(VENV) runs
