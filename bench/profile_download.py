#!/usr/bin/env python
"""What one download costs inside the app, without HTTP servers: Flask's test client on a
throwaway PostgreSQL database, metadata cache in Redis, X-Accel delivery.

    .venv/bin/python bench/profile_download.py [--requests 500] [--profile] [--app-root DIR]

It uploads a 4 KiB file with ``X-Max-Downloads: 999999999`` (so every GET is decided and
counted by the app: the path of limited files), warms up, and prints the mean wall time
per GET, then the same for a 304 revalidation. ``--profile`` adds cProfile's 25 most
expensive calls (cumulative) for the GETs. ``--app-root`` imports the app from another
checkout (``git worktree add /tmp/before <commit>``), to compare a change with its parent
in one sitting.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import create_database, delete_redis_keys, drop_database, redis_env  # noqa: E402


def timed(client, url: str, n: int, headers: dict | None = None, expect: int = 200) -> float:
    for _ in range(20):
        assert client.get(url, headers=headers).status_code == expect
    started = time.perf_counter()
    for _ in range(n):
        client.get(url, headers=headers)
    return (time.perf_counter() - started) / n * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--app-root", type=Path, help="import vimeo_api from this checkout")
    args = parser.parse_args()
    if args.app_root:
        sys.path.insert(0, str(args.app_root.resolve()))
    import logging

    logging.disable(logging.INFO)  # the JSON request log would go to the terminal
    from vimeo_api import create_app

    db_url = create_database("vimeo_bench_profile")
    prefix = "vimeo_bench_profile_" + db_url.rsplit("_", 1)[1]
    storage = Path("/tmp") / (prefix + "_storage")
    try:
        settings = {k[len("VIMEO_"):]: v for k, v in redis_env(prefix).items()}
        app = create_app({"DATABASE_URL": db_url, "STORAGE_DIR": str(storage), "DELIVERY": "accel",
                          "EMBEDDED_SWEEP_INTERVAL": 0, **settings})
        print(f"app from {Path(sys.modules['vimeo_api'].__file__).parent.parent}")
        client = app.test_client()
        up = client.put("/vimeo/api/v1.0/upload/a.bin", data=os.urandom(4096),
                        headers={"X-Max-Downloads": "999999999"}).json
        url = "/vimeo/api/v1.0/file/" + up["filehash"]
        print(f"app-decided GET: {timed(client, url, args.requests):.2f} ms per request ({args.requests} requests)")
        print(f"304 revalidation: {timed(client, url, args.requests, {'If-None-Match': up['etag']}, 304):.2f} ms "
              f"per request")
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.requests):
                client.get(url)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
            print(out.getvalue())
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
