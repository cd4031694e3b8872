"""``python -m emotion_engine.training.<module>`` entry points: one error handling for all."""

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
    exit_with(lambda: main(parser.parse_args()))


def exit_with(main: Callable[[], int]) -> NoReturn:
    """Run ``main`` and exit with its status; an engine error (a bad setting, missing
    data) is one ``error:`` line and exit 1, not a traceback."""
    try:
        sys.exit(main())
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
