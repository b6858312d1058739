"""Write a small folder-per-class image dataset of drawn shapes, for trying ``examples/unfused_image.yaml``.

Six classes: circle, square, triangle, cross, ring, star. Every image is one shape of random size,
position, rotation and colour on a random background (flat colour, linear gradient or noise), with
an occasional distractor blob, at a random image size (24..96 px a side, not always square), as RGB
PNG::

    ROOT/circle/circle_000.png  ...  ROOT/star/star_079.png

The output depends only on ``--seed`` and ``--per-class``. Needs only numpy and Pillow.

Example:
    python examples/make_shapes.py --root data/shapes --per-class 80
    fewlabel run unfused --config examples/unfused_image.yaml --data.root data/shapes
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle", "cross", "ring", "star")
SUPERSAMPLE = 4  # draw at 4x and downsample: anti-aliased edges


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    n = len(radii)
    return [(cx + r * math.cos(angle + 2 * math.pi * i / n), cy + r * math.sin(angle + 2 * math.pi * i / n))
            for i, r in enumerate(radii)]


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _contrasting(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A random colour whose luminance differs from the background's mean by at least 60 (of 255)."""
    lum = lambda c: 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]  # noqa: E731
    bg = lum(background.reshape(-1, 3).mean(axis=0))
    for _ in range(100):
        colour = _colour(rng)
        if abs(lum(colour) - bg) >= 60:
            return colour
    return (255, 255, 255) if bg < 128 else (0, 0, 0)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """``(h, w, 3)`` uint8: a flat colour, a linear gradient between two colours, or smoothed noise."""
    kind = rng.integers(3)
    if kind == 0:
        return np.broadcast_to(np.array(_colour(rng), dtype=np.uint8), (h, w, 3)).copy()
    if kind == 1:
        a, b = np.array(_colour(rng), float), np.array(_colour(rng), float)
        theta = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        t = xx * math.cos(theta) + yy * math.sin(theta)
        t = (t - t.min()) / (np.ptp(t) + 1e-8)
        return (a + (b - a) * t[..., None]).astype(np.uint8)
    base = np.array(_colour(rng), float)
    noise = rng.normal(0, rng.uniform(10, 40), (h, w, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0))))


def draw_shape(shape: str, rng: np.random.Generator) -> Image.Image:
    """One random image of ``shape`` (one of :data:`CLASSES`)."""
    w = int(rng.integers(24, 97))
    h = int(np.clip(w * rng.uniform(0.75, 1.33), 24, 96))
    background = _background(rng, w, h)
    colour = _contrasting(rng, background)
    s = SUPERSAMPLE
    canvas = Image.fromarray(background).resize((w * s, h * s), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    side = min(w, h) * s
    r = rng.uniform(0.22, 0.42) * side  # circumradius
    cx = rng.uniform(r, w * s - r)
    cy = rng.uniform(r, h * s - r)
    angle = rng.uniform(0, 2 * math.pi)
    if rng.random() < 0.3:  # a small distractor blob somewhere, in another colour
        br = rng.uniform(0.04, 0.1) * side
        bx, by = rng.uniform(br, w * s - br), rng.uniform(br, h * s - br)
        draw.ellipse([bx - br, by - br, bx + br, by + br], fill=_contrasting(rng, background))
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "ring":
        width = rng.uniform(0.25, 0.45) * r
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(1, int(width)))
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, [r] * 4, angle), fill=colour)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, [r] * 3, angle), fill=colour)
    elif shape == "star":
        inner = rng.uniform(0.38, 0.5) * r
        draw.polygon(_polygon(cx, cy, [r, inner] * 5, angle), fill=colour)
    elif shape == "cross":
        arm = rng.uniform(0.25, 0.4) * r  # half width of the arms
        pts = []
        for k in range(4):  # walk round the 12 corners of a plus sign, then rotate
            a = angle + k * math.pi / 2
            c, sn = math.cos(a), math.sin(a)
            for u, v in ((r, -arm), (r, arm), (arm, arm)):
                pts.append((cx + u * c - v * sn, cy + u * sn + v * c))
        draw.polygon(pts, fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {CLASSES}")
    return canvas.resize((w, h), Image.Resampling.LANCZOS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="output folder (ROOT/CLASS/*.png)")
    parser.add_argument("--per-class", type=int, default=80, help="images per shape (default 80)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error("--per-class must be at least 1")
    for c, shape in enumerate(CLASSES):
        folder = args.root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"{shape}_*.png"):  # a rerun with fewer images leaves no leftovers
            stale.unlink()
        rng = np.random.default_rng([args.seed, c])
        for i in range(args.per_class):
            draw_shape(shape, rng).save(folder / f"{shape}_{i:03d}.png")
        print(f"{shape}: {args.per_class} images", flush=True)
    print(f"wrote {len(CLASSES) * args.per_class} images to {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
