"""Tensor parallelism for inference (issue 21): `generate --tensor-parallel 2` under torchrun (2 gloo ranks,
each holding half of the heads, half of the MLP and half of the vocabulary, and half of the KV cache) prints
the continuation one process computes; sizes a model does not split into are refused in one line.

The reference is the same checkpoint decoded greedily by `generate` in this process (whole weights).
SmolLM2 under tp 3 (3 processes) is too slow for the suite on 2 cores: `python bench/tensor_parallel.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import llamalab
from llamalab import formats
from llamalab.config import ModelArgs, check_tensor_parallel, get_preset, supported_sizes
from llamalab.errors import LlamalabError
from llamalab.generate import decode_text, generate
from llamalab.model import Transformer

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, smollm2_gguf):
    """A random GQA model (4 query heads, 2 key/value heads, tied embeddings) with SmolLM2's tokenizer,
    initialized with peaked logits so greedy decoding has no near-ties for float reassociation to flip."""
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=49152, multiple_of=32,
                     max_seq_len=128, tie_embeddings=True)
    model = Transformer(args)
    model.init_weights(std=0.3, generator=torch.Generator().manual_seed(3))
    state = {k: v for k, v in model.state_dict().items() if k != "output.weight"}
    out = tmp_path_factory.mktemp("tiny") / "hf"
    formats.save(state, args, out, "hf", smollm2_gguf)
    return out


def cli(*args, nproc=1, timeout=240, command="generate", input=None):
    """`llamalab COMMAND ARGS` in a subprocess; with nproc > 1 under torchrun (gloo: the CPU)."""
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
              if nproc > 1 else [sys.executable])
    return subprocess.run([*launch, "-m", "llamalab", command, *args], capture_output=True, text=True,
                          timeout=timeout, input=input, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_generate_tp2_prints_the_one_process_continuation(tiny_checkpoint):
    ckpt = llamalab.load(tiny_checkpoint)
    prompt = ckpt.tokenizer.encode(PROMPT, bos=ckpt.tokenizer.add_bos)
    tokens = generate(ckpt.model, [prompt], max_new_tokens=24)[0]
    expected = decode_text(tokens, ckpt.tokenizer, stop_ids=ckpt.tokenizer.stop_ids)
    assert len(expected) > 20

    p = cli("--model", str(tiny_checkpoint), "--prompt", PROMPT, "--max-new-tokens", "24", "--tensor-parallel", "2",
            nproc=2)
    assert p.returncode == 0, p.stderr
    assert p.stdout == expected  # streamed once (by rank 0), the same text


def test_unsupported_sizes_are_one_clear_error(tiny_checkpoint):
    smollm2 = get_preset("smollm2-135m")  # 9 query heads, 3 key/value heads
    assert supported_sizes(smollm2) == [1, 3]
    with pytest.raises(LlamalabError, match="does not divide this model's 9 query heads, 3 key/value heads.*"
                                            "supported sizes: 1, 3"):
        check_tensor_parallel(smollm2, 2)

    p = cli("--model", str(tiny_checkpoint), "--prompt", PROMPT, "--tensor-parallel", "3")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith(
        "llamalab generate: error: tensor parallel size 3 does not divide this model's 4 query heads")
    p = cli("--model", str(tiny_checkpoint), "--prompt", PROMPT, "--tensor-parallel", "2")  # no torchrun
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "needs 2 processes" in p.stderr.strip().splitlines()[-1]


def test_plan_reports_memory_per_gpu_for_tp_times_fsdp(capsys):
    """`llamalab plan --tensor-parallel N`: the memory plan of N-way tensor (+ sequence) parallelism × FSDP2
    over the remaining GPUs: states sharded over all GPUs, activations divided by N (the planner's model)."""
    from llamalab.cli import main
    from llamalab.plan.planner import plan_training

    one = plan_training(model="llama-65b", gpus=2048, micro_batch=1)
    tp8 = plan_training(model="llama-65b", gpus=2048, micro_batch=1, tensor_parallel=8)
    assert tp8.setup["tensor_parallel"] == 8
    assert tp8.memory.activations == one.memory.activations // 8
    assert tp8.memory.weights == pytest.approx(one.memory.weights, rel=2e-2)  # 2048-way sharded either way (padding)
    assert main(["plan", "--model", "llama-65b", "--gpus", "2048", "--tensor-parallel", "8"]) == 0
    assert "tensor parallel 8 (+ sequence parallel) × fsdp over 256 groups" in capsys.readouterr().out
    for argv, message in ((["--tensor-parallel", "3"], "supported sizes: 1, 2, 4, 8, 16, 32, 64"),
                          (["--tensor-parallel", "8", "--gpus", "12"], "--tensor-parallel 8 must divide --gpus 12")):
        assert main(["plan", "--model", "llama-65b", *argv]) == 2
        assert message in capsys.readouterr().err


def test_training_layouts_that_cannot_work_are_one_clear_error(tmp_path):
    """Checked before anything is written: a launch too small for the tensor-parallel size, a size the heads
    do not split into, data-parallel groups without FSDP2, compile (not supported with tensor parallelism yet)."""
    from llamalab.train import load_config, train
    from llamalab.train.loop import check_layout
    from llamalab.train.parallel import World

    def cfg(**kw):
        return load_config(None, [(k, str(v).lower()) for k, v in kw.items()])

    with pytest.raises(LlamalabError, match="tensor_parallel 2 needs a multiple of 2 processes but this launch has 1"):
        train(cfg(tensor_parallel=2, data=tmp_path / "data", out_dir=tmp_path / "run"))  # apart: the output rule
    assert not (tmp_path / "run").exists()
    tiny = get_preset("tiny")  # 4 query heads, 2 key/value heads
    cases = [(cfg(tensor_parallel=4), World(world_size=4, tp=4), "does not divide this model's 4 query heads, "
                                                                 "2 key/value heads"),
             (cfg(tensor_parallel=2, sequence_parallel=True, seq_len=33), World(world_size=2, tp=2),
              "seq_len 33 must be a multiple of tensor_parallel 2"),
             (cfg(tensor_parallel=2, parallel="ddp"), World(world_size=4, tp=2), "make 2 data-parallel groups: set "
                                                                                 "parallel=fsdp"),
             (cfg(tensor_parallel=2, compile=True), World(world_size=2, tp=2), "compile=true with tensor_parallel")]
    for c, world, message in cases:
        with pytest.raises(LlamalabError, match=message):
            check_layout(c, tiny, world)
    check_layout(cfg(tensor_parallel=2, parallel="fsdp"), tiny, World(world_size=4, tp=2))  # tp 2 × fsdp 2: fine
