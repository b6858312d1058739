"""Adapt a classifier to the test stream during ``trainer.test`` / ``trainer.predict``."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from fewlabel.plugins.tta import ModelFlags, TTAWrapper, check_tta_kwargs, create_tta, softmax_entropy

__all__ = ["TestTimeAdaptation"]

STAGES = ("test", "predict")


class _EncoderHead(nn.Module):
    """``head(encoder(x))`` over the module's own encoder and head (shared, not copied)."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


class TestTimeAdaptation(L.Callback):
    """Test-time adaptation of ``pl_module.head(pl_module.encoder(x))`` during test and predict.

    Contract with the LightningModule: it has ``.encoder`` (an ``nn.Module``) and ``.head`` (an
    ``nn.Module``; an ``nn.Linear`` for T3A), its logits are ``head(encoder(x))``, and its ``test_step`` /
    ``predict_step`` obtain them by calling the module, ``self(x)`` (fewlabel's
    :class:`~fewlabel.plugins.Classifier` does all of this). Checked in ``setup``.

    How: at ``on_test_start`` / ``on_predict_start`` the callback builds the method's wrapper
    (:func:`~fewlabel.plugins.tta.create_tta`) around ``head(encoder(.))`` and replaces the module's
    ``forward`` by an instance attribute that calls it; so every ``self(x)`` in a test or predict step is
    one adaptation step on ``x`` and returns the adapted outputs (for Tent, EATA and SAR: the outputs of
    the forward pass before the update, as in the authors' code; for T3A: the adjusted-prototype scores).
    At ``on_test_end`` / ``on_predict_end`` (or on an exception) the class's ``forward`` comes back, the
    flags the method changed (train/eval modes, ``requires_grad``, BatchNorm ``track_running_stats``) are put
    back, and with ``restore=True`` the encoder's and head's weights and buffers return to their values
    at the start. ``validate`` and ``fit`` are not touched.

    Protocol (logged at the start, to the console and as logger hyperparameters ``tta/*``):

    * continual (``episodic=False``): adaptation carries over from batch to batch for the whole run
      (every test dataloader, in order); each ``trainer.test`` / ``trainer.predict`` starts from the
      module's weights, unless the callback was given a saved state (below);
    * episodic (``episodic=True``): every batch is adapted from the module's weights at the start;
    * ``reset_on_shift=t``: before each batch, the mean entropy of the current adapted predictions on it
      (one extra forward pass, no adaptation), divided by ``ln C``, is compared with its mean over the
      batches since the last reset; a jump of more than ``t`` resets the method to the start state before
      the batch is adapted (the mean then restarts from this batch). ``None``: never.

    Logged during ``trainer.test``: ``tta/entropy`` (mean softmax entropy of the adapted outputs, epoch mean
    over ranks) and ``tta/resets`` (shift resets, summed over ranks).

    Needs gradients at test time: the Trainer must be built with ``inference_mode=False``. Under DDP each
    rank adapts its own copy on its own shard of the test stream (Lightning does not wrap the module in
    DDP for test or predict, so nothing is synchronised). Under ``bf16-mixed`` the forward runs in bfloat16
    and the entropy, the T3A prototypes and the parameter updates in float32.

    Resuming: ``state_dict()`` holds the adapted state (the tensors the method changes, the optimizer and
    the method's own state, the shift statistics and counters) as of the end of the last run, or of now
    during a run. After ``load_state_dict`` (also done by ``trainer.test(ckpt_path=...)``), the next run
    starts from that state instead of from scratch, so a stream split over two runs ends exactly where
    one uninterrupted run would.

    Args:
        method: ``"bn_adapt"``, ``"eata"``, ``"sar"``, ``"t3a"`` or ``"tent"`` (or one added with
            :func:`~fewlabel.plugins.tta.register_tta`).
        episodic: The episodic protocol instead of the continual one.
        reset_on_shift: Entropy-jump threshold for a reset (fraction of ``ln C``), or ``None``.
        restore: Put the encoder's and head's weights back after the run.
        method_kwargs: The method's arguments (``lr``, ``filter_k``, ``prior``, ...; see
            :mod:`fewlabel.plugins.tta.registry`); ``episodic`` is this callback's own argument.

    Raises:
        ValueError: unknown method or method argument (with the closest valid one), ``episodic`` among
            ``method_kwargs``, a ``reset_on_shift`` that is not a positive number, or one together with
            ``episodic=True``.

    Example:
        >>> import lightning as L
        >>> from fewlabel.plugins import Classifier
        >>> module = Classifier({"name": "small_cnn", "width": 8}, num_classes=10)
        >>> tta = TestTimeAdaptation("tent", method_kwargs={"lr": 1e-3})
        >>> trainer = L.Trainer(callbacks=[tta], inference_mode=False, logger=False)  # doctest: +SKIP
        >>> trainer.test(module, datamodule=dm)  # doctest: +SKIP
    """

    __test__ = False  # pytest: not a test class

    def __init__(self, method: str = "tent", episodic: bool = False, reset_on_shift: float | None = None,
                 restore: bool = True, method_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        kwargs = dict(method_kwargs or {})
        if "episodic" in kwargs:
            raise ValueError("TestTimeAdaptation: pass episodic=... to the callback, not in method_kwargs")
        check_tta_kwargs(method, kwargs)
        if reset_on_shift is not None and (isinstance(reset_on_shift, bool)
                                           or not isinstance(reset_on_shift, (int, float)) or not reset_on_shift > 0):
            raise ValueError(f"TestTimeAdaptation: reset_on_shift must be a float > 0 or None, got {reset_on_shift!r}")
        if reset_on_shift is not None and episodic:
            raise ValueError("TestTimeAdaptation: reset_on_shift has no effect with episodic=True (every batch is "
                             "reset already); choose one")
        self.method = method
        self.episodic = bool(episodic)
        self.reset_on_shift = None if reset_on_shift is None else float(reset_on_shift)
        self.restore = bool(restore)
        self.method_kwargs = kwargs
        self.wrapper: TTAWrapper | None = None
        self._state: dict[str, Any] | None = None  # the latest adapted state (see state_dict)
        self._resume = False
        self._start_counters()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, episodic=self.episodic)

    @property
    def protocol(self) -> dict[str, Any]:
        """What is logged at the start of a run: method, protocol, shift reset, restore, method arguments."""
        scalars = {f"tta/{key}": value for key, value in self.method_kwargs.items()
                   if isinstance(value, (int, float, str, bool)) or value is None}
        return {"tta/method": self.method, "tta/protocol": "episodic" if self.episodic else "continual",
                "tta/reset_on_shift": self.reset_on_shift, "tta/restore": self.restore, **scalars}

    def _start_counters(self) -> None:
        self.batches = 0
        self.resets = 0
        self._shift_mean = 0.0
        self._shift_count = 0
        self._last_entropy: Tensor | None = None

    # ------------------------------------------------------------------ checks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the Trainer and the module before a test or predict run.

        Raises:
            RuntimeError: the Trainer runs test/predict under ``torch.inference_mode``.
            AttributeError: the module lacks ``.encoder`` or ``.head``.
            TypeError: T3A and the head is not an ``nn.Linear``.
        """
        stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn (a str enum)
        if stage not in STAGES:
            return
        loop = trainer.test_loop if stage == "test" else trainer.predict_loop
        if loop.inference_mode:
            raise RuntimeError(
                f"TestTimeAdaptation({self.method!r}) adapts the model with gradients during trainer.{stage}(), "
                "but this Trainer runs it under torch.inference_mode. Build the Trainer with "
                "L.Trainer(..., inference_mode=False)."
            )
        missing = [name for name in ("encoder", "head") if not isinstance(getattr(pl_module, name, None), nn.Module)]
        if missing:
            raise AttributeError(
                f"TestTimeAdaptation needs the LightningModule to have .encoder and .head (nn.Modules, logits = "
                f"head(encoder(x))); {type(pl_module).__name__} lacks {', '.join('.' + m for m in missing)}"
            )
        if self.method == "t3a" and not isinstance(pl_module.head, nn.Linear):
            raise TypeError(f"TestTimeAdaptation('t3a') needs .head to be an nn.Linear; "
                            f"{type(pl_module).__name__}.head is {type(pl_module.head).__name__}")

    # ------------------------------------------------------------------ start / end of a run
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin(trainer, pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(pl_module)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._end(pl_module)

    def _begin(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flags = ModelFlags.capture(pl_module)
        self._net = _EncoderHead(pl_module.encoder, pl_module.head)
        self._initial = copy.deepcopy(self._net.state_dict()) if self.restore else None
        self.wrapper = create_tta(self.method, self._net, episodic=self.episodic, **self.method_kwargs)
        self._start_counters()
        if self._resume and self._state is not None:
            self.wrapper.load_state_dict(self._state["adapted"], strict=False)
            self.batches, self.resets = self._state["batches"], self._state["resets"]
            self._shift_mean, self._shift_count = self._state["shift_mean"], self._state["shift_count"]
        self._resume = False
        pl_module.forward = self._adapted_forward  # type: ignore[method-assign]
        adapted = sum(self._net.state_dict()[name].numel() for name in self.wrapper.adapted_names())
        protocol = {**self.protocol, "tta/adapted_values": adapted}
        rank_zero_info(f"TestTimeAdaptation: {self.method}, {protocol['tta/protocol']} protocol, "
                       f"reset on shift: {self.reset_on_shift}, restore after: {self.restore}, "
                       f"{adapted} adapted values ({type(self.wrapper).__name__}: {self.wrapper.extra_repr()})")
        for logger in trainer.loggers:
            logger.log_hyperparams(protocol)

    def _end(self, pl_module: L.LightningModule) -> None:
        if self.wrapper is None:
            return
        self._state = self._current_state()
        pl_module.__dict__.pop("forward", None)
        self._flags.restore(pl_module)
        if self._initial is not None:
            self._net.load_state_dict(self._initial)
        self.wrapper = None
        self._net = None  # type: ignore[assignment]
        self._initial = None

    # ------------------------------------------------------------------ per batch
    def _adapted_forward(self, x: Tensor) -> Tensor:
        """The module's forward during a run: (shift check,) one adaptation step, the adapted outputs."""
        wrapper = self.wrapper
        assert wrapper is not None
        if self.reset_on_shift is not None:
            self._check_shift(wrapper, x)
        outputs = wrapper(x)
        self._last_entropy = softmax_entropy(outputs).mean().detach()
        self.batches += 1
        return outputs

    def _check_shift(self, wrapper: TTAWrapper, x: Tensor) -> None:
        logits = wrapper.predict(x)
        level = float(softmax_entropy(logits).mean()) / math.log(logits.shape[1])
        if self._shift_count > 0 and level - self._shift_mean > self.reset_on_shift:  # type: ignore[operator]
            wrapper.reset()
            self.resets += 1
            self._shift_mean, self._shift_count = 0.0, 0
        self._shift_count += 1
        self._shift_mean += (level - self._shift_mean) / self._shift_count

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._last_entropy is not None:
            pl_module.log("tta/entropy", self._last_entropy, on_step=False, on_epoch=True, sync_dist=True)
            self._last_entropy = None

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.wrapper is not None:
            pl_module.log("tta/resets", float(self.resets), sync_dist=True, reduce_fx="sum")

    # ------------------------------------------------------------------ resume
    def _current_state(self) -> dict[str, Any]:
        assert self.wrapper is not None
        return {"adapted": self.wrapper.adapted_state_dict(), "batches": self.batches, "resets": self.resets,
                "shift_mean": self._shift_mean, "shift_count": self._shift_count}

    def state_dict(self) -> dict[str, Any]:
        """Settings and the adapted state: live during a run, else that of the last run (or the loaded one)."""
        state = self._current_state() if self.wrapper is not None else self._state
        return {"method": self.method, "episodic": self.episodic, "state": copy.deepcopy(state)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a saved state at the next run.

        Raises:
            ValueError: the state was saved with another method or protocol.
        """
        for key in ("method", "episodic"):
            saved = state_dict.get(key, getattr(self, key))
            if saved != getattr(self, key):
                raise ValueError(f"TestTimeAdaptation: the state was saved with {key}={saved!r}, this callback has "
                                 f"{key}={getattr(self, key)!r}")
        self._state = copy.deepcopy(state_dict.get("state"))
        self._resume = self._state is not None

