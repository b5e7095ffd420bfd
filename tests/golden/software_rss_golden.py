#!/usr/bin/python3
"""Software RSS through the real jitlb binary: two workers on a port without RSS.

net_pcap offers no RSS, so jitlb gives the port one rx queue, which worker 0
spreads over both workers by a hash of the IP addresses (lb/software_rss.h);
each worker sends on its own tx queue, here its own output pcap. The test
stages the golden services and two prefix grants (IPv4 for the Maglev
service, IPv6 for web6), feeds 4 packets from each of 150 IPv4 and 50 IPv6
sources, interleaved, and ARP requests, and checks:
  - every packet comes out once, as the exact bytes the golden model builds
    (dataplane_cases: IP-in-IP to Maglev's pick);
  - each source's packets leave by the worker an independent Python model of
    the hash picks, in their input order; ARP is answered by worker 0;
  - both workers did real work, and jitlb's counters add up: rss_handoffs
    equals the frames worker 1 got, rss_handoff_full is 0;
  - the same input with one worker gives the same frames, all on one queue;
  - rx_queues = 2 on this port stops jitlb with a message naming the fix.

usage: software_rss_golden.py JITLB JITLB_STAGE   (root; exit 77: cannot run here)
"""
import argparse
import ipaddress
import json
import os
import pwd
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dataplane_cases as dc  # noqa: E402
import dataplane_golden as dg  # noqa: E402

from scapy.all import ARP, Ether  # noqa: E402

dg.INSTANCE = "swrss"
MASK64 = (1 << 64) - 1
# common/flow_hash.h's constants, and lb/main.cc's seed tweak for software RSS.
PI, E, PHI = 0x243F6A8885A308D3, 0xB7E151628AED2A6B, 0x9E3779B97F4A7C15
SQRT3, SQRT5 = 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B
RSS_SEED = dc.FLOW_HASH_SEED ^ 0x5F3759DF5F3759DF

V4_SOURCES = [f"198.18.7.{i}" for i in range(1, 151)]       # dc.MAGLEV_NET, service "maglev"
V6_SOURCES = [f"2001:db8:cc::{i:x}" for i in range(1, 51)]  # 2001:db8:cc::/64, service "web6"
ROUNDS = 4  # packets per source, one per round, from sport 40001 + round


def mix(a, b):
    p = a * b
    return (p & MASK64) ^ (p >> 64)


def le(b):
    return int.from_bytes(b, "little")


def rss_worker(src, dst, workers):
    """lb/software_rss.h, written again from its description: the hash of the
    source and destination addresses, its high half scaled to the workers."""
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if len(s) == 4:
        h = mix((le(s) | le(d) << 32) ^ RSS_SEED ^ PI, E)
    else:
        hs = mix(le(s[:8]) ^ RSS_SEED ^ PI, le(s[8:]) ^ E)
        hd = mix(le(d[:8]) ^ RSS_SEED ^ PHI, le(d[8:]) ^ SQRT3)
        h = mix(hs ^ SQRT5, hd ^ PI)
    h = mix(h ^ SQRT3, SQRT5)
    return ((h >> 32) * workers) >> 32


def inputs():
    """(frame, expected output bytes or None for ARP, source) in input order."""
    out = []
    v4 = dc.SERVICE["maglev"].vips[0][0]
    v6 = dc.SERVICE["web6"].vips[0][0]
    for r in range(ROUNDS):
        for i, src in enumerate(V4_SOURCES + V6_SOURCES):
            six = ":" in src
            f = Ether(bytes(dc.tcp(src, v6 if six else v4, 80, sport=40001 + r)))
            out.append((bytes(f), dc.ipip("web6" if six else "maglev").build(f), src))
            if r == 0 and i % 50 == 0:
                asker = f"192.0.2.{200 + i // 50}"
                arp = Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:0c:01") / ARP(
                    op=1, hwsrc="02:00:00:00:0c:01", psrc=asker, pdst=v4)
                out.append((bytes(arp), None, asker))
    return out


def config(tmp, run, outputs, rx_queues=None):
    device = f"net_pcap0,rx_pcap={tmp}/in.pcap" + "".join(f",tx_pcap={o}" for o in outputs)
    text = dg.config_text(tmp, device, "", pwd.getpwuid(os.geteuid()).pw_name)
    if rx_queues is not None:
        text = text.replace("rx_descriptors = 1024", f"rx_queues = {rx_queues}\nrx_descriptors = 1024")
    path = Path(tmp) / f"jitlb-{run}.toml"
    path.write_text(text)
    return path


def run_jitlb(exe, tmp, run, workers, stage, script, until, rx_queues=None):
    """Starts jitlb with its ports held, pushes `script`, waits for the event
    `until`, lets the ports start, and waits for --exit-when-idle."""
    outputs = [Path(tmp) / f"out-{run}-{q}.pcap" for q in range(workers)]
    cfg = config(tmp, run, outputs, rx_queues)
    stats, go = Path(tmp) / f"stats-{run}.json", Path(tmp) / f"go-{run}"
    # Two CPUs here: the main lcore shares CPU 0 with the second worker.
    lcores = "0@0,1@1" if workers == 1 else "0@0,1@1,2@0"
    cmd = [exe, "--lcores", lcores, "--no-pci", *dg.eal_memory(), "--file-prefix", dg.file_prefix(),
           "--log-level=lib.eal:error", "--", "--config", str(cfg), "--exit-when-idle", "1000",
           "--stats-json", str(stats), "--start-ports-after", str(go)]
    log_path = Path(tmp) / f"jitlb-{run}.log"
    rc, text = dg.run_staged(cmd, log_path, go, stage, script, until)
    if rc != 0:
        return rc, text, None, None
    return 0, text, [dg.read_pcap(o) if o.exists() else [] for o in outputs], json.loads(stats.read_text())


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    jitlb, stage_exe = (os.path.abspath(a) for a in sys.argv[1:])
    if os.geteuid() != 0:
        print("SKIP: jitlb needs root (DPDK EAL, hugepages)")
        return dg.SKIP
    tmp = tempfile.mkdtemp(prefix="software_rss_golden.")
    os.chmod(tmp, 0o755)
    report = dg.Report()
    started = time.monotonic()
    stage = dg.Stage(stage_exe, tmp, False)
    stage.keygen()
    now_ms = int(time.time() * 1000)
    grants = [g for g in dc.GRANTS if g.name in ("maglev-net", "c6net-web6")]
    first = dg.service_script() + [{"type": "grant", "text": stage.sign(g, now_ms)} for g in grants]
    again = dg.service_script()  # services do not survive a restart; grants do
    services_applied = f"service_applied:{len(again)}"
    frames = inputs()
    dg.write_pcap(Path(tmp) / "in.pcap", [f for f, _, _ in frames])
    forwarded = [(want, src) for _, want, src in frames if want is not None]
    n_arp = len(frames) - len(forwarded)

    rc, log, outs, stats = run_jitlb(jitlb, tmp, "two", 2, stage, first, f"grant_activated:{len(grants)}")
    if rc != 0:
        if "EAL init failed" in log or "Cannot init" in log:
            print(f"SKIP: jitlb cannot start a DPDK EAL here:\n{log[-2000:]}")
            return dg.SKIP
        report.line(False, f"two workers: jitlb exited with {rc}", log[-3000:])
        return dg.finish(report, tmp, argparse.Namespace(keep=None), started)
    report.line("spread over 2 workers in software" in log, "jitlb says the port is spread in software",
                log[-1500:])
    # Every forwarded frame once, on the queue of the worker the model picks, in order per source.
    vip = {False: dc.SERVICE["maglev"].vips[0][0], True: dc.SERVICE["web6"].vips[0][0]}
    per_worker_expected = [[], []]
    for want, src in forwarded:
        per_worker_expected[rss_worker(src, vip[":" in src], 2)].append(want)
    for q in range(2):
        got = [f for f in outs[q] if Ether(f).type != 0x0806]
        arps = [f for f in outs[q] if Ether(f).type == 0x0806]
        same = got == per_worker_expected[q]
        detail = ""
        if not same:
            missing = len([w for w in per_worker_expected[q] if w not in got])
            extra = len([g for g in got if g not in per_worker_expected[q]])
            detail = f"    {len(got)} frames, {len(per_worker_expected[q])} expected; {missing} missing, {extra} unexpected"
        report.line(same, f"worker {q}'s queue: the {len(per_worker_expected[q])} frames of the sources the model "
                    f"gives it, byte for byte, in input order", detail)
        report.line(len(arps) == (n_arp if q == 0 else 0),
                    f"worker {q}'s queue: {len(arps)} ARP replies ({n_arp if q == 0 else 0} expected: "
                    "frames without IP stay with the queue's owner)")
    n1 = len(per_worker_expected[1])
    report.line(0.3 * len(forwarded) < n1 < 0.7 * len(forwarded),
                f"both workers forward a share: {len(forwarded) - n1} and {n1}")
    want = {"rx_packets": len(frames), "forwarded": len(forwarded), "arp_replies": n_arp, "rss_handoffs": n1,
            "rss_handoff_full": 0, "tx_packets": len(frames)}
    diffs = [f"    {k}: {stats.get(k)}, expected {v}" for k, v in want.items() if stats.get(k) != v]
    report.line(not diffs, "counters: " + ", ".join(f"{k}={v}" for k, v in want.items()), "\n".join(diffs))

    # One worker: no spreading; the same frames in input order on its one queue.
    rc, log, outs1, stats1 = run_jitlb(jitlb, tmp, "one", 1, stage, again, services_applied)
    if rc != 0:
        report.line(False, f"one worker: jitlb exited with {rc}", log[-3000:])
    else:
        got = [f for f in outs1[0] if Ether(f).type != 0x0806]
        report.line(got == [w for w, _ in forwarded] and "spread over" not in log and stats1.get("rss_handoffs") == 0,
                    "one worker: the same frames, in input order, nothing handed over",
                    f"    {len(got)} frames, rss_handoffs={stats1.get('rss_handoffs')}")

    # rx_queues = 2 on a port without RSS: refused at start, with the way out.
    rc, log, _, _ = run_jitlb(jitlb, tmp, "refused", 2, stage, again, services_applied, rx_queues=2)
    report.line(rc != 0 and "has no RSS for rx_queues = 2" in log and "leave rx_queues unset" in log,
                "rx_queues = 2 on net_pcap: jitlb refuses to start and says to leave rx_queues unset",
                f"    exit {rc}: {log[-800:]}")
    return dg.finish(report, tmp, argparse.Namespace(keep=None), started)


if __name__ == "__main__":
    sys.exit(main())
