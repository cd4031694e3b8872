"""ONNX model runtime and its manifest.

``EmotionModel.load(DEFAULT_MODEL_DIR).predict(features)`` -> ``ModelOutput``.
"""

from emotion_engine.model.manifest import ModelManifest, load_manifest, save_manifest
from emotion_engine.model.normalise import CallNormaliser, CallNormParams
from emotion_engine.model.runtime import (
    DEFAULT_MODEL_DIR,
    MANIFEST_FILE,
    MODEL_FILE,
    EmotionModel,
    ModelOutput,
)

__all__ = [
    "DEFAULT_MODEL_DIR",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "CallNormParams",
    "CallNormaliser",
    "EmotionModel",
    "ModelManifest",
    "ModelOutput",
    "load_manifest",
    "save_manifest",
]
