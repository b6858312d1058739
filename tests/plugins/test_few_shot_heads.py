"""Few-shot heads: hand-computed cases, scikit-learn's LDA, and easyfsl's figures on fixed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.covariance import ledoit_wolf
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

import fewlabel.plugins.heads as heads
from fewlabel.plugins.evaluation import fit_linear_probe
from fewlabel.plugins.heads import (
    BDCSPN,
    HEADS,
    FewShotHead,
    GDAHead,
    LogisticRegressionHead,
    ProtoNet,
    SimpleShot,
    create_few_shot_head,
    list_few_shot_heads,
)

# Fixed inputs of the easyfsl reference run: np.random.default_rng(0).normal rounded to 2 decimals.
SUPPORT = torch.tensor([[0.13, -0.13, 0.64, 0.10], [-0.54, 0.36, 1.30, 0.95], [-0.70, -1.27, -0.62, 0.04],
                        [-2.33, -0.22, -1.25, -0.73], [-0.54, -0.32, 0.41, 1.04], [-0.13, 1.37, -0.67, 0.35]])
SUPPORT_LABELS = torch.tensor([0, 0, 1, 1, 2, 2])
QUERY = torch.tensor([[0.90, 0.09, -0.74, -0.92], [-0.46, 0.22, -1.01, -0.21], [-0.16, 0.54, 0.21, 0.36],
                      [-0.65, -0.13, 0.78, 1.49]])


def gaussians(seed: int = 0, per: int = 20, gap: float = 20.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit-variance Gaussians in 3-D with means ``(gap, 0, 0)`` and ``(0, gap, 0)`` (apart in angle too)."""
    rng = np.random.default_rng(seed)
    means = np.array([[gap, 0.0, 0.0], [0.0, gap, 0.0]])
    x = np.concatenate([m + rng.normal(size=(per, 3)) for m in means])
    return torch.tensor(x, dtype=torch.float32), torch.tensor(np.repeat([0, 1], per))


def test_registry_names_and_public_surface() -> None:
    assert list_few_shot_heads() == ["bd_cspn", "gda", "logistic", "protonet", "simpleshot"]
    for name, cls in [("protonet", ProtoNet), ("simpleshot", SimpleShot), ("gda", GDAHead),
                      ("logistic", LogisticRegressionHead), ("bd_cspn", BDCSPN)]:
        assert HEADS.get(name) is cls and isinstance(create_few_shot_head(name), FewShotHead)
    public = {"ProtoNet", "SimpleShot", "GDAHead", "LogisticRegressionHead", "BDCSPN", "FewShotHead"}
    assert public <= set(heads.__all__)
    with pytest.raises(ValueError, match="did you mean 'protonet'"):
        create_few_shot_head("protonett")
    with pytest.raises(ValueError, match="unknown few-shot head 'linear'"):
        create_few_shot_head("linear", in_dim=2, out_dim=2)
    assert BDCSPN.transductive and not ProtoNet.transductive


def test_protonet_separated_gaussians_logits_are_minus_the_distance_to_the_means() -> None:
    x, y = gaussians()
    q, qy = gaussians(seed=1)
    head = ProtoNet().fit(x, y)
    means = np.stack([x[y == c].numpy().mean(axis=0) for c in (0, 1)])
    expected = -np.linalg.norm(q.numpy()[:, None, :] - means[None], axis=2)
    np.testing.assert_allclose(head.prototypes.numpy(), means, rtol=1e-6)
    np.testing.assert_allclose(head(q).numpy(), expected, rtol=1e-5)
    assert head(q).dtype == torch.float32
    assert (head.predict(q) == qy).all()  # 100 %


def test_protonet_matches_easyfsl() -> None:
    # easyfsl 1.5.0, PrototypicalNetworks(): process_support_set(SUPPORT, SUPPORT_LABELS); model(QUERY)
    expected = [[-2.496752977371216, -2.6264233589172363, -2.166743040084839],
                [-2.1299471855163574, -1.4380890130996704, -1.3046358823776245],
                [-0.8873978853225708, -2.301151990890503, -0.5086010098457336],
                [-1.1069666147232056, -2.726701259613037, -1.4100974798202515]]
    torch.testing.assert_close(ProtoNet().fit(SUPPORT, SUPPORT_LABELS)(QUERY), torch.tensor(expected))


def test_arbitrary_labels_map_to_sorted_classes() -> None:
    x = torch.tensor([[10.0, 0.0], [0.0, 0.0], [0.0, 10.0]])
    head = ProtoNet().fit(x, torch.tensor([7, -3, 42]))
    assert head.classes_.tolist() == [-3, 7, 42]
    logits = head(torch.tensor([[9.0, 0.0]]))
    assert logits.argmax(1).item() == 1 and head.predict(torch.tensor([[9.0, 0.0]])).tolist() == [7]
    assert ProtoNet().fit(x.numpy(), np.array([7, -3, 42])).classes_.tolist() == [-3, 7, 42]  # numpy in
    explicit = ProtoNet().fit(x, torch.tensor([1, 0, 2]), classes=[2, 1, 0])
    assert explicit.classes_.tolist() == [0, 1, 2]


def test_simpleshot_centring_and_normalisation_by_hand() -> None:
    x = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 3.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1])
    head = SimpleShot().fit(x, y)  # centre = support mean (1, 1)
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(head.mean, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(head.transform(x), torch.tensor([[r, -r], [-r, -r], [0.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(head.centroids, torch.tensor([[0.0, -r], [0.0, 0.5]]))
    q = torch.tensor([[1.0, 3.0]])  # transformed: (0, 1)
    torch.testing.assert_close(head(q), torch.tensor([[-(1 + r), -0.5]]))
    torch.testing.assert_close(SimpleShot(metric="cosine").fit(x, y)(q), torch.tensor([[-1.0, 1.0]]))
    base = SimpleShot(base_mean=torch.tensor([0.0, 0.0])).fit(x, y)  # a base mean from elsewhere
    torch.testing.assert_close(base.transform(torch.tensor([[3.0, 4.0]])), torch.tensor([[0.6, 0.8]]))
    fitted = SimpleShot().fit(x, y, base_mean=np.array([0.0, 0.0]))  # fit's base mean, this fit only
    torch.testing.assert_close(fitted.mean, torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(fitted.fit(x, y).mean, torch.tensor([1.0, 1.0]))


def test_simpleshot_cosine_matches_easyfsl() -> None:
    # easyfsl 1.5.0, SimpleShot(feature_centering=c, feature_normalization=2) on SUPPORT / QUERY
    base = [[-0.8161518573760986, 0.031195975840091705, -0.3352406919002533],
            [-0.6429916620254517, 0.6969594359397888, 0.4531573951244354],
            [0.39776578545570374, -0.08373039960861206, 0.8708844184875488],
            [0.7036449909210205, 0.026442818343639374, 0.7251499891281128]]  # c = (0.1, -0.2, 0.3, 0.0)
    own = [[0.004077047109603882, 0.04534927010536194, -0.09720343351364136],
           [-0.6720796823501587, 0.43683815002441406, -0.19947980344295502],
           [0.6462339758872986, -0.8903617858886719, 0.7107037305831909],
           [0.601862907409668, -0.603848934173584, 0.642019510269165]]  # c = SUPPORT.mean(0)
    head = SimpleShot(base_mean=torch.tensor([0.1, -0.2, 0.3, 0.0]), metric="cosine")
    torch.testing.assert_close(head.fit(SUPPORT, SUPPORT_LABELS)(QUERY), torch.tensor(base))
    torch.testing.assert_close(SimpleShot(metric="cosine").fit(SUPPORT, SUPPORT_LABELS)(QUERY), torch.tensor(own))


def test_simpleshot_metrics_agree_in_one_shot() -> None:
    rng = np.random.default_rng(3)
    x, q = torch.tensor(rng.normal(size=(5, 8)), dtype=torch.float32), torch.tensor(rng.normal(size=(30, 8)),
                                                                                    dtype=torch.float32)
    y = torch.arange(5)
    assert torch.equal(SimpleShot().fit(x, y).predict(q), SimpleShot(metric="cosine").fit(x, y).predict(q))


def toy_three_classes(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = (6, 9, 5)  # unbalanced: the empirical prior matters
    means = np.array([[0.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 2.0, 1.5]])
    mix = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.2, 0.0, 0.7]])
    x = np.concatenate([m + rng.normal(size=(n, 3)) @ mix for m, n in zip(means, sizes)])
    return x.astype(np.float32).astype(np.float64), np.repeat(np.arange(3), sizes)  # the heads read float32


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_gda_equals_sklearn_lda(alpha: float) -> None:
    x, y = toy_three_classes()
    q = np.random.default_rng(9).normal(size=(12, 3)) * 2
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=alpha).fit(x, y)
    head = GDAHead(shrinkage=alpha, prior="empirical").fit(torch.tensor(x), torch.tensor(y))
    np.testing.assert_allclose(head(torch.tensor(q)).numpy(), lda.decision_function(q), rtol=1e-5, atol=1e-5)
    assert head.precision.dtype == torch.float64


def test_gda_ks_estimator_by_hand() -> None:
    x, y = toy_three_classes(1)
    q = np.random.default_rng(2).normal(size=(7, 3))
    n, d = x.shape
    mu = np.stack([x[y == c].mean(axis=0) for c in range(3)])
    centred = x - mu[y]
    scatter = centred.T @ centred
    precision = d * np.linalg.inv(scatter + np.trace(scatter) / (n - 1) * np.eye(d))  # arXiv 2402.04087's code
    expected = q @ precision @ mu.T - 0.5 * np.einsum("kd,de,ke->k", mu, precision, mu) + np.log(1 / 3)
    head = GDAHead().fit(torch.tensor(x), torch.tensor(y))
    np.testing.assert_allclose(head.precision.numpy(), precision, rtol=1e-10)
    np.testing.assert_allclose(head(torch.tensor(q)).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_gda_ledoit_wolf_precision() -> None:
    x, y = toy_three_classes(2)
    mu = np.stack([x[y == c].mean(axis=0) for c in range(3)])
    head = GDAHead(shrinkage="ledoit_wolf").fit(torch.tensor(x), torch.tensor(y))
    expected = np.linalg.inv(ledoit_wolf(x - mu[y], assume_centered=True)[0])
    np.testing.assert_allclose(head.precision.numpy(), expected, rtol=1e-8)


def test_gda_one_shot_falls_back_to_the_nearest_mean() -> None:
    x = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0]])
    q = torch.tensor([[1.0, 1.0], [3.0, 0.5], [0.2, 2.0]])
    head = GDAHead().fit(x, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(head.precision, torch.eye(2, dtype=torch.float64))
    expected = q @ x.T - 0.5 * (x * x).sum(1) + math.log(1 / 3)  # x^T mu - |mu|^2 / 2 + log prior
    torch.testing.assert_close(head(q), expected)
    assert torch.equal(head.predict(q), ProtoNet().fit(x, torch.tensor([0, 1, 2])).predict(q))


@pytest.mark.parametrize(("classes", "standardize"), [(3, False), (3, True), (2, False)])
def test_logistic_head_is_the_linear_probe(classes: int, standardize: bool) -> None:
    x, y = toy_three_classes(4)
    x, y = x[y < classes], y[y < classes]
    q = np.random.default_rng(5).normal(size=(6, 3))
    head = LogisticRegressionHead(C=0.5, standardize=standardize).fit(torch.tensor(x), torch.tensor(y + 10))
    probe = fit_linear_probe(x, y, C=0.5, standardize=standardize)
    logits = head(torch.tensor(q))
    assert logits.shape == (6, classes)
    np.testing.assert_allclose(logits.softmax(1).numpy(), probe.predict_proba(q), rtol=1e-5, atol=1e-6)
    assert head.predict(torch.tensor(q)).tolist() == (probe.predict(q) + 10).tolist()


def test_logistic_head_errors() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        LogisticRegressionHead().fit(torch.ones(2, 3), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="C must be"):
        LogisticRegressionHead(C=0.0)


def test_bdcspn_rectified_prototypes_by_hand() -> None:
    support = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    head = BDCSPN(temperature=10.0).fit(support, torch.tensor([0, 1]))
    # shift = mean(support) - mean(query) = (-0.5, -0.5): shifted queries (1.5, -0.5) and (-0.5, 1.5),
    # pseudo-labelled 0 and 1. Class 0's members: (1, 0) with cos 1 to P0 = (1, 0), and (1.5, -0.5) with
    # cos 1.5 / sqrt(2.5); their weights are a softmax of 10 * cos.
    torch.testing.assert_close(head.shift(query), torch.tensor([[1.5, -0.5], [-0.5, 1.5]]))
    w_query = 1 / (1 + math.exp(10 * (1 - 1.5 / math.sqrt(2.5))))
    p0 = (1 - w_query) * np.array([1.0, 0.0]) + w_query * np.array([1.5, -0.5])
    expected = torch.tensor(np.stack([p0, p0[::-1]]), dtype=torch.float32)
    torch.testing.assert_close(head.rectified_prototypes(query), expected)
    shifted = head.shift(query)
    cos = (shifted / shifted.norm(dim=1, keepdim=True)) @ (expected / expected.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(head(query), cos)
    assert head.predict(query).tolist() == [0, 1]


def test_bdcspn_prototypes_match_easyfsl_with_unit_temperature() -> None:
    # easyfsl 1.5.0, BDCSPN(): process_support_set(SUPPORT, SUPPORT_LABELS); model(QUERY); model.prototypes
    expected = [[-0.5371676683425903, -0.012494362890720367, 0.9769622087478638, 0.8735952973365784],
                [-1.1448137760162354, -0.421627938747406, -0.8702248334884644, -0.35348111391067505],
                [-0.4700528383255005, 0.5023610591888428, 0.014569990336894989, 0.5971512198448181]]
    head = BDCSPN(temperature=1.0).fit(SUPPORT, SUPPORT_LABELS)
    torch.testing.assert_close(head.rectified_prototypes(QUERY), torch.tensor(expected))


def test_bdcspn_is_transductive() -> None:
    support, labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    head = BDCSPN().fit(support, labels)
    q = torch.tensor([[0.9, 0.4]])
    alone = head(q)
    together = head(torch.cat([q, torch.tensor([[5.0, 5.0], [6.0, 4.0]])]))[:1]
    assert not torch.allclose(alone, together)  # the query statistics shift every query


@pytest.mark.parametrize("name", ["protonet", "simpleshot", "gda", "logistic", "bd_cspn"])
def test_every_head_separates_gaussians_and_computes_in_float32(name: str) -> None:
    x, y = gaussians(per=5)
    q, qy = gaussians(seed=1)
    head = create_few_shot_head(name).fit(x.double(), y)
    logits = head(q.double())
    assert logits.shape == (len(q), 2) and logits.dtype == torch.float32
    assert (head.predict(q) == qy).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the heads leave autocast: same float32 logits
        torch.testing.assert_close(create_few_shot_head(name).fit(x, y)(q), head(q))


def test_protonet_keeps_the_graph() -> None:
    x, y = gaussians(per=3)
    x.requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(ProtoNet().fit(x, y)(x.detach() + 0.1), y)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda h: h.fit(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), "empty"),
        (lambda h: h.fit(torch.zeros(3), torch.zeros(3, dtype=torch.long)), "2-D"),
        (lambda h: h.fit(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long)), "3 rows"),
        (lambda h: h.fit(torch.zeros(3, 2), torch.zeros(3, 1, dtype=torch.long)), "1-D"),
        (lambda h: h.fit(torch.zeros(3, 2), torch.zeros(3)), "integer"),
        (lambda h: h.fit(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), torch.tensor([0, 1])), "non-finite"),
        (lambda h: h.fit(torch.eye(2), torch.tensor([0, 1]), classes=[0, 1, 2]), r"class\(es\) \[2\].*no support"),
        (lambda h: h.fit(torch.eye(2), torch.tensor([0, 5]), classes=[0, 1]), r"\[5\], which are not in classes"),
        (lambda h: h.fit(torch.eye(2), torch.tensor([0, 1]))(torch.ones(1, 3)), "3 dimensions but the support had 2"),
        (lambda h: h.fit(torch.eye(2), torch.tensor([0, 1]))(torch.tensor([[float("inf"), 0.0]])),
         "query has 1 non-finite"),
        (lambda h: h(torch.ones(1, 2)), "not fitted"),
    ],
)
@pytest.mark.parametrize("name", ["protonet", "simpleshot", "gda", "logistic", "bd_cspn"])
def test_clear_errors(name: str, call: object, match: str) -> None:
    with pytest.raises((ValueError, RuntimeError), match=match):
        call(create_few_shot_head(name))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SimpleShot(metric="manhattan"), "metric must be one of"),
        (lambda: SimpleShot(base_mean=[[1.0, 2.0], [3.0, 4.0]]), r"\(D,\) vector"),
        (lambda: SimpleShot(base_mean=[float("nan")]), "non-finite"),
        (lambda: SimpleShot(base_mean=[0.0, 0.0, 0.0]).fit(torch.eye(2), torch.tensor([0, 1])), "3 dimensions"),
        (lambda: GDAHead(shrinkage=1.5), "shrinkage must be"),
        (lambda: GDAHead(shrinkage="oas"), "shrinkage must be"),
        (lambda: GDAHead(prior="flat"), "prior must be"),
        (lambda: BDCSPN(temperature=0.0), "temperature must be"),
    ],
)
def test_bad_arguments(make: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()  # type: ignore[operator]
