"""Replay fuzz reproducers: ``python -m benchmarks.fuzz.repro FILE...``.

The parser is the file name's prefix (``sip-1a2b3c.bin`` -> sip). Prints, per file,
"ok" or the unexpected exception with its traceback; exits 1 if any is unexpected.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from benchmarks.fuzz.targets import TARGETS, unexpected


def main(argv: list[str]) -> int:
    logging.disable(logging.CRITICAL)
    bad = 0
    for name in argv:
        path = Path(name)
        target = TARGETS[path.name.split("-", 1)[0]]
        exc = unexpected(target, path.read_bytes())
        if exc is None:
            print(f"{path}: ok ({target.name})")
            continue
        bad += 1
        print(f"{path}: UNEXPECTED ({target.name})")
        traceback.print_exception(exc)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
