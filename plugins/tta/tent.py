"""Tent: test-time entropy minimisation of the normalisation layers' affine parameters.

Wang, Shelhamer, Liu, Olshausen and Darrell, "Tent: Fully Test-Time Adaptation by Entropy
Minimization", ICLR 2021, arXiv 2006.10726. Authors' code: github DequanWang/tent (``tent.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fewlabel.plugins.optim.optimizers import check_optimizer, create_optimizer
from fewlabel.plugins.tta.base import TTAWrapper, softmax_entropy
from fewlabel.plugins.tta.norm_layers import check_model, collect_params, configure_model

__all__ = ["Tent"]


class Tent(TTAWrapper):
    """Calling it on a batch takes ``steps`` gradient steps on the mean softmax entropy of the outputs
    and returns the outputs of the last forward pass (computed before that step's update).

    The model must be set up with :func:`~fewlabel.plugins.tta.configure_model` (only the norm layers'
    affine parameters train; BatchNorm normalises with the test batch's statistics and never updates its
    running buffers) and ``optimizer`` must hold the parameters of
    :func:`~fewlabel.plugins.tta.collect_params`, as with the authors' code. :meth:`from_model` does all
    three. The entropy is computed in float32 (:func:`~fewlabel.plugins.tta.softmax_entropy`).

    Args:
        model: The configured model; ``model(x)`` returns logits ``(B, C)``.
        optimizer: Optimizer over the adapted parameters (the paper: Adam lr 1e-3 on CIFAR-10-C, SGD lr
            0.00025 momentum 0.9 at batch 64 on ImageNet-C).
        steps: Gradient steps per batch.
        episodic: Reset to the initial state after every batch.

    Raises:
        ValueError: the model is not configured (see :func:`~fewlabel.plugins.tta.check_model`), or
            ``steps < 1``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        >>> model = configure_model(model)
        >>> params, names = collect_params(model)
        >>> tent = Tent(model, torch.optim.SGD(params, lr=0.01), steps=1, episodic=False)
        >>> tent(torch.randn(16, 4)).shape
        torch.Size([16, 3])
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 1,
                 episodic: bool = False) -> None:
        check_model(model, type(self).__name__)
        super().__init__(model, optimizer, steps, episodic)

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        """One step: forward, mean entropy, backward, optimizer step; returns the (pre-update) outputs."""
        assert self.optimizer is not None
        with torch.enable_grad():
            outputs = self.model(x)
            loss = softmax_entropy(outputs).mean(0)
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return outputs.detach()

    @classmethod
    def from_model(cls, model: nn.Module, optimizer: str = "adam", lr: float = 1e-3, momentum: float = 0.9,
                   weight_decay: float = 0.0, steps: int = 1, episodic: bool = False) -> Tent:
        """Configure ``model`` in place, build the optimizer over its norm affine parameters, wrap it.

        Args:
            model: The model to adapt (changed in place by :func:`~fewlabel.plugins.tta.configure_model`).
            optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"`` (``fewlabel.plugins.optim``).
            lr, momentum, weight_decay: Optimizer settings (``momentum`` is SGD's only).
            steps, episodic: As in the constructor.

        Raises:
            ValueError: unknown optimizer (the message lists the valid ones) or a bad value.
        """
        check_optimizer(optimizer, lr, weight_decay)
        configure_model(model)
        params, _ = collect_params(model)
        opt = create_optimizer(optimizer, params=params, lr=lr, weight_decay=weight_decay, momentum=momentum)
        return cls(model, opt, steps=steps, episodic=episodic)
