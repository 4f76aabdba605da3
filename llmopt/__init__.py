"""llmopt."""
