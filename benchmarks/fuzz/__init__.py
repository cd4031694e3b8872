"""Fuzzing targets for every ingest parser, and the ``make fuzz`` runner.

One target per parser (:data:`~benchmarks.fuzz.targets.TARGETS`): RTP, SIP, SDP,
SIPREC, Twilio media messages, AudioHook, L16 and AudioSocket. Each takes one fuzz
input (bytes) and feeds it to the parser's public entry point the way the server
does (datagrams, websocket text and binary frames, TCP reads), then checks that
nothing but the parser's documented errors came out, and that its outputs are ones
the server can use (finite times, int16 audio, call info that encodes as an event).

- ``tests/test_fuzz.py`` runs every target on its seeds and a fixed number of
  deterministic mutations (:func:`~benchmarks.fuzz.targets.mutations`) in ``make test``.
- ``make fuzz`` (``python -m benchmarks.fuzz``) runs each target under atheris
  (libFuzzer's coverage-guided mutation of Python code) for 10^6 inputs by default,
  one process per parser, and writes ``benchmarks/results/fuzz-<UTC>.json``;
  reproducers of unexpected exceptions go to ``benchmarks/fuzz/crashes/``.

The input format of each target (how one byte string becomes datagrams or frames) is
in :mod:`benchmarks.fuzz.targets`; the seeds (committed wire captures and valid
messages) in :mod:`benchmarks.fuzz.seeds`.
"""
