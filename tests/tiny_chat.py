"""The fine-tuning tests' shared material: a small random checkpoint (2 layers) that carries SmolLM2's real
tokenizer and chat template, and the first 40 pairs of the committed instruction set."""

from __future__ import annotations

import pytest

from llamalab.config import get_preset
from llamalab.data.instructions import PAIRS
from llamalab.formats import save
from llamalab.tokenizer import load_tokenizer
from tiny import random_state

ARGS = get_preset("tiny").replace(vocab_size=49152, tie_embeddings=True, max_seq_len=256)  # 2 layers


@pytest.fixture(scope="module")
def base(tmp_path_factory, smollm2_gguf):
    out = tmp_path_factory.mktemp("base") / "tiny-chat"
    save(random_state(ARGS), ARGS, out, "hf", tokenizer_src=load_tokenizer(smollm2_gguf))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    out.write_text("".join(PAIRS.read_text().splitlines(keepends=True)[:40]))
    return out
