# The two commands of the README: `make demo` and `make test`. Both create .venv with
# what Python needs when it is missing, build, and run. Fuzzing: `make fuzz` (long runs,
# FUZZ_TIME seconds per target) and `make fuzz-corpus` (regenerates the seed corpus);
# see TESTING.md. Chaos and soak at full size: `make chaos` (CHAOS_ITERATIONS kills of a
# host or worker, default 100) and `make soak` (SOAK_MESSAGES round trips, default 10⁶).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(CURDIR)/$(VENV)/bin/python
STAMP := $(VENV)/.pixgate-deps
# PyPy (Debian's pypy3): the helper must run on it too, arrays included. Its own venv
# holds the Python suite's tools and numpy (a PyPy wheel from the package index; pandas,
# hence xarray, has none). The system's pypy3 itself has no numpy: tests/interpreters.rs
# uses it for the helper without numpy.
PYPY := pypy3
PYPY_VENV := .venv-pypy
PYPY_PY := $(CURDIR)/$(PYPY_VENV)/bin/python
PYPY_STAMP := $(PYPY_VENV)/.pixgate-deps
export PIXGATE_PYTHON := $(VPY)
# Tests that would skip for a missing piece of the environment fail instead.
export PIXGATE_TEST_STRICT := 1
# The execnet releases the value codec is cross-checked against (tests/execnet_versions.rs,
# python-helper/tests/test_execnet_versions.py): 2.x is in .venv; 1.9 in its own venv
# on the same Python 3, and 1.9 under Python 2.7 (installed with --target) when a
# Python 2.7 exists (PYTHON2, else the first that runs of pyenv's 2.7 builds and
# python2.7 on PATH).
VENV19 := .venv-execnet19
STAMP19 := $(VENV19)/.pixgate-deps
PY27_LIB := .py27-execnet19
PYTHON2 ?= $(shell for p in $(wildcard $(HOME)/.pyenv/versions/2.7*/bin/python2.7) python2.7; do \
  "$$p" -c 'import sys; sys.exit(sys.version_info[0] != 2)' 2>/dev/null && { command -v "$$p"; break; }; \
  done)
export PIXGATE_EXECNET19_PYTHON := $(CURDIR)/$(VENV19)/bin/python
export PIXGATE_PYTHON2 := $(PYTHON2)
export PIXGATE_PYTHON2_PATH := $(CURDIR)/$(PY27_LIB)
# Generous bound on the whole test run; each test has its own timeouts too.
TEST_TIMEOUT ?= 3000
# The array battery, run a second time with named segments (PIXGATE_TRANSPORT=named
# makes them the process default of arrays and gateways; anonymous is the default).
NAMED_BATTERY := arrays references residency pool
# The array battery with a PyPy worker (numpy included): `make test-pypy`.
PYPY_BATTERY := arrays references residency pool anonymous

# Fuzzing (fuzz/, cargo-fuzz, nightly). The targets run without a sanitizer: the decoders
# they cover contain no unsafe code, and AddressSanitizer slows the frame target tenfold;
# debug assertions stay on so that integer overflow panics.
FUZZ_TARGETS := frame_decoder value_decoder header_parser
FUZZ_TIME ?= 600
FUZZ_SMOKE_TIME ?= 20
FUZZ_FLAGS := --sanitizer none --debug-assertions
FUZZ_ARGS := -rss_limit_mb=2048 -timeout=10

# Full-size chaos and soak runs (`cargo test` runs both at a CI size).
CHAOS_ITERATIONS ?= 100
SOAK_MESSAGES ?= 1000000

.PHONY: demo test test-named test-pypy pythons venv sshd pypy execnet-peers build test-rust test-python lint bench clean fuzz fuzz-smoke \
	fuzz-corpus chaos soak jython check-macos bench-ssh msrv

demo: $(STAMP)
	cargo build --release
	./target/release/pixgate demo

test: $(STAMP) $(PYPY_STAMP) $(STAMP19) jython sshd
	$(VPY) -m pip install --quiet --no-build-isolation --no-deps ./python-helper
	cargo build --all-targets
	timeout $(TEST_TIMEOUT) cargo test --all-targets
	$(MAKE) --no-print-directory test-named
	timeout 600 cargo test --doc
	cd python-helper && timeout 900 $(VPY) -m pytest -q tests
	@# The same suite on PyPy, numpy included. Plain asserts: PyPy 7.3.11 once died of
	@# SIGSEGV inside pytest's assertion rewriting (of hypothesis, while collecting),
	@# before any of the helper had run.
	cd python-helper && timeout 1200 $(PYPY_PY) -m pytest -q --assert=plain tests
	$(MAKE) --no-print-directory test-pypy
	$(MAKE) --no-print-directory pythons
	$(MAKE) --no-print-directory fuzz-smoke
	$(MAKE) --no-print-directory check-macos
	@# A leak is a segment whose creator is gone (every test process has ended by now).
	@leaks=""; for f in $$(ls /dev/shm | grep '^pxg-' || true); do \
	  pid=$$((16#$$(echo $$f | cut -d- -f2))); [ -d /proc/$$pid ] || leaks="$$leaks $$f"; \
	done; if [ -n "$$leaks" ]; then echo "leaked segments:$$leaks"; exit 1; fi; echo "no leaked segments"

# The macOS build (anonymous segments by shm_open + unlink + descriptor passing), checked
# by clippy for the x86_64-apple-darwin target; said loudly when the target cannot be had.
check-macos:
	@if rustup target add x86_64-apple-darwin >/dev/null 2>&1; then \
	  CARGO_TARGET_DIR=target/macos timeout 900 cargo clippy --target x86_64-apple-darwin --all-targets -- -D warnings \
	  && echo "macOS build check: passed"; \
	else echo "NOTE: the macOS build check did not run: rustup could not add the x86_64-apple-darwin target"; fi

# The array battery with named segments (`make test` runs it after the whole suite).
test-named: $(STAMP)
	PIXGATE_TRANSPORT=named timeout 1200 cargo test $(addprefix --test ,$(NAMED_BATTERY))

# The array battery with a PyPy worker (`make test` runs it).
test-pypy: $(PYPY_STAMP)
	PIXGATE_PYTHON=$(PYPY_PY) timeout 1500 cargo test $(addprefix --test ,$(PYPY_BATTERY))

# The helper's suite (and the channel and array batteries) on each CPython from 3.9 to
# 3.13 the machine has, each in its own .venv-py3X; says which ran and which are absent
# (scripts/pythons.sh; `make test` runs it).
pythons: $(STAMP19)
	cargo build --all-targets
	./scripts/pythons.sh

venv: $(STAMP)

# OpenSSH's server for tests/ssh.rs, which starts one of its own on 127.0.0.1 (these
# machines run as root); the client and ssh-keygen come with it.
sshd:
	@test -x /usr/sbin/sshd || { (apt-get update -qq || true) && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client; }
	@test -x /usr/sbin/sshd && echo "sshd: /usr/sbin/sshd"

# pypy3 from Debian's packages when it is missing (these machines run as root), and a
# venv of it with the Python suite's tools.
pypy: $(PYPY_STAMP)

$(PYPY_STAMP): python-helper/pyproject.toml Makefile
	command -v $(PYPY) >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pypy3; }
	test -x $(PYPY_PY) || $(PYPY) -m venv $(PYPY_VENV)
	$(PYPY_PY) -m pip install --quiet --only-binary numpy pytest hypothesis execnet numpy
	touch $(PYPY_STAMP)

execnet-peers: $(STAMP19)

# execnet 1.9 for Python 3 and, when there is a Python 2.7, for it.
$(STAMP19): Makefile
	test -x $(VENV19)/bin/python || $(PYTHON) -m venv $(VENV19)
	$(VENV19)/bin/python -m pip install --quiet execnet==1.9.0
	@if [ -n "$(PYTHON2)" ]; then \
	  rm -rf $(PY27_LIB) && \
	  "$(PYTHON2)" -m pip install --quiet --disable-pip-version-check --target $(PY27_LIB) \
	    execnet==1.9.0; \
	else echo "execnet-peers: no Python 2.7 found: the Python 2 cross-checks will fail"; fi
	touch $(STAMP19)

# Jython for tests/legacy.rs (Debian's package); Python 2.7 is used when present.
jython:
	@command -v jython >/dev/null 2>&1 || { \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jython; }
	@command -v jython >/dev/null 2>&1 && echo "jython: $$(command -v jython)"

$(STAMP): python-helper/pyproject.toml Makefile
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip setuptools wheel
	$(VPY) -m pip install --quiet numpy pytest hypothesis execnet xarray ruff mypy
	touch $(STAMP)

# kill -9 of a host or its worker at random moments (tests/chaos.rs); the host is the
# chaos_host example, which `cargo build --all-targets` builds.
# P9: ssh gateways against execnet over a test sshd of its own (BENCHMARKS.md).
bench-ssh: $(STAMP) sshd
	timeout 1800 cargo test --release --test ssh -- --ignored --nocapture bench

chaos: $(STAMP)
	cargo build --all-targets
	PIXGATE_CHAOS_ITERATIONS=$(CHAOS_ITERATIONS) timeout 3600 \
	  cargo test --test chaos -- --nocapture

# 1,000 channels, 16 gateways, and SOAK_MESSAGES round trips watching memory (tests/load.rs).
soak: $(STAMP)
	PIXGATE_SOAK_MESSAGES=$(SOAK_MESSAGES) timeout 3600 \
	  cargo test --test load -- --nocapture --test-threads=1

bench: $(STAMP)
	cargo bench --bench roundtrip
	cargo bench --bench arrays

# Each fuzz target for FUZZ_SMOKE_TIME seconds, when a nightly toolchain is installed;
# cargo-fuzz is installed when it is missing. New inputs go to fuzz/work/ (ignored by
# git); fuzz/corpus/ holds the committed seeds, which `cargo test` replays on stable.
fuzz-smoke:
	@if ! cargo +nightly --version >/dev/null 2>&1; then \
	  echo "fuzz-smoke: no nightly toolchain, fuzz targets not run"; exit 0; fi; \
	if ! cargo +nightly fuzz --version >/dev/null 2>&1; then \
	  cargo install cargo-fuzz --locked || { \
	    echo "fuzz-smoke: cargo-fuzz could not be installed, fuzz targets not run"; exit 0; }; fi; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/work/$$t && \
	  cargo +nightly fuzz run $(FUZZ_FLAGS) $$t fuzz/work/$$t fuzz/corpus/$$t -- \
	    $(FUZZ_ARGS) -max_total_time=$(FUZZ_SMOKE_TIME) -print_final_stats=1 || exit 1; \
	done

# Long runs, one target after the other: `make fuzz FUZZ_TIME=3600`.
fuzz:
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/work/$$t && \
	  cargo +nightly fuzz run $(FUZZ_FLAGS) $$t fuzz/work/$$t fuzz/corpus/$$t -- \
	    $(FUZZ_ARGS) -max_total_time=$(FUZZ_TIME) -print_final_stats=1 || exit 1; \
	done

# Regenerates fuzz/corpus/ from a real exchange with a worker (fuzz/capture_corpus.py).
fuzz-corpus: $(STAMP)
	$(VPY) fuzz/capture_corpus.py

# The gates CI runs before the suite (.ci/run): formatting, clippy, rustdoc without
# warnings, the declared minimum Rust version, ruff and mypy on the helper.
lint: $(STAMP)
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --no-default-features --lib -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
	cd python-helper && $(VPY) -m ruff check . && $(VPY) -m mypy
	$(MAKE) --no-print-directory msrv

# The rust-version Cargo.toml declares, checked with that toolchain (rustup installs it
# when missing; said loudly when it cannot).
MSRV := $(shell sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
msrv:
	@if rustup toolchain list | grep -q "^$(MSRV)" || rustup toolchain install $(MSRV) --profile minimal >/dev/null 2>&1; then \
	  CARGO_TARGET_DIR=target/msrv timeout 1200 cargo +$(MSRV) check --all-targets --quiet && echo "minimum Rust $(MSRV): builds"; \
	else echo "NOTE: the minimum Rust version check did not run: rustup could not install $(MSRV)"; fi

clean:
	rm -rf $(VENV) $(PYPY_VENV) $(VENV19) $(PY27_LIB) .venv-py3* target
