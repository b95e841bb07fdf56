"""LLaMA-Adapter in peft's `adaption_prompt` layout: an adapter made and saved by peft itself (its gates set away
from their zero init, so that the adapter changes the answer) on a small random LLaMA written by transformers,
loaded by `--adapter` into our model: the same logits within 1e-4 and the same greedy tokens as peft's model
(through our KV-cached engine); an adapter for another model is one clear error."""

from __future__ import annotations

import pytest
import torch
from peft import AdaptionPromptConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from llamalab.errors import LlamalabError
from llamalab.formats import load
from llamalab.generate import generate

IDS = [[1, 5, 9, 14, 3, 27, 8, 40]]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama-adapter")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128)
    base = LlamaForCausalLM(cfg).eval()
    base.save_pretrained(root / "base")
    peft_model = get_peft_model(base, AdaptionPromptConfig(adapter_len=5, adapter_layers=2, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if name.endswith("adaption_gate"):
                p.fill_(0.8)
    peft_model.save_pretrained(root / "adapter")
    return peft_model.eval(), root


@torch.no_grad()
def test_logits_and_greedy_tokens_equal_peft(pair):
    peft_model, root = pair
    ours = load(root / "base", adapter=root / "adapter", tokenizer=False).model
    plain = load(root / "base", tokenizer=False).model
    ids = torch.tensor(IDS)
    expected = peft_model(input_ids=ids).logits
    got = ours(ids)
    assert (got - expected).abs().max() < 1e-4
    assert (plain(ids) - expected).abs().max() > 1e-2  # the adapter matters
    tokens = peft_model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0)[0, 8:].tolist()
    assert generate(ours, IDS, max_new_tokens=6)[0] == tokens


def test_an_adapter_for_another_model_is_one_line(pair, tmp_path):
    _, root = pair
    torch.manual_seed(1)
    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(LlamalabError, match="do not fit adapter_len=5 on a base of width 48") as e:
        load(tmp_path / "other", adapter=root / "adapter", tokenizer=False)
    assert "\n" not in str(e.value)
