"""PPO and RLOO: generation and training throughput, and the reward / KL curve of a short run.

    python benchmarks/rl.py                      # every setting, each in a fresh process
    python benchmarks/rl.py --setting tiny-ppo   # one setting

The reward is a rule standing in for a gold scorer: (#positive − #negative words) / #words of the response.
- tiny-*: a tiny Llama (2 layers, width 64) first fine-tuned to write positive and negative film reviews
  about equally often; 16 prompts per PPO batch, 8 prompts × k=4 for RLOO; 12 new tokens; 12 iterations.
- smollm2-*: SmolLM2-135M-Instruct with LoRA r=16, chat prompts asking for a one-sentence film review;
  8 prompts per PPO batch, 4 prompts × k=4 for RLOO; 32 new tokens; 4 iterations.
Generation tokens/s counts sampled response tokens over sampling time; training tokens/s counts all tokens
of the optimised sequences over optimisation time (PPO: policy + value; both exclude sampling). MFU against the
float32 matmul peak measured in the same process: training 6 (LoRA 4) x non-embedding parameters per optimised
token (x2 for PPO's value model), generation 2 x (non-embedding + LM head) parameters per sampled token.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

from common import (
    body_and_head_params,
    in_work_folder,
    make_pairs,
    matmul_peak_gflops,
    peak_rss_mb,
    tiny_gpt2,
)
from common import main as bench_main

GOOD = "great wonderful brilliant superb lovely moving delightful charming excellent beautiful".split()
BAD = "awful terrible boring dull dreadful poor weak tedious bad disappointing".split()
FILMS = "Alpha Bravo Comet Delta Echo Falcon Glacier Harbor Island Jungle Kestrel Lantern".split()

REWARD_PY = f'''
GOOD = set({GOOD!r})
BAD = set({BAD!r})


def score(prompts, responses):
    out = []
    for r in responses:
        words = [w.strip(".,!").lower() for w in r.split()]
        out.append((sum(w in GOOD for w in words) - sum(w in BAD for w in words)) / max(len(words), 1))
    return out
'''

SETTINGS = {
    "tiny-ppo": dict(method="ppo", model="tiny", batch_size=16, mini_batch_size=8, max_new_tokens=12, steps=12,
                     lr=1e-3),
    "tiny-ppo-padded": dict(method="ppo", model="tiny", batch_size=16, mini_batch_size=8, max_new_tokens=12, steps=12,
                            lr=1e-3, packing=False),
    "tiny-rloo": dict(method="rloo", model="tiny", batch_size=8, k=4, mini_batch_size=8, max_new_tokens=12, steps=12,
                      lr=1e-3),
    # the TRL peer setting (benchmarks/trl_peer.py trl-rloo): random-init tiny GPT-2, 8 prompts x k=4 = 32 completions
    # of up to 32 tokens per step, one update of 32 sequences per step, 16 steps, lr 1e-5, no evaluation
    "tiny-gpt2-rloo": dict(method="rloo", model="tiny-gpt2", batch_size=8, k=4, mini_batch_size=32, max_new_tokens=32,
                           steps=16, lr=1e-5, eval_samples=0),
    # PPO on the same model and prompts: 32 prompts x 32 tokens per step, minibatches of 16, 2 epochs, 8 steps
    "tiny-gpt2-ppo": dict(method="ppo", model="tiny-gpt2", batch_size=32, mini_batch_size=16, max_new_tokens=32,
                          steps=8, lr=1e-5, eval_samples=0),
    "tiny-gpt2-ppo-padded": dict(method="ppo", model="tiny-gpt2", batch_size=32, mini_batch_size=16,
                                 max_new_tokens=32, steps=8, lr=1e-5, eval_samples=0, packing=False),
    # the same with padded scoring and training (--no-packing)
    "tiny-gpt2-rloo-padded": dict(method="rloo", model="tiny-gpt2", batch_size=8, k=4, mini_batch_size=32,
                                  max_new_tokens=32, steps=16, lr=1e-5, eval_samples=0, packing=False),
    "smollm2-ppo": dict(method="ppo", model="smollm2-135m-instruct", batch_size=8, mini_batch_size=8,
                        max_new_tokens=32, steps=4, lr=2e-4, lora=True, reference="lora-disabled"),
    "smollm2-ppo-padded": dict(method="ppo", model="smollm2-135m-instruct", batch_size=8, mini_batch_size=8,
                               max_new_tokens=32, steps=4, lr=2e-4, lora=True, reference="lora-disabled", packing=False),
    "smollm2-rloo-padded": dict(method="rloo", model="smollm2-135m-instruct", batch_size=4, k=4, mini_batch_size=8,
                                max_new_tokens=32, steps=4, lr=2e-4, lora=True, reference="lora-disabled",
                                packing=False),
    "smollm2-rloo": dict(method="rloo", model="smollm2-135m-instruct", batch_size=4, k=4, mini_batch_size=8,
                         max_new_tokens=32, steps=4, lr=2e-4, lora=True, reference="lora-disabled"),
}


def tiny_policy(work: Path) -> str:
    from alignkit import SFTConfig, run_sft
    from alignkit.models.tiny import make_tiny_model

    rng = random.Random(0)
    rows = []
    for _ in range(400):
        words = GOOD if rng.random() < 0.5 else BAD
        rows.append({"prompt": f"Review of {rng.choice(FILMS)}:",
                     "completion": " " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 6))) + "."})
    data = work / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = make_tiny_model(work / "tiny", [r["prompt"] + r["completion"] for r in rows], vocab_size=400)
    run_sft(SFTConfig(model=base, data=str(data), output_dir=str(work / "sft"), learning_rate=3e-3, max_steps=80,
                      batch_size=16, progress=False, eval_fraction=0.0))
    return str(work / "sft")


def run_setting(name: str) -> dict:
    return in_work_folder(measure, name)


def measure(name: str, work: Path) -> dict:
    from alignkit import PPOConfig, RLOOConfig, run_ppo, run_rloo

    s = SETTINGS[name]
    (work / "reward.py").write_text(REWARD_PY)
    rng = random.Random(1)
    if s["model"] == "tiny":
        model = tiny_policy(work)
        prompts = [{"prompt": f"Review of {rng.choice(FILMS)}:"} for _ in range(400)]
    elif s["model"] == "tiny-gpt2":
        pairs = make_pairs(512, 0, 4, 120)
        model = tiny_gpt2(work / "model", pairs)
        prompts = [{"prompt": p["prompt"]} for p in pairs]
    else:
        model = s["model"]
        prompts = [{"prompt": [{"role": "user", "content": f"Write a one-sentence review of the film {f}."}]}
                   for f in (rng.choice(FILMS) + " " + str(i) for i in range(400))]
    (work / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    common = dict(model=model, prompts=str(work / "prompts.jsonl"), reward=f"{work / 'reward.py'}:score",
                  output_dir=str(work / "out"), max_steps=s["steps"], batch_size=s["batch_size"],
                  mini_batch_size=s["mini_batch_size"], max_new_tokens=s["max_new_tokens"], learning_rate=s["lr"],
                  beta=0.05, lora=s.get("lora", False), reference=s.get("reference", "copy"), progress=False,
                  eval_samples=s.get("eval_samples", 32), eval_fraction=0.0 if s.get("eval_samples") == 0 else 0.1, max_length=256,
                  max_prompt_length=96, packing=s.get("packing", True))
    peak = matmul_peak_gflops()
    t0 = time.perf_counter()
    if s["method"] == "ppo":
        res = run_ppo(PPOConfig(**common))
    else:
        res = run_rloo(RLOOConfig(**common, k=s["k"]))
    wall = time.perf_counter() - t0
    lines = [json.loads(x) for x in (work / "out" / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    import torch

    # MFU: training = 6 (4 with LoRA) x non-embedding parameters per optimised token, x2 for PPO's value model;
    # generation = 2 x (non-embedding + LM head) parameters per sampled token; against the matmul peak
    body, head = body_and_head_params(work / "out")
    per_weight = (4 if s.get("lora") else 6) * (2 if s["method"] == "ppo" else 1)
    gen_tok = statistics.median(m["gen_tokens_per_s"] for m in train)
    train_tok = statistics.median(m["tokens_per_s"] for m in train)
    ends = [m["elapsed_s"] for m in train]
    step_s = statistics.median(b - a for a, b in zip([0.0, *ends[:-1]], ends, strict=True))  # as trl_peer.py's step median
    return {
        "benchmark": "rl", "setting": name, **s, "threads": torch.get_num_threads(),
        "gen_tokens_per_s": round(statistics.median(m["gen_tokens_per_s"] for m in train), 1),
        "train_tokens_per_s": round(statistics.median(m["tokens_per_s"] for m in train), 1),
        "completions_per_s": round(len(train) * s["batch_size"] * s.get("k", 1) / train[-1]["elapsed_s"], 2),
        "step_median_completions_per_s": round(s["batch_size"] * s.get("k", 1) / step_s, 2),
        "end_to_end_completions_per_s": round(len(train) * s["batch_size"] * s.get("k", 1) / wall, 2),
        "wall_s": round(wall, 1),
        **({"eval_reward_before": round(res.first_eval["reward"], 3), "eval_reward_after": round(res.eval["reward"], 3),
            "eval_kl_after": round(res.eval["kl"], 3)} if res.eval else {}),
        "curve": [[m["step"], round(m["reward"], 3), round(m["kl"], 3)] for m in train],
        "peak_rss_mb": peak_rss_mb(),
        "matmul_peak_gflops": peak, "train_mfu": round(per_weight * body * train_tok / 1e9 / peak, 3),
        "gen_mfu": round(2 * (body + head) * gen_tok / 1e9 / peak, 3),
    }


if __name__ == "__main__":
    bench_main(__doc__, __file__, SETTINGS, run_setting)
