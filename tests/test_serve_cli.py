"""`llamalab serve`'s command-line errors: one clear line and exit code 2, before the model is loaded."""

import importlib.util
import socket

import pytest

from llamalab.cli import main
from llamalab.serve.connections import allowed_hosts, api_key, host_name


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
                                        ("--port", "70000"), ("--max-connections", "0"), ("--header-timeout", "nan"),
                                        ("--body-timeout", "-1"), ("--keep-alive", "0"), ("--drain-timeout", "inf")])
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


def test_api_key_sources(capsys, tmp_path):
    key = tmp_path / "key"
    key.write_text("from-file\nignored\n")
    assert api_key(None, str(key), {"LLAMALAB_API_KEY": "from-env"}) == "from-file"
    assert api_key(None, None, {"LLAMALAB_API_KEY": "from-env"}) == "from-env"
    assert api_key(None, None, {}) is None and capsys.readouterr().err == ""
    assert api_key("on-the-command-line", None, {}) == "on-the-command-line"
    assert "--api-key is readable by every user" in capsys.readouterr().err  # /proc/PID/cmdline


@pytest.mark.parametrize("args,says", [
    (["--api-key", "a", "--api-key-file", "k"], "not both"),
    (["--api-key-file", "/nonexistent/key"], "/nonexistent/key"),
    (["--api-key-file", "EMPTY"], "non-empty printable ASCII"),
])
def test_bad_api_keys_are_one_line(capsys, tmp_path, args, says):
    (tmp_path / "empty").write_text("\n")
    code, err = run(capsys, *[str(tmp_path / "empty") if a == "EMPTY" else a for a in args])
    lines = [line for line in err.strip().splitlines() if "warning" not in line]
    assert code == 2 and says in err and len(lines) == 1, err


def test_allowed_hosts():
    assert allowed_hosts("127.0.0.1") == ("localhost", "127.0.0.1", "::1")
    assert allowed_hosts("::1", ["My.Box"]) == ("localhost", "127.0.0.1", "::1", "my.box")
    assert allowed_hosts("0.0.0.0") is None and allowed_hosts("127.0.0.1", ["*"]) is None
    assert allowed_hosts("0.0.0.0", ["my.box"]) == ("localhost", "127.0.0.1", "::1", "0.0.0.0", "my.box")
    assert [host_name(h) for h in (b"[::1]:8000", b"LocalHost:80", b"::1", b"a.b")] == ["::1", "localhost", "::1", "a.b"]
