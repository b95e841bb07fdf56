"""The attacks in this directory are real: they must only ever meet the namespaced sandbox."""

import pytest


@pytest.fixture(autouse=True)
def namespaced_sandbox_only(monkeypatch):
    # LLAMALAB_SANDBOX=weak would run them with the evaluator's privileges (as root: mounts over /tmp,
    # ptrace of any process); they fail instead where namespaces are unavailable.
    monkeypatch.delenv("LLAMALAB_SANDBOX", raising=False)
