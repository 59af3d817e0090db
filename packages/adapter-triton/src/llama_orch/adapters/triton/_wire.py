"""msgspec structs for Triton's KServe v2 HTTP API and the generate extension.

Answers are decoded tolerantly (unknown fields ignored) so that a newer
Triton that adds fields does not break the adapter (STYLE rule 6).
"""

from __future__ import annotations

import msgspec

__all__ = [
    "ErrorBody",
    "GenerateEvent",
    "ModelMetadata",
    "ServerMetadata",
    "TensorMetadata",
    "encoder",
    "error_decoder",
    "event_decoder",
    "model_metadata_decoder",
    "server_metadata_decoder",
]


class ErrorBody(msgspec.Struct):
    error: str = ""


class GenerateEvent(msgspec.Struct):
    """One ``generate_stream`` event: every output tensor of one response
    (one-element tensors unwrapped to scalars), or ``error``."""

    text_output: str | None = None
    # Optional outputs this adapter understands (see README "model contract").
    num_output_tokens: int | None = None
    num_input_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    model_name: str = ""
    model_version: str = ""


class ServerMetadata(msgspec.Struct):
    name: str = ""
    version: str = ""


class TensorMetadata(msgspec.Struct):
    name: str
    datatype: str = ""


class ModelMetadata(msgspec.Struct):
    name: str = ""
    versions: list[str] = []
    platform: str = ""
    inputs: list[TensorMetadata] = []
    outputs: list[TensorMetadata] = []


encoder = msgspec.json.Encoder()
error_decoder = msgspec.json.Decoder(ErrorBody)
event_decoder = msgspec.json.Decoder(GenerateEvent)
server_metadata_decoder = msgspec.json.Decoder(ServerMetadata)
model_metadata_decoder = msgspec.json.Decoder(ModelMetadata)
