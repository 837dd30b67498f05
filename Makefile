# tokend: two commands. `make run` sets up and starts the server; `make test` sets up and
# runs every test. Missing Debian packages are installed with apt-get (through sudo when
# not root).
BUILD ?= build
ARGS ?=
JOBS := $(shell nproc 2>/dev/null || echo 2)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Build and run: compiler, CMake, the four libraries, and the CA store for upstream TLS.
RUN_PACKAGES = gcc make cmake pkg-config liblua5.4-dev libmicrohttpd-dev libcurl4-openssl-dev \
               lua-cjson-dev ca-certificates
# Tests: the fakes are Python (standard library only); the test CA is made with openssl;
# the browser test runs Debian's Chromium with espeak-ng speech (converted by sox) as the
# microphone, driven by playwright-core from npm.
TEST_PACKAGES = $(RUN_PACKAGES) python3 openssl lua5.4 curl chromium espeak-ng sox

.PHONY: all build run test test-sanitize deps-run deps-test deps-node clean

all: build

define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

deps-run:
	$(call install_missing,$(RUN_PACKAGES))

deps-test:
	$(call install_missing,$(TEST_PACKAGES))
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "installing Debian packages: nodejs npm"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm; }
	@$(MAKE) --no-print-directory deps-node

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

# The same tests against a build with AddressSanitizer and UndefinedBehaviorSanitizer.
test-sanitize: deps-test
	cmake -S . -B $(BUILD)-sanitize -DTOKEND_WERROR=ON -DTOKEND_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
	cmake --build $(BUILD)-sanitize -j$(JOBS)
	cd $(BUILD)-sanitize && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure

clean:
	rm -rf $(BUILD) $(BUILD)-sanitize
