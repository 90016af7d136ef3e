"""The training layer: one loop, thin per-method steps. Importable entry points mirror the CLI commands."""

from alignkit.train.config import (
    CoHConfig,
    DPOConfig,
    PPOConfig,
    RewardConfig,
    RLOOConfig,
    SFTConfig,
    TrainConfig,
    load_config,
)

__all__ = ["TrainConfig", "SFTConfig", "RewardConfig", "DPOConfig", "CoHConfig", "load_config",
           "PPOConfig", "RLOOConfig", "run_sft", "run_reward", "run_dpo", "run_coh", "run_ppo", "run_rloo"]


def run_sft(cfg):
    from alignkit.train.sft import run_sft as run

    return run(cfg)


def run_reward(cfg):
    from alignkit.train.reward import run_reward as run

    return run(cfg)


def run_dpo(cfg):
    from alignkit.train.preference import run_dpo as run

    return run(cfg)


def run_coh(cfg):
    from alignkit.train.coh import run_coh as run

    return run(cfg)


def run_ppo(cfg):
    from alignkit.train.ppo import run_ppo as run

    return run(cfg)


def run_rloo(cfg):
    from alignkit.train.rloo import run_rloo as run

    return run(cfg)
