"""Tiny models built locally, for tests, benchmarks and `--quick` runs: no download needed.

`make_tiny_model(dir, texts)` trains a small byte-level BPE tokenizer on `texts` (with ChatML special tokens
and chat template), builds a randomly initialised Llama or GPT-2 of the requested size, and saves both as a
Hugging Face folder that every alignkit command accepts as `--model`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>"]

_DEFAULT_CORPUS = [
    "The film was wonderful, a great story with brilliant acting and a moving ending.",
    "The movie was terrible, a boring plot with awful acting and a dull ending.",
    "Write a short review of the film. It is a good film and I liked it a lot.",
    "Human: what is the capital of France? Assistant: The capital of France is Paris.",
    "A helpful answer: yes. An unhelpful answer: no. Numbers 0 1 2 3 4 5 6 7 8 9.",
]


def make_tokenizer(texts: Iterable[str] | None = None, *, vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on `texts`, with <pad>, <|im_start|> and <|im_end|> (= EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = list(texts) if texts is not None else []
    corpus += _DEFAULT_CORPUS
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def make_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str] | None = None,
    *,
    arch: str = "llama",
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 1024,
    seed: int = 0,
) -> str:
    """Build and save a tiny randomly initialised causal LM with its tokenizer; returns the folder."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(texts, vocab_size=vocab_size)
    ids = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
               bos_token_id=tok.bos_token_id)
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=num_layers,
                             num_attention_heads=num_heads, num_key_value_heads=num_heads,
                             max_position_embeddings=max_positions, tie_word_embeddings=True, **ids)
        model = LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_positions=max_positions,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(f"arch must be 'llama' or 'gpt2', not {arch!r}")
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
