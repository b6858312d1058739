"""Which parameters entropy-minimising test-time adaptation trains, and how the model is set up for it.

Tent (Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021,
arXiv 2006.10726), EATA (arXiv 2204.02610) and SAR (arXiv 2302.12400) adapt only the affine scale and
shift (``weight``, ``bias``) of the normalisation layers, and normalise with the statistics of the test
batch. The functions here play the roles of ``configure_model``, ``collect_params`` and ``check_model``
in the authors' ``tent.py``, for BatchNorm, LayerNorm and GroupNorm alike (timm's norm layers included:
they subclass these, and timm's ``RmsNorm``/``SimpleNorm`` are recognised by name, see
:func:`is_norm_layer`).

Two deliberate differences from the reference code, both invisible on a model made only of
convolutions, norm layers and linear layers (such as a ResNet):

* :func:`configure_model` puts the model in eval mode and only the BatchNorm layers in train mode,
  where the reference calls ``model.train()``: dropout and other train-mode behaviour (a running
  input normaliser such as fewlabel's ``RunningNorm``) stay off at test time.
* BatchNorm layers keep their running-statistics buffers: ``track_running_stats = False`` in train mode
  normalises with the batch statistics and leaves the buffers untouched, where the reference deletes
  them (``running_mean = None``). The state dict keeps its keys, so the model can be restored.

:class:`ModelFlags` records what :func:`configure_model` changes (modes, ``requires_grad``,
``track_running_stats``) and puts it back.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

__all__ = ["ModelFlags", "check_model", "collect_params", "configure_model", "is_norm_layer", "use_batch_statistics"]

#: Norm layer types recognised by type; timm's LayerNorm2d, BatchNormAct2d, GroupNormAct... subclass them.
_NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
_AFFINE = ("weight", "bias")


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer with an affine scale or shift.

    Recognised: every torch BatchNorm/InstanceNorm (``_NormBase``), ``LayerNorm``, ``GroupNorm`` and
    ``RMSNorm`` and their subclasses (timm's ``LayerNorm2d``, ``BatchNormAct2d``, ``GroupNormAct``, ...),
    and any other module whose class name contains ``"Norm"`` and that owns a parameter named
    ``weight`` or ``bias`` (timm's ``RmsNorm``, ``SimpleNorm``). A layer without affine parameters
    (``elementwise_affine=False``) is not one.
    """
    if not any(name in _AFFINE for name, _ in module.named_parameters(recurse=False)):
        return False
    return isinstance(module, _NORM_TYPES) or "Norm" in type(module).__name__


def collect_params(model: nn.Module) -> tuple[list[nn.Parameter], list[str]]:
    """The affine scale and shift parameters of every normalisation layer, and their names.

    Args:
        model: Any module.

    Returns:
        ``(params, names)`` in ``model.named_modules()`` order, each layer's ``weight`` before its ``bias``
        (the reference's order), names as in ``model.named_parameters()``.

    Example:
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
        >>> collect_params(model)[1]
        ['1.weight', '1.bias']
    """
    params: list[nn.Parameter] = []
    names: list[str] = []
    for module_name, module in model.named_modules():
        if not is_norm_layer(module):
            continue
        for name, param in module.named_parameters(recurse=False):
            if name in _AFFINE:
                params.append(param)
                names.append(f"{module_name}.{name}" if module_name else name)
    return params, names


def use_batch_statistics(model: nn.Module) -> None:
    """Put every BatchNorm layer with ``track_running_stats = False`` in train mode (batch statistics).

    :func:`configure_model` marks the layers; the wrappers call this before each forward, so an outer
    ``model.eval()`` (Lightning's test loop calls one) does not switch them back to running statistics.
    """
    for module in model.modules():
        if isinstance(module, _BatchNorm) and not module.track_running_stats:
            module.train()


def configure_model(model: nn.Module) -> nn.Module:
    """Set ``model`` up for Tent, EATA or SAR, in place.

    Every parameter gets ``requires_grad = False`` except the affine parameters of the norm layers
    (:func:`collect_params`); the model goes to eval mode; BatchNorm layers go to train mode with
    ``track_running_stats = False``, so they normalise with the statistics of each test batch and never
    update their running buffers. LayerNorm and GroupNorm normalise per sample in either mode.

    Args:
        model: The model to adapt.

    Returns:
        ``model`` itself.

    Example:
        >>> model = configure_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
        >>> [p.requires_grad for p in model.parameters()], model[1].training, model[0].training
        ([False, False, True, True], True, False)
    """
    model.requires_grad_(False)
    for param in collect_params(model)[0]:
        param.requires_grad_(True)
    model.eval()
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
    use_batch_statistics(model)
    return model


def check_model(model: nn.Module, name: str = "test-time adaptation") -> None:
    """Check that ``model`` is set up as :func:`configure_model` does.

    Args:
        model: The configured model.
        name: The method, for messages.

    Raises:
        ValueError: the model has no norm layer with affine parameters, no parameter requires a
            gradient, or every parameter does (the reference's ``check_model`` asserts the same).
    """
    if not collect_params(model)[0]:
        raise ValueError(f"{name} needs normalisation layers (BatchNorm, LayerNorm, GroupNorm) with affine "
                         "parameters; the model has none")
    flags = [p.requires_grad for p in model.parameters()]
    if not any(flags):
        raise ValueError(f"{name} needs parameters to update: no parameter requires grad; call "
                         "fewlabel.plugins.tta.configure_model(model) first")
    if all(flags):
        raise ValueError(f"{name} should not update every parameter: call "
                         "fewlabel.plugins.tta.configure_model(model) first (it trains the norm affine parameters only)")


@dataclass
class ModelFlags:
    """The train/eval mode of every module, ``requires_grad`` of every parameter and
    ``track_running_stats`` of every BatchNorm layer of a model, to put back later.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> flags = ModelFlags.capture(model)
        >>> _ = configure_model(model)
        >>> flags.restore(model)
        >>> model[1].track_running_stats, model[0].weight.requires_grad, model.training
        (True, True, True)
    """

    training: dict[str, bool]
    requires_grad: dict[str, bool]
    track_running_stats: dict[str, bool]

    @classmethod
    def capture(cls, model: nn.Module) -> ModelFlags:
        """Record the flags of ``model``."""
        return cls(
            training={name: m.training for name, m in model.named_modules()},
            requires_grad={name: p.requires_grad for name, p in model.named_parameters()},
            track_running_stats={name: m.track_running_stats for name, m in model.named_modules()
                                 if isinstance(m, _BatchNorm)},
        )

    def restore(self, model: nn.Module) -> None:
        """Put the recorded flags back on ``model`` (the same model, or one of the same structure)."""
        for name, module in model.named_modules():
            if name in self.training:
                module.training = self.training[name]
            if name in self.track_running_stats:
                module.track_running_stats = self.track_running_stats[name]  # type: ignore[assignment]
        for name, param in model.named_parameters():
            if name in self.requires_grad:
                param.requires_grad_(self.requires_grad[name])
