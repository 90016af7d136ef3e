"""The training layer: one loop, thin per-method steps. Importable entry points mirror the CLI commands."""

from alignkit.train.config import (
    CoHConfig,
    DPOConfig,
    GRPOConfig,
    KTOConfig,
    OnlineDPOConfig,
    PPOConfig,
    RewardConfig,
    RLOOConfig,
    SFTConfig,
    TrainConfig,
    load_config,
)

__all__ = ["TrainConfig", "SFTConfig", "RewardConfig", "DPOConfig", "CoHConfig", "load_config",
           "PPOConfig", "RLOOConfig", "GRPOConfig", "KTOConfig", "OnlineDPOConfig", "run_sft", "run_reward", "run_dpo", "run_kto", "run_coh",
           "run_ppo", "run_rloo", "run_grpo", "run_online_dpo"]



def _lazy(module: str, name: str):
    """`name` from `alignkit.train.<module>`, imported on first call (keeps `import alignkit` and
    `alignkit --help` free of the model libraries), after `preflight` has checked the run's models and data."""

    def run(cfg):
        import importlib

        from alignkit.train.inputs import preflight

        preflight(cfg)
        return getattr(importlib.import_module(f"alignkit.train.{module}"), name)(cfg)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"Run `alignkit.train.{module}.{name}(cfg)`: train and save into cfg.output_dir."
    return run


run_sft = _lazy("sft", "run_sft")
run_reward = _lazy("reward", "run_reward")
run_dpo = _lazy("preference", "run_dpo")
run_kto = _lazy("kto", "run_kto")
run_coh = _lazy("coh", "run_coh")
run_ppo = _lazy("ppo", "run_ppo")
run_rloo = _lazy("rloo", "run_rloo")
run_grpo = _lazy("grpo", "run_grpo")
run_online_dpo = _lazy("online_dpo", "run_online_dpo")
