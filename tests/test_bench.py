"""The benchmark harness's own logic: statistics, memory polling, report writing, peers that are
missing, failing workers, and one real `sdrt bench` run on the demo model against diffusers."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdrt.benchmarks import report
from sdrt.benchmarks.command import pair_order
from sdrt.benchmarks.harness import BenchmarkError, Engine, EngineResult, Settings, run_engines, sdrt_engine
from sdrt.benchmarks.machine import machine_info
from sdrt.benchmarks.memory import PeakPoller
from sdrt.benchmarks.peers import missing_module, parse_compare, peer_engines
from sdrt.benchmarks.stats import summarize
from sdrt.cli import main


def test_summary_statistics():
    summary = summarize([3.0, 1.0, 10.0, 2.0, 4.0])
    assert (summary.median, summary.min, summary.max, summary.count) == (3.0, 1.0, 10.0, 5)
    assert summary.p90 == pytest.approx(4.0 + 0.6 * (10.0 - 4.0))  # linear between the 4th and 5th values
    assert summarize([2.5]).p90 == 2.5
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])


def test_peak_poller_reports_the_peak_since_the_last_take():
    # Not started, so only the constructor and take() read: start 100; each take reads the
    # value now, returns the peak, then restarts from a fresh reading.
    values = iter([100, 500, 200, 300, 250, 50, 50])
    poller = PeakPoller(lambda: next(values))
    assert poller.take() == 500
    assert poller.take() == 300
    assert poller.take() == 250  # the fresh reading after the previous take counts
    assert poller.lifetime == 500


def test_machine_facts_from_proc_files():
    cpuinfo = ("processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n\n"
               "processor\t: 1\nmodel name\t: Example CPU 9000\n")
    facts = machine_info(cpuinfo=cpuinfo, meminfo="MemTotal:       2048 kB\nMemFree: 1 kB\n")
    assert facts["cpu"] == "Example CPU 9000"
    assert facts["cpu_flags"] == ["avx2", "avx512f", "amx_tile", "amx_bf16"]
    assert facts["memory_bytes"] == 2048 * 1024


def _engine(name: str, kind: str, precision: str = "fp32") -> Engine:
    return Engine(name=name, kind=kind, precision=precision, command=(), spec={"backend": name.split("/")[1]})


def _result(engine: Engine, image_s: list[float], image: np.ndarray, folder: Path) -> EngineResult:
    result = EngineResult(engine)
    for value in image_s:
        result.add("image_s", value)
    result.add("unet_batch2_s", image_s[0] / 20)
    result.add("steady_peak_rss_bytes", 3 * 2**30)
    result.image = folder / f"{engine.name.replace('/', '-')}.png"
    Image.fromarray(image).save(result.image)
    return result


def test_report_files_hold_every_figure_ratio_and_agreement(tmp_path):
    pixels = np.full((8, 8, 3), 100, dtype=np.uint8)
    shifted = pixels.copy()
    shifted[0, 0, 0] = 196  # 96 / 192 values = 0.5 mean absolute difference
    results = [_result(_engine("sdrt/openvino/fp32", "sdrt"), [2.0, 4.0, 3.0], shifted, tmp_path),
               _result(_engine("optimum-intel/fp32", "optimum-intel"), [6.0, 6.0], pixels, tmp_path),
               _result(_engine("diffusers/fp32", "diffusers"), [12.0], pixels, tmp_path)]
    reference, agreement = report.image_agreement(results)
    assert reference == "diffusers/fp32"
    assert agreement["sdrt/openvino/fp32"] == pytest.approx(0.5)
    assert agreement["optimum-intel/fp32"] == 0.0
    rows = report.ratios(results)
    found = {(r["ours"], r["theirs"], r["metric"]): r["ratio"] for r in rows}
    assert found[("sdrt/openvino/fp32", "optimum-intel/fp32", "image_s")] == pytest.approx(0.5)
    assert found[("sdrt/openvino/fp32", "diffusers/fp32", "image_s")] == pytest.approx(0.25)
    assert found[("sdrt/openvino/fp32", "diffusers/fp32", "steady_peak_rss_bytes")] == pytest.approx(1.0)
    assert not any(r["ours"].startswith(("diffusers", "optimum")) for r in rows)  # only sdrt / peer

    header = {"date": "2026-01-01T00:00:00+00:00", "command": "sdrt bench --model demo", "model": "demo",
              "settings": Settings(height=64, width=64).__dict__, "versions": {"sdrt": "0"}, "commit": None,
              "machine": machine_info(cpuinfo="model name\t: X\n", meminfo=""), "reference": reference,
              "missing": {"optimum-onnx": "optimum.onnxruntime does not import"}}
    report.write_jsonl(tmp_path / "results.jsonl", header, results, agreement, rows)
    lines = report.read_jsonl(tmp_path / "results.jsonl")
    assert lines[0]["type"] == "run" and lines[0]["missing"] == header["missing"]
    figure = next(x for x in lines if x["type"] == "figure" and x["engine"] == "sdrt/openvino/fp32"
                  and x["metric"] == "image_s")
    assert (figure["median"], figure["min"], figure["max"], figure["count"]) == (3.0, 2.0, 4.0, 3)
    assert figure["samples"] == [2.0, 4.0, 3.0] and figure["unit"] == "s"
    assert sum(x["type"] == "ratio" for x in lines) == len(rows)
    assert sum(x["type"] == "agreement" for x in lines) == 3

    plots = report.plot(results, tmp_path)
    assert [p.name for p in plots] == ["latency.png", "memory.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in plots)
    text = report.markdown(header, results, agreement, rows, [p.name for p in plots])
    assert "Not run: optimum-onnx: optimum.onnxruntime does not import" in text
    assert "| sdrt/openvino/fp32 | 0.50x | 0.25x |" in text  # the end-to-end ratio matrix
    assert "| image | 3.00 s | 6.00 s | 12.00 s |" in text
    assert "![latency](latency.png)" in text


def test_each_precision_is_compared_with_its_own_stacks_fp32_image(tmp_path):
    from sdrt.export.metrics import psnr

    rng = np.random.default_rng(0)
    fp32 = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    int8 = np.clip(fp32.astype(int) + rng.integers(-9, 9, fp32.shape), 0, 255).astype(np.uint8)
    other = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)  # the peer's fp32 image differs from ours
    results = [_result(_engine("sdrt/openvino/fp32", "sdrt"), [1.0], fp32, tmp_path),
               _result(_engine("sdrt/openvino/int8", "sdrt", "int8"), [1.0], int8, tmp_path),
               _result(_engine("optimum-intel/fp32", "optimum-intel"), [1.0], other, tmp_path),
               _result(_engine("optimum-intel/int8", "optimum-intel", "int8"), [1.0], other, tmp_path),
               _result(_engine("sdrt/onnxruntime/int8", "sdrt", "int8"), [1.0], int8, tmp_path)]
    quality = report.quality_vs_own_fp32(results)
    assert set(quality) == {"sdrt/openvino/int8", "optimum-intel/int8"}  # no onnxruntime fp32 to compare with
    assert quality["sdrt/openvino/int8"]["reference"] == "sdrt/openvino/fp32"
    assert quality["sdrt/openvino/int8"]["psnr_db"] == pytest.approx(psnr(fp32, int8))
    assert quality["optimum-intel/int8"] == {"reference": "optimum-intel/fp32", "psnr_db": None, "ssim": 1.0}


def test_missing_and_unsupported_peers_are_reported_not_run(tmp_path):
    def check(python, module):
        return None if module == "optimum.onnxruntime" else f"{module} does not import"

    engines, missing = peer_engines(["diffusers", "optimum-onnx"], ["fp32", "bf16"], sys.executable,
                                    tmp_path / "checkpoint", tmp_path / "latents.npy", tmp_path / "work", check=check)
    assert [e.name for e in engines] == ["optimum-onnx/fp32"]
    assert missing == {"diffusers": "diffusers does not import",
                       "optimum-onnx/bf16": "optimum-onnx has no bf16 mode here"}
    assert engines[0].spec["latents"] == str(tmp_path / "latents.npy")
    with pytest.raises(BenchmarkError, match="Unknown peer"):
        parse_compare("diffusers,automatic1111")


def test_a_peers_int8_is_calibrated_on_the_artifacts_int8_calibration_set(tmp_path):
    """optimum-intel's int8 (hybrid) gets the prompts and sample count sdrt's int8 UNet was
    calibrated on, and is not run when the artifact has no int8 UNet to take them from."""
    def check(python, module):
        return None

    calibration = {"prompts": ["a red circle", "a castle"], "samples": 20, "compute": "bf16"}
    engines, missing = peer_engines(["optimum-intel"], ["int8"], sys.executable, tmp_path / "checkpoint",
                                    tmp_path / "latents.npy", tmp_path / "work", check=check,
                                    calibration=calibration)
    assert [e.name for e in engines] == ["optimum-intel/int8"] and not missing
    assert engines[0].spec["calibration"] == calibration
    engines, missing = peer_engines(["optimum-intel"], ["int8"], sys.executable, tmp_path / "checkpoint",
                                    tmp_path / "latents.npy", tmp_path / "work", check=check)
    assert not engines and "sdrt quantize --precision int8" in missing["optimum-intel/int8"]


def test_missing_module_names_the_module_and_the_fix():
    assert missing_module(sys.executable, "json") is None
    why = missing_module(sys.executable, "no_such_module_for_sdrt")
    assert "no_such_module_for_sdrt" in why and "peers setup" in why


def test_pair_order_puts_each_sdrt_engine_beside_its_natural_peer():
    ours = [_engine("sdrt/openvino/fp32", "sdrt"), _engine("sdrt/openvino/bf16", "sdrt", "bf16"),
            _engine("sdrt/onnxruntime/fp32", "sdrt")]
    theirs = [_engine("diffusers/fp32", "diffusers"), _engine("optimum-onnx/fp32", "optimum-onnx"),
              _engine("optimum-intel/fp32", "optimum-intel"), _engine("optimum-intel/bf16", "optimum-intel", "bf16")]
    assert [e.name for e in pair_order(ours, theirs)] == [
        "sdrt/openvino/fp32", "optimum-intel/fp32", "sdrt/openvino/bf16", "optimum-intel/bf16",
        "sdrt/onnxruntime/fp32", "optimum-onnx/fp32", "diffusers/fp32"]


def _scripted(name: str, script: str) -> Engine:
    return Engine(name=name, kind="sdrt", precision="fp32", command=(sys.executable, "-c", script), spec={})


def test_a_worker_that_dies_fails_the_run_with_its_log(tmp_path):
    script = "import sys; sys.stderr.write('CUDA out of memory\\n'); sys.exit(3)"
    with pytest.raises(BenchmarkError, match=r"(?s)broken/fp32 stopped during 'start' \(exit status 3\).*"
                                             r"CUDA out of memory"):
        run_engines([_scripted("broken/fp32", script)], Settings(repeats=1), tmp_path)


def test_a_worker_error_fails_the_run_naming_the_engine(tmp_path):
    script = ("import json, sys\n"
              "print(json.dumps({'ok': True, 'result': {}}), flush=True)\n"
              "sys.stdin.readline()\n"
              "print(json.dumps({'ok': False, 'error': 'RequestError: no bf16 here'}), flush=True)\n")
    with pytest.raises(BenchmarkError, match="refusing/fp32 failed during 'load': RequestError: no bf16 here"):
        run_engines([_scripted("refusing/fp32", script)], Settings(repeats=1), tmp_path)


def test_peers_convert_in_a_process_of_their_own_before_anything_is_measured(tmp_path):
    calls = tmp_path / "calls.txt"
    script = ("import json, os, sys\n"
              "print(json.dumps({'ok': True, 'result': {}}), flush=True)\n"
              "for line in sys.stdin:\n"
              "    op = json.loads(line)['op']\n"
              f"    open({str(calls)!r}, 'a').write(f'{{os.getpid()}} {{op}}\\n')\n"
              "    answer = {'ok': True, 'result': {}} if op != 'load' else {'ok': False, 'error': 'stop'}\n"
              "    print(json.dumps(answer), flush=True)\n"
              "    if op == 'exit':\n"
              "        break\n")
    peers = [Engine(name=f"somepeer/{p}", kind="somepeer", precision=p, command=(sys.executable, "-c", script),
                    spec={}) for p in ("fp32", "bf16")]
    with pytest.raises(BenchmarkError, match="stop"):
        run_engines(peers, Settings(repeats=1, together=2), tmp_path)
    lines = [line.split() for line in calls.read_text().splitlines()]
    # each precision's conversion (optimum-intel's int8 is a conversion of its own), every one
    # in a process that ends before the first load
    assert [op for _, op in lines[:4]] == ["prepare", "exit", "prepare", "exit"]
    assert lines[0][0] != lines[2][0]
    assert lines[4][1] == "load" and lines[4][0] not in (lines[0][0], lines[2][0])
    assert sum(op == "prepare" for _, op in lines) == 2


@pytest.mark.slow
def test_bench_on_the_demo_model_against_diffusers(tmp_path, capsys):
    """A whole run: sdrt and diffusers take turns on the same latents; the images agree, every
    figure is recorded, and a peer that is not installed is reported, not fatal."""
    pytest.importorskip("diffusers")
    out = tmp_path / "run"
    status = main(["bench", "--model", "demo", "--backends", "onnxruntime", "--steps", "3", "--repeats", "2",
                   "--warmup", "1", "--no-cold-start", "--threads", "1", "--compare", "diffusers,optimum-intel",
                   "--peer-python", sys.executable, "--out", str(out)])
    assert status == 0
    lines = report.read_jsonl(out / "results.jsonl")
    run = lines[0]
    assert run["engines"] == ["sdrt/onnxruntime/fp32", "diffusers/fp32"]
    optimum_missing = "optimum-intel" in run["missing"]
    assert optimum_missing == (missing_module(sys.executable, "optimum.intel") is not None)
    figures = {(x["engine"], x["metric"]): x for x in lines if x["type"] == "figure"}
    for engine in run["engines"]:
        for metric in ("load_s", "first_image_s", "image_s", "steps_per_s", "text_encoder_s", "unet_batch1_s",
                       "unet_batch2_s", "vae_decoder_s", "vae_encoder_s", "first_run_peak_rss_bytes",
                       "steady_peak_rss_bytes", "peak_rss_bytes", "size_bytes"):
            assert (engine, metric) in figures, (engine, metric)
        assert figures[(engine, "image_s")]["count"] == 2
    assert figures[("sdrt/onnxruntime/fp32", "unet_batch2_s")]["count"] == 2
    agreement = {x["engine"]: x["mean_abs_pixel_difference"] for x in lines if x["type"] == "agreement"}
    assert run["reference"] == "diffusers/fp32"
    assert agreement["sdrt/onnxruntime/fp32"] < 1.0  # fp32 target: under 1/255 on average
    assert any(x["type"] == "ratio" and x["metric"] == "image_s" for x in lines)
    assert run["peer_versions"]["diffusers/fp32"]["diffusers"]  # the peer environment's own versions
    assert run["networks"]["sdrt/onnxruntime/fp32"]["unet"] == "fp32"  # what each network ran in
    assert "Networks (the form each ran in): sdrt/onnxruntime/fp32: " in (out / "report.md").read_text()
    assert json.loads(json.dumps(run["settings"]))["steps"] == 3
    assert (out / "report.md").is_file() and (out / "latency.png").is_file()
    assert not (tmp_path / "run.partial").exists()


@pytest.mark.slow
def test_bench_runs_a_latent_consistency_model_against_diffusers(tiny_lcm_artifact, tiny_lcm_checkpoint, tmp_path):
    """A model that takes no negative prompt (guidance is an input of its UNet) runs in both
    workers, and one deterministic lcm step agrees with diffusers' LatentConsistencyModelPipeline."""
    pytest.importorskip("diffusers")
    out = tmp_path / "run"
    assert main(["bench", "--artifact", str(tiny_lcm_artifact), "--checkpoint", str(tiny_lcm_checkpoint),
                 "--backends", "onnxruntime", "--steps", "1", "--guidance", "8.5", "--sampler", "lcm", "--size",
                 "64x48", "--repeats", "1", "--warmup", "0", "--no-cold-start", "--threads", "1", "--compare",
                 "diffusers", "--peer-python", sys.executable, "--out", str(out)]) == 0
    lines = report.read_jsonl(out / "results.jsonl")
    agreement = {x["engine"]: x["mean_abs_pixel_difference"] for x in lines if x["type"] == "agreement"}
    assert agreement["sdrt/onnxruntime/fp32"] < 1.0


@pytest.mark.slow
def test_bench_runs_sdrt_in_its_default_configuration_and_leaves_no_engines(tmp_path, monkeypatch):
    """The first load and the fresh-process load are both measured; sdrt keeps no compiled
    engines on the CPU by default, so nothing is written to the user's cache."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("SDRT_CACHE", str(tmp_path / "user-cache"))
    out = tmp_path / "run"
    assert main(["bench", "--model", "demo", "--backends", "openvino", "--steps", "2", "--repeats", "1",
                 "--warmup", "0", "--threads", "1", "--out", str(out)]) == 0
    figures = {x["metric"] for x in report.read_jsonl(out / "results.jsonl") if x["type"] == "figure"}
    assert {"load_s", "load_warm_s", "cold_start_s"} <= figures
    assert not any(out.rglob("*.blob")) and not any(tmp_path.rglob("*.blob"))


def test_bench_refuses_bad_requests_before_running(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert main(["bench", "--model", "demo", "--out", str(tmp_path / "taken")]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["bench", "--model", "demo", "--size", "60x64", "--out", str(tmp_path / "a")]) == 2
    assert "multiples of 8" in capsys.readouterr().err
    assert main(["bench", "--model", "demo", "--backends", "tensorflow", "--out", str(tmp_path / "b")]) == 2
    assert "Unknown backend" in capsys.readouterr().err
    assert main(["bench", "--artifact", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "not an sdrt artifact" in capsys.readouterr().err


def test_sdrt_engine_names_its_worker():
    engine = sdrt_engine(Path("artifact"), "openvino", "bf16", threads=2)
    assert engine.name == "sdrt/openvino/bf16" and not engine.is_peer
    assert engine.command[-1] == "sdrt.benchmarks.sdrt_worker" and engine.spec["threads"] == 2


def test_on_disk_counts_the_files_an_engine_reads(tiny_artifact, tmp_path):
    """An artifact holding an fp32 and a smaller UNet variant: each engine's total counts its
    own UNet and the shared files, not the other precision's."""
    import shutil

    from sdrt.benchmarks.harness import folder_size
    from sdrt.benchmarks.sdrt_worker import engine_sizes
    from sdrt.models.manifest import sha256_file
    from sdrt.runtime.artifact import Artifact

    root = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, root)
    manifest = json.loads((root / "sdrt.json").read_text())
    folder = root / "variants" / "int8-weights" / "unet"
    folder.mkdir(parents=True)
    for name, size in (("model.xml", 1000), ("model.bin", 20000)):
        (folder / name).write_bytes(b"\0" * size)
        manifest["files"][f"variants/int8-weights/unet/{name}"] = {"sha256": sha256_file(folder / name), "size": size}
    manifest["components"]["unet"]["variants"] = {"int8-weights": {
        "precision": "int8-weights", "format": "openvino", "path": "variants/int8-weights/unet/model.xml",
        "files": ["variants/int8-weights/unet/model.xml", "variants/int8-weights/unet/model.bin"]}}
    artifact = Artifact(root, manifest)
    fp32_unet = sum((root / f).stat().st_size for f in manifest["components"]["unet"]["files"])
    whole = folder_size(root)

    fp32 = engine_sizes(artifact, {})
    small = engine_sizes(artifact, {"unet": "int8-weights"})
    assert fp32["unet"] == fp32_unet and small["unet"] == 21000
    assert fp32["total"] == whole - 21000
    assert small["total"] == whole - fp32_unet
    assert fp32["total"] - small["total"] == fp32_unet - 21000
