# `make test` and `make demo` each do the whole set-up on a fresh machine:
# a virtualenv in .venv, the package and its dependencies, and (for tests) the Kafka jars.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TEST_PORT ?= 19092
TEST_BROKER_DIR ?= $(CURDIR)/.cache/test-broker
PYTEST_ARGS ?=

.PHONY: install test test-fast demo broker-jars browser-deps lint bench clean artifacts

$(VENV)/.installed: pyproject.toml setup.py $(wildcard models/binary/csrc/*.c models/binary/csrc/*.h)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -e '.[dev]'
	touch $@

install: $(VENV)/.installed

broker-jars: install
	$(BIN)/vistream broker fetch

# Headless Chromium and its driver for the `browser` tests (the web console), from Debian's
# packages, where missing. As root (CI) they are installed, and `make test` fails without them;
# otherwise `sudo -n` is tried, and without it the browser tests are skipped with a message.
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "browser-deps: $$(chromium --version 2>/dev/null | head -1), chromedriver present"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium chromium-driver; \
	elif sudo -n true 2>/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium chromium-driver; \
	else \
		echo "browser-deps: chromium/chromedriver missing and not root: browser tests will be" \
			"skipped (sudo apt-get install chromium chromium-driver)"; \
	fi

# Lint first (style and the layer contracts), then a throwaway broker for the `kafka` tests,
# every test (the `browser` ones in headless Chromium), and the broker always stopped.
test: lint broker-jars browser-deps
	$(BIN)/vistream broker start --port $(TEST_PORT) --data-dir $(TEST_BROKER_DIR)
	VISTREAM_BOOTSTRAP=127.0.0.1:$(TEST_PORT) VISTREAM_REQUIRE_KAFKA=1 \
		VISTREAM_REQUIRE_BROWSER=$$([ "$$(id -u)" = 0 ] && echo 1 || echo 0) \
		$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	$(BIN)/vistream broker stop --port $(TEST_PORT) --data-dir $(TEST_BROKER_DIR); exit $$rc

# Everything but the broker tests.
test-fast: install
	$(BIN)/python -m pytest -m "not kafka" $(PYTEST_ARGS)

demo: install
	$(BIN)/vistream demo

# Rebuild the shipped backbones in models/zoo (fixed seeds; resumes from out/artifacts):
# the ABC-pruned float ResNet-20 and the 1-bit ResNet-20 on the hard digits-composite set.
# One thread, as the shipped files were built (float sums may round differently with more).
artifacts: install
	$(BIN)/vistream artifacts build --threads 1

bench: install
	$(BIN)/vistream bench bus

# ruff does not follow vistream/'s links, so the root folders are named; import-linter walks
# vistream/ and follows them (contracts in pyproject.toml).
lint: install
	$(BIN)/ruff check vistream pipeline stages models tests
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .cache out *.egg-info
