"""Drift -> retraining: one run of the retraining deployment through Prefect's API, per cooldown.

A streaming detector's alarm in serving (:mod:`serving.drift`) or a drifted Evidently report
(the ``drift-report`` flow) asks :class:`RetrainTrigger` for a retraining. It runs the Prefect
deployment named by ``LLMOPT_RETRAIN_DEPLOYMENT`` (``nightly-training/nightly-training``: the
rebuild from the full history, which refits the quality model on the new outcomes) with
``prefect.deployments.run_deployment(name, timeout=0)``: the flow run is created at once and
whoever serves the deployment (``llmopt flows serve``, or a worker of ``prefect.yaml``'s pool)
runs it; the caller never waits for it.

Why ``run_deployment`` rather than Prefect events and an automation: it is one call whose
answer says what happened (the flow run's id, or why not: no API, no such deployment, the API
down), which the alert can repeat and a test can assert on; an automation would need the
server's trigger service, its definition kept in step with the deployment, and would fail
silently when either is missing.

Cooldown: a change usually sets off several detectors on several streams, and every worker and
replica watches its own share of the feedback. So

- in one process, after a request, further requests within ``cooldown_s`` are not sent
  (status ``cooldown``, no API call);
- across processes, before creating a run the trigger asks Prefect for a run of the deployment
  it tagged ``llmopt-retrain`` within ``cooldown_s``; if there is one, it is the answer
  (status ``cooldown``, its id). Two processes asking in the same instant could both create
  one; the deployment's ``concurrency_limit=1`` then runs them one after the other.

Every request that reaches Prefect's API, or could not, ends in an alert
(:meth:`monitoring.alerts.Alerter.notify`): ``retrain_triggered`` with the flow run's id, or
``retrain_not_triggered`` with the reason. With no Prefect API configured (the embedded
profile without a server: ``PREFECT_API_URL`` unset) nothing is sent and the alert says so.
Nothing here raises: a failed trigger must never fail the feedback request that raised it.

Prefect's settings are those of the context the trigger was made in (copied into the thread
that runs a background request): the process's environment and profile, or a test harness's.

Serving's trigger is made with ``isolate=True``: while Prefect is not imported in the process,
a request is sent from a child process (``python -m monitoring.retraining``, at nice 10) that
prints its outcome as JSON, and the serving process never imports Prefect. The import alone is
~4 s of CPU, most of it holding the GIL: in a process answering ``/decide`` at 500/s it held
every request meanwhile (the 2-s windows after a drift alarm had p99 of 57-159 ms; see
``docs/monitoring.md``). The child reads Prefect's settings from the same environment and
profile.

Examples
--------
>>> trigger = RetrainTrigger("nightly-training/nightly-training", cooldown_s=60,
...                          api_url=lambda: None)
>>> trigger.request("drift of gpt-4o quality (cusum)").status
'no_api'
>>> trigger.request("again").status  # within the cooldown: nothing asked
'cooldown'
"""

from __future__ import annotations

import argparse
import contextvars
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from monitoring.alerts import LOGGER_NAME, Alerter

RETRAIN_TAG = "llmopt-retrain"
"""Tag of the flow runs the trigger creates (what the shared cooldown looks for)."""

Status = Literal["triggered", "cooldown", "no_api", "failed"]

CHILD_TIMEOUT_S = 120.0
"""How long an isolated request's child process may take (Prefect's import, two API calls)."""
_CHILD_OUTCOME = "retrain outcome: "
"""Prefix of the child's outcome line on its stdout."""


@dataclass(frozen=True)
class RetrainOutcome:
    """What one retraining request did."""

    status: Status
    """``triggered`` (a flow run was created), ``cooldown`` (one was asked for recently: none
    created), ``no_api`` (no Prefect API configured: nothing sent), ``failed`` (the API or the
    deployment could not be reached)."""
    deployment: str
    source: str
    """Who asked: ``detector`` (serving's streaming detectors) or ``report`` (the drift flow)."""
    reason: str
    """Why retraining was asked for (the drift)."""
    detail: str
    """What happened, in one sentence."""
    flow_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def prefect_api_url(*, allow_ephemeral: bool = False) -> str | None:
    """The Prefect API the trigger would talk to, or None when none is configured.

    ``PREFECT_API_URL`` from Prefect's settings (environment, profile, or a test harness in the
    current context). Inside a flow run with ``allow_ephemeral``, the run's own API (in the
    embedded profile, the temporary server that ``llmopt flows run`` / ``serve`` started).
    """
    from prefect.settings import get_current_settings  # noqa: PLC0415 (slow import: lazy)

    url = get_current_settings().api.url
    if url:
        return str(url)
    if allow_ephemeral:
        from prefect.context import FlowRunContext  # noqa: PLC0415

        if FlowRunContext.get() is not None:
            return "the flow run's own (temporary) Prefect API"
    return None


class RetrainTrigger:
    """Runs the retraining deployment through Prefect, at most once per cooldown.

    Parameters
    ----------
    deployment
        ``"flow name/deployment name"`` (``Settings.retrain_deployment``).
    cooldown_s
        Seconds after a request during which no new run is created (``Settings.
        retrain_cooldown_s``).
    source
        Who asks (``detector``, ``report``): a tag of the flow run and a field of the alert.
    alerter
        Sends the alerts (default: one logging to ``llmopt.monitoring``, no webhook).
    on_outcome
        Called with every outcome (e.g. a Prometheus counter); what it raises is logged.
    allow_ephemeral
        Inside a flow run with no ``PREFECT_API_URL``, use the run's temporary API (the flow
        case); serving never starts one (it takes seconds and would hold no deployment).
    api_url
        Returns the API's URL or None (default :func:`prefect_api_url`; tests replace it).
    isolate
        Send from a child process while Prefect is not imported in this one (serving: see the
        module docstring); once it is imported (flows, tests), in this process.
    clock
        Monotonic seconds (the local cooldown).
    """

    def __init__(
        self,
        deployment: str,
        *,
        cooldown_s: float = 3600.0,
        source: str = "detector",
        alerter: Alerter | None = None,
        on_outcome: Callable[[RetrainOutcome], None] | None = None,
        allow_ephemeral: bool = False,
        api_url: Callable[[], str | None] | None = None,
        isolate: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if "/" not in deployment:
            raise ValueError(f"deployment must be 'flow name/deployment name', got {deployment!r}")
        if cooldown_s < 0:
            raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s}")
        self.deployment = deployment
        self.cooldown_s = cooldown_s
        self.source = source
        self.alerter = alerter or Alerter()
        self.on_outcome = on_outcome
        self.allow_ephemeral = allow_ephemeral
        self.isolate = isolate
        self._api_url = api_url or (lambda: prefect_api_url(allow_ephemeral=allow_ephemeral))
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None
        self._context = contextvars.copy_context()
        self._thread: threading.Thread | None = None
        self._logger = logging.getLogger(LOGGER_NAME)
        self.outcomes: list[RetrainOutcome] = []
        """Every outcome so far, oldest first."""

    # -- asking --------------------------------------------------------------------------------
    def _claim(self) -> bool:
        """True if this process may ask now (and starts its cooldown)."""
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last < self.cooldown_s:
                return False
            self._last = now
            return True

    def _cooling(self, reason: str) -> RetrainOutcome:
        ago = self._clock() - (self._last or 0.0)
        return RetrainOutcome(
            "cooldown",
            self.deployment,
            self.source,
            reason,
            f"retraining was requested {ago:.0f} s ago in this process (cooldown "
            f"{self.cooldown_s:g} s): no new run",
        )

    def request(self, reason: str) -> RetrainOutcome:
        """Ask for a retraining run now, on this thread; the outcome (never raises)."""
        outcome = self._send(reason) if self._claim() else self._cooling(reason)
        self._record(outcome)
        return outcome

    def request_in_background(self, reason: str) -> RetrainOutcome | None:
        """Ask on a thread of its own (the feedback path never waits for Prefect).

        Returns the ``cooldown`` outcome at once when within this process's cooldown, else
        None (the outcome is recorded, alerted and passed to ``on_outcome`` by the thread).
        """
        if not self._claim():
            outcome = self._cooling(reason)
            self._record(outcome)
            return outcome
        thread = threading.Thread(
            target=self._context.copy().run,
            args=(self._send_and_record, reason),
            name="retrain-trigger",
            daemon=True,
        )
        self._thread = thread
        thread.start()
        return None

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the last background request (tests; shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)

    # -- sending -------------------------------------------------------------------------------
    def _send_and_record(self, reason: str) -> None:
        self._record(self._send(reason))

    def _send(self, reason: str) -> RetrainOutcome:
        if self.isolate and "prefect" not in sys.modules:
            return self._send_in_child(reason)

        def outcome(status: Status, detail: str, run: str | None = None) -> RetrainOutcome:
            return self._outcome(reason, status, detail, run)

        try:
            api = self._api_url()
        except Exception as exc:  # a broken Prefect configuration: say so, never raise
            return outcome("failed", f"Prefect's settings could not be read ({exc})")
        if api is None:
            return outcome(
                "no_api",
                f"retraining NOT triggered: no Prefect API is configured (PREFECT_API_URL is "
                f"unset, the embedded default). Start one (`prefect server start`), serve the "
                f"flows against it (`PREFECT_API_URL=... llmopt flows serve`) and give this "
                f"process the same PREFECT_API_URL; until then run `llmopt flows run "
                f"{self.deployment.split('/')[0]}` by hand",
            )
        try:
            recent = self._recent_run()
            if recent is not None:
                return outcome(
                    "cooldown",
                    f"a retraining run of {self.deployment} was created within the last "
                    f"{self.cooldown_s:g} s ({recent}): no new run",
                    recent,
                )
            run_id = self._run()
        except Exception as exc:  # the API down, no such deployment, ...: an alert, no raise
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            hint = ""
            if type(exc).__name__ == "ObjectNotFound":
                hint = (
                    " (the deployment is not registered there: serve the flows with "
                    "`llmopt flows serve` or `prefect deploy --all`)"
                )
            return outcome(
                "failed", f"retraining NOT triggered: Prefect API at {api} answered {why}{hint}"
            )
        return outcome(
            "triggered",
            f"retraining triggered: flow run {run_id} of deployment {self.deployment} "
            f"(Prefect API at {api})",
            run_id,
        )

    def _send_in_child(self, reason: str, *, api_url: str | None = None) -> RetrainOutcome:
        """:meth:`_send` from a child process, ``python -m monitoring.retraining`` (its
        outcome; never raises). ``api_url`` sets the child's ``PREFECT_API_URL`` (else it reads
        Prefect's settings from the environment and profile it inherits)."""
        cmd = [sys.executable, "-m", "monitoring.retraining", "--deployment", self.deployment]
        cmd += ["--cooldown-s", repr(self.cooldown_s), "--source", self.source]
        cmd.append(f"--reason={reason}")  # one argument, whatever the reason starts with
        nice = shutil.which("nice")
        if nice is not None:  # off the serving process's CPU where it can be
            cmd = [nice, "-n", "10", *cmd]
        env = dict(os.environ)
        if api_url is not None:
            env["PREFECT_API_URL"] = api_url
        try:
            done = subprocess.run(  # noqa: S603 - our own module, arguments as a list
                cmd, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:  # e.g. the timeout
            return self._child_failed(reason, repr(exc))
        for line in reversed(done.stdout.splitlines()):
            if line.startswith(_CHILD_OUTCOME):
                try:
                    return RetrainOutcome(**json.loads(line[len(_CHILD_OUTCOME) :]))
                except (ValueError, TypeError) as exc:
                    return self._child_failed(reason, repr(exc))
        said = done.stderr.strip().splitlines()
        return self._child_failed(reason, said[-1] if said else f"exit status {done.returncode}")

    def _child_failed(self, reason: str, why: str) -> RetrainOutcome:
        detail = f"retraining NOT triggered: its child process failed ({why[:300]})"
        return self._outcome(reason, "failed", detail)

    def _outcome(
        self, reason: str, status: Status, detail: str, run: str | None = None
    ) -> RetrainOutcome:
        return RetrainOutcome(status, self.deployment, self.source, reason, detail, run)

    def _recent_run(self) -> str | None:
        """Id of a run of the deployment this trigger tagged within the cooldown, if any."""
        from prefect import get_client  # noqa: PLC0415
        from prefect.client.schemas.filters import (  # noqa: PLC0415
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterExpectedStartTime,
            FlowRunFilterTags,
        )
        from prefect.client.schemas.sorting import FlowRunSort  # noqa: PLC0415

        since = datetime.now(UTC) - timedelta(seconds=self.cooldown_s)
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(self.deployment)
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[RETRAIN_TAG]),
                    expected_start_time=FlowRunFilterExpectedStartTime(after_=since),
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=1,
            )
        return str(runs[0].id) if runs else None

    def _run(self) -> str:
        from prefect.deployments import run_deployment  # noqa: PLC0415

        run: Any = run_deployment(  # sync here: a FlowRun (a coroutine only in async code)
            self.deployment, timeout=0, tags=[RETRAIN_TAG, f"{RETRAIN_TAG}-{self.source}"]
        )
        return str(run.id)

    # -- reporting -----------------------------------------------------------------------------
    def _record(self, outcome: RetrainOutcome) -> None:
        self.outcomes.append(outcome)
        fields = outcome.to_dict()
        if outcome.status == "triggered":
            self.alerter.notify("retrain_triggered", outcome.detail, **fields)
        elif outcome.status in ("no_api", "failed"):
            level = logging.WARNING if outcome.status == "no_api" else logging.ERROR
            self.alerter.notify("retrain_not_triggered", outcome.detail, level=level, **fields)
        else:
            self._logger.info("%s", outcome.detail)
        if self.on_outcome is not None:
            try:
                self.on_outcome(outcome)
            except Exception:  # a metrics hook must not break the caller
                self._logger.exception("on_outcome hook failed")


def main(argv: list[str] | None = None) -> int:
    """``python -m monitoring.retraining``: one retraining request, sent from this process
    (an isolated trigger's child); its outcome on stdout as one JSON line."""
    parser = argparse.ArgumentParser(
        prog="python -m monitoring.retraining",
        description="Ask Prefect for one run of the retraining deployment (the child process of "
        "serving's drift trigger); prints the outcome as JSON.",
    )
    parser.add_argument("--deployment", required=True, help="'flow name/deployment name'")
    parser.add_argument("--cooldown-s", type=float, default=3600.0)
    parser.add_argument("--source", default="detector")
    parser.add_argument("--reason", required=True)
    args = parser.parse_args(argv)
    trigger = RetrainTrigger(args.deployment, cooldown_s=args.cooldown_s, source=args.source)
    outcome = trigger._send(args.reason)
    sys.stdout.write(_CHILD_OUTCOME + json.dumps(outcome.to_dict()) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
