"""`llamalab serve`'s command-line errors: one clear line and exit code 2, before the model is loaded."""

import importlib.util
import socket

import pytest

from llamalab.cli import main


def run(capsys, *args):
    code = main(["serve", "--model", "does-not-matter.gguf", *args])
    return code, capsys.readouterr().err


def test_missing_server_packages_say_what_to_install(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sse_starlette" else real(name, *a))
    code, err = run(capsys)
    assert code == 2 and err.strip() == "llamalab serve: error: the server needs sse_starlette: pip install 'llamalab[serve]'"


def test_a_busy_port_is_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, err = run(capsys, "--port", str(taken.getsockname()[1]))
    assert code == 2 and "cannot listen on 127.0.0.1:" in err and "pick another" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag,value", [("--max-batch", "0"), ("--max-queue", "-1"), ("--context", "0"),
                                        ("--port", "70000")])
def test_bad_numbers(capsys, flag, value):
    code, err = run(capsys, flag, value)
    assert code == 2 and flag in err and len(err.strip().splitlines()) == 1


def test_a_missing_model_is_one_line(capsys):
    code, err = run(capsys, "--port", "0")
    assert code == 2 and "does-not-matter.gguf" in err and "Traceback" not in err


def test_an_adapter_that_does_not_fit_is_one_line(capsys, smollm2_gguf, tmp_path):
    """--adapter goes through the same loader as generate/chat/eval: a directory without an adapter is refused
    after the model loads, before the server starts."""
    code = main(["serve", "--model", str(smollm2_gguf), "--port", "0", "--adapter", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path) in err and len(err.strip().splitlines()) == 1, err
