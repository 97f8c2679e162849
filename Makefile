# candleflow: `make run` starts the pipeline, `make test` runs the whole test suite.
# Both create the virtual environment and install everything they need first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install system-deps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,redis]"
	@touch $@

install: $(STAMP)

system-deps:
	@bash scripts/install-system-deps.sh

run: install
	$(BIN)/candleflow kafka start
	$(BIN)/candleflow topics create
	@echo "candleflow: Kafka broker and topics are up (bootstrap: see above)."

test: system-deps install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench

clean:
	-$(BIN)/candleflow kafka stop
	rm -rf $(VENV) .candleflow .pytest_cache
