"""nginx.conf, the Jinja2 template deploy/stack.py renders: a config the real nginx accepts,
with one JSON error location per code nginx may answer, each saying the app's phrase."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import jinja2
import pytest

from deploy import stack
from deploy.stack import (
    JSON_ERROR_CODES,
    NGINX_ALIASES,
    NGINX_MESSAGES,
    NginxSettings,
    check_nginx_conf,
    free_port,
    nginx_command,
    render_nginx,
    spawn,
    stop,
    wait_for_http,
    write_nginx_conf,
)
from support.raw_http import exchange
from vimeo_api.errors import MESSAGES, PHRASES

MAX_BODY = 12345
REQUEST_ID = "0123456789abcdef0123456789abcdef"
# nginx.conf's per-code extras, as they were before the template had a loop.
RETRY_AFTER = {429: "1", 502: "5", 503: "5", 504: "5"}
# Tus-Resumable is empty (no header) outside the tus routes, "1.0.0" on them (nginx.conf's map).
TUS_HEADER = "add_header Tus-Resumable $vimeo_tus_resumable always;"
COMMON_HEADERS = f"{TUS_HEADER} add_header Cache-Control no-store always; add_header X-Request-Id $request_id always;"

# `location = /_vimeo_error/<code> { internal; <directives> return <status> '<text>'; }`
# as nginx.conf writes them.
LOCATION = re.compile(
    r"location = /_vimeo_error/(?P<name>\d+) \{ internal; types \{ \} default_type application/json;"
    r"(?P<headers>[^\n]*)\n\s*return (?P<code>\d+) '(?P<text>(?:[^'\\]|\\.)*)'; \}"
)
# `error_page <code> [=<status>] /_vimeo_error/<code>;`
ERROR_PAGE = re.compile(r"^\s*error_page (\d+)(?: =(\d+))? /_vimeo_error/(\d+);$", re.MULTILINE)
# Every code nginx.conf catches, and the status each is answered with.
ALL_CODES = {**{code: code for code in JSON_ERROR_CODES}, **NGINX_ALIASES}


def settings_in(tmp_path, **overrides) -> NginxSettings:
    values = dict(
        listen=f"127.0.0.1:{free_port()}",
        # Nothing listens there: what reaches the app is nginx's 502.
        app_address=f"127.0.0.1:{free_port()}",
        storage_dir=str(tmp_path / "storage"),
        runtime_dir=str(tmp_path / "nginx"),
        log_dir=str(tmp_path / "log"),
        max_body_size=MAX_BODY,
        worker_processes="1",
    )
    values.update(overrides)
    return NginxSettings(**values)


def nginx_unquote(text: str) -> str:
    """What nginx's config parser makes of the inside of a quoted string: a backslash
    before a quote or a backslash is dropped, \\t \\r \\n are control characters, any other
    backslash stays."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in "\"'\\":
                out.append(nxt)
                i += 2
                continue
            if nxt in "trn":
                out.append({"t": "\t", "r": "\r", "n": "\n"}[nxt])
                i += 2
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def expected_message(code: int) -> str:
    if code in NGINX_MESSAGES:
        return NGINX_MESSAGES[code].format(max_body_size=MAX_BODY)
    return MESSAGES[code]


def locations(conf: str) -> dict[int, re.Match]:
    found = {}
    for match in LOCATION.finditer(conf):
        code = int(match["name"])
        assert code not in found, f"/_vimeo_error/{code} is defined twice"
        found[code] = match
    return found


def answer(match: re.Match) -> dict:
    """The JSON body the location returns, with nginx's $request_id filled in."""
    text = nginx_unquote(match["text"])
    assert text.endswith("}\n")
    assert text.count("$") == 1 and '"$request_id"' in text
    return json.loads(text.replace("$request_id", REQUEST_ID))


@pytest.fixture
def conf(tmp_path) -> str:
    return render_nginx(settings_in(tmp_path))


def test_the_rendered_conf_is_accepted_by_nginx(tmp_path):
    settings = settings_in(tmp_path)
    check_nginx_conf(write_nginx_conf(settings), settings)


def test_extra_http_blocks_go_into_the_http_context(tmp_path):
    """An upstream is only allowed at http level: nginx -t refuses it anywhere else, and a
    location of extra_locations may proxy to it."""
    settings = settings_in(
        tmp_path,
        extra_http=f"    upstream extra_app {{\n        server 127.0.0.1:{free_port()};\n        keepalive 4;\n    }}\n",
        extra_locations="        location /extra/ {\n            proxy_pass http://extra_app;\n        }\n",
    )
    conf = render_nginx(settings)
    assert conf.index("upstream extra_app {") < conf.index("    server {")
    check_nginx_conf(write_nginx_conf(settings), settings)


def test_no_placeholder_is_left(conf):
    for mark in ("{{", "}}", "{%", "%}", "{#", "#}", "@{"):
        assert mark not in conf, mark
    assert "Undefined" not in conf


def test_a_missing_value_fails_the_render(tmp_path, monkeypatch):
    template = tmp_path / "nginx.conf"
    template.write_text("listen {{ listen }};\nserver {{ no_such_value }};\n")
    monkeypatch.setattr(stack, "TEMPLATE", template)
    with pytest.raises(jinja2.UndefinedError, match="no_such_value"):
        render_nginx(settings_in(tmp_path))


def test_every_error_page_leads_to_a_json_location(conf):
    pages = ERROR_PAGE.findall(conf)
    assert pages
    for code, status, target in pages:
        assert code == target
        # An alias says the status it is answered with; a code of its own needs none.
        assert int(status or code) == ALL_CODES[int(code)]
    found = locations(conf)
    assert {int(code) for code, _, _ in pages} <= set(found)
    assert sorted(found) == sorted(ALL_CODES)
    # The server's error_page lines name every code, in the order of JSON_ERROR_CODES
    # then NGINX_ALIASES; the fast path's all but 403 and 500 (those send the request to
    # the app).
    server_block = conf[conf.index("    server {"):conf.index("        location / {")]
    assert [int(c) for c, _, _ in ERROR_PAGE.findall(server_block)] == list(ALL_CODES)
    fast_block = conf[conf.index('location ~ "^/vimeo/api/v1\\.0/(?:file|v)'):conf.index("location @vimeo_app")]
    assert [int(c) for c, _, _ in ERROR_PAGE.findall(fast_block)] == [c for c in ALL_CODES if c not in (403, 500)]


def test_no_error_page_leads_to_a_named_location(conf):
    """nginx cannot jump to a @named location from a request whose URI it could not read
    (it answered those with its own HTML 500): every error_page target is a URI."""
    assert not re.search(r"error_page [^;]*@json", conf)
    assert "@json_" not in conf


@pytest.mark.parametrize("code", list(ALL_CODES))
def test_each_location_returns_the_apps_phrase(conf, code):
    match = locations(conf)[code]
    status = ALL_CODES[code]
    assert int(match["code"]) == status
    assert answer(match) == {"error": PHRASES[status], "message": expected_message(code), "request_id": REQUEST_ID}


def test_a_client_never_gets_a_5xx_of_its_own_doing():
    assert all(status < 500 for status in NGINX_ALIASES.values())
    assert {501, 505} <= set(NGINX_ALIASES)


def test_the_413_message_names_the_limit(conf):
    assert answer(locations(conf)[413])["message"].endswith(f" of {MAX_BODY} bytes.")


@pytest.mark.parametrize("code", list(ALL_CODES))
def test_per_code_headers_are_unchanged(conf, code):
    headers = locations(conf)[code]["headers"].strip()
    status = ALL_CODES[code]
    if code == 416:
        # nginx's 416 comes after the blob location's add_header ran (see nginx.conf).
        assert headers == TUS_HEADER
    elif status in RETRY_AFTER:
        assert headers == f"{COMMON_HEADERS} add_header Retry-After {RETRY_AFTER[status]} always;"
    else:
        assert headers == COMMON_HEADERS


def test_nginx_string_escapes_what_nginx_reads_as_an_escape():
    text = "it's \\n a \"quote\" \\ here"
    assert stack.nginx_string(text) == "it\\'s \\\\n a \"quote\" \\\\ here"
    assert nginx_unquote(stack.nginx_string(text)) == text


def test_a_dollar_in_an_error_text_is_refused(monkeypatch, tmp_path):
    monkeypatch.setitem(NGINX_MESSAGES, 400, "Costs $5.")
    with pytest.raises(ValueError, match="400"):
        render_nginx(settings_in(tmp_path))


def test_the_running_nginx_answers_the_json_of_the_template(tmp_path, monkeypatch):
    """Quotes and backslashes in a message reach the client as written, and nginx's own
    errors carry the app's phrases: the internal location's 404, the body limit's 413 and
    the 502 of an app that does not answer."""
    tricky = "Nobody's here: \"x\" \\ y."
    monkeypatch.setitem(NGINX_MESSAGES, 404, tricky)
    settings = settings_in(tmp_path)
    conf = write_nginx_conf(settings)
    check_nginx_conf(conf, settings)
    proc = spawn(nginx_command(conf, settings), {"PATH": "/usr/sbin:/usr/bin:/bin"}, tmp_path / "nginx.out")
    base = f"http://{settings.listen}"
    try:
        wait_for_http(base + "/", procs=[proc])
        cases = [
            ("GET", "/_vimeo_blobs/x", None, 404, tricky),
            ("PUT", "/vimeo/api/v1.0/upload/big.bin", b"x" * (MAX_BODY + 1), 413, expected_message(413)),
            ("GET", "/vimeo/api/v1.0/file/" + "0" * 32, None, 502, expected_message(502)),
        ]
        for method, path, data, status, message in cases:
            request = urllib.request.Request(base + path, data=data, method=method,
                                             headers={"X-Request-Id": "ignored"})
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=10)
            error = caught.value
            body = error.read()
            assert error.code == status, (path, body)
            assert error.headers["Content-Type"] == "application/json"
            assert error.headers["Cache-Control"] == "no-store"
            request_id = error.headers["X-Request-Id"]
            assert re.fullmatch(r"[0-9a-f]{32}", request_id)
            assert body.endswith(b"}\n")
            assert json.loads(body) == {"error": PHRASES[status], "message": message, "request_id": request_id}
            if status == 502:
                assert error.headers["Retry-After"] == "5"
            else:
                assert error.headers["Retry-After"] is None
    finally:
        stop(proc)


def test_requests_nginx_cannot_read_get_the_json_too(tmp_path):
    """What used to be nginx's HTML 500 ("empty URI in redirect to named location"): a
    NUL in the path and a broken request line; and the 5xx nginx gave a client's own
    request (505 for HTTP/2.0 in plain text, 501 for an unknown Transfer-Encoding) is a
    400. The error locations themselves cannot be asked for."""
    settings = settings_in(tmp_path)
    conf = write_nginx_conf(settings)
    check_nginx_conf(conf, settings)
    proc = spawn(nginx_command(conf, settings), {"PATH": "/usr/sbin:/usr/bin:/bin"}, tmp_path / "nginx.out")
    host, port = settings.listen.split(":")
    try:
        wait_for_http(f"http://{settings.listen}/", procs=[proc])
        cases = [
            (b"GET /vimeo/api/v1.0/file/%00 HTTP/1.1\r\nHost: x\r\n\r\n", 400, NGINX_MESSAGES[400]),
            (b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, NGINX_MESSAGES[400]),
            (b"GET / HTTP/2.0\r\n\r\n", 400, NGINX_MESSAGES[505]),
            (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400, NGINX_MESSAGES[501]),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, NGINX_MESSAGES[494]),
            (b"GET /_vimeo_error/400 HTTP/1.1\r\nHost: x\r\n\r\n", 404, MESSAGES[404]),
        ]
        for data, status, message in cases:
            got = exchange(host, int(port), data)
            assert got.status == status, (data[:40], got)
            assert got.header("Content-Type") == "application/json"
            request_id = got.header("X-Request-Id")
            assert json.loads(got.body) == {"error": PHRASES[status], "message": message, "request_id": request_id}
    finally:
        stop(proc)


def test_a_multipart_body_may_carry_its_framing_beside_a_file_of_the_limit(conf):
    """client_max_body_size counts the whole body: the multipart routes allow the app's
    MULTIPART_OVERHEAD beyond MAX_UPLOAD_SIZE, a raw upload (its body is the file) not."""
    server_block = conf[conf.index("    server {"):conf.index("        location / {")]
    assert f"client_max_body_size {MAX_BODY + 64 * 1024};" in server_block
    start = conf.index("location ~ ^/vimeo/api/v1\\.0/upload")
    upload_block = conf[start:conf.index("location /_vimeo_blobs/", start)]
    assert f"client_max_body_size {MAX_BODY};" in upload_block


def test_tls_and_trusted_proxies_are_checked_before_nginx_sees_them(tmp_path):
    with pytest.raises(ValueError, match="both"):
        render_nginx(settings_in(tmp_path, tls_cert="/etc/ssl/cert.pem"))
    with pytest.raises(ValueError, match="trusted proxy"):
        render_nginx(settings_in(tmp_path, trusted_proxies=("proxy.example",)))
    with pytest.raises(ValueError, match="rate"):
        render_nginx(settings_in(tmp_path, limit_req_rate="100r/s; deny all"))
    conf = render_nginx(settings_in(tmp_path, trusted_proxies=("10.0.0.0/8", "::1")))
    assert "set_real_ip_from 10.0.0.0/8;" in conf and "set_real_ip_from ::1/128;" in conf
    assert "real_ip_recursive on;" in conf
    assert "real_ip_header" not in render_nginx(settings_in(tmp_path))
    assert "ssl" not in render_nginx(settings_in(tmp_path)).split("server {", 1)[1].split("server_name", 1)[0]


# -- the bucket's locations (STORAGE_URL s3://...) ---------------------------------------

def s3_conf(tmp_path, **s3) -> tuple[NginxSettings, str]:
    settings = settings_in(tmp_path, s3=stack.S3Nginx(address=f"127.0.0.1:{free_port()}", **s3))
    return settings, render_nginx(settings)


def blocks(conf: str, opening: str) -> str:
    """The text of the block that ``opening`` starts, to its closing brace."""
    start = conf.index(opening)
    end = conf.index("\n        }\n", start)
    return conf[start:end]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_s3_render_is_accepted_by_nginx(tmp_path, scheme):
    settings, conf = s3_conf(tmp_path, scheme=scheme)
    check_nginx_conf(write_nginx_conf(settings), settings)
    assert (f"proxy_pass {scheme}://vimeo_s3$vimeo_s3_uri;" in conf) and (("proxy_ssl_verify on;" in conf) == (scheme == "https"))


def test_the_local_render_has_no_bucket_location(conf):
    assert "vimeo_s3" not in conf and "content_cache" not in conf
    assert conf.count('location ~ "^/vimeo/api/v1\\.0/(?:file|v)/[0-9a-f]{32}$"') == 1


def test_every_bucket_location_hides_every_header_of_the_store(tmp_path):
    _settings, conf = s3_conf(tmp_path)
    assert conf.count('location ~ "^/vimeo/api/v1\\.0/(?:file|v)/[0-9a-f]{32}$"') == 1  # the S3 fast path only
    for opening in ("location = /_vimeo_s3 {", "location = /_vimeo_s3_whole {",
                    'location ~ "^/vimeo/api/v1\\.0/(?:file|v)/[0-9a-f]{32}$" {'):
        block = blocks(conf, opening)
        hidden = re.findall(r"proxy_hide_header (\S+);", block)
        assert hidden == list(stack.S3_HIDDEN_HEADERS), opening
        # None of the client's headers goes to the store; errors become the API's JSON.
        assert "proxy_pass_request_headers off;" in block and "proxy_intercept_errors on;" in block
        assert re.search(r"error_page [0-9 ]*502 [0-9 ]*=503 /_vimeo_error/503;", block), opening
        # Every other code nginx may answer still leads to its JSON location.
        codes = {int(found[0]) for found in ERROR_PAGE.findall(block)}
        assert codes <= set(ALL_CODES) and 416 in codes and 413 in codes


def test_s3_settings_follow_the_apps_presigned_urls():
    env = {
        "VIMEO_STORAGE_URL": "s3://bucket/prefix", "VIMEO_S3_ENDPOINT_URL": "http://127.0.0.1:9123",
        "VIMEO_S3_REGION": "us-east-1", "VIMEO_S3_ACCESS_KEY_ID": "AKIDEXAMPLE1234567890",
        "VIMEO_S3_SECRET_ACCESS_KEY": "0" * 40, "VIMEO_S3_READ_TIMEOUT": "7",
    }
    settings = stack.s3_nginx_settings(env)
    assert (settings.address, settings.scheme, settings.read_timeout) == ("127.0.0.1:9123", "http", "7s")
    tls = stack.s3_nginx_settings({**env, "VIMEO_S3_ENDPOINT_URL": "https://abc.r2.cloudflarestorage.com"})
    assert (tls.address, tls.scheme) == ("abc.r2.cloudflarestorage.com:443", "https")
    assert stack.s3_nginx_settings({}) is None
