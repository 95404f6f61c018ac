"""One contract, every backend: each component's ONNX run on the backend vs PyTorch.

A new backend passes this file by being listed in sdrt.runtime.backends.BACKENDS; no new
test code is needed.
"""
import numpy as np
import pytest

from sdrt.export.onnx_export import component_modules
from sdrt.models.components import random_feeds
from sdrt.runtime.artifact import open_artifact
from sdrt.runtime.backends import BACKENDS, SessionOptions, backend_module
from sdrt.runtime.errors import RequestError

torch = pytest.importorskip("torch")

# (batch, latent height, latent width): two batch sizes, two spatial sizes, one not square
SHAPES = [(1, 16, 16), (3, 24, 16)]
COMPONENTS = ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
TOLERANCE = {"text_encoder": 1e-4, "unet": 1e-4, "vae_decoder": 1e-4, "vae_encoder": 1e-4}


@pytest.fixture(scope="module")
def torch_modules(tiny_checkpoint):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel.from_pretrained(tiny_checkpoint / "text_encoder").eval()
    return component_modules({"text_encoder": (text_encoder, True)},
                             UNet2DConditionModel.from_pretrained(tiny_checkpoint / "unet").eval(),
                             AutoencoderKL.from_pretrained(tiny_checkpoint / "vae").eval())


@pytest.fixture(scope="module")
def artifact(tiny_artifact):
    return open_artifact(tiny_artifact)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("component", COMPONENTS)
def test_component_matches_pytorch(artifact, torch_modules, backend, component):
    try:
        module = backend_module(backend)
    except ImportError:
        pytest.skip(f"{backend} is not installed")
    target = artifact.component(component)
    session = module.open_session(target, SessionOptions(device=module.CAPABILITIES.default_device))
    assert session.input_names == target.spec.input_names
    assert set(session.output_names) == set(target.spec.output_names)
    factor = artifact.pipeline["vae_scale_factor"]
    for batch, lh, lw in SHAPES:
        sizes = {"batch": batch, "sequence": 77, "latent_height": lh, "latent_width": lw,
                 "height": lh * factor, "width": lw * factor}
        feeds = random_feeds(target.spec, sizes, seed=batch)
        outputs = session.run(feeds)
        with torch.no_grad():
            expected = torch_modules[component](*(torch.from_numpy(feeds[n]) for n in target.spec.input_names))
        expected = expected if isinstance(expected, tuple) else (expected,)
        for spec, reference in zip(target.spec.outputs, expected):
            got = outputs[spec.name]
            assert got.shape == tuple(reference.shape), (component, spec.name, got.shape)
            assert got.dtype == np.float32
            assert np.abs(got - reference.numpy()).max() <= TOLERANCE[component], (component, batch, lh, lw)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_unknown_device_is_refused_with_the_devices_it_runs_on(artifact, backend):
    try:
        module = backend_module(backend)
    except ImportError:
        pytest.skip(f"{backend} is not installed")
    with pytest.raises(RequestError, match=f"The {backend} backend runs on: {module.CAPABILITIES.default_device}"):
        module.open_session(artifact.component("vae_decoder"), SessionOptions(device="quantum"))


@pytest.mark.parametrize("static_shapes", [True, False])
def test_openvino_fp32_is_not_bf16(artifact, static_shapes):
    """OpenVINO on bf16-capable CPUs runs bf16 unless told f32; fp32 must match PyTorch closely."""
    pytest.importorskip("openvino")
    unet = artifact.component("unet")
    feeds = random_feeds(unet.spec, {"batch": 1, "sequence": 77, "latent_height": 8, "latent_width": 8})
    hints = []
    for precision in ("fp32", "bf16"):
        session = backend_module("openvino").open_session(unet, SessionOptions(precision=precision,
                                                                               static_shapes=static_shapes))
        session.run(feeds)
        hints.append(str(session._compiled.get_property("INFERENCE_PRECISION_HINT")).lower())
    assert "float32" in hints[0] and "bfloat16" in hints[1]


def test_onnxruntime_refuses_bf16(artifact):
    pytest.importorskip("onnxruntime")
    with pytest.raises(RequestError, match="openvino option"):
        backend_module("onnxruntime").open_session(artifact.component("unet"), SessionOptions(precision="bf16"))



@pytest.mark.parametrize("backend", list(BACKENDS))
def test_each_backend_declares_what_it_offers_and_refuses_the_rest_at_load(tiny_artifact, backend, monkeypatch):
    """Capabilities are what the pipeline asks; an option a backend lacks is refused when the
    pipeline is made, before any network is opened."""
    import sdrt
    from sdrt.runtime.pipeline import StableDiffusionPipeline

    try:
        module = backend_module(backend)
    except ImportError:
        pytest.skip(f"{backend} is not installed")
    offers = module.CAPABILITIES
    assert offers.default_device in offers.devices and set(offers.precisions) <= {"fp32", "bf16"}
    opened = []
    monkeypatch.setattr(module, "open_session", lambda component, options: opened.append(component))
    lacking = [option for option, offered in (("cuda_graph", offers.cuda_graphs), ("device_loop", offers.device_loop))
               if not offered]
    for option in lacking:
        options = SessionOptions(device=offers.default_device, **{option: True})
        with pytest.raises(RequestError, match=f"The {backend} backend (does not capture|has no device-resident)"):
            StableDiffusionPipeline(sdrt.open_artifact(tiny_artifact), backend, options)
    assert not opened
