"""PyTorch modules -> ONNX files, shaped by the component descriptors.

Built on `torch.onnx.export` (the dynamo exporter, opset 18) rather than Optimum: optimum-onnx
0.1 pins transformers < 4.58 and optimum < 2.2, which conflicts with transformers 5 and
optimum-intel 2.x, and it forces the deprecated TorchScript exporter. The descriptors in
models.components give the dynamic axes, so the exporter and the runtime agree by
construction.
"""
from __future__ import annotations

import gc
import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..models.components import ComponentSpec

OPSET = 18
# Above this many bytes of weights the model is saved with its weights in one external
# data file next to it (protobuf cannot hold more than 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1536 * 1024**2


@dataclass
class ExportedComponent:
    spec: ComponentSpec
    files: list[Path]  # the .onnx file first, then its external data, if any
    parameters: int
    max_abs_diff: float | None


def component_modules(text_encoders: dict, unet, vae, *, added_conditions: bool = False,
                      guidance_embedding: bool = False) -> dict:
    """The torch modules whose forward signature matches each descriptor's inputs, by component
    name. `text_encoders`: name -> (CLIP text model, whether its stacked layer states get the
    final layer norm); `added_conditions`: the UNet takes SDXL's pooled text and time ids;
    `guidance_embedding`: a latent consistency model's timestep_cond (after those)."""
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self, model, final_layer_norm: bool):
            super().__init__()
            self.model = model
            self.final_layer_norm = final_layer_norm

        def forward(self, input_ids):
            out = self.model(input_ids=input_ids, output_hidden_states=True, return_dict=True)
            pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
            layers = torch.stack(out.hidden_states)
            if self.final_layer_norm:  # (what diffusers' clip_skip applies to the layer it reads)
                layers = getattr(self.model, "text_model", self.model).final_layer_norm(layers)
            return out.last_hidden_state, pooled, layers

    class UNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.model(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    class AddedConditionsUNet(UNet):
        def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):  # type: ignore[override]
            return self.model(sample, timestep, encoder_hidden_states, return_dict=False,
                              added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids})[0]

    class GuidanceUNet(UNet):
        def forward(self, sample, timestep, encoder_hidden_states, timestep_cond):  # type: ignore[override]
            return self.model(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond,
                              return_dict=False)[0]

    class AddedConditionsGuidanceUNet(UNet):
        def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids,  # type: ignore[override]
                    timestep_cond):
            return self.model(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False,
                              added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids})[0]

    unets = {(False, False): UNet, (True, False): AddedConditionsUNet, (False, True): GuidanceUNet,
             (True, True): AddedConditionsGuidanceUNet}

    modules = {name: TextEncoder(model, normed) for name, (model, normed) in text_encoders.items()}
    modules.update(unet=unets[added_conditions, guidance_embedding](), **vae_modules(vae))
    return modules


def vae_modules(vae) -> dict:
    """The decoder and encoder of an AutoencoderKL (the encoder giving its distribution's
    parameters) or an AutoencoderTiny (the encoder giving the latents), as "vae_decoder" and
    "vae_encoder" modules."""
    import torch

    class VaeDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = vae

        def forward(self, latent_sample):
            return self.model.decode(latent_sample, return_dict=False)[0]

    class VaeEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = vae

        def forward(self, sample):
            encoded = self.model.encode(sample, return_dict=True)
            return encoded.latents if hasattr(encoded, "latents") else encoded.latent_dist.parameters

    return {"vae_decoder": VaeDecoder(), "vae_encoder": VaeEncoder()}


def _dynamic_shapes(spec: ComponentSpec):
    from torch.export import Dim

    dims = {}
    for axis in {a for t in spec.inputs for a in t.shape if isinstance(a, str)}:
        low, high = spec.axis_ranges.get(axis, (1, 4096))
        multiple = spec.axis_multiples.get(axis, 1)
        if multiple > 1:
            dims[axis] = multiple * Dim(f"{axis}_div{multiple}", min=max(1, low // multiple), max=high // multiple)
        else:
            dims[axis] = Dim(axis, min=low, max=high)
    return {t.name: {i: dims[a] for i, a in enumerate(t.shape) if isinstance(a, str)} for t in spec.inputs}


def export_component(spec: ComponentSpec, module, feeds: dict[str, np.ndarray], folder: Path,
                     *, verify: bool = True) -> ExportedComponent:
    """Export `module` to folder/model.onnx and measure it against PyTorch on `feeds`."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    module = module.eval()
    parameters = sum(p.numel() for p in module.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    args = tuple(torch.from_numpy(feeds[name]) for name in spec.input_names)
    # The exporter logs a warning per missing torchvision op on every call; quiet it here only.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, args, input_names=spec.input_names, output_names=spec.output_names,
                dynamic_shapes=_dynamic_shapes(spec), opset_version=OPSET, dynamo=True, verbose=False,
            )
            _drop_build_metadata(program.model)
            _name_folded_weights(program.model, module)
            program.save(str(path), external_data=weight_bytes > EXTERNAL_DATA_THRESHOLD)
            del program
            reference = module(*args) if verify else None
    finally:
        exporter_log.setLevel(level)
    # The torch weights go before the exported network is loaded to check it: a caller that
    # holds no other reference (the exporter) then never has two copies of a large UNet.
    del module
    gc.collect()
    files = [path] + sorted(p for p in folder.iterdir() if p != path)
    max_diff = None
    if verify:
        reference = reference if isinstance(reference, tuple) else (reference,)
        max_diff = _max_abs_diff(path, feeds, [r.numpy() for r in reference])
    return ExportedComponent(spec, files, parameters, max_diff)


def _drop_build_metadata(model) -> None:
    """Remove what describes the exporting machine rather than the model: torch.export's range
    constraints (printed from a set, in an order that changes between runs) and each node's
    Python stack trace (file paths of this installation). The same weights then export to the
    same bytes anywhere."""
    graph_metadata = model.graph.metadata_props
    for key in [k for k in graph_metadata if k.startswith("pkg.torch.export.")]:
        del graph_metadata[key]
    graphs = [model.graph, *model.functions.values()]
    for graph in graphs:
        for node in graph.all_nodes():
            node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)


def _name_folded_weights(model, module) -> None:
    """Give the linear layers' weights their modules' names.

    The exporter folds each Linear's weight into a transposed constant with a generated name
    ("val_34"); run-time LoRA (runtime.lora) and C++ hosts that swap weights find a module's
    weight by name, so each such constant is renamed "<parameter name>.T" (docs/artifact.md).
    Matched by value: the transposed bytes of exactly one parameter (a value two parameters
    share stays unnamed, as it would be ambiguous).
    """
    by_bytes: dict[bytes, list[str]] = {}
    for name, parameter in module.named_parameters():
        if parameter.dim() == 2:
            transposed = np.ascontiguousarray(parameter.detach().numpy().T)
            by_bytes.setdefault(hashlib.sha256(transposed.tobytes()).digest(), []).append(name)
    for value in list(model.graph.initializers.values()):
        if not value.name.startswith("val_") or value.const_value is None or len(value.const_value.shape) != 2:
            continue
        names = by_bytes.get(hashlib.sha256(value.const_value.numpy().tobytes()).digest(), [])
        if len(names) == 1 and f"{names[0]}.T" not in model.graph.initializers:
            value.name = f"{names[0]}.T"


def _max_abs_diff(path: Path, feeds: dict[str, np.ndarray], expected: list[np.ndarray]) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # the graph's own arithmetic, in no more memory than its weights (no fused or prepacked copies)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.enable_cpu_mem_arena = False
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, feeds)
    del session
    return float(max(np.abs(o - e).max() for o, e in zip(outputs, expected)))
