#!/usr/bin/env bash
# The GPU checks and the GPU benchmark in one run, for a machine lent for minutes (issue 8):
# the tests that need CUDA, then the torch CUDA path timed end to end at SD 1.5 sizes, then a
# short table (and the same with torch.compile, given up after 150 s). Under 6 minutes on
# an H100/H200, so that a rerun fits.
#
# The machine it is planned for has Python with torch (CUDA) and Triton, transformers,
# safetensors and onnxruntime (CPU), and no package registry: bring diffusers as a wheel in
# .whl/ (benchmarks/README.md says how). Results go to $OUT (default benchmarks/results/gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
site=$(mktemp -d)
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$site" .
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

status=0
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_step_kernels.py tests/test_torch_loop.py \
    -k "not compiled_unet_matches" 2>&1 | tee "$out/tests.log" || status=1
python3 -m sdrt.benchmarks.torch_cuda --config sd15 --size 512 --steps 50 --guidance 7.5 --runs 5 \
    --json "$out/torch_cuda_sd15.json" || status=1

# the same with torch.compile inside the CUDA graph, if the compile fits in the time left
timeout 150 python3 -m sdrt.benchmarks.torch_cuda --config sd15 --size 512 --steps 50 --guidance 7.5 --runs 3 \
    --compile --json "$out/torch_cuda_sd15_compiled.json" || echo "torch.compile run did not finish (status $?)"

python3 - "$out/torch_cuda_sd15.json" "$out/torch_cuda_sd15_compiled.json" <<'PY'
import json, os, sys
r = json.load(open(sys.argv[1]))
c = json.load(open(sys.argv[2])) if os.path.exists(sys.argv[2]) else None
print(f"\n{r['device']}, torch {r['torch']}: SD 1.5 sizes, {r['size']}x{r['size']}, {r['steps']} steps "
      f"{r['sampler']}, CFG {r['guidance']}, batch 1")
rows = [("end to end (CUDA graph), median", f"{r['end_to_end_s']:.3f} s", "target <= 0.45 s"),
        ("peak VRAM (allocated)", f"{r['peak_vram_gib']:.2f} GiB", "target <= 3.5 GB"),
        ("text encoder / denoise (eager) / VAE", f"{r['text_encoder_s']:.3f} / {r['denoise_eager_s']:.3f} / "
         f"{r['vae_decoder_s']:.3f} s", ""),
        ("graph vs eager, Triton vs torch step", f"{r['graph_vs_eager_max_rel']:.1e} / "
         f"{r['triton_vs_torch_step_max_rel']:.1e}", "max relative difference")]
if c is not None:
    rows += [("end to end (torch.compile + graph), median", f"{c['end_to_end_s']:.3f} s", "target <= 0.45 s"),
             ("  its peak VRAM / compile + first run", f"{c['peak_vram_gib']:.2f} GiB / {c['first_run_s']:.0f} s", ""),
             ("  compiled vs eager", f"{c['graph_vs_eager_max_rel']:.1e}", "max relative difference")]
for name, value, note in rows:
    print(f"| {name:40} | {value:>26} | {note:24} |")
PY
exit $status
