"""``emotion-engine serve`` and ``emotion-engine mic``: argument parsing and the asyncio main."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from emotion_engine.config import PARTIES, VERIFIER_MODES, ServeParams, load_serve_params

log = logging.getLogger(__name__)

DEMO_CALL = Path(__file__).parent / "data" / "demo_call.flac"


VERIFIER_HELP = (
    "stage 2 of the cascade: 'on' runs the Whisper-tiny verifier on the windows the "
    "functionals model flags as angry (and during a spike), 'off' keeps stage 1 alone"
)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServeParams()
    parser.add_argument(
        "--host",
        default=None,
        help=f"listen address (default {d.host}; anything but loopback needs --token)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"HTTP/websocket port, 0 = any free one (default {d.port})",
    )
    parser.add_argument(
        "--rtp-port",
        type=int,
        default=None,
        help=f"UDP port for RTP, 0 = any, -1 = off (default {d.rtp_port})",
    )
    parser.add_argument(
        "--audiosocket-port",
        type=int,
        default=None,
        help=f"TCP port for Asterisk AudioSocket, 0 = any, -1 = off (default {d.audiosocket_port})",
    )
    parser.add_argument(
        "--media-allow",
        default=None,
        metavar="NETS",
        help="comma-separated source addresses/networks allowed to send RTP (--rtp-port) "
        "and AudioSocket, e.g. 10.0.0.0/8,192.0.2.7; they cannot authenticate, so without "
        "this they listen on loopback only (others are dropped and counted in /metrics)",
    )
    parser.add_argument(
        "--media-host",
        default=None,
        metavar="ADDRESS",
        help="listen address of RTP and AudioSocket (default: --host with --media-allow, "
        "else loopback; a public one needs --media-allow)",
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help="model directory or .onnx (default: the shipped model)",
    )
    parser.add_argument(
        "--detector",
        default=None,
        metavar="KEY=VALUE,...",
        help="spike-detector settings (fields of config.DetectorParams), e.g. "
        "on_threshold=0.75,on_margin=0,smoothing_windows=1; pick an operating point from "
        "models/tradeoff.png (default: the shipped defaults)",
    )
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="TOML config file; keys as the long options with _ (e.g. rtp_port = 40000)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="bearer token required from subscribers and ingest (env EMOTION_ENGINE_TOKEN)",
    )
    parser.add_argument(
        "--control-token",
        default=None,
        help="bearer token for /v1/control, which names and ends RTP legs; the --token "
        "is not accepted there, and with --token set and no control token /v1/control "
        "is closed (env EMOTION_ENGINE_CONTROL_TOKEN)",
    )
    parser.add_argument(
        "--audiohook-api-key",
        default=None,
        help="X-API-KEY expected from Genesys AudioHook (default: the token)",
    )
    parser.add_argument(
        "--tls-cert",
        default=None,
        metavar="PEM",
        help="serve HTTPS/WSS with this certificate chain",
    )
    parser.add_argument("--tls-key", default=None, metavar="PEM", help="private key for --tls-cert")
    parser.add_argument(
        "--rtp-leg-timeout-s",
        type=float,
        default=None,
        help=f"end an RTP leg after this much network silence (default {d.rtp_leg_timeout_s})",
    )
    parser.add_argument(
        "--verifier",
        choices=VERIFIER_MODES,
        default=None,
        help=VERIFIER_HELP + f" (default {d.verifier})",
    )
    parser.add_argument(
        "--analyze-agent",
        action="store_true",
        default=None,
        help="also analyse the agent's voice (off by default: emotion recognition of "
        "employees is prohibited or restricted in some jurisdictions, e.g. the EU AI Act)",
    )
    parser.add_argument(
        "--routing-rules",
        default=None,
        metavar="FILE",
        help="routing rules (TOML) that turn moments into route.hint events; 'off' for none "
        "(default: the built-in rules, see 'emotion-engine rules --default')",
    )
    parser.add_argument(
        "--route-webhook",
        default=None,
        metavar="URL",
        help="also POST every route.hint to this URL (retries, bounded queue)",
    )
    # --- SIP (issue 7) ---
    sip = parser.add_argument_group(
        "SIP",
        "Answer SIP calls and SIPREC sessions (RFC 7866): a PBX, softphone or SBC calls "
        "the engine and sends G.711 RTP. See docs/sip.md for Asterisk, FreeSWITCH, "
        "Kamailio/rtpengine and SBC set-ups.",
    )
    sip.add_argument(
        "--sip",
        default=None,
        metavar="HOST:PORT",
        help="listen for SIP on UDP and TCP (port 0 = any; default off). A non-loopback "
        "HOST needs --sip-allow or --sip-auth-user",
    )
    sip.add_argument(
        "--sip-rtp-ports",
        default=None,
        metavar="LOW-HIGH",
        help=f"RTP ports for answered streams, even ones used (default {d.sip_rtp_ports}; "
        "0 = any free port)",
    )
    sip.add_argument(
        "--sip-party",
        default=None,
        choices=PARTIES,
        help=f"party of a plain call's audio (default {d.sip_party}; calling "
        "sip:agent@... or sip:customer@... picks it per call)",
    )
    sip.add_argument(
        "--sip-siprec-order",
        default=None,
        metavar="PARTY,PARTY",
        help="parties of SIPREC participants in the metadata's order (or of the m-lines "
        f"without metadata; default {d.sip_siprec_order})",
    )
    sip.add_argument(
        "--sip-auth-user",
        default=None,
        help="digest user new calls must authenticate as (password: --sip-auth-password "
        "or env EMOTION_ENGINE_SIP_AUTH_PASSWORD)",
    )
    sip.add_argument("--sip-auth-password", default=None, help="digest password")
    sip.add_argument(
        "--sip-allow",
        default=None,
        metavar="NETS",
        help="comma-separated source addresses/networks allowed to send SIP and RTP, "
        "e.g. 10.0.0.0/8,192.0.2.7 (default: any)",
    )
    sip.add_argument(
        "--sip-advertise",
        default=None,
        metavar="ADDRESS",
        help="address put in Contact and SDP instead of the local one (NAT)",
    )
    sip.add_argument(
        "--sip-answer-delay-s",
        type=float,
        default=None,
        metavar="S",
        help="ring (180) this long before answering (default 0: answer at once)",
    )
    # --- end SIP ---
    parser.add_argument(
        "--demo",
        action="store_true",
        help="stream the bundled demo call into the server over the L16 websocket, in real time, and print cues",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no console cues (events still go to subscribers)"
    )


def params_from_args(args: argparse.Namespace) -> ServeParams:
    overrides = {
        "host": args.host,
        "port": args.port,
        "rtp_port": args.rtp_port,
        "audiosocket_port": args.audiosocket_port,
        "media_allow": args.media_allow,
        "media_host": args.media_host,
        "model": args.model,
        "detector": args.detector,
        "verifier": args.verifier,
        "token": args.token,
        "control_token": args.control_token,
        "audiohook_api_key": args.audiohook_api_key,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "rtp_leg_timeout_s": args.rtp_leg_timeout_s,
        "analyze_agent": args.analyze_agent,
        "routing_rules": args.routing_rules,
        "route_webhook_url": args.route_webhook,
        # --- SIP (issue 7) ---
        "sip": args.sip,
        "sip_rtp_ports": args.sip_rtp_ports,
        "sip_party": args.sip_party,
        "sip_siprec_order": args.sip_siprec_order,
        "sip_auth_user": args.sip_auth_user,
        "sip_auth_password": args.sip_auth_password,
        "sip_allow": args.sip_allow,
        "sip_advertise": args.sip_advertise,
        "sip_answer_delay_s": args.sip_answer_delay_s,
        # --- end SIP ---
    }
    return load_serve_params(config_file=args.config, overrides=overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    params = params_from_args(args)
    return asyncio.run(serve_main(params, demo=args.demo, quiet=args.quiet))


async def _stream_demo(server: Any, params: ServeParams) -> None:
    from emotion_engine.audio.io import read_audio
    from emotion_engine.audio.pcm import float32_to_int16
    from emotion_engine.clients import stream_l16

    samples, rate = read_audio(DEMO_CALL)
    url = server.addresses.urls()["l16"]
    print(
        f"demo: streaming {DEMO_CALL.name} ({samples.shape[1] / rate:.0f} s, stereo) to {url} in real time",
        flush=True,
    )
    await stream_l16(
        url,
        pcm=float32_to_int16(samples),
        sample_rate=rate,
        call_id="demo-call",
        token=params.token or None,
    )
    print("demo: call finished; the server keeps running (Ctrl-C to stop)", flush=True)


async def serve_main(params: ServeParams, *, demo: bool = False, quiet: bool = False) -> int:
    from emotion_engine.config import engine_params_with_detector
    from emotion_engine.detect.spike import validate_detector_params
    from emotion_engine.engine.gc_tuning import tune_gc_for_serving
    from emotion_engine.engine.pipeline import Engine
    from emotion_engine.engine.service import EngineService
    from emotion_engine.features import compile_kernels
    from emotion_engine.model.runtime import DEFAULT_MODEL_DIR, EmotionModel
    from emotion_engine.model.verifier import load_verifier
    from emotion_engine.publish.console import CueFormatter
    from emotion_engine.publish.hub import EventHub
    from emotion_engine.server import EngineServer

    engine_params = engine_params_with_detector(params.detector)
    validate_detector_params(engine_params.detector)
    model = EmotionModel.load(Path(params.model) if params.model else DEFAULT_MODEL_DIR)
    verifier = load_verifier(params.verifier)
    # Feature tables (librosa's mel filterbank) and the compiled kernels load here, not
    # on the first call's first tick, which would otherwise stall every leg by 1-2 s.
    compile_kernels()
    service = EngineService(
        engine=Engine(model=model, params=engine_params, verifier=verifier),
        hub=EventHub(replay_events=params.replay_events, max_queue=params.subscriber_queue),
        tick_s=params.tick_s,
    )
    if not quiet:
        cues = CueFormatter()

        def show(event: dict[str, Any]) -> None:
            line = cues.format(event)
            if line:
                print(line, flush=True)

        service.add_listener(show)
    server = EngineServer(params=params, service=service)
    addresses = await server.start()
    tune_gc_for_serving()  # everything long-lived exists now: see gc_tuning
    print(
        f"emotion-engine serving with model {model.onnx_path.name} ({', '.join(model.labels)})"
        + (", Whisper-tiny verifier on" if verifier is not None else ""),
        flush=True,
    )
    for name, url in addresses.urls().items():
        print(f"  {name:<12} {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    demo_task = loop.create_task(_stream_demo(server, params)) if demo else None
    await stop.wait()
    print("shutting down: ending open calls", flush=True)
    if demo_task is not None and not demo_task.done():
        demo_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await demo_task
    await server.stop()
    return 0


def add_mic_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default=None, help="input device index or name (default: the system default)"
    )
    parser.add_argument(
        "--list-devices", action="store_true", help="list audio input devices and exit"
    )
    parser.add_argument(
        "--party",
        default="customer",
        choices=("customer", "agent"),
        help="party the microphone speaks for",
    )
    parser.add_argument(
        "--sample-rate", type=int, default=16000, help="capture rate in Hz (default 16000)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: until Ctrl-C)",
    )
    parser.add_argument("--model", default=None, metavar="PATH", help="model directory or .onnx")
    parser.add_argument(
        "--out", type=Path, default=None, help="also write events as JSON lines to FILE"
    )


def cmd_mic(args: argparse.Namespace) -> int:
    from emotion_engine.ingest.mic import MicError, list_input_devices, run_mic

    try:
        if args.list_devices:
            devices = list_input_devices()
            if not devices:
                print("no audio input devices found", file=sys.stderr)
                return 1
            for index, name, channels, rate in devices:
                print(f"{index:>3}  {name}  ({channels} ch, default {rate:.0f} Hz)")
            return 0
        return asyncio.run(run_mic(args))
    except MicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
