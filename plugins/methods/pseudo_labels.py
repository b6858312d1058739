"""A persistent per-sample pseudo-label table for LightningModules."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class PseudoLabelMixin(nn.Module):
    """Gives a module a persistent ``pseudo_labels`` buffer (``-1`` = no label yet).

    The buffer is part of the state dict, so checkpoints keep the labels. A callback such as
    :class:`fewlabel.callbacks.PseudoLabeler` replaces it with a table of the dataset's length;
    loading a checkpoint resizes it to the stored length. ``training_step`` reads
    ``self.pseudo_labels[batch["index"]]``.

    Example:
        >>> from fewlabel.plugins import SelfDistillation
        >>> issubclass(SelfDistillation, PseudoLabelMixin)
        True
    """

    pseudo_labels: Tensor

    def init_pseudo_labels(self, num_samples: int = 0) -> None:
        self.register_buffer("pseudo_labels", torch.full((num_samples,), -1, dtype=torch.long), persistent=True)

    def set_pseudo_labels(self, labels: Tensor) -> None:
        """Replace the table (any length) with ``labels`` (1-D integer tensor)."""
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.is_floating_point():
            raise ValueError(f"pseudo-labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
        self.pseudo_labels = labels.to(device=self.pseudo_labels.device, dtype=torch.long)

    def lookup_pseudo_labels(self, index: Tensor, allow_missing: bool = False) -> Tensor:
        """Pseudo-labels of the samples at dataset positions ``index``; clear errors when unset.

        ``allow_missing=True`` returns ``-1`` for samples without a label (e.g. left out by a
        confidence filter) instead of raising; the step then leaves them out of its loss.
        """
        n = self.pseudo_labels.numel()
        if n == 0:
            raise RuntimeError(
                f"{type(self).__name__}.pseudo_labels is empty: add a PseudoLabeler callback "
                "(fewlabel.callbacks.PseudoLabeler) or call set_pseudo_labels() before training"
            )
        if int(index.max()) >= n:
            raise IndexError(f"batch index {int(index.max())} is outside the pseudo-label table of {n} samples")
        labels = self.pseudo_labels[index]
        if not allow_missing and bool((labels < 0).any()):
            raise RuntimeError("some samples in the batch have no pseudo-label (-1)")
        return labels

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        stored = state_dict.get(prefix + "pseudo_labels")
        if stored is not None and stored.shape != self.pseudo_labels.shape:
            self.pseudo_labels = torch.empty_like(stored, device=self.pseudo_labels.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
