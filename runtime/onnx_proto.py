"""Just enough of the protobuf wire format to list an ONNX file's external-data locations.

The runtime must refuse an artifact whose ONNX files point at data outside the artifact
folder (path traversal) before a backend opens them, without depending on the `onnx`
package. Field numbers are those of onnx/onnx.proto3.
"""
from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path

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


class ProtobufError(ValueError):
    pass


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
            yield field, *value


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


def _any_fields(buf, start: int, end: int) -> Iterator[tuple[int, int, object]]:
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


def initializer(path: Path, name_suffix: str):
    """(name, float32 array) of the graph initializer whose name ends with `name_suffix` (float
    types, raw or external data), or None when the graph has none."""
    import numpy as np

    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            graphs = [(s, e) for field, s, e in _fields(buf, 0, size) if field == 7]
            for graph_start, graph_end in graphs:
                for field, s, e in _fields(buf, graph_start, graph_end):
                    if field != 5:
                        continue
                    tensor = {"dims": [], "external": {}}
                    for number, wire, value in _any_fields(buf, s, e):
                        if number == _DIMS and wire == 0:
                            tensor["dims"].append(value)
                        elif number == _DIMS:
                            pos, stop = value
                            while pos < stop:
                                dim, pos = _varint(buf, pos)
                                tensor["dims"].append(dim)
                        elif number == _DATA_TYPE:
                            tensor["type"] = value
                        elif number == _NAME:
                            tensor["name"] = bytes(buf[value[0]:value[1]]).decode("utf-8")
                        elif number in (_RAW_DATA, _FLOAT_DATA):
                            tensor["data"] = bytes(buf[value[0]:value[1]])
                        elif number == _TENSOR_EXTERNAL_DATA:
                            key, entry = _entry(buf, *value)
                            tensor["external"][key] = entry
                    if not tensor.get("name", "").endswith(name_suffix):
                        continue
                    if tensor.get("type") not in _DTYPES:
                        raise ProtobufError(f"initializer {tensor['name']} has element type {tensor.get('type')}")
                    dtype = _DTYPES[tensor["type"]]
                    if "location" in tensor["external"]:
                        location = path.parent / tensor["external"]["location"]
                        offset = int(tensor["external"].get("offset", 0))
                        count = int(np.prod(tensor["dims"], dtype=np.int64))
                        data = np.fromfile(location, dtype=dtype, count=count, offset=offset)
                    else:
                        data = np.frombuffer(tensor.get("data", b""), dtype=dtype)
                    return tensor["name"], data.reshape(tensor["dims"]).astype(np.float32)
    return None
