PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint venv captures baseline bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/marsad serve --host 127.0.0.1 --port 8000 --data-dir marsad-data \
	  --preload captures/sample-call.pcap captures/sample-blocked.pcap captures/sample-sip.pcap

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP) lint
	$(BIN)/pytest -n 2

captures: $(STAMP)
	$(BIN)/python captures/make_captures.py
	$(BIN)/python captures/make_app_captures.py

# Rewrite tests/golden/ (what every capture gives) after an intended change in behaviour.
baseline: $(STAMP)
	$(BIN)/python tests/regen_golden.py

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/run_bench.py

clean:
	rm -rf $(VENV) build *.egg-info
