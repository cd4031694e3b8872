"""One root exception for everything the engine raises on purpose.

Tree::

    EngineError
    ├── ConfigError            bad parameters, config file or rules
    ├── AudioError             audio that cannot be used
    │   ├── AudioFileError     missing, empty, truncated, corrupt or unsupported file
    │   └── UnsupportedRateError  a sample rate the resampler does not handle
    ├── ModelError             the ONNX model or its manifest cannot be used
    │   └── ManifestMismatchError  manifest and model disagree (sha256, shapes, labels)
    ├── DatasetError           training data missing or malformed
    ├── EventError             a score stream or event that breaks the event contract
    └── ProtocolError          a malformed packet or message from an ingest peer

Each message names the bad value, so a one-line log says what happened.
"""

from __future__ import annotations


class EngineError(Exception):
    """Root of every error the engine raises deliberately."""


class ConfigError(EngineError, ValueError):
    """Invalid parameters, config file or rules."""


class AudioError(EngineError, ValueError):
    """Audio that cannot be analysed."""


class AudioFileError(AudioError):
    """A file that is missing, empty, truncated, corrupt or in an unsupported layout."""


class UnsupportedRateError(AudioError):
    """A sample rate the resampler does not handle."""


class ModelError(EngineError):
    """The ONNX model or its manifest cannot be loaded or used."""


class ManifestMismatchError(ModelError):
    """The manifest does not describe the model beside it."""


class DatasetError(EngineError):
    """Training or evaluation data is missing or malformed."""


class EventError(EngineError, ValueError):
    """Scores out of time order, for another leg or missing a label; a malformed event."""


class ProtocolError(EngineError, ValueError):
    """A malformed packet or message from an ingest peer."""


class ServeError(EngineError):
    """The server cannot start: a port is taken, a TLS file is unusable."""
