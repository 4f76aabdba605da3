"""``llmopt monitor``: drift reports of the event log and the Evidently UI.

Registered in ``llmopt/app/cli.py`` as ``app.add_typer(monitor_app, name="monitor")``; settings
come from :func:`llmopt.settings.get_settings` (``LLMOPT_HOME``, ``LLMOPT_DATABASE_URL``, ...).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Monitoring: Evidently drift reports of the event log and the Evidently UI.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@app.command()
def report(
    *,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder (default: <LLMOPT_HOME>/monitoring/reports)."),
    ] = None,
    window: Annotated[
        int, typer.Option(min=2, help="Events in the current window (the latest ones).")
    ] = 5000,
    workspace: Annotated[
        Path | None,
        typer.Option(help="Evidently UI workspace (default: <LLMOPT_HOME>/monitoring/workspace)."),
    ] = None,
    skip_workspace: Annotated[
        bool, typer.Option("--skip-workspace", help="Do not add the snapshots to the workspace.")
    ] = False,
    registry: Annotated[
        bool,
        typer.Option(help="Use the prod champion's training window as the reference if known."),
    ] = True,
    min_rows: Annotated[
        int, typer.Option(min=2, help="Fewest events in each of the two windows.")
    ] = 50,
    min_model_rows: Annotated[
        int,
        typer.Option(
            min=2, help="Fewest events of a model in each window for the per-model report."
        ),
    ] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Drift of request features, per-model quality/reward and decisions: HTML + JSON."""
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

    from llmopt.event_log import EventLogError  # noqa: PLC0415
    from llmopt.settings import get_settings  # noqa: PLC0415
    from monitoring.reports import drift_report  # noqa: PLC0415

    try:
        summary = drift_report(
            settings=get_settings(),
            window=window,
            out_dir=out,
            workspace=workspace,
            add_to_workspace=not skip_workspace,
            use_registry=registry,
            min_rows=min(min_rows, window),
            min_model_rows=min_model_rows,
        )
    except (EventLogError, ValueError, OSError) as exc:  # NotEnoughEventsError is a ValueError
        raise _fail(str(exc)) from None
    except SQLAlchemyError as exc:  # e.g. PostgreSQL unreachable
        raise _fail(f"cannot read the event log: {str(exc).splitlines()[0]}") from None
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2, default=str))
    else:
        typer.echo(summary.describe())
        typer.echo(f"open {summary.index} (took {summary.elapsed_s:.1f} s)")


@app.command()
def ui(
    *,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the UI.")] = 8000,
    workspace: Annotated[
        Path | None,
        typer.Option(help="Evidently workspace (default: <LLMOPT_HOME>/monitoring/workspace)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind (local only by default).")] = (
        "127.0.0.1"
    ),
) -> None:
    """Serve the Evidently UI on the reports' workspace until interrupted (Ctrl-C).

    The project and its dashboard are set up first, so the dashboard's panels show even before
    the first drift report (which fills them).
    """
    from llmopt.settings import get_settings  # noqa: PLC0415
    from monitoring.workspace import (  # noqa: PLC0415
        PROJECT_NAME,
        default_workspace,
        ensure_project,
        start_ui,
        stop,
    )

    path = workspace or default_workspace(get_settings())
    try:
        ensure_project(path)
        proc = start_ui(path, port=port, host=host)
    except (FileNotFoundError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"Evidently UI on http://{host}:{port} (workspace {path}, project {PROJECT_NAME}: "
        "its dashboard plots drift share, traffic and outcomes per model and policy version, "
        "one point per `llmopt monitor report`); Ctrl-C stops it"
    )

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)  # `kill` stops the UI too, not only us
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        stop(proc)
        signal.signal(signal.SIGTERM, previous)
    if code:
        raise _fail(f"evidently ui exited with code {code}")
