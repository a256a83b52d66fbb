"""cowest.metrics against the official SQuAD v1.1 script and scikit-learn."""

from __future__ import annotations

import random
import re
import string
from collections import Counter

import numpy as np
import pytest

from cowest import metrics

# --- the official SQuAD v1.1 evaluation code (evaluate-v1.1.py), copied for reference ---


def squad_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def squad_f1_score(prediction, ground_truth):
    prediction_tokens = squad_normalize_answer(prediction).split()
    ground_truth_tokens = squad_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def squad_exact_match_score(prediction, ground_truth):
    return squad_normalize_answer(prediction) == squad_normalize_answer(ground_truth)


def squad_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    return max(metric_fn(prediction, gt) for gt in ground_truths)


# ------------------------------------------------------------------------- cases

_VOCAB = ["the", "a", "an", "The", "AN", "theatre", "another", "Paris", "paris", "café",
          "Ünïcode", "naïve", "10", "ten", "1,000", "U.S.", "u.s", "New-York", "new york",
          "rock'n'roll", "(b)", "“quoted”", "—", "...", "", "  ", "\t", "München", "x"]
_PUNCT = list(string.punctuation) + ["", "", "", " "]


def _random_text(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(0, 6)):
        w = rng.choice(_VOCAB)
        if rng.random() < 0.3:
            w = rng.choice(_PUNCT) + w + rng.choice(_PUNCT)
        words.append(w)
    return rng.choice([" ", "  ", " \n"]).join(words)


def _cases(n: int = 600):
    rng = random.Random(1234)
    fixed = [
        ("", [""]), ("", ["x"]), ("x", [""]), ("The Eiffel Tower", ["Eiffel tower"]),
        ("an apple a day", ["apple day"]), ("10", ["ten", "10"]), ("Paris!", ["paris"]),
        ("the the the", ["the"]), ("Ünïcode café", ["ünïcode CAFÉ"]), ("a", ["an"]),
        ("New York City", ["new york", "NYC"]), ("cat cat dog", ["cat dog dog"]),
    ]
    yield from fixed
    for _ in range(n):
        yield _random_text(rng), [_random_text(rng) for _ in range(rng.randint(1, 3))]


@pytest.mark.parametrize("pred,golds", list(_cases()))
def test_squad_em_f1_match_official(pred, golds):
    em = float(squad_metric_max_over_ground_truths(squad_exact_match_score, pred, golds))
    f1 = float(squad_metric_max_over_ground_truths(squad_f1_score, pred, golds))
    assert metrics.exact_match(pred, golds) == em
    assert metrics.token_f1(pred, golds) == pytest.approx(f1, abs=1e-12)
    assert metrics.normalize_answer(pred) == squad_normalize_answer(pred)


def test_squad_edge_cases():
    assert metrics.exact_match("", [""]) == 1.0  # as in v1.1
    assert metrics.token_f1("", [""]) == 0.0  # as in v1.1
    assert metrics.exact_match(None, ["x"]) == 0.0
    assert metrics.token_f1(None, ["x"]) == 0.0
    assert metrics.token_f1("the cat sat", ["a cat sat down"]) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        metrics.exact_match("x", [])
    with pytest.raises(ValueError):
        metrics.token_f1("x", [])


# ------------------------------------------------------------------ classification

def _label_vectors(seed: int):
    rng = random.Random(seed)
    labels = ["A", "B", "C", "D", "E"][: rng.randint(2, 5)]
    n = rng.randint(1, 40)
    golds = [rng.choice(labels[:-1] or labels) for _ in range(n)]  # last label maybe never gold
    pool = labels[1:] + [None, "zzz"]  # first label never predicted; None and out-of-label
    preds = [rng.choice(pool) if rng.random() < 0.5 else g for g in golds]
    return preds, golds, labels


@pytest.mark.parametrize("seed", range(60))
def test_accuracy_and_macro_f1_match_sklearn(seed):
    from sklearn.metrics import accuracy_score, f1_score

    preds, golds, labels = _label_vectors(seed)
    sk_preds = ["__none__" if p is None else p for p in preds]
    assert metrics.accuracy(preds, golds) == pytest.approx(accuracy_score(golds, sk_preds))
    with np.errstate(all="ignore"):
        expected = f1_score(golds, sk_preds, average="macro", labels=labels, zero_division=0)
    assert metrics.macro_f1(preds, golds, labels) == pytest.approx(expected, abs=1e-12)


def test_classification_errors():
    with pytest.raises(ValueError):
        metrics.accuracy(["A"], ["A", "B"])
    with pytest.raises(ValueError):
        metrics.accuracy([], [])
    assert metrics.macro_f1([None, None], ["A", "B"], ["A", "B"]) == 0.0


# ------------------------------------------------------------------------ bootstrap

def test_bootstrap_ci_contains_mean_and_is_deterministic():
    rng = np.random.default_rng(0)
    scores = (rng.random(200) < 0.6).astype(float)
    lo, hi = metrics.bootstrap_ci(scores, n_boot=500, seed=3)
    assert lo < scores.mean() < hi
    assert (lo, hi) == metrics.bootstrap_ci(scores, n_boot=500, seed=3)
    assert 0.05 < hi - lo < 0.2  # about +-7 points at n=200
    assert metrics.bootstrap_ci([1.0] * 10) == (1.0, 1.0)


def test_bootstrap_metric_ci_macro_f1():
    rng = random.Random(0)
    golds = [rng.choice("ABCD") for _ in range(150)]
    preds = [g if rng.random() < 0.7 else rng.choice("ABCD") for g in golds]
    lo, hi = metrics.bootstrap_metric_ci(metrics.macro_f1, preds, golds, n_boot=200,
                                         labels=list("ABCD"))
    point = metrics.macro_f1(preds, golds, list("ABCD"))
    assert lo <= point <= hi and hi - lo < 0.3


def test_paired_bootstrap_identical_and_better():
    rng = np.random.default_rng(1)
    a = (rng.random(200) < 0.5).astype(float)
    same = metrics.paired_bootstrap(a, a, n_boot=2000)
    assert same["diff"] == 0.0 and same["p_value"] == 1.0
    assert same["ci_low"] == same["ci_high"] == 0.0
    better = np.maximum(a, (rng.random(200) < 0.5).astype(float))  # a strictly dominated
    res = metrics.paired_bootstrap(better, a, n_boot=2000)
    assert res["diff"] > 0.15 and res["p_value"] < 0.01 and res["ci_low"] > 0
    one = metrics.paired_bootstrap(better, a, n_boot=2000, alternative="greater")
    assert one["p_value"] < 0.01
    wrong_side = metrics.paired_bootstrap(better, a, n_boot=2000, alternative="less")
    assert wrong_side["p_value"] > 0.9
    noise = metrics.paired_bootstrap(a, rng.permutation(a), n_boot=2000)
    assert noise["p_value"] > 0.05 or abs(noise["diff"]) > 0.08


def test_paired_bootstrap_metric():
    rng = random.Random(2)
    golds = [rng.choice("ABC") for _ in range(120)]
    good = [g if rng.random() < 0.8 else "A" for g in golds]
    bad = [rng.choice("ABC") for _ in golds]
    res = metrics.paired_bootstrap_metric(metrics.macro_f1, good, bad, golds, n_boot=300,
                                          labels=list("ABC"))
    assert res["diff"] > 0.3 and res["p_value"] < 0.01
    same = metrics.paired_bootstrap_metric(metrics.macro_f1, good, good, golds, n_boot=100,
                                           labels=list("ABC"))
    assert same["diff"] == 0.0 and same["p_value"] == 1.0


def test_mcnemar_against_scipy():
    from scipy.stats import binomtest, chi2

    rng = np.random.default_rng(5)
    for n_items, exact in [(30, None), (40, True), (300, None), (300, False)]:
        a = rng.random(n_items) < 0.6
        b = rng.random(n_items) < 0.5
        res = metrics.mcnemar(a, b, exact=exact)
        nb, nc = int(np.sum(a & ~b)), int(np.sum(~a & b))
        assert (res["b"], res["c"]) == (nb, nc)
        if res["method"] == "exact":
            expected = binomtest(min(nb, nc), nb + nc, 0.5).pvalue
        else:
            expected = chi2.sf((abs(nb - nc) - 1) ** 2 / (nb + nc), 1)
        assert res["p_value"] == pytest.approx(expected, rel=1e-9)
    assert metrics.mcnemar([True, False], [True, False])["p_value"] == 1.0
    small = metrics.mcnemar([True] * 12, [False] * 12)
    assert small["method"] == "exact" and small["p_value"] < 0.001


# ------------------------------------------------------------- metric_interval

def _scored_rows():
    rng = random.Random(5)
    rows = []
    for _ in range(30):
        gold = rng.choice("ABCD")
        pred = rng.choice([gold, gold, "A", "B", None])
        score = float(pred == gold)
        rows.append({"pred": pred, "gold": gold, "score": score,
                     "f1": score if score else rng.choice([0.0, 0.25, 0.5])})
    return rows


def test_metric_interval_picks_the_per_item_score_by_metric_name():
    rows = _scored_rows()
    scores, f1s = [r["score"] for r in rows], [r["f1"] for r in rows]
    assert scores != f1s
    for m in ("em", "accuracy"):
        assert metrics.metric_interval(m, rows, seed=3) == metrics.bootstrap_ci(scores, seed=3)
    assert metrics.metric_interval("f1", rows, seed=3) == metrics.bootstrap_ci(f1s, seed=3)
    assert metrics.metric_interval("f1", rows, seed=3) != metrics.metric_interval("em", rows, seed=3)
    # n_boot and alpha reach the bootstrap
    assert metrics.metric_interval("em", rows, seed=3, n_boot=200, alpha=0.5) == metrics.bootstrap_ci(
        scores, n_boot=200, alpha=0.5, seed=3)


def test_metric_interval_resamples_macro_f1_over_labels():
    rows = _scored_rows()
    labels = list("ABCD")
    expected = metrics.bootstrap_metric_ci(
        lambda p, g: metrics.macro_f1(p, g, labels), [r["pred"] for r in rows], [r["gold"] for r in rows],
        seed=1,
    )
    got = metrics.metric_interval("macro_f1", rows, labels=labels, seed=1)
    assert got == expected
    point = metrics.macro_f1([r["pred"] for r in rows], [r["gold"] for r in rows], labels)
    assert got[0] < point < got[1]
    # the labels matter: scoring over A-B only gives another interval
    assert metrics.metric_interval("macro_f1", rows, labels=["A", "B"], seed=1) != got
    with pytest.raises(ValueError, match="labels is empty"):
        metrics.metric_interval("macro_f1", rows, seed=1)


def test_metric_interval_unknown_metric():
    with pytest.raises(ValueError, match="no interval defined for metric 'bleu'"):
        metrics.metric_interval("bleu", _scored_rows())
