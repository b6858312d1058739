"""One progress bar for a whole fit, for consoles and log files that a bar per epoch would flood."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import IO, Any

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from tqdm import tqdm

__all__ = ["StageProgressBar", "task_bar"]


class StageProgressBar(ProgressBar):
    """A single tqdm bar over a fit's optimizer steps (``trainer.estimated_stepping_batches``), with the
    latest ``train/loss`` after it; validation, test and predict passes draw no bar.

    Lightning's default bar draws a new bar every epoch; over hundreds of short epochs that is thousands
    of lines in a log file. Here a fit is one bar. On a terminal it redraws at tqdm's default pace;
    written to anything else (a file, a pipe) at most every ``file_interval_s`` seconds.

    Args:
        description: The bar's label, e.g. the stage's name.
        file: Where the bar goes (default ``sys.stderr``).
        file_interval_s: Least seconds between redraws off a terminal.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[StageProgressBar("teacher")], logger=False)  # doctest: +SKIP
    """

    def __init__(self, description: str = "fit", file: IO[str] | None = None, file_interval_s: float = 30.0) -> None:
        super().__init__()
        if not file_interval_s >= 0:
            raise ValueError(f"file_interval_s must be >= 0, got {file_interval_s!r}")
        self.description = description
        self.file = file
        self.file_interval_s = float(file_interval_s)
        self._enabled = True
        self.bar: tqdm | None = None

    def disable(self) -> None:
        """Draw nothing (Lightning calls this on non-zero ranks)."""
        self._enabled = False

    def enable(self) -> None:
        """Draw again."""
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def new_bar(self, description: str, total: int | None, unit: str, initial: int = 0) -> tqdm:
        """A tqdm bar drawn as this callback draws its own (a disabled one when this callback is disabled)."""
        out = self.file if self.file is not None else sys.stderr
        terminal = hasattr(out, "isatty") and out.isatty()
        return tqdm(total=total, desc=description, file=out, initial=initial, unit=unit, dynamic_ncols=terminal,
                    leave=True, mininterval=0.1 if terminal else self.file_interval_s, ascii=not terminal,
                    disable=not self._enabled)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled:
            return
        total = trainer.estimated_stepping_batches
        self.bar = self.new_bar(self.description, int(total) if math.isfinite(total) else None, "step",
                                initial=trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.bar is None:
            return
        loss = trainer.progress_bar_metrics.get("train/loss")
        if loss is not None:
            self.bar.set_postfix_str(f"train/loss={float(loss):.3f}", refresh=False)
        self.bar.update(trainer.global_step - self.bar.n)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print above the bar without breaking it."""
        if self.bar is not None:
            self.bar.write(" ".join(str(arg) for arg in args))
        else:
            print(*args, **kwargs)


@contextlib.contextmanager
def task_bar(trainer: L.Trainer, description: str, total: int | None, unit: str = "batch") -> Iterator[tqdm]:
    """A bar for work a callback does outside the training steps (a clustering pass), when the trainer draws
    a :class:`StageProgressBar`; otherwise (Lightning's own bar, none, a non-zero rank) a bar that draws
    nothing. Closed on leaving the block, also on error.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(enable_progress_bar=False, logger=False)
        >>> with task_bar(trainer, "pseudo-labels", total=3) as bar:
        ...     bar.update(3)
        >>> bar.disable  # this trainer draws no StageProgressBar
        True
    """
    drawer = trainer.progress_bar_callback
    bar = drawer.new_bar(description, total, unit) if isinstance(drawer, StageProgressBar) \
        else tqdm(total=total, disable=True)
    try:
        yield bar
    finally:
        bar.close()
