PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint venv captures baseline bench bench-replay clean fuzz fuzz-smoke fuzz-corpus soak perturb

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,dask]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/marsad serve --host 127.0.0.1 --port 8000 --data-dir marsad-data \
	  --preload captures/sample-call.pcap captures/sample-blocked.pcap captures/sample-sip.pcap

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The lab (tests/lab) plays real-time calls through network namespaces: it runs on its own,
# after the rest, so that other tests' load does not bend its delay and loss figures.
test: $(STAMP) lint
	$(BIN)/pytest -n 2 --ignore=tests/lab
	$(BIN)/pytest -p no:xdist tests/lab

# Fuzzing (fuzz/run.py): targets run one after another on one core. FUZZ_SECONDS per target;
# the corpus the fuzzer grows is kept in FUZZ_WORK between runs (CI may cache it).
FUZZ_SECONDS ?= 300
FUZZ_WORK ?= fuzz/work
FUZZ_ARGS ?=

fuzz: $(STAMP)
	$(BIN)/python -m fuzz.run --seconds $(FUZZ_SECONDS) --work $(FUZZ_WORK) \
	  --report $(FUZZ_WORK)/report.json $(FUZZ_ARGS)

# ~10 s per target, about 3 minutes in all; fails on any crash or hang. A fixed seed: CI
# explores the same inputs on every run, so it fails for a change in the code, not by chance
fuzz-smoke: $(STAMP)
	$(BIN)/python -m fuzz.run --seconds 10 --seed 1 --work $(FUZZ_WORK) $(FUZZ_ARGS)

fuzz-corpus: $(STAMP)
	$(BIN)/python fuzz/make_corpus.py

# Benign damage (capture loss, a cut, a one-sided tap) to every reference capture must
# add no interference verdict (the suite runs a bounded set in tests/perturb/).
PERTURB_SETS ?= real-dev,ndpi-dev,ndpi-train
perturb: $(STAMP)
	$(BIN)/python -m tests.perturb.perturb --sets $(PERTURB_SETS) --json perturb-result.json

# The long soak (the suite runs a bounded one in tests/soak/test_soak.py)
SOAK_SECONDS ?= 900
soak: $(STAMP)
	$(BIN)/python -m tests.soak.soak --seconds $(SOAK_SECONDS) --json soak-result.json

captures: $(STAMP)
	$(BIN)/python captures/make_captures.py
	$(BIN)/python captures/make_app_captures.py

# Rewrite tests/golden/ (what every capture gives) after an intended change in behaviour.
baseline: $(STAMP)
	$(BIN)/python tests/regen_golden.py

# Modules compiled first, as an installed marsad has them: with PYTHONDONTWRITEBYTECODE set,
# an edited module would otherwise be compiled again at every timed start.
bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m compileall -q api classifier policy probe
	$(BIN)/python bench/run_bench.py

# The live probe on a real interface (root, tcpreplay): the highest replay rate with no
# kernel drop, on the web and the call-heavy capture (bench/replay_rate.py).
REPLAY_RATES ?= 10000,20000,40000,60000,80000,120000
bench-replay: $(STAMP)
	test -f bench/data/replay-web.pcap || $(BIN)/python bench/gen_capture.py --packets 200000 --out bench/data/replay-web.pcap
	test -f bench/data/replay-calls.pcap || $(BIN)/python bench/gen_capture.py --profile calls --packets 200000 --out bench/data/replay-calls.pcap
	$(BIN)/python bench/replay_rate.py --capture bench/data/replay-web.pcap --rates $(REPLAY_RATES)
	$(BIN)/python bench/replay_rate.py --capture bench/data/replay-calls.pcap --rates $(REPLAY_RATES)

clean:
	rm -rf $(VENV) build *.egg-info
