"""Tests for vimeo_api.representation: cache classes, Content-Disposition (RFC 6266,
RFC 8187) and the one filename sanitizer."""

import re
import string

import pytest

from vimeo_api.representation import CACHE_CONTROL, CacheClass, cache_class, clean_filename, content_disposition


# ------------------------------------------------------------ Content-Disposition


@pytest.mark.parametrize(
    "filename, content_type, expected",
    [
        ("report.pdf", "application/pdf", "inline; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"),
        ("photo.png", "image/png", "inline; filename=\"photo.png\"; filename*=UTF-8''photo.png"),
        ("my file.txt", "text/plain", "inline; filename=\"my file.txt\"; filename*=UTF-8''my%20file.txt"),
        ('a"b\r\nd.txt', "text/plain", "inline; filename=\"a_bd.txt\"; filename*=UTF-8''a%22bd.txt"),
        # A backslash separates path components (Windows clients send whole paths).
        ('a"b\\c\r\nd.txt', "text/plain", "inline; filename=\"cd.txt\"; filename*=UTF-8''cd.txt"),
        ("résumé.pdf", "application/pdf",
         "inline; filename=\"resume.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"),
        ("日本.txt", "text/plain", "inline; filename=\"__.txt\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt"),
        ("%41.txt", "text/plain", "inline; filename=\"_41.txt\"; filename*=UTF-8''%2541.txt"),
        # The one sanitizer keeps a name's last path component (clean_filename).
        ("../a/b.txt", "text/plain", "inline; filename=\"b.txt\"; filename*=UTF-8''b.txt"),
        ("evil\u202etxt.exe", "text/plain", "inline; filename=\"eviltxt.exe\"; filename*=UTF-8''eviltxt.exe"),
        ("\udcff.txt", "text/plain", "inline; filename=\".txt\"; filename*=UTF-8''.txt"),
        ("", "text/plain", "inline; filename=\"file\"; filename*=UTF-8''file"),
        ("\r\n\x00", "text/plain", "inline; filename=\"file\"; filename*=UTF-8''file"),
        ("page.html", "text/html; charset=utf-8",
         "attachment; filename=\"page.html\"; filename*=UTF-8''page.html"),
        ("logo.svg", "image/svg+xml", "attachment; filename=\"logo.svg\"; filename*=UTF-8''logo.svg"),
    ],
)
def test_content_disposition(filename, content_type, expected):
    assert content_disposition(filename, content_type) == expected


@pytest.mark.parametrize(
    "content_type",
    [
        "text/html", "TEXT/HTML", "text/html;charset=utf-8", "application/xhtml+xml", "image/svg+xml",
        "IMAGE/SVG+XML", "text/xml", "application/xml", "application/atom+xml", "text/javascript",
        "application/javascript", "application/ecmascript", "text/ecmascript",
        "application/x-shockwave-flash", "text/xsl", "multipart/mixed", "multipart/x-mixed-replace",
        "", "garbage", "text/",
    ],
)
def test_active_types_are_attachments(content_type):
    assert content_disposition("f", content_type).startswith("attachment; ")


@pytest.mark.parametrize(
    "content_type",
    ["image/png", "image/jpeg", "video/mp4", "audio/mpeg", "text/plain", "application/pdf",
     "application/octet-stream", "application/json"],
)
def test_passive_types_are_inline(content_type):
    assert content_disposition("f", content_type).startswith("inline; ")


def test_force_attachment():
    assert content_disposition("photo.png", "image/png", force_attachment=True) == (
        "attachment; filename=\"photo.png\"; filename*=UTF-8''photo.png"
    )


# "/" and "\\" separate path components: no stored name holds one (clean_filename).
@pytest.mark.parametrize("char", [chr(c) for c in range(0x20, 0x7F) if chr(c) not in "/\\"])
def test_filename_star_uses_exactly_rfc8187_attr_char(char):
    attr_char = string.ascii_letters + string.digits + "!#$&+-.^_`|~"
    expected = char if char in attr_char else f"%{ord(char):02X}"
    value = content_disposition(f"a{char}b", "text/plain")
    assert value.endswith(f"; filename*=UTF-8''a{expected}b")


def test_content_disposition_is_a_safe_header_value():
    value = content_disposition('x"\r\n\x7f\u2028日%;.html', "text/plain")
    assert all(" " <= c <= "~" for c in value)
    assert value.startswith('inline; filename="x___;.html"; ')


# ------------------------------------------------------------ caching, validators


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(max_downloads=0, has_password=False), "public"),
        (dict(max_downloads=0, has_password=True), "password"),
        (dict(max_downloads=1, has_password=False), "limited"),
        (dict(max_downloads=5, has_password=True), "limited"),
        (dict(max_downloads=5, has_password=True, published=True), "immutable"),
        (dict(max_downloads=0, has_password=False, published=True), "immutable"),
        (dict(max_downloads=5, has_password=True, published=True, token=True), "token"),
        (dict(max_downloads=0, has_password=False, token=True), "token"),
    ],
)
def test_cache_class(kwargs, expected):
    assert cache_class(**kwargs) == expected
    assert expected in CACHE_CONTROL


def test_cache_control_values():
    assert CACHE_CONTROL == {
        "limited": "private, no-store",
        "password": "private, no-cache",
        "public": "public, max-age=60, s-maxage=3600",
        "immutable": "public, max-age=31536000, immutable",
        "token": "private, no-store, no-cache, must-revalidate",
    }


# ------------------------------------------------------------ clean_filename --------------------------------------------------------------------

@pytest.mark.parametrize(
    "given, expected",
    [
        ("report.xls", "report.xls"),
        ("../../etc/passwd", "passwd"),
        ("/abs/path/file.txt", "file.txt"),
        ("C:\\Users\\me\\doc.pdf", "doc.pdf"),
        ("..", "file"),
        (".", "file"),
        ("", "file"),
        (None, "file"),
        ("dir/", "file"),
        ("  spaced name.txt  ", "spaced name.txt"),
        ("bad\r\nname\x00.txt", "badname.txt"),
        ("tab\there.txt", "tabhere.txt"),
        ("evil\u202etxt.exe", "eviltxt.exe"),  # bidi override (a format character) dropped
        ("résumé.pdf", "résumé.pdf"),
        ("日本語.txt", "日本語.txt"),
    ],
)
def test_clean_filename(given, expected):
    assert clean_filename(given) == expected


def test_clean_filename_caps_the_length_keeping_the_extension():
    name = clean_filename("a" * 400 + ".tar.gz")
    assert len(name) == 255
    assert name == "a" * 252 + ".gz"


def test_clean_filename_caps_a_huge_extension():
    name = clean_filename("x." + "e" * 300)
    assert len(name) <= 255
    assert name.startswith("x")


def test_clean_filename_leaves_255_alone():
    name = "b" * 251 + ".txt"
    assert clean_filename(name) == name

def test_clean_filename_drops_line_and_paragraph_separators():
    assert clean_filename("a\u2028b\u2029c.txt") == "abc.txt"


def test_clean_filename_is_idempotent_so_content_disposition_keeps_what_upload_kept():
    for name in ("report.xls", "résumé.pdf", "a" * 400 + ".tar.gz", "..", "x\u202ey"):
        once = clean_filename(name)
        assert clean_filename(once) == once


def test_cache_class_is_a_string_enum_with_its_cache_control():
    assert CacheClass.PUBLIC == "public" and CacheClass("limited") is CacheClass.LIMITED
    assert CacheClass.TOKEN.cache_control == "private, no-store, no-cache, must-revalidate"
    assert {c for c in CacheClass if c.shareable} == {CacheClass.PUBLIC, CacheClass.IMMUTABLE}


def test_surrogate_keys_name_the_file_or_version_without_revealing_it():
    from types import SimpleNamespace

    from vimeo_api.representation import file_surrogate_key, surrogate_keys, version_surrogate_key

    filehash, version_id = "ab" * 16, "cd" * 16
    file_keys = surrogate_keys(SimpleNamespace(filehash=filehash))
    version_keys = surrogate_keys(SimpleNamespace(version_id=version_id, filehash=None))
    assert file_keys == f"vimeo {file_surrogate_key(filehash)}"
    assert version_keys == f"vimeo {version_surrogate_key(version_id)}"
    assert file_surrogate_key(filehash) != version_surrogate_key(filehash)
    for keys in (file_keys, version_keys):
        assert filehash not in keys and version_id not in keys
        assert re.fullmatch(r"vimeo vimeo-[fv]-[0-9a-f]{32}", keys)
