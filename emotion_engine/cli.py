"""``emotion-engine`` command line: serve | analyze | demo | mic | report | rules | train |
evaluate | bench.

Every subcommand has ``--help``; logs go to stderr (``-v`` for more), events to
stdout or ``--out`` as JSON lines, one per event.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from emotion_engine import __version__
from emotion_engine.config import PARTIES
from emotion_engine.errors import EngineError

log = logging.getLogger("emotion_engine")

EXIT_OK = 0
EXIT_FAILED = 1  # nothing could be analysed
EXIT_PARTIAL = 2  # some files analysed, some failed
EXIT_USAGE = 64

DEMO_CALL = Path(__file__).parent / "data" / "demo_call.flac"


def _model_default() -> str:
    from emotion_engine.model.runtime import DEFAULT_MODEL_DIR

    return os.environ.get("EMOTION_ENGINE_MODEL", str(DEFAULT_MODEL_DIR))


def _parse_channels(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names or len(names) > 2:
        raise argparse.ArgumentTypeError(
            f"--channels needs one or two comma-separated party names, got {text!r}"
        )
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"--channels names must differ, got {text!r}")
    return names


def _add_model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help="model directory (emotion.onnx + emotion.manifest.json) or .onnx file "
        "(default: $EMOTION_ENGINE_MODEL or the shipped model in models/)",
    )


DETECTOR_HELP = (
    "spike-detector settings as KEY=VALUE[,KEY=VALUE] (fields of config.DetectorParams), "
    "e.g. on_threshold=0.75,on_margin=0,smoothing_windows=1; pick an operating point "
    "from models/tradeoff.png (default: the shipped defaults)"
)


def _add_analysis_args(parser: argparse.ArgumentParser) -> None:
    from emotion_engine.config import DEFAULT_VERIFIER, VERIFIER_MODES
    from emotion_engine.serve_cli import VERIFIER_HELP

    _add_model_arg(parser)
    parser.add_argument(
        "--verifier",
        choices=VERIFIER_MODES,
        default=DEFAULT_VERIFIER,
        help=f"{VERIFIER_HELP} (default {DEFAULT_VERIFIER})",
    )
    parser.add_argument("--detector", default="", metavar="KEY=VALUE,...", help=DETECTOR_HELP)
    parser.add_argument(
        "--channels",
        type=_parse_channels,
        default=PARTIES,
        metavar="NAMES",
        help="party of each channel, comma-separated (default: customer,agent; "
        "a mono file is the first name)",
    )
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help="write events as JSON lines to FILE"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="draw each party's emotion probabilities over time with spikes shaded "
        "(several files: one PNG each, named PNG-stem_CALL.png)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emotion-engine",
        description="Real-time call-emotion detection for contact centres: hears anger, "
        "sadness and happiness per party in call audio, raises emotion-spike events for "
        "routing and agent assist, and reports each call's peak and end emotion.",
        epilog="Run 'emotion-engine COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"emotion-engine {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    analyze = sub.add_parser(
        "analyze",
        help="analyse recorded calls (WAV/FLAC, mono or stereo, any common rate)",
        description="Stream recorded calls through the engine exactly as live audio. "
        "Prints one JSON event per line (call.start, emotion.update, emotion.spike, "
        "call.end) and a summary per call at the end. A stereo file holds one party per "
        "channel. Exit status: 0 all files analysed, 1 none, 2 some.",
    )
    analyze.add_argument("files", nargs="+", type=Path, metavar="CALL", help="audio files")
    _add_analysis_args(analyze)
    analyze.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    analyze.set_defaults(func=cmd_analyze)

    demo = sub.add_parser(
        "demo",
        help="play the bundled demo call through the engine with live cues",
        description="Stream the bundled stereo demo call (RAVDESS actors: a customer who "
        "grows angry, an agent) through the engine, printing cues as they happen.",
    )
    _add_analysis_args(demo)
    demo.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="playback speed: 1 = real time (default), 0 = as fast as possible",
    )
    demo.add_argument("--call", type=Path, default=DEMO_CALL, help=argparse.SUPPRESS)
    demo.set_defaults(func=cmd_demo)

    from emotion_engine import serve_cli

    serve = sub.add_parser(
        "serve",
        help="run the live engine: RTP, AudioSocket and media websockets in, events out",
        description="Run the engine as a server. One HTTP/websocket port carries /v1/events "
        "(subscribers), /v1/media/twilio, /v1/media/audiohook, /v1/media/l16 (ingest), "
        "/v1/control, /healthz and /metrics; RTP arrives on UDP and Asterisk AudioSocket on "
        "TCP. Every option is also a config-file key and an EMOTION_ENGINE_<OPTION> "
        "environment variable (command line > environment > file > defaults).",
    )
    serve_cli.add_serve_arguments(serve)
    serve.set_defaults(func=serve_cli.cmd_serve)

    mic = sub.add_parser(
        "mic",
        help="analyse the microphone live",
        description="Capture the microphone (PortAudio) and print emotion cues as you speak.",
    )
    serve_cli.add_mic_arguments(mic)
    mic.set_defaults(func=serve_cli.cmd_mic)

    from emotion_engine import bench, report, routing
    from emotion_engine.training import evaluate, train

    for name, module, help_text in (
        ("report", report, "per-agent end-of-call table (and PNG) from recorded events"),
        (
            "rules",
            routing,
            "check a routing-rules file, print the built-in rules, or replay events through rules",
        ),
        (
            "bench",
            bench,
            "latency, throughput, openSMILE comparison, end-to-end RTP and detection-delay "
            "benchmarks",
        ),
        (
            "train",
            train,
            "train the emotion model from labelled clips (../shared/data or your own)",
        ),
        (
            "evaluate",
            evaluate,
            "speaker-independent and leave-one-corpus-out evaluation vs eGeMAPS+SVM",
        ),
    ):
        # these modules carry their own options (add_arguments) and entry point (main)
        command = sub.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(func=module.main)
        if name == "train":
            _add_verifier_training(command)
    return parser


def _add_verifier_training(command: argparse.ArgumentParser) -> None:
    """``train --verifier``: the stage-2 head instead of the emotion model (same data
    options; training/verifier.py)."""
    from emotion_engine.training import verifier

    group = command.add_argument_group("stage 2 (with --verifier)")
    group.add_argument(
        "--verifier",
        action="store_true",
        help="train the Whisper-tiny verifier's head (models/verifier.npz) instead of the "
        "emotion model",
    )
    verifier.add_train_arguments(group)
    main = command.get_default("func")

    def dispatch(args: argparse.Namespace) -> int:
        return verifier.train_main(args) if args.verifier else int(main(args))

    command.set_defaults(func=dispatch)


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _load_engine(model_path: str | None, detector: str = "", verifier: str = "off") -> Any:
    from emotion_engine.config import engine_params_with_detector
    from emotion_engine.detect.spike import validate_detector_params
    from emotion_engine.engine.pipeline import Engine
    from emotion_engine.model.runtime import EmotionModel
    from emotion_engine.model.verifier import load_verifier

    params = engine_params_with_detector(detector)
    validate_detector_params(params.detector)
    model = EmotionModel.load(Path(model_path or _model_default()))
    return Engine(model=model, params=params, verifier=load_verifier(verifier))


@contextlib.contextmanager
def _event_sink(out: Path | None) -> Iterator[IO[str]]:
    if out is None:
        yield sys.stdout
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        yield fh


def _plot_path(plot: Path, call_id: str, many: bool) -> Path:
    return plot.with_name(f"{plot.stem}_{call_id}{plot.suffix or '.png'}") if many else plot


def _run_files(
    args: argparse.Namespace,
    files: Sequence[Path],
    *,
    show_cues: bool,
    realtime_speed: float | None,
    progress: bool,
) -> int:
    from emotion_engine.engine.offline import analyze_file
    from emotion_engine.publish.console import CueFormatter
    from emotion_engine.publish.events import EventSequencer, to_json

    engine = _load_engine(args.model, args.detector, args.verifier)
    cues = CueFormatter(verbose=args.verbose > 0)
    reports = []
    total_s = _total_duration(files) if progress else 0.0
    bar = _progress_bar(total_s) if progress else None
    with _event_sink(args.out) as sink:
        for path in files:
            collected: list[dict[str, Any]] = []

            def emit(event: dict[str, Any], _collected: list[dict[str, Any]] = collected) -> None:
                sink.write(to_json(event) + "\n")
                _collected.append(event)
                if show_cues:
                    line = cues.format(event)
                    if line:
                        print(line, file=sys.stderr, flush=True)

            report = analyze_file(
                path=path,
                engine=engine,
                channels=args.channels,
                emit=emit,
                sequencer=EventSequencer(),
                on_progress=bar.update if bar is not None else None,
                realtime_speed=realtime_speed,
            )
            sink.flush()
            reports.append(report)
            if report.error:
                print(f"error: {report.error}", file=sys.stderr)
            if args.plot and collected and report.ok:
                from emotion_engine.plots import plot_timeline

                target = _plot_path(args.plot, report.call_id, len(files) > 1)
                plot_timeline(
                    events=collected, out_path=target, title=f"{report.call_id} ({path.name})"
                )
                print(f"timeline written to {target}", file=sys.stderr)
    if bar is not None:
        bar.close()
    print(_final_summary(reports), file=sys.stderr)
    n_ok = sum(r.ok for r in reports)
    if n_ok == len(reports):
        return EXIT_OK
    return EXIT_FAILED if n_ok == 0 else EXIT_PARTIAL


def _total_duration(files: Sequence[Path]) -> float:
    import soundfile as sf

    total = 0.0
    for path in files:
        with contextlib.suppress(Exception):
            total += float(sf.info(str(path)).duration)
    return total


def _progress_bar(total_s: float) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=round(total_s, 1),
        unit="s audio",
        unit_scale=False,
        file=sys.stderr,
        disable=None,  # only on a terminal
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]",
    )


def _final_summary(reports: Sequence[Any]) -> str:
    from emotion_engine.publish.console import summary_block

    lines = ["", "=== summary ==="]
    for r in reports:
        if not r.ok:
            lines.append(f"FAILED: {r.error}")
            continue
        lines.append(f"{r.path} (call {r.call_id}, {r.duration_s:.1f} s, {r.sample_rate} Hz)")
        lines.extend(f"  note: {note}" for note in r.notes)
        for party in r.parties:
            lines.append(
                summary_block(call_id=r.call_id, party=party, summary=r.summaries.get(party, {}))
            )
    n_ok = sum(r.ok for r in reports)
    lines.append(f"{n_ok} of {len(reports)} file(s) analysed")
    return "\n".join(lines)


def cmd_analyze(args: argparse.Namespace) -> int:
    return _run_files(
        args,
        args.files,
        show_cues=args.verbose > 0,
        realtime_speed=None,
        progress=not args.no_progress,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    if not args.call.exists():
        print(f"error: demo call not found at {args.call}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"Demo: {args.call.name} through the engine "
        f"({'real time' if args.speed else 'fast'}; Ctrl-C stops with a summary)\n",
        file=sys.stderr,
    )
    if args.out is None:
        args.out = Path(os.devnull)  # the console shows cues; --out keeps the JSON
    try:
        return _run_files(
            args,
            [args.call],
            show_cues=True,
            realtime_speed=args.speed or None,
            progress=False,
        )
    except KeyboardInterrupt:
        return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return func(args)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # e.g. `| head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
