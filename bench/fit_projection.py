"""Refit the prompt-embedding projection (``llmopt/data/prompt_projection.npz``) without labels.

Usage: ``python -m bench.fit_projection FILE.parquet [FILE ...]``. Only the prompts of the given
routing files are read (no outcomes). The shipped projection was fitted on RouterBench
ARC/Winogrande, AlpacaEval and RouteLLM MMLU, leaving out the mixed-task workload
(``routerdc_mixed7_train``) on which the router's structure learning is judged.
"""

from __future__ import annotations

import sys
from pathlib import Path

from llmopt.embeddings import PROJECTION_FILE, PromptEmbedder, fit_projection
from llmopt.routing_data import load_routing_data


def main(paths: list[str]) -> None:
    """Fit on the prompts of ``paths`` and overwrite the shipped projection."""
    prompts: list[str] = []
    for path in paths:
        prompts.extend(load_routing_data(Path(path)).prompts)
    embedder = PromptEmbedder(projection=None)
    projection = fit_projection(embedder.raw(prompts))
    projection.save(PROJECTION_FILE)
    print(f"fitted on {len(prompts)} prompts from {len(paths)} files -> {PROJECTION_FILE}")
    print(f"digest {projection.digest}")


if __name__ == "__main__":
    main(sys.argv[1:])
