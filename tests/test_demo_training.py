"""The demo model's training recipe runs, logs its losses and resumes where it stopped."""
import csv
import json

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from sdrt.models.demo.train import train  # noqa: E402


@pytest.mark.slow
def test_stages_train_resume_and_leave_a_loadable_pipeline(tmp_path):
    folder = tmp_path / "demo"
    vae = train(folder, "vae", minutes=5, max_steps=2, batch=4, progress=False)
    assert vae["step"] == 2
    first = train(folder, "unet", minutes=5, max_steps=2, batch=4, pool_size=16, progress=False)
    again = train(folder, "unet", minutes=5, max_steps=1, batch=4, pool_size=16, progress=False)
    assert (first["step"], again["step"], again["steps_this_run"]) == (2, 3, 1)
    with open(folder / "training" / "unet_loss.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and all(float(r["loss"]) > 0 for r in rows)
    import numpy as np

    with np.load(folder / "training" / "latent_pool.npz") as pool:  # built once, reused on resume
        assert pool["mean"].shape == (16, 4, 16, 16) and len(json.loads(str(pool["scenes"]))) == 16
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                             requires_safety_checker=False)
    assert pipe.vae.config.scaling_factor != 1.0  # measured from the trained VAE's latents
    assert pipe.unet.config.sample_size * 4 == 64
    # the folder holds the moving average, training/ the raw weights the optimizer resumes from
    raw = diffusers.UNet2DConditionModel.from_pretrained(folder / "training" / "unet_raw" / "unet")
    assert any(not torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), raw.parameters()))


def test_unknown_stage(tmp_path):
    with pytest.raises(ValueError, match="Unknown stage 'gan'; choose one of: vae, unet"):
        train(tmp_path, "gan", minutes=1, progress=False)


def test_training_noise_has_unit_variance_and_hides_the_background():
    from sdrt.models.demo.train import multiresolution_noise

    torch.manual_seed(0)
    noise = multiresolution_noise((4096, 4, 16, 16))
    assert abs(float(noise.std()) - 1.0) < 0.01 and abs(float(noise.mean())) < 0.01
    # the per-channel mean (what a solid background shifts) varies several times more than in white noise
    assert float(noise.mean(dim=(2, 3)).std()) > 2.5 / 16
