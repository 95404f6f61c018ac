"""Precisions: which stored variant or compute precision each network of a load runs in."""
from __future__ import annotations

from .artifact import Artifact
from .errors import ArtifactError, RequestError

# fp32 and bf16 compute on the exported files; the others are variants `sdrt quantize` makes and stores
COMPUTE_PRECISIONS = ("fp32", "bf16")
VARIANT_PRECISIONS = ("fp16", "fp16-cuda", "fp32-fused", "int8", "int8-qdq", "int8-weights", "int4-weights")
# A precision name picks the forms each backend (and device kind) runs well, the first the
# artifact stores for each network: "int8" is OpenVINO's (the stored "int8") or ONNX Runtime's
# static QDQ model ("int8-qdq"); "fp32" on ONNX Runtime is the UNet with its attention fused
# ("fp32-fused"), and "fp16" on its CUDA provider the fused fp16 UNet ("fp16-cuda"), else fp16.
BACKEND_FORMS = {"onnxruntime": {"fp32": ("fp32-fused",), "int8": ("int8-qdq",)},
                 "onnxruntime/cuda": {"fp32": ("fp32-fused",), "fp16": ("fp16-cuda", "fp16"), "int8": ("int8-qdq",)}}
PRECISION_NAMES = COMPUTE_PRECISIONS + VARIANT_PRECISIONS
# a precision name for every network, or one per component name
Precision = str | dict[str, str]


def resolve_precisions(artifact: Artifact, precision: Precision, backend: str | None = None,
                       device: str | None = None) -> dict[str, str]:
    """{component name: precision} for a load's `precision` on `backend` and `device`.

    "fp32" and "bf16" apply to every component (bf16: the fp32 files computed in bf16, an
    openvino option). Another name picks that stored variant for every component that has one
    and fp32 for the rest. A dict names the precision per component; components it leaves out
    run fp32. On a backend (or backend and device kind) with its own forms of a precision
    (BACKEND_FORMS: "fp32" and "int8" on onnxruntime, "fp16" on onnxruntime's cuda), a component
    that stores one runs the first it stores. In a dict, "fp32" is the exported network itself
    (the reference a report compares with).
    """
    names = [name for name, entry in artifact.manifest["components"].items()
             if entry["role"] in ("text_encoder", "denoiser", "vae_decoder")]
    values = [precision] if isinstance(precision, str) else precision.values() if isinstance(precision, dict) else ()
    for value in values:
        if value not in PRECISION_NAMES:
            raise RequestError(f"Unknown precision {value!r}; choose one of: {', '.join(PRECISION_NAMES)}.")
    kind = (device or "").partition(":")[0]
    forms = BACKEND_FORMS.get(f"{backend}/{kind}", BACKEND_FORMS.get(backend or "", {}))

    def form(name: str, value: str) -> str | None:
        """The first of the backend's forms of `value` that the network stores, if any."""
        stored = artifact.manifest["components"][name].get("variants", {})
        return next((own for own in forms.get(value, ()) if own in stored), None)

    if isinstance(precision, str) and any(form(name, precision) for name in names):
        precision = {name: own for name in names if (own := form(name, precision))}
    elif isinstance(precision, dict):
        precision = {name: (form(name, value) or value) if name in names and value not in COMPUTE_PRECISIONS
                     else value for name, value in precision.items()}
    if isinstance(precision, str):
        if precision in COMPUTE_PRECISIONS:
            return dict.fromkeys(names, precision)
        having = [name for name in names if precision in artifact.manifest["components"][name].get("variants", {})]
        if not having:
            raise ArtifactError(f"The artifact at {artifact.root} has no {precision} variant of any network; make "
                                f"them with `sdrt quantize {artifact.root} --precision {precision}` (`sdrt quantize "
                                "--help` lists the precisions it makes).")
        return {name: precision if name in having else "fp32" for name in names}
    if not isinstance(precision, dict):
        raise RequestError(f"precision must be a name (fp32, bf16, fp16, ...) or a dict of them by component, "
                           f"got {precision!r}.")
    unknown = sorted(set(precision) - set(names))
    if unknown:
        raise RequestError(f"precision names {', '.join(unknown)}, which the pipeline does not run; its components "
                           f"are {', '.join(names)}.")
    chosen = {name: precision.get(name, "fp32") for name in names}
    for name, value in chosen.items():
        if value != "bf16":
            artifact.variant(name, value)  # refuses a variant the artifact lacks, saying how to make it
    return chosen
