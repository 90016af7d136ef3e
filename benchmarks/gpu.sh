#!/usr/bin/env bash
# SmolLM2-135M DPO, reward model and RLOO: alignkit against TRL 1.16 on one CUDA device, in bf16 autocast, each
# side a whole process (benchmarks/trl_peer.py's smol-dpo, smol-rm and smol-rloo settings with --device cuda).
# Prints one JSON line per setting, after one line with the versions and the device.
#
# The GPU machine needs no package index. Two steps:
#   1. Where pip reaches the package index, in the repository root (after scripts/setup.sh):
#          bash benchmarks/gpu.sh pack
#      This fills .gpu/ (ignored by git, about 23 MB):
#      - wheels, for CPython 3.12 (or $PYVER) on x86-64 Linux, of alignkit and of the packages that alignkit and TRL need
#        beyond a CUDA PyTorch image (torch, numpy, pandas, pyarrow, accelerate, peft, tokenizers, safetensors,
#        huggingface_hub, pyyaml, tqdm, jinja2 and psutil are expected there), at the versions of constraints.txt;
#      - SmolLM2-135M-Instruct's config and tokenizer. Its weights (540 MB in float32) stay behind: the benchmark
#        gives the model random weights of SmolLM2's architecture, which cost the same compute per step;
#      - the HH-RLHF harmless-base test pairs (0.7 MB) from ../shared/data (or DATA=folder).
#   2. On the GPU machine, with .gpu/ in the checkout:
#          bash benchmarks/gpu.sh [REPEATS]
#      This installs the wheels without the network into a temporary folder put first on PYTHONPATH (the
#      machine's own packages stay as they are) and runs the three settings, alternating alignkit and TRL
#      REPEATS times (default 1; one round takes a few minutes on an H100).
# Environment: PYVER, the Python version of the GPU machine's interpreter, for `pack` (default 3.12); PYTHON, the
# interpreter with CUDA PyTorch (default python3); SETTINGS, the settings to run (default
# "smol-dpo smol-rm smol-rloo"); DEVICE=cpu runs the same on the CPU, to check the script where no GPU is (slow:
# minutes per setting).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(trl==1.16.0)
for name in datasets dill multiprocess fsspec xxhash transformers pydantic pydantic_core annotated-types \
            typing-inspection vaderSentiment; do
  WHEELS+=("$(grep -i -m1 "^${name}==" constraints.txt)")
done

if [ "${1:-}" = pack ]; then
  rm -rf .gpu
  mkdir -p .gpu/wheels .gpu/smollm2
  .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .gpu/wheels .
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels "${WHEELS[@]}"
  model=$(.venv/bin/python -c "from alignkit.models.load import resolve_model; print(resolve_model('smollm2-135m-instruct'))")
  mkdir -p .gpu/data/hh-rlhf
  cp "${DATA:-../shared/data}/hh-rlhf/harmless-base-test.jsonl.gz" .gpu/data/hh-rlhf/
  for f in "$model"/*; do
    case "$f" in *.safetensors|*.bin) ;; *) cp "$f" .gpu/smollm2/ ;; esac
  done
  echo "packed .gpu/ ($(du -sh .gpu | cut -f1)): $(ls .gpu/wheels | wc -l) wheels, SmolLM2's config and tokenizer, HH-RLHF"
  exit 0
fi

if [ ! -d .gpu/wheels ] || [ ! -f .gpu/smollm2/config.json ]; then
  echo "gpu.sh: no .gpu/ folder here; run 'bash benchmarks/gpu.sh pack' where pip reaches the index, then bring" \
       ".gpu/ along" >&2
  exit 2
fi
REPEATS=${1:-1}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-.gpu/data}
SITE=$(mktemp -d /tmp/alignkit-gpu-site.XXXXXX)
trap 'rm -rf "$SITE"' EXIT
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .gpu/wheels/*.whl
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" - "$DEVICE" <<'EOF'
import json, sys
import datasets, pyarrow, torch, transformers, trl
import alignkit
device = sys.argv[1]
if device == "cuda" and not torch.cuda.is_available():
    sys.exit("gpu.sh: torch sees no CUDA device (DEVICE=cpu runs the benchmark on the CPU)")
print(json.dumps({"benchmark": "gpu.sh", "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                  "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
                  "trl": trl.__version__, "datasets": datasets.__version__, "pyarrow": pyarrow.__version__}), flush=True)
EOF
for setting in ${SETTINGS-smol-dpo smol-rm smol-rloo}; do
  "$PY" benchmarks/trl_peer.py --setting "$setting" --repeats "$REPEATS" --device "$DEVICE" --python "$PY" \
    --data "$DATA" --smol-model .gpu/smollm2
done
