"""Tensor-name translation between a format's names and ours (Meta's), by exact, anchored patterns.

    to_ours = name_map({"blk.{i}.attn_q.weight": "layers.{i}.attention.wq.weight", ...})
    to_ours("blk.3.attn_q.weight")   # "layers.3.attention.wq.weight"; an unknown name gives None
"""

from __future__ import annotations

import re
from collections.abc import Callable


def name_map(table: dict[str, str]) -> Callable[[str], str | None]:
    """A function translating each name matching a key of `table` ({i} = a layer index) to its value."""
    patterns = [(re.compile("^" + re.escape(src).replace(r"\{i\}", r"(\d+)") + "$"), dst)
                for src, dst in table.items()]

    def translate(name: str) -> str | None:
        for pattern, dst in patterns:
            m = pattern.match(name)
            if m:
                return dst.format(i=m.group(1)) if m.groups() else dst
        return None
    return translate
