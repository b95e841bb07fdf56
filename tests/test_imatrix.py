"""`llamalab imatrix` and `quantize --type ... --imatrix`: llama.cpp's importance matrix, computed, stored, used.

References, none of them ours: transformers' own forward of SmolLM2 (the inputs its projections see, for the
mean squares); the gguf package reading the files we write; llama.cpp's layout of its imatrix files (the legacy
`.dat` built byte by byte here from it); and llama.cpp's `ggml_quantize_chunk` with an importance matrix on the
tiny model's tensors (tests/data/kquant/tiny_imatrix_reference.json, made by scripts/kquant_reference.py).
"""

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from cli_output import without_notices
from kquant_source import ARGS, source_state
from llamalab.cli import main
from llamalab.formats import save
from llamalab.formats.imatrix import read_imatrix, write_imatrix
from llamalab.imatrix import chunks_of, collect

DATA = Path(__file__).parent / "data" / "kquant"
TINY_IMATRIX = DATA / "tiny_imatrix.gguf"
REFERENCE = json.loads((DATA / "tiny_imatrix_reference.json").read_text())


@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory):
    return save(source_state(), ARGS, tmp_path_factory.mktemp("imx") / "tiny-f32.gguf", "gguf", gguf_type="f32")


def _error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = without_notices(capsys.readouterr().err).strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("ftype", sorted(REFERENCE))
def test_quantize_with_imatrix_writes_llama_cpps_blocks(tiny_f32, tmp_path, ftype, capsys):
    out = tmp_path / f"{ftype}.gguf"
    main(["quantize", "--model", str(tiny_f32), "--type", ftype, "--imatrix", str(TINY_IMATRIX), "--out", str(out)])
    ours = {t.name: [t.tensor_type.name, hashlib.sha256(np.ascontiguousarray(t.data).tobytes()).hexdigest()]
            for t in GGUFReader(out).tensors if t.name in REFERENCE[ftype]}
    assert ours == REFERENCE[ftype]


def test_imatrix_file_is_llama_cpps_gguf(tmp_path):
    sums = {"blk.0.ffn_down.weight": (np.arange(6, dtype=np.float32).reshape(1, 6), [3]),
            "blk.0.attn_q.weight": (np.full((2, 4), 8, np.float32), [4, 0])}  # two matrices: experts
    path = write_imatrix(tmp_path / "m.gguf", sums, datasets=["text.txt"], chunk_count=5, chunk_size=512)
    reader = GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields == {"general.type": "imatrix", "imatrix.datasets": ["text.txt"], "imatrix.chunk_count": 5,
                      "imatrix.chunk_size": 512}
    assert [(t.name, t.shape.tolist(), t.tensor_type.name) for t in reader.tensors] == [
        ("blk.0.attn_q.weight.in_sum2", [4, 2], "F32"), ("blk.0.attn_q.weight.counts", [1, 2], "F32"),
        ("blk.0.ffn_down.weight.in_sum2", [6, 1], "F32"), ("blk.0.ffn_down.weight.counts", [1, 1], "F32")]
    imx = read_imatrix(path)
    assert (imx.datasets, imx.chunk_count, imx.chunk_size) == (["text.txt"], 5, 512)
    np.testing.assert_array_equal(imx.values["blk.0.ffn_down.weight"], np.arange(6, dtype=np.float32) / 3)
    # a matrix that saw no tokens gets ones, as llama.cpp's loader gives it
    np.testing.assert_array_equal(imx.values["blk.0.attn_q.weight"], [2, 2, 2, 2, 1, 1, 1, 1])


def _legacy(entries, trailer=b"") -> bytes:
    out = struct.pack("<i", len(entries))
    for name, ncall, values in entries:
        out += struct.pack("<i", len(name)) + name + struct.pack("<ii", ncall, len(values))
        out += np.asarray(values, "<f4").tobytes()
    return out + trailer


def test_legacy_dat_file_is_read(tmp_path):
    path = tmp_path / "imatrix.dat"
    trailer = struct.pack("<i", 7) + struct.pack("<i", 8) + b"wiki.txt"
    path.write_bytes(_legacy([(b"blk.0.attn_k.weight", 4, [4.0, 8.0, 2.0]), (b"blk.1.ffn_up.weight", 0, [3.0])],
                             trailer))
    imx = read_imatrix(path)
    assert (imx.format, imx.chunk_count, imx.datasets) == ("dat", 7, ["wiki.txt"])
    np.testing.assert_array_equal(imx.values["blk.0.attn_k.weight"], [1.0, 2.0, 0.5])  # values / ncall
    np.testing.assert_array_equal(imx.values["blk.1.ffn_up.weight"], [3.0])


@pytest.mark.parametrize("data, says", [
    (struct.pack("<i", 2_000_000_000), "entries claimed"),
    (struct.pack("<ii", 1, 1 << 30) + b"x" * 12, "tensor name of"),
    (struct.pack("<ii", 1, 4) + b"blk." + struct.pack("<ii", 1, 1 << 28), "runs past the end"),
    (_legacy([(b"blk.0.attn_k.weight", 1, [float("nan")])]), "not all finite"),
    (b"GGUF" + b"\xff" * 40, "GGUF"),
])
def test_hostile_imatrix_files_are_one_line(tiny_f32, tmp_path, capsys, data, says):
    bad = tmp_path / "bad.dat"
    bad.write_bytes(data)
    line = _error(capsys, ["quantize", "--model", str(tiny_f32), "--type", "q4_k_m", "--imatrix", str(bad),
                           "--out", str(tmp_path / "o.gguf")])
    assert says in line and str(bad) in line


def test_imatrix_of_another_model_is_refused(tiny_f32, tmp_path, capsys):
    out = str(tmp_path / "o.gguf")
    wide = write_imatrix(tmp_path / "wide.gguf", {"blk.0.attn_q.weight": (np.ones((1, 576), np.float32), [1])},
                         datasets=["x"], chunk_count=1, chunk_size=512)
    line = _error(capsys, ["quantize", "--model", str(tiny_f32), "--type", "q4_k_m", "--imatrix", str(wide), "--out", out])
    assert "576" in line and "blk.0.attn_q.weight" in line and "another model" in line
    other = write_imatrix(tmp_path / "other.gguf", {"model.layers.0.q.weight": (np.ones((1, 256), np.float32), [1])},
                          datasets=["x"], chunk_count=1, chunk_size=512)
    line = _error(capsys, ["quantize", "--model", str(tiny_f32), "--type", "q4_k_m", "--imatrix", str(other), "--out", out])
    assert "another model" in line
    line = _error(capsys, ["quantize", "--model", str(tiny_f32), "--type", "q4_k_m", "--imatrix", str(tiny_f32),
                           "--out", out])
    assert "not an importance matrix" in line
    line = _error(capsys, ["quantize", "--model", str(tiny_f32), "--bits", "4", "--imatrix", str(TINY_IMATRIX),
                           "--out", out])
    assert "--type" in line
    assert not Path(out).exists()


def test_mean_squares_are_those_of_transformers_inputs(smollm2_fp32, hf_smollm2):
    model, _ = hf_smollm2
    tokens = list(range(100, 164))
    chunks = chunks_of(tokens, 32, None, smollm2_fp32.tokenizer.bos_id, "test")
    ours = collect(smollm2_fp32.model, chunks, progress=False)
    seen = {}
    layer = model.model.layers[1]
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: seen.setdefault(n, []).append(args[0]))
             for n, m in (("attn_q", layer.self_attn.q_proj), ("attn_output", layer.self_attn.o_proj),
                          ("ffn_up", layer.mlp.up_proj), ("ffn_down", layer.mlp.down_proj))]
    with torch.no_grad():
        for row in chunks:
            model(row[None])
    for h in hooks:
        h.remove()
    for name, xs in seen.items():
        x = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).double()
        sums, counts = ours[f"blk.1.{name}.weight"]
        assert counts == [64]
        np.testing.assert_allclose(sums[0] / counts[0], x.square().mean(0).numpy(), rtol=2e-4, atol=1e-7)


def test_imatrix_command_writes_a_file_quantize_reads(smollm2_gguf, tmp_path, capsys):
    text = tmp_path / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "smol.imatrix.gguf"
    main(["imatrix", "--model", str(smollm2_gguf), "--calibration", str(text), "--ctx", "64", "--chunks", "2",
          "--out", str(out)])
    imx = read_imatrix(out)
    assert (imx.chunk_count, imx.chunk_size, imx.datasets) == (2, 64, [str(text)])
    assert len(imx.values) == 30 * 7 and imx.values["blk.0.ffn_down.weight"].shape == (1536,)
    assert _error(capsys, ["imatrix", "--model", str(smollm2_gguf), "--calibration", str(text), "--ctx", "4096",
                           "--out", str(tmp_path / "x.gguf")]).count("--ctx") >= 1
