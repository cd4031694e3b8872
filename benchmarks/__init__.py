"""Benchmarks of the engine, run outside pytest (``make bench``, ``emotion-engine bench``).

Each module is a script: ``python -m benchmarks.NAME [--quick] [--json-out FILE]``
prints a short table on stderr and its result as one JSON object on stdout. The
runner in :mod:`emotion_engine.bench` runs them one process each and saves the
combined results, with the machine and the git commit, under ``benchmarks/results/``.

Modules: ``hot_path``, ``throughput``, ``vs_opensmile``, ``end_to_end`` (with its
``loadgen`` process) and ``detection_delay``; ``reference`` holds the plain per-frame
numpy LLD that ``smoke`` (and the CI guard ``tests/test_bench_smoke.py``) compares
the batched extractor against. See ``benchmarks/README.md``.
"""

import os

# Before numpy loads OpenBLAS: its worker threads would spread over the cores that the
# pinned benchmarks keep to one (and spin on a busy host). `emotion-engine bench` sets
# it too; this covers `python -m benchmarks.NAME` run by hand.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
