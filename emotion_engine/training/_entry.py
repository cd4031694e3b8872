"""``python -m emotion_engine.training.<module>`` entry point shared by train and evaluate."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import NoReturn

from emotion_engine.errors import EngineError


def run_module(
    *,
    prog: str,
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    main: Callable[[argparse.Namespace], int],
) -> NoReturn:
    """Parse the command line, run ``main`` and exit; an engine error is one line, exit 1."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    try:
        sys.exit(main(parser.parse_args()))
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
