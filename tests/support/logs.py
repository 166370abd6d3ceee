"""Reading a log another process is writing: complete lines only.

A writer appends a line in one or more ``write()`` calls; a reader can see the first
part of a line before the rest (a run once failed on nginx's access log cut after
``ups``). Everything here stops at the last newline, and the callers that look for a
line poll to a deadline (``wait_for_lines``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .polling import wait_until


def complete_lines(path: str | Path) -> list[str]:
    """The lines of ``path`` that end in a newline (none when it does not exist yet)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n")
    return data[: end + 1].decode(errors="replace").splitlines() if end >= 0 else []


def complete_text(path: str | Path) -> str:
    """The complete lines of ``path`` as one text, each ending in a newline."""
    return "".join(line + "\n" for line in complete_lines(path))


def wait_for_lines(path: str | Path, match: str | Callable[[str], bool], count: int = 1,
                   timeout: float = 10.0) -> list[str]:
    """The complete lines of ``path`` that contain ``match`` (or satisfy it, a
    function), once there are at least ``count`` of them; fails after ``timeout``."""
    test = match if callable(match) else (lambda line: match in line)

    def found():
        lines = [line for line in complete_lines(path) if test(line)]
        return lines if len(lines) >= count else None

    return wait_until(found, timeout, f"{count} line(s) matching {match!r} never completed in {path}")
