#!/usr/bin/env bash
# Set up, then run the whole offline pipeline on a tiny model (each stage a few seconds to a minute on a CPU):
# SFT on demonstrations -> reward model -> DPO, GDPO, SimPO, KTO, Chain of Hindsight -> PPO, RLOO, GRPO and
# online DPO, on examples/
# (synthetic film reviews: demos are half positive, half negative; in the pairs the positive one is chosen).
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
alignkit dpo --model "$out/sft" --data examples/pairs.jsonl --output-dir "$out/simpo" --loss simpo --max-steps 40 --learning-rate 1e-3
# KTO reads the pairs as unpaired examples: chosen responses desirable, rejected ones undesirable
alignkit kto --model "$out/sft" --data examples/pairs.jsonl --output-dir "$out/kto" --max-steps 40 --learning-rate 1e-3
alignkit coh --model "$out/sft" --data examples/pairs.jsonl --output-dir "$out/coh" --max-steps 40 --learning-rate 2e-3
# online RL against the reward model trained above
alignkit ppo --model "$out/sft" --reward-model "$out/rm" --prompts examples/pairs.jsonl --output-dir "$out/ppo" --max-steps 10 --learning-rate 1e-3 --max-new-tokens 12
alignkit rloo --model "$out/sft" --reward-model "$out/rm" --prompts examples/pairs.jsonl --output-dir "$out/rloo" --max-steps 10 --learning-rate 1e-3 --max-new-tokens 12
alignkit grpo --model "$out/sft" --reward-model "$out/rm" --prompts examples/pairs.jsonl --output-dir "$out/grpo" --max-steps 10 --learning-rate 1e-3 --max-new-tokens 12
alignkit online-dpo --model "$out/sft" --reward-model "$out/rm" --prompts examples/pairs.jsonl --output-dir "$out/online-dpo" --max-steps 10 --learning-rate 1e-3 --max-new-tokens 12
echo "done: models, metrics.jsonl and config.yaml of each stage are in $out/"
