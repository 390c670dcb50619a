#!/usr/bin/env python3
"""Seeded generator of a knowledge-base-like file tree for benches/trees.sh.

    trees-gen.py day1 DIR [--files N] [--seed S]
        Create DIR (must not exist) holding N files (default 50,000) over
        about 2,000 leaf directories: mostly small YAML-like notes (a few
        hundred bytes to a few KiB), about 1.5% medium documents (markdown
        and JSON, 8-256 KiB) and N/1000 large attachments (2-7 MiB; CSV and
        log exports, half-binary database-like pages, incompressible
        "PDF/PNG/ZIP" bytes). Total about 360 MB at N = 50,000.
        Contents, names and modification times depend only on N and the
        seed, so reruns produce identical trees.

    trees-gen.py day2 DIR [--seed S]
        Modify DIR in place as a "day 2": 1% of the files (small notes only)
        get a line appended or a line changed, and a few new notes appear
        (some in a new directory). Deterministic given the day-1 tree and the
        seed. Prints JSON: {"modified": [...], "added": [...], "probe": REL}
        where probe is a small modified note (used for one-file restores).
"""
import argparse
import json
import math
import os
import random
import sys
import time

T0 = 1767225600  # 2026-01-01T00:00:00Z: day-1 files are dated in the year before
DAY = 86400

WORDS = """
the of and to in is for on that with as by this be are from or at an it not
we can will should must may if when then after before each all any new old
service api database backup restore cluster node queue cache token key secret
deploy release rollback incident postmortem runbook alert dashboard metric log
latency error timeout retry request response client server endpoint schema
table index migration replica primary failover region zone network firewall
certificate rotation policy access role permission user team owner review
customer invoice payment billing order shipment inventory product catalog
search report export import pipeline job schedule cron worker batch stream
event message topic partition consumer producer offset lag throughput storage
volume snapshot bucket object archive retention compliance audit gdpr privacy
onboarding offboarding laptop vpn email calendar meeting agenda decision owner
deadline quarter roadmap milestone estimate priority blocker dependency risk
check verify confirm update rotate renew revoke grant escalate page notify
document describe explain summarize link reference attach ticket issue bug fix
feature flag config setting default override environment staging production
test unit integration smoke load canary health probe readiness liveness
memory cpu disk bandwidth quota limit budget cost forecast usage capacity plan
""".split()

FIRST = """alice bob carol dave erin frank grace heidi ivan judy mallory niaj olivia
peggy rupert sybil trent victor walter yasmin zoe omar priya kenji lars mei
nora oscar paula quinn rosa sven tariq uma""".split()
LAST = """smith jones garcia miller davis lopez wilson anderson thomas moore martin
lee perez white harris clark lewis young walker hall allen king wright scott
nguyen hill green adams baker nelson carter""".split()
STATUSES = ["draft", "published", "review", "archived", "deprecated"]
KINDS = ["runbook", "howto", "faq", "decision", "postmortem", "meeting-notes",
         "reference", "policy", "checklist", "glossary"]


def words(rng, n):
    return " ".join(rng.choices(WORDS, k=n))


def sentence(rng):
    s = words(rng, rng.randint(6, 18))
    return s[0].upper() + s[1:] + "."


def person(rng):
    return f"{rng.choice(FIRST)}.{rng.choice(LAST)}"


def stamp(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def wrap(text, indent, width=78):
    out, line = [], indent
    for w in text.split(" "):
        if len(line) + len(w) + 1 > width and line.strip():
            out.append(line.rstrip())
            line = indent
        line += w + " "
    if line.strip():
        out.append(line.rstrip())
    return "\n".join(out)


def note(rng, idx, target, mtime):
    """A YAML-like knowledge-base note of roughly `target` bytes."""
    kind = rng.choice(KINDS)
    title = sentence(rng)[:-1]
    created = mtime - rng.randint(0, 200) * DAY - rng.randint(0, DAY)
    head = [
        f"id: kb-{idx:06d}",
        f"kind: {kind}",
        f"title: \"{title}\"",
        f"author: {person(rng)}",
        f"owners: [{person(rng)}, {person(rng)}]",
        f"created: {stamp(created)}",
        f"updated: {stamp(mtime)}",
        f"status: {rng.choice(STATUSES)}",
        f"version: {rng.randint(1, 40)}",
        "tags: [" + ", ".join(rng.sample(WORDS[40:], rng.randint(1, 5))) + "]",
        f"summary: >",
        wrap(" ".join(sentence(rng) for _ in range(rng.randint(1, 2))), "  "),
    ]
    text = "\n".join(head) + "\n"
    if rng.random() < 0.6:
        text += "links:\n" + "".join(
            f"  - https://wiki.example.com/{rng.choice(WORDS[40:])}/{rng.randint(100, 99999)}\n"
            for _ in range(rng.randint(1, 4)))
    if kind in ("runbook", "checklist", "howto") and rng.random() < 0.8:
        text += "steps:\n" + "".join(
            f"  - name: {words(rng, rng.randint(2, 5))}\n"
            f"    command: \"{rng.choice(['kubectl', 'psql', 'larder', 'systemctl', 'curl'])} "
            f"{rng.choice(WORDS[40:])} --{rng.choice(WORDS[40:])}={rng.randint(1, 500)}\"\n"
            f"    timeout_s: {rng.choice([10, 30, 60, 300, 900])}\n"
            for _ in range(rng.randint(1, 5)))
    text += "body: |\n"
    while len(text) < target:
        para = " ".join(sentence(rng) for _ in range(rng.randint(1, 5)))
        text += wrap(para, "  ") + "\n  \n"
    if rng.random() < 0.3:
        text += "history:\n" + "".join(
            f"  - {stamp(created + (i + 1) * DAY * rng.randint(1, 9))}: {person(rng)} {rng.choice(['edited', 'reviewed', 'approved', 'moved'])}\n"
            for i in range(rng.randint(1, 6)))
    return text.encode()


def medium(rng, idx, target, mtime):
    if rng.random() < 0.5:
        parts = [f"# {sentence(rng)[:-1]}\n\n", f"_Maintained by {person(rng)}; last review {stamp(mtime)}._\n\n"]
        size = sum(map(len, parts))
        while size < target:
            r = rng.random()
            if r < 0.15:
                p = f"## {words(rng, rng.randint(2, 6)).title()}\n\n"
            elif r < 0.30:
                p = "".join(f"- {sentence(rng)}\n" for _ in range(rng.randint(2, 8))) + "\n"
            elif r < 0.38:
                p = "| " + " | ".join(rng.sample(WORDS[40:], 4)) + " |\n| --- | --- | --- | --- |\n" + "".join(
                    f"| {rng.choice(WORDS)} | {rng.randint(0, 10**6)} | {rng.random():.4f} | {person(rng)} |\n"
                    for _ in range(rng.randint(3, 20))) + "\n"
            else:
                p = wrap(" ".join(sentence(rng) for _ in range(rng.randint(2, 7))), "") + "\n\n"
            parts.append(p)
            size += len(p)
        return "".join(parts).encode()
    # JSON export of records
    parts = ["[\n"]
    size = 2
    i = 0
    while size < target:
        p = (f'  {{"id": {idx * 1000 + i}, "user": "{person(rng)}", "action": "{rng.choice(WORDS[40:])}", '
             f'"object": "{rng.choice(WORDS[40:])}/{rng.randint(1, 10**6)}", "ts": "{stamp(mtime - rng.randint(0, 90 * DAY))}", '
             f'"ok": {rng.choice(["true", "false"])}, "ms": {rng.randint(1, 5000)}, "note": "{words(rng, rng.randint(0, 8))}"}},\n')
        parts.append(p)
        size += len(p)
        i += 1
    parts.append('  {"end": true}\n]\n')
    return "".join(parts).encode()


def large(rng, idx, target, kind, mtime):
    if kind == "bin":  # already-compressed attachment: incompressible
        return rng.randbytes(target)
    if kind == "pages":  # database-like: 4 KiB pages, part random, part zero/repeated
        out = bytearray()
        while len(out) < target:
            fill = rng.randint(200, 3500)
            out += rng.randbytes(fill) + bytes([rng.choice([0, 0, 0xFF, 0x20])]) * (4096 - fill)
        return bytes(out[:target])
    # text export (CSV or log)
    lines = []
    size = 0
    t = mtime - 30 * DAY
    csv = rng.random() < 0.5
    if csv:
        lines.append("ts,user,action,object,status,ms,bytes\n")
    acts = WORDS[40:]
    while size < target:
        t += rng.randint(0, 20)
        if csv:
            ln = (f"{stamp(t)},{person(rng)},{rng.choice(acts)},{rng.choice(acts)}/{rng.randint(1, 99999)},"
                  f"{rng.choice([200, 200, 200, 201, 204, 304, 404, 500])},{rng.randint(1, 3000)},{rng.randint(0, 10**6)}\n")
        else:
            ln = (f"{stamp(t)} {rng.choice(['INFO', 'INFO', 'INFO', 'WARN', 'ERROR', 'DEBUG'])} "
                  f"[{rng.choice(acts)}-{rng.randint(1, 8)}] {words(rng, rng.randint(3, 12))} "
                  f"id={rng.getrandbits(64):016x} dur={rng.randint(1, 9000)}ms\n")
        lines.append(ln)
        size += len(ln)
    return "".join(lines).encode()[:target]


def unique_names(rng, n, prefix=""):
    seen, out = set(), []
    while len(out) < n:
        w = rng.choice(WORDS[40:])
        if rng.random() < 0.4:
            w += "-" + rng.choice(WORDS[40:])
        if w not in seen:
            seen.add(w)
            out.append(prefix + w)
    return out


def day1(root, nfiles, seed):
    rng = random.Random(seed)
    if os.path.exists(root):
        sys.exit(f"{root} exists")
    # ~2,000 leaf directories: 20 areas x 10 teams x 10 topics (fewer for tiny trees)
    scale = min(1.0, nfiles / 50000) ** (1 / 3)
    na, nt, np_ = max(2, round(20 * scale)), max(2, round(10 * scale)), max(2, round(10 * scale))
    leaves = []
    for a in unique_names(rng, na):
        for t in unique_names(rng, nt):
            for p in unique_names(rng, np_):
                leaves.append(os.path.join(a, t, p))
    # skewed directory sizes
    weights = [rng.paretovariate(1.5) for _ in leaves]
    n_large = max(2, nfiles // 1000)
    n_medium = max(1, nfiles * 15 // 1000)
    n_small = max(1, nfiles - n_large - n_medium)
    kinds = ["small"] * n_small + ["medium"] * n_medium + ["large"] * n_large
    rng.shuffle(kinds)
    dirs = rng.choices(leaves, weights=weights, k=len(kinds))
    made = set()
    total = 0
    large_kinds = ["bin", "bin", "pages", "text", "text"]
    for i, (kind, d) in enumerate(zip(kinds, dirs)):
        full_d = os.path.join(root, d)
        if d not in made:
            os.makedirs(full_d)
            made.add(d)
        mtime = T0 - rng.randint(0, 365 * DAY)
        if kind == "small":
            size = int(min(6000, max(180, rng.lognormvariate(math.log(1100), 0.7))))
            data = note(rng, i, size, mtime)
            name = f"{'-'.join(rng.sample(WORDS[40:], 2))}-{i:06d}.yaml"
        elif kind == "medium":
            size = int(math.exp(rng.uniform(math.log(8 << 10), math.log(256 << 10))))
            data = medium(rng, i, size, mtime)
            name = f"{rng.choice(WORDS[40:])}-{i:06d}." + ("md" if data[:1] == b"#" else "json")
        else:
            size = rng.randint(2 << 20, 7 << 20)
            lk = rng.choice(large_kinds)
            data = large(rng, i, size, lk, mtime)
            ext = {"bin": rng.choice(["pdf", "png", "zip"]), "pages": "db", "text": rng.choice(["csv", "log"])}[lk]
            name = f"{rng.choice(['export', 'attachment', 'dump', 'scan', 'archive'])}-{i:06d}.{ext}"
        p = os.path.join(full_d, name)
        with open(p, "wb") as f:
            f.write(data)
        os.utime(p, (mtime, mtime))
        total += len(data)
    # empty leaves are not created; date the directories too
    for dirpath, _dirnames, _files in sorted(os.walk(root), reverse=True):
        os.utime(dirpath, (T0, T0))
    print(json.dumps({"files": len(kinds), "dirs": len(made), "bytes": total,
                      "small": n_small, "medium": n_medium, "large": n_large}))


def day2(root, seed):
    rng = random.Random(seed * 7919 + 2)
    notes = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for f in sorted(files):
            if f.endswith(".yaml"):
                notes.append(os.path.relpath(os.path.join(dirpath, f), root))
    notes.sort()
    nall = sum(len(fs) for _, _, fs in os.walk(root))
    nmod = max(1, nall // 100)
    chosen = sorted(rng.sample(notes, min(nmod, len(notes))))
    t2 = T0 + DAY
    for rel in chosen:
        p = os.path.join(root, rel)
        with open(p, "rb") as f:
            data = f.read()
        if rng.random() < 0.6:  # append a line
            data += f"  - {stamp(t2 + rng.randint(0, 3600))}: {person(rng)} {rng.choice(['edited', 'reviewed', 'approved'])}\n".encode()
        else:  # change the status and updated lines (middle of the file)
            lines = data.split(b"\n")
            for j, ln in enumerate(lines):
                if ln.startswith(b"updated: "):
                    lines[j] = f"updated: {stamp(t2 + rng.randint(0, 3600))}".encode()
                elif ln.startswith(b"status: "):
                    lines[j] = f"status: {rng.choice(STATUSES)}".encode()
                elif ln.startswith(b"version: "):
                    lines[j] = f"version: {int(ln.split()[1]) + 1}".encode()
            data = b"\n".join(lines)
        with open(p, "wb") as f:
            f.write(data)
        m = t2 + rng.randint(0, DAY // 2)
        os.utime(p, (m, m))
    # a few new notes: some next to existing ones, some in a new directory
    added = []
    dirs = sorted({os.path.dirname(r) for r in notes})
    nadd = max(2, nall // 5000)
    newdir = os.path.join(dirs[0].split(os.sep)[0], "new-" + rng.choice(WORDS[40:]))
    os.makedirs(os.path.join(root, newdir), exist_ok=True)
    for k in range(nadd):
        d = newdir if k < nadd // 3 else rng.choice(dirs)
        rel = os.path.join(d, f"new-{rng.choice(WORDS[40:])}-{k:04d}.yaml")
        m = t2 + rng.randint(0, DAY // 2)
        size = int(min(6000, max(180, rng.lognormvariate(math.log(1100), 0.7))))
        with open(os.path.join(root, rel), "wb") as f:
            f.write(note(rng, 900000 + k, size, m))
        os.utime(os.path.join(root, rel), (m, m))
        added.append(rel)
    # probe: a small modified note
    small = [r for r in chosen if os.path.getsize(os.path.join(root, r)) < 4096]
    probe = (small or chosen)[len(small or chosen) // 2]
    print(json.dumps({"modified": chosen, "added": added, "probe": probe}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["day1", "day2"])
    ap.add_argument("dir")
    ap.add_argument("--files", type=int, default=50000)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    if a.mode == "day1":
        day1(a.dir, a.files, a.seed)
    else:
        day2(a.dir, a.seed)


if __name__ == "__main__":
    main()
