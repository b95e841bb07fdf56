"""Conversations → token ids with loss masks, and the batches the training loop draws from them.

Loss only on what the model has to write. For every assistant turn i, two texts are rendered with the
chat template `llamalab chat` uses: the prompt chat would send before that turn (messages[:i] plus the
generation prompt) and the conversation through the turn (messages[:i+1]). Both are tokenized as chat
tokenizes them; the turn's targets are the tokens the second has beyond the first — the answer and its
end-of-turn token. System, user and template tokens are never targets. A plain prompt/completion record
is the same with raw text: BOS as `llamalab generate` adds it, EOS after the completion.

Batches are length-grouped: each run of 16 global batches of the shuffled stream is sorted by length
(little padding) and its batches are drawn in a random order; padding never counts in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..chat_templates import render_for, resolve_template
from ..errors import LlamalabError
from ..train.loop import IGNORE_INDEX


@dataclass
class Example:
    ids: np.ndarray  # int32 token ids
    targets: np.ndarray  # bool per token: True where the model is trained to predict this token

    def __len__(self) -> int:
        return len(self.ids)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    diff = np.nonzero(np.asarray(a[:n]) != np.asarray(b[:n]))[0]
    return int(diff[0]) if diff.size else n


def turn_texts(example: dict, tokenizer, template: str, where: str) -> tuple[list[str], bool]:
    """(texts to tokenize, bos): [whole, prompt_1, through_1, prompt_2, through_2, ...], rendered with the chat
    template (LLaVA's data renders its conversations through it too)."""
    if "prompt" in example:
        whole = example["prompt"] + example["completion"]
        return [whole, example["prompt"], whole], tokenizer.add_bos
    msgs = example["messages"]
    turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    try:
        texts = [render_for(tokenizer, msgs[:turns[-1] + 1], template, add_generation_prompt=False)]
        for i in turns:
            texts += [render_for(tokenizer, msgs[:i], template, add_generation_prompt=True),
                      render_for(tokenizer, msgs[:i + 1], template, add_generation_prompt=False)]
    except LlamalabError as e:
        raise LlamalabError(f"{where}: {e}") from None
    return texts, False  # a chat template places BOS itself


def masked_example(ids_list: list[list[int]], eos: int | None, completion: bool) -> Example:
    """The ids of `turn_texts` → the whole sequence, its targets the answer tokens (each prompt_k..through_k)."""
    whole = ids_list[0] + ([eos] if completion and eos is not None else [])
    targets = np.zeros(len(whole), dtype=bool)
    for k in range(1, len(ids_list), 2):
        prompt, through = ids_list[k], ids_list[k + 1] + ([eos] if completion and eos is not None else [])
        # normally len(prompt) and len(through); a BPE merge across a boundary moves them to where they differ
        targets[_common_prefix(prompt, through):_common_prefix(through, whole)] = True
    return Example(np.asarray(whole, dtype=np.int32), targets)


def encode_examples(examples: list[tuple[str, dict]], tokenizer, template: str | None, max_len: int,
                    progress: bool = False) -> tuple[list[Example], dict]:
    """Token ids and target masks of every example, cut to max_len tokens; returns (examples, counts) with
    counts of examples used, truncated (cut, still with targets) and skipped (no target token left)."""
    template = resolve_template(template, tokenizer) if any("messages" in e for _, e in examples) else None
    rendered = [turn_texts(e, tokenizer, template, where) for where, e in examples]
    flat = [(t, bos) for texts, bos in rendered for t in texts]
    ids: list[list[int]] = [[] for _ in flat]
    groups = {bos: [k for k, (_, b) in enumerate(flat) if b == bos] for bos in (False, True)}
    work = [(bos, idx[lo:lo + 512]) for bos, idx in groups.items() for lo in range(0, len(idx), 512)]
    if progress:
        from tqdm import tqdm

        work = tqdm(work, desc="tokenize", unit="chunk", leave=False)
    for bos, idx in work:
        for k, e in zip(idx, tokenizer.encode_batch([flat[k][0] for k in idx], bos=bos)):
            ids[k] = e
    out, counts, pos = [], {"examples": len(examples), "used": 0, "truncated": 0, "skipped": 0}, 0
    for (texts, _), (_, example) in zip(rendered, examples):
        ex = masked_example(ids[pos:pos + len(texts)], tokenizer.eos_id, "prompt" in example)
        pos += len(texts)
        cut = len(ex) > max_len
        if cut:
            ex = Example(ex.ids[:max_len], ex.targets[:max_len])
        if not ex.targets[1:].any():  # the answer starts beyond max_len
            counts["skipped"] += 1
            continue
        counts["used"] += 1
        counts["truncated"] += cut
        out.append(ex)
    return out, counts


def split(examples: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """(train, val): a seeded random `val_fraction` of the examples held out (at least one when > 0)."""
    if not 0 <= val_fraction < 1:
        raise LlamalabError(f"val_split must be in [0, 1), got {val_fraction}")
    n_val = 0 if val_fraction == 0 else max(1, round(val_fraction * len(examples)))
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(examples))
    held = set(order[:n_val].tolist())
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


def collate(rows: list[Example | None], pad_id: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of shape (len(rows), T): T the longest row rounded up to a multiple of 8, at most
    seq_len; padding (and None rows) has IGNORE_INDEX targets."""
    longest = max((len(r) - 1 for r in rows if r is not None), default=1)
    T = min(seq_len, -(-longest // 8) * 8)
    x = np.full((len(rows), T), pad_id, dtype=np.int64)
    y = np.full((len(rows), T), IGNORE_INDEX, dtype=np.int64)
    for i, r in enumerate(rows):
        if r is not None:
            n = len(r) - 1
            x[i, :n] = r.ids[:-1]
            y[i, :n] = np.where(r.targets[1:], r.ids[1:], IGNORE_INDEX)
    return torch.from_numpy(x), torch.from_numpy(y)


class InstructionLoader:
    """Infinite (inputs, targets) batches: epochs of seeded permutations, grouped by length. Rank r takes
    rows [r·B, (r+1)·B) of every global batch. The state is the step count (`state_dict`)."""

    GROUP = 16  # global batches sorted together

    def __init__(self, examples: list[Example], *, batch_size: int, seq_len: int, seed: int, pad_id: int,
                 rank: int = 0, world_size: int = 1):
        if not examples:
            raise LlamalabError("no training examples left (all were skipped or held out)")
        self.examples, self.batch_size, self.seq_len, self.seed = examples, batch_size, seq_len, int(seed)
        self.pad_id, self.rank, self.world_size = pad_id, rank, world_size
        self.step = 0
        self._chunk: tuple[int, list[list[int]]] | None = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def _example_at(self, positions: np.ndarray) -> np.ndarray:
        n = len(self.examples)
        epochs, idx = np.divmod(positions, n)
        out = np.empty_like(positions)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = np.random.default_rng([self.seed, int(e)]).permutation(n)[idx[sel]]
        return out

    def _batches_of_chunk(self, c: int) -> list[list[int]]:
        gb = self.global_batch
        ids = self._example_at(np.arange(c * gb * self.GROUP, (c + 1) * gb * self.GROUP))
        ids = sorted(ids.tolist(), key=lambda i: -len(self.examples[i]))
        batches = [ids[k * gb:(k + 1) * gb] for k in range(self.GROUP)]
        order = np.random.default_rng([self.seed, int(c), 1]).permutation(self.GROUP)
        return [batches[k] for k in order]

    def __iter__(self):
        return self

    def next_rows(self) -> list[Example]:
        """This rank's examples of the next batch."""
        c, k = divmod(self.step, self.GROUP)
        if self._chunk is None or self._chunk[0] != c:
            self._chunk = (c, self._batches_of_chunk(c))
        rows = self._chunk[1][k][self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        self.step += 1
        return [self.examples[i] for i in rows]

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return collate(self.next_rows(), self.pad_id, self.seq_len)

    def epochs(self) -> float:
        return self.step * self.global_batch / len(self.examples)

    def state_dict(self) -> dict:
        return {"step": self.step, "examples": len(self.examples), "seed": self.seed,
                "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        for key in ("examples", "seed", "global_batch"):
            if state.get(key) != self.state_dict()[key]:
                raise LlamalabError(f"data loader state has {key}={state.get(key)!r} but this run has "
                                    f"{self.state_dict()[key]!r}; resume with the same data and batch settings")
        self.step = int(state["step"])


def held_out_batches(examples: list[Example], *, batch_size: int, seq_len: int, pad_id: int, rank: int = 0,
                     world_size: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every held-out example once, longest first, in global batches; each rank gets the same number of
    batches (a short last batch is filled with empty rows that count for nothing)."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]))
    gb = batch_size * world_size
    out = []
    for lo in range(0, len(order), gb):
        mine = order[lo:lo + gb][rank * batch_size:(rank + 1) * batch_size]
        rows = [examples[i] for i in mine] + [None] * (batch_size - len(mine))
        out.append(collate(rows, pad_id, seq_len))
    return out
