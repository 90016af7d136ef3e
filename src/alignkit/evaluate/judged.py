"""Judged evaluation: each policy's samples against the reference's, judged pair by pair (the same prompt and
sample slot, both presentation orders, every rubric; `judges.judge_pairs`). Reported per policy: the judge's win
rate against the reference (mean P(policy better), with a 95% interval over prompts), the length-controlled win
rate (`stats.length_controlled_win_rate`), the position consistency, and the non-answers skipped."""

from __future__ import annotations

from alignkit.evaluate.stats import length_controlled_win_rate, mean_ci


def judge_policies(samples: dict, settings, *, progress: bool = True) -> dict:
    """`samples`: name -> `rollout.sample.PolicySamples`, the reference's under "reference", every model's drawn
    for the same prompts in the same order. Returns {"judge": summary, "models": name -> judged entry}, and sets
    each judged sample's P(policy better) in the entry's `verdicts`."""
    from alignkit.judges import check_judge, judge_name, judge_pairs, make_judge, open_cache

    rubrics = check_judge(settings)
    judge = make_judge(settings)
    cache = open_cache(settings, judge)
    ref = samples["reference"]
    out: dict = {"judge": {"name": judge_name(settings), "rubrics": [r.name for r in rubrics],
                           "cache": str(cache.path)}, "models": {}}
    for name, sm in samples.items():
        if name == "reference":
            continue
        j = judge_pairs(judge, sm.prompts, sm.responses, ref.responses, rubrics=rubrics, cache=cache,
                        progress=progress)
        answered = [(p, i, sm.lengths[k] - ref.lengths[k]) for k, (p, i) in enumerate(zip(j.p_a, sm.prompt_index,
                                                                                          strict=True)) if p is not None]
        entry = {"verdicts": j.p_a, "consistency": j.consistency, "answer_mass": j.answer_mass,
                 "non_answers": sum(v for k, v in j.counts.items() if k.startswith("non-answer")),
                 "pairs_without_verdict": j.counts["pairs_without_verdict"]}
        if answered:
            per_prompt: dict[int, list[float]] = {}
            for p, i, _ in answered:
                per_prompt.setdefault(i, []).append(p)
            entry["win_rate"], entry["win_rate_ci95"] = mean_ci([sum(v) / len(v) for v in per_prompt.values()])
            entry["lc_win_rate"] = length_controlled_win_rate([p for p, _, _ in answered], [d for _, _, d in answered])
        out["models"][name] = entry
    return out
