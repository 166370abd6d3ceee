"""The OpenAPI document (vimeo_api/openapi.json), held to the app both ways.

- Statically: every documented operation is a route of the app and every route is
  documented, with the same path parameters; every error answer is the one Error shape.
- Dynamically: schemathesis (``st run``: examples, coverage, fuzzing and stateful phases,
  the last chaining upload → download/delete/replace/… through the document's links)
  against a real gunicorn on a throwaway SQLite database and storage, with no failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from support import API
from support.operators import live_operator_token

from vimeo_api.openapi import document

HERE = Path(__file__).resolve().parent
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
# Flask's own static route; the package has no static files.
NOT_API = {"static"}
# Bounds of the fuzzing run: about two minutes in all.
ST_MAX_TIME = int(os.environ.get("VIMEO_SCHEMATHESIS_MAX_TIME", "90"))
ST_SEED = os.environ.get("VIMEO_SCHEMATHESIS_SEED", "1")


def openapi_path(rule: str) -> str:
    """``/file/<filehash>`` → ``/file/{filehash}`` (converters dropped)."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def app_operations(app) -> set[tuple[str, str]]:
    """(path, method) of every route; HEAD only where GET is not its source (Flask adds
    HEAD to every GET) and without Flask's automatic OPTIONS."""
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in NOT_API:
            continue
        for method in rule.methods - {"OPTIONS", "HEAD"}:
            operations.add((openapi_path(rule.rule), method.lower()))
    return operations


def documented_operations(doc: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item if method in METHODS}


def test_the_document_is_openapi_3_1_and_schemathesis_loads_it():
    import schemathesis

    doc = document()
    assert doc["openapi"].startswith("3.1.")
    schema = schemathesis.openapi.from_dict(doc)
    assert len(list(schema.get_all_operations())) == len(documented_operations(doc))


def test_it_is_served_as_json(client, backend):
    response = client.get(API + "/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == json.loads((HERE.parent / "vimeo_api" / "openapi.json").read_text())


def test_every_route_is_documented_and_every_documented_operation_is_a_route(make_app):
    app = make_app(backend="sqlite")
    doc = document()
    documented = {(path, method) for path, method in documented_operations(doc) if method not in ("head", "options")}
    routed = app_operations(app)
    assert routed - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routed == set(), "documented operations the app does not route"


def test_documented_head_operations_are_routed_and_downloads_document_head(make_app):
    app = make_app(backend="sqlite")
    adapter = app.url_map.bind("files.test")
    doc = document()
    heads = {path for path, method in documented_operations(doc) if method == "head"}
    for path in heads:
        concrete = re.sub(r"\{[^}]+\}", "0" * 32, path)
        endpoint, _ = adapter.match(concrete, method="HEAD")
        assert endpoint not in NOT_API
    # SPEC 3.2, 3.5, 3.6: HEAD is part of every download's contract.
    for path in ("/file/{filehash}", "/v/{version_id}", "/t/{token}"):
        assert "/vimeo/api/v1.0" + path in heads


def test_documented_options_operations_are_routes_of_their_own(make_app):
    """Flask answers OPTIONS on every route; only the tus routes answer it themselves,
    and those are the documented ones."""
    app = make_app(backend="sqlite")
    adapter = app.url_map.bind("files.test")
    documented = {path for path, method in documented_operations(document()) if method == "options"}
    explicit = {openapi_path(rule.rule) for rule in app.url_map.iter_rules()
                if "OPTIONS" in rule.methods and not getattr(rule, "provide_automatic_options", True)}
    assert documented == explicit == {"/vimeo/api/v1.0/tus/", "/vimeo/api/v1.0/tus/{upload_id}"}
    for path in documented:
        rule, _ = adapter.match(re.sub(r"\{[^}]+\}", "0" * 32, path), method="OPTIONS", return_rule=True)
        assert rule.endpoint.startswith("tus.")


def test_path_parameters_match_the_rules(make_app):
    app = make_app(backend="sqlite")
    doc = document()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in NOT_API:
            continue
        item = doc["paths"][openapi_path(rule.rule)]
        for method in rule.methods - {"OPTIONS", "HEAD"}:
            operation = item[method.lower()]
            params = [_resolve(doc, p) for p in item.get("parameters", []) + operation.get("parameters", [])]
            in_path = {p["name"] for p in params if p["in"] == "path"}
            assert in_path == set(rule.arguments) - set(rule.defaults or {}), (rule.rule, method)


def test_every_error_answer_is_the_error_shape_with_a_request_id():
    doc = document()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            for status, response in operation["responses"].items():
                response = _resolve(doc, response)
                assert "X-Request-Id" in response.get("headers", {}), (path, method, status)
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, method, status)


def test_the_error_schema_names_the_original_phrases():
    from vimeo_api.errors import PHRASES

    enum = document()["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
    assert set(PHRASES.values()) <= set(enum)


def test_the_committed_document_is_what_the_build_script_writes():
    import runpy

    built = runpy.run_path(str(HERE.parent / "scripts" / "build_openapi.py"), run_name="build_openapi")
    committed = (HERE.parent / "vimeo_api" / "openapi.json").read_text()
    assert built["render"]() == committed, "run: python scripts/build_openapi.py"


def test_the_documented_cursor_is_the_one_the_api_checks():
    from vimeo_api.operators import _CURSOR

    params = document()["paths"]["/vimeo/api/v1.0/files"]["get"]["parameters"]
    cursor = next(p for p in params if p["name"] == "cursor")
    assert cursor["schema"]["pattern"] == f"^({_CURSOR.pattern})?$"


def _resolve(doc: dict, node: dict) -> dict:
    while "$ref" in node:
        target = doc
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


# -- schemathesis against a live server ----------------------------------------------------

SCHEMATHESIS_CONFIG = r'''
# The operator endpoints need a bearer token (made by manage.py for this run).
[auth.openapi.operatorBearer]
bearer = "${ST_TOKEN}"

[generation]
database = "none"
# gunicorn (and nginx in front of it) reject these in header values with their own 400.
exclude-header-characters = "\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\u0008\u000a\u000b\u000c\u000d\u000e\u000f\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c\u001d\u001e\u001f\u007f"

# Valid requests may meet a file's state: gone (410: used up, deleted, expired), stale
# preconditions (412), a range past the end (416). None of these is a rejection of the data.
# A tus upload may be longer than the server's configured maximum, or its body longer
# than its Upload-Length (413), and a well-formed checksum may not match the chunk (460).
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "410", "412", "413", "416", "429", "460"]

# A gone file (410) or failed precondition (412) is answered before the body is read,
# as a missing one (404) is.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "410", "412", "415", "422", "428", "429", "5xx"]

# tus 1.0.0: a request without Tus-Resumable (a required header) is 412, the protocol's answer.
[checks.missing_required_header]
expected-statuses = ["400", "401", "403", "406", "412", "415", "422"]

# Only the document's own links: inferred ones would make POST /versions and /tokens (with
# made-up hashes) the stateful phase's entry points instead of the uploads.
[phases.stateful.inference]
algorithms = []
'''


def test_schemathesis_finds_no_failure_in_any_phase_including_stateful(gunicorn_server, tmp_path):
    # A small resumable maximum: the space promised to fuzzed tus uploads stays small.
    # The document allows expiries up to 100 years and "never"; an operator may too (the
    # default cap of 30 days would make those a 400 that schemathesis counts as a failure).
    server = gunicorn_server(workers=2, threads=4, VIMEO_MAX_RESUMABLE_UPLOAD_SIZE=1024 * 1024,
                             VIMEO_MAX_EXPIRES_IN="null")
    token = live_operator_token(server.env)
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    report_dir = tmp_path / "report"
    st = Path(sys.executable).with_name("st")
    command = [
        str(st), "--config-file", str(config), "run", server.api + "/openapi.json",
        "--url", server.base,
        "--phases", "examples,coverage,fuzzing,stateful",
        "--checks", "all",
        "--max-examples", "30",
        "--max-time", str(ST_MAX_TIME),
        "--seed", ST_SEED,
        "--request-timeout", "10",
        "--report", "json", "--report-dir", str(report_dir),
    ]
    env = {
        **os.environ,
        "ST_TOKEN": token,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH")])),
        "NO_COLOR": "1",
    }
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=ST_MAX_TIME + 120)
    output = run.stdout + run.stderr
    (tmp_path / "schemathesis.out").write_text(output)
    assert run.returncode == 0, output[-20000:]

    report = json.loads(next(report_dir.glob("json-*.json")).read_text())
    assert report["failures"] == [] and report["errors"] == []
    assert report["test_cases"]["generated"] > 500
    for phase in ("examples", "coverage", "fuzzing", "stateful"):
        assert report["phases"][phase]["status"] == "success", (phase, report["phases"])
    # The stateful phase ran and followed the document's links (upload → download, delete…).
    assert re.search(r"Stateful \(in [\d.]+s\)", output), output[-5000:]
    links = re.search(r"API Links:\s+(\d+) covered / (\d+) selected", output)
    assert links, output[-5000:]
    covered, selected = map(int, links.groups())
    assert selected >= 28 and covered >= selected // 2, links.group(0)
