#!/usr/bin/python3
"""Cluster RunTask throughput: tasks placed and claimed per second through the ECS API.

Three berthd agents of one cluster sharing its state in one etcd, against the same work on one
berthd keeping its state in SQLite, in the same run. Client threads (two per agent by default)
send RunTask with count=10 (each call's claims are one etcd transaction) and with count=1, on
keep-alive connections to the agents' Unix sockets, until --tasks tasks were asked for (or
--seconds passed). Reported per backend and count: tasks placed per second (the tasks the
responses returned, over the wall time of the drive), RunTask p50/p99 latency, failures, and
the CPU each process spent meanwhile (the machine is small: who used it says where the time
went).

No container is meant to start: the task definition's image is on a registry that cannot be
reached (127.0.0.1:1), so each task's launch fails fast (create: no such image; pull: connection
refused) and the task stops. Those failing launches run in the agents during the drive (a
thread, two Docker calls, two store writes and a capacity give-back per task); they are counted
and shown beside the figures.

Each (backend, count) gets fresh processes, temp dirs, cluster name and ledgers; everything this
script starts is stopped by its PID (SIGTERM, then waited for) and its files removed.

    /usr/bin/python3 bench/cluster_runtask.py [--berthd PATH] [--tasks N] [--clients N]
        [--count 10,1] [--seconds S] [--agents N]

Standard library only (Debian's python3).
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TARGET_PREFIX = "AmazonEC2ContainerServiceV20141113."
ABSENT_IMAGE = "127.0.0.1:1/berth-bench-absent:none"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- talking to berthd ----

class unix_connection(http.client.HTTPConnection):
    """HTTP/1.1 over berthd's Unix socket; Host is "berth", as the tests send it."""

    def __init__(self, path, timeout=60.0):
        super().__init__("berth", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class client:
    """One keep-alive connection to one berthd; reconnects after a dropped connection."""

    def __init__(self, path, keep_alive=True):
        self.path = path
        self.keep_alive = keep_alive
        self.conn = None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _exchange(self, method, url, body, headers):
        if self.conn is None:
            self.conn = unix_connection(self.path)
        self.conn.request(method, url, body=body, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        if not self.keep_alive or r.will_close:
            self.close()
        return r.status, data

    def call(self, action, body):
        """An ECS action: (HTTP status, parsed body or None). The headers are those of
        tests/agent/agent_fixture.hpp's raw(); Content-Length and Host come from http.client."""
        payload = json.dumps(body).encode()
        headers = {"X-Amz-Target": TARGET_PREFIX + action,
                   "Content-Type": "application/x-amz-json-1.1"}
        if not self.keep_alive:
            headers["Connection"] = "close"
        try:
            status, data = self._exchange("POST", "/", payload, headers)
        except (OSError, http.client.HTTPException):
            # A connection berthd closed while idle: once more on a fresh one.
            self.close()
            status, data = self._exchange("POST", "/", payload, headers)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, None

    def get(self, url):
        try:
            return self._exchange("GET", url, None, {})
        except (OSError, http.client.HTTPException):
            self.close()
            return self._exchange("GET", url, None, {})


def etcd_metrics(endpoint):
    """etcd's /metrics (Prometheus text) as {"name{labels}": value}; {} without etcd."""
    if not endpoint:
        return {}
    try:
        with urllib.request.urlopen(endpoint + "/metrics", timeout=5) as r:
            return parse_metrics(r.read())
    except OSError:
        return {}


def parse_metrics(data):
    out = {}
    for line in data.decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            pass
    return out


def metrics_of(path):
    """berthd's /metrics as {"name{labels}": value}; {} when it does not answer."""
    c = client(path, keep_alive=False)
    try:
        status, data = c.get("/metrics")
    except (OSError, http.client.HTTPException):
        return {}
    if status != 200:
        return {}
    return parse_metrics(data)


def metric_sum(m, name):
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def metric_with(m, name, label):
    return sum(v for k, v in m.items() if k.startswith(name + "{") and label in k)


def cpu_seconds(pid):
    """User + system CPU a process has used, from /proc (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def dockerd_pids():
    """The running dockerd processes (read from /proc; none when Docker is not running)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/comm") as f:
                if f.read().strip() == "dockerd":
                    out.append(int(d))
        except OSError:
            pass
    return out


# ---- processes this script owns ----

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(what, pred, timeout, proc=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: exited ({proc.returncode}) at start; log:\n"
                               + tail(log))
        try:
            if pred():
                return
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not ready within {timeout} s; log:\n" + tail(log))


def tail(path, n=20):
    if not path:
        return ""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


class stack:
    """What one (backend, count) run started: stopped by PID and removed, in reverse order."""

    def __init__(self, berthd, cluster):
        self.berthd = berthd
        self.cluster = cluster
        self.dir = tempfile.mkdtemp(prefix=f"berth-bench-{cluster}-")
        self.procs = []  # (name, Popen)
        self.ledgers = []
        self.sockets = []
        self.pids = {}  # name -> pid, for CPU accounting
        self.etcd_endpoint = None

    def spawn(self, name, args):
        log = os.path.join(self.dir, name + ".log")
        with open(log, "wb") as out:
            p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        self.procs.append((name, p))
        self.pids[name] = p.pid
        return p, log

    def start_etcd(self, extra=()):
        client_port, peer_port = free_port(), free_port()
        endpoint = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        # The flags of tests/agent/state/etcd_testing.hpp.
        p, log = self.spawn("etcd", [
            "/usr/bin/etcd", "--name=berth-bench",
            "--data-dir=" + os.path.join(self.dir, "etcd-data"),
            "--listen-client-urls=" + endpoint, "--advertise-client-urls=" + endpoint,
            "--listen-peer-urls=" + peer, "--initial-advertise-peer-urls=" + peer,
            "--initial-cluster=berth-bench=" + peer, "--logger=zap", "--log-level=error",
            *extra])

        def healthy():
            with urllib.request.urlopen(endpoint + "/health", timeout=1) as r:
                return json.loads(r.read()).get("health") == "true"

        wait_for("etcd", healthy, 20, p, log)
        self.etcd_endpoint = endpoint
        return endpoint

    def start_berthd(self, name, zone, etcd_prefix=None, cpu_units=1000000, memory_mib=1000000):
        sock = os.path.join(self.dir, name + ".sock")
        ledger = f"{self.cluster}-{name}"
        args = [self.berthd, "--cluster=" + self.cluster,
                "--state-dir=" + os.path.join(self.dir, name + "-state"),
                "--socket=" + sock, "--ledger-name=" + ledger,
                f"--cpu-units={cpu_units}", f"--memory-mib={memory_mib}",
                "--availability-zone=" + zone, "--config=/dev/null",
                "--host-ip=127.0.0.1", "--instance-address=127.0.0.1",
                "--stop-timeout=2s", "--image-cleanup=false", "--log-level=warn"]
        if etcd_prefix is not None:
            args += ["--etcd-endpoints=" + self.etcd_endpoint, "--etcd-prefix=" + etcd_prefix]
        self.ledgers.append(ledger)
        p, log = self.spawn(name, args)
        c = client(sock)
        wait_for(f"berthd {name}", lambda: c.get("/v1/metadata")[0] == 200, 30, p, log)
        c.close()
        self.sockets.append(sock)
        return sock

    def stop(self):
        for name, p in reversed(self.procs):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    print(f"  {name} (pid {p.pid}) ignored SIGTERM for 30 s: killed",
                          file=sys.stderr)
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
        self.procs = []
        remove_labelled_containers(self.cluster)
        for ledger in self.ledgers:
            try:
                os.unlink("/dev/shm/berth." + ledger)
            except FileNotFoundError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def remove_labelled_containers(cluster):
    """This run's containers, by its cluster's label only (none are expected: the image is
    absent)."""
    docker = shutil.which("docker")
    if docker is None:
        return
    label = "label=com.berth.cluster=" + cluster
    try:
        ids = subprocess.run([docker, "ps", "-aq", "--filter", label], capture_output=True,
                             text=True, timeout=30).stdout.split()
        if ids:
            print(f"  removing {len(ids)} container(s) labelled com.berth.cluster={cluster}",
                  file=sys.stderr)
            subprocess.run([docker, "rm", "-f"] + ids, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        pass


# ---- one measurement ----

def task_definition(image):
    return {"family": "berth-bench",
            "containerDefinitions": [{"name": "app", "image": image, "cpu": 1,
                                      "memoryReservation": 1, "essential": True}]}


def prepare(st, sockets, image):
    """Registers the task definition, waits until every agent sees every instance, and warms
    each agent up with one RunTask (not counted)."""
    c0 = client(sockets[0])
    status, body = c0.call("RegisterTaskDefinition", task_definition(image))
    if status != 200:
        raise RuntimeError(f"RegisterTaskDefinition: {status} {body}")
    for sock in sockets:
        c = client(sock)
        ok = c.call("DescribeTaskDefinition", {"taskDefinition": "berth-bench"})[0] == 200
        if not ok:  # task definitions not shared: each agent gets its own
            status, body = c.call("RegisterTaskDefinition", task_definition(image))
            if status != 200:
                raise RuntimeError(f"RegisterTaskDefinition: {status} {body}")

        def sees_all():
            s, b = c.call("ListContainerInstances", {"cluster": st.cluster})
            return s == 200 and len(b.get("containerInstanceArns", [])) == len(sockets)

        wait_for(f"{sock}: all {len(sockets)} instances", sees_all, 30)
        s, b = c.call("RunTask", {"cluster": st.cluster, "taskDefinition": "berth-bench",
                                  "count": 1})
        if s != 200 or len(b.get("tasks", [])) != 1:
            raise RuntimeError(f"warm-up RunTask on {sock}: {s} {b}")
        c.close()
    c0.close()


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[i]


def drive(st, sockets, clients, count, tasks, seconds, keep_alive):
    """`clients` threads, spread over the agents, send RunTask(count) until tasks/count calls
    were sent (or `seconds` passed)."""
    calls_left = [max(1, tasks // count) if not seconds else None]
    lock = threading.Lock()
    results = []  # per thread: (latencies, placed, http_errors, failure_entries, short, per_ci)
    barrier = threading.Barrier(clients + 1)
    stop_at = [None]
    body = {"cluster": st.cluster, "taskDefinition": "berth-bench", "count": count}

    def take():
        with lock:
            if calls_left[0] is None:
                return time.perf_counter() < stop_at[0]
            if calls_left[0] <= 0:
                return False
            calls_left[0] -= 1
            return True

    def worker(i):
        c = client(sockets[i % len(sockets)], keep_alive)
        lat, placed, http_errors, failure_entries, short = [], 0, {}, {}, 0
        per_ci = {}
        barrier.wait()
        while take():
            t0 = time.perf_counter()
            try:
                status, b = c.call("RunTask", body)
            except (OSError, http.client.HTTPException) as e:
                status, b = -1, {"error": str(e)}
            lat.append(time.perf_counter() - t0)
            if status != 200 or not isinstance(b, dict):
                key = f"{status} {(b or {}).get('__type', '')}".strip()
                http_errors[key] = http_errors.get(key, 0) + 1
                short += count
                continue
            got = b.get("tasks", [])
            placed += len(got)
            short += count - len(got)
            for t in got:
                ci = t.get("containerInstanceArn", "")
                per_ci[ci] = per_ci.get(ci, 0) + 1
            for f in b.get("failures", []):
                r = f.get("reason", "?")
                failure_entries[r] = failure_entries.get(r, 0) + 1
        c.close()
        with lock:
            results.append((lat, placed, http_errors, failure_entries, short, per_ci))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    # dockerd answers the engines' failing launches: not this script's, but its CPU counts.
    pids = dict(st.pids)
    for d in dockerd_pids():
        pids[f"dockerd (pid {d})"] = d
    cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
    client_cpu0 = time.process_time()
    t0 = time.perf_counter()
    if seconds:
        stop_at[0] = t0 + seconds
    barrier.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    client_cpu = time.process_time() - client_cpu0
    cpu = {n: cpu_seconds(p) - cpu0[n] for n, p in pids.items()}

    lat = sorted(x for r in results for x in r[0])
    per_ci = {}
    http_errors, failure_entries = {}, {}
    for r in results:
        for k, v in r[2].items():
            http_errors[k] = http_errors.get(k, 0) + v
        for k, v in r[3].items():
            failure_entries[k] = failure_entries.get(k, 0) + v
        for k, v in r[5].items():
            per_ci[k] = per_ci.get(k, 0) + v
    return {
        "calls": len(lat), "placed": sum(r[1] for r in results), "wall": wall,
        "p50": percentile(lat, 50), "p99": percentile(lat, 99),
        "short": sum(r[4] for r in results), "http_errors": http_errors,
        "failure_entries": failure_entries, "per_instance": sorted(per_ci.values(), reverse=True),
        "cpu": cpu, "client_cpu": client_cpu,
    }


def run_one(args, backend, count, serial):
    cluster = f"bench{os.getpid()}{serial}{'e' if backend == 'etcd' else 's'}{count}"
    st = stack(args.berthd, cluster)
    try:
        if backend == "etcd":
            st.start_etcd()
            prefix = "/" + cluster
            zones = ["us-east-1a", "us-east-1b", "us-east-1c"]
            sockets = [st.start_berthd(f"a{i}", zones[i % 3], prefix) for i in range(args.agents)]
        else:
            sockets = [st.start_berthd("a0", "us-east-1a")]
        prepare(st, sockets, args.image)
        before = [metrics_of(s) for s in sockets]
        etcd_before = etcd_metrics(st.etcd_endpoint)
        r = drive(st, sockets, args.clients, count, args.tasks, args.seconds,
                  not args.no_keep_alive)
        etcd_after = etcd_metrics(st.etcd_endpoint)
        after = [metrics_of(s) for s in sockets]
        # etcd's side of the drive: requests by gRPC method, and its WAL's fsyncs.
        r["etcd"] = {}
        for method in ("Txn", "Range", "Put", "DeleteRange", "LeaseKeepAlive", "LeaseGrant"):
            label = f'grpc_method="{method}"'
            r["etcd"][method] = (metric_with(etcd_after, "grpc_server_handled_total", label)
                                 - metric_with(etcd_before, "grpc_server_handled_total", label))
        fsync = "etcd_disk_wal_fsync_duration_seconds"
        r["etcd"]["fsync"] = (metric_sum(etcd_after, fsync + "_count")
                              - metric_sum(etcd_before, fsync + "_count"))
        r["etcd"]["fsync_s"] = (metric_sum(etcd_after, fsync + "_sum")
                                - metric_sum(etcd_before, fsync + "_sum"))
        # What the agents' engines did meanwhile: the failing launches.
        r["docker_calls"] = sum(metric_sum(a, "berth_docker_calls_total")
                                - metric_sum(b, "berth_docker_calls_total")
                                for a, b in zip(after, before))
        # Each agent of the cluster counts every task of the cluster: one agent's figure.
        r["stopped_at_end"] = max(metric_with(a, "berth_tasks", 'state="STOPPED"') for a in after)
        r["backend"], r["count"], r["agents"] = backend, count, len(sockets)
        return r
    finally:
        st.stop()


# ---- report ----

def fmt_rate(x):
    return f"{x:,.0f}/s"


def report(rows, args):
    print()
    print(f"RunTask throughput: {args.clients} client threads, {args.tasks} tasks per run"
          if not args.seconds else
          f"RunTask throughput: {args.clients} client threads, {args.seconds} s per run")
    print(f"berthd: {args.berthd}; image {args.image} (no container starts)")
    print(f"load average before: {args.load_before}; {os.cpu_count()} CPUs")
    print()
    hdr = ("| backend | count | calls | tasks placed | wall | placements/s | RunTask p50 | "
           "p99 | failures |")
    print(hdr)
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = (f"etcd, {r['agents']} agents" if r["backend"] == "etcd" else "SQLite, 1 agent")
        fails = r["short"]
        detail = []
        if r["http_errors"]:
            detail.append(", ".join(f"{k}: {v}" for k, v in sorted(r["http_errors"].items())))
        if r["failure_entries"]:
            detail.append(", ".join(f"{k}: {v}" for k, v in
                                    sorted(r["failure_entries"].items())))
        fail_text = f"{fails}" + (f" ({'; '.join(detail)})" if detail else "")
        print(f"| {name} | {r['count']} | {r['calls']:,} | {r['placed']:,} | {r['wall']:.2f} s | "
              f"{fmt_rate(r['placed'] / r['wall'])} | {r['p50'] * 1e3:.2f} ms | "
              f"{r['p99'] * 1e3:.2f} ms | {fail_text} |")
    print()
    print("| count | etcd cluster / SQLite agent |")
    print("|---|---|")
    for count in args.counts:
        e = [r for r in rows if r["count"] == count and r["backend"] == "etcd"]
        s = [r for r in rows if r["count"] == count and r["backend"] == "sqlite"]
        if e and s and s[0]["placed"]:
            ratio = (e[0]["placed"] / e[0]["wall"]) / (s[0]["placed"] / s[0]["wall"])
            print(f"| {count} | {ratio:.2f}× |")
    print()
    print("Meanwhile (CPU seconds used during the drive; wall time is the drive's):")
    for r in rows:
        name = f"{r['backend']} count={r['count']}"
        cpu = ", ".join(f"{n} {v:.2f}" for n, v in r["cpu"].items())
        print(f"  {name}: {cpu}, client (this script) {r['client_cpu']:.2f}; "
              f"wall {r['wall']:.2f} s")
        print(f"    tasks per instance: {r['per_instance']}; the engines' failing launches "
              f"meanwhile: {r['docker_calls']:.0f} Docker calls, "
              f"{r['stopped_at_end']:.0f} tasks STOPPED by the end (warm-up's included)")
        if r["backend"] == "etcd" and r.get("etcd"):
            e = r["etcd"]
            per = max(r["placed"], 1)
            calls = ", ".join(f"{k} {e[k]:.0f}" for k in
                              ("Txn", "Range", "Put", "DeleteRange", "LeaseKeepAlive") if e[k])
            print(f"    etcd requests: {calls} ({e['Txn'] / per:.2f} Txn and "
                  f"{e['Range'] / per:.2f} Range per task placed); WAL fsyncs "
                  f"{e['fsync']:.0f}, {e['fsync_s']:.2f} s in all")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--berthd", default="/work/main/build/agent/berthd")
    ap.add_argument("--tasks", type=int, default=5000, help="tasks asked for per run")
    ap.add_argument("--seconds", type=float, default=0,
                    help="drive for this long instead of --tasks")
    ap.add_argument("--clients", type=int, default=6, help="client threads (spread over agents)")
    ap.add_argument("--count", default="10,1", help="RunTask count per call; a list runs each")
    ap.add_argument("--agents", type=int, default=3, help="agents of the etcd cluster")
    ap.add_argument("--backends", default="etcd,sqlite", help="etcd, sqlite or both")
    ap.add_argument("--image", default=ABSENT_IMAGE,
                    help="the task's image (one that cannot be pulled: no container starts)")
    ap.add_argument("--no-keep-alive", action="store_true",
                    help="a connection per call (Connection: close, as the tests' raw())")
    args = ap.parse_args()
    args.counts = [int(x) for x in args.count.split(",") if x]
    if any(c < 1 or c > 10 for c in args.counts):
        ap.error("--count: 1 to 10")
    if not os.access(args.berthd, os.X_OK):
        ap.error(f"--berthd: {args.berthd} is not executable")
    backends = [b for b in args.backends.split(",") if b]
    with open("/proc/loadavg") as f:
        args.load_before = " ".join(f.read().split()[:3])
    rows = []
    serial = 0
    for count in args.counts:
        for backend in backends:
            serial += 1
            print(f"running: {backend}, count={count} ...", file=sys.stderr, flush=True)
            rows.append(run_one(args, backend, count, serial))
    report(rows, args)


if __name__ == "__main__":
    main()
