#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the sentiment alignment demo. Arguments go to `alignkit demo`; with none,
# the default demo on SmolLM2-135M-Instruct runs into runs/demo (docs/benchmarks.md gives its measured time).
# The quick variant (tiny model, well under the default one): bash scripts/demo.sh --quick --output-dir runs/demo-quick
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ "$#" -eq 0 ]; then
  set -- --output-dir runs/demo
fi
alignkit demo "$@"
