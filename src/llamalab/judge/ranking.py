"""Ratings from pairwise battles: online Elo and the Bradley–Terry maximum-likelihood fit, with bootstrap
confidence intervals, on the Elo scale (400 points = ×10 odds), as Chatbot Arena reports them.

A battle is (model_a, model_b, winner) with winner "a", "b" or "tie"; a tie counts half a win for each side.
"""

from __future__ import annotations

import math

import numpy as np

SCALE, BASE, INIT = 400.0, 10.0, 1000.0


def elo(battles, models: list[str], *, k: float = 4.0) -> dict[str, float]:
    """Online Elo over the battles in order (every model starts at 1000): after each battle
    r_a += k·(s_a − E_a) with E_a = 1 / (1 + 10^((r_b − r_a)/400)), and r_b the opposite."""
    rating = {m: INIT for m in models}
    for a, b, winner in battles:
        expected_a = 1 / (1 + BASE ** ((rating[b] - rating[a]) / SCALE))
        score_a = {"a": 1.0, "b": 0.0, "tie": 0.5}[winner]
        rating[a] += k * (score_a - expected_a)
        rating[b] -= k * (score_a - expected_a)
    return rating


def bradley_terry(battles, models: list[str], *, tol: float = 1e-10) -> dict[str, float]:
    """The Bradley–Terry maximum-likelihood strengths (P(i beats j) = p_i / (p_i + p_j)) as Elo-scale ratings
    400·log10(p_i) shifted so that their mean is 1000. Fitted by Newton's method on θ = ln p (the
    log-likelihood is concave), halving a step that would lower it.

    The maximum exists when the win graph is strongly connected (Hunter 2004: every split of the models
    has a win each way across it; a tie is half a win each way). Where it is not, e.g. a model that never
    loses, every pair gets a pseudo-battle of weight 0.01, half won by each side, which keeps the ratings finite.
    """
    index = {m: i for i, m in enumerate(models)}
    n = len(models)
    wins = np.zeros((n, n))  # wins[i, j]: how often i beat j (ties count half)
    for a, b, winner in battles:
        i, j = index[a], index[b]
        s = {"a": 1.0, "b": 0.0, "tie": 0.5}[winner]
        wins[i, j] += s
        wins[j, i] += 1 - s
    if not _strongly_connected(wins > 0):
        wins += 0.005 * (1 - np.eye(n))
    games = wins + wins.T

    def loglik(theta):
        d = theta[:, None] - theta[None, :]
        return float((wins * -np.logaddexp(0, -d)).sum())

    theta = np.zeros(n)
    for _ in range(100):
        sigma = 1 / (1 + np.exp(theta[None, :] - theta[:, None]))  # sigma[i, j] = P(i beats j)
        grad = wins.sum(1) - (games * sigma).sum(1)
        weight = games * sigma * sigma.T
        hessian = weight - np.diag(weight.sum(1))
        step = np.linalg.lstsq(hessian, -grad, rcond=None)[0]  # singular along θ + c: the least-norm step
        step -= step.mean()
        before, t = loglik(theta), 1.0
        while loglik(theta + t * step) < before - 1e-12 and t > 1e-6:
            t /= 2
        theta += t * step
        if np.abs(t * step).max() < tol:
            break
    ratings = SCALE * theta / math.log(BASE)
    return {m: float(INIT + r - ratings.mean()) for m, r in zip(models, ratings)}


def _strongly_connected(edges: np.ndarray) -> bool:
    """Whether every node reaches every other along `edges` (bool adjacency)."""
    n = len(edges)
    reach = edges | np.eye(n, dtype=bool)
    for _ in range(max(1, math.ceil(math.log2(max(n, 2))))):
        reach = reach | ((reach.astype(int) @ reach.astype(int)) > 0)
    return bool(reach.all())


def bootstrap(fit, battles, models: list[str], *, rounds: int = 1000, seed: int = 0,
              confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """(low, high) percentile interval of each model's rating when the battles are resampled with replacement
    (and, for the order-dependent Elo, shuffled)."""
    rng = np.random.default_rng(seed)
    battles = list(battles)
    samples = {m: [] for m in models}
    for _ in range(rounds):
        pick = rng.integers(0, len(battles), len(battles))
        rating = fit([battles[i] for i in pick], models)
        for m in models:
            samples[m].append(rating[m])
    lo, hi = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    return {m: (float(np.percentile(v, lo)), float(np.percentile(v, hi))) for m, v in samples.items()}


def mean_interval(values: list[float], *, rounds: int = 1000, seed: int = 0,
                  confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): a bootstrap percentile interval of the mean (single-answer grades)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (rounds, len(x)))].mean(1)
    lo, hi = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    return float(x.mean()), float(np.percentile(means, lo)), float(np.percentile(means, hi))
