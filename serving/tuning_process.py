"""Parameter tuning's TPE work in a child process: the serving process sends trials, gets answers.

:class:`serving.parameters.ServedTuning` keeps one TPE suggestion ready per (task type x
model) pair and recomputes it, with the pair's best, when feedback arrives (the runtime's
``tuning-refresh`` thread). Optuna's TPE ``ask`` takes 2-26 ms of CPU per suggestion (20-300
trials), all of it holding the interpreter lock, and decisions on the event loop wait for the
lock while it runs: ``python -m bench feedback_tail`` (500 decisions/s + 20 feedback/s,
in-process) gave a p99 of 8.2 ms with the TPE work on the thread and 4.2 ms with it nearly off
(``docs/benchmarks.md``). Here it runs in ``python -m serving.tuning_process``, at nice 10: the
serving process only copies the pair's trials out (0.03-0.4 ms) and waits on a pipe.

The protocol is one JSON object per line each way. A request names its ``owner`` (one
:class:`~serving.parameters.ServedTuning`), the pair's ``key``, the search space and the
tuner's settings, and the pair's completed trials from ``have`` on (the child keeps the
studies it built, so each request sends only the new trials; ``last`` is the trial the parent
believes the child holds last). The answer is ``{"best", "next", "cpu_s"}``, or ``{"resync":
true}`` when the child's copy is not what the parent believes (a restarted child, trials that
arrived out of order): the parent then sends every trial. The child exits when its stdin
closes (its parent is gone).

:class:`TuningProcess` is the parent's side: it starts the child on first use, and a child that
died or does not answer within ``timeout_s`` raises :class:`TuningProcessError` and is started
again on a later call, after a pause (the pairs wait: :meth:`ServedTuning.refresh
<serving.parameters.ServedTuning.refresh>`).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import IO, Any

from models.tuning import ParameterTuner, ParamValue

log = logging.getLogger(__name__)

NICE = 10
"""The child's niceness: decisions come first when both cores are busy."""
RESTART_PAUSE_S = 5.0
"""After a child failed, calls fail at once for this long."""
TIMEOUT_S = 30.0
"""The longest a refresh waits for the child's answer."""
KEPT_STUDIES = 256
"""Pairs whose studies the child keeps (least recently used dropped first)."""

Trial = tuple[dict[str, ParamValue], float]


class TuningProcessError(RuntimeError):
    """The child could not answer (not started, died, timed out, answered nonsense)."""


class TuningProcess:
    """The TPE child, seen from the serving process (thread-safe: one request at a time).

    Examples
    --------
    >>> from serving.parameters import SERVING_SPACE
    >>> tuner = ParameterTuner(SERVING_SPACE, n_startup_trials=2, seed=0)
    >>> for t in (0.2, 0.9, 0.5):
    ...     _ = tuner.record("chat/gpt-4o", {**tuner.defaults(), "temperature": t}, t)
    >>> with TuningProcess() as child:
    ...     best, nxt = child.refresh("doc", tuner, "chat/gpt-4o", suggest=True)
    >>> best["temperature"], sorted(nxt) == sorted(SERVING_SPACE)
    (0.9, True)
    """

    def __init__(self, *, timeout_s: float = TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.starts = 0
        self.cpu_s = 0.0
        """The child's CPU seconds over the answers so far (every child's)."""
        self.failures: list[str] = []
        """Why the last calls failed (the last 20)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._sent: OrderedDict[tuple[str, str], tuple[int, Trial | None]] = OrderedDict()
        """Per (owner, key): how many trials the child holds and the last one; as many pairs
        as the child keeps studies for (an evicted pair's trials are all sent again)."""
        self._lock = threading.Lock()
        self._retry_at = 0.0

    @staticmethod
    def command() -> list[str]:
        """The child's command line."""
        return [sys.executable, "-m", "serving.tuning_process"]

    def refresh(
        self, owner: str, tuner: ParameterTuner, key: str, *, suggest: bool
    ) -> tuple[dict[str, ParamValue], dict[str, ParamValue] | None]:
        """The best parameters of ``key`` in ``tuner`` and, if ``suggest``, the next ones to
        try, computed by the child from the pair's completed trials."""
        trials = tuner.results(key)
        with self._lock:
            proc = self._running()
            have, last = self._sent.get((owner, key), (0, None))
            if have > len(trials) or (have and trials[have - 1] != last):
                have, last = 0, None  # fewer or other trials here: send them all
            request = {
                "owner": owner,
                "key": key,
                "space": tuner.space,
                "n_startup": tuner.n_startup_trials,
                "smoothing": tuner.smoothing,
                "seed": tuner.seed,
                "suggest": suggest,
            }
            answer = self._ask(
                proc, {**request, "have": have, "last": last, "trials": trials[have:]}
            )
            if answer.get("resync"):
                answer = self._ask(proc, {**request, "have": 0, "last": None, "trials": trials})
            try:
                best, nxt = dict(answer["best"]), answer.get("next")
                self.cpu_s += float(answer.get("cpu_s") or 0.0)
            except (KeyError, TypeError, ValueError):
                raise self._failed(proc, f"the child answered {str(answer)[:200]}") from None
            self._sent[(owner, key)] = (len(trials), trials[-1] if trials else None)
            self._sent.move_to_end((owner, key))
            while len(self._sent) > KEPT_STUDIES:
                self._sent.popitem(last=False)
            return best, (dict(nxt) if isinstance(nxt, Mapping) else None)

    def _running(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        if self.cooling:
            raise TuningProcessError("the tuning child failed recently; not retried yet")
        self._sent.clear()  # a new child holds no studies
        self._lines = queue.Queue()
        try:
            proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise self._failed(None, f"cannot start: {exc!r}") from None
        assert proc.stdout is not None
        threading.Thread(
            target=_read_lines, args=(proc.stdout, self._lines), name="tuning-child", daemon=True
        ).start()
        self._proc = proc
        self.starts += 1
        return proc

    def _ask(self, proc: subprocess.Popen[bytes], request: Mapping[str, Any]) -> dict[str, Any]:
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
            line = self._lines.get(timeout=self.timeout_s)  # waits without the interpreter lock
        except (OSError, ValueError) as exc:  # a closed pipe: the child is gone
            raise self._failed(proc, f"the child is gone: {exc!r}") from None
        except queue.Empty:
            raise self._failed(proc, f"no answer within {self.timeout_s:g} s") from None
        if not line:
            raise self._failed(proc, f"the child ended (exit status {proc.poll()})")
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or "error" in answer:
            raise self._failed(proc, f"the child answered {line[:200]!r}")
        return answer

    def _failed(self, proc: subprocess.Popen[bytes] | None, why: str) -> TuningProcessError:
        """Stop ``proc``, remember why, and hold off restarting; the error to raise."""
        if proc is not None:
            _stop(proc)
        self._proc = None
        self._retry_at = time.monotonic() + RESTART_PAUSE_S
        self.failures.append(why)
        del self.failures[:-20]
        log.error("parameter tuning child: %s; started again in %g s", why, RESTART_PAUSE_S)
        return TuningProcessError(why)

    @property
    def cooling(self) -> bool:
        """True during the pause after a failure (calls fail at once)."""
        return time.monotonic() < self._retry_at

    @property
    def alive(self) -> bool:
        """True while a child runs."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The running child's process id."""
        return self._proc.pid if self.alive and self._proc is not None else None

    def close(self) -> None:
        """Stop the child (without waiting for a refresh in progress: it fails and ends)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _stop(proc)

    def __enter__(self) -> TuningProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _read_lines(stream: IO[bytes], lines: queue.Queue[bytes]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(b"")  # end of stream: the child is gone


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        if proc.stdin is not None:
            try:
                proc.stdin.close()  # the child's loop ends on end of input
            except OSError:
                pass
        try:
            proc.wait(2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)


# -- the child ---------------------------------------------------------------------------------
class Studies:
    """The child's side: per (owner, key), a tuner holding the trials received so far.

    Examples
    --------
    >>> from serving.parameters import SERVING_SPACE
    >>> studies = Studies()
    >>> ask = {"owner": "a", "key": "chat/m", "space": SERVING_SPACE, "n_startup": 2,
    ...        "smoothing": 0.15, "seed": 0, "suggest": False, "have": 0, "last": None}
    >>> defaults = ParameterTuner(SERVING_SPACE).defaults()
    >>> trials = [[{**defaults, "temperature": t}, t] for t in (0.2, 0.9)]
    >>> studies.answer({**ask, "trials": trials})["best"]["temperature"]
    0.9
    >>> studies.answer({**ask, "have": 5, "last": trials[1], "trials": []})
    {'resync': True}
    """

    def __init__(self, kept: int = KEPT_STUDIES) -> None:
        self.kept = kept
        self._held: OrderedDict[tuple[str, str], tuple[ParameterTuner, int, Any]] = OrderedDict()

    def answer(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The answer to one request (see the module docstring)."""
        started = time.process_time()
        owner, key = str(request["owner"]), str(request["key"])
        have, last = int(request["have"]), request.get("last")
        held = self._held.get((owner, key))
        if held is None and have == 0:
            held = (self._tuner(request, key), 0, None)
        if held is None or held[1] != have or (have and held[2] != last):
            self._held.pop((owner, key), None)
            return {"resync": True}
        tuner, count, previous = held
        trials: Sequence[Any] = request["trials"]
        for params, value in trials:
            tuner.record(key, params, float(value))
        count += len(trials)
        self._held[(owner, key)] = (tuner, count, list(trials[-1]) if trials else previous)
        self._held.move_to_end((owner, key))
        while len(self._held) > self.kept:
            self._held.popitem(last=False)
        nxt = None
        if request.get("suggest"):
            nxt = tuner.suggest(key).params
            tuner.expire(key, keep=0)  # the parent records what is served: no trial waits here
        best = tuner.best(key)
        return {"best": best, "next": nxt, "cpu_s": round(time.process_time() - started, 6)}

    @staticmethod
    def _tuner(request: Mapping[str, Any], key: str) -> ParameterTuner:
        seed = request.get("seed")
        return ParameterTuner(
            request["space"],
            n_startup_trials=int(request["n_startup"]),
            smoothing=float(request["smoothing"]),
            # each pair's own stream, as the parent's studies have
            seed=None if seed is None else zlib.crc32(f"{seed}:{key}".encode()),
        )


def serve(source: IO[bytes], out: IO[bytes]) -> None:
    """Answer each request line of ``source`` on ``out`` until ``source`` ends."""
    studies = Studies()
    for line in source:
        try:
            answer = studies.answer(json.loads(line))
        except Exception as exc:  # a bad request is answered, never the end of the child
            answer = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        out.write(json.dumps(answer).encode() + b"\n")
        out.flush()


def main() -> int:
    os.nice(NICE)  # here, not in the parent between fork and exec (its threads hold locks)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
