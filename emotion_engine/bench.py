"""``emotion-engine bench``: run the benchmarks in ``benchmarks/`` and save their results.

Each benchmark runs in its own process (``python -m benchmarks.NAME``, from the source
checkout this package lives in) with ``OPENBLAS_NUM_THREADS=1``, so pinning,
memory and imports of one never touch another. Their progress and tables go to
stderr as they run; the combined JSON (machine, git commit, every result, the
issue's targets as measured) is written to ``benchmarks/results/`` (or ``--out``)
as ``<UTC time>-<commit>.json`` and ``latest.json`` (``latest-quick.json`` for
``--quick``), and the targets table is printed at the end.

Exit status: 0 when every benchmark ran (missed targets are results, not errors),
1 when one failed or the smoke ratios fell below their floors, 64 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCHMARKS: tuple[str, ...] = (
    "smoke",
    "hot_path",
    "throughput",
    "vs_opensmile",
    "end_to_end",
    "detection_delay",
    "verifier",
)
"""Every benchmark module, in the order ``bench`` runs them."""

REPO_ROOT = Path(__file__).resolve().parents[1]
EXIT_USAGE = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emotion-engine bench``."""
    parser.add_argument(
        "--quick", action="store_true", help="short runs of everything (about a minute)"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="end to end with more levels (up to 1,000 legs, 20 s each)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="NAME",
        help=f"run only these (repeat or comma-separate): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="where results go (default benchmarks/results in the checkout)",
    )
    parser.add_argument(
        "--data", type=Path, default=None, metavar="DIR", help="corpora for detection_delay"
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="DIR",
        help="model for detection_delay (default: the shipped one, which saw those speakers)",
    )


def _selected(only: list[str] | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    names = [n.strip().replace("-", "_") for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    return [n for n in BENCHMARKS if n in names]


def _flags(name: str, args: argparse.Namespace) -> list[str]:
    flags = ["--quick"] if args.quick else []
    if name == "end_to_end" and args.full and not args.quick:
        flags.append("--full")
    if name == "detection_delay":
        if args.data is not None:
            flags += ["--data", str(args.data)]
        if args.model is not None:
            flags += ["--model", str(args.model)]
    return flags


def _run_one(name: str, flags: list[str], json_out: Path) -> dict[str, Any]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--json-out", str(json_out), *flags]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, check=False)
    if not json_out.is_file():
        return {"benchmark": name, "error": f"exit status {proc.returncode}, no result"}
    result: dict[str, Any] = json.loads(json_out.read_text())
    if proc.returncode != 0:
        result["error"] = f"exit status {proc.returncode}"
    result["runner_wall_s"] = round(time.monotonic() - started, 1)
    return result


def _command() -> str:
    """How this run was started, for the record."""
    argv = sys.argv
    if len(argv) > 1 and argv[1] == "bench":
        return shlex.join(["emotion-engine", *argv[1:]])
    return shlex.join(["python", "-m", "emotion_engine.bench", *argv[1:]])


def _targets_table(targets: list[dict[str, Any]]) -> str:
    lines = ["| benchmark | target | goal | measured | met |", "|---|---|---|---|---|"]
    for t in targets:
        met = {True: "yes", False: "NO", None: "n/a"}[t.get("met")]
        lines.append(f"| {t['benchmark']} | {t['target']} | {t['goal']} | {t['value']} | {met} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Run ``emotion-engine bench`` from parsed arguments; returns the exit status."""
    if not (REPO_ROOT / "benchmarks" / "__init__.py").is_file():
        print(
            f"error: benchmarks/ not found next to {REPO_ROOT / 'emotion_engine'}: "
            "run from a source checkout of emotion-engine",
            file=sys.stderr,
        )
        return 1
    try:
        names = _selected(args.only)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out_dir: Path = args.out or REPO_ROOT / "benchmarks" / "results"
    started_at = datetime.now(UTC)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="emotion-bench-") as tmp:
        for i, name in enumerate(names, 1):
            print(f"== [{i}/{len(names)}] {name} ==", file=sys.stderr, flush=True)
            results[name] = _run_one(name, _flags(name, args), Path(tmp) / f"{name}.json")
            if "error" in results[name]:
                print(f"!! {name}: {results[name]['error']}", file=sys.stderr, flush=True)
    first = next((r for r in results.values() if "git" in r), {})
    git = first.get("git", {"commit": "unknown", "dirty": None})
    targets = [
        {"benchmark": name, **t} for name, r in results.items() for t in r.get("targets", [])
    ]
    doc = {
        "started_utc": started_at.isoformat(timespec="seconds"),
        "command": _command(),
        "quick": bool(args.quick),
        "git": git,
        "machine": first.get("machine", {}),
        "targets": targets,
        "benchmarks": results,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    suffix = "-quick" if args.quick else ""
    text = json.dumps(doc, indent=2) + "\n"
    path = out_dir / f"{stamp}-{str(git['commit'])[:8]}{suffix}.json"
    path.write_text(text)
    (out_dir / f"latest{suffix}.json").write_text(text)
    print(_targets_table(targets))
    print(f"\nresults: {path}", file=sys.stderr)
    failed = [n for n, r in results.items() if "error" in r]
    if results.get("smoke", {}).get("ok") is False:
        failed.append("smoke (ratios below floors)")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m emotion_engine.bench", description=__doc__)
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
