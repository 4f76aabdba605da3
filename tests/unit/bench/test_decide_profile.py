"""The flame summary of bench.decide_profile: parts by first match, idle waits left out."""

from __future__ import annotations

from pathlib import Path

from bench.decide_profile import summarize_flame


def test_summary_counts_measured_and_writer_samples_by_part(tmp_path: Path) -> None:
    raw = tmp_path / "flame.txt"
    raw.write_text(
        "\n".join(
            [
                "<module> (x.py:1);_worker (d.py:2);start_up (d.py:3) 50",  # not measured
                "_measured (d.py:9);Router.decide (r.py:1);request_features (f.py:1) 30",
                "_measured (d.py:9);Router.decide (r.py:1);LabelledPolicy.pull (r.py:2) 20",
                "_measured (d.py:9);Router.decide (r.py:1);glue (r.py:3) 10",
                "_measured (d.py:9);EpollSelector.select (selectors.py:468) 99",  # idle
                "Thread._bootstrap (t.py:1);GroupCommit._run (g.py:92) 77",  # idle writer
                "Thread._bootstrap (t.py:1);GroupCommit._run (g.py:106);"
                "EventLog._flush_writes (e.py:1) 40",
            ]
        )
        + "\n"
    )
    shares = summarize_flame(raw)
    assert shares == {
        "event-log write (insert, JSON, commit)": 0.4,
        "request features (embedding, markers)": 0.3,
        "policy pull": 0.2,
        "other (asyncio, router glue, ledger, notes)": 0.1,
    }


def test_an_empty_profile_has_no_shares(tmp_path: Path) -> None:
    raw = tmp_path / "flame.txt"
    raw.write_text("")
    assert summarize_flame(raw) == {}
