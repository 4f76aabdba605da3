"""The routing benchmark protocol: 5 seeds, cold and warm start, ours against the peers.

For every routing file (:func:`bench._common.routing_files`) and for a cold start and a 5% warm
start (the first 5% of each run's prompts learnt with every model's outcome, then bandit feedback on
the rest, and only the rest scored), :func:`llmopt.replay.run_replay` replays the recommended
policy, the previous recommendation (``cost_aware_linucb``) and every peer of :mod:`bench.peers`
over the default willingness-to-pay sweep, ``SEEDS`` seeds each (the peers: ``PEER_SEEDS``; MABWiser
one, cold start only), on the same request features (the prompt embedding included). Per (file,
start, policy) it reports the protocol's three figures as mean, standard deviation and range over
the seeds:

* ``mean_margin``: quality minus the zero router's at the same cost, averaged over *every*
  willingness-to-pay point;
* ``best_point_lift``: the largest such margin;
* ``cost_fraction_to_95pct_best``: cost to reach 95% of the best single model's quality, as a
  fraction of that model's cost.

Targets (issue 13; reported, not asserted): cold, mean margin >= +0.01 on
``routerdc_mixed7_train`` and best-point lift > 0 on every file; 5% warm start, mean margin >=
+0.03 on ``routerdc_mixed7_train`` and cost fraction <= 1/3 on RouterBench; at least every peer
on every file. ``--quick``: 1 seed, the first ``QUICK_PROMPTS`` prompts, ``QUICK_WTPS``.
"""

from __future__ import annotations

import time
from typing import Any

from bench._common import RESULTS_DIR, display_path, routing_files
from bench.peers import PEERS, peer_factories
from bench.routing import QUICK_PROMPTS, QUICK_WTPS, _subsample
from llmopt.catalog import load_catalog
from llmopt.policy import Policy
from llmopt.replay import DEFAULT_WTP_SWEEP, PolicyFactory, run_replay
from llmopt.routing_data import load_routing_data
from models.kinds import RECOMMENDED, make_policy

NAME = "protocol"
SEEDS = 5
PEER_SEEDS = 2
"""Seeds of the peers: their libraries take 0.25-1.6 ms a step (ours ~0.1 ms), and 5 seeds of
every peer on every file and start would take hours on 2 cores."""
SLOW_PEER = "mabwiser_linucb"
"""~1.6 ms a step: one seed, cold start only."""
WARM_STARTS = (0.0, 0.05)
OURS = ("cost_aware_cluster_thompson", "cost_aware_linucb")
"""Our policies replayed beside the recommended one (the previous recommendation included)."""
MIXED_FILE = "routerdc_mixed7_train"
COST_FILE = "routerbench_arc_winogrande"
FIGURES = ("mean_margin", "best_point_lift", "cost_fraction_to_95pct_best")


def _ours(name: str) -> PolicyFactory:
    def factory(seed: int) -> Policy:
        return make_policy(name, seed=seed)

    return factory


def _targets(row: dict[str, Any], peers: list[dict[str, Any]]) -> dict[str, bool | None]:
    """The issue's targets that apply to this (file, start) row of the recommended policy."""
    margin = row["mean_margin"]["mean"]
    lift = row["best_point_lift"]["mean"]
    frac = row["cost_fraction_to_95pct_best"]["mean"]
    cold = row["warm_start"] == 0.0
    out: dict[str, bool | None] = {
        "mean_margin_ge_target": (
            None
            if row["file"] != MIXED_FILE
            else margin is not None and margin >= (0.01 if cold else 0.03)
        ),
        "best_point_lift_positive": None if not cold else lift is not None and lift > 0,
        "cost_fraction_le_one_third": (
            None if cold or row["file"] != COST_FILE else frac is not None and frac <= 1 / 3
        ),
        "margin_ge_every_peer": margin is not None
        and all(
            p["mean_margin"]["mean"] is None or margin >= p["mean_margin"]["mean"] for p in peers
        ),
    }
    return out


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """One row per (file, warm start, policy) with the protocol's figures over the seeds."""
    catalog = load_catalog()
    seeds = 1 if quick else SEEDS
    wtps = QUICK_WTPS if quick else DEFAULT_WTP_SWEEP
    rows: list[dict[str, Any]] = []
    order = {MIXED_FILE: 0, COST_FILE: 1}  # the headline files first
    for path in sorted(routing_files(), key=lambda p: (order.get(p.stem, 2), p.stem)):
        data = load_routing_data(path)
        if quick:
            data = _subsample(data, QUICK_PROMPTS)
        candidates = {n: _ours(n) for n in dict.fromkeys((RECOMMENDED, *OURS))}
        peers = peer_factories()  # the slowest (MABWiser, ~1 ms a step) last
        candidates.update(sorted(peers.items(), key=lambda kv: kv[0].startswith("mabwiser")))
        for warm in WARM_STARTS:
            file_rows: list[dict[str, Any]] = []
            for name, factory in candidates.items():
                n_seeds = seeds
                if name in PEERS:
                    n_seeds = 1 if name == SLOW_PEER else min(seeds, PEER_SEEDS)
                    if name == SLOW_PEER and warm > 0:
                        continue
                started = time.perf_counter()
                result = run_replay(
                    data,
                    {name: factory},
                    wtps=wtps,
                    seeds=n_seeds,
                    warm_start=warm,
                    catalog=catalog,
                )
                proto = result["policies"][name]["summary"]["protocol"]
                file_rows.append(
                    {
                        "file": path.stem,
                        "data": display_path(path),
                        "n_prompts": data.n_prompts,
                        "n_models": len(data.models),
                        "warm_start": warm,
                        "scored_prompts": result["warm_start"]["scored_prompts"],
                        "seeds": result["seeds"],
                        "policy": name,
                        "kind": "peer" if name in PEERS else "ours",
                        "recommended": name == RECOMMENDED,
                        **{k: proto[k] for k in FIGURES},
                        "elapsed_s": round(time.perf_counter() - started, 1),
                    }
                )
                print(summary([file_rows[-1]])[0], flush=True)  # noqa: T201 - progress
                _save_partial(rows + file_rows)
            peers = [r for r in file_rows if r["kind"] == "peer"]
            for r in file_rows:
                if r["recommended"]:
                    r["targets"] = _targets(r, peers)
            rows.extend(file_rows)
    _plot(rows)
    return rows


def _save_partial(rows: list[dict[str, Any]]) -> None:
    """The rows so far, in case a long run is cut short (the final document replaces it)."""
    import json  # noqa: PLC0415

    (RESULTS_DIR / "protocol.partial.json").write_text(json.dumps(rows, indent=1))


def _plot(rows: list[dict[str, Any]]) -> None:
    """Mean margin (with its range over seeds) per file, start and policy: one PNG."""
    try:
        import matplotlib  # noqa: PLC0415 - heavy, only here

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return
    files = sorted({r["file"] for r in rows})
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig, axes = plt.subplots(len(WARM_STARTS), 1, figsize=(11, 4 * len(WARM_STARTS)))
    width = 0.8 / max(len(policies), 1)
    for ax, warm in zip(axes, WARM_STARTS, strict=True):
        for k, pol in enumerate(policies):
            xs, ys, lo, hi = [], [], [], []
            for i, f in enumerate(files):
                r = next(
                    (
                        x
                        for x in rows
                        if x["file"] == f and x["policy"] == pol and x["warm_start"] == warm
                    ),
                    None,
                )
                if r is None or r["mean_margin"]["mean"] is None:
                    continue
                m = r["mean_margin"]
                xs.append(i + k * width)
                ys.append(m["mean"])
                lo.append(m["mean"] - m["min"])
                hi.append(m["max"] - m["mean"])
            ax.bar(xs, ys, width, yerr=[lo, hi], label=pol, capsize=2)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(files))], files, fontsize=8)
        ax.set_ylabel("mean margin over zero router")
        ax.set_title(f"warm start {warm:.0%} (bars: mean over seeds, whiskers: min-max)")
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / "protocol.png", dpi=110)
    plt.close(fig)


def _fmt(f: dict[str, Any], spec: str) -> str:
    if f["mean"] is None:
        return "-"
    return f"{format(f['mean'], spec)}±{f['sd']:.4f}"


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per (file, start, policy); the recommended policy's targets."""
    lines = []
    for r in results:
        line = (
            f"{r['file'][:24]:<24} warm {r['warm_start']:.2f} {r['policy']:<28} "
            f"margin {_fmt(r['mean_margin'], '+.4f')}  best {_fmt(r['best_point_lift'], '+.4f')}  "
            f"cost@95% {_fmt(r['cost_fraction_to_95pct_best'], '.3f')}  {r['elapsed_s']:.0f} s"
        )
        if "targets" in r:
            marks = ", ".join(
                f"{k} {'ok' if v else 'NO'}" for k, v in r["targets"].items() if v is not None
            )
            line += f"  [{marks}]"
        lines.append(line)
    return lines
