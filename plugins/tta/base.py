"""The wrapper skeleton every test-time adaptation method shares, and the float32 softmax entropy.

A wrapper holds the model it adapts (and an optimizer when the method trains parameters). Calling it on a
batch adapts on that batch and returns the outputs, as ``Tent.forward`` in the authors' ``tent.py``
(github DequanWang/tent) does; no Trainer is involved. The protocol is explicit:

* **continual** (``episodic=False``): the adapted state carries over from batch to batch;
* **episodic** (``episodic=True``): :meth:`TTAWrapper.reset` runs after every batch, so each batch is
  adapted from the initial state alone and the model is left exactly as it was. (The authors' code resets
  before every batch instead: the outputs are the same, but the model keeps the last batch's update.)

:meth:`TTAWrapper.reset` restores the model, the optimizer and the method's own state (moving averages,
supports) to what they were when the wrapper was built. The adapted state is the wrapper's
``state_dict()``: the model's tensors (under ``model.``) plus, as ``_extra_state``, the optimizer's state and
the method's own state; :meth:`TTAWrapper.adapted_state_dict` keeps only the tensors the method can change.
A new wrapper built around the same initial model and given that state with ``load_state_dict`` continues
exactly where the saved one stopped.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from fewlabel.plugins.arguments import check_int
from fewlabel.plugins.tta.norm_layers import use_batch_statistics

__all__ = ["TTAWrapper", "full_precision", "softmax_entropy"]


def full_precision(device: torch.device) -> torch.autocast:
    """A context that turns autocast off on ``device``, so the ops inside run in the dtype of their inputs
    (float32 here) even inside a ``bf16-mixed`` or ``16-mixed`` forward."""
    return torch.autocast(device_type=device.type, enabled=False)


def softmax_entropy(logits: Tensor) -> Tensor:
    """Entropy of the softmax of each row of ``logits``, in float32 whatever their dtype or autocast.

    ``-(softmax(x) * log_softmax(x)).sum(1)``, as ``softmax_entropy`` in the Tent, EATA and SAR code.

    Example:
        >>> softmax_entropy(torch.zeros(1, 4)).item() == torch.log(torch.tensor(4.0)).item()
        True
    """
    with full_precision(logits.device):
        logits = logits.float()
        return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


class TTAWrapper(nn.Module):
    """Base class: adapt ``model`` on each batch it is called with, and return the outputs.

    Subclasses implement :meth:`forward_and_adapt` (one adaptation step on a batch, returning the
    outputs) and, when they keep state of their own, :meth:`method_state`, :meth:`load_method_state`
    and :meth:`reset_method_state`.

    Args:
        model: The model to adapt, already configured for the method (for Tent, EATA and SAR:
            :func:`~fewlabel.plugins.tta.configure_model`).
        optimizer: The optimizer over the parameters the method adapts; ``None`` for methods without
            backpropagation (BN-adapt, T3A).
        steps: Adaptation steps per batch (forward + update); the outputs are those of the last step.
        episodic: Reset to the initial state after every batch (see the module docstring).

    Raises:
        ValueError: ``steps`` is not an int >= 1.

    Example:
        >>> from fewlabel.plugins.tta import Tent
        >>> issubclass(Tent, TTAWrapper)
        True
    """

    #: Whether adaptation changes the model's tensors (``False``: nothing to snapshot or restore).
    changes_model: bool = True

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, steps: int = 1,
                 episodic: bool = False) -> None:
        super().__init__()
        check_int("steps", steps, 1, owner=type(self).__name__)
        self.model = model
        self.optimizer = optimizer
        self.steps = steps
        self.episodic = bool(episodic)
        # the initial state, for reset(); plain attributes, so not part of state_dict()
        self._initial_model = copy.deepcopy(model.state_dict()) if self.changes_model else None
        self._initial_optimizer = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None

    def forward(self, x: Tensor) -> Tensor:
        """Adapt on ``x`` ``steps`` times and return the outputs of the last step (then reset when episodic)."""
        use_batch_statistics(self.model)  # an outer model.eval() must not switch configured BatchNorm back
        outputs = x
        for _ in range(self.steps):
            outputs = self.forward_and_adapt(x)
        if self.episodic:
            self.reset()
        return outputs

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        """One adaptation step on ``x``; returns the outputs of its forward pass (detached)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Outputs of the model in its current adapted state, without adapting (no state changes)."""
        use_batch_statistics(self.model)
        return self.model(x)

    def reset(self) -> None:
        """Restore the model, the optimizer and the method's own state to the initial state."""
        if self._initial_model is not None:
            self.model.load_state_dict(self._initial_model, strict=True)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self._initial_optimizer))  # type: ignore[arg-type]
            self.optimizer.zero_grad(set_to_none=True)
        self.reset_method_state()

    # ----------------------------------------------------------------- the method's own state
    def method_state(self) -> dict[str, Any]:
        """The method's own state beyond the model and optimizer (empty unless overridden)."""
        return {}

    def load_method_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`method_state` returned."""

    def reset_method_state(self) -> None:
        """Return the method's own state to its initial value."""

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "optimizer": copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None,
            "method": self.method_state(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.load_method_state(state.get("method", {}))

    def adapted_names(self) -> list[str]:
        """Names (in ``model.state_dict()``) of the model tensors this method can change.

        The parameters the optimizer holds; subclasses that change buffers add them.
        """
        if self.optimizer is None:
            return []
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        return [name for name, p in self.model.named_parameters() if id(p) in held]

    def adapted_state_dict(self) -> dict[str, Any]:
        """The part of ``state_dict()`` that adaptation changes: the adapted tensors and ``_extra_state``.

        Load it back with ``load_state_dict(state, strict=False)`` into a wrapper built around the same
        initial model.
        """
        full = self.state_dict()
        keep = {f"model.{name}" for name in self.adapted_names()} | {"_extra_state"}
        return {key: value.detach().clone() if isinstance(value, Tensor) else value
                for key, value in full.items() if key in keep}

    def extra_repr(self) -> str:
        return f"steps={self.steps}, episodic={self.episodic}"
