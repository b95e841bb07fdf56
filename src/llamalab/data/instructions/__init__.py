"""A small real instruction set for fine-tuning: Python FAQ answers, standard-library docstrings, The Jargon
File and The Devil's Dictionary as conversations (see SOURCES; built by scripts/build_instructions.py)."""

from pathlib import Path

PAIRS = Path(__file__).resolve().parent / "pairs.jsonl"
