"""llama.cpp reads the LLaVA pair we write: `llamalab convert` turns a llava-hf checkpoint (random, written by
transformers) into a text GGUF + mmproj, and llama.cpp's multimodal library (libmtmd, through
llama-cpp-python's ctypes bindings) runs it: its prompt tokens, image embeddings and greedy tokens against
ours (`load_runnable(..., mmproj=...)`, what `llamalab generate --mmproj --image` runs) on the same files.

    python bench/mmproj_llama_cpp.py [--tokens 16]

Three checkpoints: the vision tests' tiny one (image 28, patch 14, width 24), a CLIP-shaped one (image 224,
patch 14, width 64, 16×16 patches) and a SigLIP-shaped one (the same sizes, no class token, every patch
kept: vision_feature_select_strategy "full"); each written f32 and f16; two pictures: one exactly the tower's size
(no resize on either side) and a 64×48 one (llama.cpp pads to a square and resizes; CLIPImageProcessor
resizes the shortest edge and crops the centre: other pixels). llama.cpp runs in a process of its own.

The llama.cpp build here puts CLIP's class token after the patches (its issue #25814): every patch gets
its neighbour's position embedding and the class token's output replaces patch 0's, so its image
embeddings, and then its tokens, are not transformers' (nor ours). The bench therefore also compares its
embeddings with our tower's weights run in that order (`cls_last_features`: a correctly read file gives
them up to GELU's tanh approximation; for SigLIP, which has no class token, our own order), and runs our
language model on its image rows, its tokens fed back: each of its greedy tokens should be our argmax, or
within 0.01 of our best logit (a near tie of these random models, decided by float rounding). Exits 1 if a
same-size picture fails those checks.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPT = "What is in the picture?"


def write_checkpoints(root: Path) -> dict[str, Path]:
    """{name: llava-hf directory}: the tests' tiny LLaVA and a CLIP-shaped one, SmolLM2's tokenizer."""
    from transformers import CLIPVisionConfig, LlamaConfig, SiglipVisionConfig

    from llamalab import assets

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_llava import write_llava, write_tiny_llava

    tok = assets.path("smollm2")
    write_tiny_llava(root / "tiny", tok)
    text = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=True, initializer_range=0.3)
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=224,
                 patch_size=14, initializer_range=0.1)
    write_llava(root / "clip224", tok, text, CLIPVisionConfig(**shape), seed=1)
    write_llava(root / "siglip224", tok, text, SiglipVisionConfig(**shape), seed=2,
                vision_feature_select_strategy="full")
    return {"tiny": root / "tiny", "clip224": root / "clip224", "siglip224": root / "siglip224"}


def pictures(root: Path, size: int) -> dict[str, Path]:
    from PIL import Image

    square = Image.effect_mandelbrot((size, size), (-2, -1.5, 1, 1.5), 40).convert("RGB")
    wide = Image.effect_mandelbrot((64, 48), (-2, -1.2, 1, 1.2), 40).convert("RGB")
    square.save(root / f"square{size}.png")
    wide.save(root / "wide64x48.png")
    return {"same size": root / f"square{size}.png", "64x48": root / "wide64x48.png"}


def cls_last_features(llava, pixels):
    """The image features llama.cpp's llava graph computes in this build (its issue #25814, fix proposed in
    PR #25844): the class token concatenated after the patches, position embeddings 0..n in that order, and
    positions 1..n kept (so patch 0 is dropped and the class token's output is fed as the last image token);
    its GELU is the tanh approximation. Our tower's weights, llama.cpp's order: what a correctly read
    mmproj file gives there."""
    import torch

    tower, e = llava.vision_tower, llava.vision_tower.embeddings
    layers = llava.args.feature_layer if isinstance(llava.args.feature_layer, tuple) else (llava.args.feature_layer,)
    with torch.inference_mode():
        x = e.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = hasattr(e, "class_embedding")  # a SigLIP tower has none: every patch is kept, in order
        if cls:
            x = torch.cat([x, e.class_embedding.expand(x.shape[0], 1, -1)], dim=1)
        states = [tower.pre_layrnorm(x + e.position_embedding.weight) if cls else x + e.position_embedding.weight]
        for block in tower.encoder.layers[:max(layers)]:
            states.append(block(states[-1]))
        h = torch.cat([states[i][:, 1:] if cls else states[i] for i in layers], dim=-1)
        p = llava.multi_modal_projector
        return p.linear_2(torch.nn.functional.gelu(p.linear_1(h), approximate="tanh"))


def ours(model: Path, mmproj: Path, picture: Path, n: int, theirs: dict) -> dict:
    """Our features and greedy tokens on the pair, and the language model alone compared: with llama.cpp's
    image rows in place of ours and its tokens fed back (teacher forcing), how far below our best logit
    each of its tokens lies (0: it is our argmax too)."""
    import torch
    from PIL import Image

    from llamalab.generate import stream
    from llamalab.images import preprocess
    from llamalab.runtime import load_runnable
    from llamalab.runtime.vision import image_input, image_prompt

    rt = load_runnable(model, device="cpu", mmproj=mmproj)
    ids, rows = image_prompt(rt, PROMPT, [picture])
    eyes = image_input(rt)
    features = eyes.features([picture])
    pixels = torch.from_numpy(preprocess(Image.open(picture), eyes.preprocess))[None]
    with torch.inference_mode():
        new = list(stream(rt.model, ids, embeddings=rows, max_new_tokens=n))
        prompt, rows, gaps = ids, eyes.rows(ids, torch.tensor([theirs["embd"]], dtype=features.dtype)), []
        for t in theirs["tokens"]:
            logits = rt.model(torch.tensor([ids]), embeddings=rows)[0, -1].float()
            gaps.append(round(float(logits.max() - logits[t]), 5))
            ids, rows = ids + [t], torch.cat([rows, rt.model.tok_embeddings(torch.tensor([[t]]))], dim=1)
    return {"prompt": prompt, "embd": features[0].float().tolist(), "tokens": new, "gaps": gaps,
            "cls last": cls_last_features(eyes.llava, pixels)[0].float().tolist(),
            "image_token": rt.vision.args.image_token_id}


def llama_cpp_worker(model: Path, mmproj: Path, picture: Path, n: int) -> dict:
    """llama.cpp's way: mtmd tokenizes the prompt with its media marker, encodes the image (its embeddings
    read back), evaluates the chunks, then greedy decoding on the logits."""
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = False  # see llama_cpp_ref.without_repacking
    lm = llama_cpp.llama_model_load_from_file(str(model).encode(), params)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_threads, cparams.n_threads_batch = 512, 512, 1, 1
    ctx = llama_cpp.llama_init_from_model(lm, cparams)
    mparams = mtmd.mtmd_context_params_default()
    mparams.use_gpu, mparams.n_threads, mparams.print_timings, mparams.warmup = False, 1, False, False
    mctx = mtmd.mtmd_init_from_file(str(mmproj).encode(), lm, mparams)
    if not mctx:
        raise SystemExit("mtmd_init_from_file failed")
    bitmap = mtmd.mtmd_helper_bitmap_init_from_file(mctx, str(picture).encode(), False)
    text = mtmd.mtmd_input_text()
    prompt = mtmd.mtmd_default_marker() + b"\n" + PROMPT.encode()
    text.text, text.text_len, text.add_special, text.parse_special = prompt, len(prompt), True, True
    chunks = mtmd.mtmd_input_chunks_init()
    if mtmd.mtmd_tokenize(mctx, chunks, ctypes.byref(text), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) != 0:
        raise SystemExit("mtmd_tokenize failed")
    pieces, embd = [], None
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        chunk = mtmd.mtmd_input_chunks_get(chunks, i)
        count = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
        if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
            size = ctypes.c_size_t()
            tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(size))
            pieces.append([tokens[j] for j in range(size.value)])
        else:
            if mtmd.mtmd_encode_chunk(mctx, chunk) != 0:
                raise SystemExit("mtmd_encode_chunk failed")
            width = llama_cpp.llama_model_n_embd(lm)
            out = mtmd.mtmd_get_output_embd(mctx)
            embd = [[out[r * width + c] for c in range(width)] for r in range(count)]
            pieces.append(["image"] * count)
    n_past = llama_cpp.llama_pos(0)
    if mtmd.mtmd_helper_eval_chunks(mctx, ctx, chunks, 0, 0, 512, True, ctypes.byref(n_past)) != 0:
        raise SystemExit("mtmd_helper_eval_chunks failed")
    vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(lm))
    new = []
    for _ in range(n):
        logits = llama_cpp.llama_get_logits_ith(ctx, -1)
        token = max(range(vocab), key=lambda t: logits[t])
        new.append(token)
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one((llama_cpp.llama_token * 1)(token), 1)) != 0:
            raise SystemExit("llama_decode failed")
    return {"prompt": [t for piece in pieces for t in piece], "embd": embd, "tokens": new}


def theirs(model: Path, mmproj: Path, picture: Path, n: int, timeout: int) -> dict | str:
    cmd = [sys.executable, __file__, "--worker", str(model), str(mmproj), str(picture), "--tokens", str(n)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        tail = (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
        return f"llama.cpp failed (exit {run.returncode}): {tail[:300]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


def compare(mine: dict, other: dict) -> dict:
    import numpy as np

    prompt = ["image" if t == mine["image_token"] else t for t in mine["prompt"]]
    theirs = np.array(other["embd"] or [])

    def diff(key):
        a = np.array(mine[key])
        return round(float(np.abs(a - theirs).max()), 6) if a.shape == theirs.shape else f"{a.shape} vs {theirs.shape}"

    return {"prompt same": prompt == other["prompt"], "embd scale": round(float(np.abs(theirs).max()), 3),
            "embd diff vs ours": diff("embd"), "embd diff vs ours cls-last": diff("cls last"),
            "tokens same": mine["tokens"] == other["tokens"],
            "their tokens our argmax on their rows": sum(g == 0 for g in mine["gaps"]),
            "largest logit gap": max(mine["gaps"]),
            "ours": mine["tokens"], "llama.cpp": other["tokens"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16, help="greedy tokens per case")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per llama.cpp run")
    ap.add_argument("--worker", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return print(json.dumps(llama_cpp_worker(*args.worker, args.tokens)))
    from llamalab.cli import main as llamalab

    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, src in write_checkpoints(root).items():
            size = json.loads((src / "config.json").read_text())["vision_config"]["image_size"]
            for gguf_type in ("f32", "f16"):
                model, mmproj = root / f"{name}-{gguf_type}.gguf", root / f"mmproj-{name}-{gguf_type}.gguf"
                llamalab(["convert", str(src), "--to", "gguf", "--out", str(model), "--mmproj", str(mmproj),
                          "--gguf-type", gguf_type])
                for what, picture in pictures(root, size).items():
                    other = theirs(model, mmproj, picture, args.tokens, args.timeout)
                    row = other if isinstance(other, str) else compare(
                        ours(model, mmproj, picture, args.tokens, other), other)
                    failed |= what == "same size" and (isinstance(other, str) or row["largest logit gap"] > 0.01
                                                       or row["embd diff vs ours cls-last"] > 0.05 * row["embd scale"])
                    print(json.dumps({"checkpoint": name, "type": gguf_type, "picture": what, **(
                        {"error": row} if isinstance(row, str) else row)}), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
