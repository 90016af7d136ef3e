"""alignkit: align language models with human preferences, end to end.

    from alignkit import DPOConfig, run_dpo
    run_dpo(DPOConfig(model="smollm2-135m-instruct", data="pairs.jsonl", output_dir="runs/dpo", loss="gdpo"))
"""

from alignkit.train import (
    CoHConfig,
    DPOConfig,
    GRPOConfig,
    KTOConfig,
    OnlineDPOConfig,
    PPOConfig,
    RewardConfig,
    RLOOConfig,
    SFTConfig,
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

__version__ = "0.1.0"

__all__ = ["SFTConfig", "RewardConfig", "DPOConfig", "KTOConfig", "CoHConfig", "PPOConfig", "RLOOConfig",
           "GRPOConfig", "OnlineDPOConfig", "run_sft", "run_reward", "run_dpo", "run_kto", "run_coh", "run_ppo", "run_rloo", "run_grpo",
           "run_online_dpo"]
