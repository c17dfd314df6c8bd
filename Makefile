# Two entry points: `make run` and `make test`. Both build .venv from this
# project's own files, so a fresh clone needs nothing else.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED := 0
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: run test venv system-packages clean

# Programs that tests run: Debian's Prometheus server, its promtool, and the
# Pushgateway (tests/test_monitoring.py); Chromium and its chromedriver, which
# open the run report in a headless browser (tests/test_report.py). `make test`
# installs them with apt-get when they are missing and it runs as root on a
# system with apt-get; otherwise it says so in one line, and those tests skip
# naming the missing program (under .ci/run they fail instead).
SYSTEM_PROGRAMS := prometheus promtool prometheus-pushgateway chromium chromedriver
SYSTEM_PACKAGES := prometheus prometheus-pushgateway chromium chromium-driver
APT_LOG := tmp/apt-get.log

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,dev]'
	# librosa's numba kernels, compiled once here: workers compiling them at once crash (quality.py).
	$(BIN)/python -c 'from amnst.engine import quality; quality.compile_kernels()'
	touch $(STAMP)

venv: $(STAMP)

system-packages:
	@missing=""; for program in $(SYSTEM_PROGRAMS); do \
		command -v $$program >/dev/null 2>&1 || missing="$$missing $$program"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "system-packages: installing $(SYSTEM_PACKAGES) with apt-get for$$missing (log: $(APT_LOG))"; \
		mkdir -p $(dir $(APT_LOG)); \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			$(SYSTEM_PACKAGES); } >$(APT_LOG) 2>&1 \
		|| echo "system-packages: apt-get failed (see $(APT_LOG)); tests needing$$missing will skip"; \
	else \
		echo "system-packages: missing$$missing and not root with apt-get; tests needing them will skip" \
			"(install with: apt-get install $(SYSTEM_PACKAGES))"; \
	fi

run: $(STAMP)
	$(BIN)/amnst demo --output out/demo
	$(BIN)/amnst run out/demo/manifest.csv --output out

test: $(STAMP) system-packages
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) out .pytest_cache
