"""Tests for vimeo_api.http_semantics (RFC 9110 preconditions and ranges)."""

import email.parser
import email.policy
import string
from datetime import datetime, timezone

import pytest
from werkzeug.datastructures import Headers

from vimeo_api.http_semantics import (
    MAX_RANGES,
    PROCEED,
    Decision,
    RangeDecision,
    Representation,
    decide,
    evaluate_preconditions,
    evaluate_range,
    format_etag,
    format_http_date,
    multipart_byteranges,
    new_boundary,
)

UTC = timezone.utc
LM = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
LM_HTTP = "Mon, 01 Jan 2024 12:00:00 GMT"
BEFORE = "Mon, 01 Jan 2024 11:59:59 GMT"  # one second before LM
AFTER = "Mon, 01 Jan 2024 12:00:01 GMT"  # one second after LM
REP = Representation(etag="abc", last_modified=LM, size=10000)


def H(**fields):
    """werkzeug Headers from keyword args: If_Match="x" -> If-Match: x."""
    return Headers([(name.replace("_", "-"), value) for name, value in fields.items()])


# ------------------------------------------------------------ preconditions


def test_proceed_is_none():
    assert PROCEED is None
    assert evaluate_preconditions("GET", H(), REP) is PROCEED


# RFC 9110 §13.1.3 comparison table. Our representations are always strong, so
# the stored tag is "1"; the request tag plays "ETag 1" of the table.
@pytest.mark.parametrize(
    "request_tag, weak_match, strong_match",
    [
        ('W/"1"', True, False),   # W/"1" vs W/"1" and W/"1" vs "1": weak only
        ('W/"2"', False, False),  # W/"1" vs W/"2": no match
        ('"1"', True, True),      # "1" vs "1": both
        ('"2"', False, False),
    ],
)
def test_rfc9110_weak_and_strong_comparison(request_tag, weak_match, strong_match):
    rep = Representation(etag="1", last_modified=LM, size=1)
    # If-None-Match uses weak comparison, If-Match strong comparison.
    assert evaluate_preconditions("GET", H(If_None_Match=request_tag), rep) == (304 if weak_match else None)
    assert evaluate_preconditions("GET", H(If_Match=request_tag), rep) == (None if strong_match else 412)


@pytest.mark.parametrize(
    "value, rep, expected",
    [
        ("*", REP, None),
        ("*", None, 412),
        ('"abc"', REP, None),
        ('"abc"', None, 412),
        ('"xyz"', REP, 412),
        ('W/"abc"', REP, 412),  # weak tags never pass If-Match
        ('"a", W/"b",   "abc"', REP, None),
        ('"a", W/"abc",   "c"', REP, 412),
        ('"a",,"abc",', REP, None),  # empty list elements are ignored
        ("abc", REP, 412),  # unquoted: not an entity-tag
        ('"abc', REP, 412),
        ('"abc"x', REP, 412),
        ('*, "abc"', REP, 412),
        ("", REP, 412),
    ],
)
def test_if_match(value, rep, expected):
    assert evaluate_preconditions("GET", H(If_Match=value), rep) == expected
    assert evaluate_preconditions("PUT", H(If_Match=value), rep) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        (LM_HTTP, None),
        (AFTER, None),
        (BEFORE, 412),
        ("garbage", None),
        ("Mon, 01 Jan 2024 11:59:59 +0000", None),  # not an HTTP-date: ignored
        ("Mon, 01 Jan 2024 11:59:59", None),
        (f"{BEFORE}, {BEFORE}", None),  # a list of dates is ignored (§13.1.4)
        ("Monday, 01-Jan-24 11:59:59 GMT", 412),  # rfc850-date
        ("Mon Jan  1 11:59:59 2024", 412),  # asctime-date
    ],
)
def test_if_unmodified_since(value, expected):
    assert evaluate_preconditions("GET", H(If_Unmodified_Since=value), REP) == expected
    assert evaluate_preconditions("DELETE", H(If_Unmodified_Since=value), REP) == expected


def test_if_unmodified_since_ignored_without_representation():
    assert evaluate_preconditions("PUT", H(If_Unmodified_Since=BEFORE), None) is None


@pytest.mark.parametrize(
    "value, rep, method, expected",
    [
        ('"abc"', REP, "GET", 304),
        ('"abc"', REP, "HEAD", 304),
        ('"abc"', REP, "PUT", 412),
        ('"abc"', REP, "POST", 412),
        ('"abc"', REP, "DELETE", 412),
        ('W/"abc"', REP, "GET", 304),  # weak comparison
        ('W/"abc"', REP, "PUT", 412),
        ('"xyz"', REP, "GET", None),
        ('"a", W/"b",   "abc"', REP, "GET", 304),
        ('"a", W/"abc",   "c"', REP, "GET", 304),
        ('"a,abc"', REP, "GET", None),  # one tag whose opaque-tag contains a comma
        ("*", REP, "GET", 304),
        ("*", REP, "PUT", 412),
        ("*", None, "PUT", None),
        ('"abc"', None, "PUT", None),
        # garbage never matches and never raises
        ("abc", REP, "GET", None),
        ("W/", REP, "GET", None),
        ('"abc', REP, "GET", None),
        ('"abc" "abc"', REP, "GET", None),
        ('*, "abc"', REP, "GET", None),
        ("\x80\xff", REP, "GET", None),
        ("", REP, "GET", None),
    ],
)
def test_if_none_match(value, rep, method, expected):
    assert evaluate_preconditions(method, H(If_None_Match=value), rep) == expected


@pytest.mark.parametrize(
    "value, method, expected",
    [
        (LM_HTTP, "GET", 304),
        (LM_HTTP, "HEAD", 304),
        (AFTER, "GET", 304),
        (BEFORE, "GET", None),
        (LM_HTTP, "POST", None),  # only GET/HEAD
        (LM_HTTP, "PUT", None),
        ("garbage", "GET", None),
        ("01 Jan 2024 12:00:00 GMT", "GET", None),  # no day-name: not an HTTP-date
        ("Mon, 01 Jan 2024 12:00:00", "GET", None),  # no zone
        ("Mon, 31 Feb 2024 12:00:00 GMT", "GET", None),  # impossible date
        ("Monday, 01-Jan-24 12:00:00 GMT", "GET", 304),
        ("Mon Jan  1 12:00:00 2024", "GET", 304),
    ],
)
def test_if_modified_since(value, method, expected):
    assert evaluate_preconditions(method, H(If_Modified_Since=value), REP) == expected


def test_if_modified_since_uses_whole_seconds():
    rep = Representation(etag="abc", last_modified=LM.replace(microsecond=500000), size=1)
    assert evaluate_preconditions("GET", H(If_Modified_Since=LM_HTTP), rep) == 304
    assert evaluate_preconditions("GET", H(If_Modified_Since=format_http_date(rep.last_modified)), rep) == 304


def test_if_modified_since_ignored_without_representation():
    assert evaluate_preconditions("GET", H(If_Modified_Since=AFTER), None) is None


@pytest.mark.parametrize(
    "headers, method, expected",
    [
        # If-Match failing beats a matching If-None-Match
        (H(If_Match='"xyz"', If_None_Match='"abc"'), "GET", 412),
        (H(If_Match='"abc"', If_None_Match='"abc"'), "GET", 304),
        (H(If_Match='"abc"', If_None_Match='"abc"'), "PUT", 412),
        # If-Match present makes If-Unmodified-Since ignored
        (H(If_Match='"abc"', If_Unmodified_Since=BEFORE), "GET", None),
        (H(If_Match="*", If_Unmodified_Since=BEFORE), "PUT", None),
        # a failing If-Unmodified-Since beats a matching If-None-Match
        (H(If_Unmodified_Since=BEFORE, If_None_Match='"abc"'), "GET", 412),
        # If-None-Match present makes If-Modified-Since ignored
        (H(If_None_Match='"xyz"', If_Modified_Since=LM_HTTP), "GET", None),
        (H(If_None_Match='"abc"', If_Modified_Since=BEFORE), "GET", 304),
        # If-Unmodified-Since passing, If-Modified-Since fires
        (H(If_Unmodified_Since=LM_HTTP, If_Modified_Since=LM_HTTP), "GET", 304),
    ],
)
def test_precondition_precedence(headers, method, expected):
    assert evaluate_preconditions(method, headers, REP) == expected


def test_repeated_field_lines_are_combined():
    headers = Headers([("If-None-Match", '"xyz"'), ("If-None-Match", '"abc"')])
    assert evaluate_preconditions("GET", headers, REP) == 304


def test_plain_dict_headers_and_lowercase_method():
    assert evaluate_preconditions("GET", {"If-None-Match": '"abc"'}, REP) == 304
    assert evaluate_preconditions("get", {"If-Match": '"nope"'}, REP) == 412
    assert evaluate_preconditions("head", {"If-None-Match": '"abc"'}, REP) == 304


# ------------------------------------------------------------ ranges


def rng(value, method="GET", rep=REP, **more):
    return evaluate_range(method, H(Range=value, **more), rep)


def partial(*ranges, content_range=None):
    return RangeDecision(206, tuple(ranges), content_range)


FULL = RangeDecision(200, (), None)
UNSATISFIABLE = RangeDecision(416, (), "bytes */10000")


@pytest.mark.parametrize(
    "value, expected",
    [
        # RFC 9110 §14.1.2 examples, 10000-byte representation
        ("bytes=0-499", partial((0, 500), content_range="bytes 0-499/10000")),
        ("bytes=500-999", partial((500, 1000), content_range="bytes 500-999/10000")),
        ("bytes=-500", partial((9500, 10000), content_range="bytes 9500-9999/10000")),
        ("bytes=9500-", partial((9500, 10000), content_range="bytes 9500-9999/10000")),
        ("bytes=0-0,-1", partial((0, 1), (9999, 10000))),
        ("bytes=0-999,4500-5499,-1000", partial((0, 1000), (4500, 5500), (9000, 10000))),
        ("bytes=500-600,601-999", partial((500, 1000), content_range="bytes 500-999/10000")),
        ("bytes=500-700,601-999", partial((500, 1000), content_range="bytes 500-999/10000")),
    ],
)
def test_rfc9110_range_examples(value, expected):
    assert rng(value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("bytes=0-99999", partial((0, 10000), content_range="bytes 0-9999/10000")),  # last clamped
        ("bytes=0-", partial((0, 10000), content_range="bytes 0-9999/10000")),
        ("bytes=-20000", partial((0, 10000), content_range="bytes 0-9999/10000")),
        ("bytes=9999-9999", partial((9999, 10000), content_range="bytes 9999-9999/10000")),
        ("bytes=-5,-3", partial((9995, 10000), content_range="bytes 9995-9999/10000")),
        ("bytes=0-,0-,0-", partial((0, 10000), content_range="bytes 0-9999/10000")),
        ("bytes=5000-5999,0-99", partial((0, 100), (5000, 6000))),  # sorted
        ("bytes=20000-,0-9", partial((0, 10), content_range="bytes 0-9/10000")),
        ("bytes=0-9,-0", partial((0, 10), content_range="bytes 0-9/10000")),
        ("bytes= 0-9", partial((0, 10), content_range="bytes 0-9/10000")),
        ("bytes=0-9,", partial((0, 10), content_range="bytes 0-9/10000")),
        ("bytes=,0-9", partial((0, 10), content_range="bytes 0-9/10000")),
        ("bytes=0-9 , ,\t20-29", partial((0, 10), (20, 30))),
        ("Bytes=0-9", partial((0, 10), content_range="bytes 0-9/10000")),
        ("BYTES=0-9", partial((0, 10), content_range="bytes 0-9/10000")),
        ("bytes=0005-0009", partial((5, 10), content_range="bytes 5-9/10000")),
        ("bytes=0-" + "9" * 5000, partial((0, 10000), content_range="bytes 0-9999/10000")),
        ("bytes=-" + "9" * 5000, partial((0, 10000), content_range="bytes 0-9999/10000")),
    ],
)
def test_satisfiable_ranges(value, expected):
    assert rng(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "items=0-5",
        "bytes=abc",
        "bytes=5-2",  # last < first: the whole header is invalid
        "bytes=0-9,5-2",
        "bytes=0 - 5",
        "bytes =0-5",
        "bytes",
        "bytes=",
        "bytes=,",
        "bytes=-",
        "=0-5",
        "0-5",
        "bytes=1-2-3",
        "bytes=+1-5",
        "bytes=1_0-20",
        "bytes=\u0663-5",  # ARABIC-INDIC DIGIT THREE: not an ASCII DIGIT
        "bytes=0-5;x",
        "bytes=0x10-20",
        "bytes=0-9, bytes=20-29",
    ],
)
def test_invalid_range_is_ignored(value):
    assert rng(value) == FULL


@pytest.mark.parametrize(
    "value",
    ["bytes=10000-", "bytes=10000-20000", "bytes=-0", "bytes=20000-,-0", "bytes=" + "9" * 5000 + "-"],
)
def test_unsatisfiable_range(value):
    assert rng(value) == UNSATISFIABLE


@pytest.mark.parametrize("value", ["bytes=0-", "bytes=0-0", "bytes=-5"])
def test_empty_representation_is_416(value):
    assert rng(value, rep=Representation("abc", LM, 0)) == RangeDecision(416, (), "bytes */0")


def test_empty_representation_invalid_range_is_ignored():
    assert rng("bytes=abc", rep=Representation("abc", LM, 0)) == FULL


@pytest.mark.parametrize("method", ["HEAD", "POST", "PUT", "DELETE"])
def test_range_only_for_get(method):
    assert rng("bytes=0-9", method=method) == FULL
    assert rng("bytes=20000-", method=method) == FULL


def test_no_range_header():
    assert evaluate_range("GET", H(), REP) == FULL
    assert evaluate_range("GET", H(If_Range='"abc"'), REP) == FULL


@pytest.mark.parametrize(
    "if_range, expected",
    [
        ('"abc"', partial((0, 10), content_range="bytes 0-9/10000")),
        ('W/"abc"', FULL),  # weak tags never match If-Range
        ('"xyz"', FULL),
        ('"abc", "def"', FULL),  # If-Range takes one validator, not a list
        ("abc", FULL),
        (LM_HTTP, partial((0, 10), content_range="bytes 0-9/10000")),
        ("Monday, 01-Jan-24 12:00:00 GMT", partial((0, 10), content_range="bytes 0-9/10000")),
        (BEFORE, FULL),  # must be an exact match
        (AFTER, FULL),
        ("Mon, 01 Jan 2024 12:00:00", FULL),
        ("garbage", FULL),
        ("", FULL),
    ],
)
def test_if_range(if_range, expected):
    assert rng("bytes=0-9", If_Range=if_range) == expected


def test_if_range_with_unsatisfiable_or_invalid_range():
    assert rng("bytes=20000-", If_Range='"abc"') == UNSATISFIABLE
    assert rng("bytes=20000-", If_Range='"xyz"') == FULL
    assert rng("bytes=abc", If_Range='"abc"') == FULL


def test_max_ranges():
    assert MAX_RANGES == 16
    sixteen = ",".join(f"{i * 10}-{i * 10 + 4}" for i in range(16))
    seventeen = ",".join(f"{i * 10}-{i * 10 + 4}" for i in range(17))
    decision = rng(f"bytes={sixteen}")
    assert decision.status == 206
    assert decision.ranges == tuple((i * 10, i * 10 + 5) for i in range(16))
    assert decision.content_range is None
    assert rng(f"bytes={seventeen}") == FULL


def test_many_ranges_that_coalesce_are_served():
    adjacent = ",".join(f"{i * 10}-{i * 10 + 9}" for i in range(500))
    assert rng(f"bytes={adjacent}") == partial((0, 5000), content_range="bytes 0-4999/10000")
    overlapping = ",".join(["0-"] * 1000 + ["-1"] * 1000)
    assert rng(f"bytes={overlapping}") == partial((0, 10000), content_range="bytes 0-9999/10000")


# ------------------------------------------------------------ multipart/byteranges


def assemble(data, parts, closing):
    return b"".join(head + data[start:stop] for head, start, stop in parts) + closing


def test_multipart_exact_bytes():
    data = b"0123456789abcdef"
    parts, closing, length = multipart_byteranges([(0, 2), (10, 16)], len(data), "text/plain", "B")
    expected = (
        b"--B\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/16\r\n\r\n01"
        b"\r\n--B\r\nContent-Type: text/plain\r\nContent-Range: bytes 10-15/16\r\n\r\nabcdef"
        b"\r\n--B--\r\n"
    )
    assert parts == [
        (b"--B\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/16\r\n\r\n", 0, 2),
        (b"\r\n--B\r\nContent-Type: text/plain\r\nContent-Range: bytes 10-15/16\r\n\r\n", 10, 16),
    ]
    assert closing == b"\r\n--B--\r\n"
    assert assemble(data, parts, closing) == expected
    assert length == len(expected) == 145  # 64 + 72 + 9


def test_multipart_rfc_example_parses_back():
    data = bytes(string.ascii_letters * 200, "ascii")[:10000]
    decision = rng("bytes=0-999,4500-5499,-1000")
    boundary = new_boundary()
    parts, closing, length = multipart_byteranges(decision.ranges, len(data), "text/plain", boundary)
    body = assemble(data, parts, closing)
    assert len(body) == length
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: multipart/byteranges; boundary={boundary}\r\n\r\n".encode() + body
    )
    got = [(p["Content-Range"], p["Content-Type"], p.get_payload(decode=True)) for p in message.iter_parts()]
    assert got == [
        ("bytes 0-999/10000", "text/plain", data[0:1000]),
        ("bytes 4500-5499/10000", "text/plain", data[4500:5500]),
        ("bytes 9000-9999/10000", "text/plain", data[9000:10000]),
    ]


def test_multipart_binary_slices_and_length():
    data = bytes((i * 7) % 256 for i in range(1000))
    parts, closing, length = multipart_byteranges(((0, 10), (500, 600), (990, 1000)), 1000, "application/pdf", "xyz")
    body = assemble(data, parts, closing)
    assert len(body) == length
    for head, start, stop in parts:
        offset = body.index(head) + len(head)
        assert body[offset:offset + stop - start] == data[start:stop]
        assert f"Content-Range: bytes {start}-{stop - 1}/1000\r\n".encode() in head


@pytest.mark.parametrize(
    "ranges, content_type, boundary",
    [
        ([(0, 2)], "text/plain", "bad\r\nboundary"),
        ([(0, 2)], "text/plain", ""),
        ([(0, 2)], "text/plain", "x" * 71),
        ([(0, 2)], "text/plain\r\nX-Evil: 1", "B"),
        ([(0, 2)], "", "B"),
        ([(0, 2)], "text/plain; name=é", "B"),
        ([], "text/plain", "B"),
        ([(5, 5)], "text/plain", "B"),
        ([(0, 17)], "text/plain", "B"),
        ([(-1, 2)], "text/plain", "B"),
    ],
)
def test_multipart_rejects_bad_input(ranges, content_type, boundary):
    with pytest.raises(ValueError):
        multipart_byteranges(ranges, 16, content_type, boundary)


def test_new_boundary():
    a, b = new_boundary(), new_boundary()
    assert a != b
    assert len(a) == 32 and set(a) <= set(string.hexdigits)
    multipart_byteranges([(0, 1)], 1, "text/plain", a)  # accepted as a boundary


# ------------------------------------------------------------ validators


def test_format_etag_round_trips_through_preconditions():
    assert format_etag("abc") == '"abc"'
    assert evaluate_preconditions("GET", H(If_None_Match=format_etag(REP.etag)), REP) == 304


def test_format_http_date():
    assert format_http_date(datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert format_http_date(LM) == LM_HTTP
    assert evaluate_preconditions("GET", H(If_Modified_Since=format_http_date(LM)), REP) == 304


# ------------------------------------------------------------ decide: the whole decision


@pytest.mark.parametrize(
    "method, headers, expected",
    [
        ("GET", {}, Decision(200)),
        ("HEAD", {"Range": "bytes=0-9"}, Decision(200)),
        ("GET", {"If-None-Match": '"abc"'}, Decision(304)),
        ("GET", {"If-Match": '"other"', "Range": "bytes=0-9"}, Decision(412)),
        ("GET", {"If-Unmodified-Since": BEFORE, "Range": "bytes=0-9"}, Decision(412)),
        ("GET", {"Range": "bytes=0-9"}, Decision(206, ((0, 10),), "bytes 0-9/10000")),
        ("GET", {"Range": "bytes=0-1,5-6"}, Decision(206, ((0, 2), (5, 7)), None)),
        ("GET", {"Range": "bytes=20000-"}, Decision(416, (), "bytes */10000")),
        # Preconditions come first (RFC 9110 §13.2.2): a 304 wins over an unsatisfiable Range.
        ("GET", {"If-None-Match": '"abc"', "Range": "bytes=20000-"}, Decision(304)),
    ],
)
def test_decide_runs_preconditions_then_range(method, headers, expected):
    assert decide(method, headers, Representation("abc", LM, 10000)) == expected


def test_decision_body_length():
    assert Decision(200).body_length(10) == 10
    assert Decision(206, ((0, 2), (5, 7))).body_length(10) == 4
    assert Decision(304).body_length(10) == 0
    assert Decision(206, ((0, 1),)).sends_content and not Decision(412).sends_content
