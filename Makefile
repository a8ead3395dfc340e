# energyd: `make demo` and `make test` work on a fresh Debian machine with Python, git and make.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
UV := .uv/bin/uv
DEBIAN_TEST_PACKAGES := influxdb mosquitto victoria-metrics socat systemd faketime chromium chromium-driver
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: demo test test-long venv system-deps bench lint clean security fuzz

demo: venv
	$(VENV)/bin/energyd demo

test: venv system-deps
	$(VENV)/bin/python -m pytest

# The property-based tests at length (hundreds of random counters with faults, minutes);
# `make test` runs a few dozen examples of each.
test-long: venv
	HYPOTHESIS_PROFILE=long $(VENV)/bin/python -m pytest --timeout=3600 tests/test_accounting_properties.py

# uv lives in its own small environment: `uv sync` keeps .venv exactly as uv.lock says.
$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/pip install --quiet "uv==$(UV_VERSION)"

venv: $(UV)
	$(UV) sync --frozen --quiet

# The hostile-input fuzz tests at length (`make test` runs a few dozen examples of each).
FUZZ_EXAMPLES ?= 2000
fuzz: venv
	ENERGYD_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/python -m pytest -q -p no:cacheprovider \
	  -o timeout=3600 tests/test_hostile_input.py -k "fuzzed or hostile_value"

# Real servers for the tests: Debian packages, installed when missing and we are root.
system-deps:
	@missing=""; \
	command -v influxd >/dev/null || missing="$$missing influxdb"; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v victoria-metrics >/dev/null || missing="$$missing victoria-metrics"; \
	command -v socat >/dev/null || missing="$$missing socat"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || missing="$$missing faketime"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	    systemctl disable --now influxdb mosquitto victoria-metrics >/dev/null 2>&1 || true; \
	  else \
	    echo "missing Debian packages:$$missing (run as root, or: sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

# Every benchmark prints its figures next to a ceiling measured in the same run; a target
# it misses says MISSED or FAIL, and makes this target fail after all have run.
bench: venv system-deps
	@status=0; for b in bench/bench_*.py; do \
	  echo "== $$b"; out=$$($(VENV)/bin/python $$b 2>&1) || status=1; echo "$$out"; \
	  if echo "$$out" | grep -qE '(MISSED|FAIL)'; then status=1; fi; \
	done; \
	echo "== bench/bench_modbus.py pinned to one core (taskset -c 0)"; \
	out=$$(taskset -c 0 $(VENV)/bin/python bench/bench_modbus.py --capacity-duration 30 --rounds 3 2>&1) \
	  || status=1; echo "$$out"; \
	if echo "$$out" | grep -qE '(MISSED|FAIL)'; then status=1; fi; \
	exit $$status

# The systemd unit's sandbox, as systemd rates it (0 = locked down, 10 = exposed; ceiling 2.0).
security:
	@set -o pipefail; systemd-analyze security --offline=true --no-pager --threshold=20 \
	  deploy/systemd/energyd.service | tail -n 1

lint: venv
	$(VENV)/bin/ruff check energyd tests bench

clean:
	rm -rf $(VENV) .uv .pytest_cache build dist
