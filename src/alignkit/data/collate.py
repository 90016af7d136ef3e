"""Collators: token-id rows to batches. Every training batch has one layout (`pack_units`): sequences packed side
by side, or one per row for models that take no block mask. `pad_rows` pads plain rows (generation's left-padded
prompts, scoring outside training)."""

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


def _prompt_response(prompt: list[int], response: list[int], seq: int) -> list[Segment]:
    """One unit: `prompt + response` as one sequence, the response scored."""
    return [(prompt + response, [0] * len(prompt) + [1] * len(response), None, seq)]


def collate_sft(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """SFT items {"input_ids", "response_mask"}, one per row (`pack_units(one_per_row=True)`), with `labels`
    (-100 where not trained)."""
    batch = pack_units([[(it["input_ids"], it["response_mask"], None, i)] for i, it in enumerate(items)], pad_id,
                       one_per_row=True)
    batch["labels"] = batch["input_ids"].masked_fill(batch["response_mask"] == 0, -100)
    return batch


def collate_pairs(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pairs, one sequence per row: 2B rows, chosen rows first, then rejected rows (one forward pass for both);
    sequence i is row i, as in `pack_pairs`."""
    b = len(items)
    units = [_prompt_response(it["prompt"], it["chosen"], i) for i, it in enumerate(items)]
    units += [_prompt_response(it["prompt"], it["rejected"], b + i) for i, it in enumerate(items)]
    batch = pack_units(units, pad_id, one_per_row=True)
    batch.update(_pair_fields(items))
    return batch


def _pair_fields(items: list[dict]) -> dict[str, torch.Tensor]:
    """Per-pair tensors: soft label, margin, and cached reference log-probs when present."""
    out = {"label": torch.tensor([float(it.get("label", 1.0)) for it in items]),
           "margin": torch.tensor([float(it.get("margin", 0.0)) for it in items])}
    for key in ("ref_chosen", "ref_rejected"):
        if key in items[0]:
            out[key] = torch.tensor([it[key] for it in items], dtype=torch.float32)
    return out


def collate_rankings(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Rankings (prompt + K responses, best first), one sequence per row: sum(K) rows and a (B, Kmax) grid.

    `rank_index[b, k]` is the row (= sequence) of response k of item b, or -1 where item b has fewer responses."""
    return pack_rankings(items, pad_id, one_per_row=True)


GROUP_PAIRS = 16  # most pairs in one group: a bigger set of connected pairs is split


def group_pairs(items: list[dict]) -> list[dict]:
    """Encoded pairs grouped for a reward model: pairs of one prompt that share a response (directly or through
    other pairs) form one group, with its distinct responses and its pairs as `(chosen, rejected, label,
    margin)` response indices; a group of more than GROUP_PAIRS pairs is split. Collated with the rankings
    collators (`prompt` + `responses`), each response of a group is scored once: the K samples of a prompt
    that a panel compared pairwise cost K sequences, not K(K−1). Pairs that share nothing stay one group each,
    so for them a batch is the plain pairwise batch. Groups keep the order of their first pair."""
    parent: list[int] = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    seen: dict[tuple, int] = {}  # (prompt, response) -> first pair holding it
    for n, it in enumerate(items):
        for ids in (it["chosen"], it["rejected"]):
            key = (tuple(it["prompt"]), tuple(ids))
            if key in seen:
                parent[root(n)] = root(seen[key])
            else:
                seen[key] = n
    members: dict[int, list[int]] = {}  # in order of each group's first pair
    for n in range(len(items)):
        members.setdefault(root(n), []).append(n)
    groups = []
    for m in members.values():
        for c in range(0, len(m), GROUP_PAIRS):
            g: dict = {"prompt": items[m[c]]["prompt"], "responses": [], "pairs": []}
            at: dict[tuple[int, ...], int] = {}
            for n in m[c : c + GROUP_PAIRS]:
                ends = []
                for ids in (items[n]["chosen"], items[n]["rejected"]):
                    if tuple(ids) not in at:
                        at[tuple(ids)] = len(g["responses"])
                        g["responses"].append(ids)
                    ends.append(at[tuple(ids)])
                g["pairs"].append((ends[0], ends[1], float(items[n].get("label", 1.0)),
                                   float(items[n].get("margin", 0.0))))
            groups.append(g)
    return groups


def with_pair_index(batch: dict[str, torch.Tensor], items: list[dict]) -> dict[str, torch.Tensor]:
    """Adds the pairs of grouped items (`group_pairs`) to their rankings batch: `pair_chosen`/`pair_rejected`
    (the sequence numbers of each pair's responses, from `rank_index`), `label` and `margin`."""
    index = batch["rank_index"].tolist()
    pairs = [(index[b][i], index[b][j], lab, m) for b, it in enumerate(items) for i, j, lab, m in it["pairs"]]
    batch["pair_chosen"] = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    batch["pair_rejected"] = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    batch["label"] = torch.tensor([p[2] for p in pairs], dtype=torch.float32)
    batch["margin"] = torch.tensor([p[3] for p in pairs], dtype=torch.float32)
    return batch


# ---- padding-free packing -------------------------------------------------------------------------------
# A packed batch lays several sequences side by side in each row, up to a token budget, with no padding
# between them. Each token carries a segment id; a segment may name a parent segment whose tokens it also
# sees (the shared prompt of a chosen/rejected pair): token q attends to token k <= q when both are in the
# same segment or k is in q's parent. Positions restart in every segment (continuing after the parent's), so
# each sequence is computed exactly as it would be alone. The model side (`models.logprobs`) turns `segment`
# and `parent` into a block-diagonal 4D attention mask and reads what a step needs through flat indices:
#   score_index / score_label / score_seq: for every scored token, the flat (row * width + column) position
#       whose output predicts it, the token, and the sequence it belongs to;
#   last_index: for every sequence, the flat position of its last token (where a reward head reads);
#   response_tokens: for every sequence, its number of response tokens.
# Sequences are numbered in the order the caller gives them (pairs: all chosen first, then all rejected).

Segment = tuple[list[int], list[int], int | None, int | None]  # ids, scored mask, parent (index in unit), sequence


def pack_units(units: list[list[Segment]], pad_id: int, *, pack_tokens: int = 0, varlen: bool = True,
               one_per_row: bool = False) -> dict[str, torch.Tensor]:
    """Pack units (lists of segments that stay together in one row) into rows of at most `pack_tokens` tokens
    (or the longest unit, if longer; so 0 means rows as long as the longest unit), first-fit by decreasing
    length. `varlen` (kept in the batch) lets a model that can compute the real tokens in one flat row with
    attention per sequence do so (`models.varlen`); otherwise the rows and their block mask are computed.

    `one_per_row`: the padded form of the same layout, for models that take no block mask. Unit i is row i,
    right-padded, and must be one segment (no shared prompt); the batch's 2D `attention_mask` and its
    `response_mask` then describe it completely, and `one_per_row` is set in it."""
    sizes = [sum(len(s[0]) for s in u) for u in units]
    cap = max([pack_tokens, *sizes])
    rows: list[list[int]] = []  # unit indices per row
    room: list[int] = []
    if one_per_row:
        if any(len(u) != 1 for u in units):
            raise ValueError("one_per_row batches hold one segment per unit (no shared prompt)")
        rows, room = [[i] for i in range(len(units))], [cap - n for n in sizes]
    for i in [] if one_per_row else sorted(range(len(units)), key=lambda i: -sizes[i]):
        r = next((r for r, left in enumerate(room) if left >= sizes[i]), None)
        if r is None:
            rows.append([])
            room.append(cap)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= sizes[i]
    width = max(cap - left for left in room)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    position = torch.zeros(shape, dtype=torch.long)
    segment = torch.full(shape, -1, dtype=torch.long)
    parent = torch.full(shape, -1, dtype=torch.long)
    score_index, score_label, score_seq, last, resp = [], [], [], {}, {}
    seg_id = 0
    for r, members in enumerate(rows):
        col = 0
        for i in members:
            ends: list[tuple[int, int, int]] = []  # per segment of the unit: (id, last column, last position)
            for ids, mask, par, seq in units[i]:
                n = len(ids)
                start_pos = ends[par][2] + 1 if par is not None else 0
                sl = slice(col, col + n)
                input_ids[r, sl] = torch.tensor(ids, dtype=torch.long)
                position[r, sl] = torch.arange(start_pos, start_pos + n)
                segment[r, sl] = seg_id
                parent[r, sl] = ends[par][0] if par is not None else seg_id
                if seq is not None:
                    for j in range(n):
                        if not mask[j]:
                            continue
                        if j > 0:
                            pred = col + j - 1
                        elif par is not None:
                            pred = ends[par][1]
                        else:
                            continue  # a sequence's first token has no predictor
                        score_index.append(r * width + pred)
                        score_label.append(ids[j])
                        score_seq.append(seq)
                    last[seq] = r * width + col + n - 1
                    resp[seq] = sum(mask)
                ends.append((seg_id, col + n - 1, start_pos + n - 1))
                seg_id += 1
                col += n
    batch = {
        "input_ids": input_ids, "attention_mask": (segment >= 0).long(), "position_ids": position,
        "segment": segment, "parent": parent,
        "score_index": torch.tensor(score_index, dtype=torch.long),
        "score_label": torch.tensor(score_label, dtype=torch.long),
        "score_seq": torch.tensor(score_seq, dtype=torch.long),
        "last_index": torch.tensor([last[s] for s in sorted(last)], dtype=torch.long),
        "response_tokens": torch.tensor([resp[s] for s in sorted(resp)], dtype=torch.long),
        "varlen": varlen and not one_per_row,
    }
    if one_per_row:
        response = torch.zeros(shape, dtype=torch.long)
        for r, [i] in enumerate(rows):
            mask = units[i][0][1]
            response[r, : len(mask)] = torch.tensor(mask, dtype=torch.long)
        batch.update(one_per_row=True, response_mask=response)
    return batch


def pack_sft(items: list[dict], pad_id: int, *, pack_tokens: int, varlen: bool = True) -> dict[str, torch.Tensor]:
    """SFT items packed padding-free (see `pack_units`); one sequence per item."""
    return pack_units([[(it["input_ids"], it["response_mask"], None, i)] for i, it in enumerate(items)], pad_id,
                      pack_tokens=pack_tokens, varlen=varlen)


def _prompt_units(prompt: list[int], responses: list[tuple[list[int], int]], shared: bool) -> list[list[Segment]]:
    """Units for one prompt and its (response ids, sequence number) list: the prompt laid out once with every
    response attending to it (`shared`, non-empty prompt), or one prompt + response sequence per response."""
    if shared and prompt:
        return [[(prompt, [0] * len(prompt), None, None)] + [(r, [1] * len(r), 0, seq) for r, seq in responses]]
    return [_prompt_response(prompt, r, seq) for r, seq in responses]


def pack_rankings(items: list[dict], pad_id: int, *, pack_tokens: int = 0, shared_prompt: bool = True,
                  varlen: bool = True, one_per_row: bool = False) -> dict[str, torch.Tensor]:
    """Rankings packed padding-free, with the same `rank_index` grid as `collate_rankings`; with `shared_prompt`
    the prompt is laid out once for all of an item's responses."""
    units: list[list[Segment]] = []
    index, seq = [], 0
    kmax = max(len(it["responses"]) for it in items)
    for it in items:
        rs = it["responses"]
        index.append(list(range(seq, seq + len(rs))) + [-1] * (kmax - len(rs)))
        units += _prompt_units(it["prompt"], [(r, seq + j) for j, r in enumerate(rs)], shared_prompt and not one_per_row)
        seq += len(rs)
    batch = pack_units(units, pad_id, pack_tokens=pack_tokens, varlen=varlen, one_per_row=one_per_row)
    batch["rank_index"] = torch.tensor(index, dtype=torch.long)
    return batch


def pack_pairs(items: list[dict], pad_id: int, *, pack_tokens: int, shared_prompt: bool = True,
               varlen: bool = True) -> dict[str, torch.Tensor]:
    """Pairs packed padding-free: sequence i is item i's chosen response, sequence B + i its rejected one. With
    `shared_prompt` the prompt is laid out once and both responses see it; otherwise each response is a full
    prompt + response sequence of its own. Carries the same per-pair fields as `collate_pairs`."""
    b = len(items)
    units: list[list[Segment]] = []
    for i, it in enumerate(items):
        units += _prompt_units(it["prompt"], [(it["chosen"], i), (it["rejected"], b + i)], shared_prompt)
    batch = pack_units(units, pad_id, pack_tokens=pack_tokens, varlen=varlen)
    batch.update(_pair_fields(items))
    return batch


def pack_responses(prompts: list[list[int]], responses: list[list[int]], pad_id: int, *,
                   varlen: bool = True, one_per_row: bool = False) -> dict[str, torch.Tensor]:
    """Sampled responses packed padding-free: sequence i is `prompts[i] + responses[i]` with the response scored;
    rows with the same non-empty prompt (the k samples of a prompt in RLOO) share one copy of it. With
    `one_per_row`, sequence i is row i instead. The first token of a response to an empty prompt has no
    predictor and is not scored."""
    if one_per_row:
        return pack_units([_prompt_response(p, r, i) for i, (p, r) in enumerate(zip(prompts, responses, strict=True))],
                          pad_id, one_per_row=True)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(tuple(p), []).append(i)
    units: list[list[Segment]] = []
    for p, rows in groups.items():
        units += _prompt_units(list(p), [(responses[i], i) for i in rows], True)
    return pack_units(units, pad_id, pack_tokens=0, varlen=varlen)
