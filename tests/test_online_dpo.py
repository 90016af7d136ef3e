"""Online DPO (`alignkit online-dpo`): two samples per prompt from the current policy, the better one by the reward
chosen; the pairs it trains on are ordered by the reward and ties left out, and the reward rises."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from alignkit import OnlineDPOConfig, run_online_dpo
from alignkit.errors import ConfigError
from alignkit.train.config import load_config
from alignkit.train.online_dpo import preference_pairs
from test_rl import COMMON, REWARD_PY, metrics, rl_setup  # noqa: F401 (fixture)


def test_pairs_are_ordered_by_score_and_ties_left_out():
    scores = torch.tensor([0.1, 0.7, 0.5, -0.2, 0.3, 0.3, -1.0, 2.0])
    chosen, rejected = preference_pairs(scores)
    assert chosen.tolist() == [1, 2, 7] and rejected.tolist() == [0, 3, 6]


@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_online_dpo_raises_reward(rl_setup, tmp_path, loss):  # noqa: F811
    out = tmp_path / loss
    res = run_online_dpo(OnlineDPOConfig(model=rl_setup["policy"], prompts=rl_setup["prompts"],
                                         reward=rl_setup["reward"], output_dir=str(out), max_steps=12, batch_size=16,
                                         loss=loss, **COMMON))
    assert res.first_eval["kl"] == pytest.approx(0.0, abs=1e-5)
    assert res.eval["reward"] > res.first_eval["reward"] + 0.5, (res.first_eval, res.eval)
    train = [m for m in metrics(out) if m["split"] == "train"]
    assert len(train) == 12 and all(0 <= m["tied_share"] < 1 and m["score_margin"] > 0 for m in train)


def test_online_dpo_settings():
    base = dict(model="m", prompts="p", reward="vader", output_dir="o")
    assert OnlineDPOConfig(**base).beta == 0.1
    with pytest.raises(ConfigError, match="keeps β fixed"):
        load_config(OnlineDPOConfig, overrides={**base, "adaptive_kl": True})
    with pytest.raises(ConfigError, match="loss"):
        load_config(OnlineDPOConfig, overrides={**base, "loss": "simpo"})


class _WordJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge server with a known taste: P(A) = σ(8 (s_A − s_B)), s the good-word score of
    tests/test_rl.py, read from the helpful rubric's layout; it answers with the top log-probs of one token."""

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        a = text.split("Response A:\n", 1)[1].split("\n\nResponse B:\n", 1)[0]
        b = text.split("\n\nResponse B:\n", 1)[1].rsplit("\n\nWhich response", 1)[0]
        ns: dict = {}
        exec(REWARD_PY, ns)  # noqa: S102 (the test's own scoring code)
        sa, sb = ns["score"]([], [a, b])
        pa = 1 / (1 + math.exp(-8 * (sa - sb)))
        tops = [{"token": "A", "logprob": math.log(max(pa, 1e-12))}, {"token": "B", "logprob": math.log(max(1 - pa, 1e-12))}]
        out = json.dumps({"id": "j", "object": "chat.completion", "created": 0, "model": "words", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": "A" if pa >= 0.5 else "B"}, "finish_reason": "length",
            "logprobs": {"content": [{**max(tops, key=lambda t: t["logprob"]), "top_logprobs": tops}]}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def test_online_dpo_with_a_judge_raises_what_the_judge_prefers(rl_setup, tmp_path):  # noqa: F811
    """A judge server that prefers the response with more good words labels the pairs; the policy's good-word
    reward (which the run never sees) rises as with the reward itself."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WordJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    out = tmp_path / "judged"
    try:
        run_online_dpo(OnlineDPOConfig(model=rl_setup["policy"], prompts=rl_setup["prompts"], judge_url=url,
                                       judge_model="words", judge_cache=str(tmp_path / "c.jsonl"), output_dir=str(out),
                                       max_steps=12, batch_size=16, **COMMON))
    finally:
        server.shutdown()
        server.server_close()
    train = [m for m in metrics(out) if m["split"] == "train"]
    assert len(train) == 12 and all(0 <= m["tied_share"] < 1 and m["score_margin"] > 0 for m in train)
    from alignkit.data import load_prompts
    from alignkit.models.load import load_tokenizer
    from alignkit.rollout.rewards import CallableReward
    from alignkit.rollout.sample import SampleSettings, sample_policy

    prompts, _ = load_prompts(rl_setup["prompts"])
    s = SampleSettings(max_new_tokens=12, samples=1, seed=5)
    reward = CallableReward(rl_setup["reward"])
    before = reward(*_texts(sample_policy(rl_setup["policy"], load_tokenizer(rl_setup["policy"]), prompts[:64], s)))
    after = reward(*_texts(sample_policy(str(out), load_tokenizer(str(out)), prompts[:64], s)))
    assert float(after.mean()) > float(before.mean()) + 0.3, (float(before.mean()), float(after.mean()))


def _texts(sm):
    return sm.prompts, sm.responses


def test_online_dpo_takes_exactly_one_labeller():
    base = dict(model="m", prompts="p", output_dir="o")
    assert OnlineDPOConfig(**base, judge="j").judge == "j"
    for extra in ({}, {"reward": "vader", "judge": "j"}, {"reward_model": "r", "judge_url": "http://x/v1"}):
        with pytest.raises(ConfigError, match="or a judge"):
            load_config(OnlineDPOConfig, overrides={**base, **extra})
