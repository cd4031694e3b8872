"""Training pipeline: dataset loading, telephony augmentation, featurization, train/export,
evaluation against an eGeMAPS baseline.

Entry points (the CLI mounts them as ``train`` and ``evaluate``):
``emotion_engine.training.train.run_train`` and ``emotion_engine.training.evaluate.run_evaluate``.
Submodules are imported on use so ``import emotion_engine`` stays light.
"""
