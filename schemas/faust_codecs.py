"""Faust codecs over the Avro single-object encoding, one per message type.

`register()` makes them available by name (``value_serializer="alto.quantum"``), so a
user's own Faust agents can read and write our topics with typed values. Our runtime's
agents read raw bytes and decode themselves, so that an undecodable message becomes a
dead letter instead of a Faust decode error.
"""

from __future__ import annotations

from typing import Any

from faust.serializers import codecs

from alto.schemas.messages import MESSAGE_TYPES


class AvroCodec(codecs.Codec):
    """Encodes one message type (a dataclass from `alto.schemas.messages`) as single-object Avro."""

    def __init__(self, message_type: Any, **kwargs: Any) -> None:
        self.message_type = message_type
        super().__init__(message_type=message_type, **kwargs)

    def _dumps(self, obj: Any) -> bytes:
        if not isinstance(obj, self.message_type):
            raise TypeError(f"expected {self.message_type.__name__}, got {type(obj).__name__}")
        return bytes(obj.encode())

    def _loads(self, data: bytes) -> Any:
        return self.message_type.decode(data)


def codec_name(message_type: Any) -> str:
    return f"alto.{message_type.schema_name}"


def register() -> dict[str, AvroCodec]:
    """Register a codec per message type with Faust; returns them by name."""
    made = {}
    for message_type in MESSAGE_TYPES:
        name = codec_name(message_type)
        made[name] = AvroCodec(message_type)
        codecs.register(name, made[name])
    return made
