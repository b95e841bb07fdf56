"""`llamalab serve --compile`: the decode step through torch.compile, compiled at startup for a batch of one and
of two (`Engine.warm_up`), answers lone and concurrent requests token for token as `llamalab generate` does
eagerly on the same checkpoint.

The checkpoint is a random GQA model (4 query heads, 2 key/value heads, tied embeddings) with SmolLM2's tokenizer,
float32, loaded like any checkpoint (its projections on the CPU float kernel, an op the compiled graph calls):
compiling its 2 layers takes seconds where SmolLM2's 30 take minutes on 2 cores. Its logits are peaked (init std
0.3), so greedy decoding has no near-ties for the compiled step's float reassociation to flip. SmolLM2's own
compiled decode step is checked against transformers' greedy tokens in test_generate_smollm2.py, batched compiled
decoding against eager in test_engine.py; test_serve.py runs the whole API on SmolLM2 eagerly.
"""

from __future__ import annotations

import asyncio
import contextlib
import io

import openai
import pytest
import torch

from llamalab import formats
from llamalab.cli import main as cli_main
from llamalab.config import ModelArgs
from llamalab.device import has_cxx_compiler
from llamalab.model import Transformer
from llamalab.serve.process import ServerProcess

N = 12  # new tokens per answer
PROMPTS = ["The capital of France is", "Once upon a time"]
QUESTION = "What is the capital of France?"

pytestmark = pytest.mark.skipif(not has_cxx_compiler(), reason="torch.compile on CPU needs a C++ compiler")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_gguf):
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=49152, multiple_of=32,
                     max_seq_len=128, tie_embeddings=True)
    model = Transformer(args)
    model.init_weights(std=0.3, generator=torch.Generator().manual_seed(3))
    state = {k: v for k, v in model.state_dict().items() if k != "output.weight"}
    return formats.save(state, args, tmp_path_factory.mktemp("tiny") / "hf", "hf", smollm2_gguf)


def generate(tiny, *args) -> str:
    """`llamalab generate` in this process: eager, float32, greedy."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["generate", "--model", str(tiny), "--max-new-tokens", str(N), "--no-stream",
                         "--dtype", "float32", *args]) == 0
    return out.getvalue()


def test_compiled_server_answers_like_eager_generate(tiny, tmp_path):
    expected = [generate(tiny, "--chat", "--prompt", QUESTION)] + [generate(tiny, "--prompt", p) for p in PROMPTS]
    assert all(expected)
    inductor = tmp_path / "inductor"  # the server's own inductor cache: what it compiled at startup lands there
    server = ServerProcess(tiny, "--max-batch", "4", "--context", "128", "--served-model-name", "tiny", "--no-ui",
                           "--dtype", "float32", "--compile", log=tmp_path / "server.log", startup_timeout=600,
                           env={"TORCHINDUCTOR_CACHE_DIR": str(inductor)})
    try:
        assert any(f.is_file() for f in inductor.rglob("*")), server.log()  # compiled before the first request

        async def ask(c, i):
            if i % 3 == 0:
                r = await c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                                    max_tokens=N, temperature=0)
                return r.choices[0].message.content
            r = await c.completions.create(model="tiny", prompt=PROMPTS[i % 3 - 1], max_tokens=N, temperature=0)
            return r.choices[0].text

        async def together(count):
            async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=300) as c:
                return await asyncio.gather(*(ask(c, i) for i in range(count)))

        assert asyncio.run(together(1)) == expected[:1]  # alone: the batch-of-one graph
        before = server.metrics()
        assert asyncio.run(together(6)) == expected * 2  # together: the dynamic-batch graph, slots filling and freeing
        after = server.metrics()
        steps = after["llamalab_decode_batch_size_count"] - before["llamalab_decode_batch_size_count"]
        single = (after['llamalab_decode_batch_size_bucket{le="1.0"}']
                  - before['llamalab_decode_batch_size_bucket{le="1.0"}'])
        assert steps - single > 0  # some steps advanced several sequences at once
    finally:
        assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log()
