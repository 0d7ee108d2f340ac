#!/usr/bin/python3
"""Runs commands the way the benchmark needs them and records what they cost.

  drive.py per-seg --segs FILE --cwd DIR --label L [--archiver] [--fsync-out TPL] -- CMD...
      One process per WAL segment, in order, like PostgreSQL's archiver. CMD may contain
      {seg} (file name), {rel} (pg_wal/<seg>) and {path} (absolute). --archiver renames
      archive_status/<seg>.ready to .done after each success. --fsync-out TPL fsyncs the file
      TPL names (and its directory) after the command, timed as part of the call.
  drive.py once --label L [--cwd DIR] -- CMD...
      One command.

Both append one JSON object per run to --results: wall time, per-call percentiles, CPU seconds
(user + system of the process and every descendant it waited for, from wait4()) and the
largest peak RSS of one process. The driver is a child subreaper, so processes a command leaves
running detached (wal-push's look-ahead uploader) are reaped here and their CPU time and peak
RSS count too: between calls as they end, and after the last call (outside the wall time,
which ends when the last call returns). The peak RSS comes from GNU time (%M), which the command runs
under: a child forked from this Python process would report Python's own RSS as its floor,
because Linux keeps the pre-exec high-water mark. GNU time's own floor is about 2 MiB.
"""
import argparse
import ctypes
import json
import math
import os
import subprocess
import sys
import tempfile
import time

TIME = "/usr/bin/time"
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_orphans(block):
    """Reaps detached descendants that were re-parented to this process; returns their CPU
    seconds and largest peak RSS (KiB). With block, waits until none is left."""
    cpu, rss = 0.0, 0
    while True:
        try:
            pid, _, ru = os.wait4(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        cpu += ru.ru_utime + ru.ru_stime
        rss = max(rss, ru.ru_maxrss)
    return cpu, rss


def run_one(argv, cwd, env, log, rss_file):
    """Runs argv under GNU time; returns exit code, rusage and peak RSS in KiB."""
    p = subprocess.Popen([TIME, "-f", "%M", "-o", rss_file, "--"] + argv, cwd=cwd, env=env,
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    rss = 0
    try:
        with open(rss_file) as f:
            for line in f:
                line = line.strip()
                if line.isdigit():
                    rss = int(line)
    except OSError:
        pass
    return p.returncode, ru, rss


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def pct(sorted_vals, q):
    """Nearest-rank percentile."""
    if not sorted_vals:
        return float("nan")
    k = max(1, math.ceil(q / 100.0 * len(sorted_vals)))
    return sorted_vals[k - 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["per-seg", "once"])
    ap.add_argument("--label", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--log", default="/dev/null")
    ap.add_argument("--cwd", default=None)
    ap.add_argument("--segs")
    ap.add_argument("--archiver", action="store_true")
    ap.add_argument("--fsync-out")
    ap.add_argument("--extra", default="{}", help="JSON merged into the record")
    argv = sys.argv[1:]
    if "--" not in argv:
        ap.error("no command (expected -- CMD...)")
    cut = argv.index("--")
    a = ap.parse_args(argv[:cut])
    cmd = argv[cut + 1:]
    if not cmd:
        ap.error("no command")
    env = dict(os.environ)
    become_subreaper()
    calls, failed = [], 0
    cpu = 0.0
    rss = 0
    fd, rss_file = tempfile.mkstemp(prefix="drive-rss-")
    os.close(fd)
    with open(a.log, "ab") as log:
        if a.mode == "once":
            items = [None]
        else:
            with open(a.segs) as f:
                items = [l.strip() for l in f if l.strip()]
        t_start = time.perf_counter()
        for seg in items:
            if seg is None:
                argv = cmd
            else:
                rel = "pg_wal/" + seg
                path = os.path.join(a.cwd, rel)
                argv = [c.format(seg=seg, rel=rel, path=path) for c in cmd]
            log.write(("$ " + " ".join(argv) + "\n").encode())
            log.flush()
            t0 = time.perf_counter()
            code, ru, one_rss = run_one(argv, a.cwd, env, log, rss_file)
            if code == 0 and a.fsync_out and seg is not None:
                fsync_path(a.fsync_out.format(seg=seg))
            dt = time.perf_counter() - t0
            if code != 0:
                failed += 1
                log.write(f"exit {code}\n".encode())
            elif a.archiver and seg is not None:
                st = os.path.join(a.cwd, "pg_wal", "archive_status")
                os.rename(os.path.join(st, seg + ".ready"), os.path.join(st, seg + ".done"))
            calls.append(dt)
            cpu += ru.ru_utime + ru.ru_stime
            rss = max(rss, one_rss)
            o_cpu, o_rss = reap_orphans(block=False)
            cpu, rss = cpu + o_cpu, max(rss, o_rss)
        wall = time.perf_counter() - t_start
        o_cpu, o_rss = reap_orphans(block=True)
        cpu, rss = cpu + o_cpu, max(rss, o_rss)
    if os.path.exists(rss_file):
        os.unlink(rss_file)
    s = sorted(calls)
    rec = {
        "label": a.label,
        "mode": a.mode,
        "n": len(calls),
        "failed": failed,
        "wall_s": round(wall, 4),
        "per_s": round(len(calls) / wall, 3) if wall > 0 else None,
        "mean_ms": round(1000 * sum(calls) / len(calls), 2),
        "p50_ms": round(1000 * pct(s, 50), 2),
        "p99_ms": round(1000 * pct(s, 99), 2),
        "max_ms": round(1000 * s[-1], 2),
        "cpu_s": round(cpu, 3),
        "max_rss_kib": rss,
    }
    rec.update(json.loads(a.extra))
    with open(a.results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"  {a.label}: n={rec['n']} failed={failed} wall={rec['wall_s']}s "
          f"p50={rec['p50_ms']}ms p99={rec['p99_ms']}ms cpu={rec['cpu_s']}s "
          f"rss={rss // 1024}MiB", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
