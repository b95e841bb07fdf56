"""A real `llamalab serve` process for tests: started on a free port, stopped with SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

STARTUP_TIMEOUT = 300  # seconds: loading the checkpoint on a busy 2-core machine


class Server:
    def __init__(self, model: Path, log: Path, *args: str):
        self.log_path = log
        self._log = open(log, "w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "llamalab", "serve", "--model", str(model), "--port", "0",
                                      *args], stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.url = self._wait_for_address()

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            found = re.search(r"on (http://\S+?)/ ", self.log())
            if found:
                url = found.group(1)
                while time.monotonic() < deadline:  # the socket listens already; wait for the app
                    try:
                        if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                            return url
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.2)
            if self.proc.poll() is not None:
                raise RuntimeError(f"llamalab serve exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llamalab serve did not start in {STARTUP_TIMEOUT} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        """The Prometheus samples as {"name{labels}": value}."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
