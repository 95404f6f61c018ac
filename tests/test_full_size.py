"""The real SD 1.5 sizes (UNet 860M parameters): external-data export and one UNet step.

Random weights: latency and the export path do not depend on weight values. Slow (minutes,
about 8 GB of RAM at peak), so it builds the model once for the module.
"""
import gc
import json

import numpy as np
import pytest

from sdrt.models.components import random_feeds
from sdrt.runtime.artifact import open_artifact
from sdrt.runtime.backends import BACKENDS, SessionOptions, backend_module, mapped

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.full_size


def installed(backend: str):
    """The backend's module, or the test skipped."""
    try:
        return backend_module(backend)
    except ImportError:
        pytest.skip(f"{backend} is not installed")


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    from sdrt.export.exporter import export_checkpoint
    from sdrt.export.random_model import build_random_pipeline

    root = tmp_path_factory.mktemp("sd15")
    checkpoint = build_random_pipeline("sd15", root / "checkpoint")
    artifact = export_checkpoint(checkpoint, root / "artifact")
    return checkpoint, artifact


def test_export_puts_the_unet_weights_in_external_data(sd15):
    _, artifact = sd15
    manifest = json.loads((artifact / "sdrt.json").read_text())
    unet = manifest["components"]["unet"]
    assert unet["files"] == ["unet/model.onnx", "unet/model.onnx.data"]
    assert manifest["files"]["unet/model.onnx.data"]["size"] > 2**31
    assert manifest["files"]["unet/model.onnx"]["size"] < 2**26
    assert 850e6 < unet["parameters"] < 870e6
    for name, entry in manifest["components"].items():
        assert entry["max_abs_diff_vs_torch"] < 1e-3, name
    assert manifest["pipeline"]["default_size"] == [512, 512] and manifest["pipeline"]["size_multiple"] == 64
    open_artifact(artifact)  # checksums of 4 GB of files, external-data locations


@pytest.fixture(scope="module")
def unet_reference(sd15):
    from diffusers import UNet2DConditionModel

    checkpoint, artifact = sd15
    spec = open_artifact(artifact, verify_checksums=False).component("unet").spec
    feeds = random_feeds(spec, {"batch": 2, "sequence": 77, "latent_height": 32, "latent_width": 32})
    unet = UNet2DConditionModel.from_pretrained(checkpoint / "unet").eval()
    with torch.no_grad():
        expected = unet(*(torch.from_numpy(feeds[n]) for n in spec.input_names)).sample.numpy()
    del unet
    gc.collect()
    return feeds, expected


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_unet_step_at_256_matches_pytorch(sd15, unet_reference, backend):
    module = installed(backend)
    _, artifact = sd15
    feeds, expected = unet_reference
    session = module.open_session(open_artifact(artifact, verify_checksums=False).component("unet"),
                                  SessionOptions(device=module.CAPABILITIES.default_device))
    data = artifact / "unet" / "model.onnx.data"
    got = session.run(feeds)["out_sample"]
    if backend == "openvino":
        # The mapped fp32 weights were dropped from the process once OpenVINO had repacked them,
        # and running at another shape did not read them back.
        assert mapped.resident_bytes(data) < 0.02 * data.stat().st_size
    del session
    gc.collect()
    assert got.shape == (2, 4, 32, 32)
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()


@pytest.fixture(scope="module")
def updated_unet_reference(sd15, unet_reference):
    """Rank-4 updates of a linear layer (stored transposed, in the external data) and a
    convolution, and PyTorch's UNet output with them added to its weights."""
    from diffusers import UNet2DConditionModel

    checkpoint, _ = sd15
    feeds, _ = unet_reference
    rng = np.random.default_rng(0)
    shapes = {"mid_block.attentions.0.transformer_blocks.0.attn1.to_q": (1280, 1280),
              "down_blocks.0.resnets.0.conv1": (320, 320 * 9)}
    updates = {name: (rng.standard_normal((rows, 4)) @ rng.standard_normal((4, cols)) * 0.02).astype(np.float32)
               for name, (rows, cols) in shapes.items()}
    unet = UNet2DConditionModel.from_pretrained(checkpoint / "unet").eval()
    layers = dict(unet.named_modules())
    with torch.no_grad():
        for name, update in updates.items():
            layers[name].weight += torch.from_numpy(update).reshape(layers[name].weight.shape)
        expected = unet(*(torch.from_numpy(feeds[n]) for n in ("sample", "timestep", "encoder_hidden_states"))).sample
    del unet, layers
    gc.collect()
    return updates, expected.numpy()


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_replaced_weights_at_full_size_match_pytorch(sd15, unet_reference, updated_unet_reference, backend):
    """Run-time LoRA's path on a UNet whose weights are in external data: the updated weights
    (runtime.module_weights) replace the file's in the backend session."""
    from sdrt.runtime.module_weights import ModuleWeights

    module = installed(backend)
    _, artifact = sd15
    feeds, unchanged = unet_reference
    updates, expected = updated_unet_reference
    component = open_artifact(artifact, verify_checksums=False).component("unet")
    weights = ModuleWeights(component).with_updates([(1.0, updates)])
    assert [name.endswith(".weight.T") for name in weights] == [False, True]  # conv1 first, sorted
    session = module.open_session(component, SessionOptions(device=module.CAPABILITIES.default_device, weights=weights))
    got = session.run(feeds)["out_sample"]
    del session
    gc.collect()
    assert np.abs(expected - unchanged).max() > 0.01 * np.abs(expected).max()  # the updates matter
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()
