"""`llamalab quantize --type`: GGUF files as llama.cpp's own `quantize` writes them.

References, none of them ours: llama.cpp's quantizer (llama-cpp-python's `llama_model_quantize`) run once by
scripts/kquant_reference.py on the float model of tests/kquant_source.py — each file type's per-tensor types
and the sha256 of every tensor's bytes, in tests/data/kquant/ (see there; CI has no llama.cpp) — and the `gguf`
package's dequantization of our blocks.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize

from cli_output import without_notices
from kquant_source import ARGS, source_state
from llamalab.cli import main
from llamalab.formats import load_state, save
from llamalab.formats.gguf_mix import encode, tensor_types
from llamalab.formats.names import name_maps

DATA = Path(__file__).parent / "data" / "kquant"
REFERENCE = json.loads((DATA / "tiny_reference.json").read_text())
_, to_gguf = name_maps("gguf")


def _table(path) -> dict:
    return {t.name: [t.tensor_type.name, hashlib.sha256(np.ascontiguousarray(t.data).tobytes()).hexdigest()]
            for t in GGUFReader(path).tensors}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = save(source_state(), ARGS, tmp_path_factory.mktemp("kq") / "tiny-f32.gguf", "gguf", gguf_type="f32")
    # the floats llama.cpp quantized, bit for bit
    assert {k: v[1] for k, v in _table(path).items()} == REFERENCE["source"]
    return path


@pytest.mark.parametrize("ftype", ["q2_k", "q3_k_m", "q4_k_s", "q4_k_m", "q5_k_m", "q6_k", "q8_0", "q4_0", "q4_1",
                                   "f16", "bf16"])
def test_quantize_type_writes_llama_cpp_bytes(source, tmp_path, ftype):
    out = tmp_path / f"{ftype}.gguf"
    assert main(["quantize", "--model", str(source), "--type", ftype, "--out", str(out)]) == 0
    want = REFERENCE["types"][ftype]
    assert int(GGUFReader(out).fields["general.file_type"].contents()) == want["file_type"]
    got = _table(out)
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want["tensors"].items()}  # the type mix
    assert got == want["tensors"]  # every block byte-identical


# RMS error of the dequantized blocks relative to the weights' RMS on the source's Gaussian-like matrices
# (measured: Q2_K 0.294, Q3_K 0.154, Q4_K 0.072, Q5_K 0.037, Q6_K 0.019); each bound also sits below the next
# coarser type's error, so a type that silently fell back to a coarser one fails.
ERROR = {"Q2_K": 0.34, "Q3_K": 0.2, "Q4_K": 0.1, "Q5_K": 0.05, "Q6_K": 0.025}


@pytest.mark.parametrize("kind", sorted(ERROR))
def test_gguf_dequantizes_our_blocks_to_the_weights(kind):
    from gguf import GGMLQuantizationType as Q

    w = source_state()["layers.1.feed_forward.w2.weight"].numpy()[4:]  # past the planted edge-case rows
    back = dequantize(encode(w, Q[kind]), Q[kind]).reshape(w.shape)
    rel = np.sqrt(np.mean((back - w) ** 2) / np.mean(w ** 2))
    assert rel < ERROR[kind], rel
    zero = np.zeros((2, 512), np.float32)  # all-zero blocks come back as zeros
    assert not dequantize(encode(zero, Q[kind]), Q[kind]).any()


def test_smollm2_type_mix_is_llama_cpps(smollm2_gguf):
    """SmolLM2's 576-wide rows are no whole super-blocks: llama.cpp's fallbacks (Q5_0, Q8_0 for attn_v's
    Q6_K layers, the tied embedding at Q8_0) and K-quants only in ffn_down (1536 wide)."""
    src = load_state(smollm2_gguf, lazy=True)
    shapes = {to_gguf(k): tuple(v.shape) for k, v in src.state.items()}
    a = src.args
    got = {k: v.name for k, v in tensor_types(shapes, "q4_k_m", n_layers=a.n_layers, n_heads=a.n_heads,
                                              n_kv_heads=a.kv_heads).items()}
    assert got == json.loads((DATA / "smollm2_q4_k_m_types.json").read_text())


def test_info_lists_types_and_bits_per_weight(source, tmp_path, capsys):
    out = tmp_path / "q4_k_m.gguf"
    assert main(["quantize", "--model", str(source), "--type", "q4_k_m", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line[12:].split()[0]: line[12:].split(None, 1)[1] for line in lines
             if line.startswith(("types", " " * 12)) and not line.startswith(" " * 13)}
    assert table["ffn_down"] == "Q4_K ×1, Q6_K ×1" and table["attn_v"] == "Q4_K ×1, Q6_K ×1"
    assert table["output"] == "Q6_K ×1" and table["norms"] == "F32 ×5" and table["attn_q"] == "Q4_K ×2"
    tensors = GGUFReader(out).tensors  # llama.cpp's BPW: tensor bytes × 8 / weights
    bpw = 8 * sum(int(t.n_bytes) for t in tensors) / sum(int(t.n_elements) for t in tensors)
    assert f"bits/weight {bpw:.2f} " in "\n".join(lines)


def test_bad_type_input_is_one_line(source, tmp_path, capsys):
    out = str(tmp_path / "x.gguf")
    cases = [(["--type", "q4_k_x", "--out", out], "unknown --type 'q4_k_x'; choose one of q2_k,"),
             (["--type", "q4_k_m", "--bits", "4", "--out", out], "--type and --bits both choose"),
             (["--type", "q4_k_m", "--out", str(tmp_path / "dir")], "--type writes a GGUF file"),
             (["--type", "q4_k_m", "--group-size", "32", "--out", out], "--group-size does not apply to --type"),
             (["--out", out], "choose the weights' type: --type")]
    for argv, message in cases:
        capsys.readouterr()
        assert main(["quantize", "--model", str(source), *argv]) == 2, argv
        err = without_notices(capsys.readouterr().err).strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x.gguf").exists()
