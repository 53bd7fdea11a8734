# gatehouse: the two commands. Both install what they need on a fresh Debian machine.
SHELL := /bin/bash
CONFIG ?= conf/gatehouse.yaml
CARGO ?= cargo

# Debian packages the build needs (Pingora's zlib-ng needs cmake; the openssl feature needs
# libssl-dev and pkg-config) and what the tests need on top.
BUILD_DEBS := cmake libssl-dev pkg-config
TEST_DEBS := $(BUILD_DEBS) curl pebble

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test build deps-build deps-test bench load instructions

define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

deps-build:
	$(call apt_install,$(BUILD_DEBS))

deps-test:
	$(call apt_install,$(TEST_DEBS))

## make run: build (release) and start gatehouse on conf/gatehouse.yaml
run: deps-build
	$(CARGO) build --release --bin gatehouse
	./target/release/gatehouse check -c $(CONFIG)
	./target/release/gatehouse run -c $(CONFIG)

build: deps-build
	$(CARGO) build

TEST_PACKAGES := -p gatehouse -p pingora-http -p pingora-timeout

## make test: formatting, clippy (warnings denied), every conf/ example checked, the whole suite
## (with the unit tests of the vendored, patched pingora-http and pingora-timeout)
test: deps-test
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) build --bins
	@for f in conf/*.yaml; do ./target/debug/gatehouse check -c $$f >/dev/null || exit 1; echo "checked $$f"; done
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --no-fail-fast $(TEST_PACKAGES); \
	else \
	  $(CARGO) test --no-fail-fast $(TEST_PACKAGES); \
	fi

BENCH_DEBS := $(BUILD_DEBS) nginx-light haproxy wrk nghttp2-client openssl python3

## make bench: criterion micro-benchmarks, then the load comparison against nginx and HAProxy
bench:
	$(call apt_install,$(BENCH_DEBS))
	$(CARGO) bench --bench routing --bench policy
	$(CARGO) build --release --bin gatehouse
	$(CARGO) build --release --example bare_proxy
	python3 benches/load/compare.py

## make instructions: user-space instructions per request under callgrind (deterministic A/B;
## pass builds as ARGS="old=/path/to/gatehouse new=target/release/gatehouse")
instructions:
	$(call apt_install,$(BENCH_DEBS) valgrind)
	$(CARGO) build --release --bin gatehouse
	python3 benches/load/instructions.py $(ARGS)

## make load: only the load comparison (BENCH_DURATION, BENCH_ROUNDS to change its length)
load:
	$(call apt_install,$(BENCH_DEBS))
	$(CARGO) build --release --bin gatehouse
	$(CARGO) build --release --example bare_proxy
	python3 benches/load/compare.py
