"""Frozen parameter objects with named module-level defaults.

Everything the data path needs to agree on (model rate, frame and window geometry)
lives here, so the feature extractor, the training pipeline and the live engine
cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from emotion_engine.errors import ConfigError

MODEL_SAMPLE_RATE_HZ = 8000
"""Every stream is resampled to this rate before framing (telephone band)."""

FRAME_LENGTH = 200
"""25 ms at 8 kHz."""

HOP_LENGTH = 80
"""10 ms at 8 kHz: 100 frames per second."""

FRAMES_PER_SECOND = MODEL_SAMPLE_RATE_HZ // HOP_LENGTH

SUPPORTED_INPUT_RATES_HZ: tuple[int, ...] = (
    8000,
    11025,
    12000,
    16000,
    22050,
    24000,
    32000,
    44100,
    48000,
    64000,
    96000,
)
"""Rates the streaming resampler accepts (every common telephony and studio rate)."""

PARTIES: tuple[str, ...] = ("customer", "agent")

# Identifiers and numbers from the wire: every ingest path checks them against these
# (emotion_engine.ingest.base: call_id_problem, bounded_info, wire_int), so a peer
# cannot make every event, log line and cache entry carry a megabyte.
MAX_CALL_ID_CHARS = 128
"""Call ids (and session ids): 1-128 printable characters, no control characters."""

MAX_META_TEXT_CHARS = 256
"""One metadata string of a leg (display names, AudioHook participant fields, Twilio
customParameters, L16 metadata): longer ones are cut to this, with a violation."""

MAX_META_BYTES = 8192
"""A leg's metadata (``call.start`` info) as JSON; items past it are dropped."""

MAX_META_DEPTH = 4
"""Nesting of metadata objects and lists kept in ``call.start`` info."""

MAX_STREAM_S = 7 * 86_400
"""A media timestamp or stream position beyond a week is refused as corrupt."""

VERIFIER_MODES: tuple[str, ...] = ("off", "on")
DEFAULT_VERIFIER = "off"
"""Stage 2 of the cascade (the Whisper-tiny verifier, model/verifier.py): ``on`` verifies
the windows stage 1 flags as angry. Off by default: it is more accurate on unseen corpora
(+0.03 window AUC; on the stitched calls 3 false spikes -> 0, recall 9/16 -> 10/16) but
costs 6-9x the CPU, far outside the throughput budget (models/README.md, "Stage 2:
Whisper-tiny verifier")."""


@dataclass(frozen=True, slots=True)
class FeatureParams:
    """Low-level descriptor settings (per 25 ms frame at 8 kHz)."""

    sample_rate_hz: int = MODEL_SAMPLE_RATE_HZ
    frame_length: int = FRAME_LENGTH
    hop_length: int = HOP_LENGTH
    # 70 Hz: a 25 ms frame then holds ~1.75 periods; at 60 Hz octave-down errors vs
    # librosa.pyin rose from 2.6 % to 3.5 % of voiced frames on RAVDESS/TESS
    f0_min_hz: float = 70.0
    f0_max_hz: float = 400.0
    n_mfcc: int = 13
    n_fft: int = 256  # one Hann rfft per frame shared by every spectral descriptor
    n_mels: int = 26  # mel bands 0..4 kHz for MFCC and loudness
    yin_threshold: float = 0.25  # YIN: first CMND trough under this is the period
    voicing_threshold: float = 0.7  # voiced needs 1 - CMND at the period >= this ...
    energy_floor_db: float = -60.0  # ... and frame RMS >= this (dB re full scale)


@dataclass(frozen=True, slots=True)
class WindowParams:
    """Sliding window over LLD frames from which functionals are computed."""

    window_frames: int = 200  # 2 s
    hop_frames: int = 50  # 0.5 s
    min_voiced_frames: int = 20  # 0.2 s of voiced speech, else the window is "no speech"


@dataclass(frozen=True, slots=True)
class DetectorParams:
    """Spike detector: per-call baseline, smoothing, hysteresis, gating."""

    spike_emotions: tuple[str, ...] = ("angry",)
    # Start on one window, end on the spike's last three: the detector sweep
    # (training/operating_point.py, models/README.md) found starting on one window
    # earlier and surer on both call sets, and the three-window end keeps a spike from
    # being cut short by a single calmer window (which also made cues flicker).
    smoothing_windows: int = 1  # moving average over this many speech windows
    # Baseline: P(emotion) of the caller's calm speech. It starts at the population's
    # (prior_baseline: the shipped model's mean P(angry) over windows of real
    # neutral/calm speech, 0.095 on 23 speakers of four corpora) and moves to the caller's own only from windows
    # judged calm (raw score <= calm_max_score, outside spikes), so a caller angry from
    # the first word, or for a long stretch, never makes anger their "normal".
    prior_baseline: float = 0.10
    prior_weight_s: float = 10.0  # the prior counts as this many seconds of calm speech
    calm_max_score: float = 0.5  # windows scoring above this do not move the baseline
    baseline_s: float = 10.0  # seconds of speech before the engine "knows the voice"
    baseline_halflife_s: float = 60.0  # the running mean's half-life, in calm speech
    on_threshold: float = 0.70  # smoothed score (absolute) needed to start a spike
    on_margin: float = 0.30  # ... and this much above the call's baseline
    off_threshold: float = 0.45  # spike ends when the smoothed score falls below this
    min_duration_s: float = 0.5  # shorter spikes are not reported
    cooldown_s: float = 5.0  # quiet time after a spike ends before the next may start
    end_state_s: float = 12.0  # last seconds of speech that define the call's end state
    hop_s: float = 0.5  # seconds each score stands for: the window hop (WindowParams.hop_frames)
    early_on_threshold: float = 0.85  # start threshold until baseline_s of speech is heard
    # ... and an early spike is confirmed only once its mean raw score has held the early
    # threshold this long (a calm caller's first, 1 s window often scores high)
    early_min_duration_s: float = 1.0
    silence_end_s: float = 3.0  # a spike (or candidate) ends after this long without speech
    # One episode, one spike: a spike's end is reported only once this many seconds have
    # passed without the start rule being met again; a return within it continues the
    # same spike (t of the end stays where the end rule was first met).
    merge_gap_s: float = 3.0
    # Speech flagged low confidence (synthetic speech, music, tones: model/confidence.py)
    # moves nothing, and no spike starts while more than low_confidence_max_flagged
    # windows of the last low_confidence_window_s were flagged: the windows of artificial
    # audio the check misses start nothing, and a real caller's rare flag holds nothing.
    low_confidence_window_s: float = 5.0
    low_confidence_max_flagged: int = 1
    # A confirmed spike ends on the mean of its last this-many speech windows (counted from
    # the onset), so a start on a short average does not make a spike that one calmer
    # window ends; 0: the same windows as the start (smoothing_windows).
    end_smoothing_windows: int = 3


@dataclass(frozen=True, slots=True)
class ConfidenceParams:
    """Low-confidence check of speech windows (``model/confidence.py``): windows that
    are not natural speech like the training speech raise no spike."""

    enabled: bool = True
    # the distance bar is the fitted threshold_d2 (models/confidence.json) times this
    distance_scale: float = 1.0
    # the synthetic-speech bar is the fitted threshold plus this (in logit units)
    synthetic_offset: float = 0.0
    # a tone: voiced nearly throughout, pitch all but still (natural speech moves its
    # pitch every syllable; see models/confidence.json for the real-speech rates)
    tone_min_voiced_ratio: float = 0.9
    tone_max_f0_std_semitones: float = 0.25
    tone_max_f0_delta_semitones: float = 0.05


@dataclass(frozen=True, slots=True)
class EngineParams:
    """Everything a call pipeline needs."""

    features: FeatureParams = field(default_factory=FeatureParams)
    window: WindowParams = field(default_factory=WindowParams)
    detector: DetectorParams = field(default_factory=DetectorParams)
    confidence: ConfidenceParams = field(default_factory=ConfidenceParams)


DEFAULT_FEATURE_PARAMS = FeatureParams()
DEFAULT_WINDOW_PARAMS = WindowParams()
DEFAULT_DETECTOR_PARAMS = DetectorParams()
DEFAULT_CONFIDENCE_PARAMS = ConfidenceParams()
DEFAULT_ENGINE_PARAMS = EngineParams()


def engine_params_with_detector(overrides: str | Sequence[str]) -> EngineParams:
    """Default engine parameters with spike-detector fields replaced.

    ``overrides``: ``KEY=VALUE`` items naming :class:`DetectorParams` fields, as a list or
    one comma-separated string (``"on_threshold=0.75,smoothing_windows=1"``). A tuple
    field takes several comma-separated values (``"spike_emotions=angry,sad"``): an item
    without ``=`` continues the previous key. Raises ConfigError naming a bad item; the
    combination is checked by the detector (``validate_detector_params``)."""
    items = (
        [i.strip() for i in overrides.split(",") if i.strip()]
        if isinstance(overrides, str)
        else [i.strip() for part in overrides for i in part.split(",") if i.strip()]
    )
    base = DetectorParams()
    raw: dict[str, list[str]] = {}
    last: str | None = None
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            if last is None or not isinstance(getattr(base, last), tuple):
                raise ConfigError(
                    f"detector setting {item!r}: expected KEY=VALUE with a DetectorParams field"
                )
            raw[last].append(key)
            continue
        if key not in {f.name for f in fields(DetectorParams)}:
            known = ", ".join(f.name for f in fields(DetectorParams))
            raise ConfigError(f"detector setting {item!r}: unknown key {key!r} (known: {known})")
        raw[key] = [value.strip()]
        last = key
    changes: dict[str, Any] = {}
    for key, values in raw.items():
        current = getattr(base, key)
        try:
            changes[key] = tuple(values) if isinstance(current, tuple) else type(current)(values[0])
        except ValueError as exc:
            raise ConfigError(
                f"detector setting {key}={values[0]!r} is not a valid {type(current).__name__}"
            ) from exc
    return EngineParams(detector=replace(base, **changes))


@dataclass(frozen=True, slots=True)
class ServeParams:
    """``emotion-engine serve``: every field is also a config-file key (TOML, same
    name) and an environment variable ``EMOTION_ENGINE_<NAME>`` (upper case).
    Precedence: command line > environment > config file > these defaults."""

    host: str = "127.0.0.1"
    port: int = 8765  # HTTP + websockets: /v1/events, /v1/media/..., /healthz, /metrics
    rtp_port: int = 40000  # UDP; -1 disables
    audiosocket_port: int = 9092  # TCP; -1 disables
    model: str = ""  # empty: the shipped model
    token: str = ""  # bearer token for subscribers and ingest; empty: loopback only
    # bearer token for /v1/control (naming and ending RTP legs); the token above is not
    # accepted there. Empty: /v1/control is closed when a token is set (open without one)
    control_token: str = ""
    audiohook_api_key: str = ""  # X-API-KEY expected from Genesys AudioHook; empty: token
    tls_cert: str = ""
    tls_key: str = ""
    rtp_leg_timeout_s: float = 5.0
    rtp_party: str = "customer"
    tick_s: float = 0.1  # how often the engine batches queued audio
    replay_events: int = 10_000
    subscriber_queue: int = 2_000
    # --- subscribers and keepalive ---
    # Websocket pings every this many seconds (0: none). Media and control connections
    # that leave a ping unanswered for ws_ping_timeout_s are closed; event subscribers
    # are not (a slow one answers late, behind the events it is still reading) ...
    ws_ping_interval_s: float = 20.0
    ws_ping_timeout_s: float = 20.0
    # ... they are closed only when they took no event and answered no ping for this
    # long (0: never)
    subscriber_stall_s: float = 120.0
    # --- end subscribers and keepalive ---
    # --- privacy and routing (issue 6) ---
    # Emotion recognition at the workplace is restricted (EU AI Act, art. 5(1)(f)), so
    # the agent's audio is dropped unanalysed unless this is switched on explicitly.
    analyze_agent: bool = False
    routing_rules: str = ""  # TOML rules file; empty: the built-in rules; "off": none
    route_webhook_url: str = ""  # POST every route.hint here (JSON); empty: no webhook
    route_webhook_token: str = ""  # sent as "Authorization: Bearer ..." when set
    route_webhook_queue: int = 1_000  # hints awaiting delivery; when full, the oldest is dropped
    route_webhook_retries: int = 3  # extra attempts after a failed POST (backoff 0.5 s x 2^n)
    # --- end privacy and routing ---
    # --- SIP user agent server (issue 7; emotion_engine/sip_server.py) ---
    sip: str = ""  # "HOST:PORT" for SIP over UDP and TCP (port 0: any); empty: off
    sip_rtp_ports: str = "40100-40999"  # RTP ports for answered streams, LOW-HIGH; "0": any
    sip_party: str = "customer"  # party of a plain call (Request-URI user agent@ overrides)
    sip_siprec_order: str = "customer,agent"  # parties of SIPREC participants, in metadata order
    sip_auth_user: str = ""  # digest credentials new calls must present; empty: none
    sip_auth_password: str = ""
    sip_allow: str = ""  # comma-separated source addresses/networks for SIP and RTP; empty: any
    sip_advertise: str = ""  # address for Contact and SDP (behind NAT); empty: the local one
    sip_answer_delay_s: float = 0.0  # ring (180) this long before answering
    # --- end SIP ---
    # --- media listeners that cannot authenticate: the RTP port and AudioSocket ---
    # Anyone who reaches them can start calls, so they listen on loopback unless the
    # sources allowed to send are listed; the rest is dropped and counted (/metrics).
    media_allow: str = ""  # comma-separated source addresses/networks; empty: loopback only
    media_host: str = ""  # their listen address; empty: host with media_allow, else loopback
    rtp_new_legs_per_s: float = 20.0  # new RTP legs (SSRCs) one source host may start a second
    rtp_new_legs_burst: int = 1000  # ... and at once (a gateway may start a server's worth)
    rtp_probation_s: float = 0.5  # audio in step a new RTP leg must send before its call.start
    audiosocket_idle_timeout_s: float = 10.0  # close an AudioSocket connection silent this long
    audiosocket_max_per_source: int = 500  # open AudioSocket connections per source host
    fd_reserve: int = 128  # descriptors AudioSocket leaves free for HTTP/websockets and files
    # --- end media listeners ---
    max_message_bytes: int = 1 << 20
    # permessage-deflate on websockets when a client asks for it (most do): smaller
    # frames, but ~4 % of the server's CPU at 500 legs; off for LAN subscribers
    ws_compression: bool = True
    # spike-detector overrides, "KEY=VALUE,KEY=VALUE" (DetectorParams fields); empty: the
    # shipped defaults. models/tradeoff.png shows what each setting costs in false alarms.
    detector: str = ""
    verifier: str = DEFAULT_VERIFIER  # "on": stage 2 verifies stage 1's angry windows


ENV_PREFIX = "EMOTION_ENGINE_"


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


def load_serve_params(
    *,
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServeParams:
    """Defaults < config file (TOML, keys as in :class:`ServeParams`, optionally under
    ``[serve]``) < environment (``EMOTION_ENGINE_PORT=0`` ...) < ``overrides`` (the
    command line; ``None`` values are ignored). Unknown keys and bad values raise
    ConfigError naming them."""
    import tomllib

    known = {f.name: f for f in fields(ServeParams)}
    values: dict[str, Any] = {}
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {config_file}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
        section = data.get("serve", data)
        unknown = sorted(k for k in section if k not in known and not isinstance(section[k], dict))
        if unknown:
            raise ConfigError(
                f"unknown key(s) in {config_file}: {', '.join(unknown)}; known: {', '.join(known)}"
            )
        values.update({k: v for k, v in section.items() if k in known})
    for name in known:
        raw = (env if env is not None else os.environ).get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    for name, value in (overrides or {}).items():
        if value is not None and name in known:
            values[name] = value
    converted: dict[str, Any] = {}
    for name, value in values.items():
        kind = type(getattr(ServeParams(), name))
        try:
            if kind is bool and isinstance(value, str):
                converted[name] = _parse_bool(value)  # bool("false") would be True
                continue
            converted[name] = kind(value) if not isinstance(value, kind) else value
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: {value!r} is not a valid {kind.__name__}") from exc
    return ServeParams(**converted)
