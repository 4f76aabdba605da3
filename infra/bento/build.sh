#!/usr/bin/env bash
# Build the Bento of the decision service (infra/bento/bentofile.yaml) from the repository root:
# uv.lock's runtime packages -> infra/bento/requirements.txt, then `bentoml build`. Prints the tag.
# Then, where a Docker engine runs: bentoml containerize llmopt-router:<tag> -t <registry>/...
set -euo pipefail
cd "$(dirname "$0")/../.."
UV=${UV:-$(command -v uv || echo .tools/bin/uv)}
UV=$(cd "$(dirname "$UV")" && pwd)/$(basename "$UV")
PATH="$(dirname "$UV"):$PATH"  # bentoml build runs `uv`; else it pip-installs one
export PATH
"$UV" export --frozen --no-dev --no-hashes --no-emit-project --no-header \
  --output-file infra/bento/requirements.txt >/dev/null
export BENTOML_DO_NOT_TRACK=True
.venv/bin/bentoml build -f infra/bento/bentofile.yaml --output tag "$@" .
