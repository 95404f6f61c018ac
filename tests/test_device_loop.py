"""The device-resident denoising loop (ONNX Runtime IOBinding: UNet -> kernels/sampler_step.onnx
-> UNet), run on the CPU provider: the same latents as the host loop, and no transfer of
latents between the first and the last step."""
import numpy as np
import pytest

import sdrt
from sdrt.runtime.errors import RequestError

pytest.importorskip("onnxruntime")
from sdrt.runtime.backends.onnxruntime_loop import OrtDeviceLoop  # noqa: E402


@pytest.fixture(scope="module")
def pipes(tiny_artifact):
    return {loop: sdrt.load(tiny_artifact, backend="onnxruntime", device_loop=loop) for loop in (False, True)}


@pytest.mark.parametrize("sampler,guidance", [("euler_a", 7.5), ("pndm", 7.5), ("dpmpp_2m", 1.0), ("ddim", 5.0)])
def test_device_loop_gives_the_host_loops_latents(pipes, sampler, guidance):
    results = {loop: pipe("a red circle", num_inference_steps=6, scheduler=sampler, guidance_scale=guidance,
                          seed=11, output_type="latent").images for loop, pipe in pipes.items()}
    np.testing.assert_allclose(results[True], results[False], rtol=1e-4, atol=1e-4 * np.abs(results[False]).max())


def test_device_loop_runs_image_to_image_and_leaves_inpainting_on_the_host(pipes):
    image = np.random.default_rng(0).uniform(0, 1, (64, 64, 3)).astype(np.float32)
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1
    for extra in ({"strength": 0.6}, {"mask_image": mask, "strength": 0.8}):
        results = [pipe("a blue square", image=image, num_inference_steps=5, scheduler="euler", seed=2,
                        output_type="np", **extra).images for pipe in pipes.values()]
        np.testing.assert_allclose(results[1], results[0], atol=2e-4)


def test_no_latents_cross_between_host_and_device_inside_the_loop(pipes, monkeypatch):
    events = []
    for name in ("to_device", "to_host"):
        original = getattr(OrtDeviceLoop, name)
        monkeypatch.setattr(OrtDeviceLoop, name, lambda self, value, _name=name, _original=original:
                            (events.append(_name), _original(self, value))[1])
    pipe = pipes[True]
    session = pipe.sessions["denoiser"]._session
    run = session.run_with_iobinding
    monkeypatch.setattr(session, "run_with_iobinding", lambda binding, *a: (events.append("unet"), run(binding, *a))[1],
                        raising=False)
    steps = 5
    pipe("a cat", num_inference_steps=steps, scheduler="euler_a", seed=1, output_type="latent")
    first, last = events.index("unet"), len(events) - 1 - events[::-1].index("unet")
    assert events.count("unet") == steps
    assert events[first:last + 1] == ["unet"] * steps  # nothing moved between the UNet calls
    assert events[last + 1:] == ["to_host"]  # the final latents, once
    assert "to_device" in events[:first]
    # A callback that asks for the latents gets them after every step: one download each.
    events.clear()
    pipe("a cat", num_inference_steps=steps, scheduler="euler_a", seed=1, output_type="latent",
         callback=lambda index, timestep, latents: events.append("callback"))
    first = events.index("unet")
    assert events[first:] == ["unet", "to_host", "callback"] * steps + ["to_host"]


def test_device_loop_needs_a_backend_that_has_one(tiny_artifact):
    if "openvino" not in sdrt.available_backends():
        pytest.skip("openvino is not installed")
    with pytest.raises(RequestError, match="no device-resident denoising loop"):
        sdrt.load(tiny_artifact, backend="openvino", device_loop=True)
