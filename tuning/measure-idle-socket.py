#!/usr/bin/env python3
"""Measure the kernel memory held by one idle TCP socket on this kernel.

Opens N idle loopback TCP connection *pairs* (client end + accepted server end),
spreading the client ends over source addresses 127.0.0.2, 127.0.0.3, ... so no
single source address runs out of ephemeral ports, then reads /proc/meminfo
(Slab) and /proc/net/sockstat before and after. Kernel bytes per socket =
delta(Slab) / (2 * N), because every pair is two sockets.

The client and server ends live in two processes, so each stays below a
per-process nofile limit of N + a few (e.g. 20000 in a container for N=10000).
Nothing is sent: the sockets are idle, exactly what a gateway holds for an idle
WebSocket, minus the epoll registration (eventpoll items add ~128-200 B; see
docs/tuning.md).

Usage: python3 tuning/measure-idle-socket.py [--pairs N] [--rounds R] [--json]
Unprivileged; touches no sysctl. Loopback only.
"""
import argparse
import json
import os
import resource
import socket
import struct
import sys
import time


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


def sockstat():
    with open("/proc/net/sockstat") as f:
        return f.read().strip()


def slabinfo():
    """name -> bytes (num_objs * objsize); {} when unreadable (unprivileged)."""
    res = {}
    try:
        with open("/proc/slabinfo") as f:
            for line in f.readlines()[2:]:
                p = line.split()
                res[p[0]] = int(p[2]) * int(p[3])
    except OSError:
        pass
    return res


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def abort(sock):
    """Close with RST (SO_LINGER 0) so no TIME_WAIT buckets skew the next round."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# Slab caches that belong to a socket (names differ a little between kernels).
SOCKET_CACHES = ("TCP", "sock_inode_cache", "dentry", "filp", "lsm_inode_cache", "lsm_file_cache",
                 "kmalloc-192", "kmalloc-64", "kmalloc-32", "kmalloc-cg-192", "kmalloc-cg-64",
                 "kmalloc-cg-32", "tcp_bind_bucket", "tcp_bind2_bucket", "selinux_file_security")


IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def settle():
    time.sleep(1.0)


def one_round(pairs):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    port = srv.getsockname()[1]
    r_go, w_go = os.pipe()      # server -> parent: "accepted all"
    r_stop, w_stop = os.pipe()  # parent -> server: "close now"

    pid = os.fork()
    if pid == 0:  # server process: accepts and keeps the server ends
        os.close(r_go)
        os.close(w_stop)
        raise_nofile(pairs)
        kept = []
        while len(kept) < pairs:
            c, _ = srv.accept()
            kept.append(c)
        os.write(w_go, b"1")
        os.read(r_stop, 1)
        for c in kept:
            abort(c)
        os._exit(0)
    os.close(w_go)
    os.close(r_stop)
    srv.close()  # listener lives on in the child

    raise_nofile(pairs)
    settle()
    m0, s0, sl0 = meminfo(), sockstat(), slabinfo()
    clients = []
    per_ip = 5000  # well below the ~28k ephemeral ports of one source address
    for i in range(pairs):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # pick the port at connect() time from the full 4-tuple, as a load generator should
        c.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        c.bind(("127.0.0.%d" % (2 + i // per_ip), 0))
        c.connect(("127.0.0.1", port))
        clients.append(c)
    os.read(r_go, 1)
    settle()
    m1, s1, sl1 = meminfo(), sockstat(), slabinfo()
    for c in clients:
        abort(c)
    os.write(w_stop, b"1")
    os.waitpid(pid, 0)

    sockets = 2 * pairs
    d_slab = m1["Slab"] - m0["Slab"]
    caches = sum(sl1.get(k, 0) - sl0.get(k, 0) for k in SOCKET_CACHES)
    top = sorted(((sl1.get(k, 0) - sl0.get(k, 0), k) for k in set(sl0) | set(sl1)), reverse=True)[:8]
    return {
        "pairs": pairs,
        "sockets": sockets,
        "slab_delta_bytes": d_slab,
        "bytes_per_socket": d_slab / sockets,
        "socket_caches_bytes_per_socket": caches / sockets if sl0 else None,
        "memavailable_delta_per_socket": (m0["MemAvailable"] - m1["MemAvailable"]) / sockets,
        "sockstat_before": s0,
        "sockstat_after": s1,
        "top_slab_caches_per_socket": {k: round(v / sockets, 1) for v, k in top if v > 0},
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    results = []
    for _ in range(a.rounds):
        results.append(one_round(a.pairs))
        time.sleep(2)  # let TIME_WAIT/slab frees settle between rounds
    per = sorted(r["bytes_per_socket"] for r in results)
    cps = sorted(r["socket_caches_bytes_per_socket"] or 0 for r in results)
    summary = {"kernel": os.uname().release, "median_bytes_per_socket": per[len(per) // 2],
               "median_socket_caches_bytes_per_socket": cps[len(cps) // 2], "rounds": results}
    if a.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
        return
    print("kernel %s, %d idle loopback TCP pairs (%d sockets) per round" % (summary["kernel"], a.pairs, 2 * a.pairs))
    for i, r in enumerate(results):
        print("round %d: Slab +%d KiB -> %.0f B/socket; socket slab caches %s B/socket" % (
            i + 1, r["slab_delta_bytes"] // 1024, r["bytes_per_socket"],
            "%.0f" % r["socket_caches_bytes_per_socket"] if r["socket_caches_bytes_per_socket"] else "n/a"))
        for k, v in r["top_slab_caches_per_socket"].items():
            print("    %-24s %8.1f B/socket" % (k, v))
        print("    sockstat after: %s" % r["sockstat_after"].splitlines()[1])
    print("median: %.0f B per idle TCP socket (Slab delta, includes noise from other processes)"
          % summary["median_bytes_per_socket"])
    if summary["median_socket_caches_bytes_per_socket"]:
        print("median: %.0f B per idle TCP socket (socket slab caches only, /proc/slabinfo)"
              % summary["median_socket_caches_bytes_per_socket"])


if __name__ == "__main__":
    main()
