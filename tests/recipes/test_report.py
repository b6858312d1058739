"""The run folder's tables and pictures: results.csv / results.md, the label-efficiency curve, embedding maps."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewlabel.plugins.recipes.report import (
    plot_embedding_map,
    plot_label_efficiency,
    results_csv,
    results_markdown,
)

ROWS = [{"method": m, "labels_per_class": k, "accuracy_mean": a, "accuracy_std": 0.01 * k, "val_accuracy_mean": a,
         "num_draws": 5, "params": p}
        for m, p, accs in (("supervised", 1000, (0.5, 0.8)), ("unfused", 1000, (0.9, 0.95)))
        for k, a in zip((1, 5), accs)]


def test_tables() -> None:
    parsed = list(csv.DictReader(io.StringIO(results_csv(ROWS))))
    assert [(r["method"], int(r["labels_per_class"]), float(r["accuracy_mean"])) for r in parsed] == [
        (r["method"], r["labels_per_class"], r["accuracy_mean"]) for r in ROWS]
    assert all(r["lr"] == "" for r in parsed)
    lines = results_markdown([*ROWS[:3], {**ROWS[3], "lr": 0.01}]).splitlines()
    assert lines[0] == "| method | params | 1 label/class | 5 labels/class |"
    assert lines[2] == "| `supervised` | 1,000 | 50.00 ± 1.00 | 80.00 ± 5.00 |"
    assert lines[3] == "| `unfused` | 1,000 | 90.00 ± 1.00 | 95.00 ± 5.00 (lr 0.01) |"
    assert "over 5 label draws" in lines[-1]


def test_pictures_are_png_files(tmp_path: Path) -> None:
    curve = plot_label_efficiency(ROWS, tmp_path / "curve.png")
    with Image.open(curve) as image:
        assert image.format == "PNG" and image.width > 300
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 5
    truth = np.repeat(np.arange(3), 40)
    embeddings = centres[truth] + rng.normal(size=(120, 8))
    pseudo = truth.copy()
    pseudo[:10] = -1  # filtered samples are drawn grey
    path = plot_embedding_map(embeddings, {"true label": truth, "pseudo-label": pseudo}, tmp_path / "map.png", "teacher")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > image.height  # two panels side by side
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png", "map.png"]  # no temporary file left
    with pytest.raises(ValueError, match="3 entries for 120 rows"):
        plot_embedding_map(embeddings, {"bad": truth[:3]}, tmp_path / "x.png", "teacher")
    with pytest.raises(ValueError, match=r"needs a \(N >= 3, D\) array"):
        plot_embedding_map(embeddings[:2], {}, tmp_path / "x.png", "teacher")
