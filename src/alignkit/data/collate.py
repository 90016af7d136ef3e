"""Collators: lists of token-id rows to padded tensors (input_ids, attention_mask, response_mask)."""

from __future__ import annotations

import torch


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int, *, side: str = "right") -> dict[str, torch.Tensor]:
    """Pad (ids, response_mask) rows to one length. `side` is "right" (training) or "left" (generation)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    response = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, mask) in enumerate(rows):
        n = len(ids)
        sl = slice(0, n) if side == "right" else slice(width - n, width)
        input_ids[i, sl] = torch.tensor(ids, dtype=torch.long)
        attention[i, sl] = 1
        response[i, sl] = torch.tensor(mask, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention, "response_mask": response}


def collate_sft(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """SFT items {"input_ids", "response_mask"} to a padded batch with `labels` (-100 where not trained)."""
    batch = pad_rows([(it["input_ids"], it["response_mask"]) for it in items], pad_id)
    batch["labels"] = batch["input_ids"].masked_fill(batch["response_mask"] == 0, -100)
    return batch


def collate_pairs(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pairs to ONE batch of 2B rows: chosen rows first, then rejected rows (one forward pass for both)."""
    rows = [(it["prompt"] + it["chosen"], [0] * len(it["prompt"]) + [1] * len(it["chosen"])) for it in items]
    rows += [(it["prompt"] + it["rejected"], [0] * len(it["prompt"]) + [1] * len(it["rejected"])) for it in items]
    batch = pad_rows(rows, pad_id)
    batch["label"] = torch.tensor([float(it.get("label", 1.0)) for it in items])
    batch["margin"] = torch.tensor([float(it.get("margin", 0.0)) for it in items])
    if "ref_chosen" in items[0]:
        batch["ref_chosen"] = torch.tensor([it["ref_chosen"] for it in items], dtype=torch.float32)
        batch["ref_rejected"] = torch.tensor([it["ref_rejected"] for it in items], dtype=torch.float32)
    if "ref_chosen_tokens" in items[0]:
        batch["ref_chosen_tokens"] = torch.tensor([it["ref_chosen_tokens"] for it in items], dtype=torch.float32)
        batch["ref_rejected_tokens"] = torch.tensor([it["ref_rejected_tokens"] for it in items], dtype=torch.float32)
    return batch


def collate_rankings(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Rankings (prompt + K responses, best first) to a batch of sum(K) rows and a (B, Kmax) index grid.

    `rank_index[b, k]` is the row of response k of item b, or -1 where item b has fewer responses."""
    rows, index = [], []
    kmax = max(len(it["responses"]) for it in items)
    for it in items:
        idx = []
        for r in it["responses"]:
            idx.append(len(rows))
            rows.append((it["prompt"] + r, [0] * len(it["prompt"]) + [1] * len(r)))
        index.append(idx + [-1] * (kmax - len(idx)))
    batch = pad_rows(rows, pad_id)
    batch["rank_index"] = torch.tensor(index, dtype=torch.long)
    return batch
