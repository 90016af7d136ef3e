"""`alignkit sample`: K responses per prompt from a policy, written as {"prompt", "responses"} JSON lines, the
K-response sets that `alignkit label import` takes. Parsing and printing only: sampling is the rollout
engine's, through `alignkit.rollout.sample.sample_policy` (batched, seeded per batch)."""

from __future__ import annotations

import argparse
import json
import sys

from alignkit.cli.args import float_in, int_at_least


def add_sample_parser(sub) -> None:
    p = sub.add_parser(
        "sample", help="sample K responses per prompt from a policy (items for `alignkit label import`)",
        description="Sample K responses for every prompt with the rollout engine and write JSON lines "
                    '{"prompt": ..., "responses": [...]} to --output. Responses that are empty or repeat another '
                    "one for the same prompt are dropped, and a prompt left with fewer than 2 responses is not "
                    "written; both are counted and reported.")
    p.add_argument("--model", required=True, help="the policy: a folder, hub id or built-in name")
    p.add_argument("--prompts", required=True, help="prompt file (records with `prompt`, a string or messages)")
    p.add_argument("-k", "--k", type=int_at_least(2), default=2, help="responses per prompt (default: 2)")
    p.add_argument("--output", required=True, help="JSON-lines file to write")
    add_sampling_flags(p, max_new_tokens=64)
    p.add_argument("--top-p", type=float_in(0, 1), default=1.0, help="nucleus sampling threshold (default: 1.0, off)")
    p.add_argument("--skip-invalid", action="store_true", help="skip invalid prompt records (counted) instead of stopping")


def add_sampling_flags(p, *, max_new_tokens: int) -> None:
    """The sampling flags `alignkit sample` and `alignkit evaluate` share."""
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=max_new_tokens,
                   help=f"longest response in tokens (default: {max_new_tokens})")
    p.add_argument("--temperature", type=float_in(0), default=1.0, help="sampling temperature (default: 1.0)")
    p.add_argument("--batch-size", type=int_at_least(1), default=16, help="sequences sampled at once (default: 16)")
    p.add_argument("--max-prompts", type=int_at_least(1), help="use only the first N prompts")
    p.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=False,
                   help="wrap plain-string prompts as a user message and apply the chat template (default: off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    add_backend_flag(p)


def add_backend_flag(p) -> None:
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf",
                   help='sampling engine: hf (any machine) or vllm (a CUDA GPU; pip install "alignkit[vllm]"); '
                        "default: hf")


def run_sample(args) -> int:
    from alignkit.data import load_prompts
    from alignkit.models.names import check_model
    from alignkit.rollout.backends import check_backend

    check_backend(args.backend)
    check_model(args.model)
    prompts, report = load_prompts(args.prompts, skip_invalid=args.skip_invalid)
    prompts = prompts[: args.max_prompts] if args.max_prompts else prompts

    from alignkit.console import quiet_model_libraries
    from alignkit.models.load import load_tokenizer
    from alignkit.rollout.sample import SampleSettings, sample_policy

    quiet_model_libraries()
    print(report.summary(), file=sys.stderr)
    print(f"sampling {args.k} responses for each of {len(prompts)} prompts from {args.model}", file=sys.stderr)
    settings = SampleSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            samples=args.k, batch_size=args.batch_size, chat_template=args.chat_template,
                            seed=args.seed, backend=args.backend)
    samples = sample_policy(args.model, load_tokenizer(args.model), prompts, settings)
    per_prompt: list[list[str]] = [[] for _ in prompts]
    for i, response in zip(samples.prompt_index, samples.responses, strict=True):
        per_prompt[i].append(response)
    rows, empty, repeated, too_few = [], 0, 0, 0
    for prompt, responses in zip(prompts, per_prompt, strict=True):
        kept = []
        for r in responses:
            if not r.strip():
                empty += 1
            elif r in kept:
                repeated += 1
            else:
                kept.append(r)
        if len(kept) < 2:
            too_few += 1
        else:
            rows.append({"prompt": prompt, "responses": kept})
    with open(args.output, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(f"{args.output}: {len(rows)} prompts written; responses dropped: {empty} empty, {repeated} repeated; "
          f"prompts left out with fewer than 2 distinct responses: {too_few}")
    return 0
