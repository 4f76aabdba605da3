"""The WAL-checkpoint benchmark's plumbing (its figures come from ``python -m bench
wal_checkpoint``)."""

from bench import wal_checkpoint


def test_both_modes_run_and_summarise() -> None:
    rows = [
        {"kind": "mode", "round": 0, **wal_checkpoint._run(mode, 0.3, rate=200.0)}
        for mode in wal_checkpoint.MODES
    ]
    by = {r["mode"]: r for r in rows}
    assert by["in_commit"]["background_checkpoints"] is None
    assert by["own_thread"]["background_checkpoints"] is not None
    for r in rows:
        assert r["decisions"] > 10
        assert 0 < r["wait_ms"]["p50"] <= r["wait_ms"]["max"]
    lines = wal_checkpoint.summary(rows)
    assert len(lines) == 2 and all("decisions at 200/s" in line for line in lines)
