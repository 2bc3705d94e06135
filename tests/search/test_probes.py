"""Probes: metrics equal a direct scikit-learn computation on the exported file."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from lamina.search import SearchService, Store
from lamina.search.catalog import Catalog
from lamina.search.exports import LabeledSet, export_labeled_set, read_labeled_set
from lamina.search.probes import bootstrap_indices, probe_labeled_set, retrieval_metrics


def _sklearn_metrics(y: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    pred = proba.argmax(axis=1)
    present = np.unique(y)
    if len(present) < 2:
        auc = math.nan
    elif n_classes == 2:
        auc = roc_auc_score(y == 1, proba[:, 1])
    else:
        auc = float(np.mean([roc_auc_score(y == c, proba[:, c]) for c in present]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # y_pred may hold classes absent from y_true
        bacc = balanced_accuracy_score(y, pred)
    return {"auroc": auc, "accuracy": accuracy_score(y, pred), "balanced_accuracy": bacc}


def _reference(ls: LabeledSet, fraction: float, seed: int, n_boot: int) -> dict[str, object]:
    """The documented procedure, written out with scikit-learn."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    classes = sorted(set(ls.text["label"]))
    y = np.array([classes.index(v) for v in ls.text["label"]])
    split = np.array(ls.text["split"])
    groups = np.array(ls.text["group"])
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    uniq = sorted(set(groups[train]))
    perm = np.random.default_rng(seed).permutation(len(uniq))
    chosen = {uniq[i] for i in perm[: max(1, math.ceil(fraction * len(uniq)))]}
    sub = np.array([i for i in train if groups[i] in chosen])
    x = ls.embedding.astype(np.float64)
    scaler = StandardScaler().fit(x[sub])
    clf = LogisticRegression(solver="lbfgs", C=1.0, max_iter=2000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(scaler.transform(x[sub]), y[sub])
    proba = np.zeros((len(test), len(classes)))
    proba[:, clf.classes_] = clf.predict_proba(scaler.transform(x[test]))
    yt = y[test]
    point = _sklearn_metrics(yt, proba, len(classes))
    boots: dict[str, list[float]] = {k: [] for k in point}
    for block in bootstrap_indices(len(test), n_boot, seed):
        for idx in block:
            for k, v in _sklearn_metrics(yt[idx], proba[idx], len(classes)).items():
                if not math.isnan(v):
                    boots[k].append(v)
    ci = {k: tuple(np.percentile(v, [2.5, 97.5])) for k, v in boots.items()}
    return {"n_train": len(sub), "point": point, "ci": ci}


@pytest.mark.parametrize("label_column", ["diagnostic", "biopsed"])
def test_probe_equals_sklearn_on_exported_file(
    derm_home: Path, tmp_path: Path, label_column: str
) -> None:
    view = SearchService(Store(derm_home)).view("derm")
    out = tmp_path / "set.parquet"
    with Catalog(derm_home) as cat:
        export_labeled_set(view, cat, out, label_column=label_column, split_by="patient_id", seed=5)
    ls = read_labeled_set(out)
    fractions = (0.125, 1.0)
    report = probe_labeled_set(ls, fractions, seed=5, n_bootstrap=40)
    for row, f in zip(report["fractions"], fractions, strict=True):
        ref = _reference(ls, f, 5, 40)
        assert row["n_train"] == ref["n_train"]
        for key, value in ref["point"].items():  # type: ignore[union-attr]
            assert row[key]["value"] == pytest.approx(value, abs=1e-9)
            lo, hi = ref["ci"][key]  # type: ignore[index]
            assert row[key]["ci_low"] == pytest.approx(lo, abs=1e-9)
            assert row[key]["ci_high"] == pytest.approx(hi, abs=1e-9)
    assert report["snapshot"] == view.snapshot.id and report["n_test"] > 0


def test_retrieval_metrics_by_hand() -> None:
    x_train = np.eye(4)
    y_train = np.array([0, 0, 1, 1])
    ids = np.arange(4)
    # query 0 is closest to train 0 (label 0) then train 2 (label 1)
    x_test = np.array([[1.0, 0, 0.5, 0], [0, 0, 0.2, 1.0]])
    y_test = np.array([1, 1])
    m = retrieval_metrics(x_train, y_train, ids, x_test, y_test)
    assert m["acc@1"] == 0.5  # query 1's nearest is train 3 (label 1)
    assert m["acc@3"] == 1.0 and m["acc@5"] == 1.0
    # top-4 (k capped at 4) votes: q0 -> [0, 1, 0, 1]: tie 2-2, best-ranked tied label is 0
    assert m["mmv@5"] == 0.5
