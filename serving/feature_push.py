"""The online-feature push in a child process: the event log's new feedback -> Feast's online store.

A push aggregates the feedback stored since the last one and writes the rows through Feast's
provider (:meth:`serving.live_features.LiveFeatures.follow_log_once`): 33-64 ms of CPU for ~100
feedback (Feast's arrow-to-protobuf conversion, pandas, the aggregation, one SQLite statement
per row). On a thread of the serving process it held the interpreter lock for all of it every
``LLMOPT_SERVING_FEATURES_PUSH_S``, and decisions waited behind it: ``python -m bench
feedback_tail`` (in-process, 500 decisions/s + 20 feedback/s) gave a p99 of 10.3 ms with the
push thread and 6.7 ms with this child (2.9 ms without feedback; ``docs/benchmarks.md``). In a
process of its own, at nice 10, the push shares the cores but not the interpreter.

:class:`PushProcess` (the parent's side) starts ``python -m serving.feature_push`` and reads one
JSON line per push (``{"pushed": N, "cursor": ID}``); a child that dies is started again from
the last cursor it reported (after a pause). The child exits when its parent is gone.

Run by hand: ``python -m serving.feature_push --repo DIR --profile embedded --after 0
--interval-s 5`` (the event log from ``LLMOPT_DATABASE_URL``, else ``LLMOPT_HOME``'s, as the
service).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

NICE = 10
"""The child's niceness: decisions come first when both cores are busy."""
RESTART_PAUSE_S = 5.0
"""Pause before a child that died is started again."""
KEPT_FAILURES = 20


class PushProcess:
    """Runs the push child and follows its reports (on a thread of its own).

    Parameters
    ----------
    repo
        The applied Feast repository the service reads.
    profile
        Its profile (``embedded`` or ``production``).
    after
        Push the feedback stored after this id.
    interval_s
        Seconds between pushes.
    on_push
        Called with ``(pushed, cursor)`` for each push the child reports.
    event_log_url
        The event log the child reads.
    """

    def __init__(
        self,
        repo: Path,
        profile: str,
        *,
        after: int,
        interval_s: float,
        on_push: Callable[[int, int], None],
        event_log_url: str,
    ) -> None:
        self.repo, self.profile, self.interval_s = repo, profile, interval_s
        self.cursor = after
        self.on_push = on_push
        self.env = self.child_env(event_log_url)
        self.starts = 0
        self.failures: list[str] = []
        """Why the last children that ended on their own ended (their last stderr line; the
        last :data:`KEPT_FAILURES`)."""
        self._proc: subprocess.Popen[str] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feature-pusher", daemon=True)

    @staticmethod
    def child_env(event_log_url: str) -> dict[str, str]:
        """The child's environment: this process's, with the event log to read (not on the
        command line, where a password would show)."""
        return {**os.environ, "LLMOPT_DATABASE_URL": event_log_url}

    def command(self) -> list[str]:
        """The child's command line (from the current cursor)."""
        return [
            sys.executable,
            "-m",
            "serving.feature_push",
            f"--repo={self.repo}",
            f"--profile={self.profile}",
            f"--after={self.cursor}",
            f"--interval-s={self.interval_s}",
            f"--parent={os.getpid()}",
        ]

    def start(self) -> PushProcess:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                proc = self._proc = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=self.env,
                )
            except OSError as exc:
                self._failed(f"cannot start: {exc!r}")
                log.error("feature push: cannot start the child: %r", exc)
                self._stop.wait(RESTART_PAUSE_S)
                continue
            self.starts += 1
            assert proc.stdout is not None and proc.stderr is not None
            tail: list[str] = []
            errors = threading.Thread(target=_keep_tail, args=(proc.stderr, tail), daemon=True)
            errors.start()
            for line in proc.stdout:  # blocks without the interpreter lock
                self._report(line)
            proc.wait()
            errors.join(timeout=5)
            if self._stop.is_set():
                return
            why = tail[-1] if tail else f"exit status {proc.returncode}"
            self._failed(why)
            log.error("feature push child ended (%s); starting it again", why)
            self._stop.wait(RESTART_PAUSE_S)

    def _failed(self, why: str) -> None:
        self.failures.append(why)
        del self.failures[:-KEPT_FAILURES]  # a child failing for days keeps a bounded list

    def _report(self, line: str) -> None:
        try:
            report = json.loads(line)
            pushed, cursor = int(report["pushed"]), int(report["cursor"])
        except (ValueError, KeyError, TypeError):
            log.warning("feature push child said: %s", line.strip()[:500])
            return
        self.cursor = cursor
        self.on_push(pushed, cursor)

    @property
    def alive(self) -> bool:
        """True while a child runs."""
        return self._proc is not None and self._proc.poll() is None

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the child and the thread."""
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._thread.is_alive():
            self._thread.join(timeout_s)


def _keep_tail(stream: IO[str], tail: list[str]) -> None:
    for line in stream:
        if line.strip():
            tail.append(line.strip()[:500])
            del tail[:-20]


def _parent_alive(parent: int | None) -> bool:
    return parent is None or os.getppid() == parent


def run(
    repo: Path,
    profile: str,
    *,
    after: int,
    interval_s: float,
    parent: int | None = None,
    out: IO[str] = sys.stdout,
) -> None:
    """The child's loop: a push every ``interval_s`` while the parent lives."""
    from feature_store import store as fs_store  # noqa: PLC0415 - Feast takes seconds
    from llmopt.event_log import EventLog  # noqa: PLC0415
    from llmopt.settings import Settings  # noqa: PLC0415
    from serving.live_features import LiveFeatures  # noqa: PLC0415

    settings = Settings()  # the parent passes its event log as LLMOPT_DATABASE_URL
    store = fs_store.open_store(profile, repo)  # type: ignore[arg-type]
    event_log = EventLog(settings.event_log_url, migrate=False)
    writer = LiveFeatures.push_writer(store, interval_s)
    live = LiveFeatures(_NoReader(), writer=writer, event_log=event_log)
    live.start_at(after)
    try:
        while _parent_alive(parent):
            try:
                pushed = live.follow_log_once()
            except Exception:  # a store or log outage: the next push tries again
                log.exception("feature push failed; retrying")
                pushed = 0
            out.write(json.dumps({"pushed": pushed, "cursor": live.cursor}) + "\n")
            out.flush()
            deadline = time.monotonic() + interval_s
            while time.monotonic() < deadline and _parent_alive(parent):
                time.sleep(min(0.5, interval_s))
    finally:
        live.close()
        event_log.close()


class _NoReader:
    """The child only writes."""

    def read(self, models: Sequence[str], **_: Any) -> Any:  # pragma: no cover - never read
        raise RuntimeError("the feature push child reads no features")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.feature_push", description=__doc__)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--profile", choices=("embedded", "production"), default="embedded")
    parser.add_argument("--after", type=int, default=0)
    parser.add_argument("--interval-s", type=float, default=5.0)
    parser.add_argument("--parent", type=int, default=None)
    args = parser.parse_args(argv)
    if args.interval_s <= 0:
        parser.error("--interval-s must be > 0")
    if not args.repo.is_dir():
        parser.error(f"--repo: no Feast repository folder at {args.repo}")
    os.nice(NICE)  # here, not in the parent between fork and exec (its threads hold locks)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        run(
            args.repo,
            args.profile,
            after=args.after,
            interval_s=args.interval_s,
            parent=args.parent,
        )
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
