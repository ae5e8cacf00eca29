# Set-up is two commands: `make run` and `make test`. Everything else hangs off the same venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 8501
CHROMIUM := /usr/bin/chromium

.PHONY: run test bench gpu-check mitigate-results venv chromium demo-weights clean

venv: $(STAMP)

# Re-install when requirements or the package metadata change (a stale venv is rebuilt, not trusted).
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned in the same command as everything else, so no dependency can pull another build.
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

chromium:
	@test -x $(CHROMIUM) || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

run: venv
	@if [ -f app/main.py ]; then \
		$(PY) -m app.serve --server.port $(PORT) --server.headless true --server.fileWatcherType none; \
	else \
		$(VENV)/bin/fairprune audit --demo mnist --out demo_result.json; \
	fi

test: venv chromium
	$(PY) -m pytest -q

# Each benchmark prints ratios against a baseline measured in the same run, and the device it ran on.
bench: venv chromium
	$(PY) bench/run.py
	$(PY) bench/gradnorm.py
	$(PY) bench/hessian.py
	$(PY) bench/throughput.py
	$(PY) bench/compression.py
	$(PY) bench/startup.py
	$(PY) bench/calibration.py
	$(PY) bench/dashboard.py
	$(PY) bench/diagnostics.py
	$(PY) bench/stream.py

# The CUDA paths in one short run (mixed precision, out-of-memory back-off, int4 / 2:4 kernels, the 10k-image
# audit goal, Ray GPU tasks); prints PASS / FAIL / REFUSED per check; does nothing without a GPU.
gpu-check: venv
	$(PY) bench/gpu_check.py

# Every mitigation method on the demos at 90/95/98% sparsity, 3 seeds; rewrites the table in bench/RESULTS.md.
mitigate-results: venv
	$(PY) bench/mitigation.py

demo-weights: venv
	$(PY) models/train_demo.py all

clean:
	rm -rf $(VENV) .pytest_cache tests/artifacts
