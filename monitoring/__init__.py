"""Evidently drift reports, streaming detectors, A/B statistics, metrics (issue #7)."""
