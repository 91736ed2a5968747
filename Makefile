# Two commands on a fresh machine with python3 and make: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint format demo bench emulators up down status clean

# Re-install only when the dependency list changes; a second `make test` starts at once.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

demo: $(STAMP)
	$(BIN)/python -m demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(SCENARIOS)

# `make up` starts whatever part is not running (server, emulators, worker); `make status` shows each part.
up: $(STAMP)
	$(BIN)/python -m demo.stack up

status: $(STAMP)
	$(BIN)/python -m demo.stack status

down: $(STAMP)
	$(BIN)/python -m demo.stack down

emulators: $(STAMP)
	$(BIN)/python -m emulators

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info .demo .run
