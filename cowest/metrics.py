"""Metrics and significance tests used to score every method.

Free-form answers (IfQA and its synthetic stand-in) use the SQuAD v1.1 exact match and
token F1; choice and label tasks use accuracy and macro-F1. All functions return
fractions in [0, 1] and depend on the standard library and numpy only (scikit-learn and
scipy are used by the tests, to check the values, never here).

Conventions:
- `exact_match` / `token_f1` give the same numbers as the official SQuAD v1.1 evaluation
  script: normalise (lowercase, drop `string.punctuation`, drop the articles a/an/the as
  whole words, collapse whitespace), compare, take the maximum over the gold aliases. As
  in that script, two empty answers have EM 1 but F1 0. A `None` prediction scores 0.
- `accuracy` / `macro_f1` equal scikit-learn's `accuracy_score` and
  `f1_score(average="macro", labels=labels, zero_division=0)`. A `None` prediction or one
  outside `labels` is simply wrong: it counts as a false negative of the gold label and as
  a false positive of no label.
- Confidence intervals are percentile bootstrap intervals; `metric_interval` picks the
  interval of each task metric (per-item mean for em/accuracy/f1, resampled corpus-level
  macro-F1); `paired_bootstrap` and `mcnemar` compare two systems on the same items.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

Alternative = Literal["two-sided", "greater", "less"]

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


# --------------------------------------------------------------------------- SQuAD

def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _check_golds(golds: Sequence[str]) -> None:
    if isinstance(golds, str):
        raise TypeError("golds must be a list of strings, not a single string")
    if len(golds) == 0:
        raise ValueError("golds is empty: at least one gold answer is needed")


def _f1_single(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match(prediction: str | None, golds: Sequence[str]) -> float:
    """Max over golds of SQuAD v1.1 exact match (1.0 or 0.0). `None` scores 0."""
    _check_golds(golds)
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(max(pred == normalize_answer(g) for g in golds))


def token_f1(prediction: str | None, golds: Sequence[str]) -> float:
    """Max over golds of SQuAD v1.1 token-overlap F1. `None` scores 0."""
    _check_golds(golds)
    if prediction is None:
        return 0.0
    return max(_f1_single(prediction, g) for g in golds)


# --------------------------------------------------------------- classification

def _check_pair(preds: Sequence[Any], golds: Sequence[Any]) -> None:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} golds")
    if len(golds) == 0:
        raise ValueError("no items to score")


def accuracy(preds: Sequence[str | None], golds: Sequence[str]) -> float:
    """Fraction of predictions equal to the gold (None is wrong)."""
    _check_pair(preds, golds)
    return sum(p is not None and p == g for p, g in zip(preds, golds)) / len(golds)


def per_label_f1(
    preds: Sequence[str | None], golds: Sequence[str], labels: Sequence[str]
) -> dict[str, float]:
    """F1 of each label (one-vs-rest), 0 where the label is neither gold nor predicted."""
    _check_pair(preds, golds)
    out: dict[str, float] = {}
    for label in labels:
        tp = sum(p == label and g == label for p, g in zip(preds, golds))
        n_pred = sum(p == label for p in preds)
        n_true = sum(g == label for g in golds)
        denom = n_pred + n_true
        out[label] = 2 * tp / denom if denom else 0.0
    return out


def macro_f1(
    preds: Sequence[str | None], golds: Sequence[str], labels: Sequence[str]
) -> float:
    """Unweighted mean of per-label F1 over `labels` (sklearn macro F1, zero_division=0)."""
    if len(labels) == 0:
        raise ValueError("labels is empty")
    scores = per_label_f1(preds, golds, labels)
    return float(np.mean([scores[label] for label in labels]))


# --------------------------------------------------------------------- bootstrap

def _percentile_interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_ci(
    per_item_scores: Sequence[float],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval (1 - alpha) of the mean of per-item scores."""
    scores = np.asarray(per_item_scores, dtype=float)
    if scores.size == 0:
        raise ValueError("no scores")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, scores.size, size=(n_boot, scores.size))
    return _percentile_interval(scores[idx].mean(axis=1), alpha)


def bootstrap_metric_ci(
    metric_fn: Callable[..., float],
    preds: Sequence[Any],
    golds: Sequence[Any],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    **metric_kwargs: Any,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a corpus-level metric such as macro-F1.

    Items are resampled with replacement and `metric_fn(preds*, golds*, **metric_kwargs)`
    is recomputed on each resample, e.g.
    `bootstrap_metric_ci(macro_f1, preds, golds, labels=["A", "B", "C", "D"])`.
    """
    _check_pair(preds, golds)
    rng = np.random.default_rng(seed)
    n = len(golds)
    values = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        values[b] = metric_fn([preds[i] for i in idx], [golds[i] for i in idx], **metric_kwargs)
    return _percentile_interval(values, alpha)


# Which per-item quantity each task metric's interval resamples (see `metric_interval`).
_ROW_SCORE_KEY = {"em": "score", "accuracy": "score", "f1": "f1"}


def metric_interval(
    metric: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    labels: Sequence[str] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of one task metric over scored rows.

    `rows` are per-item dicts as written by `Task.score_row` ("pred", "gold", "score" and,
    for free-form tasks, "f1"). The interval is chosen by the metric's name:
    - "em" and "accuracy": `bootstrap_ci` of the per-item "score" (EM or 1/0 correctness);
    - "f1": `bootstrap_ci` of the per-item token "f1";
    - "macro_f1": `bootstrap_metric_ci` of `macro_f1` over the rows' "pred" and "gold"
      with `labels` (resampling items and recomputing the corpus-level metric).
    Any other name is a ValueError.
    """
    if metric in _ROW_SCORE_KEY:
        key = _ROW_SCORE_KEY[metric]
        return bootstrap_ci([r[key] for r in rows], n_boot=n_boot, alpha=alpha, seed=seed)
    if metric == "macro_f1":
        labs = list(labels or [])
        return bootstrap_metric_ci(
            lambda p, g: macro_f1(p, g, labs), [r["pred"] for r in rows], [r["gold"] for r in rows],
            n_boot=n_boot, alpha=alpha, seed=seed,
        )
    known = sorted([*_ROW_SCORE_KEY, "macro_f1"])
    raise ValueError(f"no interval defined for metric {metric!r}; known: {', '.join(known)}")


def _bootstrap_p_value(
    boot_diffs: np.ndarray, observed: float, alternative: Alternative
) -> float:
    """p-value of a shifted (null-centred) bootstrap distribution, add-one smoothed."""
    centred = boot_diffs - observed
    if alternative == "greater":
        hits = np.sum(centred >= observed)
    elif alternative == "less":
        hits = np.sum(centred <= observed)
    elif alternative == "two-sided":
        hits = np.sum(np.abs(centred) >= abs(observed))
    else:
        raise ValueError(f"alternative must be two-sided, greater or less, not {alternative!r}")
    return float((hits + 1) / (boot_diffs.size + 1))


def paired_bootstrap(
    scores_a: Sequence[float],
    scores_b: Sequence[float],
    n_boot: int = 10000,
    seed: int = 0,
    alpha: float = 0.05,
    alternative: Alternative = "two-sided",
) -> dict[str, Any]:
    """Paired bootstrap test of mean(scores_a) - mean(scores_b) on the same items.

    The same resampled item indices are applied to both systems. The interval is the
    percentile interval of the resampled difference. The p-value tests H0: no difference,
    by shifting the bootstrap distribution of the difference to mean zero (the null) and
    counting resamples at least as extreme as the observed difference (Efron &
    Tibshirani 1993, sec. 16.4; add-one smoothed, so it is never 0):
    - "two-sided": |d* - d| >= |d|;
    - "greater" (H1: a better than b): d* - d >= d;
    - "less" (H1: a worse than b): d* - d <= d.
    Identical systems give diff 0 and p = 1.

    Returns dict(mean_a, mean_b, diff, ci_low, ci_high, p_value, alternative, n, n_boot).
    """
    a = np.asarray(scores_a, dtype=float)
    b = np.asarray(scores_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"score lists differ in length: {a.size} vs {b.size}")
    if a.size == 0:
        raise ValueError("no scores")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    d = a - b
    observed = float(d.mean())
    boot = d[idx].mean(axis=1)
    lo, hi = _percentile_interval(boot, alpha)
    return {
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "diff": observed,
        "ci_low": lo,
        "ci_high": hi,
        "p_value": _bootstrap_p_value(boot, observed, alternative),
        "alternative": alternative,
        "n": int(a.size),
        "n_boot": n_boot,
    }


def paired_bootstrap_metric(
    metric_fn: Callable[..., float],
    preds_a: Sequence[Any],
    preds_b: Sequence[Any],
    golds: Sequence[Any],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    alternative: Alternative = "two-sided",
    **metric_kwargs: Any,
) -> dict[str, Any]:
    """`paired_bootstrap` for a corpus-level metric (e.g. macro-F1) of two systems.

    Same return keys as `paired_bootstrap`, with metric_a / metric_b instead of means.
    """
    _check_pair(preds_a, golds)
    _check_pair(preds_b, golds)
    m_a = float(metric_fn(list(preds_a), list(golds), **metric_kwargs))
    m_b = float(metric_fn(list(preds_b), list(golds), **metric_kwargs))
    rng = np.random.default_rng(seed)
    n = len(golds)
    boot = np.empty(n_boot)
    for k in range(n_boot):
        idx = rng.integers(0, n, size=n)
        g = [golds[i] for i in idx]
        boot[k] = metric_fn([preds_a[i] for i in idx], g, **metric_kwargs) - metric_fn(
            [preds_b[i] for i in idx], g, **metric_kwargs
        )
    observed = m_a - m_b
    lo, hi = _percentile_interval(boot, alpha)
    return {
        "metric_a": m_a,
        "metric_b": m_b,
        "diff": observed,
        "ci_low": lo,
        "ci_high": hi,
        "p_value": _bootstrap_p_value(boot, observed, alternative),
        "alternative": alternative,
        "n": n,
        "n_boot": n_boot,
    }


# ----------------------------------------------------------------------- McNemar

def _binom_two_sided_half(k: int, n: int) -> float:
    """Exact two-sided p of k successes in n trials with p=0.5 (min(1, 2 * tail))."""
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def mcnemar(
    correct_a: Sequence[bool | float],
    correct_b: Sequence[bool | float],
    exact: bool | None = None,
) -> dict[str, Any]:
    """McNemar's test on paired correctness vectors of two systems.

    b = items only A gets right, c = items only B gets right. With `exact=None` the exact
    binomial test is used when b + c < 25 (statistic = min(b, c), p = two-sided binomial
    with p=0.5), else the chi-square test with continuity correction
    ((|b - c| - 1)^2 / (b + c), 1 degree of freedom). b + c = 0 gives p = 1.
    Returns dict(b, c, statistic, p_value, method).
    """
    if len(correct_a) != len(correct_b):
        raise ValueError(f"lengths differ: {len(correct_a)} vs {len(correct_b)}")
    pairs = [(bool(x), bool(y)) for x, y in zip(correct_a, correct_b)]
    b = sum(x and not y for x, y in pairs)
    c = sum(y and not x for x, y in pairs)
    n = b + c
    use_exact = n < 25 if exact is None else exact
    if n == 0:
        return {"b": 0, "c": 0, "statistic": 0.0, "p_value": 1.0,
                "method": "exact" if use_exact else "chi2"}
    if use_exact:
        return {"b": b, "c": c, "statistic": float(min(b, c)),
                "p_value": _binom_two_sided_half(min(b, c), n), "method": "exact"}
    stat = (abs(b - c) - 1) ** 2 / n
    p = math.erfc(math.sqrt(stat / 2))  # survival function of chi2 with 1 dof
    return {"b": b, "c": c, "statistic": float(stat), "p_value": float(p), "method": "chi2"}
