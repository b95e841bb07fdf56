"""The paper's quality classifier (§2.1, after CCNet): a linear model telling pages "used as references
in Wikipedia" from random pages, used as a threshold filter. Here: logistic regression (scikit-learn)
on hashed word uni- and bigrams of whatever positive and negative documents the user has.

The model file is a plain `.npz` (weights, bias and the featurizer's settings): loaded with
`allow_pickle=False`, so a model file can never run code.
"""

from __future__ import annotations

import io
import json

import numpy as np

from ...atomic import write_bytes
from ...bounded import loads
from ...errors import LlamalabError
from .read import InputReader, plan_units
from .stage import DocFilter

FORMAT = "llamalab-quality-v1"
N_FEATURES = 1 << 18
MAX_CHARS = 20_000  # the classifier reads at most this much of a document


def featurizer(n_features: int = N_FEATURES):
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False,
                             norm="l2", lowercase=True, dtype=np.float32)


def train(positive: list[str], negative: list[str], held_out: float = 0.1, seed: int = 0) -> dict:
    """Fit on the documents; returns {weights, bias, accuracy on a held-out split, counts}."""
    from sklearn.linear_model import LogisticRegression

    if len(positive) < 2 or len(negative) < 2:
        raise LlamalabError(f"need at least 2 positive and 2 negative documents, got {len(positive)} and "
                            f"{len(negative)}")
    texts = [t[:MAX_CHARS] for t in positive + negative]
    labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    order = np.random.default_rng(seed).permutation(len(texts))
    n_test = max(1, int(len(texts) * held_out))
    test, fit = order[:n_test], order[n_test:]
    X = featurizer().transform(texts)
    model = LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced").fit(X[fit], labels[fit])
    accuracy = float((model.predict(X[test]) == labels[test]).mean())
    model = LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced").fit(X, labels)  # all the data
    return {"weights": model.coef_[0].astype(np.float32), "bias": float(model.intercept_[0]),
            "held_out_accuracy": accuracy, "held_out": int(n_test), "positive": len(positive),
            "negative": len(negative)}


def save(path, result: dict):
    meta = {"format": FORMAT, "n_features": N_FEATURES, "ngram_range": [1, 2],
            **{k: result[k] for k in ("held_out_accuracy", "held_out", "positive", "negative")}}
    buf = io.BytesIO()
    np.savez(buf, weights=result["weights"], bias=np.float32(result["bias"]), meta=np.array(json.dumps(meta)))
    write_bytes(path, buf.getvalue())


def load(path) -> tuple[np.ndarray, float, dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = loads(str(z["meta"]))
            weights, bias = z["weights"], float(z["bias"])
    except (OSError, ValueError, KeyError) as e:
        raise LlamalabError(f"{path}: not a quality model written by `llamalab data train-quality` ({e})") from None
    if meta.get("format") != FORMAT or weights.shape != (meta.get("n_features"),):
        raise LlamalabError(f"{path}: not a {FORMAT} quality model; train one with `llamalab data train-quality`")
    return weights, bias, meta


def scores(texts: list[str], weights: np.ndarray, bias: float) -> np.ndarray:
    """P(positive) of each text."""
    X = featurizer(len(weights)).transform([t[:MAX_CHARS] for t in texts])
    return 1.0 / (1.0 + np.exp(-(X @ weights + bias)))


class QualityFilter(DocFilter):
    name = "quality"

    def __init__(self, model_path: str, threshold: float = 0.5):
        super().__init__()
        self.batch_size = 64
        self.model_path = model_path
        self.threshold = threshold
        self._model = None

    def filter_batch(self, batch):
        if self._model is None:
            self._model = load(self.model_path)[:2]
        return [bool(s >= self.threshold) or (False, "low_quality")
                for s in scores([d.text for d in batch], *self._model)]


def read_texts(paths: list[str], text_key: str = "text") -> list[str]:
    """Every document under the paths (bad records skipped, as `data clean` skips them)."""
    units = plan_units(paths)
    if not units:
        raise LlamalabError(f"no input files under {', '.join(paths)}")
    return [doc.text for doc in InputReader(units, text_key).run()]
