# candleflow: `make run` starts the pipeline, `make test` runs the whole test suite.
# Both create the virtual environment and install everything they need first.

PYTHON ?= python3
# rustup's cargo, for the Rust frame parser of ingest (setup.py; skipped when there is no cargo)
export PATH := $(HOME)/.cargo/bin:$(PATH)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install system-deps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,redis]"
	@touch $@ $(CORE_STAMP)

# The compiled hot paths (setup.py: mypyc, and Rust for native/) are built in place by the editable
# install, and rebuilt whenever their sources change, so a stale build never shadows an edited source.
CORE_SOURCES := setup.py src/candleflow/core/indicators.py src/candleflow/core/steps.py \
                src/candleflow/exchanges/fastpath.py native/Cargo.toml native/Cargo.lock native/src/lib.rs
CORE_STAMP   := $(VENV)/.core-built

$(CORE_STAMP): $(CORE_SOURCES) | $(STAMP)
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $@

# The dashboard's chart library (package.json: lightweight-charts), served from node_modules.
NODE_STAMP := node_modules/.installed

$(NODE_STAMP): package.json package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --no-audit --no-fund --loglevel=error && touch $@; \
	else \
		echo "npm not found: the dashboard needs it for its chart library (install Node.js, then run make install)" >&2; \
	fi

install: $(STAMP) $(CORE_STAMP) $(NODE_STAMP)

system-deps:
	@bash scripts/install-system-deps.sh

# live: the configured exchanges (default: Kraken BTC/USD, ETH/USD, SOL/USD), falling back to
# the simulated market when none can be reached; simulate: the simulated market directly.
SOURCE ?= live

run: install
	$(BIN)/candleflow up --source $(SOURCE)

test: system-deps install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench

clean:
	-$(BIN)/candleflow kafka stop
	rm -rf $(VENV) .candleflow .pytest_cache build .mypy_cache native/target
	rm -f src/candleflow_core__mypyc.*.so src/candleflow/core/*.so src/candleflow/exchanges/*.so
