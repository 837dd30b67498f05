# tokend: two commands. `make run` sets up and starts the server; `make test` sets up and
# runs every test. Missing Debian packages are installed with apt-get (through sudo when
# not root), which waits for another installation to finish. `make deb` builds the
# Debian packages.
BUILD ?= build
ARGS ?=
JOBS := $(shell nproc 2>/dev/null || echo 2)
SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT = $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600

# Build and run: compiler, CMake, the libraries (Lua, HTTP server and client, JSON,
# OpenSSL's libcrypto, hiredis, wslay's WebSocket framing, zlib, libqrencode for --dev's QR
# code), the system's media types, and the CA store for TLS.
RUN_PACKAGES = gcc make cmake pkgconf liblua5.4-dev libmicrohttpd-dev libcurl4-openssl-dev \
               lua-cjson-dev libssl-dev libhiredis-dev libwslay-dev zlib1g-dev libqrencode-dev media-types \
               ca-certificates
# The Debian packages: built by dpkg-buildpackage with debhelper's CMake support (the
# build dependencies are RUN_PACKAGES', as debian/control says), checked by lintian.
DEB_PACKAGES = debhelper dpkg-dev lintian
# Tests: the fakes are Python (standard library only); the test CA is made with openssl;
# the browser test runs Debian's Chromium with espeak-ng speech (converted by sox) as the
# microphone, driven by playwright-core from npm; it trusts tokend's development CA in
# Chromium's NSS store with certutil. Several instances share limits through a real Redis,
# behind a real HAProxy. The man page is read with groff; the packages are built and
# installed in a Debian chroot made by debootstrap.
TEST_PACKAGES = $(RUN_PACKAGES) python3 openssl lua5.4 curl chromium espeak-ng sox wrk valgrind luarocks \
                redis-server haproxy lua-luv lua-cqueues libnss3-tools groff-base $(DEB_PACKAGES) debootstrap
# Fuzzing: clang with libFuzzer and the sanitizer runtimes.
FUZZ_PACKAGES = $(RUN_PACKAGES) clang libclang-rt-14-dev
FUZZ_TARGETS = $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_SECONDS ?= 20
# The C style: .clang-format, applied by `make format`, checked by `make format-check` in CI.
FORMAT_PACKAGES = clang-format
FORMAT_FILES = $(wildcard src/*.c src/*.h tests/unit/*.c tests/unit/*.h tests/fuzz/*.c tests/fuzz/*.h \
                          tests/faultinject/*.c dist/*.c)

.PHONY: all build run test check test-sanitize test-valgrind fuzz bench deb format format-check deps-run deps-test \
        deps-nodejs deps-node deps-fuzz deps-deb deps-format clean

all: build

define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(APT) update -qq && $(APT) install -y -qq --no-install-recommends $$missing; \
	fi
endef

deps-run:
	$(call install_missing,$(RUN_PACKAGES))

deps-test:
	$(call install_missing,$(TEST_PACKAGES))
	@$(MAKE) --no-print-directory deps-nodejs deps-node

# Node.js and npm: Debian's, unless the machine has them already (NodeSource's nodejs
# carries its own npm and conflicts with Debian's npm package).
deps-nodejs:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "installing Debian packages: nodejs npm"; \
	  $(APT) update -qq && $(APT) install -y -qq --no-install-recommends nodejs npm; }

# The browser test's npm packages, at the versions pinned in its lockfile.
deps-node: tests/browser/node_modules/.package-lock.json

tests/browser/node_modules/.package-lock.json: tests/browser/package-lock.json tests/browser/package.json
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error

build: deps-run
	cmake -S . -B $(BUILD) -DTOKEND_WERROR=ON
	cmake --build $(BUILD) -j$(JOBS)

run: build
	$(BUILD)/tokend $(ARGS)

test: deps-test build
	cd $(BUILD) && ctest --output-on-failure

# The same build and tests, installing nothing: for a machine that has the dependencies
# (a developer's after one `make test`, or a CI image built for it). T=regex runs only the
# suites whose names match (make check T=relay).
check:
	cmake -S . -B $(BUILD) -DTOKEND_WERROR=ON
	cmake --build $(BUILD) -j$(JOBS)
	cd $(BUILD) && ctest --output-on-failure $(if $(T),-R '$(T)')

# The same tests against a build with AddressSanitizer and UndefinedBehaviorSanitizer.
test-sanitize: deps-test
	cmake -S . -B $(BUILD)-sanitize -DTOKEND_WERROR=ON -DTOKEND_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
	cmake --build $(BUILD)-sanitize -j$(JOBS)
	cd $(BUILD)-sanitize && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure

# tokend, libtokend0, libtokend-dev and lua-tokend in $(BUILD)/deb (dist/build-deb), then
# lintian, which fails on errors. Build dependencies debian/control names and the machine
# lacks are installed (apt-get build-dep).
deps-deb:
	$(call install_missing,$(DEB_PACKAGES))
	@dpkg-checkbuilddeps 2>/dev/null || { echo "installing the build dependencies of debian/control"; \
	  $(APT) update -qq && $(APT) build-dep -y -qq --no-install-recommends ./; }

deb: deps-deb
	dist/build-deb $(BUILD)/deb
	lintian --fail-on error $(BUILD)/deb/tokend_*.changes

# Side by side with nginx + Lua and the Express seed, everything from this repository
# (bench/) and Debian packages; see bench/run --help for options (BENCH_ARGS).
BENCH_PACKAGES = wrk iproute2 procps python3 curl openssl redis-server nginx-light libnginx-mod-http-lua \
                 libnginx-mod-http-echo
bench: build
	$(call install_missing,$(BENCH_PACKAGES))
	@$(MAKE) --no-print-directory deps-nodejs
	bench/run $(BENCH_ARGS)

# The integration suites (all but the timing-bound concurrency and soak runs, and those
# that do not start tokend themselves) with tokend under valgrind memcheck: any memory
# error or definite leak makes tokend exit 99, which fails the test that started it.
VALGRIND_SUITES = test_core test_config test_upstream_faults test_static test_lua_api test_security test_operations \
                  test_relay test_proxy
test-valgrind: deps-test build
	cd tests/integration && TOKEND_BIN=$(CURDIR)/$(BUILD)/tokend TOKEND_TEST_TMP=$(CURDIR)/$(BUILD)/test-tmp \
	  TOKEND_WRAPPER="valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite" \
	  python3 -m unittest $(VALGRIND_SUITES)

deps-fuzz:
	$(call install_missing,$(FUZZ_PACKAGES))

# Each libFuzzer target for FUZZ_SECONDS, from the seed corpus in tests/fuzz/corpus (copied:
# what the fuzzer finds stays in the build folder).
fuzz: deps-fuzz
	CC=clang cmake -S . -B $(BUILD)-fuzz -DTOKEND_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build $(BUILD)-fuzz -j$(JOBS)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(BUILD)-fuzz/corpus/$$t && cp tests/fuzz/corpus/$$t/* $(BUILD)-fuzz/corpus/$$t/; \
	  echo "fuzzing $$t for $(FUZZ_SECONDS) s"; \
	  $(BUILD)-fuzz/tests/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -print_final_stats=1 \
	    -artifact_prefix=$(BUILD)-fuzz/crash-$$t- $(BUILD)-fuzz/corpus/$$t 2>&1 | grep -E "^(stat::number_of_executed_units|==|SUMMARY|Done)" ; \
	  test $${PIPESTATUS[0]} -eq 0; \
	done

deps-format:
	$(call install_missing,$(FORMAT_PACKAGES))

format: deps-format
	clang-format -i $(FORMAT_FILES)

# Fails, naming each file and line, when a C file differs from what `make format` writes.
format-check: deps-format
	clang-format --dry-run -Werror $(FORMAT_FILES)

clean:
	rm -rf $(BUILD) $(BUILD)-sanitize $(BUILD)-fuzz
