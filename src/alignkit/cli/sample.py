"""`alignkit sample`: K responses per prompt from a policy, written as {"prompt", "responses"} JSON lines, the
K-response sets that `alignkit label import` takes. Parsing and printing only: sampling is the rollout
engine's, through `alignkit.rollout.sample.sample_policy` (batched, seeded per batch)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alignkit.cli.args import float_in, int_at_least
from alignkit.train.config import save_config

S = argparse.SUPPRESS  # flags given on the command line override the --config file; the rest come from it


def add_sample_parser(sub) -> None:
    p = sub.add_parser(
        "sample", help="sample K responses per prompt from a policy (items for `alignkit label import`)",
        description="Sample K responses for every prompt with the rollout engine and write JSON lines "
                    '{"prompt": ..., "responses": [...]} to --output, and the settings beside it (.config.yaml). '
                    "Responses that are empty or repeat another one for the same prompt are dropped, and a prompt "
                    "left with fewer than 2 responses is not written; both are counted and reported.")
    add_config_flag(p)
    p.add_argument("--model", default=S, help="the policy: a folder, hub id or built-in name (required)")
    p.add_argument("--prompts", default=S, help="prompt file (records with `prompt`, a string or messages) (required)")
    p.add_argument("-k", "--k", type=int_at_least(2), default=S, help="responses per prompt (default: 2)")
    p.add_argument("--output", default=S, help="JSON-lines file to write (required)")
    add_sampling_flags(p, max_new_tokens=64)
    p.add_argument("--top-p", type=float_in(0, 1), default=S, help="nucleus sampling threshold (default: 1.0, off)")
    p.add_argument("--skip-invalid", action="store_true", default=S,
                   help="skip invalid prompt records (counted) instead of stopping")


def add_config_flag(p) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of settings (any option below, by its field name; "
                   "flags override it)")


def add_sampling_flags(p, *, max_new_tokens: int) -> None:
    """The sampling flags `alignkit sample` and `alignkit evaluate` share."""
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=S,
                   help=f"longest response in tokens (default: {max_new_tokens})")
    p.add_argument("--temperature", type=float_in(0), default=S, help="sampling temperature (default: 1.0)")
    p.add_argument("--batch-size", type=int_at_least(1), default=S, help="sequences sampled at once (default: 16)")
    p.add_argument("--max-prompts", type=int_at_least(1), default=S, help="use only the first N prompts")
    p.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=S,
                   help="wrap plain-string prompts as a user message and apply the chat template (default: off)")
    p.add_argument("--seed", type=int, default=S, help="sampling seed (default: 0)")
    add_backend_flag(p)


def add_backend_flag(p) -> None:
    p.add_argument("--backend", choices=["hf", "vllm"], default=S,
                   help='sampling engine: hf (any machine) or vllm (a CUDA GPU; pip install "alignkit[vllm]"); '
                        "default: hf")


def command_config(cls, args):
    """The typed settings of a command: its --config file, overridden by the flags given."""
    from alignkit.train.config import load_config

    return load_config(cls, file=args.config, overrides={k: v for k, v in vars(args).items() if k in cls.model_fields})


def run_sample(args) -> int:
    from alignkit.data import load_prompts
    from alignkit.models.names import check_model
    from alignkit.rollout.backends import check_backend
    from alignkit.rollout.config import SampleConfig

    cfg = command_config(SampleConfig, args)
    check_backend(cfg.backend)
    check_model(cfg.model)
    prompts, report = load_prompts(cfg.prompts, skip_invalid=cfg.skip_invalid)
    prompts = prompts[: cfg.max_prompts] if cfg.max_prompts else prompts

    from alignkit.console import quiet_model_libraries
    from alignkit.models.load import load_tokenizer
    from alignkit.rollout.sample import sample_policy

    quiet_model_libraries()
    print(report.summary(), file=sys.stderr)
    print(f"sampling {cfg.k} responses for each of {len(prompts)} prompts from {cfg.model}", file=sys.stderr)
    samples = sample_policy(cfg.model, load_tokenizer(cfg.model), prompts, cfg.settings(cfg.k))
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
    with open(cfg.output, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    save_config(cfg, Path(cfg.output).with_suffix(".config.yaml"), method="sample")
    print(f"{cfg.output}: {len(rows)} prompts written; responses dropped: {empty} empty, {repeated} repeated; "
          f"prompts left out with fewer than 2 distinct responses: {too_few}")
    return 0
