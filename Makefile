# Two commands on a fresh machine: `make demo` and `make test`.
# Each bootstraps .venv from constraints.txt the first time, and again only when
# constraints.txt or pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: sysdeps firmware-tree demo test test-slow test-faults test-zoo test-realmodels test-aarch64 test-all bench venv constraints clean

$(STAMP): constraints.txt pyproject.toml requirements-onnx2tf.txt requirements-tosa.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps --ignore-requires-python -r requirements-onnx2tf.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-tosa.txt
	touch $(STAMP)

venv: $(STAMP)

sysdeps:
	@bash scripts/system_deps.sh

# The TensorFlow Lite Micro tree MCU emulation builds firmware with: an offline copy beside the
# repository when there is one (../shared/third_party), else a clone at the pinned commit.
TFLM_OFFLINE := ../shared/third_party/tflite-micro
firmware-tree: $(STAMP)
	@if [ -d "$(TFLM_OFFLINE)" ]; then $(VENV)/bin/workbench firmware setup --link "$(TFLM_OFFLINE)"; \
	else $(VENV)/bin/workbench firmware setup; fi

demo: $(STAMP)
	$(VENV)/bin/workbench demo

test: sysdeps $(STAMP) firmware-tree
	$(PY) -m pytest -q

test-slow: sysdeps $(STAMP)
	$(PY) -m pytest -q -m slow

# About 10 min: 24+ architectures through inspect, export, int8, emulate (Pi + MCU) and int8 ONNX
# (tests/test_zoo.py); scripts/bench_coverage.py prints the same run as a table.
test-zoo: sysdeps $(STAMP) firmware-tree
	$(PY) -m pytest -q -m zoo tests/test_zoo.py

# Fault injection: interrupts with signals, corrupted caches, concurrent runs, a full disk (a small
# tmpfs when run as root).
test-faults: sysdeps $(STAMP) firmware-tree
	$(PY) -m pytest -q -m faults

test-realmodels: sysdeps $(STAMP)
	$(PY) -m pytest -q -m realmodels

# Needs root, Debian's qemu-user-static, binfmt-support and debootstrap, and network access to
# the Debian and PyPI mirrors: proves the light install runs `workbench profile` on arm64.
test-aarch64: $(STAMP)
	$(PY) -m pytest -q -s -m aarch64 tests/test_aarch64.py

test-all: sysdeps $(STAMP)
	$(PY) -m pytest -q -m ''

bench: $(STAMP)
	$(PY) scripts/bench_ptq.py

constraints: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | sed -e 's/^torch==\(.*\)+cpu/torch==\1/' > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info
