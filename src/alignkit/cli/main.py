"""`alignkit <command>`: parsing and printing only. Every training flag comes from the typed config, so the
help text of a flag is the description of its config field, and a YAML file (`--config`) can set any of them
(flags given on the command line win)."""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path
from typing import Literal

from alignkit import __version__  # noqa: I001
from alignkit.cli.args import check_utf8, float_in, int_at_least
from alignkit.console import quiet_model_libraries
from alignkit.errors import AlignkitError
from alignkit.train import (
    run_coh,
    run_dpo,
    run_grpo,
    run_kto,
    run_online_dpo,
    run_ppo,
    run_reward,
    run_rloo,
    run_sft,
)
from alignkit.train.config import (
    CoHConfig,
    DPOConfig,
    GRPOConfig,
    KTOConfig,
    OnlineDPOConfig,
    PPOConfig,
    RewardConfig,
    RLOOConfig,
    RunConfig,
    SFTConfig,
    load_config,
)
from alignkit.train.inputs import preflight

TRAINERS = {
    "sft": (SFTConfig, run_sft, "supervised fine-tuning on demonstrations (prompt/completion or chat messages)"),
    "rm": (RewardConfig, run_reward, "train a Bradley-Terry reward model on preference pairs or rankings"),
    "dpo": (DPOConfig, run_dpo, "direct preference optimisation: dpo, cdpo, ipo, hinge, gdpo, gipo; reference-free "
                                "simpo, orpo"),
    "kto": (KTOConfig, run_kto, "KTO: learn from unpaired good and bad responses (thumbs up/down), or pairs split "
                                "into them"),
    "coh": (CoHConfig, run_coh, "Chain of Hindsight: learn from pairs turned into feedback-annotated text"),
    "ppo": (PPOConfig, run_ppo, "online RL: PPO with a per-token KL penalty to the reference"),
    "rloo": (RLOOConfig, run_rloo, "online RL: RLOO, k samples per prompt with a leave-one-out baseline"),
    "grpo": (GRPOConfig, run_grpo, "online RL: GRPO, G samples per prompt, advantages relative to the group "
                                   "(--loss-type grpo, dr_grpo, dapo)"),
    "online-dpo": (OnlineDPOConfig, run_online_dpo, "online DPO: two samples per prompt from the policy, the better "
                                                    "by the reward model or function, the DPO loss on the pairs"),
}

EXAMPLES = """examples:
  alignkit make-tiny-model --output-dir runs/tiny
  alignkit sft --model runs/tiny --data demos.jsonl --output-dir runs/sft
  alignkit rm  --model runs/sft --data pairs.jsonl --output-dir runs/rm
  alignkit dpo --model smollm2-135m-instruct --data pairs.jsonl --loss gdpo --beta 0.1 --lora --output-dir runs/dpo
  alignkit ppo --model runs/sft --reward-model runs/rm --prompts prompts.jsonl --output-dir runs/ppo
  alignkit rloo --model runs/sft --reward mymodule:score --prompts prompts.jsonl --k 4 --output-dir runs/rloo
  alignkit kto --model runs/sft --data labels/kto.jsonl --output-dir runs/kto
  alignkit judge --judge smollm2-135m-instruct --data samples.jsonl --output-dir labels   (an LM as annotator)
  alignkit serve --model runs/dpo --port 8000      (an OpenAI-compatible API at http://127.0.0.1:8000/v1)
  alignkit dpo --config dpo.yaml --max-steps 50      (flags override the YAML file)
"""


def _flag_type(annotation):
    """(argparse kwargs) for a config field's type: bools as --x/--no-x, literals as choices."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _flag_type(args[0])
    if origin is Literal:
        choices = typing.get_args(annotation)
        return {"choices": choices, "type": type(choices[0])}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": annotation, "metavar": annotation.__name__.upper()}


def add_config_flags(parser: argparse.ArgumentParser, cls: type[RunConfig], *, config_flag: bool = True) -> None:
    if config_flag:
        parser.add_argument("--config", metavar="FILE.yaml",
                            help="YAML file of settings (any option below, by its field name)")
    for name in cls.model_fields:
        add_field_flag(parser, cls, name)


def add_field_flag(parser: argparse.ArgumentParser, cls, name: str) -> None:
    """The flag of one config field: its type, choices, description and default from the field itself."""
    field = cls.model_fields[name]
    default = "required" if field.is_required() else f"default: {field.default}"
    parser.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS,
                        help=f"{field.description} ({default})".replace("%", "%%"), **_flag_type(field.annotation))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignkit",
        description="Align language models with human preferences: SFT, reward models, the DPO family, SimPO, ORPO, "
                    "KTO, Chain of Hindsight, PPO, RLOO, GRPO and online DPO.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"alignkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (cls, _, help_text) in TRAINERS.items():
        p = sub.add_parser(name, help=help_text, description=f"{help_text}. {cls.__doc__.strip()}")
        add_config_flags(p, cls)
    from alignkit.cli.sample import S, add_backend_flag, add_config_flag, add_sampling_flags
    from alignkit.lab.demo import DemoConfig

    demo = sub.add_parser("demo", help="the sentiment alignment demo: every method vs a gold reward, cached stages",
                          description=DemoConfig.__doc__ + " Stages finished in --output-dir are reused.")
    add_config_flags(demo, DemoConfig)
    ev = sub.add_parser("eval", help="evaluate policies against their reference: gold score, win rate, KL",
                        description="Sample every policy and the reference on the same held-out prompts and report "
                                    "the gold score (mean, 95%% CI), win rate against the reference by gold score, "
                                    "sampled sequence KL to the reference, response length and, with "
                                    "--reward-model, the reward model's score and its accuracy against gold.")
    add_config_flag(ev)
    ev.add_argument("--model", action="append", default=S, metavar="[NAME=]DIR",
                    help="a policy folder to evaluate (repeat for several); NAME defaults to the folder name (required)")
    ev.add_argument("--reference", default=S, help="the reference policy (KL and win rate are against it) (required)")
    ev.add_argument("--prompts", default=S, help="held-out prompt file (records with `prompt`) (required)")
    ev.add_argument("--gold", default=S, help="gold scorer: vader, sklearn:PATH (a joblib text classifier), module:function or file.py:function (default: vader; none when a judge is given)")
    ev.add_argument("--reward-model", default=S, help="also score with this reward model and report its accuracy against gold")
    ev.add_argument("--output-dir", default=S, help="folder for results.json and config.yaml (required)")
    ev.add_argument("--samples", type=int_at_least(1), default=S, help="responses per prompt and policy (default: 1)")
    add_sampling_flags(ev, max_new_tokens=48)
    ev.add_argument("--top-p", type=float_in(0, 1), default=S, help="nucleus sampling threshold (default: 1.0, off)")
    from alignkit.evaluate.config import EvalConfig

    add_field_flag(ev, EvalConfig, "mixed_precision")
    from alignkit.judges.config import JudgeSettings

    add_config_flags(ev, JudgeSettings, config_flag=False)  # --judge ...: also judge each policy against the reference
    ch = sub.add_parser("chat", help="talk to a trained policy (optionally side by side with a second model)",
                        description="Chat with a model through its chat template; with --compare a second model "
                                    "answers the same messages beside it. Reads messages from standard input.")
    add_config_flag(ch)
    ch.add_argument("--model", default=S, help="the policy folder (or hub id / built-in name) (required)")
    ch.add_argument("--compare", default=S, help="a second model to answer beside it (e.g. the reference)")
    ch.add_argument("--max-new-tokens", type=int_at_least(1), default=S, help="longest answer (default: 128)")
    ch.add_argument("--temperature", type=float_in(0), default=S, help="sampling temperature (default: 0.7)")
    ch.add_argument("--greedy", action="store_true", default=S, help="always pick the most likely token")
    ch.add_argument("--seed", type=int, default=S, help="sampling seed (default: 0)")
    add_backend_flag(ch)
    tiny = sub.add_parser("make-tiny-model", help="build a tiny random model + tokenizer for quick runs and tests",
                          description="Build a tiny randomly initialised causal LM and a BPE tokenizer trained on "
                                      "--data texts (optional), saved as a Hugging Face folder.")
    tiny.add_argument("--output-dir", required=True, help="folder to write the model to")
    tiny.add_argument("--data", help="JSON-lines file whose text fields train the tokenizer (optional)")
    tiny.add_argument("--arch", choices=["llama", "gpt2"], default="llama", help="architecture (default: llama)")
    tiny.add_argument("--vocab-size", type=int_at_least(1), default=512,
                      help="tokenizer vocabulary (default: 512; at least the 256 byte symbols and 3 special tokens)")
    tiny.add_argument("--hidden-size", type=int_at_least(8, multiple_of=8), default=64,
                      help="model width, a multiple of 8 (4 heads of an even size; default: 64)")
    tiny.add_argument("--layers", type=int_at_least(1), default=2, help="number of layers (default: 2)")
    from alignkit.cli.judge import add_judge_parser
    from alignkit.cli.label import add_label_parser
    from alignkit.cli.sample import add_sample_parser
    from alignkit.cli.serve import add_serve_parser

    add_sample_parser(sub)
    add_label_parser(sub)
    add_judge_parser(sub)
    add_serve_parser(sub)
    return parser


def _texts(path: str) -> list[str]:
    from alignkit.data import iter_raw

    out = []
    for _, rec in iter_raw(path):
        for v in rec.values():
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, list):
                out += [m["content"] for m in v if isinstance(m, dict) and isinstance(m.get("content"), str)]
                out += [s for s in v if isinstance(s, str)]
    return out


def _report(result) -> None:
    import json

    from accelerate import PartialState

    if not PartialState().is_main_process:  # several processes: the first one reports
        return
    print(f"saved to {result.output_dir} after {result.steps} steps")
    try:
        truncation = json.loads((result.output_dir / "run_info.json").read_text()).get("truncation") or {}
    except (OSError, ValueError, AttributeError):
        truncation = {}
    if truncation.get("prompt_truncated"):
        print(f"  {truncation['prompt_truncated']} prompts over --max-prompt-length were cut (their end kept)")
    if truncation.get("response_truncated"):
        print(f"  {truncation['response_truncated']} sequences over --max-length were cut")
    if result.eval:
        for k, v in result.eval.items():
            before = result.first_eval.get(k)
            arrow = f"{before:.4f} -> " if before is not None else ""
            print(f"  eval {k}: {arrow}{v:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if problem := check_utf8(parser, args):
        print(f"alignkit {args.command}: error: {problem}", file=sys.stderr)
        return 2
    try:
        if args.command == "make-tiny-model":
            from alignkit.models.tiny import make_tiny_model

            texts = _texts(args.data) if args.data else None
            out = make_tiny_model(args.output_dir, texts, arch=args.arch, vocab_size=args.vocab_size,
                                  hidden_size=args.hidden_size, num_layers=args.layers)
            print(f"tiny {args.arch} model written to {out}")
            return 0
        if args.command == "eval":
            return _eval(args)
        if args.command == "judge":
            from alignkit.cli.judge import run_judge

            return run_judge(args)
        if args.command == "serve":
            from alignkit.cli.serve import run_serve

            return run_serve(args)
        if args.command in ("label", "sample"):
            from alignkit.cli.label import run_label
            from alignkit.cli.sample import run_sample

            if args.command == "label":
                return run_label(args)
            return run_sample(args)
        if args.command == "chat":
            from alignkit.cli.chat import chat
            from alignkit.cli.sample import command_config
            from alignkit.rollout.backends import check_backend
            from alignkit.rollout.config import ChatConfig

            cfg = command_config(ChatConfig, args)
            check_backend(cfg.backend)
            quiet_model_libraries()
            return chat(cfg)
        if args.command == "demo":
            from alignkit.lab.demo import DemoConfig, run_demo

            overrides = {k: v for k, v in vars(args).items() if k in DemoConfig.model_fields}
            cfg = load_config(DemoConfig, file=args.config, overrides=overrides)
            quiet_model_libraries()
            run_demo(cfg)
            return 0
        cls, run, _ = TRAINERS[args.command]
        overrides = {k: v for k, v in vars(args).items() if k in cls.model_fields}
        cfg = load_config(cls, file=args.config, overrides=overrides)
        preflight(cfg)  # bad models and data are refused before the model libraries are imported
        quiet_model_libraries()
        _report(run(cfg))
        return 0
    except AlignkitError as e:
        print(f"alignkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alignkit {args.command}: interrupted; completed checkpoints are kept (resume with --resume)",
              file=sys.stderr)
        return 130


def _eval(args) -> int:
    from alignkit.cli.sample import command_config
    from alignkit.data import load_prompts
    from alignkit.evaluate.config import EvalConfig
    from alignkit.models.names import check_model
    from alignkit.rollout.backends import check_backend

    cfg = command_config(EvalConfig, args)
    check_backend(cfg.backend)
    if cfg.judged():
        from alignkit.judges import check_judge

        check_judge(cfg)
    policies = cfg.policies()
    for path in [*policies.values(), cfg.reference, *([cfg.reward_model] if cfg.reward_model else [])]:
        check_model(path)
    prompts, report = load_prompts(cfg.prompts)
    print(report.summary(), file=sys.stderr)
    prompts = prompts[: cfg.max_prompts] if cfg.max_prompts else prompts

    from alignkit.evaluate.run import evaluate_policies, results_table
    from alignkit.train.config import save_config

    quiet_model_libraries()
    results = evaluate_policies(policies, cfg.reference, prompts, cfg.gold_scorer(), reward_model=cfg.reward_model,
                                settings=cfg.settings(cfg.samples), output_dir=cfg.output_dir,
                                judge=cfg if cfg.judged() else None, mixed_precision=cfg.mixed_precision)
    save_config(cfg, Path(cfg.output_dir) / "config.yaml", method="eval")
    from alignkit.evaluate.report import frontier_plot, html_report

    table = results_table(results)
    out = Path(cfg.output_dir)
    frontier_plot(results, out / "frontier.png")
    html_report(results, out / "report.html", images={"Reward vs KL frontier": "frontier.png"}, table=table)
    print(table)
    print(f"results written to {out}/results.json, with report.html and frontier.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
