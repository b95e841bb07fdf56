"""What the judgments say: per-pair win/tie/loss, position-bias consistency, Elo and Bradley–Terry ratings
with bootstrap intervals (pairwise), mean grades with bootstrap intervals (single), malformed replies;
as a dict for report.json, a text table and a PNG of the ranking."""

from __future__ import annotations

import io
import itertools
from collections import defaultdict

from ..atomic import write_bytes
from .ranking import bootstrap, bradley_terry, elo, mean_interval

WINNER = {"A": 0, "B": 1}


def battles(judgments: list[dict]) -> tuple[list[tuple[str, str, str]], dict]:
    """(model_a, model_b, "a" | "b" | "tie") per question and pair, from its two orders: the winner when both
    orders name the same one, else a tie. Pairs missing an order or with a verdict still unusable after the
    retry are left out (and counted)."""
    orders = defaultdict(dict)
    for j in judgments:
        a, b = j["models"]
        orders[(j["question_id"], *sorted((a, b)))][(a, b)] = j["verdict"]
    out, counts = [], {"consistent": 0, "inconsistent": 0, "incomplete": 0}
    for (qid, a, b), got in sorted(orders.items()):
        first, second = got.get((a, b)), got.get((b, a))
        if first is None or second is None:
            counts["incomplete"] += 1
            continue
        # who won in each order, in the models' own names (None = tie)
        w1 = (a, b)[WINNER[first]] if first in WINNER else None
        w2 = (b, a)[WINNER[second]] if second in WINNER else None
        counts["consistent" if w1 == w2 else "inconsistent"] += 1
        winner = w1 if w1 == w2 else None
        out.append((a, b, "tie" if winner is None else ("a" if winner == a else "b")))
    return out, counts


def summarize(judgments: list[dict], models: list[str], mode: str, *, judge: str, rounds: int = 1000,
              seed: int = 0) -> dict:
    malformed = {"retried": sum(j["malformed"] for j in judgments),
                 "unusable after retry": sum(j.get("verdict", j.get("rating")) is None for j in judgments)}
    report = {"mode": mode, "judge": judge, "models": models, "judgments": len(judgments), "malformed": malformed}
    if mode == "single":
        ranking = []
        for m in models:
            grades = [j["rating"] for j in judgments if j["model"] == m and j["rating"] is not None]
            mean, lo, hi = mean_interval(grades, rounds=rounds, seed=seed)
            ranking.append({"model": m, "mean": mean, "ci": [lo, hi], "graded": len(grades)})
        report["ranking"] = sorted(ranking, key=lambda r: -r["mean"] if r["graded"] else 0)
        return report
    fights, counts = battles(judgments)
    table = {a: {b: {"win": 0, "tie": 0, "loss": 0} for b in models if b != a} for a in models}
    for a, b, w in fights:
        table[a][b][{"a": "win", "b": "loss", "tie": "tie"}[w]] += 1
        table[b][a][{"a": "loss", "b": "win", "tie": "tie"}[w]] += 1
    bt, elo_now = bradley_terry(fights, models), elo(fights, models)
    bt_ci = bootstrap(bradley_terry, fights, models, rounds=rounds, seed=seed)
    elo_ci = bootstrap(elo, fights, models, rounds=rounds, seed=seed)
    ranking = []
    for m in models:
        w = sum(t["win"] for t in table[m].values())
        t = sum(t["tie"] for t in table[m].values())
        n = w + t + sum(t["loss"] for t in table[m].values())
        ranking.append({"model": m, "bradley_terry": bt[m], "bradley_terry_ci": list(bt_ci[m]), "elo": elo_now[m],
                        "elo_ci": list(elo_ci[m]), "win_rate": (w + t / 2) / n if n else None, "battles": n})
    report.update(battles=len(fights), order_agreement=counts, table=table,
                  ranking=sorted(ranking, key=lambda r: -r["bradley_terry"]))
    return report


def text_table(report: dict) -> str:
    if report["mode"] == "single":
        lines = [f"{'model':30s} {'mean grade':>10s}  95% CI         graded"]
        for r in report["ranking"]:
            lines.append(f"{r['model'][:30]:30s} {r['mean']:10.2f}  [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]  {r['graded']:6d}")
        return "\n".join(lines)
    lines = [f"{'model':30s} {'Bradley-Terry':>13s} {'95% CI':>17s} {'Elo':>7s} {'win rate':>9s}"]
    for r in report["ranking"]:
        lo, hi = r["bradley_terry_ci"]
        rate = f"{r['win_rate']:.3f}" if r["win_rate"] is not None else "-"
        lines.append(f"{r['model'][:30]:30s} {r['bradley_terry']:13.1f} [{lo:7.1f}, {hi:7.1f}] {r['elo']:7.1f} {rate:>9s}")
    lines.append("")
    lines.append(f"{'pair':50s} {'win':>5s} {'tie':>5s} {'loss':>5s}")
    for a, b in itertools.combinations(report["models"], 2):
        c = report["table"][a][b]
        lines.append(f"{(a + ' vs ' + b)[:50]:50s} {c['win']:5d} {c['tie']:5d} {c['loss']:5d}")
    return "\n".join(lines)


def plot(report: dict, path) -> None:
    """The ranking with its 95% intervals, best on top, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["ranking"][::-1]
    single = report["mode"] == "single"
    value = [r["mean"] if single else r["bradley_terry"] for r in rows]
    low, high = zip(*[r["ci"] if single else r["bradley_terry_ci"] for r in rows]) if rows else ((), ())
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(rows)))
    ax.errorbar(value, range(len(rows)), xerr=[[v - lo for v, lo in zip(value, low)],
                                               [hi - v for v, hi in zip(value, high)]],
                fmt="o", capsize=4)
    ax.set_yticks(range(len(rows)), [r["model"] for r in rows])
    ax.set_xlabel("mean grade (1-10)" if single else "Bradley-Terry rating (Elo scale)")
    ax.set_title(f"{report['mode']} judgments by {report['judge']}, 95% bootstrap intervals", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    write_bytes(path, png.getvalue())
