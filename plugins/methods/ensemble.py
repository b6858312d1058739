"""Several fine-tunes of one architecture trained together, as one vmapped model in one Trainer."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from fewlabel.plugins.methods.base import Method
from fewlabel.plugins.methods.classifier import Classifier
from fewlabel.plugins.optim.optimizers import build_optimizer

__all__ = ["ClassifierEnsemble"]


def _view_logits(member: Classifier, z: Tensor) -> Tensor:
    """``head(embed(view))``, as :meth:`Classifier.training_step` computes it."""
    frozen = member.settings.freeze_encoder
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
        emb = member.embed(z)
    return member.head(emb.float() if frozen else emb)


class _ViewLogits(nn.Module):
    """:func:`_view_logits` of one member as a module, for ``functional_call`` with every member's weights."""

    def __init__(self, member: Classifier) -> None:
        super().__init__()
        self.member = member

    def forward(self, z: Tensor) -> Tensor:
        return _view_logits(self.member, z)


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


class ClassifierEnsemble(L.LightningModule):
    """``M`` :class:`Classifier` fine-tunes of one architecture and one setting, trained in one step.

    A label-budget sweep fine-tunes the same encoder on several label draws. Trained one by one, each
    run pays for a Trainer and its loop, and on a GPU for a launch of every small kernel of every
    step. Here one Trainer runs all members, with one optimizer holding every member's parameter
    groups. With ``vectorize`` (the default on accelerators) the members' forward and backward passes
    run as one batched computation: ``torch.func.vmap`` over the members' stacked parameters and
    buffers, so the convs of ``M`` members are one grouped conv and a step launches each kernel once,
    not ``M`` times. Without it (the default on the CPU, where a small model's step is bound by
    arithmetic, not by launches) the members run one after another in the same step.

    Each member stays an ordinary :class:`Classifier` that owns its parameters, buffers (BatchNorm
    statistics are written back after each step) and modes; after the fit, ``members[i]`` is the
    trained classifier, to validate, test or save on its own. Member ``i`` trains on the ``i``-th
    dataloader of the fit (pass a list: ``trainer.fit(ensemble, [loader_0, ..., loader_M-1])``; when
    vectorized, every loader must give batches of the same shape, as the draws of one label budget do).

    **Equal to separate runs.** Member ``i`` reproduces a :class:`Classifier` fitted alone (same
    initial weights, same Trainer settings, same batches): bit for bit member after member, up to
    float rounding vectorized (a grouped conv sums in another order). The optimizer is element-wise
    (Adam, AdamW or SGD: the update of a member's parameter depends on that parameter alone), the
    learning-rate schedule is shared, and each member draws its augmentations from its own random
    stream, ``rng_states[i]``, swapped in around its :meth:`Classifier.views` call: the state torch's
    global generator has in a separate run after the member was built. The data order must not come
    from the global generator (the labeled loaders of
    :class:`~fewlabel.datamodules.FewLabelDataModule` shuffle with a
    :class:`~fewlabel.datamodules.SeededShuffle` of the draw's seed). Dropout inside the encoder
    draws from one stream for all members when vectorized, and randomness drawn while a batch is
    loaded (the random crop of an audio clip) comes from the loading process's stream: with either,
    members match separate runs in distribution only. Under ``16-mixed`` one gradient scaler serves all members,
    so an overflow in one skips the step for all (``bf16-mixed`` has no scaler).

    Not supported (use separate runs): LP-FT (``lp_steps``), whose phase switch is per module;
    gradient clipping by norm, which would clip the members' gradients jointly.

    Args:
        members: Classifiers with the same architecture (parameter and buffer names and shapes), the
            same hyperparameters and the same optimizer settings, each built with its own seed.
        rng_states: For each member, torch's global CPU generator state to draw its augmentations
            from (``torch.get_rng_state()`` right after building it); ``None``: a state per member,
            seeded from the global generator. On a CUDA device each member's CUDA generator starts
            from ``cuda_seeds[i]``.
        cuda_seeds: The seed of each member's CUDA generator (the seed a separate run gives
            ``torch.cuda.manual_seed_all``); ``None``: drawn from the global generator.
        names: A name per member for its logged loss (``train/loss/<name>``); default ``member<i>``.
        vectorize: ``True``: one vmapped computation for all members (their batches must have the same
            shape; not with BatchNorm under CUDA autocast, whose batched backward fails); ``False``:
            member after member; ``None``: vectorized on accelerators at full precision (``32-true``),
            member after member on the CPU and under mixed precision.

    Raises:
        ValueError: no members; members that differ in architecture, hyperparameters or optimizer
            settings; ``lp_steps``; ``rng_states``, ``cuda_seeds`` or ``names`` of another length.

    Example:
        >>> import lightning as L
        >>> members = []
        >>> for seed in (0, 1):
        ...     _ = L.seed_everything(seed, verbose=False)
        ...     members.append(Classifier({"name": "small_cnn", "width": 4}, num_classes=3))
        >>> ensemble = ClassifierEnsemble(members)
        >>> len(ensemble.members)
        2
    """

    def __init__(self, members: Sequence[Classifier], rng_states: Sequence[Tensor] | None = None,
                 cuda_seeds: Sequence[int] | None = None, names: Sequence[str] | None = None,
                 vectorize: bool | None = None) -> None:
        super().__init__()
        members = list(members)
        _check_members(members)
        count = len(members)
        for label, given in (("rng_states", rng_states), ("cuda_seeds", cuda_seeds), ("names", names)):
            if given is not None and len(given) != count:
                raise ValueError(f"{label} has {len(given)} entries for {count} members")
        if rng_states is None:
            seeds = torch.randint(0, 2**62, (count,)).tolist()
            rng_states = [torch.Generator().manual_seed(s).get_state() for s in seeds]
        if cuda_seeds is None:
            cuda_seeds = torch.randint(0, 2**62, (count,)).tolist()
        self.members = nn.ModuleList(members)
        self.save_hyperparameters({"members": count, "member": dict(members[0].hparams)})
        self.names = list(names) if names is not None else [f"member{i}" for i in range(count)]
        self.vectorize = vectorize
        self._cpu_states = [state.clone() for state in rng_states]
        self._cuda_states: list[Tensor | None] = [None] * count
        self._cuda_seeds = [int(s) for s in cuda_seeds]
        self._loss_window: tuple[Tensor, int] | None = None
        # not a submodule (its parameters are members[0]'s): the function functional_call applies per member
        object.__setattr__(self, "_logits", _ViewLogits(members[0]))

    @classmethod
    def build(cls, make_member: Callable[[int], Classifier], seeds: Sequence[int], **kwargs: Any) -> ClassifierEnsemble:
        """One member per seed, each built right after ``lightning.seed_everything(seed)``, as a separate run is.

        Each member's random stream is the global generator's state after its construction, so member
        ``i`` matches ``seed_everything(seeds[i]); make_member(seeds[i])`` fitted alone.
        """
        members, states = [], []
        for seed in seeds:
            L.seed_everything(seed, workers=True, verbose=False)
            members.append(make_member(seed))
            states.append(torch.get_rng_state())
        return cls(members, rng_states=states, cuda_seeds=list(seeds), **kwargs)

    @contextmanager
    def member_rng(self, index: int, device: torch.device) -> Iterator[None]:
        """Make member ``index``'s random stream torch's global one (CPU, and ``device`` if CUDA) inside the block."""
        outer_cpu, outer_cuda = _rng_state(device)
        torch.set_rng_state(self._cpu_states[index])
        if device.type == "cuda":
            state = self._cuda_states[index]
            if state is None:
                torch.cuda.manual_seed(self._cuda_seeds[index])
            else:
                torch.cuda.set_rng_state(state, device)
        try:
            yield
        finally:
            self._cpu_states[index], cuda = _rng_state(device)
            if device.type == "cuda":
                self._cuda_states[index] = cuda
                torch.cuda.set_rng_state(outer_cuda, device)
            torch.set_rng_state(outer_cpu)

    def forward(self, x: Tensor) -> Tensor:
        """Every member's logits of one raw batch, ``(M, B, num_classes)``."""
        return torch.stack([member(x) for member in self.members])

    def on_fit_start(self) -> None:
        algorithm = str(self.trainer.gradient_clip_algorithm or "norm")  # Lightning's default is "norm"
        if self.trainer.gradient_clip_val and algorithm.lower().endswith("norm"):
            raise ValueError("ClassifierEnsemble cannot clip gradients by norm (it would clip the members jointly): "
                             "use gradient_clip_algorithm='value' or separate runs")
        self.train()

    def train(self, mode: bool = True) -> ClassifierEnsemble:
        super().train(mode)
        if mode:
            for member in self.members:
                member.train(True)  # a Classifier keeps its frozen / bn_eval layers in eval mode
        return self

    def _stacked(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        named = [dict(member.named_parameters()) for member in self.members]
        params = {f"member.{name}": torch.stack([p[name] for p in named]) for name in named[0]}
        named = [dict(member.named_buffers()) for member in self.members]
        buffers = {f"member.{name}": torch.stack([b[name] for b in named]) for name in named[0]}
        return params, buffers

    def training_step(self, batch: Sequence[dict[str, Any]], batch_idx: int) -> Tensor:
        if len(batch) != len(self.members):
            raise ValueError(f"ClassifierEnsemble has {len(self.members)} members but the fit has {len(batch)} "
                             "dataloaders: pass one per member, in order")
        views = []
        for i, (member, member_batch) in enumerate(zip(self.members, batch)):
            member._hold_encoder_modes()
            with self.member_rng(i, member_batch["label"].device):
                views.append(member.views(member_batch, 1)[0])
        labels = [b["label"] for b in batch]
        smoothing = self.members[0].settings.label_smoothing
        if not self._vectorized(views[0].device):  # member after member: each as in its separate run
            losses = torch.stack([
                F.cross_entropy(_view_logits(member, z).float(), y, ignore_index=-1, label_smoothing=smoothing)
                for member, z, y in zip(self.members, views, labels)
            ])
        else:
            sizes = {tuple(z.shape) for z in views}
            if len(sizes) > 1:
                raise ValueError(f"the members' batches differ in shape {sorted(sizes)}: a vectorized ensemble needs "
                                 "loaders with the same batch size and number of samples")
            losses = self._vmapped_losses(torch.stack(views), torch.stack(labels), smoothing)
        self._log_losses(losses.detach())
        return losses.sum()

    def _vectorized(self, device: torch.device) -> bool:
        if self.vectorize is not None:
            return self.vectorize
        # vmap's batch-norm rule fails in backward under CUDA autocast (float running statistics, half inputs)
        return device.type != "cpu" and not torch.is_autocast_enabled(device.type)

    def _vmapped_losses(self, views: Tensor, labels: Tensor, smoothing: float) -> Tensor:
        """Every member's loss in one batched computation over the stacked parameters and buffers."""
        params, buffers = self._stacked()

        def member_loss(p: dict[str, Tensor], b: dict[str, Tensor], z: Tensor, y: Tensor) -> Tensor:
            logits = functional_call(self._logits, (p, b), (z,))
            return F.cross_entropy(logits.float(), y, ignore_index=-1, label_smoothing=smoothing)

        losses = vmap(member_loss, randomness="different")(params, buffers, views, labels)
        with torch.no_grad():  # BatchNorm statistics updated inside vmap live in the stacked copies
            for i, member in enumerate(self.members):
                for name, value in member.named_buffers():
                    value.copy_(buffers[f"member.{name}"][i])
        return losses

    def _log_losses(self, losses: Tensor) -> None:
        """``train/loss`` (the members' mean) through :meth:`Method.log_train`'s windows; per member on logger steps."""
        total, count = self._loss_window or (torch.zeros_like(losses), 0)
        self._loss_window = (total + losses.float(), count + 1)
        if Method._log_now(self.trainer):
            total, count = self._loss_window
            self._loss_window = None
            mean = total / count
            self.log("train/loss", mean.mean(), prog_bar=True)
            if (self.trainer.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:
                for name, value in zip(self.names, mean):
                    self.log(f"train/loss/{name}", value)

    def on_train_epoch_start(self) -> None:
        self._loss_window = None

    def configure_optimizers(self) -> dict[str, Any]:
        """The members' optimizer (their shared settings) over their parameter groups, group by group."""
        grouped = [member.parameter_groups() for member in self.members]
        groups = []
        for parts in zip(*grouped):
            group = {key: value for key, value in parts[0].items() if key != "params"}
            group["params"] = [p for part in parts for p in part["params"]]
            groups.append(group)
        return build_optimizer(self, groups, **self.members[0].optimizer_settings)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["classifier_ensemble"] = {"cpu_states": self._cpu_states, "cuda_states": self._cuda_states,
                                             "cuda_seeds": self._cuda_seeds}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("classifier_ensemble")
        if state:
            self._cpu_states = list(state["cpu_states"])
            self._cuda_states = list(state["cuda_states"])
            self._cuda_seeds = list(state["cuda_seeds"])


def _check_members(members: list[Classifier]) -> None:
    if not members:
        raise ValueError("ClassifierEnsemble needs at least one member")
    first = members[0]
    for i, member in enumerate(members):
        if not isinstance(member, Classifier):
            raise ValueError(f"member {i} is a {type(member).__name__}; ClassifierEnsemble trains Classifiers")
        if member.settings.lp_steps:
            raise ValueError("ClassifierEnsemble does not support LP-FT (lp_steps): fit those classifiers separately")
        if dict(member.hparams) != dict(first.hparams) or member.optimizer_settings != first.optimizer_settings:
            raise ValueError(f"member {i} has other hyperparameters than member 0 ({dict(member.hparams)} vs "
                             f"{dict(first.hparams)}): an ensemble trains one setting on several draws")
        shapes = {n: tuple(t.shape) for n, t in [*member.named_parameters(), *member.named_buffers()]}
        first_shapes = {n: tuple(t.shape) for n, t in [*first.named_parameters(), *first.named_buffers()]}
        if shapes != first_shapes:
            raise ValueError(f"member {i} has another architecture than member 0 (parameter or buffer names or "
                             "shapes differ)")
