"""``make fuzz``: every ingest parser under atheris for ``--runs`` inputs (10^6 default).

One worker process per parser (:mod:`benchmarks.fuzz.worker`), ``--jobs`` at a time.
The corpus of each parser starts from its seeds and is kept in
``benchmarks/fuzz/corpus/NAME`` (ignored by git) so a later run goes on from the
coverage reached. Prints per parser the inputs run and the unexpected exceptions,
writes ``benchmarks/results/fuzz-<UTC>.json`` and exits 1 if anything unexpected
happened; reproducers are in ``benchmarks/fuzz/crashes/``
(``python -m benchmarks.fuzz.repro FILE`` replays one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, git_state, machine
from benchmarks.fuzz.seeds import seeds
from benchmarks.fuzz.targets import TARGETS

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
CRASH_DIR = FUZZ_DIR / "crashes"


def _write_seeds(name: str) -> Path:
    corpus = CORPUS_DIR / name
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seeds(name)):
        (corpus / f"seed-{i:02d}").write_bytes(data)
    return corpus


def _stats(path: Path) -> dict[str, Any]:
    try:
        result: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"inputs": 0, "unexpected": 0, "distinct": {}}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per parser")
    parser.add_argument(
        "--only", default=",".join(TARGETS), help=f"comma-separated parsers ({', '.join(TARGETS)})"
    )
    parser.add_argument("--jobs", type=int, default=1, help="parsers fuzzed at once")
    parser.add_argument("--max-len", type=int, default=8192, help="libFuzzer -max_len (bytes)")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer -seed")
    parser.add_argument(
        "--max-time", type=float, default=0, help="seconds per parser at most (0: no limit)"
    )
    parser.add_argument("--json-out", type=Path, help="summary file (default: benchmarks/results)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        parser.error(f"unknown parsers {unknown}; known: {', '.join(TARGETS)}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.json_out or RESULTS_DIR / f"fuzz-{stamp}.json"
    work = FUZZ_DIR / "runs" / stamp
    work.mkdir(parents=True, exist_ok=True)
    pending = list(names)
    running: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
    results: dict[str, dict[str, Any]] = {}
    started = time.time()
    git = git_state()  # the code the workers import now, whatever the checkout becomes later
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            corpus = _write_seeds(name)
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.fuzz.worker",
                name,
                f"--runs={args.runs}",
                f"--stats={work / f'{name}.json'}",
                f"--crashes={CRASH_DIR}",
                f"-max_len={args.max_len}",
                f"-seed={args.seed}",
                "-rss_limit_mb=4096",
                "-timeout=30",
                "-print_final_stats=1",
                f"--max-time={args.max_time}",
                str(corpus),
            ]
            log = (work / f"{name}.log").open("wb")
            print(f"[fuzz] {name}: {args.runs} inputs, log {work / f'{name}.log'}", flush=True)
            running[name] = (
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT),
                time.time(),
            )
        time.sleep(2.0)
        for name, (proc, t0) in list(running.items()):
            stats = _stats(work / f"{name}.json")
            if proc.poll() is None:
                continue
            del running[name]
            stats["returncode"] = proc.returncode
            stats["wall_s"] = round(time.time() - t0, 1)
            fuzzing_s = stats.get("elapsed_s") or stats["wall_s"]  # without the start-up
            stats["inputs_per_s"] = round(stats["inputs"] / max(fuzzing_s, 1e-9), 1)
            results[name] = stats
            print(
                f"[fuzz] {name}: {stats['inputs']} inputs, {stats['unexpected']} unexpected "
                f"({len(stats['distinct'])} distinct), {stats['wall_s']} s",
                flush=True,
            )
    summary = {
        "kind": "fuzz",
        "engine": f"atheris {_atheris_version()} (libFuzzer)",
        "runs_per_parser": args.runs,
        "max_len": args.max_len,
        "max_time_s_per_parser": args.max_time or None,
        "seed": args.seed,
        "command": " ".join(
            [Path(sys.executable).name, "-m", "benchmarks.fuzz", *(argv or sys.argv[1:])]
        ),
        "git": git,
        "machine": machine(),
        "wall_s": round(time.time() - started, 1),
        "parsers": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\n{'parser':<12} {'inputs':>9} {'unexpected':>10} {'inputs/s':>9}")
    for name in names:
        r = results[name]
        print(f"{name:<12} {r['inputs']:>9} {r['unexpected']:>10} {r['inputs_per_s']:>9}")
        for key, found in r["distinct"].items():
            print(f"    {key}: {found['count']}x, e.g. {found['reproducer']}")
    print(f"summary: {out}")
    short = [n for n in names if results[n]["inputs"] < args.runs]
    if short:
        print(f"fewer than {args.runs} inputs for: {', '.join(short)}")
    bad = any(r["unexpected"] for r in results.values())
    return 1 if bad or short else 0


def _atheris_version() -> str:
    from importlib.metadata import version

    return version("atheris")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
