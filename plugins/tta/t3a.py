"""T3A: test-time classifier adjustment from pseudo-labelled test embeddings, no backpropagation.

Iwasawa and Matsuo, "Test-Time Classifier Adjustment Module for Model-Agnostic Domain Generalization",
NeurIPS 2021. Authors' code: github matsuolab/T3A (``domainbed/adapt_algorithms.py``, class ``T3A``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabel.plugins.arguments import check_int
from fewlabel.plugins.tta.base import TTAWrapper, full_precision, softmax_entropy

__all__ = ["T3A"]


class T3A(TTAWrapper):
    """Class prototypes built from the least uncertain test embeddings of each pseudo-class.

    Contract: ``model.encoder(x)`` returns the ``(B, D)`` embedding and ``model.head`` is an
    ``nn.Linear(D, C)`` (fewlabel's :class:`~fewlabel.plugins.Classifier` has both; so can a user's module).

    The support set starts as the rows of the head's weight ``W`` (one per class), labelled by the argmax
    of ``head(W)``, with their entropies. On each batch (under ``torch.no_grad()``):

    1. the embeddings ``z`` join the supports, labelled by the argmax of ``head(z)``, with the entropy
       of ``softmax(head(z))``;
    2. for each class, only the ``filter_k`` supports of lowest entropy are kept (``None``: all);
    3. prototype ``c`` = the L2-normalised sum of the L2-normalised supports labelled ``c``;
       the outputs are ``z @ prototypes`` (the embedding is not normalised and the head's bias is not
       used, as in the authors' code).

    With only the initial supports the prototypes are ``W_c / ||W_c||`` (when each row of ``W`` is
    classified as its own class), so the outputs are the head's logits with unit-norm rows and no bias.
    No weight of the model is touched. Entropy and prototypes are computed in float32.

    Args:
        model: A module with ``.encoder`` and a linear ``.head`` (used in its current mode; call ``eval()``).
        filter_k: Supports kept per class (the paper's M; the code's ``filter_K``, searched in 1, 5, 20,
            50, 100 and all); ``None`` keeps them all.
        episodic: Start every batch from the initial supports.

    Raises:
        TypeError: ``model`` lacks ``.encoder`` or its ``.head`` is not an ``nn.Linear``.
        ValueError: ``filter_k`` is not an int >= 1 or ``None``.

    Example:
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.encoder, self.head = nn.Linear(4, 6), nn.Linear(6, 3)
        >>> t3a = T3A(Net().eval(), filter_k=20)
        >>> t3a(torch.randn(8, 4)).shape
        torch.Size([8, 3])
    """

    changes_model = False

    def __init__(self, model: nn.Module, filter_k: int | None = 100, episodic: bool = False) -> None:
        encoder, head = getattr(model, "encoder", None), getattr(model, "head", None)
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"T3A needs model.encoder (an nn.Module returning (B, D) embeddings); "
                            f"{type(model).__name__} has none")
        if not isinstance(head, nn.Linear):
            raise TypeError(f"T3A needs model.head to be an nn.Linear(D, C); {type(model).__name__}.head is "
                            f"{type(head).__name__}")
        check_int("filter_k", filter_k, 1, "None (keep every support)", owner="T3A")
        super().__init__(model, None, 1, episodic)
        self.filter_k = filter_k
        self.reset_method_state()

    @property
    def num_classes(self) -> int:
        return self.model.head.out_features  # type: ignore[union-attr, return-value]

    def _classify(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """One-hot pseudo-labels and entropies of embeddings ``z`` under the head (float32)."""
        head: nn.Linear = self.model.head  # type: ignore[assignment]
        logits = F.linear(z.float(), head.weight.float(), None if head.bias is None else head.bias.float())
        labels = F.one_hot(logits.argmax(1), self.num_classes).float()
        return labels, softmax_entropy(logits)

    @torch.no_grad()
    def reset_method_state(self) -> None:
        warmup = self.model.head.weight.detach().float().clone()  # type: ignore[union-attr]
        self.supports = warmup
        with full_precision(warmup.device):
            self.labels, self.entropy = self._classify(warmup)

    def _select(self, supports: Tensor, labels: Tensor, entropy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Keep the ``filter_k`` lowest-entropy supports of each class (stable order on ties)."""
        if self.filter_k is None:
            return supports, labels, entropy
        classes = labels.argmax(1)
        keep = []
        for c in range(self.num_classes):
            members = torch.nonzero(classes == c).flatten()
            order = torch.sort(entropy[members], stable=True).indices
            keep.append(members[order][: self.filter_k])
        index = torch.cat(keep)
        return supports[index], labels[index], entropy[index]

    def _prototypes(self, supports: Tensor, labels: Tensor) -> Tensor:
        """``(D, C)``: per class, the normalised sum of the normalised supports."""
        return F.normalize(F.normalize(supports, dim=1).T @ labels, dim=0)

    @torch.no_grad()
    def forward_and_adapt(self, x: Tensor) -> Tensor:
        z = self.model.encoder(x).float()  # type: ignore[operator]
        device = z.device
        with full_precision(device):
            labels, entropy = self._classify(z)
            self.supports, self.labels, self.entropy = self._select(
                torch.cat([self.supports.to(device), z]), torch.cat([self.labels.to(device), labels]),
                torch.cat([self.entropy.to(device), entropy]))
            return z @ self._prototypes(self.supports, self.labels)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Outputs with the current prototypes, without adding ``x`` to the supports."""
        z = self.model.encoder(x).float()  # type: ignore[operator]
        with full_precision(z.device):
            return z @ self._prototypes(self.supports.to(z.device), self.labels.to(z.device))

    def method_state(self) -> dict[str, Any]:
        return {"supports": self.supports.clone(), "labels": self.labels.clone(), "entropy": self.entropy.clone()}

    def load_method_state(self, state: dict[str, Any]) -> None:
        if "supports" in state:
            self.supports = state["supports"].clone()
            self.labels = state["labels"].clone()
            self.entropy = state["entropy"].clone()

    def extra_repr(self) -> str:
        return f"filter_k={self.filter_k}, episodic={self.episodic}"
