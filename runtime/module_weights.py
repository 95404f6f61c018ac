"""A network's weights by module name, read from its ONNX file, and the replacements that run-time
LoRA and textual inversion hand to a backend session (SessionOptions.weights).

The exporter names each weight after its torch parameter under the export wrapper's "model.":
"model.<module>.weight", and linear layers' weights, which it stores transposed,
"model.<module>.weight.T" (export.onnx_export._name_folded_weights; docs/artifact.md).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .artifact import Component
from .errors import RequestError
from .onnx_proto import initializers, read_initializers

WRAPPER = "model."
# ONNX files whose weights are stored as floats under the exporter's names (fp16-cuda's
# NHWC convolutions hold transposed copies: not here)
FLOAT_PRECISIONS = ("fp32", "fp16", "fp32-fused")


class ModuleWeights:
    """The float weights of one network's ONNX file, found by module name."""

    def __init__(self, component: Component):
        self.component = component
        onnx = component.entry.get("format", "onnx") != "openvino" and component.path.suffix == ".onnx"
        if component.precision not in FLOAT_PRECISIONS or not onnx:
            raise RequestError(
                f"The {component.precision} {component.spec.name} stores its weights quantized or rearranged for a "
                f"device; sdrt replaces weights at "
                f"run time (LoRA, textual inversion) in its {', '.join(FLOAT_PRECISIONS)} networks: load this "
                f"network in one (precision={{'{component.spec.name}': 'fp32'}}), or merge a LoRA at export "
                "(`sdrt export --lora`) and make the variant from that artifact.")
        self.path: Path = component.path
        self.stored = initializers(self.path)
        # module -> (initializer name, stored transposed)
        self.modules: dict[str, tuple[str, bool]] = {}
        for name, tensor in self.stored.items():
            if tensor.dtype is None or not name.startswith(WRAPPER):
                continue
            stem = name[len(WRAPPER):]
            if stem.endswith(".weight.T") and len(tensor.dims) == 2:
                self.modules[stem[:-len(".weight.T")]] = (name, True)
            elif stem.endswith(".weight"):
                self.modules.setdefault(stem[:-len(".weight")], (name, False))

    def ending_with(self, suffix: str) -> str | None:
        """The name of the float weight whose name ends with `suffix`."""
        return next((name for name, tensor in self.stored.items()
                     if name.endswith(suffix) and tensor.dtype is not None), None)

    def read(self, names: list[str]) -> dict[str, np.ndarray]:
        return read_initializers(self.path, [self.stored[name] for name in names])

    def with_updates(self, updates: list[tuple[float, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
        """{initializer name: weight + sum of strength x update} for (strength, {module: 2-D update
        (out, in x kernel)}) pairs, each weight in the dtype it is stored in."""
        touched = sorted({module for _, by_module in updates for module in by_module})
        names = [self.modules[module][0] for module in touched]
        weights = {name: array.astype(np.float32) for name, array in self.read(names).items()}
        for strength, by_module in updates:
            for module, update in by_module.items():
                name, transposed = self.modules[module]
                weight = weights[name]
                shape = weight.shape[::-1] if transposed else weight.shape
                if update.size != weight.size:
                    raise RequestError(f"A LoRA changes {module} by {update.shape[0]}x{update.shape[1]} values and "
                                       f"the model's weight is {'x'.join(map(str, shape))}: the LoRA was made for "
                                       "another model.")
                change = update.reshape(shape)
                weight += np.float32(strength) * (change.T if transposed else change)
        return {name: weights[name].astype(self.stored[name].dtype) for name in names}
