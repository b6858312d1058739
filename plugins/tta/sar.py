"""SAR: sharpness-aware and reliable entropy minimisation, with model recovery.

Niu, Wu, Zhang, Wen, Chen, Zhao and Tan, "Towards Stable Test-Time Adaptation in Dynamic Wild World",
ICLR 2023, arXiv 2302.12400. Authors' code: github mr-eggplant/SAR (``sar.py``, ``sam.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from fewlabel.plugins.tta.base import TTAWrapper, softmax_entropy
from fewlabel.plugins.tta.norm_layers import check_model, collect_params, configure_model
from fewlabel.plugins.tta.sam import SAM

__all__ = ["SAR"]

#: Momentum of the moving average of the second-pass loss (the code's 0.9).
LOSS_MOMENTUM = 0.9


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values[mask]``; 0 (with zero gradients) when the mask is empty."""
    return (values * mask).sum() / mask.sum().clamp_min(1)


class SAR(TTAWrapper):
    """On each batch (entropies ``E`` of the softmax outputs, float32; E0 = ``margin_e0``):

    1. reliable samples ``E(w) < E0``; loss = their mean entropy; backward;
       ``optimizer.first_step()`` moves the adapted parameters to ``w + e`` (:class:`SAM`);
    2. a second forward at ``w + e``; among the first pass's reliable samples, those with
       ``E(w + e) < E0`` again; loss = their mean entropy; backward; ``optimizer.second_step()`` returns
       to ``w`` and updates it with the gradient taken at ``w + e``;
    3. the moving average of the second loss, ``ema <- 0.9 ema + 0.1 loss`` (the first value as is;
       skipped when no sample passed), falls below ``reset_constant_em``: the model and the optimizer
       are reset to the initial state (model recovery).

    Returns the outputs of the first forward pass. With no reliable sample, the step has zero gradients
    (as in the authors' code, where the base optimizer still steps, so SGD momentum carries on).
    Following the authors' code, the moving average survives a recovery (it is stored after the reset), so
    a recovery repeats until the average climbs back; an explicit :meth:`reset` (and an episodic run)
    clears it. The threshold is ``reset_constant_em`` (the code compares with a hard-coded 0.2, the same
    default). ``recoveries`` counts the recoveries since the last explicit reset.

    Args:
        model: The configured model (:func:`~fewlabel.plugins.tta.configure_model`).
        optimizer: A :class:`SAM` over the adapted parameters (SAR: base SGD, lr 0.00025 at batch 64,
            momentum 0.9, rho 0.05).
        steps, episodic: See :class:`~fewlabel.plugins.tta.TTAWrapper`.
        margin_e0: E0; ``None`` = ``0.4 ln C`` from the first batch's number of classes.
        reset_constant_em: Recovery threshold of the moving-average loss (0.2).

    Raises:
        TypeError: ``optimizer`` is not a :class:`SAM`.
        ValueError: the model is not configured or a threshold is not positive.

    Example:
        >>> model = configure_model(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3)))
        >>> opt = SAM(collect_params(model)[0], torch.optim.SGD, rho=0.05, lr=0.00025, momentum=0.9)
        >>> SAR(model, opt)(torch.randn(16, 4)).shape
        torch.Size([16, 3])
    """

    def __init__(self, model: nn.Module, optimizer: SAM, steps: int = 1, episodic: bool = False,
                 margin_e0: float | None = None, reset_constant_em: float = 0.2) -> None:
        if not isinstance(optimizer, SAM):
            raise TypeError(f"SAR needs a fewlabel.plugins.tta.SAM optimizer, got {type(optimizer).__name__}")
        check_model(model, type(self).__name__)
        if margin_e0 is not None and not margin_e0 > 0:
            raise ValueError(f"SAR: margin_e0 must be > 0 or None (0.4 ln C), got {margin_e0!r}")
        if not reset_constant_em >= 0:
            raise ValueError(f"SAR: reset_constant_em must be >= 0, got {reset_constant_em!r}")
        super().__init__(model, optimizer, steps, episodic)
        self.margin_e0 = margin_e0
        self.reset_constant_em = float(reset_constant_em)
        self.recoveries = 0
        self.reset_method_state()

    def margin(self, num_classes: int) -> float:
        """E0 for ``num_classes`` classes: ``margin_e0``, or ``0.4 ln C`` when it is ``None``."""
        return self.margin_e0 if self.margin_e0 is not None else 0.4 * math.log(num_classes)

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        optimizer = self.optimizer
        assert isinstance(optimizer, SAM)
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            outputs = self.model(x)
            margin = self.margin(outputs.shape[1])
            entropy = softmax_entropy(outputs)
            reliable = entropy.detach() < margin
            _masked_mean(entropy, reliable).backward()
        optimizer.first_step(zero_grad=True)
        with torch.enable_grad():
            entropy2 = softmax_entropy(self.model(x))
            reliable2 = reliable & (entropy2.detach() < margin)
            loss2 = _masked_mean(entropy2, reliable2)
            loss2.backward()
        if bool(reliable2.any()):
            value = float(loss2.detach())
            self.ema = value if self.ema is None else LOSS_MOMENTUM * self.ema + (1 - LOSS_MOMENTUM) * value
        optimizer.second_step(zero_grad=True)
        if self.ema is not None and self.ema < self.reset_constant_em:
            ema, recoveries = self.ema, self.recoveries
            self.reset()
            # the authors' order: reset, then store the moving average again
            self.ema, self.recoveries = ema, recoveries + 1
        self.last_reliable, self.last_selected = reliable, reliable2
        return outputs.detach()

    def reset(self) -> None:
        """Restore the initial model and optimizer and clear the moving average."""
        super().reset()
        self.recoveries = 0

    def reset_method_state(self) -> None:
        self.ema: float | None = None
        self.last_reliable: Tensor | None = None
        self.last_selected: Tensor | None = None

    def method_state(self) -> dict[str, Any]:
        return {"ema": self.ema, "recoveries": self.recoveries}

    def load_method_state(self, state: dict[str, Any]) -> None:
        self.ema = state.get("ema")
        self.recoveries = int(state.get("recoveries", 0))

    @classmethod
    def from_model(cls, model: nn.Module, lr: float = 0.00025, momentum: float = 0.9, weight_decay: float = 0.0,
                   rho: float = 0.05, steps: int = 1, episodic: bool = False, margin_e0: float | None = None,
                   reset_constant_em: float = 0.2) -> SAR:
        """Configure ``model`` in place, build ``SAM(SGD)`` over its norm affine parameters, wrap it.

        Args:
            model: The model to adapt (changed in place by :func:`~fewlabel.plugins.tta.configure_model`).
            lr, momentum, weight_decay: The base SGD (SAR: lr 0.00025 at batch 64, momentum 0.9).
            rho: SAM's radius (0.05).
            steps, episodic, margin_e0, reset_constant_em: As in the constructor.

        Raises:
            ValueError: a bad value.
        """
        if not lr > 0:
            raise ValueError(f"SAR: lr must be > 0, got {lr!r}")
        configure_model(model)
        params, _ = collect_params(model)
        opt = SAM(params, torch.optim.SGD, rho=rho, lr=lr, momentum=momentum, weight_decay=weight_decay)
        return cls(model, opt, steps=steps, episodic=episodic, margin_e0=margin_e0,
                   reset_constant_em=reset_constant_em)
