"""A durable local spool for the event log: nothing accepted is lost while the database is down.

:class:`SpooledEventLog` is an :class:`llmopt.event_log.EventLog` whose writes fall back to an
append-only JSON-lines file when the database does not answer (connection refused, server
killed, network down: SQLAlchemy's ``OperationalError`` / ``InterfaceError``):

- ``record_decision``: the row goes to the spool and to an in-memory table of recent decisions,
  so feedback for it is still joined, rewarded and learned from at once;
- ``record_feedback``: the row (with its reward) goes to the spool; the receipt says ``spooled``.
  The same feedback again is a ``duplicate``; a different one for the same decision is refused as
  usual. Feedback whose decision the worker cannot see (made before the outage, or by another
  worker, and not in memory) is spooled unvalidated (:meth:`SpooledEventLog.
  spool_unvalidated_feedback`) and checked when replayed, never refused. So is feedback the
  database does not know while another worker's spool of the same folder still holds records
  (its decision may be there, not replayed yet); at replay such feedback waits for later
  replays while those spools hold records, for up to :data:`UNVALIDATED_GRACE_S`;
- every append is flushed and ``fsync``-ed before the call returns (the spool survives a crash
  of this process; ~0.1-2 ms per write on local disks, only while the database is down).

:attr:`SpooledEventLog.outage_since` says whether the database answers, as the writes last saw
it: set by the first write, lookup or replay that found it down, cleared by the first that
reached it (what the service's ``/readyz`` reports). It is not a probe: a database that goes
down while nothing is written is noticed by the next write.

:meth:`SpooledEventLog.replay` (the serving runtime calls it every second) moves the spool to
``<spool>.replaying``, re-inserts every record in order and deletes the file. Re-inserting is
idempotent (decision ids are primary keys, feedback is deduplicated by payload hash), so a crash
mid-replay replays the rest at the next call or start: nothing is lost, nothing counted twice.
Feedback whose decision never reached the database is dropped at replay with a warning (it was
for a decision this service never made) and counted in ``dropped``.

Why hand-written: a queue (Kafka, Redis streams) would be a second moving part on the path of
every decision; what must survive is a few minutes of writes of one process, which a local file
holds. Replicas each spool locally and replay into the shared database.

Example
-------
>>> import tempfile, pathlib
>>> from llmopt.schemas import Decision, Feedback, RequestContext
>>> log = SpooledEventLog("sqlite://", spool_dir=pathlib.Path(tempfile.mkdtemp()))
>>> d = Decision(model="gpt-4o-mini", propensity=1.0, policy_name="doc")
>>> log.record_decision(d, RequestContext(tenant="acme"), features={})
>>> log.record_feedback(Feedback(decision_id=d.decision_id, quality=0.5), reward=0.4).status
'stored'
>>> log.spooled_records()
0
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from llmopt.event_log import (
    CallRecord,
    ConflictingFeedbackError,
    DuplicateDecisionError,
    EventLog,
    FeedbackReceipt,
    UnknownDecisionError,
)
from llmopt.schemas import Feedback
from llmopt.types import DecisionID

log = logging.getLogger("llmopt.spool")

UNAVAILABLE = (OperationalError, InterfaceError)
"""SQLAlchemy errors meaning "the database does not answer" (not "the write is wrong")."""

UNVALIDATED_GRACE_S = 300.0
"""How long an unvalidated feedback whose decision the database does not have is kept for
later replays while sibling spools still hold records (then dropped as never made)."""

RECENT_DECISIONS = 200_000
"""Decision rows kept in memory for joins while the database is down (~1 KB each)."""


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"__dt__": value.isoformat()}
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _decode(obj: dict[str, Any]) -> Any:
    if set(obj) == {"__dt__"}:
        return datetime.fromisoformat(obj["__dt__"])
    return obj


def decode_record(line: str) -> dict[str, Any]:
    """One spool line back to its record (datetimes restored)."""
    record: dict[str, Any] = json.loads(line, object_hook=_decode)
    return record


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class SpooledEventLog(EventLog):
    """An event log that spools writes locally while its database is down.

    Parameters
    ----------
    url
        SQLAlchemy URL of the database.
    spool_dir
        Folder of the spool file (created); one file per process id would be safer with several
        workers in one folder, so the name includes ``name``.
    name
        Spool file name (``events.spool.jsonl`` by default).
    migrate
        Upgrade the schema on open (needs the database).
    group_commit
        Decisions written in groups by one writer thread (:meth:`EventLog.deferred_writes`);
        a group that finds the database down is spooled with one ``fsync``.
    """

    def __init__(
        self,
        url: str,
        *,
        spool_dir: Path,
        name: str = "events.spool.jsonl",
        migrate: bool = True,
        group_commit: bool = False,
        checkpoint_s: float = 0.0,
    ) -> None:
        super().__init__(url, migrate=migrate, group_commit=group_commit, checkpoint_s=checkpoint_s)
        spool_dir.mkdir(parents=True, exist_ok=True)
        self.spool_path = spool_dir / name
        self.replaying_path = spool_dir / f"{name}.replaying"
        self._spool_lock = threading.Lock()
        self._replay_lock = threading.Lock()
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._spooled_feedback: dict[str, str] = {}  # decision_id -> payload digest
        self.spooled = 0
        self.replayed = 0
        self.dropped = 0
        self.deferred = 0
        """Unvalidated feedback put back at replay: its decision may still be in a sibling's
        spool (:meth:`others_pending`)."""
        self.replayed_feedback_ids: list[int] = []
        """Ids the replayed feedback got (a worker's own feedback: its log follower skips them)."""
        self.replayed_unvalidated_ids: list[int] = []
        """Feedback ids stored at replay that no worker has learned yet (spooled unvalidated)."""
        self.outage_since: datetime | None = None
        """When a write first found the database down (UTC); None while it answers."""

    @property
    def available(self) -> bool:
        """False from a write that found the database down until one reaches it again."""
        return self.outage_since is None

    def _down(self) -> None:
        if self.outage_since is None:
            self.outage_since = datetime.now(UTC)

    def _up(self) -> None:
        if self.outage_since is not None:
            log.info("event log available again (down since %s)", self.outage_since.isoformat())
            self.outage_since = None

    # -- writes ----------------------------------------------------------------------------------
    def _append(self, record: Mapping[str, Any]) -> None:
        self._append_many([record])

    def _append_many(self, records: Sequence[Mapping[str, Any]]) -> None:
        text = "".join(
            json.dumps(r, default=_encode, separators=(",", ":")) + "\n" for r in records
        )
        with self._spool_lock, self.spool_path.open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        self.spooled += len(records)

    def _remember(self, row: dict[str, Any]) -> None:
        self._recent[row["decision_id"]] = row
        if len(self._recent) > RECENT_DECISIONS:
            self._recent.popitem(last=False)

    def _flush_writes(
        self, items: Sequence[dict[str, Any] | CallRecord]
    ) -> list[BaseException | None]:
        """:meth:`EventLog._flush_writes`; the decisions and calls are spooled, in order, if
        the database is down."""
        try:
            errors = super()._flush_writes(items)
        except UNAVAILABLE as exc:
            log.warning(
                "event log unavailable (%s): %d decision(s) and call(s) spooled",
                type(exc).__name__,
                len(items),
            )
            self._down()
            records = []
            for item in items:
                if isinstance(item, CallRecord):
                    row = {"decision_id": item.decision_id, "call": item.call}
                    records.append({"kind": "call", "row": row})
                else:
                    records.append({"kind": "decision", "row": item})
                    self._remember(item)
            self._append_many(records)
            return [None] * len(items)
        self._up()
        return errors

    def get_decision(self, decision_id: DecisionID) -> dict[str, Any] | None:
        """The decision row from the database, or from memory while it is down."""
        return self.lookup_decision(decision_id)[0]

    def lookup_decision(self, decision_id: DecisionID) -> tuple[dict[str, Any] | None, bool]:
        """``(row, database_answered)``: None with False means "cannot tell now" (the database
        is down and this process never saw the decision), not "no such decision"."""
        try:
            row = super().get_decision(decision_id)
        except DBAPIError as exc:  # any driver error on this primary-key read: the database
            # (e.g. psycopg's "can't change autocommit now" from a pool ping as the server dies)
            log.warning("decision lookup failed (%s): treated as unavailable", type(exc).__name__)
            self._down()
            return self._recent.get(decision_id), False
        self._up()
        if row is None:
            row = self._recent.get(decision_id)
        if row is None and self.others_pending():
            # The database does not have it, but a sibling's spool may (made while it was
            # down, not replayed yet): cannot tell now, as while it is down.
            return None, False
        return row, True

    def record_call(self, decision_id: DecisionID, call: Mapping[str, Any]) -> bool:
        """:meth:`EventLog.record_call`; spooled (and applied to the remembered row) while the
        database is down."""
        recent = self._recent.get(decision_id)
        if recent is not None:
            recent["context"] = {**(recent.get("context") or {}), "call": dict(call)}
        try:
            found = super().record_call(decision_id, call)
        except UNAVAILABLE as exc:
            log.warning("event log unavailable (%s): call measurements spooled", type(exc).__name__)
            self._down()
            self._append({"kind": "call", "row": {"decision_id": decision_id, "call": dict(call)}})
            return True
        self._up()
        return found or recent is not None

    def spool_unvalidated_feedback(self, fb: Feedback) -> FeedbackReceipt:
        """Accept feedback whose decision cannot be looked up while the database is down.

        The decision may well exist (made before the outage, or by another worker or replica):
        refusing it with a 404 would tell the client not to retry, and the feedback would be
        lost. It is spooled as it came (no reward: the decision's trade-off is unknown here) and
        checked at replay: stored if its decision exists (then every worker learns it from the
        log, :meth:`replayed_unvalidated_ids`), dropped with a warning if not, refused if it
        conflicts with stored feedback. The same feedback twice is a duplicate.
        """
        row = self.feedback_row(fb)
        if fb.decision_id in self._spooled_feedback:
            return self._spooled_duplicate(fb.decision_id, row["payload_sha256"])
        self._append({"kind": "feedback", "row": row, "unvalidated": True, "at": time.time()})
        self._spooled_feedback[fb.decision_id] = row["payload_sha256"]
        return FeedbackReceipt("spooled", None, fb.decision_id)

    def record_feedback(
        self,
        fb: Feedback,
        *,
        reward: float | None = None,
        cost_usd: float | None = None,
        latency_ms: float | None = None,
    ) -> FeedbackReceipt:
        """Store one feedback exactly once; spooled (status ``spooled``) if the database is down."""
        row = self.feedback_row(fb, reward=reward, cost_usd=cost_usd, latency_ms=latency_ms)
        if fb.decision_id in self._spooled_feedback:
            return self._spooled_duplicate(fb.decision_id, row["payload_sha256"])
        try:
            receipt = self.insert_feedback(row)
        except UNAVAILABLE as exc:
            log.warning("event log unavailable (%s): feedback spooled", type(exc).__name__)
            self._down()
        except UnknownDecisionError:
            self._up()  # the database answered
            if fb.decision_id not in self._recent:
                raise
            # its decision is spooled and not replayed yet: the feedback follows it in the spool
        else:
            self._up()
            return receipt
        self._append({"kind": "feedback", "row": row})
        self._spooled_feedback[fb.decision_id] = row["payload_sha256"]
        return FeedbackReceipt("spooled", None, fb.decision_id)

    def _spooled_duplicate(self, decision_id: str, digest: str) -> FeedbackReceipt:
        if self._spooled_feedback[decision_id] != digest:
            raise ConflictingFeedbackError(
                f"decision {decision_id!r} already has a different feedback (spooled); the "
                "first feedback is kept"
            )
        return FeedbackReceipt("duplicate", None, decision_id)

    # -- replay ----------------------------------------------------------------------------------
    def spooled_records(self) -> int:
        """Records waiting in the spool (and in an interrupted replay)."""
        n = 0
        for path in (self.replaying_path, self.spool_path):
            if path.exists():
                with path.open(encoding="utf-8") as f:
                    n += sum(1 for line in f if line.strip())
        return n

    def _claim_orphans(self) -> list[Path]:
        """Spools of dead processes (``events.<pid>.spool.jsonl*`` of a pid that is gone).

        Each is claimed by an atomic rename, so of several live workers exactly one replays it.
        """
        claimed: list[Path] = []
        for path in sorted(self.spool_path.parent.glob("events.*.spool.jsonl*")):
            parts = path.name.split(".")
            if path in (self.spool_path, self.replaying_path) or not parts[1].isdigit():
                continue
            if _alive(int(parts[1])):
                continue
            target = path.with_name(f"claimed.{os.getpid()}.{path.name}")
            try:
                path.rename(target)
            except FileNotFoundError:  # another worker claimed it first
                continue
            claimed.append(target)
        claimed += sorted(self.spool_path.parent.glob(f"claimed.{os.getpid()}.*"))
        return list(dict.fromkeys(claimed))

    def replay(self) -> int:
        """Move the spooled records into the database; records replayed (0 if it is still down).

        Also replays the spools of dead worker processes of the same folder (a crash before
        the database came back). Raises nothing when the database is down: the spool stays.
        """
        with self._replay_lock:
            with self._spool_lock:
                if not self.replaying_path.exists() and self.spool_path.exists():
                    self.spool_path.replace(self.replaying_path)
            paths = [p for p in (self.replaying_path,) if p.exists()] + self._claim_orphans()
            done = 0
            for path in paths:
                try:
                    with path.open(encoding="utf-8") as f:
                        for line in f:
                            if line.strip():
                                done += self._replay_one(decode_record(line))
                except UNAVAILABLE as exc:
                    log.info("event log still unavailable (%s); spool kept", type(exc).__name__)
                    self._down()
                    return 0
                path.unlink()
            if not paths:
                return 0
            self._up()
            self.replayed += done
            log.info("replayed %d spooled event-log records", done)
            return done

    def _replay_one(self, record: dict[str, Any]) -> bool:
        """Store one spooled record; False if it was put back for a later replay."""
        row = record["row"]
        if record["kind"] == "call":
            super().record_call(row["decision_id"], row["call"])
            return True
        if record["kind"] == "decision":
            try:
                self.insert_decision(row)
            except DuplicateDecisionError:
                pass  # replayed before (an interrupted replay): already there
            return True
        try:
            receipt = self.insert_feedback(row)
            self._spooled_feedback.pop(row["decision_id"], None)
            if receipt.status == "stored" and receipt.feedback_id is not None:
                if record.get("unvalidated"):  # never learned: whoever follows the log learns it
                    self.replayed_unvalidated_ids.append(receipt.feedback_id)
                else:  # learned when it was accepted
                    self.replayed_feedback_ids.append(receipt.feedback_id)
        except UnknownDecisionError as exc:
            if record.get("unvalidated") and self._may_still_come(record):
                self._append(record)  # its decision may be in a sibling's spool: next time
                self.deferred += 1
                return False
            self.dropped += 1
            log.warning("spooled feedback dropped at replay: %s", exc)
        except ConflictingFeedbackError as exc:
            self.dropped += 1
            log.warning("spooled feedback dropped at replay: %s", exc)
        except IntegrityError as exc:  # a constraint the live path would have refused too
            self.dropped += 1
            log.warning("spooled feedback dropped at replay: %s", exc)
        return True

    def _may_still_come(self, record: Mapping[str, Any]) -> bool:
        """An unvalidated feedback's decision is unknown: may it still arrive? Yes while
        another spool of this folder holds records (a sibling worker's, or a dead one's not
        yet replayed), for :data:`UNVALIDATED_GRACE_S` after the feedback was accepted."""
        at = float(record.get("at") or 0.0)
        return time.time() - at < UNVALIDATED_GRACE_S and self.others_pending()

    def others_pending(self) -> bool:
        """True if a spool of this folder other than this process's holds records."""
        own = {self.spool_path, self.replaying_path}
        for path in self.spool_path.parent.glob("*.spool.jsonl*"):
            if path in own:
                continue
            try:
                if path.stat().st_size > 0:
                    return True
            except FileNotFoundError:  # replayed meanwhile
                continue
        return False
