"""Linear probes and retrieval metrics on a labeled set (see :mod:`search.exports`).

Probe, per training fraction f (default 12.5, 25, 50, 100 %):

* The training *groups* (the ``group`` column: the split column's values -- by default the
  collection's patient column, see :func:`search.columns.split_column` -- or tiles by image)
  are sorted and shuffled once with ``numpy.random.default_rng(seed)``; fraction f trains on
  the first ``max(1, ceil(f * n_groups))`` of them, so smaller fractions are nested in larger.
* Inputs are standardised (``StandardScaler`` fit on that training subset), then
  ``LogisticRegression(solver="lbfgs", C=1.0, max_iter=2000, random_state=seed)``.
* The probability matrix covers every class of the labeled set; a class absent from the
  training subset gets probability 0 (so its one-vs-rest AUROC is 0.5). With a single
  training class the prediction is that class with probability 1.
* AUROC: binary -> AUROC of the second class (sorted labels); >2 classes -> the mean of
  one-vs-rest AUROCs over the classes present in the test set. Predictions are the argmax
  of the probabilities (first class on ties). Balanced accuracy: mean recall over the
  classes present in the test labels.
* 95% CI: percentile bootstrap of the test set, ``n_bootstrap`` (1000) resamples drawn by
  :func:`bootstrap_indices` (the same resamples for every fraction: paired); resamples where
  AUROC is undefined (one class only) are skipped for AUROC.

Retrieval (as in RetCCL / SISH), on the same split with every training tile: each test
tile queries the training tiles by inner product (ties by tile id). Acc@k: share of test
tiles whose k nearest training tiles include one of its label. mMV@5: the majority label
of the 5 nearest (ties go to the label of the best-ranked tied neighbour) is compared with
the tile's label; accuracy per class, then the mean over the classes present in test.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from lamina.search.errors import InvalidQueryError
from lamina.search.exports import LabeledSet
from lamina.search.views import CollectionView

DEFAULT_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
N_BOOTSTRAP = 1000
_BLOCK = 50


def bootstrap_indices(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of resample indices: ``rng.integers(0, n, (<=50, n))`` from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, _BLOCK):
        yield rng.integers(0, n, size=(min(_BLOCK, n_resamples - start), n))


def auroc_rows(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Row-wise AUROC (Mann-Whitney with average ranks); NaN where a row has one class."""
    from scipy.stats import rankdata

    scores = np.atleast_2d(scores)
    positive = np.atleast_2d(positive)
    ranks = rankdata(scores, axis=1)
    n_pos = positive.sum(axis=1).astype(np.float64)
    n_neg = positive.shape[1] - n_pos
    u = (ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def metric_rows(y: np.ndarray, proba: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """AUROC, accuracy and balanced accuracy of each resample (rows of ``idx``)."""
    n_classes = proba.shape[1]
    yy = y[idx]
    pred = np.argmax(proba, axis=1)[idx]
    acc = (pred == yy).mean(axis=1)
    recalls = np.full((len(idx), n_classes), np.nan)
    aucs = np.full((len(idx), n_classes), np.nan)
    for c in range(n_classes):
        is_c = yy == c
        n_c = is_c.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls[:, c] = np.where(n_c > 0, (is_c & (pred == c)).sum(axis=1) / n_c, np.nan)
        if n_classes > 2 or c == 1:
            aucs[:, c] = auroc_rows(proba[:, c][idx], is_c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows -> NaN
        auroc = aucs[:, 1] if n_classes == 2 else np.nanmean(aucs, axis=1)
        bacc = np.nanmean(recalls, axis=1)
    return {"auroc": auroc, "accuracy": acc, "balanced_accuracy": bacc}


def _interval(point: float, samples: np.ndarray) -> dict[str, float | None]:
    ok = samples[~np.isnan(samples)]
    if math.isnan(point):
        return {"value": None, "ci_low": None, "ci_high": None}
    if len(ok) == 0:
        return {"value": point, "ci_low": None, "ci_high": None}
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return {"value": point, "ci_low": float(lo), "ci_high": float(hi)}


def fit_proba(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int, seed: int
) -> tuple[np.ndarray, bool]:
    """Class probabilities (n_test, n_classes) of a standardised logistic regression."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    proba = np.zeros((len(x_test), n_classes))
    present = np.unique(y_train)
    if len(present) == 1:
        proba[:, present[0]] = 1.0
        return proba, True
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(solver="lbfgs", C=1.0, max_iter=2000, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(scaler.transform(x_train), y_train)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    proba[:, clf.classes_] = clf.predict_proba(scaler.transform(x_test))
    return proba, converged


def select_groups(groups: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The training groups used at ``fraction`` (nested across fractions for one seed)."""
    uniq = sorted(set(groups))
    perm = np.random.default_rng(seed).permutation(len(uniq))
    m = max(1, math.ceil(fraction * len(uniq) - 1e-9))
    return {uniq[i] for i in perm[:m]}


def retrieval_metrics(
    x_train: np.ndarray,
    y_train: np.ndarray,
    ids_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> dict[str, float | None]:
    """Acc@1, Acc@3, Acc@5 and mMV@5 (see the module docstring)."""
    if len(x_train) == 0 or len(x_test) == 0:
        return {"acc@1": None, "acc@3": None, "acc@5": None, "mmv@5": None}
    k = min(5, len(x_train))
    top = np.empty((len(x_test), k), np.int64)
    for start in range(0, len(x_test), 1024):
        s = x_test[start : start + 1024] @ x_train.T
        for i, row in enumerate(s):
            top[start + i] = np.lexsort((ids_train, -row))[:k]
    labels = y_train[top]
    hit = labels == y_test[:, None]
    out: dict[str, float | None] = {
        f"acc@{j}": float(hit[:, :j].any(axis=1).mean()) for j in (1, 3, 5)
    }
    votes = np.empty(len(x_test), np.int64)
    for i, row in enumerate(labels):
        vals, counts = np.unique(row, return_counts=True)
        tied = set(vals[counts == counts.max()].tolist())
        votes[i] = next(int(v) for v in row if int(v) in tied)
    per_class = [float((votes[y_test == c] == c).mean()) for c in np.unique(y_test)]
    out["mmv@5"] = float(np.mean(per_class))
    return out


def probe_labeled_set(
    ls: LabeledSet,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    n_bootstrap: int = N_BOOTSTRAP,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, Any]:
    """The probe report (the JSON of ``lamina probe``) for one labeled set.

    ``progress(fraction_done, message)`` is called before each training fraction and before
    the retrieval metrics (a caller may raise there to stop)."""
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise InvalidQueryError(f"fractions must be in (0, 1], got {fractions!r}")
    labels = np.asarray(ls.text["label"], dtype=object)
    classes = sorted(set(labels.tolist()))
    code = {c: i for i, c in enumerate(classes)}
    y = np.asarray([code[v] for v in labels], dtype=np.int64)
    is_test = np.asarray(ls.text["split"], dtype=object) == "test"
    groups = np.asarray(ls.text["group"], dtype=object)
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    if len(classes) < 2 or len(test) == 0 or len(np.unique(y[train])) < 2:
        raise InvalidQueryError(
            f"a probe needs at least two classes in train and a non-empty test split "
            f"(classes {classes}, train {len(train)}, test {len(test)})"
        )
    x = ls.embedding.astype(np.float64)
    y_test = y[test]
    rows = []
    for i, f in enumerate(fractions):
        if progress is not None:
            progress(0.1 + 0.8 * i / len(fractions), f"training fraction {f:g}")
        chosen = select_groups(groups[train].tolist(), f, seed)
        sub = train[np.fromiter((g in chosen for g in groups[train]), bool, len(train))]
        proba, converged = fit_proba(x[sub], y[sub], x[test], len(classes), seed)
        point = metric_rows(y_test, proba, np.arange(len(test))[None, :])
        boots: dict[str, list[np.ndarray]] = {k: [] for k in point}
        for idx in bootstrap_indices(len(test), n_bootstrap, seed):
            for key, vals in metric_rows(y_test, proba, idx).items():
                boots[key].append(vals)
        row: dict[str, Any] = {
            "fraction": f,
            "n_train_groups": len(chosen),
            "n_train": len(sub),
            "n_train_classes": int(len(np.unique(y[sub]))),
            "converged": converged,
        }
        for key, vals in point.items():
            samples = np.concatenate(boots[key]) if boots[key] else np.zeros(0)
            row[key] = _interval(float(vals[0]), samples)
        rows.append(row)
    if progress is not None:
        progress(0.9, "retrieval metrics")
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    retrieval = retrieval_metrics(unit[train], y[train], ls.tile_id[train], unit[test], y_test)
    meta = ls.meta
    return {
        "ok": True,
        "collection": meta.get("collection"),
        "snapshot": meta.get("snapshot"),
        "missing_segments": meta.get("missing_segments", []),
        "encoder": meta.get("encoder"),
        "label_column": meta.get("label_column"),
        "split_by": meta.get("split_by"),
        "warnings": list(meta.get("warnings") or []),
        "cohort": meta.get("cohort"),
        "seed": int(seed),
        "test_fraction": meta.get("test_fraction"),
        "n_train": len(train),
        "n_test": len(test),
        "n_train_groups": len(set(groups[train].tolist())),
        "n_test_groups": len(set(groups[test].tolist())),
        "n_dropped_null_label": meta.get("n_dropped_null_label"),
        "classes": classes,
        "class_counts": {
            c: {"train": int((y[train] == i).sum()), "test": int((y_test == i).sum())}
            for i, c in enumerate(classes)
        },
        "model": "StandardScaler + LogisticRegression(lbfgs, C=1, max_iter=2000)",
        "ci": {
            "method": "percentile bootstrap of the test set",
            "level": 0.95,
            "n_resamples": n_bootstrap,
        },
        "fractions": rows,
        "retrieval": retrieval,
    }


def probe_collection(
    view: CollectionView,
    catalog: Any,
    label_column: str,
    *,
    cohort: str | None = None,
    split_by: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    test_fraction: float = 0.2,
    n_bootstrap: int = N_BOOTSTRAP,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, Any]:
    """Build the labeled set exactly as ``lamina export`` would, then probe it."""
    from lamina.search.exports import labeled_set_for

    ls = labeled_set_for(
        view,
        catalog,
        label_column,
        cohort=cohort,
        split_by=split_by,
        test_fraction=test_fraction,
        seed=seed,
    )
    return probe_labeled_set(ls, fractions, seed, n_bootstrap, progress)
