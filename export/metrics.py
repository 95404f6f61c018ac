"""Image quality against a reference image: PSNR and SSIM, the measures of the precision
variants' quality reports and of the benchmarks' precision comparisons (numpy only)."""
from __future__ import annotations

import numpy as np


def psnr(reference: np.ndarray, image: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images)."""
    error = np.mean((np.asarray(reference, np.float64) - np.asarray(image, np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(data_range**2 / error))


def ssim(reference: np.ndarray, image: np.ndarray, data_range: float = 255.0) -> float:
    """Mean structural similarity of two HWC images (Wang et al. 2004, eq. 13): an 11-tap
    Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, per channel, then averaged; as
    scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=-1), which the tests compare against."""
    x = np.asarray(reference, np.float64)
    y = np.asarray(image, np.float64)
    taps = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
    taps /= taps.sum()

    def blur(a: np.ndarray) -> np.ndarray:
        # Separable filter with mirrored edges (scipy.ndimage's "reflect"), then crop the 5-pixel
        # border as scikit-image does before averaging.
        padded = np.pad(a, ((5, 5), (5, 5), (0, 0)), mode="symmetric")
        rows = sum(w * padded[i:i + a.shape[0]] for i, w in enumerate(taps))
        return sum(w * rows[:, i:i + a.shape[1]] for i, w in enumerate(taps))

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean())
