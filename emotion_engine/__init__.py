"""emotion-engine: real-time call-emotion detection.

Data path (each arrow a plain function or a small stateful object, I/O only at the edges)::

    AudioChunk -> codec + resample (8 kHz) -> framer (25 ms / 10 ms) -> LLDs per frame
      -> window functionals (2 s / 0.5 s) -> ONNX classifier (batched)
      -> per-party spike detector -> events -> subscribers; call.end summary at hang-up
"""

__version__ = "0.1.0"
