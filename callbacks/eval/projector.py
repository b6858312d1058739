"""A 2-D map of the encoder's embeddings (PCA or t-SNE), coloured by label, saved as PNG and sent to wandb."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from fewlabel.callbacks.eval.base import EmbeddingEvaluator, _LoaderArg
from fewlabel.plugins.arguments import check_int, is_count
from fewlabel.plugins.gather import Embeddings

__all__ = ["EmbeddingProjector", "label_colours", "project_2d", "render_scatter", "to_pixels"]

METHODS = ("pca", "tsne")
COLOR_BY = ("label", "pseudo_labels")
#: Colour of rows without a label (``-1``).
UNLABELED_COLOUR = (200, 200, 200)
# matplotlib's "tab20" order: the ten "tab10" colours first, then their light variants.
_PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
]
_LEGEND_ROWS = 20
_MARGIN = 0.06  # of the shorter side, around the points


def label_colours(labels: Sequence[int]) -> dict[int, tuple[int, int, int]]:
    """A distinct RGB colour for every label: tab20's for ``0..19``, golden-ratio hues beyond, grey for ``-1``.

    Example:
        >>> label_colours([-1, 0, 1])
        {-1: (200, 200, 200), 0: (31, 119, 180), 1: (255, 127, 14)}
    """
    out: dict[int, tuple[int, int, int]] = {}
    for label in sorted({int(v) for v in labels}):
        if label < 0:
            out[label] = UNLABELED_COLOUR
        elif label < len(_PALETTE) and _PALETTE[label] != UNLABELED_COLOUR:
            out[label] = _PALETTE[label]
        else:
            r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.75, 0.85)
            out[label] = (round(255 * r), round(255 * g), round(255 * b))
    return out


def project_2d(embeddings: np.ndarray, method: str = "pca", *, normalize: bool = True, seed: int = 0,
               tsne_iters: int = 1000) -> np.ndarray:
    """``(N, 2)`` float64 coordinates of ``(N, D)`` embeddings: the top two principal components, or t-SNE.

    PCA is numpy's SVD of the centred rows, each component's sign fixed so that its largest loading
    is positive (the map does not flip between calls). t-SNE is scikit-learn's ``TSNE`` (PCA
    initialisation, ``random_state=seed``, perplexity ``min(30, (N - 1) / 3)``, ``tsne_iters`` iterations,
    the first 250 of them exaggerated). With ``normalize`` the
    rows are L2 normalised first (the cosine geometry kNN evaluation and separability use).

    Raises:
        ValueError: an unknown ``method`` or fewer than 2 rows.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x = np.asarray(embeddings, dtype=np.float64).reshape(len(embeddings), -1)
    if x.shape[0] < 2:
        raise ValueError(f"a 2-D map needs at least 2 rows, got {x.shape[0]}")
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(1.0, (x.shape[0] - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                    max_iter=tsne_iters).fit_transform(x)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    components = vt[:2]
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    points = x @ (components * signs[:, None]).T
    return points if points.shape[1] == 2 else np.pad(points, ((0, 0), (0, 2 - points.shape[1])))


def to_pixels(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(N, 2)`` int pixel positions of ``points`` on a ``(width, height)`` canvas: equal scale on both
    axes (distances are not distorted), centred, y pointing up, a margin of 6 % of the shorter side."""
    width, height = size
    margin = _MARGIN * min(width, height)
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    scale = min((width - 2 * margin) / span[0], (height - 2 * margin) / span[1])
    centre = (lo + hi) / 2
    x = width / 2 + (points[:, 0] - centre[0]) * scale
    y = height / 2 - (points[:, 1] - centre[1]) * scale
    return np.rint(np.stack([x, y], axis=1)).astype(np.int64)


def render_scatter(points: np.ndarray, labels: np.ndarray, size: tuple[int, int] = (640, 640), *,
                   radius: int = 2, title: str | None = None) -> Image.Image:
    """An RGB scatter plot of ``points`` on white, one :func:`label_colours` colour per label.

    Unlabeled rows (``-1``) are drawn first, then the classes in increasing order; a legend of up to
    20 classes sits in the top-left corner, ``title`` at the top centre. Drawn with PIL, so it needs
    no plotting library and gives the same pixels on every machine.
    """
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    labels = np.asarray(labels).reshape(-1)
    colours = label_colours(labels.tolist())
    pixels = to_pixels(points, size)
    for label in sorted(colours):
        for x, y in pixels[labels == label]:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colours[label])
    font = ImageFont.load_default()
    classes = [label for label in sorted(colours) if label >= 0]
    for row, label in enumerate(classes[:_LEGEND_ROWS]):
        top = 4 + 12 * row
        draw.rectangle([4, top, 12, top + 8], fill=colours[label])
        draw.text((16, top - 1), str(label), fill=(0, 0, 0), font=font)
    if len(classes) > _LEGEND_ROWS:
        draw.text((16, 4 + 12 * _LEGEND_ROWS), f"... {len(classes) - _LEGEND_ROWS} more", fill=(0, 0, 0), font=font)
    if title:
        draw.text((max(0.0, (size[0] - draw.textlength(title, font=font)) / 2), 4), title, fill=(0, 0, 0), font=font)
    return image


class EmbeddingProjector(EmbeddingEvaluator):
    """A 2-D map of ``pl_module.encoder``'s embeddings, coloured by label or by the module's pseudo-labels.

    When it runs (at fit end by default; every ``every_n_epochs``-th training epoch when set), the
    loader is embedded on every rank (:meth:`gather`, all-gathered), and rank 0 projects the rows to
    2-D (:func:`project_2d`: PCA, or t-SNE from scikit-learn), draws them (:func:`render_scatter`, PIL;
    unlabeled rows in grey) and saves
    ``<dirpath>/projection-<method>-epoch<EEE>-step<SSSSSS>.png``. With a
    :class:`~lightning.pytorch.loggers.WandbLogger` among ``trainer.loggers`` the image is also logged
    as a ``wandb.Image`` under ``metric_name``. No metric is logged, so nothing can monitor it.

    Colours: ``color_by="label"`` reads ``batch[label_key]`` (for the unlabeled pool, whose
    ``"label"`` is ``-1``, pass ``label_key="target"``: the true label, for monitoring);
    ``color_by="pseudo_labels"`` reads ``pl_module.pseudo_labels[batch["index"]]``, so the loader
    must index the table's dataset (by default the pool); an empty table colours every row grey.

    Contract with the LightningModule: ``.encoder`` with ``embed_dim`` (checked in ``on_fit_start``),
    and for ``color_by="pseudo_labels"`` a ``pseudo_labels`` tensor (such as
    :class:`fewlabel.plugins.methods.PseudoLabelMixin`'s). The encoder's train/eval flags are left as
    they were (:func:`fewlabel.plugins.gather.gather_embeddings` restores them).

    Args:
        method: ``"pca"`` or ``"tsne"``.
        color_by: ``"label"`` or ``"pseudo_labels"``.
        dataloader: the rows to map: a DataLoader, or a zero-argument callable returning one; ``None``
            uses ``trainer.datamodule.val_dataloader()`` for ``color_by="label"`` and
            ``trainer.datamodule.unlabeled_dataloader(train=False)`` for ``"pseudo_labels"``.
        dirpath: folder of the PNG files; ``None`` = ``<trainer.log_dir>/projections``.
        image_size: ``(width, height)`` of the image in pixels, each ``>= 64``.
        point_radius: radius of a point in pixels.
        max_points: map a seeded sample of this many rows of a larger loader (t-SNE is slow);
            ``None`` = every row.
        normalize: L2 normalise the embeddings before projecting.
        seed: seed of the sample and of t-SNE.
        every_n_epochs: draw after every ``n``-th training epoch; ``None`` = only when fitting ends.
        eval_on_fit_end: draw once more when fitting ends.
        label_key: batch key of the labels for ``color_by="label"``.
        metric_name: the wandb key of the image.

    Raises:
        ValueError: an invalid argument, naming the valid values.

    Example:
        >>> cb = EmbeddingProjector(method="pca", every_n_epochs=5)
        >>> cb.should_evaluate(4), cb.eval_on_fit_end
        (True, True)
    """

    def __init__(
        self,
        *,
        method: str = "pca",
        color_by: str = "label",
        dataloader: _LoaderArg = None,
        dirpath: str | Path | None = None,
        image_size: tuple[int, int] = (640, 640),
        point_radius: int = 2,
        max_points: int | None = 5000,
        normalize: bool = True,
        seed: int = 0,
        every_n_epochs: int | None = None,
        eval_on_fit_end: bool = True,
        label_key: str = "label",
        metric_name: str = "eval/projection",
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"{self._name}: method must be one of {METHODS}, got {method!r}")
        if color_by not in COLOR_BY:
            raise ValueError(f"{self._name}: color_by must be one of {COLOR_BY}, got {color_by!r}")
        default = ("val_dataloader", {}) if color_by == "label" else ("unlabeled_dataloader", {"train": False})
        super().__init__(metric_name=metric_name, eval_dataloader=dataloader, eval_dataloader_arg="dataloader",
                         every_n_epochs=every_n_epochs, eval_on_fit_end=eval_on_fit_end, label_key=label_key,
                         eval_dataloader_method=default[0], eval_dataloader_kwargs=default[1])
        if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
                or not all(is_count(v, 64) for v in image_size)):
            raise ValueError(f"{self._name}: image_size must be (width, height) with ints >= 64, got {image_size!r}")
        check_int("point_radius", point_radius, 1, owner=self._name)
        check_int("max_points", max_points, 2, "None (every row)", owner=self._name)
        check_int("seed", seed, 0, owner=self._name)
        if not isinstance(normalize, bool):
            raise ValueError(f"{self._name}: normalize must be True or False, got {normalize!r}")
        if dirpath is not None and not isinstance(dirpath, (str, Path)):
            raise ValueError(f"{self._name}: dirpath must be a folder path or None (use trainer.log_dir), "
                             f"got {type(dirpath).__name__}")
        self.method = method
        self.color_by = color_by
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.point_radius = point_radius
        self.max_points = max_points
        self.normalize = normalize
        self.seed = seed
        self.last_path: Path | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(metric_name=self.metric_name, method=self.method, color_by=self.color_by)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self.color_by == "pseudo_labels" and not isinstance(getattr(pl_module, "pseudo_labels", None), Tensor):
            raise AttributeError(
                f"{self._name}(color_by='pseudo_labels') needs {type(pl_module).__name__} to have a `pseudo_labels` "
                "tensor (fewlabel.plugins.methods.PseudoLabelMixin); or pass color_by='label'"
            )

    def output_dir(self, trainer: L.Trainer) -> Path:
        """Where the PNG files go: ``dirpath``, or ``<trainer.log_dir>/projections`` (every rank must call it)."""
        if self.dirpath is not None:
            return self.dirpath
        return Path(trainer.log_dir or trainer.default_root_dir) / "projections"

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        emb = self.gather(trainer, pl_module, self.resolve_eval_dataloader(trainer), "dataloader", labeled_only=False)
        folder = self.output_dir(trainer)  # trainer.log_dir broadcasts: every rank
        if not trainer.is_global_zero:
            return None
        labels = self._labels(pl_module, emb)
        rows = np.arange(len(emb))
        if self.max_points is not None and len(emb) > self.max_points:
            rows = np.sort(np.random.default_rng(self.seed).choice(len(emb), size=self.max_points, replace=False))
        points = project_2d(np.asarray(emb.embeddings[rows], dtype=np.float32), self.method,
                            normalize=self.normalize, seed=self.seed)
        epoch, step = trainer.current_epoch, trainer.global_step
        title = f"{self.method} of {len(rows)} embeddings by {self.color_by}, epoch {epoch}, step {step}"
        image = render_scatter(points, labels[rows], self.image_size, radius=self.point_radius, title=title)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"projection-{self.method}-epoch{epoch:03d}-step{step:06d}.png"
        image.save(path)
        self.last_path = path
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=self.metric_name, images=[image], step=step, caption=[title])
        return None

    def _labels(self, pl_module: L.LightningModule, emb: Embeddings) -> np.ndarray:
        if self.color_by == "label":
            return emb.labels
        table = pl_module.pseudo_labels.detach().cpu().numpy().astype(np.int64)
        if table.size == 0:
            rank_zero_warn(f"{self._name}: pl_module.pseudo_labels is empty; every row is drawn grey")
            return np.full(len(emb), -1, dtype=np.int64)
        if int(emb.indices.max()) >= table.size:
            raise ValueError(
                f"{self._name}(color_by='pseudo_labels'): the loader's index reaches {int(emb.indices.max())}, beyond "
                f"the {table.size} pseudo-labels; pass dataloader=<the loader of the pseudo-labelled dataset>"
            )
        return table[emb.indices]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["last_path"] = None if self.last_path is None else str(self.last_path)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        last = state_dict.get("last_path")
        self.last_path = None if last is None else Path(last)
