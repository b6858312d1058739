"""Sharpness-aware minimisation (SAM) as a two-step optimizer, for SAR.

Foret, Kleiner, Mobahi and Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
Generalization", ICLR 2021, arXiv 2010.01412. SAR (arXiv 2302.12400) uses it in the form of
github davda54/sam, with the same two calls: :meth:`SAM.first_step` and :meth:`SAM.second_step`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["SAM"]


class SAM(torch.optim.Optimizer):
    """Step to the sharpest nearby point, take the gradient there, and update from the original point.

    With gradient ``g`` at ``w``: :meth:`first_step` moves to ``w + e``, ``e = rho * g / (||g|| + 1e-12)``
    (``||.||`` the L2 norm over every parameter of every group; with ``adaptive=True``,
    ``e = rho * w^2 * g / (||w * g|| + 1e-12)``, ASAM, arXiv 2102.11600). After a second backward at
    ``w + e``, :meth:`second_step` puts the parameters back to ``w`` (exactly: the saved copy) and steps
    the base optimizer with the gradient taken at ``w + e``. Parameters without a gradient are left out.

    Args:
        params: Parameters or parameter groups.
        base_optimizer: The optimizer class for the actual update (e.g. ``torch.optim.SGD``).
        rho: Radius of the neighbourhood (0.05 in SAR).
        adaptive: ASAM's parameter-scaled neighbourhood.
        **kwargs: Arguments of ``base_optimizer`` (``lr``, ``momentum``, ...).

    Raises:
        ValueError: ``rho < 0``.

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        >>> opt = SAM([w], torch.optim.SGD, rho=0.1, lr=0.5)
        >>> (w ** 2).sum().backward(); opt.first_step(zero_grad=True)
        >>> (w ** 2).sum().backward(); opt.second_step(zero_grad=True)
        >>> w.detach()  # the gradient at w + e = w + 0.1 * w / |w|, applied at w
        tensor([-0.0447, -0.0894])
    """

    def __init__(self, params: Iterable[Any], base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 adaptive: bool = False, **kwargs: Any) -> None:
        if not rho >= 0:
            raise ValueError(f"SAM: rho must be >= 0, got {rho!r}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups  # one set of groups, shared
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def _grad_norm(self) -> Tensor:
        norms = [((p.abs() if group["adaptive"] else 1.0) * p.grad).norm(p=2)
                 for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not norms:
            return torch.zeros(())
        device = norms[0].device
        return torch.stack([n.to(device) for n in norms]).norm(p=2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Save ``w`` and move to ``w + e`` (the gradients must be those at ``w``)."""
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.detach().clone()
                step = (p.square() if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                p.add_(step)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Go back to ``w`` and let the base optimizer step with the gradients taken at ``w + e``."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or "old_p" not in self.state[p]:
                    continue
                p.copy_(self.state[p]["old_p"])
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]
        """Both steps around ``closure``, which must recompute the loss and call ``backward`` again.

        Raises:
            ValueError: no closure.
        """
        if closure is None:
            raise ValueError("SAM.step needs a closure that re-evaluates the loss and calls backward()")
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step()

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state (momentum buffers, groups with ``rho``).

        The saved ``w`` lives only between the two steps and is not part of it. (davda54/sam's
        ``state_dict`` is SAM's own and leaves the base optimizer's momentum out, so SAR's reset there
        keeps the momentum; here a reset or a resume restores it too.)
        """
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned."""
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
