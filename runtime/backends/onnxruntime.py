"""ONNX Runtime backend: CPUExecutionProvider (GPU providers come with the GPU backends)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ..artifact import Component
from ..errors import BackendUnavailableError, RequestError
from ..onnx_proto import initializer
from ..textual_inversion import TOKEN_EMBEDDING
from . import SessionOptions, cast_feeds, extended_token_table

PROVIDERS = {"cpu": "CPUExecutionProvider"}
PRECISIONS = ("fp32",)


class OnnxRuntimeSession:
    def __init__(self, component: Component, options: SessionOptions):
        if options.device not in PROVIDERS:
            raise RequestError(
                f"The onnxruntime backend runs on: {', '.join(PROVIDERS)}; got device {options.device!r}.")
        if component.entry.get("format", "onnx") != "onnx":
            raise RequestError(f"The {component.precision} {component.spec.name} is an OpenVINO model "
                               f"({component.path.name}); run it with backend='openvino', or choose another "
                               "precision for this network"
                               + (" (`sdrt quantize --precision int8-qdq` makes ONNX Runtime's int8 form)."
                                  if component.precision == "int8" else "."))
        if options.precision not in PRECISIONS:
            raise RequestError(f"The onnxruntime backend runs the fp32 artifact as exported; precision "
                               f"{options.precision!r} is an openvino option (use backend='openvino').")
        provider = PROVIDERS[options.device]
        if provider not in ort.get_available_providers():
            raise BackendUnavailableError(f"This onnxruntime build lacks {provider}.")
        settings = ort.SessionOptions()
        settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        settings.log_severity_level = 3
        if options.num_threads:
            settings.intra_op_num_threads = options.num_threads
        if options.token_embeddings is not None:
            # The table's initializer replaced by a longer one (ONNX Runtime takes it at load; the
            # Gather reads rows by id, whatever the table's length).
            found = initializer(component.path, TOKEN_EMBEDDING) if component.path.suffix == ".onnx" else None
            table = extended_token_table(found and found[1], component, options.token_embeddings)
            self._table = ort.OrtValue.ortvalue_from_numpy(table)  # kept alive with the session
            settings.add_initializer(found[0], self._table)
        self._session = ort.InferenceSession(str(component.path), settings, providers=[provider])
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self._dtypes = {t.name: t.dtype for t in component.spec.inputs}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(self.output_names, cast_feeds(feeds, self._dtypes))
        return dict(zip(self.output_names, outputs))


def open_session(component: Component, options: SessionOptions) -> OnnxRuntimeSession:
    return OnnxRuntimeSession(component, options)
