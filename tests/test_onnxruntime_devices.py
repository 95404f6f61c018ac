"""ONNX Runtime's GPU providers, as far as a CPU-only machine can check them: device names,
the provider chains and their options (TensorRT's shape profiles and engine cache), the one
line a build without the provider gives."""
import pytest

import sdrt
from sdrt.models.components import text_encoder_spec, unet_spec
from sdrt.runtime.backends.onnxruntime_devices import check_available, parse_device, provider_chain
from sdrt.runtime.backends.shape_profiles import default_profile
from sdrt.runtime.errors import BackendUnavailableError, RequestError

pytest.importorskip("onnxruntime")


def test_device_names():
    assert parse_device("cpu") == ("cpu", 0)
    assert parse_device("cuda") == ("cuda", 0) and parse_device("cuda:1") == ("cuda", 1)
    assert parse_device("tensorrt:2") == ("tensorrt", 2) and parse_device("dml") == ("dml", 0)
    for bad in ("gpu", "cuda:x", "cpu:1", "rocm"):
        with pytest.raises(RequestError, match="runs on: cpu, cuda, tensorrt, dml"):
            parse_device(bad)


def test_provider_chains_fall_back_in_order(tmp_path):
    names = {kind: [name for name, _ in provider_chain(kind, 1)] for kind in ("cpu", "cuda", "tensorrt", "dml")}
    assert names == {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                     "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                     "dml": ["DmlExecutionProvider", "CPUExecutionProvider"]}
    cuda = dict(provider_chain("cuda", 1))["CUDAExecutionProvider"]
    assert cuda["device_id"] == "1" and cuda["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert "enable_cuda_graph" not in cuda  # only for the UNet the device loop captures
    assert dict(provider_chain("cuda", 0, cuda_graph=True))["CUDAExecutionProvider"]["enable_cuda_graph"] == "1"


def test_tensorrt_options_carry_the_unets_profile_and_the_engine_cache(tmp_path):
    spec = unet_spec(4, 4, 768, 8)
    profile = default_profile((512, 512), 8)
    shapes = spec.shape_profile({axis: bounds[1] for axis, bounds in profile.items()},
                                {axis: (bounds[0], bounds[2]) for axis, bounds in profile.items()})
    options = dict(provider_chain("tensorrt", 0, engine_folder=tmp_path, shapes=shapes, fp16=True))[
        "TensorrtExecutionProvider"]
    assert options["trt_profile_min_shapes"] == "sample:1x4x32x32,timestep:1,encoder_hidden_states:1x77x768"
    assert options["trt_profile_opt_shapes"] == "sample:2x4x64x64,timestep:2,encoder_hidden_states:2x77x768"
    assert options["trt_profile_max_shapes"] == "sample:16x4x128x128,timestep:16,encoder_hidden_states:16x616x768"
    assert options["trt_engine_cache_path"] == str(tmp_path) and options["trt_timing_cache_enable"] == "1"
    assert options["trt_fp16_enable"] == "1"
    assert "trt_engine_cache_enable" not in dict(provider_chain("tensorrt", 0))["TensorrtExecutionProvider"]


def test_shape_profiles_keep_to_each_axis_range_and_multiple():
    spec = unet_spec(4, 4, 768, 8)
    sizes = {"batch": 2, "latent_height": 64, "latent_width": 96, "sequence": 77}
    assert spec.shape_profile(sizes)["sample"] == ((2, 4, 64, 96),) * 3  # no ranges: static
    wide = spec.shape_profile(sizes, {"latent_height": (3, 1000), "latent_width": (90, 101), "batch": (0, 99)})
    assert wide["sample"] == ((1, 4, 8, 96), (2, 4, 64, 96), (64, 4, 256, 96))
    with pytest.raises(ValueError, match="latent_height = 60 is outside .*multiples of 8"):
        spec.shape_profile({**sizes, "latent_height": 60})
    with pytest.raises(ValueError, match="needs a size for its 'sequence' axis"):
        spec.shape_profile({"batch": 1, "latent_height": 64, "latent_width": 64})
    text = text_encoder_spec(768, 77, 12).shape_profile({"batch": 2, "sequence": 77}, {"sequence": (1, 616)})
    assert text["input_ids"] == ((2, 1), (2, 77), (2, 77))  # the text encoder reads 77 tokens at most


def test_a_build_without_the_provider_says_what_to_install(tiny_artifact):
    with pytest.raises(BackendUnavailableError, match="no CUDAExecutionProvider .*needs onnxruntime-gpu"):
        check_available("cuda", ["CPUExecutionProvider"])
    check_available("cpu", ["CPUExecutionProvider"])
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    with pytest.raises(BackendUnavailableError, match="needs onnxruntime-gpu installed instead of onnxruntime"):
        sdrt.load(tiny_artifact, backend="onnxruntime", device="cuda")
