"""One parser under atheris (libFuzzer): ``python -m benchmarks.fuzz.worker NAME --runs N
--stats FILE --corpus DIR --crashes DIR [libFuzzer flags...]``.

The emotion_engine.ingest modules are imported under atheris' coverage instrumentation,
so libFuzzer keeps the inputs that reach new branches of the parsers. Every input goes
through :func:`~benchmarks.fuzz.targets.unexpected`; an unexpected exception is counted
and its first input per (exception type, raising line) saved as a reproducer in the
crashes folder (``NAME-<sha1>.bin`` with the traceback beside it), and fuzzing goes on.
Exactly ``--runs`` inputs are run (or as many as ``--max-time`` seconds allow): the
worker writes its stats and exits itself then (libFuzzer's own exit skips Python's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import atheris

# atheris instruments whole top-level packages: what the parsers use from outside
# emotion_engine.ingest is imported first, so that only the parsers carry the
# coverage instrumentation (the rest would only slow every input down).
import emotion_engine.audio.g711
import emotion_engine.config
import emotion_engine.errors
import emotion_engine.frames
import emotion_engine.publish.events  # noqa: F401

with atheris.instrument_imports(include=["emotion_engine"]):
    from benchmarks.fuzz.targets import TARGETS, unexpected

STATS_EVERY = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=sorted(TARGETS))
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--max-time", type=float, default=0.0, help="seconds (0: no limit)")
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--crashes", type=Path, required=True)
    args, libfuzzer = parser.parse_known_args()
    logging.disable(logging.CRITICAL)  # the cores log every violation; that is not the target
    target = TARGETS[args.name]
    args.crashes.mkdir(parents=True, exist_ok=True)
    stats: dict[str, Any] = {
        "parser": args.name,
        "entry": target.entry,
        "allowed": [e.__name__ for e in target.allowed],
        "inputs": 0,
        "unexpected": 0,
        "distinct": {},
        "started": time.time(),
    }

    deadline = time.time() + args.max_time if args.max_time else 0.0

    def write_stats() -> None:
        stats["elapsed_s"] = round(time.time() - stats["started"], 1)
        tmp = args.stats.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats, indent=1))
        tmp.replace(args.stats)

    def one_input(data: bytes) -> None:
        exc = unexpected(target, data)
        stats["inputs"] += 1
        if exc is not None:
            stats["unexpected"] += 1
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            key = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"
            if key not in stats["distinct"]:
                digest = hashlib.sha1(data).hexdigest()[:12]
                path = args.crashes / f"{args.name}-{digest}.bin"
                path.write_bytes(data)
                text = "".join(traceback.format_exception(exc))
                path.with_suffix(".txt").write_text(f"{key}\n{text}")
                stats["distinct"][key] = {
                    "count": 0,
                    "reproducer": str(path),
                    "message": str(exc)[:300],
                }
                print(f"[{args.name}] unexpected {key}: {str(exc)[:200]} -> {path}", flush=True)
            stats["distinct"][key]["count"] += 1
        if stats["inputs"] % STATS_EVERY == 0:
            write_stats()
        if stats["inputs"] >= args.runs or (deadline and time.time() >= deadline):
            write_stats()
            sys.stdout.flush()
            os._exit(0)

    # libFuzzer would stop on its own run count too; ours decides (see the docstring)
    atheris.Setup([sys.argv[0], f"-runs={args.runs + 10**6}", *libfuzzer], one_input)
    atheris.Fuzz()
    write_stats()  # libFuzzer stopped first (e.g. -max_total_time)


if __name__ == "__main__":
    main()
