"""Benchmarks of llm-auto-optimizer: ``make bench`` (``python -m bench [--quick]``).

Every benchmark measures its subject against a baseline in the same run and reports the ratio,
because absolute times on a shared, noisy machine mean little. Seeds are fixed; times come from
``time.perf_counter_ns``; results (p50/p99/mean in microseconds with the number of iterations) are
written to ``bench/results/<benchmark>.json``.
"""
