"""The model library (`llamalab models`, `llamalab.library`): content-addressed blobs, names by manifest,
atomic imports, and names resolving wherever a model path is taken."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import torch

from llamalab import library, models
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
