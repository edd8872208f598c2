"""The float32 weights (initializers) of an ONNX file, read from its protobuf with the standard library and numpy, so
neither `onnx` nor onnxruntime is needed to load the detector's networks into torch."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def _protobuf_fields(buffer: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of one serialised protobuf message."""

    def varint(position: int) -> tuple[int, int]:
        value, shift = 0, 0
        while True:
            byte = buffer[position]
            value |= (byte & 0x7F) << shift
            position, shift = position + 1, shift + 7
            if byte < 0x80:
                return value, position

    position = 0
    while position < len(buffer):
        key, position = varint(position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = varint(position)
        elif wire_type == 1:
            value, position = buffer[position : position + 8], position + 8
        elif wire_type == 2:
            length, position = varint(position)
            value, position = buffer[position : position + length], position + length
        elif wire_type == 5:
            value, position = buffer[position : position + 4], position + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        yield number, wire_type, value


def _decode_varints(buffer: bytes) -> list[int]:
    values, value, shift = [], 0, 0
    for byte in buffer:
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            values.append(value)
            value, shift = 0, 0
    return values


def read_onnx_initializers(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The float32 initializers (weights) of an ONNX model file, by name.

    Reads the protobuf directly (ModelProto.graph -> GraphProto.initializer -> TensorProto dims, float_data or
    raw_data), so neither `onnx` nor onnxruntime is needed.
    """
    model = Path(path).read_bytes()
    graph = next(value for number, _, value in _protobuf_fields(model) if number == 7)
    tensors = {}
    for number, _, tensor in _protobuf_fields(graph):
        if number != 5:
            continue
        dims, data_type, name, floats, raw = [], 1, "", [], b""
        for field, wire_type, value in _protobuf_fields(tensor):
            if field == 1:
                dims.extend(_decode_varints(value) if wire_type == 2 else [value])
            elif field == 2:
                data_type = value
            elif field == 4:
                floats.append(value)  # packed: many little-endian floats; unpacked: one
            elif field == 8:
                name = value.decode()
            elif field == 9:
                raw = value
        if data_type != 1:  # TensorProto.FLOAT; the MTCNN files hold nothing else
            raise ValueError(f"initializer {name!r} of {path} has data type {data_type}, expected float32")
        data = raw if raw else b"".join(floats)
        tensors[name] = np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(dims)
    return tensors


__all__ = ["read_onnx_initializers"]
