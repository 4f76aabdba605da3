"""BentoML decision service: champion/challenger, canary, shadow, fallback (issue #6)."""
