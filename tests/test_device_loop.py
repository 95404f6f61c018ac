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
    for name in ("to_device", "to_host", "copy_to_device"):
        original = getattr(OrtDeviceLoop, name)
        monkeypatch.setattr(OrtDeviceLoop, name, lambda self, *values, _name=name, _original=original:
                            (events.append(_name), _original(self, *values))[1])
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
    assert "to_device" in events[:first] and "copy_to_device" in events[:first]
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


def test_with_cuda_graphs_the_unet_reads_and_writes_the_same_buffers_every_step_and_request(tiny_artifact,
                                                                                          monkeypatch):
    """What ONNX Runtime's CUDA graphs need, checked on the CPU provider: every UNet call of a
    request shape runs on the same bound addresses, across steps and requests, under that
    shape's gpu_graph_id (a new shape: a new id); the latents are the host loop's."""
    import onnxruntime as ort

    pipe = sdrt.load(tiny_artifact, backend="onnxruntime", device_loop=True)
    host = sdrt.load(tiny_artifact, backend="onnxruntime", device_loop=False)
    session = pipe.sessions["denoiser"]
    session._loop = OrtDeviceLoop(session._session, ["CPUExecutionProvider"], cuda_graphs=True)
    bound, calls = {}, []
    bind = ort.IOBinding.bind_ortvalue_input, ort.IOBinding.bind_ortvalue_output

    def record(which):
        def wrapped(binding, name, value):
            bound.setdefault(id(binding), {})[name] = value.data_ptr()
            return bind[which](binding, name, value)
        return wrapped

    monkeypatch.setattr(ort.IOBinding, "bind_ortvalue_input", record(0))
    monkeypatch.setattr(ort.IOBinding, "bind_ortvalue_output", record(1))
    run = session._session.run_with_iobinding
    monkeypatch.setattr(session._session, "run_with_iobinding", lambda binding, options=None: (
        calls.append((dict(bound[id(binding)]), options.get_run_config_entry("gpu_graph_id"))),
        run(binding, options))[1], raising=False)
    for size, sampler in ((64, "euler_a"), (64, "dpmpp_2m"), (96, "euler_a")):
        settings = dict(num_inference_steps=4, scheduler=sampler, seed=5, height=size, width=size,
                        output_type="latent")
        expected = host("a red circle", **settings).images
        np.testing.assert_allclose(pipe("a red circle", **settings).images, expected, rtol=1e-4,
                                   atol=1e-4 * np.abs(expected).max())
    assert len(calls) == 12
    assert set(calls[0][0]) == {"sample", "encoder_hidden_states", "timestep", "out_sample"}
    assert all(call == calls[0] for call in calls[:8])  # two requests of one shape: the same addresses
    assert calls[0][1] == "0" and calls[8][1] == "1" and all(call == calls[8] for call in calls[8:])
    assert calls[8][0]["sample"] != calls[0][0]["sample"]


def test_cuda_graph_needs_onnxruntimes_cuda_device_and_the_device_loop(tiny_artifact):
    with pytest.raises(RequestError, match="cuda_graph needs ONNX Runtime's CUDA provider"):
        sdrt.load(tiny_artifact, backend="onnxruntime", cuda_graph=True)
    with pytest.raises(RequestError, match="leave device_loop on"):
        sdrt.load(tiny_artifact, backend="onnxruntime", device_loop=False, cuda_graph=True)
    if "openvino" in sdrt.runtime.backends.available_backends():
        with pytest.raises(RequestError, match="openvino backend does not capture CUDA graphs"):
            sdrt.load(tiny_artifact, backend="openvino", cuda_graph=True)
