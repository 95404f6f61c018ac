"""OpenVINO compiles each network for the request's input shapes (static shapes), again when
they change, and matches its own every-shape compile."""
import numpy as np
import pytest

import sdrt
from sdrt.models.components import random_feeds
from sdrt.runtime.artifact import open_artifact
from sdrt.runtime.backends import SessionOptions, backend_module

ov = pytest.importorskip("openvino")


def _feeds(spec, batch, latent):
    return random_feeds(spec, {"batch": batch, "sequence": 77, "latent_height": latent, "latent_width": latent})


def _compiled_shapes(session) -> list[list[int]]:
    return [list(port.get_partial_shape().to_shape()) if port.get_partial_shape().is_static else None
            for port in session._compiled.inputs]


def test_each_shape_gets_its_own_compile_and_the_results_of_the_every_shape_compile(tiny_artifact):
    unet = open_artifact(tiny_artifact).component("unet")
    openvino = backend_module("openvino")
    static = openvino.open_session(unet, SessionOptions())
    dynamic = openvino.open_session(unet, SessionOptions(static_shapes=False))
    assert static._compiled is None  # nothing compiled before a shape is known
    assert all(not port.get_partial_shape().is_static for port in dynamic._compiled.inputs)
    small, large = _feeds(unet.spec, 1, 8), _feeds(unet.spec, 2, 16)
    for feeds in (small, large, small):
        got = static.run(feeds)["out_sample"]
        assert _compiled_shapes(static) == [list(feeds[name].shape) for name in static.input_names]
        expected = dynamic.run(feeds)["out_sample"]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
    compiled = static._compiled
    static.run(small)
    assert static._compiled is compiled  # the same shapes: no new compile


def test_a_pipeline_makes_the_same_image_with_either_compile(tiny_artifact):
    request = dict(prompt="a red circle", seed=5, num_inference_steps=3, height=64, width=64, output_type="np")
    images = [sdrt.load(tiny_artifact, "openvino", static_shapes=static)(**request).images[0]
              for static in (True, False)]
    np.testing.assert_allclose(images[0], images[1], atol=1e-4)
    assert images[0].std() > 0


def _runtime_layer_types(session) -> set[str]:
    return {op.get_rt_info()["layerType"].astype(str) for op in session._compiled.get_runtime_model().get_ops()}


def test_the_vae_decoder_runs_long_attention_unfused(tiny_artifact, tiny_taesd_artifact):
    """From UNFUSED_ATTENTION_POSITIONS latent positions the VAE decoder's attention is compiled
    without OpenVINO's fused kernels (a Softmax layer of its own), below it and for networks
    without attention as before; the results agree either way."""
    openvino = backend_module("openvino")
    artifact = open_artifact(tiny_artifact)
    decoder = openvino.open_session(artifact.component_for_role("vae_decoder"), SessionOptions())
    side = int(np.sqrt(openvino.UNFUSED_ATTENTION_POSITIONS))
    latents = {"latent_sample": np.random.default_rng(1).standard_normal((1, 4, side, side)).astype(np.float32)}
    unfused = decoder.run(latents)["sample"]
    assert "Softmax" in _runtime_layer_types(decoder)
    decoder._long_attention = lambda model, shapes: False
    decoder._compile({"latent_sample": (1, 4, side, side)})
    assert "Softmax" not in _runtime_layer_types(decoder)  # fused into a generated kernel
    np.testing.assert_allclose(unfused, decoder.run(latents)["sample"], atol=1e-4)
    small = openvino.open_session(artifact.component_for_role("vae_decoder"), SessionOptions())
    small.run({"latent_sample": latents["latent_sample"][:, :, :side // 2, :side // 2]})
    assert "Softmax" not in _runtime_layer_types(small)
    taesd = open_artifact(tiny_taesd_artifact[0]).component_for_role("vae_decoder", vae="taesd")
    assert not openvino.open_session(taesd, SessionOptions())._long_attention(
        ov.Core().read_model(str(taesd.path)), {"latent_sample": (1, 4, side, side)})
