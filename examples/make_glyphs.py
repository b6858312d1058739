"""Write a handwriting-like dataset of drawn glyphs, where the classes are shapes and never intensity.

Ten classes, each a stroke template (polylines and arcs in a unit box): the letters F G K L N P R
and the digits 2 4 7. None of them is mirror-symmetric and no class is the mirror image of another,
so a horizontal flip turns every glyph into a shape that belongs to no class: flip augmentation
teaches a model an invariance this data does not have.

Every image is one glyph drawn with

* per-stroke jitter: every control point moves, every stroke shifts a little (and curves are
  smoothed after the jitter), so strokes need not meet exactly;
* an optional (half the images) elastic distortion: a smooth random warp of the strokes;
* a random slant (-0.3..0.3 shear), rotation (-12..12 degrees), scale (glyph height 55..90 % of the
  image), aspect ratio (0.8..1.2) and position; never mirrored;
* a random stroke width (5..12 % of the image side, a little different for every stroke);
* 0..3 distractors: short straight or bent strokes and small blobs, none of them a glyph;
* a random background level with a smooth random texture, random ink levels, and pixel noise,

anti-aliased (drawn at 4x and area-averaged) and written as a grayscale PNG, light ink on dark::

    ROOT/F/F_0000.png  ROOT/F/F_0001.png  ...  ROOT/7/7_0299.png

Each image's random draws come from ``numpy.random.default_rng([seed, class, index])``, so the
files depend only on ``--seed``, ``--per-class`` and ``--size``, not on ``--workers``. Rerunning
into the same ROOT replaces every class's images, so a smaller ``--per-class`` leaves no files
behind. Needs only numpy and Pillow.

Example:
    python examples/make_glyphs.py --root data/glyphs --per-class 300
    fewlabel run unfused --config examples/unfused_image.yaml --data.root data/glyphs --output runs/glyphs

and, to see what flips cost, the same with ``--output runs/glyphs_noflip`` and
``--teacher.augment.hflip 0 --student.augment.hflip 0 --finetune.augment.hflip 0``.

Timing: ``python examples/make_glyphs.py --root /tmp/glyphs --per-class 300`` (3,000 images of
28 x 28, 12 MB) took 6 s on 2 shared CPU cores, with 1 or 2 workers.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4  # draw at 4x and area-average: anti-aliased strokes

Stroke = tuple[np.ndarray, bool]  # (control points (n, 2) in the unit box, x right and y down; smooth curve?)


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float) -> list[tuple[float, float]]:
    """Control points every ~30 degrees along an ellipse arc from ``start`` to ``stop`` degrees.

    Angles grow clockwise on screen (y points down): 0 is right, 90 bottom, -90 top.
    """
    n = max(2, math.ceil(abs(stop - start) / 30) + 1)
    return [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
            for a in np.linspace(start, stop, n)]


def _bowl(top: float, bottom: float) -> list[tuple[float, float]]:
    """The bowl of P and R: out from the stem at ``top``, round on the right, back to the stem."""
    r = (bottom - top) / 2
    return [(0.28, top), (0.55, top), *_arc(0.55, top + r, 0.25, r, -90, 90), (0.55, bottom), (0.28, bottom)]


def _templates() -> dict[str, list[Stroke]]:
    def line(*points: tuple[float, float]) -> Stroke:
        return np.array(points, dtype=float), False

    def curve(*points: tuple[float, float]) -> Stroke:
        return np.array(points, dtype=float), True

    return {
        "F": [line((0.3, 0.05), (0.3, 0.95)), line((0.3, 0.05), (0.8, 0.05)), line((0.3, 0.48), (0.68, 0.48))],
        "G": [curve(*_arc(0.5, 0.5, 0.4, 0.45, -45, -340)), line((0.58, 0.56), (0.88, 0.56), (0.88, 0.74))],
        "K": [line((0.25, 0.05), (0.25, 0.95)), line((0.78, 0.05), (0.27, 0.55), (0.8, 0.95))],
        "L": [line((0.28, 0.05), (0.28, 0.95), (0.8, 0.95))],
        "N": [line((0.22, 0.95), (0.22, 0.05), (0.78, 0.95), (0.78, 0.05))],
        "P": [line((0.28, 0.95), (0.28, 0.05)), curve(*_bowl(0.05, 0.55))],
        "R": [line((0.28, 0.95), (0.28, 0.05)), curve(*_bowl(0.05, 0.52)), line((0.45, 0.52), (0.8, 0.95))],
        "2": [curve(*_arc(0.5, 0.3, 0.3, 0.25, 200, 400), (0.2, 0.95)), line((0.2, 0.95), (0.82, 0.95))],
        "4": [line((0.62, 0.95), (0.62, 0.05), (0.15, 0.68), (0.85, 0.68))],
        "7": [line((0.18, 0.08), (0.82, 0.08), (0.35, 0.95))],
    }


TEMPLATES = _templates()
CLASSES = tuple(TEMPLATES)


def smooth(points: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Chaikin corner cutting: a smooth curve through the polyline's interior, keeping its end points."""
    for _ in range(iterations):
        a, b = points[:-1], points[1:]
        cut = np.stack([0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b], axis=1).reshape(-1, 2)
        points = np.concatenate([points[:1], cut, points[-1:]])
    return points


def densify(points: np.ndarray, step: float = 0.02) -> np.ndarray:
    """Points at most ``step`` apart along the polyline, so that a warp bends straight segments too."""
    out = [points[:1]]
    for a, b in zip(points[:-1], points[1:]):
        n = max(1, math.ceil(np.linalg.norm(b - a) / step))
        out.append(a + (b - a) * np.arange(1, n + 1)[:, None] / n)
    return np.concatenate(out)


def elastic(points: np.ndarray, rng: np.random.Generator, amplitude: float = 0.04) -> np.ndarray:
    """Displace points by a smooth random field: three random plane waves per axis."""
    freqs = rng.uniform(-2.0, 2.0, (2, 3, 2))  # cycles per unit box, per axis and wave
    phases = rng.uniform(0.0, 2 * math.pi, (2, 3))
    amps = rng.uniform(0.0, amplitude, (2, 3)) / math.sqrt(3)
    waves = np.sin(2 * math.pi * np.einsum("awk,nk->anw", freqs, points) + phases[:, None, :])
    return points + np.einsum("anw,aw->na", waves, amps)


def glyph_strokes(name: str, rng: np.random.Generator) -> list[np.ndarray]:
    """The strokes of one random rendition of glyph ``name``, as dense points in the unit image box."""
    strokes = []
    for points, is_curve in TEMPLATES[name]:
        points = points + rng.normal(0.0, 0.025, points.shape) + rng.normal(0.0, 0.015, 2)
        strokes.append(densify(smooth(points) if is_curve else points))
    if rng.random() < 0.5:
        strokes = [elastic(points, rng) for points in strokes]  # one field for the whole glyph
    slant, angle = rng.uniform(-0.3, 0.3), math.radians(rng.uniform(-12.0, 12.0))
    height = rng.uniform(0.55, 0.9)
    scale = np.array([height * rng.uniform(0.8, 1.2), height])
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    shear = np.array([[1.0, -slant], [0.0, 1.0]])  # y points down: slant > 0 leans the top right
    strokes = [((points - 0.5) * scale) @ (rotation @ shear).T for points in strokes]
    every = np.concatenate(strokes)
    low, high = 0.04 - every.min(axis=0), 0.96 - every.max(axis=0)  # offsets keeping the glyph inside
    offset = np.where(low < high, rng.uniform(np.minimum(low, high), np.maximum(low, high)), (low + high) / 2)
    return [points + offset for points in strokes]


def distractors(rng: np.random.Generator) -> list[np.ndarray]:
    """0..3 short straight or bent strokes and small blobs (a blob is a stroke of one point)."""
    marks = []
    for _ in range(int(rng.integers(0, 4))):
        start = rng.uniform(0.05, 0.95, 2)
        if rng.random() < 0.3:
            marks.append(start[None, :])
            continue
        angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.08, 0.3)
        end = start + length * np.array([math.cos(angle), math.sin(angle)])
        bend = (start + end) / 2 + rng.normal(0.0, 0.3 * length, 2)
        marks.append(densify(np.stack([start, bend, end]) if rng.random() < 0.5 else np.stack([start, end])))
    return marks


def coverage(strokes: Iterable[np.ndarray], widths: Iterable[float], size: int) -> np.ndarray:
    """``(size, size)`` float coverage in ``[0, 1]`` of round-capped strokes (points in the unit box)."""
    side = size * SUPERSAMPLE
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    for points, width in zip(strokes, widths):
        pixels = [tuple(p) for p in points * side]
        w = max(1, round(width * side))
        if len(pixels) > 1:
            draw.line(pixels, fill=255, width=w, joint="curve")
        for x, y in (pixels[0], pixels[-1]):  # round caps (and a lone point's blob)
            draw.ellipse([x - w / 2, y - w / 2, x + w / 2, y + w / 2], fill=255)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float64) / 255


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size)`` smooth zero-mean noise: a random 4x4 grid upsampled bicubically."""
    grid = Image.fromarray(rng.standard_normal((4, 4)).astype(np.float32))
    return np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)


def draw_glyph(name: str, rng: np.random.Generator, size: int = 28) -> Image.Image:
    """One random grayscale (mode ``"L"``) ``size`` x ``size`` image of glyph ``name``."""
    strokes = glyph_strokes(name, rng)
    width = rng.uniform(0.05, 0.12)
    glyph = coverage(strokes, width * rng.uniform(0.85, 1.15, len(strokes)), size)
    marks = distractors(rng)
    clutter = coverage(marks, width * rng.uniform(0.6, 1.2, len(marks)), size)
    background = rng.uniform(0.0, 0.3) + rng.uniform(0.0, 0.08) * texture(rng, size)
    ink = rng.uniform(0.7, 1.0)
    image = background * (1 - clutter) + ink * rng.uniform(0.5, 1.0) * clutter
    image = image * (1 - glyph) + ink * glyph
    image += rng.normal(0.0, rng.uniform(0.0, 0.06), image.shape)
    return Image.fromarray(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8))


def write_glyph(task: tuple[int, int], root: Path, seed: int, size: int, width: int) -> None:
    """Write image ``index`` of class ``c`` (``task = (c, index)``) from its own random stream."""
    c, index = task
    name = CLASSES[c]
    draw_glyph(name, np.random.default_rng([seed, c, index]), size).save(root / name / f"{name}_{index:0{width}d}.png")


def _report(done: Iterable[None], per_class: int) -> None:
    """Consume the finished images in order, printing a line after each class."""
    for n, _ in enumerate(done, start=1):
        if n % per_class == 0:
            print(f"{CLASSES[n // per_class - 1]}: {per_class} images", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="output folder (ROOT/CLASS/*.png)")
    parser.add_argument("--per-class", type=int, default=300, help="images per glyph (default 300)")
    parser.add_argument("--size", type=int, default=28, help="image side in pixels (default 28)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes drawing in parallel (default: the number of CPUs)")
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error(f"--per-class must be at least 1, got {args.per_class}")
    if args.size < 8:
        parser.error(f"--size must be at least 8, got {args.size}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.seed < 0:
        parser.error(f"--seed must be non-negative, got {args.seed}")
    for name in CLASSES:
        folder = args.root / name
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"{name}_*.png"):  # a rerun with fewer images leaves no leftovers
            stale.unlink()
    width = max(4, len(str(args.per_class - 1)))
    job = functools.partial(write_glyph, root=args.root, seed=args.seed, size=args.size, width=width)
    tasks = [(c, i) for c in range(len(CLASSES)) for i in range(args.per_class)]
    if args.workers == 1:
        _report(map(job, tasks), args.per_class)
    else:
        with ProcessPoolExecutor(min(args.workers, len(tasks))) as pool:
            _report(pool.map(job, tasks, chunksize=32), args.per_class)
    print(f"wrote {len(tasks)} images to {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
