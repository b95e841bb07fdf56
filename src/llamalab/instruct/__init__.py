"""Instruction data made by a teacher model (self-instruct), the endpoints and local models that answer,
and the project's own seed tasks (CC0-1.0, see LICENSE-DATA)."""

from pathlib import Path

SEED_TASKS = Path(__file__).with_name("seed_tasks.jsonl")
