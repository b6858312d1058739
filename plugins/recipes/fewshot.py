"""``fewlabel fewshot``: few-shot episode accuracy of a checkpoint's encoder on a datamodule's classes.

The encoder is rebuilt from the recipe configuration (the ``student`` or ``teacher`` section's
``encoder`` spec, whichever fits the checkpoint) and its ``encoder.*`` weights are loaded from the
checkpoint: a recipe stage's ``final.ckpt`` or any Lightning checkpoint of a fewlabel module. The
configuration's ``data`` section names the datamodule (digits by default); the chosen split (the
held-out test split by default) is embedded once, and each head is evaluated over seeded N-way
K-shot Q-query episodes (:func:`fewlabel.plugins.evaluation.evaluate_episodes`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewlabel.datamodules import FewLabelDataModule
from fewlabel.plugins.encoders.base import build_encoder, checkpoint_weights
from fewlabel.plugins.evaluation.few_shot import check_episode_args, evaluate_episodes
from fewlabel.plugins.gather import gather_embeddings
from fewlabel.plugins.heads.registry import list_few_shot_heads
from fewlabel.plugins.recipes.build import DATAMODULES, make_datamodule
from fewlabel.plugins.recipes.stage import check_checkpoint
from fewlabel.plugins.recipes.validate import RecipeError, check_config

__all__ = ["evaluate_heads", "format_fewshot_table", "load_encoder", "pool_mean", "run_config_path", "run_fewshot"]

ENCODER_SECTIONS = ("student", "teacher")
SPLITS = ("test", "val")
CENTERS = ("pool", "support")


def run_config_path(checkpoint: str | Path) -> Path | None:
    """The ``config.yaml`` of the recipe run folder a stage checkpoint lies in (``RUN/stage/x.ckpt``), if any."""
    path = Path(checkpoint).resolve().parent.parent / "config.yaml"
    return path if path.is_file() else None


def _encoder_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    if checkpoint.is_file():
        check_checkpoint(checkpoint)
    try:
        return checkpoint_weights(checkpoint, "encoder.")
    except ValueError as err:
        raise RecipeError(str(err)) from err


def load_encoder(checkpoint: str | Path, config: dict[str, Any], section: str = "auto") -> tuple[nn.Module, str]:
    """Build the encoder of ``config[section]["encoder"]`` and load the checkpoint's ``encoder.*`` weights.

    Args:
        checkpoint: a recipe stage checkpoint (``final.ckpt``, ``last.ckpt``) or any checkpoint whose
            ``state_dict`` (or the file itself) holds the module's weights under ``encoder.``.
        config: the recipe configuration (its ``student`` / ``teacher`` sections' ``encoder`` specs).
        section: ``"student"``, ``"teacher"`` or ``"auto"`` (the first of them whose encoder takes the
            weights exactly: same keys and shapes).

    Returns:
        ``(encoder in eval mode on the CPU, the section it was built from)``.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        RecipeError: an unreadable checkpoint, one without encoder weights, or weights that no
            candidate encoder takes (naming the first mismatch of each).
    """
    if section != "auto" and section not in ENCODER_SECTIONS:
        raise RecipeError(f"encoder section must be 'auto' or one of {list(ENCODER_SECTIONS)}, got {section!r}")
    state = _encoder_state(Path(checkpoint))
    problems = []
    for candidate in ENCODER_SECTIONS if section == "auto" else (section,):
        spec = (config.get(candidate) or {}).get("encoder")
        if spec is None:
            problems.append(f"{candidate}: the configuration has no {candidate}.encoder")
            continue
        try:
            encoder = build_encoder(spec)
            encoder.load_state_dict(state)
        except Exception as err:  # noqa: BLE001 - try the next candidate, report all
            problems.append(f"{candidate} ({spec}): {str(err).strip().splitlines()[0]}")
            continue
        return encoder.eval(), candidate
    raise RecipeError(f"the encoder weights of {checkpoint} fit no encoder of the configuration: "
                      + "; ".join(problems) + " (pass the run's --config, or --encoder student|teacher)")


def pool_mean(model: nn.Module, dm: FewLabelDataModule, device: str = "cpu") -> np.ndarray:
    """The mean embedding of the unlabeled pool (sequential, unaugmented): SimpleShot's base mean, no labels used."""
    pool = gather_embeddings(model, dm.unlabeled_dataloader(train=False), device=device)
    return np.asarray(pool.embeddings, dtype=np.float64).mean(axis=0).astype(np.float32)


def _split_loader(dm: FewLabelDataModule, split: str) -> Any:
    if split not in SPLITS:
        raise RecipeError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return dm.test_dataloader() if split == "test" else dm.val_dataloader()


def evaluate_heads(
    embeddings: Any,
    labels: Any,
    heads: Sequence[str],
    *,
    n_way: int,
    shots: Sequence[int],
    n_query: int,
    num_episodes: int,
    seed: int = 0,
    base_mean: Any = None,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Every head at every shot count on the same seeded episodes; SimpleShot centres on ``base_mean`` if given.

    Returns:
        One row per (shots, head): ``head``, ``n_way``, ``k_shot``, ``n_query``, ``episodes``,
        ``accuracy``, ``ci95`` and ``seconds``.

    Raises:
        ValueError: as :func:`~fewlabel.plugins.evaluation.evaluate_episodes`.
    """
    rows = []
    for k in shots:
        for head in heads:
            kwargs = {"base_mean": base_mean} if head == "simpleshot" and base_mean is not None else {}
            start = time.perf_counter()
            result = evaluate_episodes(head, embeddings, labels, n_way, k, n_query, num_episodes, seed,
                                       head_kwargs=kwargs, device=device)
            rows.append({"head": head, "n_way": n_way, "k_shot": k, "n_query": n_query, "episodes": num_episodes,
                         "accuracy": result.mean, "ci95": result.ci95, "seconds": time.perf_counter() - start})
    return rows


def run_fewshot(
    checkpoint: str | Path,
    config: dict[str, Any],
    *,
    heads: Sequence[str] = ("protonet",),
    n_way: int = 5,
    shots: Sequence[int] = (1, 5),
    n_query: int = 15,
    num_episodes: int = 1000,
    seed: int = 0,
    split: str = "test",
    encoder: str = "auto",
    center: str = "pool",
    device: str = "cpu",
) -> dict[str, Any]:
    """Evaluate a checkpoint's encoder with few-shot heads over seeded episodes of a datamodule split.

    Args:
        checkpoint: see :func:`load_encoder`.
        config: the recipe configuration (:func:`~fewlabel.plugins.recipes.load_config`); its ``data``
            section builds the datamodule.
        heads: registered few-shot head names.
        n_way: classes per episode.
        shots: support samples per class; one evaluation per value.
        n_query: query samples per class.
        num_episodes: episodes per (head, shots) pair; every head sees the same episodes.
        seed: seed of the episode draws.
        split: ``"test"`` (held out) or ``"val"``.
        encoder: which configuration section builds the encoder (see :func:`load_encoder`).
        center: SimpleShot's centring vector: ``"pool"`` = the mean embedding of the unlabeled pool
            (the "base" data the paper centres on), ``"support"`` = each episode's support mean.
        device: where the encoder and the heads run.

    Returns:
        ``{"checkpoint", "encoder", "embed_dim", "data", "split", "samples", "rows", "seconds"}``; each row
        holds ``head``, ``n_way``, ``k_shot``, ``n_query``, ``episodes``, ``accuracy`` and ``ci95``.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        RecipeError: a bad configuration, head, count or checkpoint, or a split with too few samples
            per class for the episodes.
    """
    valid = list_few_shot_heads()
    unknown = [h for h in heads if h not in valid]
    if unknown or not heads:
        raise RecipeError(f"unknown few-shot head(s) {unknown}; choose from {valid}")
    if center not in CENTERS:
        raise RecipeError(f"center must be one of {list(CENTERS)}, got {center!r}")
    try:
        for k in shots:
            check_episode_args(n_way, k, n_query, num_episodes)
    except ValueError as err:
        raise RecipeError(str(err)) from None
    start = time.perf_counter()
    check_config(config, DATAMODULES)
    threads = config.get("num_threads")
    if threads is not None:
        torch.set_num_threads(int(threads))
    model, section = load_encoder(checkpoint, config, encoder)
    model.to(device)
    try:
        dm = make_datamodule(config["data"])
        dm.setup("fit")
    except RecipeError:
        raise
    except Exception as err:  # noqa: BLE001 - a data problem, reported in one line
        raise RecipeError(f"data: {str(err).strip().splitlines()[0]}") from err
    data = gather_embeddings(model, _split_loader(dm, split), device=device)
    keep = data.labels >= 0
    x, y = data.embeddings[keep], data.labels[keep]
    base_mean = pool_mean(model, dm, device) if "simpleshot" in heads and center == "pool" else None
    try:
        rows = evaluate_heads(x, y, heads, n_way=n_way, shots=shots, n_query=n_query, num_episodes=num_episodes,
                              seed=seed, base_mean=base_mean, device=device)
    except ValueError as err:
        raise RecipeError(f"{split} split: {err}") from None
    return {"checkpoint": str(checkpoint), "encoder": section, "embed_dim": int(x.shape[1]),
            "data": config["data"].get("name", "digits"), "split": split, "samples": int(x.shape[0]),
            "rows": rows, "seconds": time.perf_counter() - start}


def format_fewshot_table(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`run_fewshot`'s rows (accuracy and 95 % CI in percent)."""
    lines = [f"{result['checkpoint']}: {result['encoder']} encoder ({result['embed_dim']}-d), "
             f"{result['data']} {result['split']} split ({result['samples']} samples)",
             f"{'head':<12} {'ways':>4} {'shots':>5} {'queries':>7} {'episodes':>8} {'accuracy % (95% CI)':>20}"]
    for r in result["rows"]:
        acc = f"{100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f}"
        lines.append(f"{r['head']:<12} {r['n_way']:>4} {r['k_shot']:>5} {r['n_query']:>7} {r['episodes']:>8} "
                     f"{acc:>20}")
    return "\n".join(lines)
