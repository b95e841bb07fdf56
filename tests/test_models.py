"""The model library (`llamalab models`, `llamalab.library`): content-addressed blobs, names by manifest,
atomic imports, names resolving wherever a model path is taken; `llamalab create` (a Modelfile) and `run`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from cli_output import without_notices
from llamalab import library, models
from llamalab.cli import main
from llamalab.errors import LlamalabError
from llamalab.runtime import load_runnable
from llamalab.formats import load_state, resolve


@pytest.fixture(scope="module")
def lib(smollm2_gguf, tmp_path_factory):
    """A library holding the SmolLM2 GGUF under two names."""
    root = tmp_path_factory.mktemp("home") / "models"
    models.import_model(smollm2_gguf, "smol", root)
    models.import_model(smollm2_gguf, "smol2:q4", root)
    return root


def test_two_names_share_one_blob(lib, smollm2_gguf):
    assert library.names(lib) == ["smol2:q4", "smol:latest"]
    blobs = list((lib / "blobs").iterdir())
    assert len(blobs) == 1
    h = hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()  # the name is the file's own sha256
    assert blobs[0].name == f"sha256-{h}"
    assert len(list((lib / "trees").iterdir())) == 1
    entry = models.show("smol", lib)
    assert (entry["format"], entry["quantization"], entry["size"]) == ("gguf", "Q4_1", smollm2_gguf.stat().st_size)
    assert library.resolve("smol:latest", lib).read_bytes()[:4] == b"GGUF"


def test_rm_keeps_shared_bytes_until_the_last_name(smollm2_gguf, tmp_path):
    root = tmp_path / "models"
    models.import_model(smollm2_gguf, "a", root)
    models.copy("a", "b:v1", root)
    models.copy("a", "c", root)
    models.remove("a", root)
    assert library.names(root) == ["b:v1", "c:latest"]
    assert len(list((root / "blobs").iterdir())) == 1
    assert library.resolve("b:v1", root).is_file()
    models.remove("b:v1", root)
    models.remove("c", root)
    assert library.names(root) == []
    assert list((root / "blobs").iterdir()) == [] and list((root / "trees").iterdir()) == []
    with pytest.raises(LlamalabError, match="no model named 'c:latest'"):
        models.remove("c", root)


def test_an_interrupted_import_never_lists(smollm2_gguf, tmp_path, monkeypatch):
    root = tmp_path / "models"

    def interrupted(files, root):
        raise KeyboardInterrupt  # the blob is in, the tree and the manifest are not

    monkeypatch.setattr(library, "add_tree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.import_model(smollm2_gguf, "half", root)
    assert library.names(root) == [] and len(list((root / "blobs").iterdir())) == 1
    with pytest.raises(LlamalabError, match="no model named 'half:latest'"):
        library.resolve("half", root)
    library.collect(root)  # what a removal runs: bytes no name holds go
    assert list((root / "blobs").iterdir()) == []


def test_bad_names_and_unknown_names(lib):
    for bad in ("a b", ":x", "x:", "../x", "m.gguf"):
        with pytest.raises(LlamalabError, match="not a model name"):
            library.split_name(bad)
    with pytest.raises(LlamalabError, match="it has: smol2:q4, smol:latest"):
        models.show("nope", lib)


def test_a_library_name_loads_where_a_path_does(lib, smollm2_gguf, monkeypatch):
    monkeypatch.setenv("LLAMALAB_HOME", str(lib.parent))
    assert resolve("smol") == library.resolve("smol", lib)
    assert resolve(str(smollm2_gguf)) == smollm2_gguf
    assert not library.looks_like_name("org/name")  # a hub id stays one
    with pytest.raises(LlamalabError, match=r"no model of that name in the library .* smol2:q4, smol:latest"):
        resolve("nope")
    assert load_state("smol2:q4").path == library.resolve("smol2:q4", lib)  # quantize, convert, lora merge too
    by_name, by_path = load_runnable("smol2:q4", device="cpu"), load_runnable(smollm2_gguf, device="cpu")
    ids = by_path.encode("The capital of France is")
    assert by_name.encode("The capital of France is") == ids
    with torch.no_grad():
        a, b = by_name.model(torch.tensor([ids])), by_path.model(torch.tensor([ids]))
    assert torch.equal(a, b)  # the same bytes, the same model


def test_cli_one_line_errors(lib):
    env = {**os.environ, "LLAMALAB_HOME": str(lib.parent)}
    out = subprocess.run([sys.executable, "-m", "llamalab", "models", "show", "nope"], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "it has: smol2:q4, smol:latest" in out.stderr
    out = subprocess.run([sys.executable, "-m", "llamalab", "models", "list"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "smol:latest" in out.stdout and "Q4_1" in out.stdout


def test_cli_create_and_run(lib, tmp_path, monkeypatch, capsys):
    """`create NAME -f Modelfile` then `run NAME PROMPT`: the answer `generate --chat` gives with the same system
    prompt and length; a bad Modelfile is one line naming its line, exit 2."""
    monkeypatch.setenv("LLAMALAB_HOME", str(lib.parent))
    question = "What is the capital of France?"
    (tmp_path / "Modelfile").write_text('# one word\nFROM smol\nPARAMETER num_predict 8\nSYSTEM """Answer in one\nword."""\n')
    assert main(["create", "oneword", "-f", str(tmp_path / "Modelfile")]) in (0, None)
    assert capsys.readouterr().out.splitlines()[-1] == "oneword:latest  from smol:latest"
    assert main(["models", "show", "oneword"]) in (0, None)
    shown = capsys.readouterr().out
    assert "from          smol:latest\nModelfile:\nFROM smol:latest\nPARAMETER num_predict 8\n" in shown
    assert 'SYSTEM """Answer in one\nword."""' in shown
    try:
        assert main(["run", "oneword", question]) in (0, None)
        ran = capsys.readouterr().out
        assert main(["generate", "--model", "smol", "--chat", "--system", "Answer in one\nword.",  # by name too
                     "--prompt", question, "--max-new-tokens", "8"]) in (0, None)
        assert ran.strip() and ran.strip() == capsys.readouterr().out.strip()
        for text, says in [("FROM smol\nFORM smol\n", "Modelfile line 2: unknown instruction FORM; expected FROM, "
                                                      "PARAMETER"),
                           ("\n\nFROM ./missing.gguf\n", "Modelfile line 3: FROM ./missing.gguf: no such file")]:
            (tmp_path / "Bad").write_text(text)
            assert main(["create", "bad", "-f", str(tmp_path / "Bad")]) == 2
            err = without_notices(capsys.readouterr().err)
            assert len(err.splitlines()) == 1 and err.startswith(f"llamalab create: error: {says}")
    finally:
        models.remove("oneword", lib)


def test_perplexity_takes_a_library_name(lib, smollm2_gguf, tmp_path, monkeypatch, capsys):
    """Two more commands that take --model by name (generate above): perplexity gives the path's numbers."""
    monkeypatch.setenv("LLAMALAB_HOME", str(lib.parent))
    (tmp_path / "text.txt").write_text("The capital of France is Paris. Llamas live in the Andes mountains. " * 3)
    answers = []
    for model in ("smol2:q4", str(smollm2_gguf)):
        assert main(["perplexity", "--model", model, "--input", str(tmp_path / "text.txt"), "--context", "32",
                     "--json"]) in (0, None)
        answers.append(json.loads(capsys.readouterr().out))
    assert answers[0]["perplexity"] == answers[1]["perplexity"] > 1


def test_a_modelfile_adapter_is_stored_once_and_applied_by_name(lib, smollm2_gguf, tmp_path, monkeypatch):
    """ADAPTER: the adapter's files go into the store; loading the created name runs the base with it, as
    `--adapter DIR` does; removing the name frees the adapter's bytes and keeps the base's."""
    from llamalab.formats.lora import LoraSpec
    from llamalab.formats.peft import save_adapter

    args = load_state(smollm2_gguf, lazy=True).args
    g = torch.Generator().manual_seed(0)
    state = {}
    for i in range(args.n_layers):
        state[f"layers.{i}.attention.wq.lora_a.weight"] = torch.randn(2, args.dim, generator=g) * 0.05
        state[f"layers.{i}.attention.wq.lora_b.weight"] = torch.randn(args.dim, 2, generator=g) * 0.05
    save_adapter(tmp_path / "adapter", state, LoraSpec(rank=2, alpha=4, targets=("wq",)), args)
    (tmp_path / "Modelfile").write_text("FROM smol\nADAPTER ./adapter\n")
    blobs = len(list((lib / "blobs").iterdir()))
    models.create("tuned", (tmp_path / "Modelfile").read_text(), base_dir=tmp_path, root=lib)
    try:
        assert len(list((lib / "blobs").iterdir())) == blobs + len(list((tmp_path / "adapter").iterdir()))
        monkeypatch.setenv("LLAMALAB_HOME", str(lib.parent))
        by_name = load_runnable("tuned", device="cpu")
        by_flag = load_runnable(smollm2_gguf, device="cpu", adapter=tmp_path / "adapter")
        ids = torch.tensor([by_flag.encode("The capital of France is")])
        with torch.no_grad():
            assert torch.equal(by_name.model(ids), by_flag.model(ids)) and by_name.adapter
    finally:
        models.remove("tuned", lib)
    assert len(list((lib / "blobs").iterdir())) == blobs
