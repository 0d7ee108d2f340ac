#!/usr/bin/python3
"""Renders bench/out/results.jsonl (written by bench/run) as markdown tables with the targets."""
import json
import sys

MIB = 1024 * 1024


def load(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def best(recs, **kw):
    """The fastest run (least wall time) among the records that match kw."""
    m = [r for r in recs if all(r.get(k) == v for k, v in kw.items())]
    return min(m, key=lambda r: r["wall_s"]) if m else None


def fmt(v, nd=1):
    return "–" if v is None else f"{v:.{nd}f}"


def verdict(ok):
    return "**met**" if ok else "**not met**"


def wal(recs, out):
    rows = [
        ("lz4 -1 CLI (+ fsync)", "lz4-cli", "file", None),
        ("walkeeper wal-push", "walkeeper-file", "file", None),
        ("walkeeper wal-push, baseline {base}", "walkeeper-file-baseline", "file", None),
        ("pgBackRest 2.45 archive-push (sync, lz4)", "pgbackrest-posix", "file", None),
        ("WAL-E 1.1.1 wal-push (lzop)", "wal-e-file", "file", None),
        ("walkeeper wal-push", "walkeeper-s3", "s3", "off"),
        ("walkeeper wal-push", "walkeeper-s3", "s3", "on"),
        ("pgBackRest archive-push (TLS via stunnel)", "pgbackrest-s3", "s3", "on"),
        ("WAL-E wal-push", "wal-e-s3", "s3", "on"),
    ]
    ws = [r for r in recs if r.get("part") == "wal"]
    if not ws:
        return
    base = next((r["rev"] for r in recs if r.get("label") == "baseline"), "?")
    n = max(r["n"] for r in ws if r["label"] == "walkeeper-file") if best(ws, label="walkeeper-file") else "?"
    out.append(f"### WAL archiving: one process per segment ({n} real pgbench segments of 16 MiB)\n")
    out.append("| tool | store | quickack | segments/s | MB/s | p50 ms | p99 ms | CPU ms/segment | peak RSS MiB |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    got = {}
    for name, label, store, qa in rows:
        kw = {"label": label}
        if qa:
            kw["quickack"] = qa
        r = best(ws, **kw)
        if not r:
            continue
        got[(label, qa)] = r
        where = "file (posix repo)" if store == "file" else "S3 (s3s-fs, loopback)"
        mbs = r["n"] * 16 / r["wall_s"] * 1.048576
        name = name.format(base=base)
        out.append(
            f"| {name} | {where} | {qa or '–'} | {fmt(r['per_s'])} | {fmt(mbs, 0)} | {fmt(r['p50_ms'])} "
            f"| {fmt(r['p99_ms'])} | {fmt(1000 * r['cpu_s'] / r['n'])} | {fmt(r['max_rss_kib'] / 1024)} |")
    out.append("")
    bursts = sorted({r["label"] for r in ws if r["label"].startswith("burst")})
    if bursts:
        out.append(f"### WAL look-ahead: a burst of .ready segments drained by successive archive_command calls\n")
        out.append("| mode | store | quickack | segments | segments/s | vs look-ahead 0 | cores used (CPU s / wall s) | peak RSS MiB |")
        out.append("|---|---|---|---|---|---|---|---|")
        for label in bursts:
            r = best(ws, label=label)
            zero = label.rsplit("-", 1)[0] + "-0"
            b0 = best(ws, label=zero.replace("-baseline", ""))
            ratio = r["per_s"] / b0["per_s"] if b0 else None
            got[(label, None)] = r
            out.append(
                f"| {label} | {r['store']} | {r['quickack']} | {r['n']} | {fmt(r['per_s'])} | {fmt(ratio, 2)}× "
                f"| {fmt(r['cpu_s'] / r['wall_s'], 2)} | {fmt(r['max_rss_kib'] / 1024)} |")
        out.append("")
    # Targets.
    t = []
    lz, wk = got.get(("lz4-cli", None)), got.get(("walkeeper-file", None))
    if lz and wk:
        q = wk["p50_ms"] / lz["p50_ms"]
        t.append(f"| wal-push per segment ≤ 1.2 × `lz4 -1` CLI (p50, file://) | {wk['p50_ms']:.1f} ms vs {lz['p50_ms']:.1f} ms = {q:.2f}× | {verdict(q <= 1.2)} |")
    bl = [k for k in got if k[0].startswith("burst-lookahead-") and not k[0].endswith("-0")]
    for k in bl:
        r, base = got[k], got.get(("burst-lookahead-0", None))
        if base:
            q = r["per_s"] / base["per_s"]
            cores = r["cpu_s"] / r["wall_s"]
            t.append(f"| look-ahead burst ≥ 1.8 × one-process rate (file://) | {r['per_s']:.1f} vs {base['per_s']:.1f} segments/s = {q:.2f}×, {cores:.2f} cores busy | {verdict(q >= 1.8)} |")
    bb, bl8 = got.get(("walkeeper-file-baseline", None)), [k for k in got if k[0].startswith("burst-lookahead-") and not k[0].endswith("-0")]
    if bb and bl8:
        r = got[bl8[0]]
        t.append(f"| (context) look-ahead burst vs the baseline's one-process rate (file://) | {r['per_s']:.1f} vs {bb['per_s']:.1f} segments/s = {r['per_s'] / bb['per_s']:.2f}× | – |")
    for store, wkl, peers in [("file", ("walkeeper-file", None), [("pgbackrest-posix", None), ("wal-e-file", None)]),
                              ("S3", ("walkeeper-s3", "on"), [("pgbackrest-s3", "on"), ("wal-e-s3", "on")])]:
        w = got.get(wkl)
        for p in peers:
            r = got.get(p)
            if w and r:
                q = w["per_s"] / r["per_s"]
                t.append(f"| faster than {p[0]} ({store}) | {w['per_s']:.1f} vs {r['per_s']:.1f} segments/s = {q:.1f}× | {verdict(q > 1.2)} |")
    wkr = [r for r in ws if r["label"].startswith(("walkeeper", "burst")) and "baseline" not in r["label"]]
    if wkr:
        groups = {}
        for r in wkr:
            kind = ("look-ahead " if r["label"].startswith("burst") else "one-process ") + r["store"]
            groups[kind] = max(groups.get(kind, 0), r["max_rss_kib"] / 1024)
        rss = max(groups.values())
        desc = ", ".join(f"{k} {v:.1f}" for k, v in sorted(groups.items()))
        t.append(f"| wal-push peak RSS ≤ 32 MiB (every walkeeper run, MiB) | {desc} | {verdict(rss <= 32)} |")
    for key, what, limit in [(("walkeeper-file", None), "file://", 50), (("walkeeper-s3", "on"), "S3, quickack on", 50),
                             (("walkeeper-s3", "off"), "S3, quickack off", 50)]:
        r = got.get(key)
        if r:
            t.append(f"| wal-push p99 well under 100 ms (≤ {limit} ms), {what} | {r['p99_ms']:.1f} ms (p50 {r['p50_ms']:.1f}) | {verdict(r['p99_ms'] <= limit)} |")
    if t:
        out.append("| WAL target | measured | |")
        out.append("|---|---|---|")
        out.extend(t)
        out.append("")


def backup(recs, out):
    bs = [r for r in recs if r.get("part") == "backup"]
    if not bs:
        return
    scales = sorted({r["scale"] for r in bs})
    out.append("### Base backups (file:// and S3 on loopback; pgbench cluster, data directory without pg_wal, in page cache)\n")
    out.append("| scale | data MB | what | wall s | MB/s | CPU s | peak RSS MiB (one process) | stored MB |")
    out.append("|---|---|---|---|---|---|---|---|")
    base = next((r["rev"] for r in recs if r.get("label") == "baseline"), "?")
    names = [("wk-backup-push", "walkeeper backup-push", "wk-backup-size"),
             ("wk-backup-fetch", "walkeeper backup-fetch", None),
             ("wk-backup-fetch-nosync", "walkeeper backup-fetch --no-sync (no syncfs)", None),
             ("wk-backup-push-s3", "walkeeper backup-push, S3 (s3s-fs)", None),
             ("wk-backup-fetch-s3", "walkeeper backup-fetch, S3 (s3s-fs)", None),
             ("wk-backup-push-baseline", f"walkeeper backup-push, baseline {base}", None),
             ("wk-backup-fetch-baseline", f"walkeeper backup-fetch, baseline {base}", None),
             ("pgbr-backup", "pgBackRest backup (full, process-max=2, lz4)", "pgbr-backup-size"),
             ("pgbr-restore", "pgBackRest restore (process-max=2)", None),
             ("lz4-cli-tar", "limit: `lz4 -1` CLI over a tar of it (1 core)", None),
             ("disk-read-direct", "limit: disk read of that tar (dd, O_DIRECT)", None)]
    targets = []
    rss_by_scale = {}
    for sc in scales:
        got = {}
        for label, name, size_label in names:
            r = best(bs, label=label, scale=sc)
            if not r:
                continue
            got[label] = r
            mb = r["bytes"] / 1e6
            size = next((x for x in reversed(recs) if x.get("label") == size_label and x.get("scale") == sc), None)
            rss = r["max_rss_kib"] / 1024 if not label.startswith(("lz4", "disk")) else None
            out.append(f"| {sc} | {mb:.0f} | {name} | {r['wall_s']:.2f} | {mb / r['wall_s']:.0f} | {r['cpu_s']:.2f} "
                       f"| {fmt(rss)} | {fmt(size['stored'] / 1e6, 0) if size else '–'} |")
        push, lz, disk, pgbr = (got.get(k) for k in ("wk-backup-push", "lz4-cli-tar", "disk-read-direct", "pgbr-backup"))
        if push and lz and disk:
            mb = push["bytes"] / 1e6
            bound = min(mb / disk["wall_s"], 2 * mb / lz["wall_s"])
            rate = mb / push["wall_s"]
            targets.append(f"| scale {sc}: backup-push ≥ 90 % of min(disk read, 2 × lz4 1-core) | {rate:.0f} MB/s vs bound {bound:.0f} MB/s = {100 * rate / bound:.0f} % | {verdict(rate >= 0.9 * bound)} |")
        phase = next((x for x in reversed(recs) if x.get("label") == "wk-backup-data-phase" and x.get("scale") == sc), None)
        if phase and lz and phase["seconds"] > 0:
            mb = phase["bytes"] / 1e6
            rate, cpu_bound = mb / phase["seconds"], 2 * mb / lz["wall_s"]
            targets.append(f"| (context) scale {sc}: data phase only (page cache) vs 2 × lz4 1-core | {rate:.0f} MB/s in {phase['seconds']:.2f} s vs {cpu_bound:.0f} MB/s = {100 * rate / cpu_bound:.0f} % | – |")
        if push and pgbr:
            q = pgbr["wall_s"] / push["wall_s"]
            targets.append(f"| scale {sc}: backup-push faster than pgBackRest backup | {push['wall_s']:.2f} s vs {pgbr['wall_s']:.2f} s = {q:.1f}× | {verdict(q > 1)} |")
        f, pr = got.get("wk-backup-fetch"), got.get("pgbr-restore")
        if f and pr:
            q = pr["wall_s"] / f["wall_s"]
            targets.append(f"| scale {sc}: backup-fetch faster than pgBackRest restore | {f['wall_s']:.2f} s vs {pr['wall_s']:.2f} s = {q:.1f}× | {verdict(q > 1)} |")
        if push:
            rss_by_scale[sc] = (push["max_rss_kib"] / 1024, got.get("wk-backup-fetch", {}).get("max_rss_kib", 0) / 1024)
        ns = got.get("wk-backup-fetch-nosync")
        if f and ns:
            targets.append(f"| (context) scale {sc}: what backup-fetch's syncfs costs | {f['wall_s']:.2f} s vs {ns['wall_s']:.2f} s with `--no-sync` = +{100 * (f['wall_s'] / ns['wall_s'] - 1):.0f} % | – |")
        fs = got.get("wk-backup-fetch-s3")
        if f and fs:
            q = fs["wall_s"] / f["wall_s"]
            targets.append(f"| scale {sc}: backup-fetch from S3 within 10 % of file:// | {fs['wall_s']:.2f} s vs {f['wall_s']:.2f} s = {100 * q:.0f} % | {verdict(q <= 1.10)} |")
        for cmd, limit in (("push", 32), ("fetch", 16)):
            rows = [(k, got[k]) for k in (f"wk-backup-{cmd}", f"wk-backup-{cmd}-s3") if k in got]
            if rows:
                desc = ", ".join(f"{'S3' if k.endswith('s3') else 'file'} {r['max_rss_kib'] / 1024:.1f}" for k, r in rows)
                worst = max(r["max_rss_kib"] / 1024 for _, r in rows)
                targets.append(f"| scale {sc}: backup-{cmd} peak RSS ≤ {limit} MiB on every store | {desc} MiB | {verdict(worst <= limit)} |")
    out.append("")
    if rss_by_scale:
        worst = max(max(v) for v in rss_by_scale.values())
        desc = ", ".join(f"scale {s}: push {p:.1f} / fetch {f:.1f} MiB" for s, (p, f) in sorted(rss_by_scale.items()))
        vals = [max(v) for _, v in sorted(rss_by_scale.items())]
        flat = len(vals) < 2 or vals[-1] <= vals[0] * 1.25 + 4
        targets.append(f"| peak RSS ≤ 64 MiB and flat in data size | {desc} | {verdict(worst <= 64 and flat)} |")
    if targets:
        out.append("| backup target | measured | |")
        out.append("|---|---|---|")
        out.extend(targets)
        out.append("")


def delta(recs, out):
    ds = [r for r in recs if r.get("part") == "delta"]
    if not ds:
        return
    sc, upd = ds[0]["scale"], ds[0].get("update", "range")
    mb = ds[0]["bytes"] / 1e6
    size = lambda label: next((r["stored"] for r in reversed(ds) if r.get("label") == label), None)
    out.append(f"### Delta backups (pgbench scale {sc}, {mb:.0f} MB; 1% of pgbench_accounts updated: {upd})\n")
    out.append("| step | wall s | CPU s | peak RSS MiB | stored MB | cache |")
    out.append("|---|---|---|---|---|---|")
    rows = [
        ("walkeeper backup-push --full", "wk-full-push", "wk-full-size"),
        ("walkeeper backup-push (delta)", "wk-delta-push", "wk-delta-size"),
        ("pgBackRest 2.45 backup --type=full", "pgbr-full", "pgbr-full-size"),
        ("pgBackRest backup --type=incr", "pgbr-incr", "pgbr-incr-size"),
        ("walkeeper backup-fetch of the full backup", "wk-fetch-full", None),
        ("walkeeper backup-fetch of the full backup", "wk-fetch-full-warm", None),
        ("walkeeper backup-fetch of the delta (chain of 2)", "wk-fetch-delta", None),
        ("walkeeper backup-fetch of the delta (chain of 2)", "wk-fetch-delta-warm", None),
        ("pgBackRest restore of the incremental", "pgbr-restore-incr", None),
        ("walkeeper backup-fetch --delta over the data directory", "wk-fetch-delta-inplace", None),
        ("pgBackRest restore --delta over the data directory", "pgbr-restore-delta-inplace", None),
    ]
    got = {}
    for name, label, size_label in rows:
        r = best(ds, label=label)
        if not r:
            continue
        got[label] = r
        s = size(size_label) if size_label else None
        out.append(f"| {name} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['max_rss_kib'] / 1024:.1f} | "
                   f"{fmt(s / 1e6, 1) if s else '–'} | {r.get('cache', '–')} |")
    out.append("")
    t = []
    fs, ds_ = size("wk-full-size"), size("wk-delta-size")
    if fs and ds_:
        t.append(f"| delta stores < 5 % of the full's bytes | {ds_ / 1e6:.1f} MB vs {fs / 1e6:.1f} MB = {100 * ds_ / fs:.1f} % | {verdict(ds_ < 0.05 * fs)} |")
    fp, dp = got.get("wk-full-push"), got.get("wk-delta-push")
    if fp and dp:
        t.append(f"| delta backup-push < 20 % of the full's time | {dp['wall_s']:.2f} s vs {fp['wall_s']:.2f} s = {100 * dp['wall_s'] / fp['wall_s']:.0f} % | {verdict(dp['wall_s'] < 0.2 * fp['wall_s'])} |")
    ff, fi = got.get("wk-fetch-full"), got.get("wk-fetch-delta-inplace")
    if ff and fi:
        t.append(f"| delta restore in place < 30 % of a full restore | {fi['wall_s']:.2f} s vs {ff['wall_s']:.2f} s = {100 * fi['wall_s'] / ff['wall_s']:.0f} % | {verdict(fi['wall_s'] < 0.3 * ff['wall_s'])} |")
    pitr = [r for r in ds if r["label"].startswith("wk-pitr-")]
    if pitr:
        out.append("PITR-style restore of the delta: the data directory moved aside, the chain restored into a new one, "
                   "whole or seeded from the aside copy (`backup-fetch --seed-from`, what the PITR restart runs when it chooses the delta restore):\n")
        out.append("| changes since the backup | file system | restore | wall s | CPU s | peak RSS MiB | cache |")
        out.append("|---|---|---|---|---|---|---|")
        groups = sorted({(r.get("changes", "accounts"), r["fs"]) for r in pitr}, reverse=True)
        for ch, fs in groups:
            for warm in ("", "-warm"):
                for kind, name in (("full", "full fetch into an empty directory"),
                                   ("seeded", "seeded (clone on XFS, copy elsewhere) + delta restore")):
                    r = best(pitr, label=f"wk-pitr-{kind}{warm}", fs=fs, changes=ch)
                    if r:
                        out.append(f"| {ch} | {fs} | {name} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['max_rss_kib'] / 1024:.1f} | {r.get('cache', '–')} |")
            for warm in ("", "-warm"):
                f = best(pitr, label=f"wk-pitr-full{warm}", fs=fs, changes=ch)
                sd = best(pitr, label=f"wk-pitr-seeded{warm}", fs=fs, changes=ch)
                if f and sd:
                    cache = sd.get("cache", "–")
                    t.append(f"| PITR-style delta restore < 30 % of a full one ({ch} changed, {fs}, {cache}) | {sd['wall_s']:.2f} s vs {f['wall_s']:.2f} s = {100 * sd['wall_s'] / f['wall_s']:.0f} % | {verdict(sd['wall_s'] < 0.3 * f['wall_s'])} |")
        out.append("")
    if t:
        out.append("| delta target | measured | |")
        out.append("|---|---|---|")
        out.extend(t)
        out.append("")


def restore(recs, out):
    rs = [r for r in recs if r.get("part") == "restore"]
    if not rs:
        return
    n = max(r["restored"] for r in rs)
    out.append(f"### Recovery through restore_command ({n} pgbench segments of 16 MiB replayed, page cache dropped before each)\n")
    out.append("| restore_command | recovery s | segments restored | vs cp + fsync |")
    out.append("|---|---|---|---|")
    names = {
        "cp-fsync": "cp from a local directory + fsync (the limit)",
        "cp-fsync-again": "cp + fsync, again at the end",
        "wk-fetch": "walkeeper wal-fetch, no prefetch",
        "wk-fetch-prefetch": "walkeeper wal-fetch, WALKEEPER_PREFETCH=8",
        "pgbr-archive-get-async": "pgBackRest 2.45 archive-get, async, process-max=2",
        "wal-e-fetch": "WAL-E 1.1.1 wal-fetch (prefetch 8)",
    }
    limit = min((r["seconds"] for r in rs if r["label"].startswith("cp-fsync")), default=None)
    for r in rs:
        q = f"{r['seconds'] / limit:.2f}×" if limit else "–"
        out.append(f"| {names.get(r['label'], r['label'])} | {r['seconds']:.2f} | {r['restored']} | {q} |")
    out.append("")
    pf = next((r for r in rs if r["label"] == "wk-fetch-prefetch"), None)
    if pf and limit:
        out.append("| restore target | measured | |")
        out.append("|---|---|---|")
        out.append(f"| with prefetch, within 15 % of the cp limit | {pf['seconds']:.2f} s vs {limit:.2f} s = {100 * (pf['seconds'] / limit - 1):+.0f} % | {verdict(pf['seconds'] <= 1.15 * limit)} |")
        out.append("")


def crypt(recs, out):
    cs = [r for r in recs if r.get("part") == "crypt"]
    if not cs:
        return
    rows = [("limit: `lz4 -1` CLI (+ fsync)", "crypt-limit-lz4", None),
            ("limit: `lz4 -1 \\| gpg --encrypt` (AES-256, no compression; + fsync)", "crypt-limit-gpg", None),
            ("limit: `lz4 -1 \\| openssl enc -aes-256-cfb` (+ fsync)", "crypt-limit-openssl", None),
            ("walkeeper wal-push, no encryption", "crypt-push-plain", "crypt-push-plain"),
            ("walkeeper wal-push, age", "crypt-push-age", "crypt-push-plain"),
            ("walkeeper wal-push, OpenPGP", "crypt-push-pgp", "crypt-push-plain"),
            ("walkeeper wal-fetch, no encryption", "crypt-fetch-plain", "crypt-fetch-plain"),
            ("walkeeper wal-fetch, age", "crypt-fetch-age", "crypt-fetch-plain"),
            ("walkeeper wal-fetch, OpenPGP", "crypt-fetch-pgp", "crypt-fetch-plain")]
    got = {}
    per = [r for r in cs if r.get("mode") == "per-seg"]
    if per:
        n = max(r["n"] for r in per)
        out.append(f"### Encryption, per segment: one process per segment ({n} real pgbench segments of 16 MiB, file://)\n")
        out.append("| what | ms/segment | p50 ms | p99 ms | CPU ms/segment | peak RSS MiB | vs no encryption (ms/segment) |")
        out.append("|---|---|---|---|---|---|---|")
        for name, label, ref in rows:
            r = best(per, label=label)
            if not r:
                continue
            got[label] = r
            b = best(per, label=ref) if ref else None
            q = f"{r['wall_s'] / b['wall_s']:.2f}×" if b else "–"
            out.append(f"| {name} | {fmt(1000 * r['wall_s'] / r['n'])} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} "
                       f"| {fmt(1000 * r['cpu_s'] / r['n'])} | {fmt(r['max_rss_kib'] / 1024)} | {q} |")
        out.append("")
    once = [r for r in cs if r.get("mode") == "once"]
    t = []
    if once:
        sc = once[0]["scale"]
        mb = once[0]["bytes"] / 1e6
        out.append(f"### Encryption, base backups (pgbench scale {sc}, {mb:.0f} MB without pg_wal, in page cache, file://)\n")
        out.append("| what | wall s | MB/s | CPU s | peak RSS MiB | vs no encryption (wall) |")
        out.append("|---|---|---|---|---|---|")
        brows = [("limit: `lz4 -1` CLI over a tar of it (1 core, to /dev/null)", "crypt-limit-lz4-tar", None),
                 ("limit: `lz4 -1 \\| gpg --encrypt` over the tar", "crypt-limit-gpg-tar", "crypt-limit-lz4-tar"),
                 ("limit: `lz4 -1 \\| openssl enc -aes-256-cfb` over the tar", "crypt-limit-openssl-tar", "crypt-limit-lz4-tar"),
                 ("walkeeper backup-push, no encryption", "crypt-backup-push-plain", "crypt-backup-push-plain"),
                 ("walkeeper backup-push, age", "crypt-backup-push-age", "crypt-backup-push-plain"),
                 ("walkeeper backup-push, OpenPGP", "crypt-backup-push-pgp", "crypt-backup-push-plain"),
                 ("walkeeper backup-fetch, no encryption", "crypt-backup-fetch-plain", "crypt-backup-fetch-plain"),
                 ("walkeeper backup-fetch, age", "crypt-backup-fetch-age", "crypt-backup-fetch-plain"),
                 ("walkeeper backup-fetch, OpenPGP", "crypt-backup-fetch-pgp", "crypt-backup-fetch-plain")]
        for name, label, ref in brows:
            r = best(once, label=label)
            if not r:
                continue
            got[label] = r
            b = best(once, label=ref) if ref else None
            q = f"{r['wall_s'] / b['wall_s']:.2f}×" if b else "–"
            rss = fmt(r["max_rss_kib"] / 1024) if label.startswith("crypt-backup") else "–"
            out.append(f"| {name} | {r['wall_s']:.2f} | {mb / r['wall_s']:.0f} | {r['cpu_s']:.2f} | {rss} | {q} |")
        out.append("")
    for what, a, b in [("wal-push per segment", "crypt-push-pgp", "crypt-push-plain"),
                       ("backup-push", "crypt-backup-push-pgp", "crypt-backup-push-plain")]:
        x, y = got.get(a), got.get(b)
        if x and y:
            q = x["wall_s"] / y["wall_s"]
            t.append(f"| OpenPGP {what} ≤ 1.10 × no encryption (wall) | {x['wall_s']:.2f} s vs {y['wall_s']:.2f} s = "
                     f"{100 * (q - 1):+.0f} % (CPU {x['cpu_s']:.2f} s vs {y['cpu_s']:.2f} s) | {verdict(q <= 1.10)} |")
    for what, a, b in [("wal-push per segment", "crypt-push-age", "crypt-push-plain"),
                       ("backup-push", "crypt-backup-push-age", "crypt-backup-push-plain"),
                       ("wal-fetch per segment, OpenPGP", "crypt-fetch-pgp", "crypt-fetch-plain"),
                       ("backup-fetch, OpenPGP", "crypt-backup-fetch-pgp", "crypt-backup-fetch-plain")]:
        x, y = got.get(a), got.get(b)
        if x and y:
            label = what if "OpenPGP" in what else f"age {what}"
            t.append(f"| (context) {label} vs no encryption | {x['wall_s']:.2f} s vs {y['wall_s']:.2f} s = "
                     f"{100 * (x['wall_s'] / y['wall_s'] - 1):+.0f} % | – |")
    if t:
        out.append("| encryption target | measured | |")
        out.append("|---|---|---|")
        out.extend(t)
        out.append("")


def main():
    recs = load(sys.argv[1])
    out = []
    m = next((r for r in recs if r.get("label") == "machine"), None)
    if m:
        out.append(f"Machine: {m['cores']} cores ({m['cpu']}), {m['mem']} RAM, disk {m['disk']} ({m['fs']}); "
                   f"{m['date']}; load at start {m['load']}; walkeeper {m['walkeeper']}.\n")
    wal(recs, out)
    backup(recs, out)
    delta(recs, out)
    restore(recs, out)
    crypt(recs, out)
    tot = next((r for r in recs if r.get("label") == "total"), None)
    if tot:
        out.append(f"Benchmark wall time: {tot['wall_s'] // 60} min {tot['wall_s'] % 60} s.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
