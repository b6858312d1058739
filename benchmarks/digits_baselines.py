"""Classical few-label baselines on the digits split of the main job, for scale.

Same data, split and label draws as ``fewlabel run unfused`` (DigitsDataModule: stratified 70/30 with
``random_state=0``, 10 % validation carved off, labels drawn from the pool with seeds 0-4): logistic
regression on the raw pixels of the labeled samples, and scikit-learn's graph label spreading
(k-NN kernel, ``n_neighbors=7``) over the whole pool. Prints test accuracy, mean +- sample std.

    python benchmarks/digits_baselines.py
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.semi_supervised import LabelSpreading

from fewlabel.datamodules import DigitsDataModule


def features(loader: object) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for batch in loader:  # type: ignore[attr-defined]
        xs.append(batch["input"].flatten(1).numpy())
        ys.append((batch["target"] if "target" in batch else batch["label"]).numpy())
    return np.concatenate(xs), np.concatenate(ys)


def main() -> None:
    dm = DigitsDataModule()
    dm.setup("fit")
    x_pool, y_pool = features(dm.unlabeled_dataloader(train=False))
    x_test, y_test = features(dm.test_dataloader())
    print(f"digits: pool {len(x_pool)}, test {len(x_test)}")
    for k in (1, 5, 10):
        logreg, spread = [], []
        for seed in range(5):
            dm.draw_labels(k, seed)
            idx = dm.labeled_indices
            clf = LogisticRegression(max_iter=5000).fit(x_pool[idx], y_pool[idx])
            logreg.append(clf.score(x_test, y_test))
            partial = np.full(len(y_pool), -1)
            partial[idx] = y_pool[idx]
            ls = LabelSpreading(kernel="knn", n_neighbors=7, max_iter=1000).fit(x_pool, partial)
            spread.append(ls.score(x_test, y_test))
        print(f"  {k:>2} labels/class: logistic regression {100 * np.mean(logreg):.1f} +- {100 * np.std(logreg, ddof=1):.1f}"
              f", label spreading {100 * np.mean(spread):.1f} +- {100 * np.std(spread, ddof=1):.1f}")


if __name__ == "__main__":
    main()
