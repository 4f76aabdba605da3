"""The cost-quality plot of a replay: policies, single models, random, zero router, oracle."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_frontier(result: dict[str, Any], path: Path | str, *, title: str | None = None) -> Path:
    """Draw the replay ``result`` on the cost (log) x quality plane and save it to ``path``."""
    import matplotlib  # noqa: PLC0415 - heavy, only for this command

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    base = result["baselines"]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    singles = base["single_models"]
    xs = [v["avg_cost_usd"] for v in singles.values()]
    ys = [v["avg_quality"] for v in singles.values()]
    ax.scatter(xs, ys, color="grey", s=25, label="single models", zorder=3)
    for name, v in singles.items():
        ax.annotate(
            name,
            (v["avg_cost_usd"], v["avg_quality"]),
            fontsize=6,
            color="dimgrey",
            xytext=(3, 2),
            textcoords="offset points",
        )
    hull = base["zero_router"]["hull"]
    ax.plot(
        [h["avg_cost_usd"] for h in hull],
        [h["avg_quality"] for h in hull],
        "--",
        color="grey",
        label="zero router (hull of single models)",
    )
    rnd = base["uniform_random"]
    ax.scatter(
        [rnd["avg_cost_usd"]],
        [rnd["avg_quality"]],
        marker="x",
        color="black",
        s=60,
        label="uniform random",
        zorder=4,
    )
    oracle = base["oracle"]["points"]
    ax.plot(
        [p["avg_cost_usd"] for p in oracle],
        [p["avg_quality"] for p in oracle],
        ":",
        marker=".",
        color="green",
        label="oracle (hindsight)",
    )
    for name, pol in result["policies"].items():
        pts = sorted(pol["points"], key=lambda p: p["avg_cost_usd"])
        ax.plot(
            [p["avg_cost_usd"] for p in pts],
            [p["avg_quality"] for p in pts],
            "-o",
            markersize=4,
            label=f"{name} (willingness-to-pay sweep)",
            zorder=5,
        )
    ax.set_xscale("log")
    ax.set_xlabel("average cost per prompt (USD, log scale)")
    ax.set_ylabel("average quality")
    n = result["data"]["n_prompts"]
    ax.set_title(title or f"Cost vs quality, bandit feedback, cold start ({n} prompts)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
