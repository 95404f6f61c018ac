"""Scenes of one coloured shape on a coloured background: attributes, rendering, captions.

A scene has five attributes: shape, colour, background, size and position. Captions state a
random subset of them ("a small red circle in the top left on a blue background"), and a
share of captions is empty, so that classifier-free guidance and negative prompts have
something to learn from.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Colours far enough apart in RGB for a nearest-colour reading to be unambiguous.
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 180),
    "orange": (250, 140, 20),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.16, "medium": 0.23, "large": 0.31}  # circumradius as a fraction of the side
# 3 x 3 grid of positions: (row, column) -> phrase
POSITIONS = {
    (0, 0): "in the top left", (0, 1): "at the top", (0, 2): "in the top right",
    (1, 0): "on the left", (1, 1): "in the center", (1, 2): "on the right",
    (2, 0): "in the bottom left", (2, 1): "at the bottom", (2, 2): "in the bottom right",
}
ATTRIBUTES = ("shape", "colour", "background", "size", "position")


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    size: str
    position: tuple[int, int]  # (row, column) in the 3 x 3 grid
    # exact placement, as fractions of the side, and radius jitter; not captioned
    centre: tuple[float, float] = (0.5, 0.5)
    radius: float = 0.23

    def attributes(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k in ATTRIBUTES}


def random_scene(rng: np.random.Generator) -> Scene:
    shape = SHAPES[rng.integers(len(SHAPES))]
    names = list(COLOURS)
    colour = names[rng.integers(len(names))]
    background = [c for c in names if c != colour][rng.integers(len(names) - 1)]
    size = list(SIZES)[rng.integers(len(SIZES))]
    row, column = int(rng.integers(3)), int(rng.integers(3))
    radius = SIZES[size] * float(rng.uniform(0.93, 1.07))
    # The shape's centre lies in the middle 80% of its grid cell, with the whole shape inside
    # the image; the gaps between cells keep "left" and "center" apart for the checker.
    low, high = radius + 0.02, 1 - radius - 0.02
    cells = np.linspace(low, high, 4)
    margin = 0.1 * (cells[1] - cells[0])
    y = float(rng.uniform(cells[row] + margin, cells[row + 1] - margin))
    x = float(rng.uniform(cells[column] + margin, cells[column + 1] - margin))
    return Scene(shape, colour, background, size, (row, column), (y, x), radius)


def shape_mask(shape: str, centre: tuple[float, float], radius: float, side: int, supersample: int = 4) -> np.ndarray:
    """Coverage in [0, 1] of each pixel by the shape (anti-aliased by supersampling)."""
    n = side * supersample
    coords = (np.arange(n) + 0.5) / n
    y, x = np.meshgrid(coords, coords, indexing="ij")
    dy, dx = y - centre[0], x - centre[1]
    if shape == "circle":
        inside = dy**2 + dx**2 <= radius**2
    elif shape == "square":
        half = radius / np.sqrt(2)  # corners on the circumcircle
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    elif shape == "triangle":
        # Upright equilateral triangle with the given circumradius.
        bottom = centre[0] + radius / 2
        top = centre[0] - radius
        half_width = (y - top) / (1.5 * radius) * (radius * np.sqrt(3) / 2)
        inside = (y >= top) & (y <= bottom) & (np.abs(dx) <= half_width)
    else:
        raise ValueError(f"Unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}.")
    return inside.reshape(side, supersample, side, supersample).mean(axis=(1, 3))


def render(scene: Scene, side: int = 64, rng: np.random.Generator | None = None) -> np.ndarray:
    """The scene as an (side, side, 3) uint8 image; `rng` adds slight colour jitter."""
    background = np.array(COLOURS[scene.background], dtype=np.float64)
    foreground = np.array(COLOURS[scene.colour], dtype=np.float64)
    if rng is not None:
        background = background + rng.uniform(-12, 12, 3)
        foreground = foreground + rng.uniform(-12, 12, 3)
    coverage = shape_mask(scene.shape, scene.centre, scene.radius, side)[..., None]
    image = background * (1 - coverage) + foreground * coverage
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def caption(scene: Scene, rng: np.random.Generator, *, drop: float = 0.3, empty: float = 0.1) -> str:
    """A caption stating a random subset of the scene's attributes ("" with probability `empty`)."""
    if rng.random() < empty:
        return ""
    keep = {a: rng.random() >= drop for a in ATTRIBUTES}
    keep["shape"] = keep["shape"] or rng.random() < 0.5  # the noun is rarely missing
    return describe({a: v for a, v in scene.attributes().items() if keep[a]})


def describe(attributes: dict) -> str:
    """The caption for a set of attributes, in one fixed template."""
    words = ["a"]
    if "size" in attributes:
        words.append(attributes["size"])
    if "colour" in attributes:
        words.append(attributes["colour"])
    words.append(attributes.get("shape", "shape"))
    if "position" in attributes:
        words.append(POSITIONS[tuple(attributes["position"])])
    if "background" in attributes:
        words.append(f"on a {attributes['background']} background")
    return " ".join(words)


def parse(text: str) -> dict:
    """The attributes a caption states (the inverse of `describe`, tolerant of word order)."""
    text = " " + text.lower().strip() + " "
    attributes: dict = {}
    background = None
    for colour in COLOURS:
        if f" {colour} background" in text:
            background = colour
            attributes["background"] = colour
    for colour in COLOURS:
        if f" {colour} " in text and (colour != background or text.count(f" {colour} ") > 1):
            attributes["colour"] = colour
            break
    for shape in SHAPES:
        if f" {shape}" in text:
            attributes["shape"] = shape
    for size in SIZES:
        if f" {size} " in text:
            attributes["size"] = size
    for position, phrase in POSITIONS.items():
        if f" {phrase} " in text:
            attributes["position"] = position
    return attributes
