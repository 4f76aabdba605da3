"""The Evidently UI: a local workspace of report snapshots, and the ``evidently ui`` process.

Every drift report run adds its snapshots to the project ``llm-auto-optimizer`` of a local
workspace (a folder; default ``<home>/monitoring/workspace``); ``evidently ui`` serves it,
offline, at ``http://127.0.0.1:<port>``. Its telemetry is switched off (``DO_NOT_TRACK``).

Examples
--------
>>> cmd = ui_command("/tmp/ws", port=8123)
>>> cmd[1:]
['ui', '--host', '127.0.0.1', '--port', '8123', '--workspace', '/tmp/ws']
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llmopt.settings import Settings

PROJECT_NAME = "llm-auto-optimizer"
DEFAULT_PORT = 8000


def default_workspace(settings: Settings) -> Path:
    """The workspace of the embedded profile: ``<home>/monitoring/workspace``."""
    return settings.home / "monitoring" / "workspace"


def add_snapshots(path: Path | str, snapshots: Iterable[Any], project: str = PROJECT_NAME) -> str:
    """Add Evidently snapshots to ``project`` of the workspace at ``path``; return its id."""
    from evidently.ui.workspace import Workspace  # noqa: PLC0415

    ws = Workspace.create(str(path))
    found = ws.search_project(project)
    proj = (
        found[0]
        if found
        else ws.create_project(project, description="Drift of requests, outcomes and decisions")
    )
    for snap in snapshots:
        ws.add_run(proj.id, snap)
    return str(proj.id)


def evidently_executable() -> str:
    """The ``evidently`` command of this environment (next to the interpreter, else on PATH)."""
    here = Path(sys.executable).parent / "evidently"
    if here.exists():
        return str(here)
    found = shutil.which("evidently")
    if found is None:
        raise FileNotFoundError("the `evidently` command is not installed in this environment")
    return found


def ui_command(
    workspace: Path | str, *, port: int = DEFAULT_PORT, host: str = "127.0.0.1"
) -> list[str]:
    """The command line serving ``workspace`` with the Evidently UI."""
    return [
        evidently_executable(),
        "ui",
        "--host",
        host,
        "--port",
        str(port),
        "--workspace",
        str(workspace),
    ]


def start_ui(
    workspace: Path | str, *, port: int = DEFAULT_PORT, host: str = "127.0.0.1", quiet: bool = False
) -> subprocess.Popen[bytes]:
    """Start ``evidently ui`` on ``workspace`` (created if missing); the caller stops it."""
    Path(workspace).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    out = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(  # noqa: S603 - our own executable and arguments
        ui_command(workspace, port=port, host=host), env=env, stdout=out, stderr=out
    )


def wait_until_serving(
    url: str, *, timeout: float = 60.0, proc: subprocess.Popen[Any] | None = None
) -> bool:
    """Poll ``url`` until it answers HTTP 200 (True), ``timeout`` passes or ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - local URL
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    return False


def stop(proc: subprocess.Popen[Any], *, timeout: float = 10.0) -> None:
    """Stop a process started by :func:`start_ui` (terminate, then kill)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
