"""The demo model's training recipe runs, logs its losses and resumes where it stopped."""
import csv

import pytest

pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from sdrt.models.demo.train import train  # noqa: E402


def test_stages_train_resume_and_leave_a_loadable_pipeline(tmp_path):
    folder = tmp_path / "demo"
    vae = train(folder, "vae", minutes=5, max_steps=2, batch=4, progress=False)
    assert vae["step"] == 2
    first = train(folder, "unet", minutes=5, max_steps=2, batch=4, progress=False)
    again = train(folder, "unet", minutes=5, max_steps=1, batch=4, progress=False)
    assert (first["step"], again["step"], again["steps_this_run"]) == (2, 3, 1)
    with open(folder / "training" / "unet_loss.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and all(float(r["loss"]) > 0 for r in rows)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                             requires_safety_checker=False)
    assert pipe.vae.config.scaling_factor != 1.0  # measured from the trained VAE's latents
    assert pipe.unet.config.sample_size * 4 == 64


def test_unknown_stage(tmp_path):
    with pytest.raises(ValueError, match="Unknown stage 'gan'; choose one of: vae, unet"):
        train(tmp_path, "gan", minutes=1, progress=False)
