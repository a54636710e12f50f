#!/usr/bin/env python3
"""End-to-end check of `grelay tap export --pcap` with tshark.

tap_synth writes tap files (random IPv4/IPv6 sessions, FIN and RST endings, gaps, several
worker files, shuffled pwrite order) and a manifest of the bytes every direction carried.
The exported pcap must make tshark's `-z follow,tcp,raw,N` show exactly those bytes for
both directions of every stream. Where the tap has a gap, tshark shows its marker
"[N bytes missing in capture file]" in place of the N bytes (documented in FORMAT.md).

Usage: export_tshark_test.py --grelay BIN --synth TAP_SYNTH --workdir DIR
  BIN is run as `BIN tap export --pcap OUT TAP...` (grelay itself, or tap_export_cli).
Exit 77 (skip) if tshark is not installed.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

FAILURES = []


def check(cond, message):
    if not cond:
        FAILURES.append(message)
        print("FAIL: " + message, file=sys.stderr)
    return cond


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, **kw)


def synth(args, out, *extra):
    shutil.rmtree(out, ignore_errors=True)
    r = run([args.synth, "--out", out] + [str(x) for x in extra])
    if r.returncode != 0:
        sys.exit("tap_synth failed: " + r.stderr.decode())
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


def export(args, pcap, *taps):
    r = run([args.grelay, "tap", "export", "--pcap", pcap] + list(taps))
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def tshark(pcap, *extra):
    r = run(["tshark", "-n", "-r", pcap] + list(extra))
    if r.returncode != 0:
        sys.exit("tshark failed: " + r.stderr.decode())
    return r.stdout.decode()


def follow_all(pcap):
    """Runs tshark's raw follow on every TCP stream: {stream: (node0, node1, [bytes0, bytes1])}."""
    streams = sorted({int(s) for s in tshark(pcap, "-T", "fields", "-e", "tcp.stream").split()})
    result = {}
    for start in range(0, len(streams), 50):
        extra = ["-q"]
        for n in streams[start:start + 50]:
            extra += ["-z", "follow,tcp,raw,%d" % n]
        text = tshark(pcap, *extra)
        for block in text.split("=" * 67):
            m = re.search(r"Filter: tcp\.stream eq (\d+)\nNode 0: (\S+)\nNode 1: (\S+)\n(.*)",
                          block, re.S)
            if not m:
                continue
            data = [bytearray(), bytearray()]
            for line in m.group(4).split("\n"):
                if not line.strip():
                    continue
                side = 1 if line.startswith("\t") else 0
                data[side] += bytes.fromhex(line.strip())
            result[int(m.group(1))] = (m.group(2), m.group(3), data)
    return streams, result


def expected_follow(direction):
    """What tshark's follow shows for one direction: the recorded bytes, with tshark's
    marker in place of each run of missing bytes that more data follows (a hole at the end
    of a direction, before its FIN or RST, shows nothing)."""
    with open(direction["expected"], "rb") as f:
        captured = f.read()
    # Merge adjacent gaps: tshark sees one hole.
    holes = []
    for off, length in direction["gaps"]:
        if holes and holes[-1][0] + holes[-1][1] == off:
            holes[-1][1] += length
        else:
            holes.append([off, length])
    out = bytearray()
    pos = 0  # in captured
    stream_pos = 0  # in the full stream
    for off, length in holes:
        take = off - stream_pos
        out += captured[pos:pos + take]
        pos += take
        stream_pos = off + length
        if stream_pos < direction["total"]:
            out += b"[%d bytes missing in capture file]\x00" % length
    out += captured[pos:]
    return bytes(out)


def port_of(node):
    return int(node.rsplit(":", 1)[1])


def check_export(args, manifest, pcap, sessions, label):
    streams, follows = follow_all(pcap)
    by_port = {}
    for n, (node0, node1, data) in follows.items():
        by_port[port_of(node0)] = (n, node0, node1, data)
    check(len(streams) == len(sessions),
          "%s: tshark sees %d streams, expected %d" % (label, len(streams), len(sessions)))
    for s in sessions:
        port = s["client_port"]
        if not check(port in by_port, "%s: no stream for client port %d" % (label, port)):
            continue
        n, node0, node1, data = by_port[port]
        for d in (0, 1):
            want = expected_follow(s["directions"][d])
            got = bytes(data[d])
            if not check(got == want, "%s: stream %d (session %d, port %d) direction %d: "
                         "%d bytes, expected %d" % (label, n, s["session_id"], port, d,
                                                     len(got), len(want))):
                i = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
                         min(len(got), len(want)))
                print("  first difference at %d: got %r want %r" % (i, got[i:i + 48],
                                                                     want[i:i + 48]),
                      file=sys.stderr)
    return by_port


def check_flags(pcap, sessions, by_port, label):
    """FIN per direction that ended with FIN, RST when a direction was reset, no bad
    checksums, nothing malformed."""
    fins = {}
    for line in tshark(pcap, "-Y", "tcp.flags.fin==1", "-T", "fields", "-e", "tcp.stream").split():
        fins[int(line)] = fins.get(int(line), 0) + 1
    resets = {int(x) for x in tshark(pcap, "-Y", "tcp.flags.reset==1", "-T", "fields",
                                     "-e", "tcp.stream").split()}
    for s in sessions:
        if s["client_port"] not in by_port:
            continue
        n = by_port[s["client_port"]][0]
        ends = [d["end"] for d in s["directions"]]
        check(fins.get(n, 0) == ends.count("fin"),
              "%s: stream %d has %d FINs, expected %d" % (label, n, fins.get(n, 0),
                                                          ends.count("fin")))
        check((n in resets) == ("reset" in ends),
              "%s: stream %d reset=%s, ends %s" % (label, n, n in resets, ends))
    # Payloads are random bytes: decode them as plain data so only IP/TCP can be malformed.
    bad = tshark(pcap, "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
                 "-d", "tcp.port==8080,data", "-d", "tcp.port==8443,data",
                 "-Y", "tcp.checksum.status != 1 or ip.checksum.status == 0 or _ws.malformed"
                 " or _ws.expert.severity == error")
    check(bad.strip() == "", "%s: packets with bad checksums or malformed:\n%s" % (label, bad[:2000]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grelay", required=True)
    ap.add_argument("--synth", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    if shutil.which("tshark") is None:
        print("SKIP: tshark is not installed")
        return 77
    os.makedirs(args.workdir, exist_ok=True)

    # 1. Several worker files, all kinds of sessions: exact streams.
    taps = os.path.join(args.workdir, "taps")
    manifest = synth(args, taps, "--seed", 5, "--sessions", 24, "--files", 2,
                     "--gap-percent", 6)
    sessions = [s for s in manifest["sessions"] if s["recorded"]]
    families = {s["family"] for s in sessions}
    ends = {d["end"] for s in sessions for d in s["directions"]}
    gapped = [s for s in sessions if any(d["gaps"] for d in s["directions"])]
    check(families == {4, 6}, "synth should cover IPv4 and IPv6, got %s" % families)
    check({"fin", "reset"} <= ends, "synth should cover FIN and RST endings, got %s" % ends)
    check(len(gapped) > 0, "synth should produce a session with a gap")
    pcap = os.path.join(args.workdir, "all.pcap")
    rc, out, err = export(args, pcap, taps)  # a directory: every *.gtap inside
    check(rc == 0, "export of intact taps: exit %d, stderr: %s" % (rc, err))
    check("exported %d sessions" % len(sessions) in out, "summary: " + out)
    by_port = check_export(args, manifest, pcap, sessions, "intact")
    check_flags(pcap, sessions, by_port, "intact")

    # 2. A truncated file: exit 1, the file and offset named, everything valid still exported.
    cut_dir = os.path.join(args.workdir, "cut")
    shutil.rmtree(cut_dir, ignore_errors=True)
    os.makedirs(cut_dir)
    first, second = manifest["files"][0], manifest["files"][1]
    cut_path = os.path.join(cut_dir, os.path.basename(first["path"]))
    cut = first["size"] * 3 // 5 + 3  # inside some record or payload
    with open(first["path"], "rb") as f:
        data = f.read(cut)
    with open(cut_path, "wb") as f:
        f.write(data)
    pcap_cut = os.path.join(args.workdir, "cut.pcap")
    rc, out, err = export(args, pcap_cut, cut_path, second["path"])
    check(rc == 1, "export with a truncated tap: exit %d (expected 1)" % rc)
    check(cut_path in err and "offset" in err, "stderr should name the file and offset: " + err)
    check(os.path.exists(pcap_cut), "the pcap is written despite the truncated input")
    whole = [s for s in sessions
             if s["file"] == second["path"] or (s["file"] == first["path"] and s["last_byte"] <= cut)]
    check(any(s["file"] == first["path"] for s in whole),
          "some sessions of the truncated file lie before the cut")
    streams, follows = follow_all(pcap_cut)
    ports = {port_of(node0): (n, data) for n, (node0, _, data) in follows.items()}
    for s in whole:
        if not check(s["client_port"] in ports, "cut: session on port %d missing" % s["client_port"]):
            continue
        n, data = ports[s["client_port"]]
        for d in (0, 1):
            check(bytes(data[d]) == expected_follow(s["directions"][d]),
                  "cut: stream %d (port %d) direction %d differs" % (n, s["client_port"], d))

    # 3. A file that reached max_size: valid, says so, exit 0; recorded bytes exact.
    full = os.path.join(args.workdir, "full")
    manifest_full = synth(args, full, "--seed", 9, "--sessions", 30, "--max-size", 400000)
    pcap_full = os.path.join(args.workdir, "full.pcap")
    rc, out, err = export(args, pcap_full, manifest_full["files"][0]["path"])
    check(rc == 0, "export of a full tap: exit %d, stderr %s" % (rc, err))
    check("reached max_size" in out, "summary should mention max_size: " + out)
    recorded = [s for s in manifest_full["sessions"] if s["recorded"]]
    check(len(recorded) < len(manifest_full["sessions"]), "max_size should refuse sessions")
    check_export(args, manifest_full, pcap_full, recorded, "full")

    # 4. Usage errors exit 2.
    for argv in ([], ["export"], ["export", "--pcap", pcap], ["export", taps], ["bogus"]):
        r = run([args.grelay, "tap"] + argv)
        check(r.returncode == 2, "usage %s: exit %d" % (argv, r.returncode))

    if FAILURES:
        print("%d failures" % len(FAILURES), file=sys.stderr)
        return 1
    print("ok: %d + %d + %d sessions exported and followed byte-exactly"
          % (len(sessions), len(whole), len(recorded)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
