"""Publishing: the event schema, JSON encoding and (elsewhere) fan-out to subscribers."""

from emotion_engine.publish.events import (
    SCHEMA_VERSION,
    Event,
    EventSequencer,
    load_schema,
    schema_path,
    to_json,
)

__all__ = ["SCHEMA_VERSION", "Event", "EventSequencer", "load_schema", "schema_path", "to_json"]
