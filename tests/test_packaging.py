"""`pip install .` (not only -e) gives a working package with its data files."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_regular_install_has_every_subpackage_and_data(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(ROOT)], capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    check = subprocess.run(
        [sys.executable, "-c",
         "import sdrt, sdrt.export.exporter, sdrt.runtime.backends.onnxruntime, sdrt.kernels.image, sdrt.benchmarks;"
         "from sdrt.models.clip_vocab import clip_vocab; from sdrt.models.manifest import manifest_schema;"
         "assert len(clip_vocab()) == 49408; assert manifest_schema()['title'];"
         "from sdrt.models.demo.evaluation import load_evaluation_prompts;"
         "assert len(load_evaluation_prompts()) == 100;"
         "sdrt.open_artifact(sdrt.demo_artifact());"
         "from sdrt.models.demo import demo_checkpoint;"
         "assert (demo_checkpoint() / 'unet' / 'diffusion_pytorch_model.safetensors').is_file();"
         "print(sdrt.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().startswith(str(target))
