# aisle: the two entry points a fresh machine needs are `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DATA := ../shared/data
export HF_HUB_OFFLINE := 1

.PHONY: install export demo test test-fast bench protos clean

$(BIN)/aisle: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch 2.13.0 first: the CPU wheel on this machine's disk (anything else pulls CUDA builds).
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/aisle

install: $(BIN)/aisle

export: install
	$(BIN)/aisle export

# Install, export the models, start the local stack on embedded Postgres/Redis, load a demo
# catalog (the Scientific items and purchase histories), refresh everything, answer a search
# and a recommendation through the gateway.
demo: export
	$(BIN)/aisle up
	$(BIN)/aisle load scientific-items $(DATA)/scientific/items.csv
	$(BIN)/aisle load scientific-interactions $(DATA)/scientific/interactions.csv --splits train,valid
	$(BIN)/aisle refresh all
	$(BIN)/aisle search "3d printer filament" --page-size 5 --explain
	$(BIN)/aisle recommend ABW8NXS7SV55K --k 5
	@echo "The stack keeps running: \`$(BIN)/aisle status\` shows it, \`$(BIN)/aisle down\` stops it."

# The whole suite (slow fault-injection tests included), as CI runs it.
test: install
	$(BIN)/python -m pytest -q

# Everything but the slow fault-injection tests, for iterating.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: export
	$(BIN)/python bench/encoder.py
	$(BIN)/python bench/refresh.py
	$(BIN)/python bench/gateway.py

protos: install
	$(BIN)/python tools/gen_protos.py

clean:
	-$(BIN)/aisle down
	rm -rf build .aisle
