"""The server's Prometheus metrics (prometheus-client), in a registry of their own per app."""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

RATE_WINDOW = 10.0  # seconds over which the decode rate is averaged


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self.requests = Counter("llamalab_requests", "API requests answered, by endpoint and HTTP status",
                                ["endpoint", "status"], registry=r)
        self.in_progress = Gauge("llamalab_requests_in_progress", "API requests being handled", registry=r)
        self.prompt_tokens = Counter("llamalab_prompt_tokens", "prompt tokens prefilled", registry=r)
        self.generation_tokens = Counter("llamalab_generation_tokens", "tokens generated", registry=r)
        self.queue_depth = Gauge("llamalab_queue_depth", "sequences waiting for a batch slot", registry=r)
        self.running = Gauge("llamalab_running_sequences", "sequences decoding in batch slots", registry=r)
        self.cancelled = Counter("llamalab_cancelled_sequences",
                                 "sequences stopped before their end because the client went away", registry=r)
        self.ttft = Histogram("llamalab_time_to_first_token_seconds", "from a request's arrival to its first token",
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=r)
        self.batch_size = Histogram("llamalab_decode_batch_size", "sequences advanced by one decode step",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        rate = Gauge("llamalab_decode_tokens_per_second",
                     f"tokens generated per second by decode steps over the last {RATE_WINDOW:g} s", registry=r)
        rate.set_function(self._decode_rate)
        self.tasks = Gauge("llamalab_event_loop_tasks", "asyncio tasks alive in the server's event loop", registry=r)
        self._steps: deque[tuple[float, int]] = deque()  # (time, tokens) of recent decode steps
        self._lock = threading.Lock()

    def observe_step(self, tokens: int) -> None:
        self.batch_size.observe(tokens)
        now = time.monotonic()
        with self._lock:
            self._steps.append((now, tokens))
            while self._steps and self._steps[0][0] < now - RATE_WINDOW:
                self._steps.popleft()

    def _decode_rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            tokens = sum(n for t, n in self._steps if t >= now - RATE_WINDOW)
        return tokens / RATE_WINDOW
