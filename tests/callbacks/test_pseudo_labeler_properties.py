"""Property tests (hypothesis) of the PseudoLabeler callback inside a real Trainer, on odd pools: one sample,
duplicated and constant embeddings, NaN and inf, k up to and beyond the pool, samples the loader never shows.
Each fit ends with a valid pseudo-label table or a clear ValueError, never an error from inside faiss or numpy.
"""

from __future__ import annotations

import re
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.utils.data import DataLoader

from fewlabel.callbacks import PseudoLabeler
from fewlabel.plugins.methods.pseudo_labels import PseudoLabelMixin
from tests.callbacks.trainer_helpers import make_trainer

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# What PseudoLabeler may refuse on such pools, each a clear sentence.
CLEAR_ERRORS = (r"cannot make num_clusters=\d+ clusters from only \d+ samples", r"PCA needs at least 2 samples",
                r"PCA whitening needs variance", r"non-finite")


class IdentityModule(PseudoLabelMixin, L.LightningModule):
    """Its encoder is the identity, so the embeddings are the drawn rows; one trainable weight."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.init_pseudo_labels()
        self.encoder = nn.Identity()
        self.encoder.embed_dim = dim
        self.weight = nn.Parameter(torch.zeros(()))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.weight * 0 + self.pseudo_labels[batch["index"]].float().mean() * 0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@st.composite
def pools(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, shown)``: an ``(N, D)`` pool made of a few distinct rows (duplicates, maybe all equal), with
    NaN or inf in a few pools, and the positions the labelling loader shows (some pools hide some)."""
    n = draw(st.integers(1, 24))
    d = draw(st.integers(1, 5))
    distinct = draw(st.integers(1, n))
    values = st.floats(-100, 100, allow_nan=False, width=32)
    rows = np.array(draw(st.lists(st.lists(values, min_size=d, max_size=d), min_size=distinct, max_size=distinct)),
                    dtype=np.float32)[draw(st.lists(st.integers(0, distinct - 1), min_size=n, max_size=n))]
    if draw(st.integers(0, 5)) == 0:
        rows[draw(st.integers(0, n - 1)), draw(st.integers(0, d - 1))] = draw(st.sampled_from([np.nan, np.inf]))
    shown = np.array(sorted(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n))))
    return rows, shown


@SETTINGS
@given(pool=pools(), k=st.integers(1, 26), pca_dim=st.sampled_from([None, 2, 128]), whiten=st.booleans(),
       batch_size=st.integers(1, 8))
def test_any_pool_is_labelled_or_refused_clearly(pool: tuple[np.ndarray, np.ndarray], k: int, pca_dim: int | None,
                                                 whiten: bool, batch_size: int) -> None:
    rows, shown = pool
    n, dim = rows.shape
    samples = [{"input": torch.from_numpy(rows[i]), "label": torch.tensor(-1), "index": torch.tensor(i)}
               for i in range(n)]
    labelled = [samples[i] for i in shown]
    module = IdentityModule(dim)
    labeler = PseudoLabeler(num_clusters=k, pca_dim=pca_dim, whiten=whiten,
                            dataloader=DataLoader(labelled, batch_size=batch_size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # degenerate clusterings are warned about, not refused
        try:
            make_trainer(1, [labeler], limit_train_batches=1).fit(module, DataLoader(samples, batch_size=n))
        except ValueError as err:
            message = str(err)
            assert any(re.search(pattern, message) for pattern in CLEAR_ERRORS), message
            finite = np.isfinite(rows[shown]).all()
            assert finite or "non-finite" in message, message
            assert k > len(shown) or pca_dim is not None or not finite, message
            return
    assert np.isfinite(rows[shown]).all() and k <= len(shown)
    table = module.pseudo_labels.numpy()
    assert table.shape == (n,)  # one entry per position of the dataset, shown or not
    hidden = np.setdiff1d(np.arange(n), shown)
    assert (table[hidden] == -1).all() and ((table[shown] >= 0) & (table[shown] < k)).all()
    _, group = np.unique(rows[shown], axis=0, return_inverse=True)  # identical rows share a pseudo-label
    for g in np.unique(group):
        assert len(set(table[shown][group.reshape(-1) == g].tolist())) == 1
    assert labeler.last_clustered_epoch == 0


def test_the_property_test_sees_every_outcome() -> None:
    """The strategy reaches both a labelled pool and each kind of refusal (guards against a vacuous property)."""
    rows = np.zeros((3, 2), dtype=np.float32)
    samples = [{"input": torch.from_numpy(r), "label": torch.tensor(-1), "index": torch.tensor(i)}
               for i, r in enumerate(rows)]
    for kwargs, match in (({"num_clusters": 4}, CLEAR_ERRORS[0]), ({"num_clusters": 2}, CLEAR_ERRORS[2])):
        with pytest.raises(ValueError, match=match):
            make_trainer(1, [PseudoLabeler(dataloader=DataLoader(samples), **kwargs)]).fit(
                IdentityModule(2), DataLoader(samples, batch_size=3))
