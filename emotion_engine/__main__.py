"""``python -m emotion_engine`` is the ``emotion-engine`` command."""

from emotion_engine.cli import main

raise SystemExit(main())
