"""``llmopt pareto``: the live cost/quality/latency front of a task, as a table and a plot.

The same computation as the service's ``GET /pareto`` (:func:`serving.pareto.live_front`), read
straight from the event log of the settings (no running service needed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def pareto_cmd(
    task: Annotated[
        str | None,
        typer.Option(help="Task type (code, math, ..., general, other); default: every task."),
    ] = None,
    wtp: Annotated[
        float | None,
        typer.Option(
            "--wtp", help="Willingness to pay (USD per unit of quality); default: the settings'."
        ),
    ] = None,
    window: Annotated[int, typer.Option(help="Feedback (the latest) to average over.")] = 5000,
    plot: Annotated[
        Path | None, typer.Option(help="Write a cost/quality plot of the front here (PNG).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON of GET /pareto.")] = False,
) -> None:
    """Show which models are on the cost/quality/latency front for a task, and the choice at a
    willingness to pay, from the event log's latest feedback."""
    from llmopt.catalog import load_catalog  # noqa: PLC0415
    from llmopt.event_log import EventLog  # noqa: PLC0415
    from llmopt.settings import get_settings  # noqa: PLC0415
    from serving.pareto import ParetoQueryError, live_front  # noqa: PLC0415

    settings = get_settings()
    w = wtp if wtp is not None else settings.default_willingness_to_pay
    try:
        log = EventLog(settings.event_log_url)
    except Exception as exc:  # a bad URL or a database that is down: a message, not a trace
        typer.secho(f"error: cannot open the event log: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    try:
        view = live_front(
            log,
            task=task,
            willingness_to_pay=w,
            latency_weight=settings.default_latency_weight,
            catalog=load_catalog(settings.catalog_path),
            window=window,
        )
    except ParetoQueryError as exc:
        option = {"willingness_to_pay": "wtp"}.get(exc.field, exc.field).replace("_", "-")
        typer.secho(f"error: --{option}: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    finally:
        log.close()
    if as_json:
        typer.echo(json.dumps(view, indent=2))
    else:
        _print(view)
    if plot is not None:
        if not view["candidates"]:
            typer.secho("no plot: no model has enough feedback yet", err=True)
        else:
            plot_front(view, plot)
            typer.echo(f"wrote {plot}")


def _print(view: dict[str, Any]) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    win = view["window"]
    title = (
        f"task {view['task'] or 'all'}: {win['of_task']} of the latest {win['feedback']} feedback "
        f"({win['from']} to {win['to']}); willingness to pay {view['willingness_to_pay']:g}"
    )
    table = Table(title=title)
    for col in ("model", "n", "quality", "cost USD", "latency ms", "front", "reward", ""):
        table.add_column(col)
    for c in view["candidates"]:
        mark = "choice" if c["model"] == view["choice"] else ""
        if c["model"] == view["knee"]:
            mark = f"{mark} knee".strip()
        table.add_row(
            c["model"],
            str(c["n"]),
            f"{c['quality']:.4f}",
            f"{c['cost_usd']:.6f}",
            f"{c['latency_ms']:.0f} ({c['latency_source']})",
            "yes" if c["on_front"] else "",
            f"{c['reward_at_wtp']:+.4f}",
            mark,
        )
    Console(width=150).print(table)
    if view["too_few_samples"]:
        typer.echo(
            f"fewer than {view['min_samples']} feedback in the window: "
            + ", ".join(view["too_few_samples"])
        )
    if not view["candidates"]:
        typer.echo(f"task types in the window: {view['tasks_in_window'] or 'none'}")


def plot_front(view: dict[str, Any], path: Path) -> None:
    """Cost (log) against quality: every candidate, the front joined, the choice starred and the
    line of equal reward through it (quality = reward + cost / willingness to pay)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    cands = view["candidates"]
    w = float(view["willingness_to_pay"])
    fig, ax = plt.subplots(figsize=(8, 5.5))
    lat = np.array([c["latency_ms"] for c in cands])
    size = 40 + 160 * (lat / lat.max() if lat.max() > 0 else lat)
    ax.scatter(
        [max(c["cost_usd"], 1e-9) for c in cands],
        [c["quality"] for c in cands],
        s=size,
        c=["tab:blue" if c["on_front"] else "tab:gray" for c in cands],
        alpha=0.7,
    )
    for c in cands:
        ax.annotate(c["model"], (max(c["cost_usd"], 1e-9), c["quality"]), fontsize=8)
    front = sorted((c for c in cands if c["on_front"]), key=lambda c: c["cost_usd"])
    ax.plot([max(c["cost_usd"], 1e-9) for c in front], [c["quality"] for c in front], "b--", lw=1)
    choice = next(c for c in cands if c["model"] == view["choice"])
    ax.scatter(
        [max(choice["cost_usd"], 1e-9)],
        [choice["quality"]],
        marker="*",
        s=400,
        c="tab:red",
        label=f"choice at willingness to pay {w:g}: {choice['model']}",
        zorder=5,
    )
    costs = np.geomspace(
        max(min(c["cost_usd"] for c in cands), 1e-9) / 2,
        max(*(c["cost_usd"] for c in cands), 1e-9) * 2,
        100,
    )
    reward_at_choice = choice["quality"] - choice["cost_usd"] / w
    ax.plot(costs, reward_at_choice + costs / w, "r:", lw=1, label="equal reward at that price")
    ax.set_xscale("log")
    ax.set_ylim(0, min(1.05, max(c["quality"] for c in cands) * 1.25 + 0.02))
    ax.set_xlabel("mean cost per request (USD, log)")
    ax.set_ylabel("mean quality")
    ax.set_title(f"Pareto front, task {view['task'] or 'all'} (blue: on the front; size: latency)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
