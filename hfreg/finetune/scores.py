"""Metrics of a classifier's logits, in numpy (no torch): what every evaluation point records and what
`hfreg report` recomputes from the stored predictions.

Calibration separates a model that got *worse* from one that got *more confident*: NLL rises in both cases,
accuracy only in the first; temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks")
fits one temperature on the selection split and removes the overconfidence part of the test NLL.

A regression head's "logits" are its one output per example: `regression_scores` measures them (MSE as the loss,
R², Pearson and Spearman), and no temperature is fitted; a causal LM's per-example completion scores are measured
by `lm_scores`.
"""

from __future__ import annotations

import numpy as np

from .tasks import CAUSAL_LM, CLASSIFICATION, REGRESSION, TOKENS

ECE_BINS = 15  # equal-width bins of top-class confidence over [0, 1], as in Guo et al. (2017)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def losses(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each example's negative log-likelihood of its label, in nats."""
    return -log_softmax(logits)[np.arange(len(labels)), labels]


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels (cross-entropy), in nats."""
    return float(losses(logits, labels).mean())


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())


def macro_f1(logits: np.ndarray, labels: np.ndarray) -> float:
    """F1 averaged over the classes present in predictions or labels (scikit-learn's ``average="macro"``)."""
    return f1_of_predictions(logits.argmax(-1), labels)


def f1_of_predictions(pred: np.ndarray, labels: np.ndarray) -> float:
    """`macro_f1` of predicted class ids."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    scores = []
    for c in np.union1d(pred, labels):
        tp = np.sum((pred == c) & (labels == c))
        denom = np.sum(pred == c) + np.sum(labels == c)
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def brier(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean over examples of the squared distance between the probability vector and the one-hot label."""
    p = np.exp(log_softmax(logits))
    onehot = np.eye(logits.shape[-1])[labels]
    return float(((p - onehot) ** 2).sum(-1).mean())


def ece(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: |accuracy - confidence| per confidence bin, weighted by the bin's share."""
    p = np.exp(log_softmax(logits))
    conf, correct = p.max(-1), (p.argmax(-1) == labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # bins (lo, hi]; 0 joins the first
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(total)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimizes NLL(logits / T) (searched over log T in [-4, 4])."""
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda log_t: nll(logits / np.exp(log_t), labels), bounds=(-4.0, 4.0),
                             method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


def evaluate(logits: np.ndarray, labels: np.ndarray, calibration: bool = True) -> dict:
    """loss (NLL), accuracy, macro-F1 and, with ``calibration``, ECE and Brier score."""
    out = {"loss": nll(logits, labels), "accuracy": accuracy(logits, labels), "f1": macro_f1(logits, labels)}
    if calibration:
        out.update(ece=ece(logits, labels), brier=brier(logits, labels))
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x)  # ties share their mean rank


def _standardized(x: np.ndarray) -> np.ndarray | None:
    sd = x.std()
    return None if sd == 0 else (x - x.mean()) / sd


def _correlation_terms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per example, the correlation r of ``a`` and ``b`` plus its influence, u v - r (u^2 + v^2) / 2 (u, v the
    standardized values; Devlin, Gnanadesikan & Kettenring, 1975): their mean is r, and their variance over the
    examples over N is r's delta-method sampling variance. A constant side has no correlation: 0 throughout."""
    u, v = _standardized(a), _standardized(b)
    if u is None or v is None:
        return np.zeros(len(a))
    r = float(np.mean(u * v))
    return r + u * v - r * (u ** 2 + v ** 2) / 2


def _upper_mean(key: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per example i, mean_k weight_k (1{key_k > key_i} + 1{key_k = key_i} / 2), by one sort (ties count half, as a
    mid-distribution function counts them)."""
    order = np.argsort(key, kind="stable")
    keys, suffix = key[order], np.concatenate([np.cumsum(weight[order][::-1])[::-1], [0.0]])
    lo, hi = np.searchsorted(keys, key, side="left"), np.searchsorted(keys, key, side="right")
    return (suffix[hi] + (suffix[lo] - suffix[hi]) / 2) / len(key)


def _spearman_terms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per example, Spearman's rho plus its influence (Croux & Dehon, 2010: 12 [F(x) G(y) + E F(X) 1{Y >= y}
    + E G(Y) 1{X >= x}], centred; F, G the mid-distribution functions, so ties count half). Pearson's influence on
    the ranks would treat them as fixed numbers; they are not, and that understates the variance once rho is away
    from 0. Their mean is rho; their variance over N, rho's sampling variance. A constant side: 0 throughout."""
    if a.std() == 0 or b.std() == 0:
        return np.zeros(len(a))
    f, g = (_ranks(a) - 0.5) / len(a), (_ranks(b) - 0.5) / len(b)
    rho = float(_correlation_terms(f, g).mean())
    inner = f * g + _upper_mean(a, g) + _upper_mean(b, f)
    return rho + 12 * (inner - inner.mean())


def regression_scores(outputs: np.ndarray, labels: np.ndarray) -> dict:
    """loss (MSE), R² (1 - MSE / the labels' variance), Pearson's and Spearman's correlation of a regression head's
    outputs (N x 1) with float labels; a correlation with constant outputs is 0 (they rank nothing)."""
    pred, labels = outputs.reshape(len(labels)).astype(float), labels.astype(float)
    mse = float(np.mean((pred - labels) ** 2))
    var = float(labels.var())
    return {"loss": mse, "r2": 1 - mse / var if var > 0 else float("nan"),
            "pearson": float(_correlation_terms(pred, labels).mean()),
            "spearman": float(_spearman_terms(pred, labels).mean())}


def lm_scores(outputs: np.ndarray, labels=None) -> dict:
    """A causal LM's completions, from `causal_lm.outputs` (per example: the summed NLL of its completion tokens,
    their count, and whether every one is the greedy choice): loss (NLL per completion token, pooled over the
    tokens), perplexity, and exact match (the share of completions wholly right)."""
    nll, tokens, correct = (outputs[:, i].astype(float) for i in range(3))
    loss = float(nll.sum() / max(tokens.sum(), 1.0))
    return {"loss": loss, "perplexity": float(np.exp(min(loss, 50.0))), "exact_match": float(correct.mean())}


def token_scores(outputs: np.ndarray, labels=None) -> dict:
    """Token classification, from `tokens.outputs` (per example: words' summed NLL, words, words right, entity true
    positives, predicted and gold entities): loss (NLL per word), word accuracy, and entity-level micro F1
    (2 TP / (predicted + gold); 0 where neither has an entity)."""
    nll, words, right, tp, pred, gold = (outputs[:, i].astype(float).sum() for i in range(6))
    return {"loss": float(nll / max(words, 1.0)), "token_accuracy": float(right / max(words, 1.0)),
            "entity_f1": float(2 * tp / (pred + gold)) if pred + gold else 0.0}


def _ratio_terms(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Per-example terms of a ratio of sums R = sum num / sum den, linearized (R + (num_j - R den_j) / mean den):
    their mean is R, their variance over N its delta-method variance."""
    ratio = num.sum() / den.sum() if den.sum() else 0.0
    return ratio + (num - ratio * den) / max(den.mean(), 1e-12)


def per_example(outputs: np.ndarray, labels: np.ndarray, point: dict, problem_type: str = CLASSIFICATION) -> dict:
    """{verdict metric: per-example values whose mean is the metric} at one evaluation ``point``: correctness and
    the temperature-scaled loss of a classifier; a regressor's R² terms, 1 - (error^2 / the labels' variance), and
    Spearman's influence terms (`_spearman_terms`); a causal LM's exact match and its NLL per
    token, and token classification's entity F1 and word accuracy, ratios of sums linearized
    (`_ratio_terms`). What the test
    set adds to a comparison's variance is read from these (`stats.test_set_terms`)."""
    if problem_type == CAUSAL_LM:
        return {"test_loss": _ratio_terms(outputs[:, 0].astype(float), outputs[:, 1].astype(float)),
                "test_exact_match": outputs[:, 2].astype(float)}
    if problem_type == TOKENS:
        col = [outputs[:, i].astype(float) for i in range(6)]
        return {"test_entity_f1": _ratio_terms(2 * col[3], col[4] + col[5]),
                "test_token_accuracy": _ratio_terms(col[2], col[1])}
    if problem_type == REGRESSION:
        pred, labels = outputs.reshape(len(labels)).astype(float), labels.astype(float)
        var = float(labels.var()) or float("nan")
        return {"test_r2": 1 - (pred - labels) ** 2 / var,
                "test_spearman": _spearman_terms(pred, labels)}
    return {"test_accuracy": (outputs.argmax(-1) == labels).astype(float),
            "test_nll_ts": losses(outputs / point["temperature"], labels)}


# a classifier's: `evaluate`, with a temperature
SCORES = {REGRESSION: regression_scores, CAUSAL_LM: lm_scores, TOKENS: token_scores}


def point_metrics(fit: tuple, selection: tuple, test: tuple | None = None,
                  problem_type: str = CLASSIFICATION) -> dict:
    """Everything one evaluation point records, from (outputs, labels) of the training subset, selection and test
    splits: ``train_*``, ``selection_*``, a classifier's selection-fitted ``temperature``, and with ``test`` its
    `test_metrics`."""
    if problem_type in SCORES:
        out = {f"train_{k}": v for k, v in SCORES[problem_type](*fit).items()}
        out.update({f"selection_{k}": v for k, v in SCORES[problem_type](*selection).items()})
    else:
        out = {f"train_{k}": v for k, v in evaluate(*fit, calibration=False).items()}
        out.update({f"selection_{k}": v for k, v in evaluate(*selection).items()})
        out["temperature"] = fit_temperature(*selection)
    if test is not None:
        out.update(test_metrics(*test, out.get("temperature"), problem_type))
    return out


def test_metrics(logits: np.ndarray, labels: np.ndarray, temperature: float | None,
                 problem_type: str = CLASSIFICATION) -> dict:
    """A point's ``test_*`` metrics and, for a classifier, ``test_nll_ts`` (the test NLL at the selection-fitted
    ``temperature``)."""
    if problem_type in SCORES:
        return {f"test_{k}": v for k, v in SCORES[problem_type](logits, labels).items()}
    out = {f"test_{k}": v for k, v in evaluate(logits, labels).items()}
    out["test_nll_ts"] = nll(logits / temperature, labels)
    return out
