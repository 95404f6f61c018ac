"""Just enough of the protobuf wire format to list an ONNX file's external-data locations, read
its initializers, and rewrite a model so that chosen initializers come from another file.

The runtime must refuse an artifact whose ONNX files point at data outside the artifact
folder (path traversal) before a backend opens them, and replaces weights at run time (LoRA,
textual inversion), without depending on the `onnx` package. Field numbers are those of
onnx/onnx.proto3.
"""
from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ArtifactError

# message -> {field number: message type} for the fields that can lead to a TensorProto
_MESSAGES = {
    "model": {7: "graph", 25: "function"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse_tensor"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse_tensor", 23: "sparse_tensor"},
    "sparse_tensor": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}
_TENSOR_EXTERNAL_DATA = 13


class ProtobufError(ArtifactError, ValueError):
    """An ONNX file that is not the protobuf it should be (truncated or corrupt)."""


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint too long")


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field in buf[start:end]."""
    for field, wire, value in _any_fields(buf, start, end):
        if wire == 2:
            yield field, *_span(value)


def _entry(buf, start: int, end: int) -> tuple[str, str]:
    key = value = ""
    for field, s, e in _fields(buf, start, end):
        if field == 1:
            key = bytes(buf[s:e]).decode("utf-8")
        elif field == 2:
            value = bytes(buf[s:e]).decode("utf-8")
    return key, value


def external_data_locations(path: Path) -> set[str]:
    """The `location` of every external-data tensor in the ONNX model at `path`."""
    locations: set[str] = set()
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        if size == 0:
            raise ProtobufError("empty file")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            stack = [("model", 0, size)]
            while stack:
                kind, start, end = stack.pop()
                children = _MESSAGES[kind]
                for field, s, e in _fields(buf, start, end):
                    child = children.get(field)
                    if child == "entry":
                        key, value = _entry(buf, s, e)
                        if key == "location":
                            locations.add(value)
                    elif child is not None:
                        stack.append((child, s, e))
    return locations


# TensorProto fields (onnx.proto3) and the element types read here
_DIMS, _DATA_TYPE, _FLOAT_DATA, _NAME, _RAW_DATA, _DATA_LOCATION = 1, 2, 4, 8, 9, 14
_DTYPES = {1: "<f4", 10: "<f2", 11: "<f8"}


def _any_fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int | tuple[int, int]]]:
    """(field number, wire type, value) of every field: an int for varints, (start, end) else."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            yield field, wire, (pos, pos + size)
            pos += size
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ProtobufError("field runs past its message")
            yield field, wire, (pos, pos + length)
            pos += length
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
    if pos != end:
        raise ProtobufError("message ends mid-field")


def _number(value: int | tuple[int, int]) -> int:
    """A varint field's value; another wire type there (onnx.proto3 has a varint) is a malformed file."""
    if not isinstance(value, int):
        raise ProtobufError("a length-delimited or fixed-size field where a varint belongs")
    return value


def _span(value: int | tuple[int, int]) -> tuple[int, int]:
    """A length-delimited (or fixed-size) field's (start, end); a varint there is a malformed file."""
    if isinstance(value, int):
        raise ProtobufError("a varint field where a length-delimited one belongs")
    return value


@dataclass(frozen=True)
class Initializer:
    """A graph initializer as stored: where its data is, not the data."""

    name: str
    dims: tuple[int, ...]
    element_type: int  # onnx TensorProto.DataType
    raw: tuple[int, int] | None  # (start, end) of its data in the .onnx file
    location: str | None  # its external data file, relative to the .onnx file
    offset: int

    @property
    def dtype(self) -> str | None:
        """The numpy dtype of a float initializer; None for other element types."""
        return _DTYPES.get(self.element_type)


def initializers(path: Path) -> dict[str, Initializer]:
    """Every initializer of the main graph of the ONNX model at `path`, by name."""
    found = {}
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            graphs = [(s, e) for field, s, e in _fields(buf, 0, size) if field == 7]
            for graph_start, graph_end in graphs:
                for field, s, e in _fields(buf, graph_start, graph_end):
                    if field == 5:
                        tensor = _initializer(buf, s, e)
                        found[tensor.name] = tensor
    return found


def _initializer(buf, start: int, end: int) -> Initializer:
    dims: list[int] = []
    element_type, name, raw, external = 0, "", None, {}
    for number, _, value in _any_fields(buf, start, end):
        if number == _DIMS:
            if isinstance(value, int):  # a varint: one dim
                dims.append(value)
            else:  # packed
                pos, stop = value
                while pos < stop:
                    dim, pos = _varint(buf, pos)
                    dims.append(dim)
        elif number == _DATA_TYPE:
            element_type = _number(value)
        elif number == _NAME:
            name_start, name_end = _span(value)
            name = bytes(buf[name_start:name_end]).decode("utf-8")
        elif number in (_RAW_DATA, _FLOAT_DATA):
            raw = _span(value)
        elif number == _TENSOR_EXTERNAL_DATA:
            key, entry = _entry(buf, *_span(value))
            external[key] = entry
    return Initializer(name, tuple(dims), element_type, raw, external.get("location"),
                       int(external.get("offset", 0)))


def read_initializers(path: Path, wanted: list[Initializer]):
    """{name: array} of float initializers listed by `initializers(path)`, in their stored dtype."""
    import numpy as np

    arrays = {}
    with open(path, "rb") as handle:
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            for tensor in wanted:
                if tensor.dtype is None:
                    raise ProtobufError(f"initializer {tensor.name} has element type {tensor.element_type}")
                count = int(np.prod(tensor.dims, dtype=np.int64))
                if tensor.location is not None:
                    data = np.fromfile(path.parent / tensor.location, dtype=tensor.dtype, count=count,
                                       offset=tensor.offset)
                elif tensor.raw is not None:
                    data = np.frombuffer(buf[tensor.raw[0]:tensor.raw[1]], dtype=tensor.dtype).copy()
                else:
                    data = np.zeros(count, dtype=tensor.dtype)
                if data.size != count:
                    raise ProtobufError(f"initializer {tensor.name} holds {data.size} values, not {count}")
                arrays[tensor.name] = data.reshape(tensor.dims)
    return arrays


def _key(field: int, wire: int) -> bytes:
    return _encode_varint(field << 3 | wire)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _encode_varint(len(payload)) + payload


def _spans(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, field start, payload start, payload end) of each length-delimited field,
    and of the others with their whole span as the payload."""
    pos = start
    while pos < end:
        first = pos
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
            yield field, first, first, pos
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            yield field, first, first, pos
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield field, first, pos, pos + length
            pos += length
        else:
            raise ProtobufError(f"unsupported wire type {wire}")


def with_external_weights(path: Path, weights: dict, location: str) -> tuple[bytes, bytearray]:
    """The ONNX model at `path` with the initializers named in `weights` ({name: numpy array})
    stored as external data in a file called `location`; returns (model bytes, that file's
    bytes). The file need not exist: ONNX Runtime takes it from memory, and replaces those
    initializers before it optimizes the graph (unlike initializers added to a session)."""
    data = bytearray()
    tensors: dict[str, tuple] = {}  # name -> (array, offset in data)
    for name, array in weights.items():
        offset = len(data)
        data += array.tobytes()
        tensors[name] = (array, offset)
    element_types = {dtype: number for number, dtype in _DTYPES.items()}
    found = set()

    def encoded(name: str) -> bytes:
        array, offset = tensors[name]
        payload = b"".join(_key(_DIMS, 0) + _encode_varint(int(dim)) for dim in array.shape)
        payload += _key(_DATA_TYPE, 0) + _encode_varint(element_types[array.dtype.newbyteorder("<").str])
        payload += _length_delimited(_NAME, name.encode("utf-8"))
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(array.nbytes))):
            entry = _length_delimited(1, key.encode("utf-8")) + _length_delimited(2, value.encode("utf-8"))
            payload += _length_delimited(_TENSOR_EXTERNAL_DATA, entry)
        return payload + _key(_DATA_LOCATION, 0) + _encode_varint(1)  # EXTERNAL

    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            model = bytearray()
            for field, first, start, end in _spans(buf, 0, size):
                if field != 7:  # not the graph
                    model += buf[first:end]
                    continue
                graph = bytearray()
                for inner, inner_first, inner_start, inner_end in _spans(buf, start, end):
                    name = _tensor_name(buf, inner_start, inner_end) if inner == 5 else None
                    if name in tensors:
                        graph += _length_delimited(5, encoded(name))
                        found.add(name)
                    else:
                        graph += buf[inner_first:inner_end]
                model += _length_delimited(7, bytes(graph))
    missing = set(tensors) - found
    if missing:
        raise ProtobufError(f"{path.name} has no initializer named {', '.join(sorted(missing))}")
    return bytes(model), data


def _tensor_name(buf, start: int, end: int) -> str:
    for number, wire, value in _any_fields(buf, start, end):
        if number == _NAME and wire == 2:
            name_start, name_end = _span(value)
            return bytes(buf[name_start:name_end]).decode("utf-8")
    return ""
