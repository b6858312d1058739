"""Run one recipe stage as an ordinary ``Trainer.fit``: resumable, and skipped once finished."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from fewlabel.callbacks import RNGStateKeeper
from fewlabel.plugins.encoders.base import load_checkpoint_weights
from fewlabel.plugins.recipes.build import close_logger
from fewlabel.plugins.recipes.validate import RecipeError

FINAL = "final.ckpt"
LAST = "last.ckpt"
INFO = "info.json"
SETTINGS = "settings.json"
LOCK = ".fewlabel.lock"


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for key in keys for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def stale_keys(stored: dict[str, Any] | None, settings: dict[str, Any]) -> list[str]:
    """The keys at which ``stored`` settings differ from ``settings`` (compared as JSON); [] if none stored."""
    if stored is None:
        return []
    return _differences(json.loads(json.dumps(stored)), json.loads(json.dumps(settings)))


def check_settings(where: Path, stored: dict[str, Any] | None, settings: dict[str, Any]) -> None:
    """Refuse to reuse or resume results that were made with other settings (never a silent mix).

    Raises:
        RecipeError: naming the keys that differ and what to do.
    """
    diff = stale_keys(stored, settings)
    if diff:
        raise RecipeError(
            f"{where} was made with different settings (differs at: {', '.join(diff)}); "
            f"rerun with --recompute to recompute it, use a new --output folder, or delete {where}"
        )


def stage_results(stage_dir: Path) -> bool:
    """Whether ``stage_dir`` holds anything a run would reuse or resume (a final or last checkpoint)."""
    return (stage_dir / FINAL).exists() or (stage_dir / LAST).exists()


def stored_settings(stage_dir: Path) -> dict[str, Any] | None:
    """The stored settings of a stage folder that holds results, else ``None`` (nothing to protect)."""
    path = stage_dir / SETTINGS
    return json.loads(path.read_text()) if stage_results(stage_dir) and path.exists() else None


def check_checkpoint(path: Path) -> None:
    """Refuse a truncated or corrupt checkpoint file before Lightning fails deep inside ``torch.load``.

    Raises:
        RecipeError: naming the file and the fix.
    """
    if not path.exists():
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        bad = str(err)
    if bad is not None:
        raise RecipeError(f"checkpoint {path} is unreadable (truncated or corrupt: {bad}); delete it to restart "
                          f"that stage, or rerun with --recompute")


def remove_stage(path: Path) -> None:
    """Delete a stage folder or a result file (``--recompute``)."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def check_run_folder(stages: list[tuple[str, Path, dict[str, Any] | None, dict[str, Any]]], recompute: bool) -> list[str]:
    """Find every stage whose stored results were made with other settings, before anything runs.

    Args:
        stages: ``(name, path, stored settings or None, current settings)`` for every stage and run.
        recompute: Delete the stale results (they are recomputed) instead of refusing.

    Returns:
        The names of the stages that were deleted.

    Raises:
        RecipeError: Stale results exist and ``recompute`` is false; the message names every stale
            stage, the keys that differ, and the flag that recomputes them.
    """
    stale = [(name, path, stale_keys(stored, settings)) for name, path, stored, settings in stages]
    stale = [(name, path, keys) for name, path, keys in stale if keys]
    if stale and not recompute:
        listing = "; ".join(f"{name} (differs at: {', '.join(keys)})" for name, _, keys in stale)
        raise RecipeError(f"{len(stale)} finished or interrupted stage(s) in this --output folder were made with "
                          f"different settings: {listing}. Rerun with --recompute to delete and recompute them, "
                          f"or use a new --output folder")
    if is_rank_zero():
        for _, path, _ in stale:
            remove_stage(path)
    return [name for name, _, _ in stale]


@contextlib.contextmanager
def hold_run_folder(output: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``output`` for the duration of a run (rank 0 only).

    The lock is an ``flock`` on ``output/.fewlabel.lock``: the operating system releases it when the
    process ends, however it ends, so a killed run never leaves a stale lock behind.

    Raises:
        RecipeError: another live process holds the folder.
    """
    if not is_rank_zero():
        yield
        return
    output.mkdir(parents=True, exist_ok=True)
    with open(output / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise RecipeError(f"{output} is in use by a running fewlabel command ({owner}); wait for it to finish "
                              f"or choose another --output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_rank_zero() -> bool:
    """Whether this process is global rank 0 (also before any Trainer exists)."""
    return getattr(rank_zero_only, "rank", 0) == 0


def load_weights(module: L.LightningModule, checkpoint: Path) -> L.LightningModule:
    """Load a checkpoint's ``state_dict`` into ``module`` (the file is one this recipe wrote)."""
    try:
        return load_checkpoint_weights(module, checkpoint, "", "the module this configuration builds")
    except ValueError as err:
        raise RecipeError(f"{err} (written by another fewlabel version?); delete {checkpoint.parent} to recompute "
                          f"that stage") from err


def replace_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` into ``<path>.tmp``, then move it over ``path``: a crash never leaves a half-written
    file that looks finished. ``write`` must not infer the format from the name (it ends in ``.tmp``)."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (:func:`replace_atomically`)."""
    replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, sort_keys=True)))


def fit_stage(
    stage_dir: Path,
    module: L.LightningModule,
    train_dataloaders: Any,
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
        train_dataloaders: The stage's training loader (or a zero-argument callable returning it).
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
    check_settings(stage_dir, stored_settings(stage_dir), settings)
    if is_rank_zero():  # describes what the folder will hold; no results yet means nothing to protect
        write_json(settings_path, settings)
    if final.exists() and info_path.exists():
        check_checkpoint(final)
        return load_weights(module, final), json.loads(info_path.read_text()), True
    checkpoint = ModelCheckpoint(dirpath=stage_dir, filename="last", save_top_k=1, every_n_epochs=1,
                                 enable_version_counter=False)
    trainer = make_trainer([*callbacks, RNGStateKeeper(), checkpoint])
    for logger in trainer.loggers:  # what this stage was made with (the module logs its own hyperparameters)
        logger.log_hyperparams({"stage": stage_dir.name, "settings": settings})
    last = stage_dir / LAST
    check_checkpoint(last)
    try:
        loader = train_dataloaders() if callable(train_dataloaders) else train_dataloaders
        trainer.fit(module, train_dataloaders=loader, ckpt_path=str(last) if last.exists() else None)
    except FloatingPointError as err:
        raise FloatingPointError(f"stage {stage_dir.name!r}: {err}") from err
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    info = {"metrics": metrics, "epochs": trainer.current_epoch, "global_step": trainer.global_step}
    info.update(describe() if describe is not None else {})
    if trainer.is_global_zero:
        replace_atomically(final, lambda tmp: torch.save({"state_dict": module.state_dict()}, tmp))
        write_json(info_path, info)
    close_logger(trainer.logger)
    trainer.strategy.barrier()
    return module, info, False
