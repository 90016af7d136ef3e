"""Rollouts: sampling throughput with and without dropping finished rows and length bucketing, and scoring
(log-probs) in one forward against chunks under a token budget.

    python benchmarks/rollout.py                        # every setting, each in a fresh process
    python benchmarks/rollout.py --setting tiny-b64     # one setting

Sampling settings (`tiny-*`, `smollm2-*`) time variants INTERLEAVED in one process (A B C, A B C, ...; median
of the repeats), so the ratios compare runs under the same machine load:
- before: the work of the engine before this change: no dropping, prompts batched in their given order, and the prompt pass
  computing logits at every prompt position (the model called without `logits_to_keep`, `FullPrefill`);
- prefill: the same with the prompt pass computing the last position's logits only (`logits_to_keep=1`);
- drop: prefill + finished rows leave the live batch (compaction at `DROP_FRACTION`);
- bucket: prefill + prompts sorted by length into batches (`generate_many(bucket=True)`), no dropping;
- all-dynamic: prefill, dropping and bucketing with transformers' DynamicCache (which copies the whole cache at
  every token);
- all-forward: the same with the KV cache in buffers reserved for the whole rollout, every decode step a model
  forward and every row prefilled (the engine before `models.decode`);
- all: the same with decode steps written by hand (`models.decode.decode_step`) and each distinct prompt prefilled
  once (the engine now). Variants before all-forward decode by the model's forward too.
Every variant but all-dynamic uses the reserved cache. `*-k4` settings sample 4 completions of each prompt (RLOO's
layout: each prompt's copies side by side), the others one.
`*-fractions` settings compare compaction thresholds: drop0 compacts as soon as any row finished, drop1/8,
drop (= DROP_FRACTION, 1/4) and drop1/2 wait until that share of the live batch has finished.
Each variant samples the same 2 x batch prompts (temperature 1, a generator seeded per batch and repeat) with
`generate_many`; tokens/s counts generated response tokens (EOS included) over sampling time. Variants draw
different samples once rows were dropped or batches regrouped, so the mean response length is reported too.
- tiny-*: the tiny GPT-2 of `common.tiny_gpt2` (4 layers, width 256, 2k vocabulary), first fine-tuned with
  `run_sft` (120 steps) on prompt -> 1..40-word completions of `common.make_pairs`, so that sampled rows end
  with EOS at very different lengths (a random-init model almost never emits EOS).
- smollm2-*: SmolLM2-135M-Instruct with its chat template; the words of `common.make_pairs` prompts behind
  three instructions asking for answers of different lengths (a title, one sentence, a short review), so
  that about half the rows end with EOS within 48 tokens, at very different steps.
Scoring settings time policy log-probs with entropy (what `online.Sampler` computes) over a synthetic rollout
(prompts 8..96 tokens, responses 1..64 tokens, as after dropping finished rows; 256 rows for the tiny model,
64 for SmolLM2) in one forward (`full`) or with `score_in_chunks` at token budgets: `score-tiny` and
`score-smollm2` interleave the budgets in one process (speed), each `score-rss-*` runs one budget in its own
process (peak RSS, against the RSS before scoring; SmolLM2's includes its memory-mapped weights paged in by
the first forward, which hides the difference at 64 rows).
Torch runs on ROLLOUT_BENCH_THREADS threads (default 1): on a machine shared with other jobs, intra-op threads
competing for busy cores make the same generate call many times slower and erratic. Absolute numbers stay
noisy there; ratios within one setting less so.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from common import main as bench_main
from common import make_pairs, peak_rss_mb, tiny_gpt2

from alignkit.rollout.engine import DROP_FRACTION

WORK = Path(tempfile.gettempdir()) / "alignkit-bench-rollout"
# variant: (LM head on the last prompt position only, drop_fraction or None for no dropping, bucketing, KV cache in
# buffers reserved for the rollout (`reserved_cache`), decode steps by hand and each distinct prompt prefilled once)
VARIANTS = {"before": (False, None, False, True, False), "prefill": (True, None, False, True, False),
            "drop": (True, DROP_FRACTION, False, True, False), "bucket": (True, None, True, True, False),
            "all-dynamic": (True, DROP_FRACTION, True, False, False),
            "all-forward": (True, DROP_FRACTION, True, True, False), "all": (True, DROP_FRACTION, True, True, True),
            "drop0": (True, 0.0, False, True, False), "drop1/8": (True, 0.125, False, True, False),
            "drop1/2": (True, 0.5, False, True, False)}
FRACTIONS = ["prefill", "drop0", "drop1/8", "drop", "drop1/2"]


class FullPrefill:
    """Calls a model without `logits_to_keep`, so the prompt pass computes logits at every prompt position as
    the engine did before this work (the model's outputs are otherwise unchanged)."""

    def __init__(self, model):
        self.model = model

    def parameters(self):
        return self.model.parameters()

    def __call__(self, **kwargs):
        kwargs.pop("logits_to_keep", None)
        return self.model(**kwargs)


SETTINGS = {
    "tiny-b32": dict(model="tiny", batch=32, new_tokens=48, repeats=5),
    "tiny-b64": dict(model="tiny", batch=64, new_tokens=64, repeats=5),
    "tiny-b32-k4": dict(model="tiny", batch=32, new_tokens=48, repeats=5, k=4, compare=["all-forward", "all"]),
    "smollm2-b32-k4": dict(model="smollm2-135m-instruct", batch=32, new_tokens=48, repeats=1, k=4,
                           compare=["all-forward", "all"]),
    "tiny-b64-fractions": dict(model="tiny", batch=64, new_tokens=64, repeats=5, compare=FRACTIONS),
    "smollm2-b32": dict(model="smollm2-135m-instruct", batch=32, new_tokens=48, repeats=1,
                        compare=["before", "prefill", "drop", "all"]),
    "smollm2-b32-fractions": dict(model="smollm2-135m-instruct", batch=32, new_tokens=48, repeats=1,
                                  compare=["prefill", "drop0", "drop", "drop1/2"]),
    # scoring speed: budgets timed interleaved in one process (None = one forward over every row)
    "score-tiny": dict(score="tiny", rows=256, repeats=3, budgets=[None, 16384, 8192, 4096]),
    "score-smollm2": dict(score="smollm2-135m-instruct", rows=64, repeats=1, budgets=[None, 8192, 4096, 2048]),
    # scoring memory: one budget per process, its peak RSS
    "score-rss-tiny-full": dict(score="tiny", rows=256, repeats=1, budgets=[None]),
    "score-rss-tiny-16k": dict(score="tiny", rows=256, repeats=1, budgets=[16384]),
    "score-rss-tiny-4k": dict(score="tiny", rows=256, repeats=1, budgets=[4096]),
    "score-rss-smollm2-full": dict(score="smollm2-135m-instruct", rows=64, repeats=1, budgets=[None]),
    "score-rss-smollm2-4k": dict(score="smollm2-135m-instruct", rows=64, repeats=1, budgets=[4096]),
}


def tiny_sft() -> str:
    """The tiny GPT-2 fine-tuned to answer make_pairs prompts with 1..40-word completions ending in EOS (built
    once per machine in WORK)."""
    import json

    from alignkit import SFTConfig, run_sft

    out = WORK / "tiny-sft"
    if (out / "config.json").exists():
        return str(out)
    WORK.mkdir(parents=True, exist_ok=True)
    pairs = make_pairs(800, seed=0, min_words=1, max_words=40)
    base = tiny_gpt2(WORK / "tiny", pairs)
    data = WORK / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": p["prompt"], "completion": p["chosen"]}) + "\n" for p in pairs))
    run_sft(SFTConfig(model=base, data=str(data), output_dir=str(out), learning_rate=3e-3, max_steps=120,
                      batch_size=32, progress=False, eval_fraction=0.0))
    return str(out)


STYLES = ["Give a one-word title for a story about{}", "In one short sentence, describe{}",
          "Write a short review of a film about{}"]


def bench_prompts(enc, n: int, chat: bool) -> list[list[int]]:
    """`n` prompts from make_pairs: as they are for the tiny model, behind the STYLES instructions (in turn)
    for a chat model."""
    pairs = make_pairs(n, seed=1, min_words=1, max_words=40)
    if not chat:
        return [enc.prompt_ids(p["prompt"]) for p in pairs]
    return [enc.prompt_ids(STYLES[i % 3].format(p["prompt"][len("Write about"):])) for i, p in enumerate(pairs)]


def load(name: str):
    import torch

    from alignkit.models.load import load_causal_lm, load_tokenizer, resolve_model

    path = tiny_sft() if name == "tiny" else resolve_model(name)
    torch.manual_seed(0)
    return load_causal_lm(path).eval(), load_tokenizer(path), name != "tiny"


def sample_setting(s: dict) -> dict:
    import torch

    from alignkit.data.tokenize import Encoder
    from alignkit.rollout.engine import HFBackend, SamplingParams, generate_many

    model, tok, chat = load(s["model"])
    enc = Encoder(tok, max_length=512, max_prompt_length=256, chat_template=chat)
    k = s.get("k", 1)
    prompts = [p for p in bench_prompts(enc, 2 * s["batch"] // k, chat) for _ in range(k)]
    params = SamplingParams(max_new_tokens=s["new_tokens"], temperature=1.0)
    names = s.get("compare", ["before", "prefill", "drop", "bucket", "all-dynamic", "all-forward", "all"])

    def run(name: str, repeat: int) -> tuple[float, int, float, int]:
        last_only, fraction, bucket, reserved, by_hand = VARIANTS[name]
        backend = HFBackend(drop_finished=fraction is not None, drop_fraction=fraction or 0.0,
                            reserve_cache=reserved, decode_by_hand=by_hand, prefill_once=by_hand)
        ro = generate_many(backend, model if last_only else FullPrefill(model), prompts, params,
                           pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, batch_size=s["batch"], bucket=bucket,
                           generator_for=lambda b: torch.Generator().manual_seed(1000 * repeat + b))
        return ro.seconds, int(ro.response_mask.sum()), float(ro.lengths.float().mean()), int(ro.finished.sum())

    generate_many(HFBackend(), model, prompts[:4], SamplingParams(max_new_tokens=4), pad_id=tok.pad_token_id,
                  eos_id=tok.eos_token_id, batch_size=4)  # warm-up
    runs: dict[str, list] = {n: [] for n in names}
    for repeat in range(s["repeats"]):
        for n in names:
            runs[n].append(run(n, repeat))
    result = {}
    for n in names:
        tps = statistics.median(tokens / sec for sec, tokens, _, _ in runs[n])
        cps = statistics.median(len(prompts) / sec for sec, *_ in runs[n])
        result[n] = {"gen_tokens_per_s": round(tps, 1), "completions_per_s": round(cps, 2),
                     "mean_response_len": round(statistics.mean(r[2] for r in runs[n]), 1),
                     "finished_share": round(statistics.mean(r[3] for r in runs[n]) / len(prompts), 2)}
    ratios = {}
    for ref in dict.fromkeys([names[0], "prefill"]):  # against the first variant, and against prefill
        if ref in result:
            ratios.update({f"{n}/{ref}": round(result[n]["gen_tokens_per_s"] / result[ref]["gen_tokens_per_s"], 2)
                           for n in names[names.index(ref) + 1:]})
    for a, b in (("all", "all-forward"), ("all-forward", "all-dynamic")):  # one change each
        if a in result and b in result:
            ratios[f"{a}/{b}"] = round(result[a]["gen_tokens_per_s"] / result[b]["gen_tokens_per_s"], 2)
    lengths = sorted(map(len, prompts))
    return {"prompts": len(prompts), "samples_per_prompt": k, "prompt_len_min_med_max": [lengths[0], lengths[len(lengths) // 2], lengths[-1]],
            "variants": result, "tokens_per_s_ratio": ratios}


def synthetic_rollout(rows: int, vocab: int, pad_id: int):
    """A rollout as the sampler leaves it after dropping finished rows: prompts of 8..96 tokens left-padded to
    96, responses of 1..64 tokens right-padded to 64, random token ids."""
    import torch

    from alignkit.rollout.engine import Rollout

    gen = torch.Generator().manual_seed(0)
    width, steps = 96, 64
    p_len = torch.randint(8, width + 1, (rows,), generator=gen)
    r_len = torch.randint(1, steps + 1, (rows,), generator=gen)
    cols = torch.arange(width + steps)
    attention = ((cols >= width - p_len[:, None]) & (cols < width + r_len[:, None])).long()
    ids = torch.randint(3, vocab, (rows, width + steps), generator=gen).masked_fill(attention == 0, pad_id)
    return Rollout(ids, attention, width, attention[:, width:], torch.zeros(rows, steps), r_len < steps)


def score_setting(s: dict) -> dict:
    import torch

    from alignkit.models.logprobs import response_logprobs
    from alignkit.rollout.engine import score_in_chunks

    model, tok, _ = load(s["score"])
    ro = synthetic_rollout(s["rows"], model.config.vocab_size, tok.pad_token_id)

    def fn(*args):
        return response_logprobs(model, *args, temperature=1.0, entropy=True)

    def score(budget):
        if budget is None:
            return fn(ro.input_ids, ro.attention_mask, ro.prompt_width, ro.response_mask)
        return score_in_chunks(fn, ro, max_tokens=budget)

    rss_before = peak_rss_mb()
    times: dict = {b: [] for b in s["budgets"]}
    with torch.no_grad():
        for _ in range(s["repeats"]):
            for b in s["budgets"]:
                t = time.perf_counter()
                score(b)
                times[b].append(time.perf_counter() - t)
    name = {b: str(b) if b else "full" for b in s["budgets"]}
    seconds = {name[b]: round(statistics.median(v), 3) for b, v in times.items()}
    first = s["budgets"][0]
    return {"padded_tokens": ro.input_ids.numel(), "real_tokens": int(ro.attention_mask.sum()),
            "seconds": seconds, "speedup_vs_" + name[first]:
            {name[b]: round(seconds[name[first]] / seconds[name[b]], 2) for b in s["budgets"][1:]},
            "peak_rss_mb_before_scoring": rss_before}


def run_setting(name: str) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("ROLLOUT_BENCH_THREADS", "1")))
    s = SETTINGS[name]
    out = score_setting(s) if "score" in s else sample_setting(s)
    return {"benchmark": "rollout", "setting": name, **s, "threads": torch.get_num_threads(), **out,
            "peak_rss_mb": peak_rss_mb()}


def before(names: list[str]) -> None:
    if any(SETTINGS[n].get("model", SETTINGS[n].get("score")) == "tiny" for n in names):
        tiny_sft()  # built once, before the settings' processes start


if __name__ == "__main__":
    bench_main(__doc__, __file__, SETTINGS, run_setting, before)
