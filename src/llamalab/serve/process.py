"""`llamalab serve` in a child process, for scripts, benchmarks and tests:

    with ServerProcess(model, "--max-batch", "8") as server:   # a free port; waits until it answers
        server.url, server.metrics(), server.log()
    # leaving the block sends SIGTERM: the server drains and exits
    ServerProcess(model, tensor_parallel=3)   # under torchrun, 3 processes, weights sharded by heads
    ServerProcess(model, entry=("tests/faults.py",), env={"FAULT_...": "1"})   # another entry point (tests)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ..errors import LlamalabError


class ServerProcess:
    def __init__(self, model, *args: str, log: Path | None = None, startup_timeout: float = 300,
                 tensor_parallel: int = 1, entry: tuple[str, ...] = ("-m", "llamalab"), env: dict | None = None):
        self.log_path = Path(log) if log else Path(tempfile.mkstemp(prefix="llamalab-serve-", suffix=".log")[1])
        self._log = open(self.log_path, "w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        launch = [sys.executable]
        if tensor_parallel > 1:
            launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(tensor_parallel)]
            args = (*args, "--tensor-parallel", str(tensor_parallel))
        model_args = ["--model", str(model)] if model is not None else []  # None: the whole library
        self.proc = subprocess.Popen([*launch, *entry, "serve", *model_args, "--port", "0", *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.url = self._wait_for_address(startup_timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def _wait_for_address(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"on (http://\S+?)/ ", self.log())
            if found and self._healthy(found.group(1)):
                return found.group(1)
            if self.proc.poll() is not None:
                raise LlamalabError(f"llamalab serve exited with code {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.2)
        self.stop()
        raise LlamalabError(f"llamalab serve did not answer within {timeout:g} s:\n{self.log()}")

    @staticmethod
    def _healthy(url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus samples as {"name{label="value",...}": value}."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"{self.url}/metrics", timeout=30) as r:
            text = r.read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in s.labels.items())
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (drain, then exit); SIGKILL after `timeout` seconds. The exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
