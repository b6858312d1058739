"""What a recipe run leaves to read and look at: the results table as ``results.csv`` (one row per
method and label budget) and ``results.md`` (methods x budgets, mean ± sample std of test accuracy in
%), the label-efficiency curve (matplotlib, no display needed) and embedding maps as PNG."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import matplotlib
from lightning.pytorch.loggers import WandbLogger

matplotlib.use("Agg")  # files only: no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from fewlabel.callbacks.eval.projector import project_2d, render_scatter  # noqa: E402
from fewlabel.plugins.recipes.build import close_logger, make_logger  # noqa: E402
from fewlabel.plugins.recipes.stage import replace_atomically  # noqa: E402

__all__ = ["log_results", "plot_embedding_map", "plot_label_efficiency", "results_csv", "results_markdown",
           "write_tables"]

#: Points an embedding map shows at most (a seeded sample of the pool beyond).
MAP_POINTS = 1500

COLUMNS = ("method", "labels_per_class", "accuracy_mean", "accuracy_std", "val_accuracy_mean", "num_draws",
           "params", "lr")


def results_csv(rows: list[dict[str, Any]]) -> str:
    """The summary rows as CSV text (accuracies as fractions; ``lr`` empty unless chosen per budget)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in COLUMNS})
    return out.getvalue()


def results_markdown(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one line per method (in the order first seen), one column per label budget; a
    learning rate chosen on validation (``finetune.lr_candidates``) follows its cell."""
    budgets = sorted({r["labels_per_class"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cells = {(r["method"], r["labels_per_class"]): f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}"
             + (f" (lr {r['lr']:g})" if isinstance(r.get("lr"), float) else "") for r in rows}
    params = {r["method"]: r["params"] for r in rows}
    lines = ["| method | params | " + " | ".join(f"{k} label{'s' if k > 1 else ''}/class" for k in budgets) + " |",
             "|---|---:|" + "---:|" * len(budgets)]
    for method in methods:
        lines.append(f"| `{method}` | {params[method]:,} | "
                     + " | ".join(cells.get((method, k), "") for k in budgets) + " |")
    draws = sorted({r["num_draws"] for r in rows})
    lines.append("")
    lines.append(f"Test accuracy in %, mean ± sample std over {'/'.join(map(str, draws))} label draws.")
    return "\n".join(lines) + "\n"


def write_tables(output: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``results.csv`` and ``results.md`` into ``output`` (each replaced atomically)."""
    for name, text in (("results.csv", results_csv(rows)), ("results.md", results_markdown(rows))):
        replace_atomically(output / name, lambda tmp, text=text: tmp.write_text(text))


def log_results(kind: str, output: Path, recipe: str, config: dict[str, Any], rows: list[dict[str, Any]],
                pictures: list[Path]) -> None:
    """With a wandb ``kind``, one more run in the folder's group, ``<recipe>/results``: the whole recipe
    configuration as its config (recorded once, here), the results table as a ``wandb.Table`` and each
    picture as a ``wandb.Image`` (keyed by its file name). Other loggers: nothing."""
    logger = make_logger(kind, output, "results", recipe)
    if not isinstance(logger, WandbLogger):
        return
    import wandb

    run = logger.experiment
    run.config.update(config, allow_val_change=True)
    table = wandb.Table(columns=list(COLUMNS), data=[[row.get(column) for column in COLUMNS] for row in rows])
    run.log({"results": table, **{path.stem: wandb.Image(str(path)) for path in pictures if path.exists()}})
    close_logger(logger)


def _save(fig: Any, path: Path) -> Path:
    replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def plot_label_efficiency(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Test accuracy (%) against labels per class (log axis), one line per method, error bars = the
    sample std over the label draws; written to ``path`` (PNG)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["labels_per_class"])
        ax.errorbar([r["labels_per_class"] for r in mine], [100 * r["accuracy_mean"] for r in mine],
                    yerr=[100 * r["accuracy_std"] for r in mine], marker="o", capsize=3, label=method)
    budgets = sorted({r["labels_per_class"] for r in rows})
    ax.set_xscale("log")
    ax.set_xticks(budgets, [str(k) for k in budgets])
    ax.minorticks_off()
    ax.set_xlabel("labels per class")
    ax.set_ylabel("test accuracy (%)")
    draws = sorted({r["num_draws"] for r in rows})
    ax.set_title(title or f"label efficiency (mean ± std over {'/'.join(map(str, draws))} draws)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_embedding_map(embeddings: np.ndarray, colourings: dict[str, np.ndarray], path: Path, title: str,
                       seed: int = 0, panel: int = 480) -> Path:
    """A 2-D t-SNE map of ``embeddings`` (:func:`~fewlabel.callbacks.eval.projector.project_2d`, 500
    iterations, on a seeded sample of at most :data:`MAP_POINTS` rows), one ``panel``-pixel square per
    entry of ``colourings`` (e.g. true label, pseudo-label; ``-1`` = unknown, drawn first in grey), side
    by side (:func:`~fewlabel.callbacks.eval.projector.render_scatter`); written to ``path`` (PNG).

    Raises:
        ValueError: fewer than 3 rows, or a colouring whose length differs from the rows'.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) < 3:
        raise ValueError(f"an embedding map needs a (N >= 3, D) array, got shape {embeddings.shape}")
    for name, colours in colourings.items():
        if len(colours) != len(embeddings):
            raise ValueError(f"colouring {name!r} has {len(colours)} entries for {len(embeddings)} rows")
    rows = np.arange(len(embeddings))
    if len(rows) > MAP_POINTS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAP_POINTS, replace=False))
    points = project_2d(embeddings[rows], "tsne", seed=seed, tsne_iters=500)
    canvas = Image.new("RGB", (panel * len(colourings), panel), (255, 255, 255))
    for i, (name, colours) in enumerate(colourings.items()):
        image = render_scatter(points, np.asarray(colours)[rows], (panel, panel), title=f"{title}: {name}")
        canvas.paste(image, (i * panel, 0))
    replace_atomically(path, lambda tmp: canvas.save(tmp, format="PNG"))
    return path
