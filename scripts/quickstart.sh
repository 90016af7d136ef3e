#!/usr/bin/env bash
# Set up, then run the whole offline pipeline on a tiny model in about a minute on 2 CPU cores:
# SFT on demonstrations -> reward model -> DPO and GDPO -> Chain of Hindsight, on examples/pairs.jsonl
# (synthetic film reviews: chosen responses are positive, rejected ones negative).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
out=${1:-runs/quickstart}
mkdir -p "$out"
alignkit make-tiny-model --output-dir "$out/tiny" --data examples/pairs.jsonl
alignkit sft --model "$out/tiny" --data examples/demos.jsonl --output-dir "$out/sft" --max-steps 60 --learning-rate 2e-3
alignkit rm  --model "$out/sft" --data examples/pairs.jsonl --output-dir "$out/rm" --max-steps 40 --learning-rate 1e-3
alignkit dpo --model "$out/sft" --data examples/pairs.jsonl --output-dir "$out/dpo" --loss dpo --max-steps 40 --learning-rate 1e-3
alignkit dpo --model "$out/sft" --data examples/soft_pairs.jsonl --output-dir "$out/gdpo" --loss gdpo --max-steps 40 --learning-rate 1e-3
alignkit coh --model "$out/sft" --data examples/pairs.jsonl --output-dir "$out/coh" --max-steps 40 --learning-rate 2e-3
echo "done: models, metrics.jsonl and config.yaml of each stage are in $out/"
