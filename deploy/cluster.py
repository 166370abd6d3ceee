"""Several stateless nodes (issue 14): ``make cluster`` runs, on loopback, what a
deployment on several machines runs, each piece its own process:

- a load balancer, nginx on http://127.0.0.1:8080 (``VIMEO_CLUSTER_PORT``) rendered from
  deploy/lb.conf, in front of
- two nodes, each the stack's nginx (nginx.conf, rendered with the bucket's locations)
  on :8081 and :8082 in front of its own gunicorn (:8091, :8092), with its own local
  scratch space (raw upload bodies, fast-path grants, its fast-download log and the
  bookmark of its counting) under ``var/cluster/node<N>/``;
- a Celery worker and Celery beat (deletions, the sweep), which read no node's log;
- the shared PostgreSQL (database ``vimeo_cluster``, created when missing) and Redis
  (databases 3, 4 and 5: broker, cache, rate limits);
- a local S3 server (deploy/s3server.py: ``rclone serve s3`` on :9000, objects in
  ``var/cluster/s3``), the bucket every node and worker shares.

Nothing on a node is shared with another: a file uploaded through one downloads through
the other, a change on one stops every node's fast path within a second
(vimeo_api/grants.py), each node counts the downloads its own nginx answered
(``NODE_UPKEEP_INTERVAL``). ``python -m deploy.cluster`` runs it in the foreground;
Ctrl-C stops everything. The tests (tests/cluster/) start the same ``Cluster`` on free
ports; deploy/README.md shows the same on real machines.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from deploy.s3server import S3Server, start_rclone
from deploy.stack import (
    FAST_DOWNLOADS_LOG,
    ROOT,
    MiB,
    NginxSettings,
    check_nginx_conf,
    ensure_database,
    gunicorn_command,
    nginx_command,
    nginx_errors,
    nginx_string,
    port_in_use,
    s3_nginx_settings,
    spawn,
    stop,
    wait_for_http,
    write_nginx_conf,
)

LB_TEMPLATE = ROOT / "deploy" / "lb.conf"
# How long the balancer leaves a node alone after it failed (lb.conf's fail_timeout).
FAIL_TIMEOUT = "5s"
# A node's share of the upkeep, every so many seconds: counting its nginx's fast
# downloads, removing grants other nodes outdated (well within SWEEP_INTERVAL).
UPKEEP_INTERVAL = 10


def render_lb(*, listen: str, nodes: list[str], runtime_dir: str, log_dir: str, pid_file: str,
              max_body_size: int, user_directive: str, worker_processes: str = "auto",
              fail_timeout: str = FAIL_TIMEOUT) -> str:
    """deploy/lb.conf for ``nodes`` (their nginx's host:port)."""
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        autoescape=False,
    )
    environment.filters["nginx_string"] = nginx_string
    for name, value in (("runtime_dir", runtime_dir), ("log_dir", log_dir), ("pid_file", pid_file)):
        if any(ch in value for ch in " ;'\"{}$#\n"):
            raise ValueError(f"{name} cannot be used in lb.conf: {value!r}")
    return environment.from_string(LB_TEMPLATE.read_text()).render(
        listen=listen, nodes=nodes, runtime_dir=runtime_dir, log_dir=log_dir, pid_file=pid_file,
        max_body_size=str(int(max_body_size)), user_directive=user_directive, worker_processes=worker_processes,
        fail_timeout=fail_timeout, json_errors=nginx_errors(int(max_body_size)),
    )


def realip_from(address: str) -> str:
    """nginx.conf's extra_http for a node behind the balancer at ``address``: the
    client's address is the one the balancer saw (its X-Real-IP), so the coarse guard
    and the app's limits count clients, not the balancer."""
    return (
        f"    # Behind the load balancer ({address}): the client is the one it names.\n"
        f"    set_real_ip_from {address};\n"
        "    real_ip_header X-Real-IP;\n"
    )


@dataclass
class Node:
    """One node: its nginx in front of its gunicorn, with its own scratch space."""

    name: str
    root: Path
    env: dict[str, str]
    nginx: NginxSettings
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://{self.nginx.listen}"

    @property
    def app_base(self) -> str:
        return f"http://{self.env['GUNICORN_BIND']}"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def storage_dir(self) -> str:
        return self.env["VIMEO_STORAGE_DIR"]

    def start(self) -> None:
        """Start its gunicorn, then its nginx; each returns once it answers."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        gunicorn = spawn(gunicorn_command(), self.env, self.log_dir / "gunicorn.log")
        self.procs["gunicorn"] = gunicorn
        wait_for_http(f"{self.app_base}/healthz", procs=[gunicorn])
        conf = write_nginx_conf(self.nginx)
        check_nginx_conf(conf, self.nginx)
        nginx = spawn(nginx_command(conf, self.nginx), self.env, self.log_dir / "nginx.out")
        self.procs["nginx"] = nginx
        wait_for_http(f"{self.base}/healthz", procs=[nginx])

    def kill9(self, only: tuple[str, ...] = ("nginx", "gunicorn")) -> None:
        """``kill -9`` of its nginx and gunicorn (or ``only`` one of them), every process
        of each: no cleanup of any kind runs."""
        for name in only:
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(timeout=10)

    def stop(self) -> None:
        for name in ("nginx", "gunicorn"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                # nginx: SIGQUIT finishes transfers under way; gunicorn: SIGINT, its quick
                # shutdown (SIGTERM waits for the balancer's idle keep-alive connections).
                stop(proc, signal.SIGQUIT if name == "nginx" else signal.SIGINT)


class Cluster:
    """The balancer, the nodes, Celery worker and beat, on one bucket (``s3``), one
    database and one Redis; every process's output in a log file under ``root``."""

    def __init__(self, root: Path, s3: S3Server, env: dict[str, str], *, lb_port: int, node_ports: list[int],
                 app_ports: list[int], host: str = "127.0.0.1", s3_prefix: str = "", celery: bool = True,
                 max_body_size: int | None = None, upkeep_interval: int = UPKEEP_INTERVAL):
        self.root = Path(root).resolve()
        self.s3 = s3
        self.host = host
        self.lb_port = lb_port
        self.celery = celery
        self.procs: dict[str, subprocess.Popen] = {}
        shared = dict(env)
        shared.update(s3.env(s3_prefix))
        shared.setdefault("VIMEO_PUBLIC_URL", f"http://{host}:{lb_port}")
        # What makes each node the stack: nginx sends the bytes and writes raw bodies.
        shared["VIMEO_DELIVERY"] = "accel"
        shared["VIMEO_UPLOAD_OFFLOAD"] = "1"
        shared.setdefault("VIMEO_TRUSTED_PROXY_COUNT", "1")
        shared.setdefault("GUNICORN_KEEPALIVE", "75")
        self.max_body_size = int(max_body_size or shared.get("VIMEO_MAX_UPLOAD_SIZE", 16 * MiB))
        shared["VIMEO_MAX_UPLOAD_SIZE"] = str(self.max_body_size)
        self.env = shared
        s3_settings = s3_nginx_settings(shared)
        self.nodes: list[Node] = []
        for index, (node_port, app_port) in enumerate(zip(node_ports, app_ports), start=1):
            node_root = self.root / f"node{index}"
            node_env = dict(shared)
            node_env.update({
                "VIMEO_STORAGE_DIR": str(node_root / "scratch"),
                "VIMEO_FAST_PATH_LOG": str(node_root / "log" / FAST_DOWNLOADS_LOG),
                "VIMEO_NODE_UPKEEP_INTERVAL": str(upkeep_interval),
                "GUNICORN_BIND": f"{host}:{app_port}",
                "PROMETHEUS_MULTIPROC_DIR": str(node_root / "prometheus"),
            })
            settings = NginxSettings(
                listen=f"{host}:{node_port}", app_address=node_env["GUNICORN_BIND"],
                storage_dir=node_env["VIMEO_STORAGE_DIR"], runtime_dir=str(node_root / "nginx"),
                log_dir=str(node_root / "log"), max_body_size=self.max_body_size, worker_processes="1",
                extra_http=realip_from(host), s3=s3_settings,
            )
            self.nodes.append(Node(f"node{index}", node_root, node_env, settings))
        # Celery reads no node's log (NODE_UPKEEP_INTERVAL: the nodes count their own);
        # its scratch space is its own.
        self.worker_env = dict(shared)
        self.worker_env.update({"VIMEO_STORAGE_DIR": str(self.root / "worker" / "scratch"),
                                "VIMEO_NODE_UPKEEP_INTERVAL": str(upkeep_interval)})
        self.worker_env.pop("VIMEO_FAST_PATH_LOG", None)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.lb_port}"

    @property
    def lb_dir(self) -> Path:
        return self.root / "lb"

    def lb_conf(self) -> Path:
        node = self.nodes[0].nginx
        self.lb_dir.mkdir(parents=True, exist_ok=True)
        path = self.lb_dir / "nginx.conf"
        path.write_text(render_lb(
            listen=f"{self.host}:{self.lb_port}", nodes=[n.nginx.listen for n in self.nodes],
            runtime_dir=str(self.lb_dir), log_dir=str(self.lb_dir), pid_file=str(self.lb_dir / "nginx.pid"),
            max_body_size=self.max_body_size, user_directive=node.user_directive(), worker_processes="1",
        ))
        return path

    def start(self) -> "Cluster":
        try:
            for node in self.nodes:
                node.start()
            if self.celery:
                (self.root / "worker").mkdir(parents=True, exist_ok=True)
                self.procs["worker"] = spawn([
                    sys.executable, "-m", "celery", "-A", "celery_worker", "worker", "--loglevel", "INFO",
                    "--concurrency", "1", "--without-gossip", "--without-mingle", f"--hostname=worker-{self.lb_port}@%h",
                ], self.worker_env, self.root / "worker" / "worker.log")
                self.procs["beat"] = spawn([
                    sys.executable, "-m", "celery", "-A", "celery_worker", "beat", "--loglevel", "INFO",
                    "--schedule", str(self.root / "worker" / "celerybeat-schedule"), "--pidfile=",
                ], self.worker_env, self.root / "worker" / "beat.log")
            conf = self.lb_conf()
            settings = NginxSettings(listen="", app_address="", storage_dir=str(self.root), runtime_dir=str(self.lb_dir),
                                     log_dir=str(self.lb_dir))
            check_nginx_conf(conf, settings)
            self.procs["lb"] = spawn(nginx_command(conf, settings), self.env, self.lb_dir / "nginx.out")
            wait_for_http(f"{self.base}/healthz", procs=[self.procs["lb"]])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in ("lb", "beat", "worker"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                stop(proc, signal.SIGQUIT if name == "lb" else signal.SIGTERM)
        for node in self.nodes:
            node.stop()

    def dead(self) -> list[str]:
        """The processes that exited (the balancer, Celery, a node's nginx or gunicorn)."""
        found = [name for name, proc in self.procs.items() if proc.poll() is not None]
        for node in self.nodes:
            found += [f"{node.name} {name}" for name, proc in node.procs.items() if proc.poll() is not None]
        return found


# -- make cluster -----------------------------------------------------------------------

def cluster_environment(base: dict[str, str]) -> dict[str, str]:
    """The settings every process of the local cluster shares (``VIMEO_*`` from the
    environment or .env win)."""
    env = dict(base)
    env.setdefault("VIMEO_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/vimeo_cluster")
    env.setdefault("VIMEO_BROKER_URL", "redis://127.0.0.1:6379/3")
    env.setdefault("VIMEO_CACHE_TYPE", "RedisCache")
    env.setdefault("VIMEO_CACHE_REDIS_URL", "redis://127.0.0.1:6379/4")
    env.setdefault("VIMEO_RATELIMIT_STORAGE_URI", "redis://127.0.0.1:6379/5")
    return env


def run_cluster() -> int:
    try:
        from dotenv import load_dotenv

        load_dotenv(ROOT / ".env", override=False)
    except ImportError:
        pass
    env = cluster_environment(os.environ)
    root = Path(env.get("VIMEO_CLUSTER_DIR", ROOT / "var" / "cluster")).resolve()
    host = env.get("VIMEO_CLUSTER_HOST", "127.0.0.1")
    lb_port = int(env.get("VIMEO_CLUSTER_PORT", "8080"))
    node_ports, app_ports = [lb_port + 1, lb_port + 2], [lb_port + 11, lb_port + 12]
    s3_port = int(env.get("VIMEO_CLUSTER_S3_PORT", "9000"))
    for port in [lb_port, *node_ports, *app_ports, s3_port]:
        if port_in_use(host, port):
            print(f"cluster: {host}:{port} is already in use (set VIMEO_CLUSTER_PORT / VIMEO_CLUSTER_S3_PORT)",
                  file=sys.stderr)
            return 1
    ensure_database(env["VIMEO_DATABASE_URL"])
    subprocess.run([sys.executable, "manage.py", "db", "upgrade"], cwd=ROOT, env=env, check=True)
    given = (env.get("VIMEO_S3_ACCESS_KEY_ID"), env.get("VIMEO_S3_SECRET_ACCESS_KEY"))
    s3 = start_rclone(root / "s3", host=host, port=s3_port, log_path=root / "s3.log",
                      credentials=given if all(given) else None)
    cluster = Cluster(root, s3, env, lb_port=lb_port, node_ports=node_ports, app_ports=app_ports, host=host)
    stopping = False

    def shutdown(_signum=None, _frame=None):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGTERM, shutdown)
    try:
        cluster.start()
        print(
            f"cluster: up on {cluster.base} (load balancer) → "
            + ", ".join(f"{n.base} (nginx → gunicorn {n.env['GUNICORN_BIND']})" for n in cluster.nodes)
            + f"; Celery worker and beat; bucket {s3.bucket} on {s3.endpoint_url}\n"
            f"cluster: logs and scratch space in {root}; Ctrl-C stops everything",
            flush=True,
        )
        while not stopping:
            dead = cluster.dead()
            if dead:
                print(f"cluster: {', '.join(dead)} exited", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.5)
    except Exception as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        print("\ncluster: stopping", flush=True)
        cluster.stop()
        s3.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the local cluster in the foreground (the default)")
    render = sub.add_parser("render-lb", help="print the load balancer's nginx.conf (deploy/README.md)")
    render.add_argument("--listen", default="80")
    render.add_argument("--node", action="append", required=True, help="a node's nginx, host:port (repeat)")
    render.add_argument("--runtime-dir", default="/var/lib/nginx/vimeo-lb")
    render.add_argument("--log-dir", default="/var/log/nginx")
    render.add_argument("--pid-file", default="/run/nginx.pid")
    render.add_argument("--max-upload-size", type=int, default=16 * MiB)
    render.add_argument("--user", default="www-data")
    args = parser.parse_args(argv)
    if args.command == "render-lb":
        sys.stdout.write(render_lb(
            listen=args.listen, nodes=args.node, runtime_dir=args.runtime_dir, log_dir=args.log_dir,
            pid_file=args.pid_file, max_body_size=args.max_upload_size, user_directive=f"user {args.user};",
        ))
        return 0
    return run_cluster()


if __name__ == "__main__":
    sys.exit(main())
