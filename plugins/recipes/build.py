"""Build the recipe's parts (datamodule, loggers, trainers) from config sections."""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from fewlabel.callbacks import FiniteLossGuard, StageProgressBar
from fewlabel.datamodules import (
    AudioFolderDataModule,
    CIFAR10DataModule,
    DigitsDataModule,
    ESC50DataModule,
    FewLabelDataModule,
    HuggingFaceDataModule,
    ImageFolderDataModule,
    SpeechCommandsDataModule,
    STL10DataModule,
)
from fewlabel.plugins.registry import Registry

DATAMODULES: Registry[FewLabelDataModule] = Registry("datamodule")

#: Decorator that registers a :class:`~fewlabel.datamodules.FewLabelDataModule` class under a name that
#: a recipe's ``data.name`` can select: ``@register_datamodule("my_data")``.
register_datamodule = DATAMODULES.register

register_datamodule("audio_folder")(AudioFolderDataModule)
register_datamodule("cifar10")(CIFAR10DataModule)
register_datamodule("digits")(DigitsDataModule)
register_datamodule("esc50")(ESC50DataModule)
register_datamodule("huggingface")(HuggingFaceDataModule)
register_datamodule("image_folder")(ImageFolderDataModule)
register_datamodule("speech_commands")(SpeechCommandsDataModule)
register_datamodule("stl10")(STL10DataModule)
LOGGERS = ("wandb", "wandb-online", "csv", "none")


def create_datamodule(name: str, **kwargs: Any) -> FewLabelDataModule:
    """Build the datamodule registered under ``name`` with ``kwargs`` (nothing is loaded before ``setup()``).

    Raises:
        ValueError: ``name`` is not registered; the message gives the closest name and every valid one.

    Example:
        >>> dm = create_datamodule("digits", labels_per_class=5)
        >>> type(dm).__name__, dm.labels_per_class
        ('DigitsDataModule', 5)
    """
    return DATAMODULES.create(name, **kwargs)


def list_datamodules() -> list[str]:
    """Sorted names of the registered datamodules."""
    return DATAMODULES.names()


def make_datamodule(data: dict[str, Any]) -> FewLabelDataModule:
    """``data.name`` picks the datamodule; the other keys are its keyword arguments."""
    kwargs = dict(data)
    name = kwargs.pop("name", "digits")
    kwargs = {k: v for k, v in kwargs.items() if not (k == "root" and v is None)}
    return create_datamodule(name, **kwargs)


def wandb_group(output: Path) -> str:
    """The wandb group of every run a recipe logs into ``output``: the folder's name and a short hash of its
    absolute path, so a run folder's stages (also when resumed later) share one group and two folders
    never do."""
    resolved = output.resolve()
    return f"{resolved.name}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:6]}"


def wandb_logged_in() -> bool:
    """Whether wandb may log online: ``WANDB_MODE=online``, or (no ``WANDB_MODE``) the user is logged in, with
    an API key in ``WANDB_API_KEY`` or, where ``wandb login`` writes it, in ``~/.netrc`` for the wandb host
    (``WANDB_BASE_URL``, default api.wandb.ai). Reads no network."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode == "online"
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def make_logger(kind: str, output: Path, name: str, group: str, *, parent: Logger | bool = False,
                prefix: str = "") -> Logger | bool:
    """``wandb`` (offline unless the user is logged in, see :func:`wandb_logged_in`), ``wandb-online``,
    ``csv`` or ``none``.

    A wandb run is named ``<group>/<name>`` and joins the run folder's group (:func:`wandb_group`); a CSV
    log goes to ``output/logs/<group>/<name>``. With a wandb ``parent`` logger, the new logger writes into
    the parent's run under ``prefix`` (one wandb run for many short trainers instead of one each).
    """
    if kind not in LOGGERS:
        raise ValueError(f"unknown logger {kind!r}; choose one of {list(LOGGERS)}")
    if kind == "none":
        return False
    if kind == "csv":
        return CSVLogger(output / "logs", name=group, version=name)
    if isinstance(parent, WandbLogger):
        return WandbLogger(experiment=parent.experiment, prefix=prefix, log_model=False)
    return WandbLogger(project="fewlabel", name=f"{group}/{name}", group=wandb_group(output), save_dir=str(output),
                       offline=kind == "wandb" and not wandb_logged_in(), log_model=False)


_console = {"verbose": False}


def set_verbose(verbose: bool) -> None:
    """The console of recipe runs in this process (the ``fewlabel`` command calls it; ``--verbose``).

    Quiet (the default): one :class:`~fewlabel.callbacks.StageProgressBar` per stage; Lightning's info
    lines (accelerator banners, tips) and wandb's run banners hidden (``WANDB_SILENT``, unless set); the
    known deprecation notices of the installed libraries and the notices about the recipe's own choices
    (stage folders it resumes from, one-batch fine-tune epochs) filtered. fewlabel's own ``[fewlabel]``
    lines and every other warning stay. Verbose: Lightning's own bars and messages, and every warning.
    """
    _console["verbose"] = bool(verbose)
    level = logging.INFO if verbose else logging.WARNING
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        os.environ.setdefault("WANDB_SILENT", "true")  # no per-run banners and summaries (set it to see them)
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        # a stage folder holds the recipe's own files next to its checkpoints (resume is the recipe's)
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        # a few-label fine-tune has 1-2 batches an epoch: its losses are logged at epoch ends instead
        warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging")


def make_trainer(config: dict[str, Any], stage_trainer: dict[str, Any], *, logger: Logger | bool,
                 callbacks: list[L.Callback], progress: bool | str, checkpoint: bool) -> L.Trainer:
    """A ``lightning.Trainer`` from the recipe's defaults, updated with the global ``trainer`` section and
    then with the stage's own (so ``--trainer.enable_progress_bar false`` wins over ``progress``).

    ``logger``, ``callbacks`` and ``enable_checkpointing`` belong to the recipe (the config check refuses them);
    every trainer gets a :class:`~fewlabel.callbacks.FiniteLossGuard`. ``progress`` (a string: the bar's
    label) draws one :class:`~fewlabel.callbacks.StageProgressBar` for the fit, or Lightning's own bar
    after :func:`set_verbose`.
    """
    kwargs: dict[str, Any] = {"accelerator": "cpu", "devices": 1, "enable_model_summary": False,
                              "log_every_n_steps": 10, "num_sanity_val_steps": 0, "enable_progress_bar": bool(progress)}
    kwargs.update(config.get("trainer") or {})
    kwargs.update(stage_trainer or {})
    callbacks = [*callbacks, FiniteLossGuard()]
    if kwargs["enable_progress_bar"] and not _console["verbose"]:
        callbacks.append(StageProgressBar(progress if isinstance(progress, str) else "fit"))
    return L.Trainer(logger=logger, callbacks=callbacks, enable_checkpointing=checkpoint, **kwargs)


def close_logger(logger: Logger | bool) -> None:
    """Finish a wandb run so the next stage logs into a run of its own."""
    if isinstance(logger, WandbLogger):
        logger.experiment.finish()
