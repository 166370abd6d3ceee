"""The cluster of the module's tests: deploy/cluster.py's ``Cluster`` (a load balancer,
two nodes of nginx + gunicorn, a Celery worker and beat) on free ports, on the run's
S3 server (a key prefix of its own), a database of its own on the local PostgreSQL and
a Redis of its own, so that nothing it does reaches another test."""

from __future__ import annotations

import os

import pytest

from deploy.cluster import Cluster
from deploy.stack import free_port
from support import FAST_PASSWORD_HASH, PG_ADMIN_URL
from support.database import create_database, drop_database
from support.services import PrivateRedis, clean_environment
from support.stacks import Bucket


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server):
    root = tmp_path_factory.mktemp("cluster")
    redis = PrivateRedis(root / "redis")
    redis.start()
    db_url = create_database(PG_ADMIN_URL, "vimeo_cluster")
    env = clean_environment(
        VIMEO_DATABASE_URL=db_url,
        VIMEO_BROKER_URL=redis.url(0),
        VIMEO_CACHE_TYPE="RedisCache",
        VIMEO_CACHE_REDIS_URL=redis.url(1),
        VIMEO_RATELIMIT_STORAGE_URI=redis.url(2),
        VIMEO_PASSWORD_HASH_METHOD=FAST_PASSWORD_HASH,
        VIMEO_UPLOAD_RATE_LIMIT="100000/minute",
        # Short, so that the tests see released bytes leave the bucket.
        VIMEO_DELETE_GRACE_SECONDS=2,
        VIMEO_SWEEP_INTERVAL=2,
        GUNICORN_WORKERS=2,
        GUNICORN_THREADS=4,
    )
    prefix = f"cluster-{os.getpid()}-{free_port()}"
    started = Cluster(
        root, s3_server, env, lb_port=free_port(), node_ports=[free_port(), free_port()],
        app_ports=[free_port(), free_port()], s3_prefix=prefix, upkeep_interval=1,
    )
    started.bucket = Bucket(s3_server, prefix)
    try:
        started.start()
        yield started
    finally:
        started.stop()
        redis.stop()
        started.bucket.empty()
        drop_database(PG_ADMIN_URL, db_url)
