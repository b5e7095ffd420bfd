#!/usr/bin/python3
"""Two [[port]] tables through the real jitlb binary, each with its own identity.

Two net_pcap ports, each with its own `mac` and `next_hop_mac`, one worker.
Each port gets the same kind of traffic: granted TCP packets to the Maglev
service (IP-in-IP) and an ARP request for the node address. The test checks:
  - each port's output pcap holds exactly its own input's answers;
  - the encapsulated frames leave from that port's MAC to that port's next
    hop, otherwise byte for byte as the golden model builds them;
  - the ARP reply carries that port's MAC (Ethernet source and ARP sender);
  - jitlb does not warn that a port's next hop is unused.
A second run resolves port 1's next hops instead (next_hop by ARP, next_hop_v6
by ND; port 0 keeps its static MAC), with the router's ARP reply in port 1's
input and no ND answer: port 1's resolver learns the reply that came in by
port 1, and its neighbour solicitations leave by port 1, from port 1's MAC.

usage: ports_golden.py JITLB JITLB_STAGE   (root; exit 77: cannot run here)
"""
import argparse
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

from scapy.all import ARP, Ether, ICMPv6ND_NS  # noqa: E402

dg.INSTANCE = "ports"
# Port 0 is the golden port (dc.NODE_MAC, dc.NEXT_HOP_MAC); port 1 has its own.
PORT1_MAC = "02:00:00:00:01:10"
PORT1_NEXT_HOP_MAC = "02:00:00:00:01:fe"
ASKER_MAC = "02:00:00:00:0c:01"
ROUTER4, ROUTER6, ROUTER_MAC = "192.0.2.1", "fe80::1", "02:00:00:00:0c:fe"


def mac_bytes(text):
    return bytes.fromhex(text.replace(":", ""))


def inputs(first_source):
    """(frame, expected output) for one port: 20 granted packets, one ARP request."""
    vip = dc.SERVICE["maglev"].vips[0][0]
    out = []
    for i in range(20):
        f = Ether(bytes(dc.tcp(f"198.18.7.{first_source + i}", vip, 80, sport=40001)))
        out.append((bytes(f), dc.ipip("maglev").build(f)))
    arp = Ether(dst="ff:ff:ff:ff:ff:ff", src=ASKER_MAC) / ARP(op=1, hwsrc=ASKER_MAC, psrc="192.0.2.200",
                                                             pdst=dc.NODE4)
    out.append((bytes(arp), None))
    return out


def as_port(frame, mac, next_hop_mac):
    """A golden-model frame as port 1 sends it: its next hop's and its own MAC."""
    return mac_bytes(next_hop_mac) + mac_bytes(mac) + frame[12:]


def arp_reply(mac):
    return bytes(Ether(dst=ASKER_MAC, src=mac) /
                 ARP(op=2, hwsrc=mac, psrc=dc.NODE4, hwdst=ASKER_MAC, pdst="192.0.2.200"))


def config(tmp, run, port1_next_hop):
    user = pwd.getpwuid(os.geteuid()).pw_name
    text = dg.config_text(tmp, f"net_pcap0,rx_pcap={tmp}/in0-{run}.pcap,tx_pcap={tmp}/out0-{run}.pcap", "", user)
    second = (f'[[port]]\nname = "second"\n'
              f'device = "net_pcap1,rx_pcap={tmp}/in1-{run}.pcap,tx_pcap={tmp}/out1-{run}.pcap"\n'
              f'mac = "{PORT1_MAC}"\n{port1_next_hop}\nmtu = {dc.MTU}\n\n')
    text = text.replace("[exception]", second + "[exception]", 1)
    path = Path(tmp) / f"jitlb-{run}.toml"
    path.write_text(text)
    return path


def run_jitlb(jitlb, tmp, run, stage, script, until, port1_next_hop, in0, in1):
    """jitlb over the two ports, ports held until `script` is staged; returns
    (exit code, log, output frames of port 0 and 1, stats)."""
    dg.write_pcap(Path(tmp) / f"in0-{run}.pcap", in0)
    dg.write_pcap(Path(tmp) / f"in1-{run}.pcap", in1)
    cfg = config(tmp, run, port1_next_hop)
    stats, go, log_path = Path(tmp) / f"stats-{run}.json", Path(tmp) / f"go-{run}", Path(tmp) / f"jitlb-{run}.log"
    cmd = [jitlb, "--lcores", "0@0,1@1", "--no-pci", *dg.eal_memory(), "--file-prefix", dg.file_prefix(),
           "--log-level=lib.eal:error", "--", "--config", str(cfg), "--exit-when-idle", "1000",
           "--stats-json", str(stats), "--start-ports-after", str(go)]
    rc, text = dg.run_staged(cmd, log_path, go, stage, script, until)
    if rc != 0:
        return rc, text, None, None, None
    return (0, text, dg.read_pcap(Path(tmp) / f"out0-{run}.pcap"), dg.read_pcap(Path(tmp) / f"out1-{run}.pcap"),
            json.loads(stats.read_text()))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    jitlb, stage_exe = (os.path.abspath(a) for a in sys.argv[1:])
    if os.geteuid() != 0:
        print("SKIP: jitlb needs root (DPDK EAL, hugepages)")
        return dg.SKIP
    tmp = tempfile.mkdtemp(prefix="ports_golden.")
    os.chmod(tmp, 0o755)
    report = dg.Report()
    started = time.monotonic()
    stage = dg.Stage(stage_exe, tmp, False)
    stage.keygen()
    now_ms = int(time.time() * 1000)
    grants = [g for g in dc.GRANTS if g.name == "maglev-net"]
    script = dg.service_script() + [{"type": "grant", "text": stage.sign(g, now_ms)} for g in grants]
    port0, port1 = inputs(1), inputs(101)
    rc, text, out0, out1, counters = run_jitlb(jitlb, tmp, "static", stage, script,
                                               f"grant_activated:{len(grants)}",
                                               f'next_hop_mac = "{PORT1_NEXT_HOP_MAC}"',
                                               [f for f, _ in port0], [f for f, _ in port1])
    if rc != 0:
        if "EAL init failed" in text or "Cannot init" in text:
            print(f"SKIP: jitlb cannot start a DPDK EAL here:\n{text[-2000:]}")
            return dg.SKIP
        report.line(False, f"jitlb exited with {rc}", text[-3000:])
        return dg.finish(report, tmp, argparse.Namespace(keep=None), started)

    want0 = [w if w is not None else arp_reply(dc.NODE_MAC) for _, w in port0]
    want1 = [as_port(w, PORT1_MAC, PORT1_NEXT_HOP_MAC) if w is not None else arp_reply(PORT1_MAC) for _, w in port1]
    for name, got, want, mac, next_hop in (("port 0 (golden)", out0, want0, dc.NODE_MAC, dc.NEXT_HOP_MAC),
                                           ("port 1 (second)", out1, want1, PORT1_MAC, PORT1_NEXT_HOP_MAC)):
        # Ethernet padding of the ARP reply aside: compare the frames as scapy sees them.
        got_n = [bytes(Ether(f)) for f in got]
        want_n = [bytes(Ether(f)) for f in want]
        encapsulated = [f for f in got if Ether(f).type == 0x0800]
        report.line(len(encapsulated) == 20 and all(f[:6] == mac_bytes(next_hop) and f[6:12] == mac_bytes(mac)
                                                    for f in encapsulated),
                    f"{name}: its 20 encapsulated frames go from {mac} to {next_hop}",
                    f"    {len(encapsulated)} frames; first: {encapsulated[0][:12].hex() if encapsulated else '-'}")
        report.line(sorted(got_n) == sorted(want_n),
                    f"{name}: exactly its own input's answers, byte for byte (the ARP reply from {mac})",
                    f"    {len(got)} frames, {len(want)} expected")
    want = {"rx_packets": len(port0) + len(port1), "forwarded": 40, "arp_replies": 2, "next_hop_unresolved": 0}
    diffs = [f"    {k}: {counters.get(k)}, expected {v}" for k, v in want.items() if counters.get(k) != v]
    report.line(not diffs, "counters: " + ", ".join(f"{k}={v}" for k, v in want.items()), "\n".join(diffs))
    report.line("is not used" not in text and "has no next hop" not in text,
                "no warning about a port's next hop at start", text[-1500:])

    # Port 1 resolves: the router's ARP reply comes in by port 1 (after the
    # client's packets, which may be dropped as unresolved); ND goes unanswered.
    router_reply = bytes(Ether(dst=PORT1_MAC, src=ROUTER_MAC) /
                         ARP(op=2, hwsrc=ROUTER_MAC, psrc=ROUTER4, hwdst=PORT1_MAC, pdst=dc.NODE4))
    rc, text, out0, out1, counters = run_jitlb(
        jitlb, tmp, "resolved", stage, dg.service_script(), f"service_applied:{len(dg.service_script())}",
        f'next_hop = "{ROUTER4}"\nnext_hop_v6 = "{ROUTER6}"', [f for f, _ in port0],
        [f for f, _ in port1] + [router_reply])
    if rc != 0:
        report.line(False, f"resolving run: jitlb exited with {rc}", text[-3000:])
        return dg.finish(report, tmp, argparse.Namespace(keep=None), started)
    report.line(sorted(bytes(Ether(f)) for f in out0) == sorted(bytes(Ether(f)) for f in want0),
                "resolving run, port 0: its static next hop, exactly as in the first run",
                f"    {len(out0)} frames")
    solicitations = [f for f in out1 if Ether(f).haslayer(ICMPv6ND_NS)]
    report.line(len(solicitations) >= 1 and all(
        Ether(f).src == PORT1_MAC and Ether(f)[ICMPv6ND_NS].tgt == ROUTER6 for f in solicitations),
        "resolving run, port 1: the neighbour solicitations for its IPv6 next hop leave by port 1 from its MAC",
        f"    {len(solicitations)} solicitations: {[Ether(f).summary() for f in solicitations]}")
    report.line(not any(Ether(f).haslayer(ICMPv6ND_NS) or Ether(f).type == 0x0806 and Ether(f)[ARP].op == 1
                        for f in out0),
                "resolving run, port 0: no request of port 1's resolvers leaves by port 0")
    hops = counters.get("next_hops", [])
    by_address = {h["address"]: h for h in hops}
    v4 = by_address.get(ROUTER4, {})
    report.line(len(hops) == 2 and all(h["port"] == "second" for h in hops) and v4.get("resolved") is True and
                v4.get("mac") == ROUTER_MAC and v4.get("replies_accepted") == 1,
                "resolving run: next_hops lists port 1's two, the IPv4 one learned from the reply that came in "
                "by port 1", f"    {hops}")
    encapsulated1 = [f for f in out1 if Ether(f).type == 0x0800]
    report.line(all(f[:6] == mac_bytes(ROUTER_MAC) and f[6:12] == mac_bytes(PORT1_MAC) for f in encapsulated1),
                f"resolving run, port 1: what it encapsulated ({len(encapsulated1)}) goes to the learned MAC",
                f"    {[f[:12].hex() for f in encapsulated1[:3]]}")
    report.line(counters.get("next_hops_configured") == 2 and counters.get("forwarded", 0) >= 20,
                "resolving run: counters next_hops_configured=2, port 0's 20 forwarded",
                f"    next_hops_configured={counters.get('next_hops_configured')} "
                f"forwarded={counters.get('forwarded')}")
    return dg.finish(report, tmp, argparse.Namespace(keep=None), started)


if __name__ == "__main__":
    sys.exit(main())
