"""Run one recipe stage as an ordinary ``Trainer.fit``: resumable, and skipped once finished."""

from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from fewlabel.callbacks import RNGStateKeeper
from fewlabel.plugins.recipes.build import close_logger

FINAL = "final.ckpt"
LAST = "last.ckpt"
INFO = "info.json"
SETTINGS = "settings.json"


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for key in keys for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def check_settings(where: Path, stored: dict[str, Any] | None, settings: dict[str, Any]) -> None:
    """Refuse to reuse or resume results that were made with other settings (never a silent mix).

    Raises:
        ValueError: naming the keys that differ and what to do.
    """
    if stored is None:
        return
    stored = json.loads(json.dumps(stored))  # compare as JSON: tuples vs lists, int keys
    diff = _differences(stored, json.loads(json.dumps(settings)))
    if diff:
        raise ValueError(
            f"{where} was made with different settings (differs at: {', '.join(diff)}); "
            f"use a new --output folder or delete {where} to recompute it"
        )


def is_rank_zero() -> bool:
    """Whether this process is global rank 0 (also before any Trainer exists)."""
    return getattr(rank_zero_only, "rank", 0) == 0


def load_weights(module: L.LightningModule, checkpoint: Path) -> L.LightningModule:
    """Load a checkpoint's ``state_dict`` into ``module`` (the file is one this recipe wrote)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    return module


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (a crash never leaves a half-written file that looks finished)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def fit_stage(
    stage_dir: Path,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    make_trainer: Any,
    callbacks: list[L.Callback],
    settings: dict[str, Any] | None = None,
    describe: Callable[[], dict[str, Any]] | None = None,
) -> tuple[L.LightningModule, dict[str, Any], bool]:
    """Fit ``module`` unless ``stage_dir`` already holds its final weights.

    An interrupted stage resumes from ``stage_dir/last.ckpt`` (saved every epoch); a finished one
    (``final.ckpt`` + ``info.json``) is loaded instead of recomputed.

    Args:
        stage_dir: The stage's folder.
        module: A freshly built module; its weights are replaced by the stage's result.
        datamodule: The data.
        make_trainer: ``callable(callbacks) -> Trainer``.
        callbacks: Stage callbacks (their ``state_dict`` is in the checkpoints).
        settings: The configuration the stage's result depends on; reusing or resuming a stage made
            with other settings is an error.
        describe: Called after fit; what it returns is added to ``info`` (e.g. a callback's metrics).

    Returns:
        ``(module, info, reused)``: ``info`` holds the stage's logged metrics at the end of fit and
        ``reused`` tells whether the result came from disk.
    """
    stage_dir.mkdir(parents=True, exist_ok=True)
    final, info_path, settings_path = stage_dir / FINAL, stage_dir / INFO, stage_dir / SETTINGS
    settings = settings or {}
    check_settings(stage_dir, json.loads(settings_path.read_text()) if settings_path.exists() else None, settings)
    if not settings_path.exists() and is_rank_zero():
        write_json(settings_path, settings)
    if final.exists() and info_path.exists():
        return load_weights(module, final), json.loads(info_path.read_text()), True
    checkpoint = ModelCheckpoint(dirpath=stage_dir, filename="last", save_top_k=1, every_n_epochs=1,
                                 enable_version_counter=False)
    trainer = make_trainer([*callbacks, RNGStateKeeper(), checkpoint])
    last = stage_dir / LAST
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)
    except FloatingPointError as err:
        raise FloatingPointError(f"stage {stage_dir.name!r}: {err}") from err
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    info = {"metrics": metrics, "epochs": trainer.current_epoch, "global_step": trainer.global_step}
    info.update(describe() if describe is not None else {})
    if trainer.is_global_zero:
        tmp = stage_dir / (FINAL + ".tmp")
        torch.save({"state_dict": module.state_dict()}, tmp)
        os.replace(tmp, final)
        write_json(info_path, info)
    close_logger(trainer.logger)
    trainer.strategy.barrier()
    return module, info, False
