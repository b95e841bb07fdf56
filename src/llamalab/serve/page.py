"""The chat page served at `/`: one self-contained HTML file (inline CSS and JS, nothing from elsewhere).

Its Content-Security-Policy allows exactly its own inline script and style (by hash) and requests to this
server: even if model output were ever inserted as HTML, no injected script could run and nothing could
load from outside.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from importlib.resources import files


@lru_cache(maxsize=1)
def html() -> str:
    return files(__package__).joinpath("chat.html").read_text(encoding="utf-8")


def _hashes(tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html(), flags=re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


@lru_cache(maxsize=1)
def headers() -> dict[str, str]:
    csp = (f"default-src 'none'; script-src {_hashes('script')}; style-src {_hashes('style')}; "
           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache"}
