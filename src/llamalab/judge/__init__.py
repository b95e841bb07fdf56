"""LLM-as-a-judge (Zheng et al. 2023): pairwise and single-answer judging, Elo and Bradley–Terry rankings,
and the project's own question set with reference answers (CC0-1.0, see instruct/LICENSE-DATA)."""

from pathlib import Path

QUESTIONS = Path(__file__).with_name("questions.jsonl")
REFERENCES = Path(__file__).with_name("references.jsonl")
