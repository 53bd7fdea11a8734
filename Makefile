# gatehouse: the two commands. Both install what they need on a fresh Debian machine.
SHELL := /bin/bash
CONFIG ?= conf/gatehouse.yaml
CARGO ?= cargo

# Debian packages the build needs (Pingora's zlib-ng needs cmake; the openssl feature needs
# libssl-dev and pkg-config) and what the tests need on top.
BUILD_DEBS := cmake libssl-dev pkg-config
TEST_DEBS := $(BUILD_DEBS) curl pebble

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test build deps-build deps-test bench load instructions release

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

## make release: the profile-guided build for production, target/pgo/gatehouse. An instrumented
## build is driven through benches/load/train.py (HTTP/1.1, HTTP/2, TLS, policies, a stream),
## then built again with what it counted. Needs rustup's llvm-tools (llvm-profdata), added here.
PGO := $(CURDIR)/target/pgo
HOST := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
LLVM_PROFDATA = $(shell rustc --print sysroot)/lib/rustlib/$(HOST)/bin/llvm-profdata
INSTRUMENTED = $(PGO)/instrumented/$(HOST)/release/gatehouse
release:
	$(call apt_install,$(BENCH_DEBS))
	@[ -x "$(LLVM_PROFDATA)" ] || rustup component add llvm-tools
	@# --target: the profile flags reach gatehouse and its dependencies, not build scripts.
	RUSTFLAGS="-Cprofile-generate=$(PGO)/raw" $(CARGO) build --release --bin gatehouse \
	  --target $(HOST) --target-dir $(PGO)/instrumented
	@# Trained again only when the instrumented build changed.
	@if [ ! -f $(PGO)/gatehouse.profdata ] || \
	    [ $(INSTRUMENTED) -nt $(PGO)/gatehouse.profdata ]; then \
	  rm -rf $(PGO)/raw && \
	  python3 benches/load/train.py $(INSTRUMENTED) && \
	  $(LLVM_PROFDATA) merge -o $(PGO)/gatehouse.profdata $(PGO)/raw; \
	fi
	RUSTFLAGS="-Cprofile-use=$(PGO)/gatehouse.profdata" $(CARGO) build --release --bin gatehouse \
	  --target $(HOST) --target-dir $(PGO)/optimized
	cp $(PGO)/optimized/$(HOST)/release/gatehouse $(PGO)/gatehouse
	@echo "built $(PGO)/gatehouse"

# The load comparison measures the profile-guided build (what `make release` ships) as
# "gatehouse" and the plain release build as "gatehouse-no-pgo".
LOAD_ENV := GATEHOUSE_BIN=$(PGO)/gatehouse BENCH_NO_PGO=$(CURDIR)/target/release/gatehouse

## make bench: criterion micro-benchmarks, then the load comparison against nginx and HAProxy
bench: release
	$(CARGO) bench --bench routing --bench policy
	$(MAKE) --no-print-directory load

## make instructions: user-space instructions per request under callgrind (deterministic A/B of
## code changes, on plain release builds; pass builds as
## ARGS="old=/path/to/gatehouse new=target/release/gatehouse")
instructions:
	$(call apt_install,$(BENCH_DEBS) valgrind)
	$(CARGO) build --release --bin gatehouse
	python3 benches/load/instructions.py $(ARGS)

## make load: only the load comparison (BENCH_DURATION, BENCH_ROUNDS to change its length)
load: release
	$(CARGO) build --release --bin gatehouse
	$(CARGO) build --release --example bare_proxy
	$(LOAD_ENV) python3 benches/load/compare.py
