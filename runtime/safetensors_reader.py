"""Reading .safetensors files into numpy arrays without torch or the safetensors package
(embeddings and LoRA files on an edge box). Format: an 8-byte little-endian header length, a
JSON header of {name: {dtype, shape, data_offsets}}, then the tensors' bytes."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from .errors import RequestError

_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2"}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as float32 numpy arrays."""
    data = Path(path).read_bytes()
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + length])
    except (struct.error, ValueError) as error:
        raise RequestError(f"{Path(path).name} is not a safetensors file ({error}).") from None
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in _DTYPES:
            raise RequestError(f"{Path(path).name}: tensor {name} is {info.get('dtype')}; sdrt reads "
                               f"{', '.join(_DTYPES)}.")
        start, end = info["data_offsets"]
        array = np.frombuffer(data[8 + length + start:8 + length + end], dtype=_DTYPES[info["dtype"]])
        if info["dtype"] == "BF16":  # the upper half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = array.reshape(info["shape"]).astype(np.float32)
    return tensors
