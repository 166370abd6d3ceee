#!/usr/bin/env python
"""What each app-decided answer costs inside the app, without HTTP servers: Flask's test
client on a throwaway PostgreSQL database, metadata cache and rate limits in Redis,
X-Accel delivery (the stack's settings, bench/harness.py's redis_env).

    .venv/bin/python bench/profile_download.py [--requests 500] [--profile SCENARIO] [--app-root DIR]

Scenarios, each a 4 KiB file: ``limited`` (a large X-Max-Downloads: the app decides and
counts every GET), ``password`` (unlimited, right X-Password), ``token`` (GET /t/<token>
of a limited file), ``one-time`` (each request the first download of a fresh file),
``304`` (If-None-Match of a public file) and ``404`` (an unknown hash, cached).

For each it prints the mean wall time and the mean CPU time of this process per request
(``time.process_time``: PostgreSQL's and Redis's own work is not in it, their round trips
are in the wall time). ``--profile SCENARIO`` adds pyinstrument's tree of that scenario
(wall clock). ``--app-root`` imports the app from another checkout (``git worktree add
/tmp/before <commit>``), to compare a change with its parent in one sitting: run both, in
alternation, a few times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import create_database, delete_redis_keys, drop_database, redis_env  # noqa: E402

API = "/vimeo/api/v1.0"
SCENARIOS = ("limited", "password", "token", "one-time", "304", "404")


def prepare(client, name: str, n: int):
    """(list of (url, headers, expected status)) for ``n`` timed requests plus warm-up."""
    def up(headers):
        answer = client.put(f"{API}/upload/a.bin", data=os.urandom(4096), headers=headers)
        assert answer.status_code == 201, answer.data
        return answer.json

    if name == "limited":
        body = up({"X-Max-Downloads": "999999999"})
        return [(f"{API}/file/{body['filehash']}", {}, 200)] * n
    if name == "password":
        body = up({"X-Max-Downloads": "0", "X-Password": "s3cret"})
        return [(f"{API}/file/{body['filehash']}", {"X-Password": "s3cret"}, 200)] * n
    if name == "token":
        body = up({"X-Max-Downloads": "999999999"})
        token = client.post(f"{API}/file/{body['filehash']}/tokens", json={"expires_in": 3600},
                            headers={"X-Owner-Token": body["owner_token"]}).json["token"]
        return [(f"{API}/t/{token}", {}, 200)] * n
    if name == "one-time":
        return [(f"{API}/file/{up({})['filehash']}", {}, 200) for _ in range(n)]
    if name == "304":
        body = up({"X-Max-Downloads": "0"})
        return [(f"{API}/file/{body['filehash']}", {"If-None-Match": body["etag"]}, 304)] * n
    if name == "404":
        return [(f"{API}/file/{os.urandom(16).hex()}", {}, 404)] * n
    raise ValueError(name)


def run(client, requests_) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for url, headers, expected in requests_:
        status = client.get(url, headers=headers).status_code
        assert status == expected, (url, status, expected)
    n = len(requests_)
    return (time.perf_counter() - wall) / n * 1000, (time.process_time() - cpu) / n * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--profile", choices=SCENARIOS)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--app-root", type=Path, help="import vimeo_api from this checkout")
    args = parser.parse_args()
    app_root = args.app_root.resolve() if args.app_root else None
    if app_root:
        sys.path.insert(0, str(app_root))
        # bench.harness imports deploy.stack, which imports vimeo_api.errors: forget this
        # checkout's package, or the import below would hand back this checkout's app.
        for name in [n for n in sys.modules if n == "vimeo_api" or n.startswith("vimeo_api.")]:
            del sys.modules[name]
    import logging

    logging.disable(logging.INFO)  # the JSON request log would go to the terminal
    from vimeo_api import create_app

    db_url = create_database("vimeo_bench_profile")
    prefix = "vimeo_bench_profile_" + db_url.rsplit("_", 1)[1]
    storage = Path("/tmp") / (prefix + "_storage")
    try:
        settings = {k[len("VIMEO_"):]: v for k, v in redis_env(prefix).items()}
        app = create_app({"DATABASE_URL": db_url, "STORAGE_DIR": str(storage), "DELIVERY": "accel",
                          "EMBEDDED_SWEEP_INTERVAL": 0, "UPLOAD_RATE_LIMIT": "1000000/minute", **settings})
        loaded_from = Path(sys.modules["vimeo_api"].__file__).resolve().parent.parent
        print(f"app from {loaded_from}")
        if app_root and loaded_from != app_root:
            raise SystemExit(f"--app-root {app_root}: the app was imported from {loaded_from} instead")
        client = app.test_client()
        for name in args.scenarios.split(","):
            run(client, prepare(client, name, 30))  # warm-up
            wall, cpu = run(client, prepare(client, name, args.requests))
            print(f"{name:<9} {wall:6.2f} ms wall  {cpu:6.2f} ms CPU per request ({args.requests} requests)")
        if args.profile:
            from pyinstrument import Profiler

            requests_ = prepare(client, args.profile, args.requests)
            profiler = Profiler(interval=0.0002)
            profiler.start()
            run(client, requests_)
            profiler.stop()
            print(profiler.output_text(unicode=True, color=False, show_all=False))
        with app.app_context():
            from vimeo_api.extensions import db

            db.engine.dispose()
    finally:
        drop_database(db_url)
        delete_redis_keys(prefix)
        import shutil

        shutil.rmtree(storage, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
