#!/usr/bin/env python3
"""Per-hop timeline of requests through Envoy (+ ext_authz) to an upstream, from a perf trace.

Splits each request's latency, as h2load saw it, into the time each process spent working and
the time between one process's send and the next one's wake-up, from the kernel's own clock:
no instrumentation in any of the processes. One client connection at a fixed low rate
(`h2load --h1 -c1 -m1 --rps 100`), Envoy with one worker, nginx as the upstream, rolegate (or any
tokio server) as the ext_authz server; Linux x86-64 syscall numbers.

  F='id==19||id==20||id==44||id==45||id==232'
  perf record -a -o trace.data -e sched:sched_switch,sched:sched_wakeup \\
      -e raw_syscalls:sys_enter --filter "$F" -e raw_syscalls:sys_exit --filter "$F" -- sleep 4 &
  h2load --h1 -c1 -m1 --rps 100 -n 300 … http://127.0.0.1:ENVOY_PORT/api/jobs/job-1234
  perf script -i trace.data > trace.txt
  scripts/envoy-timeline.py trace.txt [--one]

Each hop: "wake X" runs from the sender's send (sendto / writev) to X's epoll_wait returning, and
says how long X waited for a CPU after the kernel woke it and whether that CPU was idle; the
other rows run from a process's epoll_wait return to its send, i.e. its own work.
"""
import re
import statistics
import sys

LINE = re.compile(r"^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)$")
ENVOY, TOKIO, NGINX, CLIENT = "wrk:worker_0", "tokio-rt-worker", "nginx", "h2load"
READV, WRITEV, SENDTO, RECVFROM, EPOLL_WAIT = 19, 20, 44, 45, 232


def load(path):
    events = []
    for line in open(path):
        m = LINE.match(line)
        if not m:
            continue
        comm, tid, cpu, t, kind, rest = m.groups()
        t = float(t) * 1e6
        if kind.startswith("raw_syscalls"):
            if comm in (ENVOY, TOKIO, NGINX, CLIENT):
                nr = int(rest.split()[1])
                events.append((t, comm, "enter" if "enter" in kind else "exit", nr, None))
        elif kind == "sched:sched_wakeup":
            c = re.search(r"comm=(.+?) pid=", rest)
            events.append((t, comm, "wakeup", None, c.group(1)))
        elif kind == "sched:sched_switch":
            c = re.search(r"prev_comm=(.+?) prev_pid=.*==> next_comm=(.+?) next_pid=", rest)
            events.append((t, comm, "switch", None, (c.group(1), c.group(2))))
    return events


def main():
    events = load(sys.argv[1])

    def find(i, comm, kind, nrs):
        while i < len(events):
            e = events[i]
            if e[1] == comm and e[2] == kind and e[3] in nrs:
                return i
            i += 1
        return None

    def wait_for_cpu(i, j, comm):
        woke = None
        for e in events[i:j + 1]:
            if e[2] == "wakeup" and e[4] == comm and woke is None:
                woke = e[0]
            if e[2] == "switch" and e[4][1] == comm and woke is not None:
                return e[0] - woke, e[4][0].startswith("swapper")
        return None, None

    requests, i = [], 0
    while True:
        sent = find(i, CLIENT, "enter", (WRITEV,))
        if sent is None:
            break
        hops = []  # (name, start index, end index)
        woke = find(sent + 1, ENVOY, "exit", (EPOLL_WAIT,))
        out = woke and find(woke + 1, ENVOY, "enter", (SENDTO,))
        nxt = out and next((k for k in range(out + 1, len(events))
                            if events[k][1] in (TOKIO, NGINX) and events[k][2] == "exit"
                            and events[k][3] == EPOLL_WAIT), None)
        if nxt is None:
            break
        hops.append(("wake Envoy", sent, woke))
        if events[nxt][1] == TOKIO:
            answer = find(nxt + 1, TOKIO, "enter", (SENDTO, WRITEV))
            back = answer and find(answer + 1, ENVOY, "exit", (EPOLL_WAIT,))
            to_app = back and find(back + 1, ENVOY, "enter", (SENDTO,))
            if to_app is None:
                break
            hops += [("Envoy: request → Check sent", woke, out), ("wake ext_authz server", out, nxt),
                     ("server: Check in → answer out", nxt, answer), ("wake Envoy", answer, back),
                     ("Envoy: answer → request to app", back, to_app)]
        else:
            to_app = out
            hops.append(("Envoy: request → request to app", woke, out))
        app = find(to_app + 1, NGINX, "exit", (EPOLL_WAIT,))
        app_out = app and find(app + 1, NGINX, "enter", (WRITEV, SENDTO, 1))
        back = app_out and find(app_out + 1, ENVOY, "exit", (EPOLL_WAIT,))
        resp = back and find(back + 1, ENVOY, "enter", (SENDTO,))
        done = resp and find(resp + 1, CLIENT, "exit", (EPOLL_WAIT,))
        if done is None:
            break
        hops += [("wake nginx", to_app, app), ("nginx", app, app_out), ("wake Envoy", app_out, back),
                 ("Envoy: response → client", back, resp), ("wake client", resp, done)]
        rows = []
        for name, a, b in hops:
            cpu_wait, idle = wait_for_cpu(a, b, {"Envoy": ENVOY, "ext_authz": TOKIO, "nginx": NGINX,
                                                 "client": CLIENT}.get(name.split()[1], "")) \
                if name.startswith("wake") else (None, None)
            rows.append((name, events[b][0] - events[a][0], cpu_wait, idle))
        requests.append((events[done][0] - events[sent][0], rows))
        i = done + 1

    groups = {}
    for r in requests:
        groups.setdefault(len(r[1]), []).append(r)
    for rs in groups.values():
        label = "with ext_authz" if len(rs[0][1]) > 7 else "without ext_authz"
        totals = [r[0] for r in rs]
        print(f"== {label}: {len(rs)} requests, client send → client wake-up: p50 "
              f"{statistics.median(totals):.0f} µs")
        for k, (name, *_rest) in enumerate(rs[0][1]):
            ds = sorted(r[1][k][1] for r in rs)
            line = f"  {name:34} p50 {statistics.median(ds):6.0f} µs  p90 {ds[int(0.9 * len(ds))]:6.0f} µs"
            if name.startswith("wake"):
                waits = [r[1][k][2] for r in rs if r[1][k][2] is not None]
                idle = sum(1 for r in rs if r[1][k][3])
                if waits:
                    line += f"   (of which waiting for a CPU: p50 {statistics.median(waits):.0f} µs; CPU idle in {idle}/{len(rs)})"
            print(line)
        if "--one" in sys.argv:
            total, rows = sorted(rs)[len(rs) // 2]
            print(f"  one request (the median, {total:.0f} µs):")
            for name, d, *_ in rows:
                print(f"    {name:34} {d:6.0f} µs")


if __name__ == "__main__":
    main()
