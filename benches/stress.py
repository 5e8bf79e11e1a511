"""Stress: random SIGKILLs, garbage segments, signals mid-call, a long soak (issue 12).

Real processes (forked), real shared memory in /dev/shm, every wait bounded: a call or a
process that does not finish in time is reported as a hang (with what hung) and killed; the
script itself never hangs. At the end /dev/shm is listed and anything this run left there is
reported (and then removed).

* kill     rounds of writer and reader processes on one small queue; a controller SIGKILLs a
           random writer or reader at a random moment (mid-send, mid-wait, mid-lease) and
           starts a replacement. Every message carries writer id, per-writer sequence, length
           and a CRC32 of its random body. Surviving readers check each message: torn = bad
           length or checksum; lost = a per-writer sequence number missing between the first
           message a reader could expect (sent after it joined) and the last whose send()
           returned, or a gap in the queue's own sequence numbers; a killed writer's last send
           may be lost or delivered, nothing else. Readers alternate recv_many and leases.
* garbage  a child process attaches (BroadcastQueue(name, create=False), ringcast.inspect)
           to objects in /dev/shm made of random bytes, truncated real segments and real
           segments with random bytes flipped (header, member table, ring); when an attach
           succeeds it also tries stats/recv_nowait/send_nowait. Expected: a clean exception
           (RingcastError or OSError) or a working queue; a child killed by a signal is a crash
           (its seed and attempt number are reported, so the case can be replayed).
* signals  a process blocked in recv, lease, recv_many, send (full ring) or wait_for_readers
           gets SIGINT (KeyboardInterrupt) or SIGUSR1 (a handler that raises) after a random
           delay; the time from os.kill to the exception (CLOCK_MONOTONIC in both processes)
           is measured: max and p99. A time.sleep(30) interrupted the same way is the
           baseline (what the scheduler adds to any signal), reported but not in the figures.
* soak     one writer, a recv_many reader, a lease reader, a lossy reader and a "churn"
           process that attaches, reads and closes over and over, moving K messages; each
           samples its RSS and open fds (/proc/self/fd) at start, middle and end; flat = end
           within tolerance of middle (RSS +4 MiB, fds +0). The ordinary readers must get all
           K messages, in order.

Run it in a private /dev/shm so the leftover check sees only this run:

    unshare -m bash -c 'mount -t tmpfs -o size=1g tmpfs /dev/shm && exec python benches/stress.py'
    python benches/stress.py --quick                 # about a minute
    python benches/stress.py --only kill --only soak --json
    python benches/stress.py --only garbage --seed 1234   # the same child seeds again

Exit status 0 only when every mode passed (no torn, lost, crash, hang, leak, leftover).
"""

from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing as mp
import os
import random
import signal
import struct
import sys
import time
import zlib

import ringcast

CTX = mp.get_context("fork")
SHM = "/dev/shm"
HDR = struct.Struct("<IIQI")  # writer id, body length, per-writer seq, crc32 of the payload
NOISE = random.Random(7).randbytes(1 << 17)


def log(args, *parts):
    if not args.json:
        print(*parts, file=sys.stderr, flush=True)


def shm_list():
    try:
        return set(os.listdir(SHM))
    except OSError:
        return set()


def stop_proc(p, what, hangs, timeout=5.0):
    """Join p within timeout; if it is still there, record a hang and SIGKILL it."""
    p.join(timeout)
    if p.is_alive():
        hangs.append(what)
        p.kill()
        p.join(5)
        return False
    return True


def monotonic():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# --------------------------------------------------------------------------- kill


def make_body(rng, wid, seq, max_body):
    n = rng.randint(0, max_body)
    off = rng.randrange(0, len(NOISE) - n) if n else 0
    payload = NOISE[off : off + n]
    return HDR.pack(wid, n, seq, zlib.crc32(payload)) + payload


def kill_writer(name, wid, done, seed, max_body, stop):
    """done[wid] = number of sends that returned. Runs until stop[0] is set."""
    rng = random.Random(seed)
    q = ringcast.BroadcastQueue(name, create=False, spin_us=0 if wid % 2 else 20.0)
    seq = 0
    while not stop[0]:
        body = make_body(rng, wid, seq, max_body)
        try:
            q.send(body, "k", timeout=0.2)
        except ringcast.Full:
            continue  # nothing published; retry the same seq later
        seq += 1
        done[wid] = seq
    q.close()
    os._exit(0)


def kill_reader(name, rid, done, nwid, conn, lease_mode):
    q = ringcast.BroadcastQueue(name, create=False)
    r = q.reader(name=f"r{rid}")
    snap = [done[w] for w in range(nwid)]  # sends that had returned when we had joined
    res = {"checked": 0, "torn": 0, "order": 0, "gap_seq": 0, "first": {}, "last": {}, "gaps": 0}
    last_gseq = None
    first, last = res["first"], res["last"]

    def check(gseq, body):
        nonlocal last_gseq
        res["checked"] += 1
        if last_gseq is not None and gseq != last_gseq + 1:
            res["gap_seq"] += 1
        last_gseq = gseq
        if len(body) < HDR.size:
            res["torn"] += 1
            return
        wid, n, seq, crc = HDR.unpack_from(body)
        payload = body[HDR.size :]
        if n != len(payload) or zlib.crc32(payload) != crc or wid >= nwid:
            res["torn"] += 1
            return
        prev = last.get(wid)
        if prev is None:
            first[wid] = seq
        elif seq <= prev:
            res["order"] += 1
        elif seq != prev + 1:
            res["gaps"] += seq - prev - 1
        last[wid] = seq

    try:
        while True:
            try:
                if lease_mode:
                    with r.lease(timeout=0.5) as m:
                        check(m.seq, bytes(m.body))
                else:
                    for m in r.recv_many(256, timeout=0.5):
                        check(m.seq, m.body)
            except ringcast.Empty:
                pass
    except ringcast.QueueShutDown:
        pass
    res["snap"] = snap
    r.close()
    q.close()
    conn.send(res)
    conn.close()
    os._exit(0)


def run_kill(args, out):
    rng = random.Random(args.seed)
    kills_goal = 60 if args.quick else args.kills
    per_round = 15 if args.quick else 30
    nwriters, nreaders = 2, 3
    rounds = (kills_goal + per_round - 1) // per_round
    max_wid = nwriters + per_round + 1
    tot = dict(
        kills=0,
        writer_kills=0,
        reader_kills=0,
        messages_sent=0,
        checked=0,
        torn=0,
        lost=0,
        order=0,
        seq_gaps=0,
        died=0,
        hangs=[],
        leftovers=[],
        rounds=0,
        errors=[],
    )
    t0 = time.monotonic()
    for rnd in range(rounds):
        name = f"stress-kill-{os.getpid()}-{rnd}"
        q = ringcast.BroadcastQueue(name, create=True, capacity=rng.choice([16384, 65536, 262144]))
        done_mm = mmap.mmap(-1, 8 * max_wid)
        stop_mm = mmap.mmap(-1, 8)
        done = memoryview(done_mm).cast("q")
        stop = memoryview(stop_mm).cast("q")
        writers, readers = {}, {}

        st = {"name": name, "done": done, "stop": stop, "wid": 0, "rid": 0}

        def start_writer(st=st, writers=writers):
            wid = st["wid"]
            st["wid"] += 1
            p = CTX.Process(
                target=kill_writer,
                args=(
                    st["name"],
                    wid,
                    st["done"],
                    rng.randrange(1 << 30),
                    args.max_body,
                    st["stop"],
                ),
                daemon=True,
            )
            p.start()
            writers[wid] = p

        def start_reader(st=st, readers=readers):
            rid = st["rid"]
            st["rid"] += 1
            a, b = CTX.Pipe(duplex=False)
            p = CTX.Process(
                target=kill_reader,
                args=(st["name"], rid, st["done"], max_wid, b, rid % 2 == 1),
                daemon=True,
            )
            p.start()
            b.close()
            readers[rid] = (p, a)

        for _ in range(nreaders):
            start_reader()
        try:
            q.wait_for_readers(nreaders, timeout=10)
        except ringcast.Timeout:
            tot["hangs"].append(f"round {rnd}: readers did not join in 10 s")
        for _ in range(nwriters):
            start_writer()
        kills = 0
        last_total, last_move = 0, time.monotonic()
        while kills < per_round and tot["kills"] + kills < kills_goal:
            time.sleep(rng.uniform(0.02, 0.25))
            total = sum(done[w] for w in range(st["wid"]))
            if total != last_total:
                last_total, last_move = total, time.monotonic()
            elif time.monotonic() - last_move > 10:
                tot["hangs"].append(
                    f"round {rnd}: no send returned for 10 s; stats "
                    + json.dumps({k: v for k, v in q.stats().items() if k != "members"})
                )
                break
            for w, p in list(writers.items()) + [(r, p) for r, (p, _) in readers.items()]:
                if not p.is_alive():
                    tot["errors"].append(f"round {rnd}: process {w} died by itself ({p.exitcode})")
                    tot["died"] += 1
            live_w = [w for w, p in writers.items() if p.is_alive()]
            live_r = [r for r, (p, _) in readers.items() if p.is_alive()]
            if not live_w or not live_r:
                break
            if rng.random() < 0.5:
                wid = rng.choice(live_w)
                writers[wid].kill()
                writers[wid].join(5)
                del writers[wid]
                tot["writer_kills"] += 1
                if st["wid"] < max_wid:
                    start_writer()
            else:
                rid = rng.choice(live_r)
                p, conn = readers.pop(rid)
                p.kill()
                p.join(5)
                conn.close()
                tot["reader_kills"] += 1
                start_reader()
            kills += 1
        tot["kills"] += kills
        time.sleep(0.2)  # let the last replacements get going
        stop[0] = 1
        for wid, p in writers.items():
            stop_proc(p, f"round {rnd}: writer {wid} did not stop within 10 s", tot["hangs"], 10)
            if p.exitcode not in (0, None):
                tot["died"] += 1
                tot["errors"].append(f"round {rnd}: writer {wid} exit code {p.exitcode}")
        q.shutdown()
        for rid, (p, conn) in readers.items():
            res = conn.recv() if conn.poll(20) else None
            stop_proc(p, f"round {rnd}: reader {rid} did not exit", tot["hangs"])
            if res is None:
                tot["hangs"].append(f"round {rnd}: reader {rid} did not finish draining in 20 s")
                continue
            tot["checked"] += res["checked"]
            tot["torn"] += res["torn"]
            tot["order"] += res["order"]
            tot["seq_gaps"] += res["gap_seq"]
            lost = res["gaps"]
            for w in range(st["wid"]):
                need_lo = res["snap"][w] + 1  # seq snap[w] may have been in flight at join
                need_hi = done[w] - 1  # last send that returned
                if need_hi < need_lo:
                    continue
                lo, hi = res["first"].get(w), res["last"].get(w)
                if lo is None:
                    lost += need_hi - need_lo + 1
                else:
                    lost += max(0, lo - need_lo) + max(0, need_hi - hi)
            tot["lost"] += lost
            if lost or res["torn"] or res["order"] or res["gap_seq"]:
                tot["errors"].append(
                    f"round {rnd} reader {rid}: {res['torn']} torn, {lost} lost, "
                    f"{res['order']} out of order, {res['gap_seq']} seq gaps"
                )
            conn.close()
        tot["messages_sent"] += sum(done[w] for w in range(st["wid"]))
        q.close()
        if os.path.exists(f"{SHM}/{name}"):
            tot["leftovers"].append(name)
            os.unlink(f"{SHM}/{name}")
        tot["rounds"] += 1
        log(
            args,
            f"  kill round {rnd + 1}/{rounds}: {tot['kills']} kills, "
            f"{tot['messages_sent']:,} sent, {tot['checked']:,} checked, "
            f"{tot['torn']} torn, {tot['lost']} lost, {len(tot['hangs'])} hangs",
        )
    tot["seconds"] = round(time.monotonic() - t0, 1)
    tot["ok"] = not (
        tot["torn"]
        or tot["lost"]
        or tot["order"]
        or tot["seq_gaps"]
        or tot["hangs"]
        or tot["died"]
        or tot["leftovers"]
    )
    out["kill"] = tot


# --------------------------------------------------------------------------- garbage

GOOD = (ringcast.RingcastError, OSError)


def templates(tag):
    """Bytes of real segments in a few states (a queue with readers, messages, a lease)."""
    out = []
    for cap, members, nmsg in ((4096, 4, 3), (65536, 64, 200), (1 << 20, 8, 1000)):
        name = f"stress-tpl-{tag}-{cap}"
        q = ringcast.BroadcastQueue(name, create=True, capacity=cap, max_members=members)
        r = q.reader()
        r2 = q.reader(lossy=True)
        for i in range(nmsg):
            try:
                q.send_nowait(NOISE[: i % 300], "t")
            except ringcast.Full:
                r.recv_many(64)
        r.recv_many(2)
        with open(f"{SHM}/{name}", "rb") as f:
            out.append(f.read())
        r.close()
        r2.close()
        q.close()
    return out


def garbage_one(rng, tpls, name, counts):
    kind = rng.randrange(6)
    if kind == 0:  # random bytes, random size
        data = rng.randbytes(
            rng.choice([0, 1, 7, 64, 4095, 4096, 4097, 8192, rng.randrange(65536)])
        )
    elif kind == 1:  # truncated real segment
        t = rng.choice(tpls)
        data = t[: rng.randrange(len(t))]
    elif kind in (2, 3):  # header bytes flipped
        t = bytearray(rng.choice(tpls))
        for _ in range(rng.choice([1, 1, 2, 4, 16])):
            i = rng.randrange(256 if kind == 2 else 4096)
            t[i] ^= 1 << rng.randrange(8) if rng.random() < 0.5 else rng.randrange(1, 256)
        data = bytes(t)
    elif kind == 4:  # member table / ring bytes flipped, or a random word written
        t = bytearray(rng.choice(tpls))
        for _ in range(rng.choice([1, 4, 32])):
            i = rng.randrange(4096, len(t) - 8)
            t[i : i + 8] = rng.choice([rng.randbytes(8), b"\xff" * 8, b"\0" * 8])
        data = bytes(t)
    else:  # real header, garbage after it, or a real header on a random-size object
        t = rng.choice(tpls)
        data = t[:4096] + rng.randbytes(rng.randrange(0, 3 * 4096))
    fd = os.open(f"{SHM}/{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.write(fd, data)
    os.close(fd)
    counts["attaches"] += 2
    t0 = time.monotonic()
    try:
        ringcast.inspect(name)
    except GOOD:
        counts["clean_errors"] += 1
    except Exception as e:  # noqa: BLE001 - anything else is a finding
        counts["unexpected"].append(f"inspect kind {kind}: {type(e).__name__}: {e}"[:200])
    try:
        q = ringcast.BroadcastQueue(name, create=False)
    except GOOD:
        counts["clean_errors"] += 1
    except Exception as e:  # noqa: BLE001
        counts["unexpected"].append(f"attach kind {kind}: {type(e).__name__}: {e}"[:200])
    else:
        counts["accepted"] += 1
        try:
            q.stats()
            with q.reader() as r:
                q.send_nowait(b"x" * rng.randrange(64), "g")
                r.recv_nowait()
        except GOOD:
            pass
        except Exception as e:  # noqa: BLE001
            counts["unexpected"].append(f"use kind {kind}: {type(e).__name__}: {e}"[:200])
        try:
            q.close()
        except GOOD:
            pass
    dt = time.monotonic() - t0
    counts["max_s"] = max(counts["max_s"], dt)
    if dt > 0.1:
        counts["slow"] += 1  # a bounded wait (an empty object, a lock word that looks held)
    try:
        os.unlink(f"{SHM}/{name}")
    except FileNotFoundError:
        pass


def garbage_child(seed, until, progress, slot, conn):
    """Attempts i = 0, 1, ... each from random.Random(rng.randrange(1 << 62)), rng seeded
    with seed: a reported (seed, attempt) pair replays the same object."""
    rng = random.Random(seed)
    tpls = templates(f"{os.getpid()}")
    counts = {
        "attaches": 0,
        "clean_errors": 0,
        "accepted": 0,
        "unexpected": [],
        "slow": 0,
        "max_s": 0.0,
        "objects": 0,
    }
    name = f"stress-garbage-{os.getpid()}"
    while time.monotonic() < until:
        progress[slot] = counts["objects"]
        garbage_one(random.Random(rng.randrange(1 << 62)), tpls, name, counts)
        counts["objects"] += 1
    counts["unexpected"] = counts["unexpected"][:20]
    conn.send(counts)
    os._exit(0)


def run_garbage(args, out):
    budget = 10.0 if args.quick else args.garbage_seconds
    rng = random.Random(args.seed)
    tot = {
        "attaches": 0,
        "objects": 0,
        "clean_errors": 0,
        "accepted": 0,
        "slow": 0,
        "max_s": 0.0,
        "crashes": [],
        "unexpected": [],
        "hangs": [],
        "children": 0,
    }
    prog_mm = mmap.mmap(-1, 8 * args.garbage_procs)
    progress = memoryview(prog_mm).cast("q")
    t0 = time.monotonic()
    end = t0 + budget
    running = {}  # slot -> (process, pipe, seed, until)

    def reap(slot):
        p, a, seed, until = running.pop(slot)
        res = a.recv() if a.poll(max(0.0, until - time.monotonic()) + 30) else None
        p.join(10)
        tot["children"] += 1
        if p.is_alive():
            tot["hangs"].append(f"garbage child seed {seed} stuck at attempt {progress[slot]}")
            p.kill()
            p.join(5)
        elif res is None:
            tot["crashes"].append(f"seed {seed} attempt {progress[slot]}: exit {p.exitcode}")
        else:
            for key in ("objects", "attaches", "clean_errors", "accepted", "slow"):
                tot[key] += res[key]
            tot["max_s"] = max(tot["max_s"], res["max_s"])
            tot["unexpected"] += res["unexpected"][: max(0, 20 - len(tot["unexpected"]))]
        a.close()
        for n in shm_list():
            if n.startswith((f"stress-garbage-{p.pid}", f"stress-tpl-{p.pid}-")):
                os.unlink(f"{SHM}/{n}")  # left by a crashed or killed child

    while True:
        now = time.monotonic()
        for slot in range(args.garbage_procs):
            if slot not in running and now < end - 0.5:
                seed = rng.randrange(1 << 62)
                until = min(end, now + 20)
                a, b = CTX.Pipe(duplex=False)
                progress[slot] = -1
                p = CTX.Process(
                    target=garbage_child, args=(seed, until, progress, slot, b), daemon=True
                )
                p.start()
                b.close()
                running[slot] = (p, a, seed, until)
        if not running:
            break
        for slot in list(running):
            p, a, seed, until = running[slot]
            if a.poll(0) or not p.is_alive() or time.monotonic() > until + 30:
                reap(slot)
        time.sleep(0.05)
    progress.release()
    prog_mm.close()
    tot["seconds"] = round(time.monotonic() - t0, 1)
    tot["attaches_per_s"] = round(tot["attaches"] / tot["seconds"])
    tot["max_s"] = round(tot["max_s"], 3)
    tot["ok"] = not (tot["crashes"] or tot["unexpected"] or tot["hangs"])
    log(
        args,
        f"  garbage: {tot['attaches']:,} attaches on {tot['objects']:,} objects, "
        f"{tot['accepted']:,} accepted, {len(tot['crashes'])} crashes, "
        f"{len(tot['unexpected'])} unexpected exceptions, {tot['slow']} bounded waits "
        f"> 0.1 s (longest {tot['max_s']} s)",
    )
    out["garbage"] = tot


# --------------------------------------------------------------------------- signals


class Usr1(Exception):
    pass


def on_usr1(signum, frame):
    raise Usr1


CALLS = ("recv", "lease", "recv_many", "send_full", "wait_for_readers", "sleep")
# "sleep" is a baseline, not ringcast: time.sleep(30), interrupted the same way; its tail is
# what the machine's scheduler adds to any signal delivery.


def signal_child(name, conn, n, seed):
    """Block in a call, tell the parent, get a signal; report when the exception came."""
    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = random.Random(seed)
    q = ringcast.BroadcastQueue(name, create=False, spin_us=rng.choice([0.0, 20.0]))
    r = q.reader()
    full = ringcast.BroadcastQueue(name + "-full", create=False)
    pin = full.reader()  # never reads: the ring stays full
    while True:
        try:
            full.send_nowait(b"p" * 100)
        except ringcast.Full:
            break
    for i in range(n):
        call = CALLS[i % len(CALLS)]
        if call == "sleep":
            try:
                conn.send(("ready", call))
                time.sleep(30)
                got = "returned"
            except KeyboardInterrupt:
                got = "KeyboardInterrupt"
            except Usr1:
                got = "Usr1"
            conn.send(("caught", call, got, monotonic()))
            continue
        got = "none"
        try:
            conn.send(("ready", call))
            if call == "recv":
                r.recv(timeout=30)
            elif call == "lease":
                with r.lease(timeout=30):
                    pass
            elif call == "recv_many":
                r.recv_many(16, timeout=30)
            elif call == "send_full":
                full.send(b"p" * 100, timeout=30)
            else:
                q.wait_for_readers(100, timeout=30)
            got = "returned"
        except KeyboardInterrupt:
            got = "KeyboardInterrupt"
        except Usr1:
            got = "Usr1"
        except Exception as e:  # noqa: BLE001
            got = f"{type(e).__name__}: {e}"
        conn.send(("caught", call, got, monotonic()))
    pin.close()
    r.close()
    full.close()
    q.close()
    conn.close()
    os._exit(0)


def run_signals(args, out):
    n_rc = 40 if args.quick else args.signals
    n = n_rc + n_rc // (len(CALLS) - 1)  # plus the baseline's share
    rng = random.Random(args.seed)
    name = f"stress-sig-{os.getpid()}"
    q = ringcast.BroadcastQueue(name, create=True, capacity=4096)
    qf = ringcast.BroadcastQueue(name + "-full", create=True, capacity=4096)
    a, b = CTX.Pipe()
    p = CTX.Process(target=signal_child, args=(name, b, n, rng.randrange(1 << 30)), daemon=True)
    p.start()
    lat = {}
    res = {"signals": 0, "handled": 0, "wrong": [], "hangs": []}
    for i in range(n):
        if not a.poll(30):
            res["hangs"].append(f"signal child not ready for signal {i}")
            break
        _, call = a.recv()
        time.sleep(rng.uniform(0.002, 0.030))  # let it settle into the wait, or not quite
        sig = signal.SIGINT if i % 2 == 0 else signal.SIGUSR1
        t_kill = monotonic()
        os.kill(p.pid, sig)
        res["signals"] += 1
        if not a.poll(10):
            res["hangs"].append(f"{call}: no exception 10 s after {sig.name}")
            break
        _, call2, got, t_caught = a.recv()
        want = "KeyboardInterrupt" if sig == signal.SIGINT else "Usr1"
        if got != want:
            res["wrong"].append(f"{call} {sig.name}: {got}")
            continue
        res["handled"] += 1
        lat.setdefault(call, []).append((t_caught - t_kill) * 1e3)
    stop_proc(p, "signal child did not exit", res["hangs"])
    q.close()
    qf.close()
    allv = sorted(v for c, vs in lat.items() if c != "sleep" for v in vs)
    res["signals_ringcast"] = len(allv)

    def pct(vs, f):
        vs = sorted(vs)
        return round(vs[min(len(vs) - 1, int(f * len(vs)))], 3) if vs else None

    res["max_ms"] = round(max(allv), 3) if allv else None
    res["p99_ms"] = pct(allv, 0.99)
    res["p50_ms"] = pct(allv, 0.50)
    res["per_call"] = {
        c: {"n": len(v), "p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99), "max_ms": round(max(v), 3)}
        for c, v in lat.items()
    }
    res["ok"] = not (res["wrong"] or res["hangs"]) and res["handled"] == n
    log(
        args,
        f"  signals: {res['handled']}/{res['signals']} handled ({len(allv)} in ringcast calls: "
        f"p50 {res['p50_ms']} ms, "
        f"p99 {res['p99_ms']} ms, max {res['max_ms']} ms; baseline time.sleep: "
        f"{res['per_call'].get('sleep')})",
    )
    out["signals"] = res


# --------------------------------------------------------------------------- soak


def sample():
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {"rss_kib": rss // 1024, "fds": len(os.listdir("/proc/self/fd"))}


def soak_writer(name, k, conn):
    q = ringcast.BroadcastQueue(name, create=False)
    q.wait_for_readers(3, timeout=30)
    samples = [sample()]
    bodies = [NOISE[i : i + 32 + i % 200] for i in range(64)]
    hang = None
    for i in range(k):
        if i == k // 2:
            samples.append(sample())
        try:
            q.send(bodies[i & 63], "s", timeout=10)
        except ringcast.Full:
            hang = f"send of message {i} waited 10 s"
            break
    samples.append(sample())
    q.shutdown()
    conn.send({"samples": samples, "sent": i + 1 if hang is None else i, "hang": hang})
    q.close()
    os._exit(0)


def soak_reader(name, k, mode, conn):
    q = ringcast.BroadcastQueue(name, create=False)
    r = q.reader(lossy=mode == "lossy")
    samples = [sample()]
    got, gaps, prev, hang, missed = 0, 0, -1, None, 0
    try:
        while True:
            if got >= k // 2 and len(samples) == 1:
                samples.append(sample())
            try:
                if mode == "lease":
                    with r.lease(timeout=10) as m:
                        seqs = (m.seq,)
                else:
                    seqs = [m.seq for m in r.recv_many(1024, timeout=10)]
                    if not seqs:
                        raise ringcast.Empty
            except ringcast.Empty:
                hang = f"{mode} reader: nothing for 10 s after {got} messages"
                break
            for s in seqs:
                if s != prev + 1:
                    gaps += 1
                    missed += s - prev - 1
                prev = s
            got += len(seqs)
    except ringcast.QueueShutDown:
        pass
    if len(samples) == 1:
        samples.append(sample())
    samples.append(sample())
    r.close()
    q.close()
    conn.send({"samples": samples, "got": got, "gaps": gaps, "missed": missed, "hang": hang})
    os._exit(0)


def soak_churn(name, stop, conn):
    """Attach, make a reader, read a bit, close; over and over."""
    samples = [sample()]
    n = 0
    t0 = time.monotonic()
    while not stop[0]:
        q = ringcast.BroadcastQueue(name, create=False)
        r = q.reader(lossy=True)
        try:
            r.recv_many(8, timeout=0.001)
        except ringcast.QueueShutDown:
            pass
        r.close()
        q.close()
        del q, r
        n += 1
        if n == 200:
            samples.append(sample())  # "start" after the allocator has settled
        if stop[1] and len(samples) == 2:
            samples.append(sample())
    samples.append(sample())
    conn.send(
        {
            "samples": samples[1:] if len(samples) > 3 else samples,
            "cycles": n,
            "seconds": time.monotonic() - t0,
        }
    )
    os._exit(0)


def run_soak(args, out):
    k = 200_000 if args.quick else args.soak_messages
    name = f"stress-soak-{os.getpid()}"
    q = ringcast.BroadcastQueue(name, create=True, capacity=1 << 20)
    stop_mm = mmap.mmap(-1, 16)
    stop = memoryview(stop_mm).cast("q")
    procs = {}
    for role in ("copy", "lease", "lossy"):
        a, b = CTX.Pipe(duplex=False)
        procs[role] = (CTX.Process(target=soak_reader, args=(name, k, role, b), daemon=True), a)
    a, b = CTX.Pipe(duplex=False)
    procs["churn"] = (CTX.Process(target=soak_churn, args=(name, stop, b), daemon=True), a)
    a, b = CTX.Pipe(duplex=False)
    procs["writer"] = (CTX.Process(target=soak_writer, args=(name, k, b), daemon=True), a)
    t0 = time.monotonic()
    for p, _ in procs.values():
        p.start()
    res = {"messages": k, "hangs": [], "procs": {}}
    wp, wa = procs["writer"]
    deadline = t0 + args.soak_timeout
    mid = False
    while wp.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
        if not mid and q.stats()["write_seq"] >= k // 2:
            stop[1] = 1  # churn samples its middle now
            mid = True
    if wp.is_alive():
        res["hangs"].append(
            f"writer not done after {args.soak_timeout} s (write_seq {q.stats()['write_seq']})"
        )
        q.shutdown()
    stop[0] = 1
    for role, (p, a) in procs.items():
        r = a.recv() if a.poll(30) else None
        stop_proc(p, f"soak {role} did not exit", res["hangs"])
        if r is None:
            res["hangs"].append(f"soak {role}: no report")
            continue
        if r.get("hang"):
            res["hangs"].append(r["hang"])
        s = r.pop("samples")
        st, md, en = s[0], s[len(s) // 2] if len(s) > 2 else s[0], s[-1]
        r["rss_kib"] = [st["rss_kib"], md["rss_kib"], en["rss_kib"]]
        r["fds"] = [st["fds"], md["fds"], en["fds"]]
        r["flat"] = en["rss_kib"] - md["rss_kib"] <= 4096 and en["fds"] <= md["fds"]
        res["procs"][role] = r
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["msgs_per_s"] = round(k / res["seconds"])
    q.close()
    del stop
    stop_mm.close()
    lost = [
        f"{role}: got {r['got']} of {k}, {r['missed']} missing"
        for role, r in res["procs"].items()
        if role in ("copy", "lease") and (r["got"] != k or r["gaps"])
    ]
    res["lost"] = lost
    res["ok"] = not res["hangs"] and not lost and all(r["flat"] for r in res["procs"].values())
    for role, r in res["procs"].items():
        log(
            args,
            f"  soak {role}: rss KiB {r['rss_kib']} fds {r['fds']} "
            f"{'flat' if r['flat'] else 'GROWING'}"
            + (f", got {r['got']:,}" if "got" in r else "")
            + (f", {r['cycles']:,} attach cycles" if "cycles" in r else ""),
        )
    out["soak"] = res


# --------------------------------------------------------------------------- main

MODES = {"kill": run_kill, "garbage": run_garbage, "signals": run_signals, "soak": run_soak}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", choices=list(MODES), help="run only this mode")
    ap.add_argument("--quick", action="store_true", help="short run (about a minute)")
    ap.add_argument("--json", action="store_true", help="only a JSON object on stdout")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--kills", type=int, default=1200)
    ap.add_argument("--max-body", type=int, default=2048, help="kill: largest random body")
    ap.add_argument("--garbage-seconds", type=float, default=120.0)
    ap.add_argument("--garbage-procs", type=int, default=16, help="garbage: children at once")
    ap.add_argument("--signals", type=int, default=480)
    ap.add_argument("--soak-messages", type=int, default=5_000_000)
    ap.add_argument("--soak-timeout", type=float, default=400.0)
    args = ap.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    before = shm_list()
    out = {"seed": args.seed, "quick": args.quick}
    t0 = time.monotonic()
    for mode in args.only or list(MODES):
        log(args, f"{mode} ...")
        try:
            MODES[mode](args, out)
        except Exception as e:  # noqa: BLE001 - a failing mode must not hide the others
            out[mode] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            log(args, f"  {mode} failed: {type(e).__name__}: {e}")
    time.sleep(0.2)
    left = sorted(shm_list() - before)
    for n in left:
        try:
            os.unlink(f"{SHM}/{n}")
        except OSError:
            pass
    out["dev_shm_leftovers"] = left
    out["seconds"] = round(time.monotonic() - t0, 1)
    out["ok"] = not left and all(out[m]["ok"] for m in MODES if m in out)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        log(
            args,
            f"seed {args.seed}; /dev/shm leftovers: {left or 'none'}; "
            f"{out['seconds']} s; {'PASS' if out['ok'] else 'FAIL'}",
        )
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
