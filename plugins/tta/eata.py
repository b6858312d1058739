"""EATA: efficient anti-forgetting test-time adaptation.

Niu, Wu, Zhang, Chen, Zheng, Zhao and Tan, "Efficient Test-Time Model Adaptation without Forgetting",
ICML 2022, arXiv 2204.02610. Authors' code: github mr-eggplant/EATA (``eata.py``, ``main.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabel.plugins.optim.optimizers import check_optimizer, create_optimizer
from fewlabel.plugins.tta.base import TTAWrapper, full_precision, softmax_entropy
from fewlabel.plugins.tta.norm_layers import check_model, collect_params, configure_model, use_batch_statistics

__all__ = ["EATA", "fisher_information"]

#: Momentum of the moving average of the selected samples' probabilities (the code's 0.9).
PROBS_MOMENTUM = 0.9


def fisher_information(model: nn.Module,
                       batches: Iterable[Tensor | Mapping[str, Tensor]]) -> dict[str, tuple[Tensor, Tensor]]:
    """Diagonal Fisher information of the trainable parameters on clean samples, for EATA's regulariser.

    As in the authors' ``main.py``: for each batch, the cross-entropy of the outputs against their own
    argmax (mean over the batch) is back-propagated and the squared gradient is accumulated; the sum is
    divided by the number of batches. Run it on the configured model (BatchNorm on batch statistics),
    before adaptation; it changes no parameter.

    Args:
        model: The configured model (:func:`~fewlabel.plugins.tta.configure_model`).
        batches: Batches of clean (in-distribution) samples: input tensors or dict batches with ``"input"``
            (a fewlabel DataLoader), moved to the model's device; the paper uses 2,000 samples.

    Returns:
        ``{name: (fisher, anchor)}`` for each parameter with ``requires_grad``: its diagonal Fisher and
        a copy of its current value (float32, detached).

    Raises:
        ValueError: ``batches`` is empty.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    sums = [torch.zeros_like(p, dtype=torch.float32) for _, p in named]
    count = 0
    use_batch_statistics(model)
    device = named[0][1].device if named else torch.device("cpu")
    for batch in batches:
        x = (batch["input"] if isinstance(batch, Mapping) else batch).to(device)
        with torch.enable_grad():
            outputs = model(x).float()
            loss = F.cross_entropy(outputs, outputs.argmax(1))
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        for total, grad in zip(sums, grads):
            if grad is not None:
                total.add_(grad.detach().float().square())
        count += 1
    if count == 0:
        raise ValueError("fisher_information needs at least one batch of clean samples")
    return {name: (total / count, p.detach().float().clone()) for (name, p), total in zip(named, sums)}


class EATA(TTAWrapper):
    """Entropy minimisation on reliable, non-redundant samples, re-weighted, with a Fisher regulariser.

    On each batch (logits ``f(x)``, probabilities ``p``, entropies ``E``, float32):

    1. reliable samples: ``E < e_margin`` (E0; the paper's default ``0.4 ln C``, ``C`` classes);
    2. non-redundant samples among them: ``|cos(p, m)| < d_margin`` where ``m`` is the moving average of
       the probabilities of previously selected samples (no filter before the first selection);
    3. ``m <- 0.9 m + 0.1 mean(p[selected])`` (``m = mean(p[selected])`` the first time);
    4. loss = mean over the selected samples of ``E / exp(E - E0)`` (the weight detached), plus
       ``fisher_alpha * sum_i F_i (theta_i - theta_i0)^2`` when ``fishers`` is given (EATA; without it
       the method is the paper's ETA); one optimizer step when any sample was selected.

    The outputs of the forward pass are returned. ``last_reliable`` and ``last_selected`` hold the
    boolean masks of the latest batch; ``num_reliable`` and ``num_selected`` count the samples since the
    last reset. Unlike the authors' code, :meth:`reset` also clears ``m`` and the counters, so an
    episodic run starts every batch from the same state.

    Args:
        model: The configured model (:func:`~fewlabel.plugins.tta.configure_model`).
        optimizer: Optimizer over the adapted parameters (the paper: SGD lr 0.00025, momentum 0.9, batch 64).
        fishers: ``{name: (fisher, anchor)}`` from :func:`fisher_information`; ``None`` = no regulariser.
        fisher_alpha: Weight of the regulariser (the paper's beta, 2000).
        steps, episodic: See :class:`~fewlabel.plugins.tta.TTAWrapper`.
        e_margin: Entropy threshold E0; ``None`` = ``0.4 ln C`` from the first batch's number of classes.
        d_margin: Cosine-similarity threshold epsilon (0.05).

    Raises:
        ValueError: the model is not configured, a threshold is not positive, or a Fisher name is not a
            parameter of the model.

    Example:
        >>> model = configure_model(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)))
        >>> eata = EATA(model, torch.optim.SGD(collect_params(model)[0], lr=0.00025, momentum=0.9))
        >>> eata(torch.randn(16, 4)).shape
        torch.Size([16, 3])
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 fishers: dict[str, tuple[Tensor, Tensor]] | None = None, fisher_alpha: float = 2000.0,
                 steps: int = 1, episodic: bool = False, e_margin: float | None = None,
                 d_margin: float = 0.05) -> None:
        check_model(model, type(self).__name__)
        if e_margin is not None and not e_margin > 0:
            raise ValueError(f"EATA: e_margin must be > 0 or None (0.4 ln C), got {e_margin!r}")
        if not d_margin > 0:
            raise ValueError(f"EATA: d_margin must be > 0, got {d_margin!r}")
        if not fisher_alpha >= 0:
            raise ValueError(f"EATA: fisher_alpha must be >= 0, got {fisher_alpha!r}")
        if fishers is not None:
            unknown = sorted(set(fishers) - {name for name, _ in model.named_parameters()})
            if unknown:
                raise ValueError(f"EATA: fishers name parameters the model does not have: {unknown}")
        super().__init__(model, optimizer, steps, episodic)
        self.fishers = fishers
        self.fisher_alpha = float(fisher_alpha)
        self.e_margin = e_margin
        self.d_margin = float(d_margin)
        self.reset_method_state()

    def margin(self, num_classes: int) -> float:
        """E0 for ``num_classes`` classes: ``e_margin``, or ``0.4 ln C`` when it is ``None``."""
        return self.e_margin if self.e_margin is not None else 0.4 * math.log(num_classes)

    def select(self, probs: Tensor, entropy: Tensor, e_margin: float) -> tuple[Tensor, Tensor]:
        """The reliable and the selected (reliable and non-redundant) samples, as boolean masks.

        Args:
            probs: ``(B, C)`` float32 probabilities.
            entropy: ``(B,)`` their entropies.
            e_margin: E0.
        """
        reliable = entropy < e_margin
        selected = reliable.clone()
        if self.model_probs is not None:
            cosine = F.cosine_similarity(self.model_probs.unsqueeze(0), probs[reliable], dim=1)
            selected[reliable] = cosine.abs() < self.d_margin
        return reliable, selected

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        assert self.optimizer is not None
        with torch.enable_grad():
            outputs = self.model(x)
            entropy = softmax_entropy(outputs)
            e_margin = self.margin(outputs.shape[1])
            with full_precision(outputs.device):
                probs = outputs.detach().float().softmax(1)
                reliable, selected = self.select(probs, entropy.detach(), e_margin)
            self._update_probs(probs[selected])
            chosen = entropy[selected]
            loss = (chosen * torch.exp(e_margin - chosen.detach())).mean(0)
            if self.fishers is not None:
                loss = loss + self.fisher_alpha * self._fisher_penalty()
            if bool(selected.any()):
                loss.backward()
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_reliable, self.last_selected = reliable, selected
        self.num_reliable += int(reliable.sum())
        self.num_selected += int(selected.sum())
        return outputs.detach()

    def _fisher_penalty(self) -> Tensor:
        assert self.fishers is not None
        total = torch.zeros((), device=next(self.model.parameters()).device)
        for name, param in self.model.named_parameters():
            if name in self.fishers:
                fisher, anchor = self.fishers[name]
                total = total + (fisher.to(param.device) * (param.float() - anchor.to(param.device)).square()).sum()
        return total

    @torch.no_grad()
    def _update_probs(self, selected_probs: Tensor) -> None:
        if selected_probs.shape[0] == 0:
            return
        mean = selected_probs.mean(0)
        if self.model_probs is None:
            self.model_probs = mean
        else:
            self.model_probs = PROBS_MOMENTUM * self.model_probs + (1 - PROBS_MOMENTUM) * mean

    def reset_method_state(self) -> None:
        self.model_probs: Tensor | None = None
        self.num_reliable = 0
        self.num_selected = 0
        self.last_reliable: Tensor | None = None
        self.last_selected: Tensor | None = None

    def method_state(self) -> dict[str, Any]:
        probs = None if self.model_probs is None else self.model_probs.detach().clone()
        return {"model_probs": probs, "num_reliable": self.num_reliable, "num_selected": self.num_selected}

    def load_method_state(self, state: dict[str, Any]) -> None:
        probs = state.get("model_probs")
        self.model_probs = None if probs is None else probs.clone()
        self.num_reliable = int(state.get("num_reliable", 0))
        self.num_selected = int(state.get("num_selected", 0))

    @classmethod
    def from_model(cls, model: nn.Module, optimizer: str = "sgd", lr: float = 0.00025, momentum: float = 0.9,
                   weight_decay: float = 0.0, steps: int = 1, episodic: bool = False,
                   fisher_batches: Iterable[Tensor | Mapping[str, Tensor]] | None = None, fisher_alpha: float = 2000.0,
                   e_margin: float | None = None, d_margin: float = 0.05) -> EATA:
        """Configure ``model`` in place, compute the Fisher terms (when clean batches are given), wrap it.

        Args:
            model: The model to adapt (changed in place by :func:`~fewlabel.plugins.tta.configure_model`).
            optimizer, lr, momentum, weight_decay: The optimizer (the paper's SGD 0.00025, momentum 0.9).
            steps, episodic, fisher_alpha, e_margin, d_margin: As in the constructor.
            fisher_batches: Clean input batches for :func:`fisher_information`; ``None`` = no regulariser.

        Raises:
            ValueError: unknown optimizer or a bad value.
        """
        check_optimizer(optimizer, lr, weight_decay)
        configure_model(model)
        params, _ = collect_params(model)
        fishers = fisher_information(model, fisher_batches) if fisher_batches is not None else None
        opt = create_optimizer(optimizer, params=params, lr=lr, weight_decay=weight_decay, momentum=momentum)
        return cls(model, opt, fishers=fishers, fisher_alpha=fisher_alpha, steps=steps, episodic=episodic,
                   e_margin=e_margin, d_margin=d_margin)
