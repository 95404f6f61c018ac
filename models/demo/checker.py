"""Read a shape scene back from an image, with plain image analysis (no learned model).

The checker is the demo model's quality oracle: prompt fidelity is the share of attributes a
prompt states that the checker reads back from the generated image.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from .scenes import ATTRIBUTES, COLOURS, SIZES

_PALETTE_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _PALETTE_NAMES], dtype=np.float64)
# Area of a shape of circumradius r, in units of r^2 (see scenes.shape_mask).
_AREA_PER_R2 = {"circle": np.pi, "square": 2.0, "triangle": 3 * np.sqrt(3) / 4}
_SIZE_NAMES = list(SIZES)
_SIZE_EDGES = [(a + b) / 2 for a, b in zip(list(SIZES.values())[:-1], list(SIZES.values())[1:])]


def _nearest_colour(rgb: np.ndarray, exclude: str | None = None) -> str:
    distances = np.linalg.norm(_PALETTE - rgb, axis=1)
    if exclude is not None:
        distances[_PALETTE_NAMES.index(exclude)] = np.inf
    return _PALETTE_NAMES[int(np.argmin(distances))]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, label = 0, 0, 0
    height, width = mask.shape
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        label += 1
        labels[start] = label
        queue, size = deque([start]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    queue.append((ny, nx))
        if size > best_size:
            best, best_size = label, size
    return labels == best if best else np.zeros_like(mask)


def _best_template(mask: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> str:
    """The shape whose outline, fitted to the mask's bounding box, overlaps the mask most (IoU).

    More tolerant of blur than a fill ratio: a square with rounded corners still overlaps
    the box far better than the inscribed ellipse does.
    """
    top, bottom, left, right = rows.min(), rows.max() + 1, columns.min(), columns.max() + 1
    height, width = bottom - top, right - left
    y, x = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    templates = {
        "circle": (y - 0.5) ** 2 + (x - 0.5) ** 2 <= 0.25,
        "square": np.ones((height, width), dtype=bool),
        "triangle": np.abs(x - 0.5) <= y / 2,  # apex at the top, base along the bottom
    }
    window = mask[top:bottom, left:right]
    scores = {name: (window & t).sum() / (window | t).sum() for name, t in templates.items()}
    return max(scores, key=scores.get)


def read_scene(image: np.ndarray) -> dict:
    """Attributes read from an (H, W, 3) uint8 image: shape, colour, background, size, position.

    An attribute the image does not show (no foreground found) is None.
    """
    pixels = np.asarray(image, dtype=np.float64)[..., :3]
    side = pixels.shape[0]
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    background_rgb = np.median(border, axis=0)
    background = _nearest_colour(background_rgb)
    result = dict.fromkeys(ATTRIBUTES)
    result["background"] = background

    # First pass: clearly-not-background pixels give the foreground colour.
    distance = np.linalg.norm(pixels - background_rgb, axis=2)
    core = _largest_component(distance > 60)
    if core.sum() < 4:
        return result
    strong = core & (distance >= np.percentile(distance[core], 50))
    foreground_rgb = np.median(pixels[strong], axis=0)
    result["colour"] = _nearest_colour(foreground_rgb, exclude=background)

    # Second pass: a pixel belongs to the shape when it is nearer the foreground colour, which
    # splits anti-aliased edges evenly, so the area is unbiased.
    nearer = np.linalg.norm(pixels - foreground_rgb, axis=2) < np.linalg.norm(pixels - background_rgb, axis=2)
    mask = _largest_component(nearer)
    rows, columns = np.nonzero(mask)
    area = mask.sum() / side**2
    shape = _best_template(mask, rows, columns)
    result["shape"] = shape

    radius = float(np.sqrt(area / _AREA_PER_R2[shape]))
    result["size"] = _SIZE_NAMES[int(np.searchsorted(_SIZE_EDGES, radius))]

    # Centres were drawn from the 3 x 3 cells of [r + 0.02, 1 - r - 0.02] (scenes.random_scene).
    centre = ((rows.mean() + 0.5) / side, (columns.mean() + 0.5) / side)
    low, high = radius + 0.02, 1 - radius - 0.02
    edges = [low + (high - low) / 3, low + 2 * (high - low) / 3]
    result["position"] = (int(np.searchsorted(edges, centre[0])), int(np.searchsorted(edges, centre[1])))
    return result


def fidelity(stated: dict, read: dict) -> dict[str, bool]:
    """For each attribute the prompt states, whether the checker read it back."""
    return {name: read.get(name) is not None and tuple(np.atleast_1d(read[name])) == tuple(np.atleast_1d(value))
            for name, value in stated.items()}
