"""Coverage-guided fuzzing of marsad's parsers (atheris/libFuzzer).

``fuzz.targets`` holds one function per target, each holding a parser to its contract;
``python -m fuzz.run`` runs them (``make fuzz``, ``make fuzz-smoke``); ``fuzz/make_corpus.py``
builds the seed corpus in ``fuzz/corpus/<target>/`` from the bundled captures.
"""
