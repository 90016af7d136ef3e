"""Sampling with vLLM's offline engine (`--backend vllm`; GPU only, imported only when chosen).

The engine holds its own copy of the policy's weights. Before sampling, `generate` compares the policy's parameter
versions (PyTorch bumps a tensor's version at every in-place update, as an optimizer step makes) with those of the
last copy, and when they changed loads the current weights into the engine: all of them, with a LoRA adapter
merged into them first (names as in the base model). Each prompt gets its own sampling seed drawn from the
caller's generator, so the k samples of one prompt differ and a seeded run repeats.

Log-probs are not taken from vLLM (its kernels round differently from the training forward, and the update needs
the training model's own numbers): the rollout carries none (`exact_logprobs = False`) and the callers rescore the
samples with the policy, as for any backend that gives none.
"""

from __future__ import annotations

import os
import time

import torch

from alignkit.rollout.engine import Rollout, SamplingParams

GPU_MEMORY_SHARE = 0.3  # of the GPU for vLLM's weights and KV cache; the rest stays for training


def _merged_weights(model):
    """(name, tensor) of the policy's weights as the base model names them, a LoRA adapter merged in."""
    if not hasattr(model, "merge_adapter"):
        return list(model.state_dict().items()), None
    model.merge_adapter()
    weights = []
    for name, t in model.state_dict().items():
        if "lora_" in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        weights.append((name, t))
    return weights, model.unmerge_adapter


class VLLMBackend:
    exact_logprobs = False

    def __init__(self, model: str, *, seed: int = 0, gpu_memory_utilization: float = GPU_MEMORY_SHARE):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: weights load in place
        from vllm import LLM

        from alignkit.models.names import BUILTIN_MODELS, builtin_folder

        path = str(builtin_folder(model)) if model in BUILTIN_MODELS else model
        self.llm = LLM(model=path, seed=seed, gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True)
        self._versions: tuple | None = None

    def sync(self, model) -> None:
        """Load the policy's weights into the engine if they changed since the last load."""
        versions = tuple(p._version for p in model.parameters())
        if versions == self._versions:
            return
        weights, undo = _merged_weights(model)
        try:
            runner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner
            runner.model.load_weights(weights)
        finally:
            if undo is not None:
                undo()
        self.llm.reset_prefix_cache()
        self._versions = versions

    @torch.no_grad()
    def generate(self, model, prompts: list[list[int]], params: SamplingParams, *, pad_id: int, eos_id: int,
                 generator: torch.Generator | None = None) -> Rollout:
        from vllm import SamplingParams as VParams
        from vllm.inputs import TokensPrompt

        self.sync(model)
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=generator,
                              device=generator.device if generator is not None else "cpu").tolist()
        sampling = [VParams(n=1, temperature=0.0 if params.greedy else params.temperature, top_p=params.top_p,
                            top_k=params.top_k if params.top_k else -1, max_tokens=params.max_new_tokens, seed=s,
                            stop_token_ids=[eos_id]) for s in seeds]
        t0 = time.perf_counter()
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sampling, use_tqdm=False)
        seconds = time.perf_counter() - t0
        responses, finished = [], []
        for o in outs:
            ids = list(o.outputs[0].token_ids)
            done = o.outputs[0].finish_reason == "stop"
            if done and (not ids or ids[-1] != eos_id):
                ids.append(eos_id)  # the response ends with its EOS, as the HF backend's do
            responses.append(ids)
            finished.append(done)
        device = next(model.parameters()).device
        return rollout_from_tokens(prompts, responses, finished, pad_id, device, seconds)


def rollout_from_tokens(prompts: list[list[int]], responses: list[list[int]], finished: list[bool], pad_id: int,
                        device, seconds: float = 0.0) -> Rollout:
    """A `Rollout` (prompts left-padded, responses right-padded) of sampled token lists, with no log-probs."""
    width, steps = max(map(len, prompts)), max(1, max(map(len, responses)))
    rows = len(prompts)
    input_ids = torch.full((rows, width + steps), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    response_mask = torch.zeros((rows, steps), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        input_ids[i, width - len(p) : width] = torch.tensor(p, dtype=torch.long)
        input_ids[i, width : width + len(r)] = torch.tensor(r, dtype=torch.long)
        attention[i, width - len(p) : width + len(r)] = 1
        response_mask[i, : len(r)] = 1
    return Rollout(input_ids.to(device), attention.to(device), width, response_mask.to(device),
                   torch.zeros(response_mask.shape, device=device), torch.tensor(finished, device=device),
                   seconds=seconds, entropy=None)
