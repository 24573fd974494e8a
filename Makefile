# Two entry points on a fresh machine: `make quickstart` and `make test`.
# Both create .venv if needed and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# No GPU here: pin the CPU wheel of torch (a bare range would pull the multi-GB CUDA build).
CONSTRAINTS := $(shell nvidia-smi -L >/dev/null 2>&1 || echo "-c constraints/cpu.txt")

.PHONY: setup quickstart test test-slow bench clean

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(CONSTRAINTS) -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# Paired NTP/NITP run of tiny-dense on the built-in corpus, then geometry and a report.
quickstart: setup
	$(VENV)/bin/nitp-train pair --out runs/quickstart --overwrite
	$(VENV)/bin/nitp-eval geometry runs/quickstart --all-steps --overwrite
	$(VENV)/bin/nitp-eval report runs/quickstart --out reports/quickstart --overwrite

test: setup
	$(PY) -m pytest -q

# Slow tests (minutes): multi-process training, the reference-model MTEB check, full pipelines.
test-slow: setup
	$(PY) -m pip install -q $(CONSTRAINTS) -e '.[dev,reference]'
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs/quickstart reports/quickstart
