"""Evaluate policies against their reference on held-out prompts: gold score (mean and 95% CI), the paired
difference from the reference (per prompt, mean and 95% CI), win rate against the reference by gold score,
sampled sequence KL to the reference, response length, the reward model's score, and the reward model's
accuracy against gold preferences (all pairs, and pairs whose gold gap is at least each of `RM_GAPS`).

Every policy answers the same prompts with the same sampling noise (a generator seeded per batch; prompts are
grouped into batches by length, the same grouping for every policy), so the comparison is paired.
KL(π‖π_ref) is estimated per sample as Σ_t logπ(y_t) − logπ_ref(y_t) over responses sampled from π, both at
the sampling temperature (the sampler's own log-probs for π, one packed reference pass over every policy's
responses for π_ref); the mean over samples is unbiased. With `mixed_precision` the reference pass and the reward
model's scores run in autocast: bf16 rounds each response's reference log-prob, and moves the mean KL far less
(measured in docs/benchmarks.md). The sampling stays float32.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from alignkit.evaluate.stats import mean_ci, paired_difference, pairwise_agreement, win_rate
from alignkit.losses import kl_k1
from alignkit.models.load import autocast, folder_stamp, load_causal_lm, load_tokenizer, resolve_precision
from alignkit.rollout.rewards import CallableReward, ModelReward
from alignkit.rollout.sample import (
    PolicySamples,
    SampleSettings,
    prompt_encoder,
    sample_policy,
    sequence_logps,
)

RM_GAPS = (0.3, 0.6)  # gold gaps at which the reward model's accuracy is also reported
SAMPLES_VERSION = 2  # part of the sample cache's key: bump when PolicySamples changes


def _cached_samples(cache: Path | None, name: str, path: str, tok, prompts: list, s: SampleSettings) -> PolicySamples:
    """`sample_policy`, reusing `cache/<name>.json` when the policy, prompts and settings match."""
    if cache is None:
        return sample_policy(path, tok, prompts, s)
    key = hashlib.blake2b(json.dumps([SAMPLES_VERSION, folder_stamp(path), prompts, vars(s)]).encode(),
                          digest_size=16).hexdigest()
    file = cache / f"{name}.json"
    if file.exists():
        stored = json.loads(file.read_text())
        if stored.get("key") == key:
            return PolicySamples(**stored["samples"])
    sm = sample_policy(path, tok, prompts, s)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "samples": asdict(sm)}))
    tmp.replace(file)
    return sm


def evaluate_policies(policies: dict[str, str], reference: str, prompts: list, gold: str | None, *,
                      reward_model: str | None = None, settings: SampleSettings | None = None,
                      output_dir: str | Path | None = None, judge=None, progress: bool = True,
                      mixed_precision: str = "no") -> dict:
    """Evaluate each named policy folder and the reference; returns (and writes `results.json`) a dict with one
    entry per model, plus the reward model's accuracy against gold when `reward_model` is given. Without a
    `gold` scorer there are no gold figures; with `judge` (a `judges.config.JudgeSettings`) each policy's samples
    are also judged against the reference's (`evaluate.judged`). With an
    `output_dir`, each model's samples are kept in `output_dir/samples/` and reused while the model folder,
    the prompts and the settings are unchanged. The reference scores every policy's responses in one pass,
    each prompt laid out once (the KL of a Chain of Hindsight policy is to the reference answering the plain
    prompt: the phrase is part of how that policy is used, not of what the reference is asked). `mixed_precision`
    (no, bf16, auto): the autocast of those two scoring passes."""
    s = settings or SampleSettings()
    tok = load_tokenizer(reference)
    gold_fn = CallableReward(gold) if gold else None
    cache = Path(output_dir) / "samples" if output_dir is not None else None
    samples = {"reference": _cached_samples(cache, "reference", reference, tok, prompts, s)}
    for name, path in policies.items():
        samples[name] = _cached_samples(cache, name, path, tok, prompts, s)
    enc = prompt_encoder(tok, s)
    plain = [enc.truncate_prompt(enc.prompt_ids(p)) for p in prompts]
    scored = [sm for name, sm in samples.items() if name != "reference"]
    if scored:
        ref_model = load_causal_lm(reference).eval()
        with autocast(mixed_precision):
            ref = sequence_logps(ref_model, [plain[i] for sm in scored for i in sm.prompt_index],
                                  [r for sm in scored for r in sm.response_ids], tok.pad_token_id, s.temperature)
        del ref_model
        at = 0
        for sm in scored:
            sm.kl = kl_k1(torch.tensor(sm.logp), torch.tensor(ref[at : at + len(sm.logp)])).tolist()
            at += len(sm.logp)
    rm = ModelReward(reward_model, chat_template=s.chat_template) if reward_model else None
    rm_scores: dict[str, list[float]] = {}
    if rm is not None:  # every model's samples in one call: each prompt laid out once for all of them
        with autocast(mixed_precision):
            flat = rm([p for sm in samples.values() for p in sm.prompts],
                      [r for sm in samples.values() for r in sm.responses]).tolist()
        at = 0
        for name, sm in samples.items():
            rm_scores[name], at = flat[at : at + len(sm.responses)], at + len(sm.responses)

    def per_prompt(values: list[float], index: list[int]) -> list[float]:
        sums = [0.0] * len(prompts)
        for v, i in zip(values, index, strict=True):
            sums[i] += v / s.samples
        return sums

    results: dict = {"settings": {**vars(s), "mixed_precision": resolve_precision(mixed_precision)}, "gold": gold,
                     "reference": reference, "models": {}}
    judged = None
    if judge is not None:
        from alignkit.evaluate.judged import judge_policies

        judged = judge_policies(samples, judge, progress=progress)
        results["judge"] = judged["judge"]
    golds = {name: gold_fn(sm.prompts, sm.responses).tolist() for name, sm in samples.items()} if gold_fn else {}
    ref_prompt_gold = per_prompt(golds["reference"], samples["reference"].prompt_index) if golds else None
    all_rm, all_gold, groups = [], [], []
    for name, sm in samples.items():
        kl_mean, kl_half = mean_ci(sm.kl)
        entry = {
            "path": reference if name == "reference" else policies[name],
            "kl": kl_mean, "kl_ci95": kl_half,
            "length": sum(sm.lengths) / len(sm.lengths),
            "samples": [{"prompt": p, "response": r} for p, r in zip(sm.prompts, sm.responses, strict=True)],
        }
        if golds:
            g = golds[name]
            entry["gold_mean"], entry["gold_ci95"] = mean_ci(g)
            entry["win_rate"] = win_rate(per_prompt(g, sm.prompt_index), ref_prompt_gold)
            for sample, gs in zip(entry["samples"], g, strict=True):
                sample["gold"] = gs
            if name != "reference":
                entry["gold_diff"], entry["gold_diff_ci95"] = paired_difference(per_prompt(g, sm.prompt_index),
                                                                                ref_prompt_gold)
        if judged is not None and name in judged["models"]:
            j = judged["models"][name]
            for sample, p in zip(entry["samples"], j.pop("verdicts"), strict=True):
                sample["judge"] = p
            entry["judge"] = j
        if rm is not None:
            scores = rm_scores[name]
            entry["rm_mean"] = sum(scores) / len(scores)
            if golds:
                all_rm += scores
                all_gold += golds[name]
                groups += sm.prompt_index
        results["models"][name] = entry
    if rm is not None and golds:
        acc, n = pairwise_agreement(all_rm, all_gold, groups)
        results["reward_model"] = {"path": reward_model, "accuracy_vs_gold": acc, "pairs": n, "by_gold_gap": {
            str(gap): dict(zip(("accuracy", "pairs"), pairwise_agreement(all_rm, all_gold, groups, min_gap=gap),
                               strict=True)) for gap in RM_GAPS}}
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def results_table(results: dict) -> str:
    """A plain-text table of the results: one row per model; the gold columns with a gold scorer, the judge's with
    a judge."""
    models = results["models"]
    has_gold = any("gold_mean" in e for e in models.values())
    has_judge = any("judge" in e for e in models.values())
    has_rm = any("rm_mean" in e for e in models.values())
    head = f"{'model':<16}"
    if has_gold:
        head += f" {'gold (95% CI)':>20} {'vs reference (paired)':>22} {'win rate':>9}"
    if has_judge:
        head += f" {'judge win (95% CI)':>20} {'LC win':>7} {'consist.':>8}"
    head += f" {'KL':>14} {'length':>7}" + ("  RM score" if has_rm else "")
    lines = [head, "-" * len(head)]
    for name, e in models.items():
        row = f"{name:<16}"
        if has_gold:
            diff = f"{e['gold_diff']:>+10.3f} ± {e['gold_diff_ci95']:<7.3f}" if "gold_diff" in e else f"{'':>20}"
            row += f" {e['gold_mean']:>10.3f} ± {e['gold_ci95']:<7.3f} {diff:>22} {e['win_rate']:>9.3f}"
        if has_judge:
            j = e.get("judge") or {}
            if "win_rate" in j:
                consist = f"{j['consistency']:.3f}" if j.get("consistency") is not None else "-"
                row += f" {j['win_rate']:>10.3f} ± {j['win_rate_ci95']:<7.3f} {j['lc_win_rate']:>7.3f} {consist:>8}"
            else:
                row += f" {'-' if j else '':>20} {'':>7} {'':>8}"
        row += f" {e['kl']:>7.2f} ± {e['kl_ci95']:<4.2f} {e['length']:>7.1f}"
        if has_rm:
            row += f"  {e['rm_mean']:>8.3f}"
        lines.append(row)
    if "judge" in results:
        lines.append(f"judge: {results['judge']['name']} ({', '.join(results['judge']['rubrics'])}); judge win = mean "
                     "P(policy better than the reference), both orders; LC = length-controlled")
    if "reward_model" in results:
        rmr = results["reward_model"]
        gaps = "; ".join(f"gold gap >= {gap}: {b['accuracy']:.3f} over {b['pairs']}"
                         for gap, b in rmr.get("by_gold_gap", {}).items())
        lines.append(f"reward model accuracy vs gold: {rmr['accuracy_vs_gold']:.3f} over {rmr['pairs']} pairs"
                     + (f" ({gaps})" if gaps else ""))
    return "\n".join(lines)
