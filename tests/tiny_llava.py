"""A tiny random LLaVA (CLIP tower) written by transformers itself, with SmolLM2's tokenizer, and a small
picture: the vision tests' shared material (generate --image, serve, chat, mmproj)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from llamalab.tokenizer import save_tokenizer

IMAGE_TOKEN = 49151


def write_llava(out: Path, tokenizer_src, text: LlamaConfig, vision, *, seed: int,
                **options) -> LlavaForConditionalGeneration:
    """A random llava-hf checkpoint written by transformers (`vision`: a CLIP or SigLIP config; `options`: more
    LlavaConfig fields), with `tokenizer_src`'s tokenizer beside it."""
    torch.manual_seed(seed)
    ref = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
                                                    vision_feature_layer=-2, **options)).eval()
    ref.save_pretrained(out)
    save_tokenizer(tokenizer_src, out)
    return ref


def write_tiny_llava(out: Path, tokenizer_src) -> LlavaForConditionalGeneration:
    """Weights drawn wider than transformers' default (0.3, not 0.02), so that greedy answers are varied and
    differ from picture to picture (at 0.02 every answer is one token repeated, whatever the image)."""
    text = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       tie_word_embeddings=True, initializer_range=0.3)
    vision = CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                              image_size=28, patch_size=14, initializer_range=0.3)
    return write_llava(out, tokenizer_src, text, vision, seed=0)


def write_picture(path: Path, seed: int = 0) -> Path:
    """A 64×48 Mandelbrot crop (another `seed`: another crop)."""
    x = -2 + 0.3 * seed
    Image.effect_mandelbrot((64, 48), (x, -1.2, x + 3, 1.2), 40).convert("RGB").save(path)
    return path
