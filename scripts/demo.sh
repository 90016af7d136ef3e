#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the sentiment alignment demo. Arguments go to `alignkit demo`;
# with none, the quick variant (tiny model, under a minute of training on 2 CPU cores) runs into runs/demo-quick.
# The full demo on SmolLM2-135M-Instruct: bash scripts/demo.sh --output-dir runs/demo
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ "$#" -eq 0 ]; then
  set -- --quick --output-dir runs/demo-quick
fi
alignkit demo "$@"
