"""BN-adapt: re-estimate the BatchNorm statistics on the test data, no backpropagation.

Schneider, Rusak, Eck, Bringmann, Brendel and Bethge, "Improving robustness against common corruptions
by covariate shift adaptation", NeurIPS 2020, arXiv 2006.16971; Nado, Padhy, Sculley, D'Amour,
Lakshminarayanan and Snoek, "Evaluating Prediction-Time Batch Normalization for Robustness under
Covariate Shift", 2020, arXiv 2006.10963. The running re-estimation over the test stream is AdaBN's
(Li, Wang, Shi, Liu and Hou, "Revisiting Batch Normalization For Practical Domain Adaptation", 2016,
arXiv 1603.04779).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from fewlabel.plugins.tta.base import TTAWrapper

__all__ = ["BNAdapt"]


class BNAdapt(TTAWrapper):
    """Normalise every BatchNorm layer with a mix of its statistics and the test batch's.

    For a batch of ``n`` samples with per-channel mean ``mu_b`` and (biased) variance ``var_b``, each
    BatchNorm layer normalises with

        ``mu = (N mu_r + n mu_b) / (N + n)``,  ``var = (N var_r + n var_b) / (N + n)``

    where ``(mu_r, var_r)`` are the layer's running statistics and ``N = prior`` (Schneider et al.'s
    pseudo-sample count). ``prior=0`` (the default) normalises with the test batch's statistics alone:
    prediction-time BN (Nado et al.). Affine parameters are used as they are; nothing is trained.

    Protocols:

    * ``momentum=None``: the running statistics stay the source model's, so every batch is adapted on its
      own and ``episodic`` makes no difference.
    * continual with a ``momentum``: after each batch the running statistics move toward the batch's,
      ``mu_r <- (1 - momentum) mu_r + momentum mu_b`` (the variance with the unbiased batch variance, as
      ``torch.nn.BatchNorm`` does), so they track the test stream (AdaBN); with a large ``prior``, the
      normalisation uses these re-estimated statistics.
    * ``episodic=True``: the running statistics stay the source's (reset after every batch).

    The running statistics are the model's own buffers (``running_mean``, ``running_var``), so the
    adapted state is in ``state_dict()``. During the call the BatchNorm layers are in eval mode (their
    previous mode is put back); the call runs under ``torch.no_grad()``. Statistics are computed in
    float32. A BatchNorm layer without running statistics (``track_running_stats=False`` and no buffers)
    is left alone.

    Args:
        model: Any model with BatchNorm layers (``model(x)`` returns the outputs).
        prior: ``N >= 0``, the weight of the running statistics in pseudo-samples.
        momentum: ``None`` or in ``(0, 1]``: the running re-estimation rate (continual protocol).
        episodic: Reset the running statistics after every batch.

    Raises:
        ValueError: the model has no BatchNorm layer with running statistics, or a bad value.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).eval()
        >>> BNAdapt(model, prior=16)(torch.randn(32, 4)).shape
        torch.Size([32, 3])
    """

    def __init__(self, model: nn.Module, prior: float = 0.0, momentum: float | None = None,
                 episodic: bool = False) -> None:
        if not prior >= 0:
            raise ValueError(f"BNAdapt: prior must be >= 0 (pseudo-samples), got {prior!r}")
        if momentum is not None and not 0 < momentum <= 1:
            raise ValueError("BNAdapt: momentum must be None (keep the source statistics) or in (0, 1], "
                             f"got {momentum!r}")
        self_layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.running_mean is not None]
        if not self_layers:
            raise ValueError("BNAdapt needs BatchNorm layers with running statistics; the model has none")
        super().__init__(model, None, 1, episodic)
        self.prior = float(prior)
        self.momentum = momentum
        self._layers = self_layers
        self._stash: dict[int, list[tuple[Tensor, Tensor, Tensor, Tensor]]] = {}
        self._update = False

    def _pre_hook(self, layer: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().float()
        dims = [0, *range(2, x.ndim)]
        var_b, mean_b = torch.var_mean(x, dim=dims, correction=0)
        n = x.shape[0]
        weight = n / (self.prior + n)
        mean_r, var_r = layer.running_mean, layer.running_var
        count = x.numel() // x.shape[1]
        unbiased = var_b * (count / max(count - 1, 1))
        self._stash.setdefault(id(layer), []).append((mean_r.clone(), var_r.clone(), mean_b, unbiased))
        mean_r.copy_((1 - weight) * mean_r.float() + weight * mean_b)
        var_r.copy_((1 - weight) * var_r.float() + weight * var_b)

    def _post_hook(self, layer: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        mean_r, var_r, mean_b, var_b = self._stash[id(layer)].pop()
        if self._update:
            m = self.momentum
            assert m is not None
            mean_r = (1 - m) * mean_r.float() + m * mean_b
            var_r = (1 - m) * var_r.float() + m * var_b
        layer.running_mean.copy_(mean_r)
        layer.running_var.copy_(var_r)

    def _run(self, x: Tensor, update: bool) -> Tensor:
        modes = [layer.training for layer in self._layers]
        handles = []
        for layer in self._layers:
            layer.eval()
            handles.append(layer.register_forward_pre_hook(self._pre_hook))
            handles.append(layer.register_forward_hook(self._post_hook))
        self._update = update
        try:
            with torch.no_grad():
                return self.model(x)
        finally:
            for handle in handles:
                handle.remove()
            for layer, mode in zip(self._layers, modes):
                layer.train(mode)
            self._stash.clear()

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        """Normalise with the mixed statistics; in the continual protocol with a momentum, update them."""
        return self._run(x, update=self.momentum is not None and not self.episodic)

    def predict(self, x: Tensor) -> Tensor:
        """The same outputs as a call, without updating the running statistics."""
        return self._run(x, update=False)

    def adapted_names(self) -> list[str]:
        """The running statistics of the BatchNorm layers."""
        layers = {id(layer) for layer in self._layers}
        return [f"{name}.{buffer}" for name, module in self.model.named_modules() if id(module) in layers
                for buffer in ("running_mean", "running_var")]

    def extra_repr(self) -> str:
        return f"prior={self.prior}, momentum={self.momentum}, episodic={self.episodic}"
