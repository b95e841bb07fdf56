"""Quantizing with an importance matrix: the blocks llama.cpp writes with `--imatrix`, byte for byte.

Reference, not ours: llama.cpp's `ggml_quantize_chunk(type, rows, ..., imatrix)` (llama-cpp-python's
libggml-base, called by scripts/kquant_reference.py) on the seeded matrices stored with its output in
tests/data/kquant/imatrix_reference.npz (CI has no llama.cpp).
"""

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize

from llamalab.formats.gguf_mix import encode as encode_tensor
from llamalab.quant.kquant_encode import encode as encode_plain
from llamalab.quant.kquant_imatrix import encode

REFERENCE = np.load(Path(__file__).parent / "data" / "kquant" / "imatrix_reference.npz")
WEIGHTED = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


@pytest.mark.parametrize("kind", WEIGHTED)
def test_blocks_are_llama_cpps_with_the_imatrix(kind):
    x, im = REFERENCE["x"], REFERENCE["imatrix"]
    ours = encode(x, kind, im)
    assert ours.shape == REFERENCE[kind].shape
    assert np.array_equal(ours, REFERENCE[kind])
    # the reference really used the importance matrix: without it the blocks differ
    plain = encode_plain(x, kind) if kind.endswith("_K") else quantize(x, Q[kind])
    assert not np.array_equal(plain, REFERENCE[kind])


def test_gguf_mix_encode_takes_the_imatrix_and_q8_0_ignores_it():
    x, im = REFERENCE["x"], REFERENCE["imatrix"]
    assert np.array_equal(encode_tensor(x, Q.Q4_K, im), REFERENCE["Q4_K"])
    assert np.array_equal(encode_tensor(x, Q.Q5_0, im), REFERENCE["Q5_0"])
    assert np.array_equal(encode_tensor(x, Q.Q8_0, im), REFERENCE["Q8_0"])  # llama.cpp's Q8_0 ignores it
    assert np.array_equal(encode_tensor(x, Q.Q8_0), REFERENCE["Q8_0"])


def test_wrong_length_is_refused():
    with pytest.raises(ValueError, match="768"):
        encode(REFERENCE["x"], "Q4_K", REFERENCE["imatrix"][:512])
