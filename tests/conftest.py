"""Shared fixtures: the real material from the asset cache (`llamalab assets fetch`, run by `make test`).

Missing material fails the test instead of skipping it: these tests are the point.
"""

from __future__ import annotations

import os

import pytest

from llamalab import assets
from llamalab.errors import LlamalabError


# A fixed thread count for the suite (torch's own default, every CPU, unless OMP_NUM_THREADS says otherwise):
# the commands' thread policy would otherwise follow the machine's load between tests, and float reductions
# (compared bit for bit across runs) with it. tests/test_threads.py takes this away where it tests the policy.
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))


def _asset(name: str):
    try:
        return assets.path(name)
    except LlamalabError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def smollm2_gguf():
    """SmolLM2-135M-Instruct, Q4_1 GGUF: a real LLaMA-architecture checkpoint."""
    return _asset("smollm2")


@pytest.fixture(scope="session")
def llama_spm_gguf():
    """llama.cpp's GGUF holding the real LLaMA 32K SentencePiece vocabulary (no tensors)."""
    return _asset("llama-spm")


@pytest.fixture(scope="session")
def benchmarks_dir():
    return _asset("benchmarks")


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_gguf):
    """transformers' own loading of the same GGUF (dequantized to fp32): the independent reference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                 torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    return model, tok


@pytest.fixture(scope="session")
def smollm2_fp32(smollm2_gguf):
    """Our own load of the same GGUF, dequantized to float32 (`llamalab.load`'s default), with its tokenizer:
    loaded once for every test that only reads it. Shared: never change its weights or modules in a test
    (change a `copy.deepcopy` of the model)."""
    import llamalab

    return llamalab.load(smollm2_gguf)
