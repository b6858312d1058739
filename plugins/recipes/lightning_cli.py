"""``fewlabel fit|validate|test|predict``: Lightning's own :class:`~lightning.pytorch.cli.LightningCLI` over
every fewlabel LightningModule and datamodule (or a user's own), configured by ``class_path`` /
``init_args`` YAML and checked by jsonargparse against their constructors before anything runs.

Configs compose: ``fewlabel fit --config examples/configs/methods/simclr.yaml --config
examples/configs/callbacks/evaluation.yaml``; ``--print_config`` shows the merged result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning as L
from lightning.pytorch.cli import LightningCLI

__all__ = ["LIGHTNING_SUBCOMMANDS", "FewLabelCLI", "lightning_cli"]

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


class FewLabelCLI(LightningCLI):
    """Lightning's CLI, except that a constructor refusing its configured arguments (a checkpoint that does not
    exist, a value out of range) ends in one line naming the reason, not in jsonargparse's traceback around it.
    ``FEWLABEL_DEBUG=1`` shows the traceback.

    Example:
        >>> cli = FewLabelCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
        ...                   subclass_mode_data=True, args=["--config", "examples/configs/methods/simclr.yaml"],
        ...                   run=False)  # doctest: +SKIP
    """

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:
            if os.environ.get("FEWLABEL_DEBUG"):
                raise
            root: BaseException = err
            while root.__cause__ is not None:  # the constructor's own error, under jsonargparse's wrapping
                root = root.__cause__
            raise SystemExit(f"fewlabel: error: {type(root).__name__}: {root} (FEWLABEL_DEBUG=1 shows the "
                             f"traceback)") from None


def lightning_cli(args: Sequence[str] | None, run: bool = True) -> LightningCLI:
    """Run (or, with ``run=False``, only parse and instantiate) a LightningCLI on ``args`` (``None``: the
    command line's own arguments).

    Any :class:`~lightning.LightningModule` and :class:`~lightning.LightningDataModule` can be named by
    ``class_path``; with ``run=True`` the first argument is the subcommand (``fit``, ``validate``,
    ``test`` or ``predict``). The config that ran is saved next to the logs as Lightning does.

    Example:
        >>> cli = lightning_cli(["--config", "examples/configs/methods/simclr.yaml"], run=False)  # doctest: +SKIP
        >>> type(cli.model).__name__  # doctest: +SKIP
        'SimCLR'
    """
    return FewLabelCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       args=None if args is None else list(args), run=run, save_config_kwargs={"overwrite": True})
