"""Every SSL method of the zoo on the digits, under one budget: kNN and linear-probe accuracy with 5 labels/class.

The methods are those of ``METHODS`` except ``byola`` (BYOL with audio views; ``byol`` is here).
``--data spoken --root DIR`` runs the audio methods on spoken digits instead (see ``AUDIO_METHODS``).
Each method trains on the unlabeled pool of :class:`~fewlabel.datamodules.DigitsDataModule` (seed 0)
with the same encoder (``small_cnn``, width 16, 64-d embedding), the same number of epochs, batch 64,
and the same view augmentation ``BatchImageAugment(scale=(0.8, 1.2), rotation=15, translate=0.12,
noise=0.05)`` where the method takes one: RotNet applies it before making its four rotations, DINO
applies it to each of its multi-crop views (its default two global + two local crops). Every method
keeps its own default optimiser settings (see each class) except where ``--lr METHOD=VALUE`` or
``--set METHOD.KEY=VALUE`` overrides them; BYOL and DINO get ``EMATeacher()``
(momentum 0.996 -> 1 on a cosine). Two reference rows need no training: ``raw_pixels`` (the
flattened 8x8 input) and ``random_init`` (an untrained small_cnn, eval mode).

Evaluation of ``module.encoder`` (what downstream stages use; for BYOL and DINO the online student)
and, in a ``NAME:teacher`` row, of the momentum teacher's encoder of BYOL and DINO (DINO's paper
evaluates the teacher), in eval mode, without augmentation: the bank is the 5-labels-per-class
draw (``dm.draw_labels(5, 0)``, 50 samples) and the queries are the TEST split (540 samples); kNN is
:func:`~fewlabel.plugins.knn_accuracy` with ``k=10``, ``T=0.07``, the linear probe is
:func:`~fewlabel.plugins.linear_probe_accuracy` (standardised features, L-BFGS logistic regression,
``C=1``) fitted on the same 50 samples. Chance is 0.10. ``train_s`` is the wall time of
``trainer.fit`` (DeepCluster-v2's includes its memory-bank pass and the k-means every epoch).

To choose an lr without looking at the test split, pass ``--queries val`` (the validation split,
126 samples, carved off before the pool).

Torch runs on one thread (``torch.set_num_threads(1)``): the machine these figures come from has 2
shared cores, and one thread keeps the per-method times comparable with each other.

    python benchmarks/ssl_zoo_digits.py                          # 7 methods + 2 references, 30 epochs
    python benchmarks/ssl_zoo_digits.py --methods simclr byol --epochs 50
    python benchmarks/ssl_zoo_digits.py --methods vicreg --lr vicreg=0.01 --queries val
    python benchmarks/ssl_zoo_digits.py --methods dino --set dino.out_dim=256 ema.base_momentum=0.99 --queries val
    python benchmarks/ssl_zoo_digits.py --quick                  # 1 epoch, 2 methods, seconds
"""

from __future__ import annotations

import argparse
import inspect
import logging
import time
import warnings
from typing import Any

import lightning as L
import torch
import yaml
from torch import nn

from fewlabel.callbacks import EMATeacher
from fewlabel.datamodules import AudioFolderDataModule, DigitsDataModule, FewLabelDataModule
from fewlabel.plugins.augment.byola import ByolaAugment
from fewlabel.plugins.augment.image import BatchImageAugment
from fewlabel.plugins.encoders.base import build_encoder
from fewlabel.plugins.evaluation.knn import knn_accuracy
from fewlabel.plugins.evaluation.linear_probe import linear_probe_accuracy
from fewlabel.plugins.gather import gather_embeddings
from fewlabel.plugins.methods import METHODS

SSL_METHODS = ["deepcluster_v2", "simclr", "byol", "dino", "barlow_twins", "vicreg", "rotnet"]
REFERENCES = ["raw_pixels", "random_init"]
QUICK_METHODS = ["simclr", "byol"]
ENCODER = {"name": "small_cnn", "width": 16}
#: Spoken digits (``--data spoken --root DIR``, folders made by ``examples/make_spoken_digits.py``): the
#: methods that take audio (RotNet's rotations of a spectrogram are not a meaningful task; BYOL-A is
#: the audio method), the student-sized AudioNTT of ``examples/unfused_audio.yaml`` and the BYOL-A
#: views of its teacher. ``raw_logmel`` is the untrained front end's log-mel, mean- and max-pooled over time.
AUDIO_METHODS = ["deepcluster_v2", "simclr", "byol", "byola", "dino", "barlow_twins", "vicreg"]
AUDIO_REFERENCES = ["raw_logmel", "random_init"]
AUDIO_ENCODER = {"name": "audio_ntt", "n_mels": 64, "channels": 32, "embed_dim": 512}
#: AudioNTT needs all 64 mel bins: DINO's local crops are resized to 64 mels x 3/7 of the frames
#: (its default local size, 3/7 of both sides, would give 27 mels).
AUDIO_SETTINGS: dict[str, dict[str, Any]] = {"dino": {"local_size": [64, 43]}}
BATCH_SIZE = 64
LABELS_PER_CLASS = 5
KNN_K = 10
#: Per-method lr where the method's default does not train usefully on this budget, chosen on the
#: VALIDATION split (``--queries val``); ``--lr METHOD=VALUE`` adds one. Barlow Twins had one (SGD
#: 1.5e-4) until its default became AdamW 1e-3 (see ``BarlowTwins``).
LR_OVERRIDES: dict[str, float] = {}
#: Per-method constructor arguments other than the lr (``--set``), chosen on the validation split.
SETTING_OVERRIDES: dict[str, dict[str, Any]] = {}


def augmentation(data: str = "digits") -> nn.Module:
    """The one view augmentation every method that takes one gets."""
    if data == "spoken":
        return ByolaAugment(ratio=0.4, memory_size=2048, virtual_crop_scale=(1.0, 1.5), freq_scale=(0.6, 1.5),
                            time_scale=(0.6, 1.5))
    return BatchImageAugment(scale=(0.8, 1.2), rotation=15.0, translate=0.12, noise=0.05)


class _PooledLogMel(nn.Module):
    """An untrained encoder's log-mel front end, mean and max over time: the audio analogue of raw pixels."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.frontend = encoder.frontend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.frontend(x).flatten(1, -2)  # (B, mels, T)
        return torch.cat([z.mean(-1), z.amax(-1)], dim=1)


def build_method(name: str, dm: FewLabelDataModule, lr: float | None, settings: dict[str, Any] | None = None,
                 data: str = "digits") -> L.LightningModule:
    """``METHODS.create(name)`` with the shared encoder and augmentation (and the pool size where needed).

    ``settings`` are extra constructor arguments (``--set``), applied last.
    """
    encoder = AUDIO_ENCODER if data == "spoken" else ENCODER
    kwargs: dict[str, Any] = {"encoder": encoder, "augment": augmentation(data)}
    if "num_samples" in inspect.signature(METHODS.get(name)).parameters:
        kwargs["num_samples"] = dm.num_unlabeled
    if lr is not None:
        kwargs["lr"] = lr
    return METHODS.create(name, **{**kwargs, **(settings or {})})


def train(module: L.LightningModule, dm: FewLabelDataModule, epochs: int, ema: dict[str, Any] | None = None) -> float:
    """Fit ``module`` on the unlabeled pool; returns the wall time of ``trainer.fit``.

    ``ema`` are ``EMATeacher`` arguments for a method with ``momentum_pairs()`` (default: its defaults).
    """
    callbacks = [EMATeacher(**(ema or {}))] if callable(getattr(module, "momentum_pairs", None)) else []
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                        log_every_n_steps=1)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=dm.unlabeled_dataloader(train=True))
    return time.perf_counter() - start


def evaluate(encoder: nn.Module, dm: FewLabelDataModule, queries: str) -> tuple[float, float]:
    """``(knn, linear_probe)`` accuracy: bank = the labeled draw, queries = the test (or validation) split."""
    bank = gather_embeddings(encoder, dm.labeled_dataloader(train=False))
    loader = dm.test_dataloader() if queries == "test" else dm.val_dataloader()
    query = gather_embeddings(encoder, loader)
    knn = knn_accuracy(bank.embeddings, bank.labels, query.embeddings, query.labels, k=KNN_K,
                       num_classes=dm.num_classes)
    probe = linear_probe_accuracy(bank.embeddings, bank.labels, query.embeddings, query.labels)
    return knn, probe


def run(name: str, dm: FewLabelDataModule, epochs: int, lr: float | None, queries: str, seed: int,
        settings: dict[str, Any] | None = None, ema: dict[str, Any] | None = None, data: str = "digits"
        ) -> list[dict[str, Any]]:
    """Train (unless a reference row) and evaluate one method; a failure is reported, not raised.

    Returns one row for ``module.encoder`` and, for a method with ``momentum_pairs()`` (BYOL, DINO),
    a ``NAME:teacher`` row for the momentum teacher's encoder (the one DINO's paper evaluates).
    """
    L.seed_everything(seed, verbose=False)
    row: dict[str, Any] = {"method": name, "epochs": 0, "lr": "-", "train_s": 0.0}
    encoders: dict[str, nn.Module] = {}
    try:
        if name == "raw_pixels":
            encoders[name] = nn.Flatten()
        elif name == "raw_logmel":
            encoders[name] = _PooledLogMel(build_encoder(AUDIO_ENCODER))
        elif name == "random_init":
            encoders[name] = build_encoder(AUDIO_ENCODER if data == "spoken" else ENCODER)
        else:
            module = build_method(name, dm, lr, settings, data)
            row["lr"] = f"{module.optimizer_settings['name']} {module.optimizer_settings['lr']:g}"
            row["epochs"] = epochs
            row["train_s"] = train(module, dm, epochs, ema)
            encoders[name] = module.encoder
            if callable(getattr(module, "momentum_pairs", None)):
                encoders[f"{name}:teacher"] = module.momentum_pairs()[0][1]
        rows = []
        for label, encoder in encoders.items():
            knn, probe = evaluate(encoder, dm, queries)
            rows.append({**row, "method": label, "knn": knn, "probe": probe})
        return rows
    except Exception as err:  # noqa: BLE001 - one method failing must not hide the others' figures
        return [{**row, "error": f"{type(err).__name__}: {err}"}]


def parse_settings(pairs: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``--set METHOD.KEY=VALUE`` -> ``{METHOD: {KEY: VALUE}}`` (values parsed as YAML: ``0.99``, ``[0.4, 1]``)."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        target, _, value = pair.partition("=")
        name, _, key = target.partition(".")
        if name not in methods or not key or not value:
            raise SystemExit(f"--set takes METHOD.KEY=VALUE with METHOD in {methods}, got {pair!r}")
        out.setdefault(name, {})[key] = yaml.safe_load(value)
    return out


def parse_lr(pairs: list[str], methods: list[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in methods or not value:
            raise SystemExit(f"--lr takes METHOD=VALUE with METHOD in {methods}, got {pair!r}")
        out[name] = float(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["digits", "spoken"], default="digits",
                        help="digits: scikit-learn's 8x8 digits; spoken: an audio folder (--root) of spoken digits")
    parser.add_argument("--root", default=None, help="folder of examples/make_spoken_digits.py (--data spoken)")
    parser.add_argument("--methods", nargs="+", choices=sorted(set(SSL_METHODS + AUDIO_METHODS + REFERENCES
                                                                   + AUDIO_REFERENCES)), default=None,
                        help="default: every SSL method of the data and both references")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs of every method (default 30)")
    parser.add_argument("--lr", nargs="+", default=[], metavar="METHOD=VALUE", help="override a method's lr")
    parser.add_argument("--set", nargs="+", default=[], metavar="METHOD.KEY=VALUE",
                        help="extra constructor argument of a method; METHOD may be 'ema' for EMATeacher's arguments")
    parser.add_argument("--queries", choices=["test", "val"], default="test",
                        help="query split of the evaluation; tune on val, report on test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help=f"1 epoch, {' + '.join(QUICK_METHODS)} and the references")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    overrides = AUDIO_SETTINGS if args.data == "spoken" else SETTING_OVERRIDES
    settings = {m: dict(v) for m, v in overrides.items()}
    spoken = args.data == "spoken"
    all_methods, references = (AUDIO_METHODS, AUDIO_REFERENCES) if spoken else (SSL_METHODS, REFERENCES)
    lrs = {**LR_OVERRIDES, **parse_lr(args.lr, all_methods)}
    for name, values in parse_settings(args.set, all_methods + ["ema"]).items():
        settings.setdefault(name, {}).update(values)
    ema = settings.pop("ema", None)
    methods = args.methods or ((QUICK_METHODS + references) if args.quick else (all_methods + references))
    epochs = args.epochs or (1 if args.quick else 30)

    if spoken:
        if args.root is None:
            raise SystemExit("--data spoken needs --root DIR (python examples/make_spoken_digits.py --root DIR)")
        dm: FewLabelDataModule = AudioFolderDataModule(args.root, batch_size=BATCH_SIZE, seed=args.seed)
    else:
        dm = DigitsDataModule(batch_size=BATCH_SIZE, seed=args.seed)
    dm.setup("fit")
    dm.draw_labels(LABELS_PER_CLASS, args.seed)
    queries = len(dm.test_dataloader().dataset) if args.queries == "test" else len(dm.val_dataloader().dataset)
    encoder = AUDIO_ENCODER if spoken else ENCODER
    print(f"ssl_zoo_digits ({args.data}): pool {dm.num_unlabeled} (seed {args.seed}), encoder {encoder}, batch {BATCH_SIZE}, "
          f"{epochs} epochs, bank {LABELS_PER_CLASS} labels/class ({len(dm.labeled_indices)}), "
          f"queries {args.queries} split ({queries}), kNN k={KNN_K}, torch threads {torch.get_num_threads()}")
    print(f"{'method':<16}{'optimizer lr':>14}{'epochs':>8}{'train_s':>9}{'knn_acc':>9}{'probe_acc':>11}")
    failed = []
    for name in methods:
        for row in run(name, dm, epochs, lrs.get(name), args.queries, args.seed, settings.get(name), ema, args.data):
            if "error" in row:
                print(f"{row['method']:<16}{row['lr']:>14}{row['epochs']:>8}  FAILED {row['error']}", flush=True)
                failed.append(name)
                continue
            print(f"{row['method']:<16}{row['lr']:>14}{row['epochs']:>8}{row['train_s']:>9.1f}{row['knn']:>9.4f}"
                  f"{row['probe']:>11.4f}", flush=True)
    print(f"chance: {1 / dm.num_classes:.4f}")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
