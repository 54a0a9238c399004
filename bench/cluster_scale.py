#!/usr/bin/python3
"""Berth at scale: three berthd on one etcd and thousands of hollow instances (berth-hollow).

One etcd, three real berthd serving the ECS API (their own instances are too small to take any
task), and berth-hollow running --instances hollow instances of the same cluster in one process
(berthd's task engine and task table over an in-memory Docker: each task is reported PENDING,
then RUNNING after --start-delay-ms). Then:

1. the hollow instances register; the time for a fresh berthd to read them all into its ledger
   mirror at start (berth_fleet_open_seconds), and the lag from an instance's change committed
   through one berthd to its appearance in the other two mirrors (p50/p99 of --probes changes);
2. --clients client threads (spread over the three berthd) send RunTask with counts 1-10 and a
   mix of binpack, spread, random, memberOf and distinctInstance until --tasks tasks were
   accepted; placements per second end to end (first RunTask sent -> every accepted task
   reported RUNNING by the hollow agents) and RunTask p50/p99;
3. --services services of --service-tasks tasks each are created, then all updated to a new
   revision (a rolling update); the time until every service is steady each time;
4. accounting: tasks counted in etcd and by the hollow agents against those accepted, and
   over-commit (an instance whose tasks not STOPPED need more than it registered) from the
   task records in etcd; etcd's database size and each process's RSS at the end.

--check makes it a correctness test (CI runs 1,000 instances and 10,000 tasks): it exits 1 when
a task is unaccounted for, an instance over-committed, a RunTask failed for any reason but lack
of capacity, or a service did not reach steady state. It asserts no timing.

    /usr/bin/python3 bench/cluster_scale.py [--instances N] [--tasks N] [--services N] [--check]

Everything it starts is stopped by PID and its files removed (cluster_runtask.py's stack).
Standard library only (Debian's python3).
"""

import argparse
import base64
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_runtask as cr  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "berth-hollow/app:1"  # never pulled: the hollow Docker has every image


# ---- etcd, read directly (its v3 JSON gateway) ----

def b64(s):
    return base64.b64encode(s.encode()).decode()


def prefix_end(p):
    return p[:-1] + chr(ord(p[-1]) + 1)


def etcd_post(endpoint, path, body):
    req = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def etcd_count(endpoint, prefix):
    r = etcd_post(endpoint, "/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                             "count_only": True})
    return int(r.get("count", 0))


def etcd_revision(endpoint):
    """etcd's current revision: each write (a put, a delete, a transaction) moves it by one."""
    r = etcd_post(endpoint, "/v3/kv/range", {"key": b64("\0"), "count_only": True})
    return int(r["header"]["revision"])


def etcd_values(endpoint, prefix, page=2000):
    """Every value under `prefix`, paged, parsed as JSON (a snapshot: one revision)."""
    key, end, rev, out = prefix, prefix_end(prefix), 0, []
    while True:
        body = {"key": b64(key), "range_end": b64(end), "limit": page}
        if rev:
            body["revision"] = rev
        r = etcd_post(endpoint, "/v3/kv/range", body)
        rev = rev or int(r["header"]["revision"])
        kvs = r.get("kvs", [])
        for kv in kvs:
            out.append(json.loads(base64.b64decode(kv["value"])))
        if not r.get("more") or not kvs:
            return out
        key = base64.b64decode(kvs[-1]["key"]).decode() + "\0"


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


# ---- the stack ----

def read_status(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def running(status):
    return status.get("by_status", {}).get("RUNNING", 0)


def start(args, st):
    # Room for 100,000 tasks' history (each record is written two or three times), and history
    # older than five minutes compacted, as a production etcd is set up (Kubernetes' apiserver
    # compacts every five minutes).
    st.start_etcd(["--quota-backend-bytes=8589934592", "--auto-compaction-mode=periodic",
                   "--auto-compaction-retention=5m"])
    # Their own instances take nothing (1 CPU unit, 1 MiB): every task goes to the hollow ones.
    sockets = [st.start_berthd(f"agent{i}", f"us-east-1{'abc'[i]}", "/berth", 1, 1)
               for i in range(3)]
    status_file = os.path.join(st.dir, "hollow.json")
    t0 = time.perf_counter()
    p, log = st.spawn("hollow", [args.hollow, "--etcd-endpoints=" + st.etcd_endpoint,
                                 "--cluster=" + st.cluster, f"--instances={args.instances}",
                                 f"--start-delay-ms={args.start_delay_ms}",
                                 "--state-dir=" + os.path.join(st.dir, "hollow-state"),
                                 "--status-file=" + status_file])
    cr.wait_for("berth-hollow", lambda: read_status(status_file).get("instances") == args.instances,
                max(60, args.instances / 100), p, log)
    registered = time.perf_counter() - t0
    return sockets, status_file, registered


def metric(sock, name):
    status, data = cr.client(sock).get("/metrics")
    for line in data.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.split()[-1])
    return None


def wait_mirrors(st, sockets, want, timeout):
    for sock in sockets:
        cr.wait_for(f"{sock}: {want} instances mirrored",
                    lambda: (metric(sock, "berth_fleet_instances") or 0) >= want, timeout)


def mirror_load(args, st, want):
    """A fourth berthd started on the registered cluster: how long its ledger took to fill."""
    sock = st.start_berthd("agent3", "us-east-1a", "/berth", 1, 1)
    wait_mirrors(st, [sock], want, 60)
    took = metric(sock, "berth_fleet_open_seconds")
    # Three berthd serve the drive: this one goes (its instance stays, disconnected).
    name, p = next((n, p) for n, p in st.procs if n == "agent3")
    p.terminate()
    p.wait(timeout=60)
    del st.pids[name]
    st.sockets.remove(sock)
    return took


def mirror_lag(st, sockets, instance_arns, probes):
    """PutAttributes through the first berthd (committed when it answers), then how long until
    both other mirrors place by it (ListContainerInstances' filter runs over the ledger)."""
    a = cr.client(sockets[0])
    others = [cr.client(s) for s in sockets[1:]]
    lags = []
    for k in range(probes):
        arn = instance_arns[k % len(instance_arns)]
        value = f"p{k}"
        s, b = a.call("PutAttributes", {"cluster": st.cluster, "attributes": [
            {"name": "probe", "value": value, "targetType": "container-instance",
             "targetId": arn}]})
        if s != 200:
            raise RuntimeError(f"PutAttributes: {s} {b}")
        t0 = time.perf_counter()
        for c in others:
            deadline = t0 + 10
            while True:
                s, b = c.call("ListContainerInstances", {"cluster": st.cluster,
                                                         "filter": f"attribute:probe == {value}"})
                if s == 200 and b.get("containerInstanceArns"):
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"probe {value} not mirrored in 10 s")
                time.sleep(0.001)
        lags.append(time.perf_counter() - t0)
    return sorted(lags)


# ---- the drive ----

def task_definition(family, rev_tag):
    return {"family": family, "containerDefinitions": [{
        "name": "app", "image": IMAGE, "cpu": 128, "memoryReservation": 256, "essential": True,
        "environment": [{"name": "REVISION", "value": rev_tag}]}]}


MIXES = [
    ("binpack", {"placementStrategy": [{"type": "binpack", "field": "memory"}]}),
    ("spread", {"placementStrategy": [{"type": "spread", "field": "attribute:ecs.availability-zone"},
                                      {"type": "binpack", "field": "cpu"}]}),
    ("random", {"placementStrategy": [{"type": "random"}]}),
    ("memberOf", {"placementConstraints": [{"type": "memberOf",
                                            "expression": "attribute:tier == core"}],
                  "placementStrategy": [{"type": "spread", "field": "instanceId"}]}),
    ("distinct", {"placementConstraints": [{"type": "distinctInstance"}]}),
]


def drive(args, st, sockets, status_file):
    lock = threading.Lock()
    left = [args.tasks]
    stats = {"accepted": 0, "short": 0, "errors": {}, "reasons": {}, "lat": [], "calls": 0}
    rng = random.Random(1)
    plan = []  # (count, mix) for each call, fixed by the seed
    n = args.tasks
    while n > 0:
        c = min(n, rng.randint(1, 10))
        plan.append((c, MIXES[len(plan) % len(MIXES)]))
        n -= c
    nxt = [0]

    def worker(i):
        c = cr.client(sockets[i % len(sockets)])
        lat = []
        while True:
            with lock:
                if nxt[0] >= len(plan):
                    break
                count, (name, extra) = plan[nxt[0]]
                nxt[0] += 1
            body = {"cluster": st.cluster, "taskDefinition": "scale", "count": count, **extra}
            if name == "distinct":  # each call's tasks on distinct instances: a group per call
                body["group"] = f"distinct-{i}-{len(lat)}"
            t0 = time.perf_counter()
            try:
                status, b = c.call("RunTask", body)
            except OSError as e:
                status, b = -1, {"__type": str(e)}
            lat.append(time.perf_counter() - t0)
            with lock:
                stats["calls"] += 1
                if status != 200 or not isinstance(b, dict):
                    k = f"{status} {(b or {}).get('__type', '')}"
                    stats["errors"][k] = stats["errors"].get(k, 0) + 1
                    stats["short"] += count
                    continue
                got = len(b.get("tasks", []))
                stats["accepted"] += got
                stats["short"] += count - got
                for f in b.get("failures", []):
                    r = f.get("reason", "?")
                    stats["reasons"][r] = stats["reasons"].get(r, 0) + 1
        c.close()
        with lock:
            stats["lat"].extend(lat)

    cpu0 = {n: cr.cpu_seconds(p) for n, p in st.pids.items()}
    rev0 = etcd_revision(st.etcd_endpoint)
    puts0 = cr.metric_sum(cr.etcd_metrics(st.etcd_endpoint), "etcd_mvcc_put_total")
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.clients)]
    base = running(read_status(status_file))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted_wall = time.perf_counter() - t0
    want = base + stats["accepted"]
    deadline = time.perf_counter() + max(120, args.tasks / 200)
    while running(read_status(status_file)) < want:
        if time.perf_counter() > deadline:
            break
        time.sleep(0.05)
    stats["running_wall"] = time.perf_counter() - t0
    stats["accepted_wall"] = accepted_wall
    stats["running"] = running(read_status(status_file)) - base
    stats["cpu"] = {n: cr.cpu_seconds(p) - cpu0[n] for n, p in st.pids.items()}
    stats["etcd_txns"] = etcd_revision(st.etcd_endpoint) - rev0
    stats["etcd_puts"] = cr.metric_sum(cr.etcd_metrics(st.etcd_endpoint),
                                       "etcd_mvcc_put_total") - puts0
    stats["lat"].sort()
    return stats


# ---- services ----

def services_phase(args, st, sockets, status_file):
    """--services services of --service-tasks each, then a rolling update of them all."""
    c = cr.client(sockets[0])
    for rev in ("svc-1", "svc-2"):
        s, b = c.call("RegisterTaskDefinition", task_definition("scale-svc", rev))
        if s != 200:
            raise RuntimeError(f"RegisterTaskDefinition: {s} {b}")
    names = [f"svc{i:05d}" for i in range(args.services)]
    base = running(read_status(status_file))
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        s, b = cr.client(sockets[i % 3]).call("CreateService", {
            "cluster": st.cluster, "serviceName": name, "taskDefinition": "scale-svc:1",
            "desiredCount": args.service_tasks,
            "deploymentConfiguration": {"maximumPercent": 200, "minimumHealthyPercent": 50}})
        if s != 200:
            raise RuntimeError(f"CreateService {name}: {s} {b}")
    want = base + args.services * args.service_tasks

    def steady(revision):
        done = 0
        for k in range(0, len(names), 10):
            s, b = c.call("DescribeServices", {"cluster": st.cluster, "services": names[k:k + 10]})
            if s != 200:
                return False
            for svc in b.get("services", []):
                deps = svc.get("deployments", [])
                if (len(deps) == 1 and deps[0].get("runningCount") == args.service_tasks
                        and deps[0].get("taskDefinition", "").endswith(revision)):
                    done += 1
        return done == len(names)

    timeout = max(300, args.services * args.service_tasks / 20)
    cr.wait_for("services steady", lambda: running(read_status(status_file)) >= want and steady(":1"),
                timeout)
    created = time.perf_counter() - t0
    t1 = time.perf_counter()
    for i, name in enumerate(names):
        s, b = cr.client(sockets[i % 3]).call("UpdateService", {
            "cluster": st.cluster, "service": name, "taskDefinition": "scale-svc:2"})
        if s != 200:
            raise RuntimeError(f"UpdateService {name}: {s} {b}")
    cr.wait_for("rolling update done", lambda: steady(":2"), timeout)
    updated = time.perf_counter() - t1
    return {"created": created, "updated": updated}


# ---- accounting ----

def account(args, st, status_file, accepted):
    tasks = etcd_values(st.etcd_endpoint, f"/berth/task/{st.cluster}/")
    hollow = read_status(status_file)
    instances = etcd_values(st.etcd_endpoint, f"/berth/instance/{st.cluster}/")
    registered = {}
    for d in instances:
        if isinstance(d, dict) and "containerInstanceArn" in d:
            registered[d["containerInstanceArn"]] = (d.get("registeredCpu", 0) or 0,
                                                     d.get("registeredMemory", 0) or 0, d)
    used = {}
    live = 0
    for t in tasks:
        if t.get("lastStatus") == "STOPPED":
            continue
        live += 1
        need = t.get("_berth", {}).get("need", {})
        u = used.setdefault(t.get("containerInstanceArn"), [0, 0])
        u[0] += need.get("cpu", 0)
        u[1] += need.get("mib", 0)
    over = 0
    for arn, (cpu, mib) in used.items():
        reg = registered.get(arn)
        if reg is None:
            continue
        rcpu, rmib = instance_resources(reg[2])
        if cpu > rcpu or mib > rmib:
            over += 1
    by_status = {}
    for t in tasks:
        k = t.get("lastStatus", "?")
        by_status[k] = by_status.get(k, 0) + 1
    return {"etcd_tasks": len(tasks), "etcd_live": live, "etcd_by_status": by_status,
            "hollow_tasks": hollow.get("tasks"), "hollow_by_status": hollow.get("by_status"),
            "hollow_running": running(hollow), "overcommitted_instances": over}


def instance_resources(record):
    """registeredCpu/registeredMemory as the stored record keeps them (or ECS's resources)."""
    cpu = record.get("registeredCpu")
    mib = record.get("registeredMemory")
    if cpu is None or mib is None:
        for r in record.get("registeredResources", []):
            if r.get("name") == "CPU":
                cpu = r.get("integerValue")
            elif r.get("name") == "MEMORY":
                mib = r.get("integerValue")
    return cpu or 0, mib or 0


# ---- the run ----

def fmt(x, unit=""):
    return "-" if x is None else f"{x:,.2f}{unit}" if isinstance(x, float) else f"{x:,}{unit}"


def run(args):
    st = cr.stack(args.berthd, f"scale{os.getpid()}")
    out = {"instances": args.instances, "tasks": args.tasks, "clients": args.clients}
    problems = []
    try:
        sockets, status_file, out["register_s"] = start(args, st)
        total = args.instances + 3
        wait_mirrors(st, sockets, total, max(60, args.instances / 100))
        out["mirror_load_s"] = mirror_load(args, st, total + 1)
        hollow_arns = []
        c = cr.client(sockets[0])
        s, b = c.call("ListContainerInstances", {"cluster": st.cluster,
                                                  "filter": "attribute:berth.hollow == true",
                                                  "maxResults": 100})
        hollow_arns = b.get("containerInstanceArns", []) if s == 200 else []
        if not hollow_arns:
            raise RuntimeError(f"no hollow instance listed: {s} {b}")
        lags = mirror_lag(st, sockets, hollow_arns, args.probes)
        out["mirror_lag_p50_ms"] = cr.percentile(lags, 50) * 1000
        out["mirror_lag_p99_ms"] = cr.percentile(lags, 99) * 1000
        s, b = c.call("RegisterTaskDefinition", task_definition("scale", "1"))
        if s != 200:
            raise RuntimeError(f"RegisterTaskDefinition: {s} {b}")
        d = drive(args, st, sockets, status_file)
        out["accepted"] = d["accepted"]
        out["short"] = d["short"]
        out["errors"] = d["errors"]
        out["reasons"] = d["reasons"]
        out["calls"] = d["calls"]
        # Claims refused by etcd (a peer claimed the instance first) and placed again.
        out["claim_refusals"] = int(sum(metric(sock, "berth_claim_refusals_total") or 0
                                        for sock in sockets))
        out["running"] = d["running"]
        out["accepted_per_s"] = d["accepted"] / d["accepted_wall"]
        out["placements_per_s"] = d["running"] / d["running_wall"]
        out["drive_s"] = d["running_wall"]
        out["runtask_p50_ms"] = cr.percentile(d["lat"], 50) * 1000
        out["runtask_p99_ms"] = cr.percentile(d["lat"], 99) * 1000
        out["cpu_s"] = {k: round(v, 1) for k, v in d["cpu"].items()}
        # etcd's writes in the drive per task placed: transactions (revisions) and keys put, by
        # claims, status reports and all else the cluster wrote meanwhile (capacity documents).
        out["etcd_txns_per_task"] = d["etcd_txns"] / max(1, d["running"])
        out["etcd_puts_per_task"] = d["etcd_puts"] / max(1, d["running"])
        # The drive's figures at once: the services phase can take long at scale.
        print("drive: " + json.dumps({k: out[k] for k in (
            "accepted", "running", "placements_per_s", "accepted_per_s", "runtask_p50_ms",
            "runtask_p99_ms", "drive_s", "cpu_s", "etcd_txns_per_task",
            "etcd_puts_per_task")}), flush=True)
        if d["errors"]:
            problems.append(f"RunTask errors: {d['errors']}")
        if d["running"] != d["accepted"]:
            problems.append(f"{d['accepted']} tasks accepted, {d['running']} reported RUNNING")
        if args.services:
            out.update(services_phase(args, st, sockets, status_file))
        acc = account(args, st, status_file, d["accepted"])
        out.update(acc)
        expected_live = d["accepted"] + args.services * args.service_tasks
        if acc["etcd_live"] != expected_live or acc["hollow_running"] != expected_live:
            problems.append(f"live tasks: {expected_live} expected, {acc['etcd_live']} in etcd, "
                            f"{acc['hollow_running']} RUNNING on the hollow instances")
        if acc["overcommitted_instances"]:
            problems.append(f"{acc['overcommitted_instances']} instance(s) over-committed")
        m = cr.etcd_metrics(st.etcd_endpoint)
        out["etcd_db_mib"] = cr.metric_sum(m, "etcd_mvcc_db_total_size_in_bytes") / 2**20
        out["rss_mib"] = {n: round(rss_mib(p), 1) for n, p in st.pids.items()}
    finally:
        if args.keep:
            print(f"kept: {st.dir} (pids {st.pids}); sockets {st.sockets}", file=sys.stderr)
        else:
            st.stop()
    out["problems"] = problems
    return out


def report(o):
    print(f"\n{o['instances']:,} hollow instances, {o['tasks']:,} tasks, {o['clients']} clients")
    rows = [
        ("instances registered (berth-hollow start)", fmt(o.get("register_s"), " s")),
        ("a new berthd's mirror filled at start", fmt(o.get("mirror_load_s"), " s")),
        ("mirror lag p50 / p99 (change -> other mirrors)",
         f"{fmt(o.get('mirror_lag_p50_ms'), ' ms')} / {fmt(o.get('mirror_lag_p99_ms'), ' ms')}"),
        ("tasks accepted / RUNNING", f"{fmt(o.get('accepted'))} / {fmt(o.get('running'))}"),
        ("RunTask calls / tasks short / claims refused",
         f"{fmt(o.get('calls'))} / {fmt(o.get('short'))} / {fmt(o.get('claim_refusals'))}"),
        ("placements/s end to end (sent -> RUNNING)", fmt(o.get("placements_per_s"))),
        ("placements/s accepted by the API", fmt(o.get("accepted_per_s"))),
        ("RunTask p50 / p99",
         f"{fmt(o.get('runtask_p50_ms'), ' ms')} / {fmt(o.get('runtask_p99_ms'), ' ms')}"),
        ("etcd transactions / keys put per task placed",
         f"{fmt(o.get('etcd_txns_per_task'))} / {fmt(o.get('etcd_puts_per_task'))}"),
        ("services created and steady", fmt(o.get("created"), " s")),
        ("rolling update of all services", fmt(o.get("updated"), " s")),
        ("tasks in etcd (not STOPPED) / on hollow RUNNING",
         f"{fmt(o.get('etcd_live'))} / {fmt(o.get('hollow_running'))}"),
        ("over-committed instances", fmt(o.get("overcommitted_instances"))),
        ("etcd database", fmt(o.get("etcd_db_mib"), " MiB")),
    ]
    for k, v in rows:
        print(f"  {k:<50} {v}")
    print(f"  RSS MiB: {o.get('rss_mib')}")
    print(f"  CPU s during the drive: {o.get('cpu_s')}")
    if o.get("reasons"):
        print(f"  RunTask failures by reason: {o['reasons']}")
    for p in o["problems"]:
        print(f"  PROBLEM: {p}")


def main():
    # Stopped with SIGTERM, it still stops what it started (run()'s finally), as on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--berthd", default=os.path.join(ROOT, "build/agent/berthd"))
    ap.add_argument("--hollow", default=os.path.join(ROOT, "build/agent/hollow/berth-hollow"))
    ap.add_argument("--instances", type=int, default=10000)
    ap.add_argument("--tasks", type=int, default=100000)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--service-tasks", type=int, default=10)
    ap.add_argument("--start-delay-ms", type=int, default=100)
    ap.add_argument("--probes", type=int, default=50)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--keep", action="store_true",
                    help="leave everything running at the end (to look at; stop it yourself)")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 on any task unaccounted for, over-commit or error")
    args = ap.parse_args()
    o = run(args)
    report(o)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(o, f, indent=1)
    if args.check and o["problems"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
