"""HTTP semantics (RFC 9110) for downloads: preconditions, ranges, multipart byteranges,
validators. Product policy (cache classes, Content-Disposition) is ``representation``'s.

Everything here is a pure function of request header values and file metadata,
so the rules can be tested without a Flask app. ``headers`` is any object with
``.get(name)`` (werkzeug ``Headers``, a dict with canonical names, ...); if it
also has ``getlist`` (werkzeug), repeated field lines are combined with ", "
as RFC 9110 §5.3 allows.

werkzeug helpers are used where they are correct (``http_date``,
``quote_etag``, ``parse_date`` behind a grammar check).  werkzeug's
``make_conditional`` is deliberately NOT used: on werkzeug 3.1 it ignores
If-Unmodified-Since, answers ``If-Match: *`` with 412, answers multiple ranges
with 416 and answers an invalid Range (``items=0-5``, ``bytes=abc``) with 416.
The parsers hand-written below say in a comment which werkzeug input was wrong.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from werkzeug.http import http_date, parse_date, quote_etag

__all__ = [
    "MAX_RANGES", "PROCEED", "Decision", "RangeDecision", "Representation", "decide",
    "evaluate_preconditions", "evaluate_range", "format_etag", "format_http_date",
    "multipart_byteranges", "new_boundary",
]

PROCEED = None  # evaluate_preconditions() result when no precondition fires

# RFC 9110 §14.2: a server MAY ignore a Range with many ranges. Past this many
# ranges (after coalescing) we serve the full representation instead.
MAX_RANGES = 16

@dataclass(frozen=True)
class Representation:
    """What preconditions and ranges are evaluated against."""

    etag: str  # the opaque-tag WITHOUT quotes, strong (e.g. a sha256 hex)
    last_modified: datetime  # timezone-aware UTC, whole seconds
    size: int  # bytes


@dataclass(frozen=True)
class RangeDecision:
    """How to answer a GET: 200 full, 206 partial (one or more ranges) or 416."""

    status: int
    ranges: tuple[tuple[int, int], ...]  # (start, stop), stop exclusive; only for 206
    content_range: str | None  # single-range 206 or 416, else None


# ---------------------------------------------------------------- field parsing

def _field(headers, name: str) -> str | None:
    """The field value, repeated lines joined (RFC 9110 §5.3), OWS trimmed."""
    getlist = getattr(headers, "getlist", None)
    if getlist is not None:
        values = getlist(name)
        value = ", ".join(values) if values else None
    else:
        value = headers.get(name)
    return None if value is None else value.strip(" \t")


# RFC 9110 §8.8.3: entity-tag = [ %s"W/" ] DQUOTE *etagc DQUOTE.
# Hand-written because werkzeug.http.parse_etags accepts tokens that are not
# entity-tags: parse_etags('garbage') yields the strong tag "garbage" and
# parse_etags('W/') the strong tag "W/"; parse_if_range_header('W/"x"') drops
# the W/ so a weak tag would pass If-Range's strong comparison.
_ETAG = r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"'
_ETAG_RE = re.compile(_ETAG)
_ETAG_ITEM_RE = re.compile(r"[ \t]*(?:" + _ETAG + r")?[ \t]*(?:,|\Z)")


def _parse_etag_list(value: str) -> list[tuple[bool, str]] | None:
    """``#entity-tag`` as [(weak, opaque)], or None if the value is not one.

    Empty list elements are skipped, as RFC 9110 §5.6.1 requires of recipients.
    """
    tags, pos = [], 0
    while pos < len(value):
        m = _ETAG_ITEM_RE.match(value, pos)
        if m is None or m.end() == pos:
            return None
        if m.group(2) is not None:
            tags.append((m.group(1) is not None, m.group(2)))
        pos = m.end()
    return tags or None


# RFC 9110 §5.6.7 HTTP-date: IMF-fixdate / rfc850-date / asctime-date, all GMT.
# werkzeug.http.parse_date alone is too liberal for "MUST ignore if not a valid
# HTTP-date" (§13.1.3, §13.1.4): it accepts a list of two dates (returns the
# first), a missing zone ('Sun, 06 Nov 1994 08:49:37' -> UTC) and numeric
# zones. So the grammar is checked here and parse_date then does the calendar.
_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MON = "(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = "[0-9]{2}:[0-9]{2}:[0-9]{2}"
_HTTP_DATE_RE = re.compile(
    rf"{_DAY}, [0-9]{{2}} {_MON} [0-9]{{4}} {_TIME} GMT"
    rf"|(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday),"
    rf" [0-9]{{2}}-{_MON}-[0-9]{{2}} {_TIME} GMT"
    rf"|{_DAY} {_MON} (?:[0-9]{{2}}| [0-9]) {_TIME} [0-9]{{4}}"
)


def _parse_http_date(value: str | None) -> datetime | None:
    if value is None or not _HTTP_DATE_RE.fullmatch(value):
        return None
    return parse_date(value)  # None for impossible dates such as 31 Feb


def _whole_seconds(dt: datetime) -> datetime:
    # HTTP-dates have one-second resolution (§5.6.7); sub-second mtimes would
    # make a file look modified after its own Last-Modified value.
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.replace(microsecond=0)


# ---------------------------------------------------------------- preconditions

def evaluate_preconditions(method: str, headers, rep: Representation | None) -> int | None:
    """Evaluate conditional request headers in RFC 9110 §13.2.2 order.

    Returns 412, 304 or PROCEED (None). ``rep=None`` means the resource has no
    current representation: ``If-Match: *`` then fails (412) and
    ``If-None-Match: *`` passes; date conditions are ignored (§13.1.3/§13.1.4:
    no modification date available).
    """
    safe = method.upper() in ("GET", "HEAD")
    if_match = _field(headers, "If-Match")
    if if_match is not None:
        # §13.1.1: "*" is true iff a current representation exists; otherwise
        # STRONG comparison (§8.8.3.2), so a W/ tag never matches.
        if if_match == "*":
            matched = rep is not None
        else:
            tags = _parse_etag_list(if_match) or []
            matched = rep is not None and (False, rep.etag) in tags
        if not matched:
            return 412
    elif rep is not None:
        # §13.1.4: only evaluated when If-Match is absent; invalid date ignored.
        since = _parse_http_date(_field(headers, "If-Unmodified-Since"))
        if since is not None and _whole_seconds(rep.last_modified) > since:
            return 412

    if_none_match = _field(headers, "If-None-Match")
    if if_none_match is not None:
        # §13.1.2: WEAK comparison; an unparsable value matches nothing.
        if if_none_match == "*":
            matched = rep is not None
        else:
            tags = _parse_etag_list(if_none_match) or []
            matched = rep is not None and any(opaque == rep.etag for _, opaque in tags)
        if matched:
            return 304 if safe else 412
    elif safe and rep is not None:
        # §13.1.3: ignored when If-None-Match is present or method isn't GET/HEAD.
        since = _parse_http_date(_field(headers, "If-Modified-Since"))
        if since is not None and _whole_seconds(rep.last_modified) <= since:
            return 304
    return PROCEED


# ---------------------------------------------------------------- ranges

_INT_RANGE_RE = re.compile(r"([0-9]+)-([0-9]*)")
_SUFFIX_RANGE_RE = re.compile(r"-([0-9]+)")
_HUGE = 1 << 63  # stands in for any position too long to matter (or to int())


def _position(digits: str) -> int:
    # int() refuses strings over 4300 digits; any such value is past any file.
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 19 else _HUGE


def _parse_byte_ranges(value: str) -> list[tuple[int | None, int | None]] | None:
    """RFC 9110 §14.1.1 ``bytes`` range-set as [(first, last)] / [(None, suffix)].

    Returns None for anything invalid, which the caller ignores (§14.2).
    Hand-written because werkzeug.http.parse_range_header (3.1) rejects valid
    sets ('bytes=0-9,' with an empty element, 'bytes=-5,-3' with two suffix
    ranges, 'bytes=-0' which is valid but unsatisfiable) and accepts invalid
    ones ('bytes=0 - 5'; 'items=0-5' parses with units='items').
    """
    unit, sep, range_set = value.partition("=")
    if not sep or unit.lower() != "bytes":  # §14.1: unit names case-insensitive
        return None
    specs: list[tuple[int | None, int | None]] = []
    for element in range_set.split(","):
        element = element.strip(" \t")
        if not element:  # §5.6.1: recipients ignore empty list elements
            continue
        if m := _SUFFIX_RANGE_RE.fullmatch(element):
            specs.append((None, _position(m[1])))
        elif m := _INT_RANGE_RE.fullmatch(element):
            first, last = _position(m[1]), (_position(m[2]) if m[2] else None)
            if last is not None and last < first:  # §14.1.1: invalid int-range
                return None
            specs.append((first, last))
        else:
            return None
    return specs or None


def _if_range_holds(value: str, rep: Representation) -> bool:
    # §13.1.5: an entity-tag must match by STRONG comparison (a weak tag never
    # does); a date must exactly equal Last-Modified. Anything else is false.
    if m := _ETAG_RE.fullmatch(value):
        return m.group(1) is None and m.group(2) == rep.etag
    date = _parse_http_date(value)
    return date is not None and date == _whole_seconds(rep.last_modified)


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    # §14.2 lets a server coalesce overlapping or adjacent ranges; doing so
    # defuses "bytes=0-,0-,0-,..." amplification. Result sorted ascending.
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


def evaluate_range(method: str, headers, rep: Representation) -> RangeDecision:
    """Decide 200 / 206 / 416 for a request's Range and If-Range (RFC 9110 §14).

    Range is only honoured for GET (§14.2; ignoring it for HEAD is allowed).
    An invalid Range, a non-``bytes`` unit, a failing If-Range, or more than
    MAX_RANGES ranges after coalescing all yield 200 (the Range is ignored).
    """
    full = RangeDecision(200, (), None)
    if method.upper() != "GET":
        return full
    raw = _field(headers, "Range")
    specs = None if raw is None else _parse_byte_ranges(raw)
    if specs is None:
        return full
    if_range = _field(headers, "If-Range")
    if if_range is not None and not _if_range_holds(if_range, rep):
        return full

    size = rep.size
    satisfiable: list[tuple[int, int]] = []
    for first, last in specs:
        if first is None:  # suffix-range: the last `last` bytes
            if last:  # §14.1.1: a zero suffix-length is unsatisfiable
                satisfiable.append((max(size - last, 0), size))
        elif first < size:  # §14.1.1: first-pos must be < length
            satisfiable.append((first, size if last is None else min(last + 1, size)))
    # A zero-length file has no byte to send: even "-N" yields 416 bytes */0,
    # since a 206 Content-Range cannot describe an empty range (§14.4).
    if not satisfiable or size == 0:
        return RangeDecision(416, (), f"bytes */{size}")

    merged = _coalesce(satisfiable)
    if len(merged) > MAX_RANGES:
        return full
    if len(merged) == 1:
        start, stop = merged[0]
        return RangeDecision(206, (merged[0],), f"bytes {start}-{stop - 1}/{size}")
    return RangeDecision(206, tuple(merged), None)


# ---------------------------------------------------------------- the whole decision

@dataclass(frozen=True)
class Decision:
    """What to answer a GET or HEAD whose access is settled: 304, 412, 416, or the
    content (200, or 206 with ``ranges``)."""

    status: int
    ranges: tuple[tuple[int, int], ...] = ()
    content_range: str | None = None

    @property
    def sends_content(self) -> bool:
        return self.status in (200, 206)

    def body_length(self, size: int) -> int:
        """Bytes of content the answer carries (what a download counts as served)."""
        if self.status == 206:
            return sum(stop - start for start, stop in self.ranges)
        return size if self.status == 200 else 0


_CONDITIONS = ("Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range")


def is_plain_get(method: str, headers) -> bool:
    """A GET whose answer is the whole representation whatever it is: no precondition and
    no Range (``decide`` would say 200 of any representation)."""
    return method.upper() == "GET" and not any(name in headers for name in _CONDITIONS)


def decide(method: str, headers, rep: Representation) -> Decision:
    """Preconditions (RFC 9110 §13.2.2), then Range (§14), in one step."""
    verdict = evaluate_preconditions(method, headers, rep)
    if verdict is not None:
        return Decision(verdict)
    ranged = evaluate_range(method, headers, rep)
    return Decision(ranged.status, ranged.ranges, ranged.content_range)


# ---------------------------------------------------------------- multipart

# RFC 2046 §5.1.1 bchars: 1-70 characters, not ending in a space.
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_FIELD_VALUE_RE = re.compile(r"[\x20-\x7e]+")


def new_boundary() -> str:
    """A fresh multipart boundary: 128 random bits, so it never occurs in content."""
    return secrets.token_hex(16)


def multipart_byteranges(ranges, size: int, content_type: str, boundary: str
                         ) -> tuple[list[tuple[bytes, int, int]], bytes, int]:
    """Layout of a multipart/byteranges body (RFC 9110 §14.6).

    Returns (parts, closing, content_length). Each part is
    (part_header_bytes, start, stop) with ``stop`` exclusive; the body is each
    header followed by ``data[start:stop]``, then ``closing``. As in the RFC's
    example, the first header starts with ``--BOUNDARY`` and the later ones with
    ``\\r\\n--BOUNDARY``; ``closing`` is ``\\r\\n--BOUNDARY--\\r\\n``.
    Raises ValueError for an empty or out-of-bounds range, or a boundary or
    content type that cannot be written verbatim into a part header.
    """
    if not _BOUNDARY_RE.fullmatch(boundary):
        raise ValueError(f"invalid multipart boundary: {boundary!r}")
    if not _FIELD_VALUE_RE.fullmatch(content_type):  # no CR/LF header injection
        raise ValueError(f"content type not a printable ASCII field value: {content_type!r}")
    if not ranges:
        raise ValueError("multipart/byteranges needs at least one range")
    parts = []
    for i, (start, stop) in enumerate(ranges):
        if not 0 <= start < stop <= size:
            raise ValueError(f"range ({start}, {stop}) outside 0..{size}")
        header = (f"--{boundary}\r\nContent-Type: {content_type}\r\n"
                  f"Content-Range: bytes {start}-{stop - 1}/{size}\r\n\r\n")
        lead = b"" if i == 0 else b"\r\n"  # the CRLF belongs to the delimiter
        parts.append((lead + header.encode("ascii"), start, stop))
    closing = f"\r\n--{boundary}--\r\n".encode("ascii")
    length = sum(len(head) + stop - start for head, start, stop in parts) + len(closing)
    return parts, closing, length


# ---------------------------------------------------------------- validators

def format_etag(opaque: str) -> str:
    """The ETag field value for a strong opaque-tag: ``"<opaque>"``."""
    return quote_etag(opaque)


def format_http_date(dt: datetime) -> str:
    """IMF-fixdate (RFC 9110 §5.6.7), e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    return http_date(dt)
