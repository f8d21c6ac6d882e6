# The two commands of the README: `make demo` and `make test`. Both create .venv with
# what Python needs when it is missing, build, and run.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(CURDIR)/$(VENV)/bin/python
STAMP := $(VENV)/.pixgate-deps
export PIXGATE_PYTHON := $(VPY)
# Tests that would skip for a missing piece of the environment fail instead.
export PIXGATE_TEST_STRICT := 1
# Generous bound on the whole test run; each test has its own timeouts too.
TEST_TIMEOUT ?= 3000

.PHONY: demo test venv build test-rust test-python lint bench clean

demo: $(STAMP)
	cargo build --release
	./target/release/pixgate demo

test: $(STAMP)
	$(VPY) -m pip install --quiet --no-build-isolation --no-deps ./python-helper
	cargo build --all-targets
	timeout $(TEST_TIMEOUT) cargo test --all-targets
	cd python-helper && timeout 900 $(VPY) -m pytest -q tests
	@# A leak is a segment whose creator is gone (every test process has ended by now).
	@leaks=""; for f in $$(ls /dev/shm | grep '^pxg-' || true); do \
	  pid=$$((16#$$(echo $$f | cut -d- -f2))); [ -d /proc/$$pid ] || leaks="$$leaks $$f"; \
	done; if [ -n "$$leaks" ]; then echo "leaked segments:$$leaks"; exit 1; fi; echo "no leaked segments"

venv: $(STAMP)

$(STAMP): python-helper/pyproject.toml Makefile
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip setuptools wheel
	$(VPY) -m pip install --quiet numpy pytest hypothesis execnet xarray
	touch $(STAMP)

bench: $(STAMP)
	cargo bench --bench roundtrip
	cargo bench --bench arrays

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

clean:
	rm -rf $(VENV) target
