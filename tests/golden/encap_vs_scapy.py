#!/usr/bin/python3
"""Encapsulation output, byte for byte, against scapy.

For each forwarding mode (IP-in-IP, GUE) and each backend family (IPv4, IPv6),
a seeded mix of client packets (IPv4/IPv6, TCP/UDP, DF set or not, DSCP/ECN,
VLAN-tagged or not) is encapsulated by tests/tools/encap_pcap, and every output
frame must equal the frame scapy builds from the rules in common/encap.h: outer
source = prefix with the flow hash in its host bits, IPv6 flow label and GUE
source port from the hash, DSCP/ECN copied, DF copied (set for inner IPv6), ID 0
with DF, TTL 64, GUE over IPv6 with a real UDP checksum.

usage: encap_vs_scapy.py ENCAP_PCAP_EXE [COUNT]
"""
import ipaddress
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from scapy.all import IP, UDP, Dot1Q, Ether, IPv6, TCP, Raw, rdpcap, wrpcap

rng = random.Random(6080)
SRC4, SRC6 = "100.64.0.0/16", "2001:db8:f00d::/64"
PORT_MAC, NEXTHOP_MAC = "02:00:00:00:00:aa", "02:00:00:00:00:bb"


def client_frame():
    proto = rng.choice([6, 17])
    payload = Raw(bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 200))))
    l4 = (TCP(sport=rng.randint(1024, 65535), dport=443, flags="PA") if proto == 6
          else UDP(sport=rng.randint(1024, 65535), dport=53)) / payload
    if rng.random() < 0.5:
        ip = IP(src=f"198.51.100.{rng.randint(1, 254)}", dst="203.0.113.10", tos=rng.randint(0, 255),
                flags=rng.choice(["DF", ""]), id=rng.randint(0, 65535), ttl=rng.randint(2, 255))
    else:
        ip = IPv6(src=f"2001:db8:c::{rng.randint(1, 0xffff):x}", dst="2001:db8:1::10",
                  tc=rng.randint(0, 255), fl=rng.randint(0, 0xfffff))
    e = Ether(src="02:00:00:00:00:01", dst=PORT_MAC)
    if rng.random() < 0.3:
        e = e / Dot1Q(vlan=rng.randint(1, 4094))
    return e / ip / l4


def outer_source(prefix, h):
    net = ipaddress.ip_network(prefix)
    bits = net.max_prefixlen
    n = min(bits - net.prefixlen, 64)
    mask = (1 << n) - 1
    value = (int(net.network_address) & ~mask) | (h & mask)
    return str(ipaddress.ip_address(value) if bits == 32 else ipaddress.IPv6Address(value))


def expected(frame, kind, backend, h):
    inner = frame[IP] if IP in frame and not frame.haslayer(IPv6) else frame[IPv6]
    inner_bytes = bytes(inner)
    v4_inner = inner_bytes[0] >> 4 == 4
    tos = inner_bytes[1] if v4_inner else ((inner_bytes[0] & 0x0F) << 4) | (inner_bytes[1] >> 4)
    df = bool(inner_bytes[6] & 0x40) if v4_inner else True
    inner_proto = 4 if v4_inner else 41
    eth = Ether(src=PORT_MAC, dst=NEXTHOP_MAC)
    if ":" in backend:
        outer = IPv6(src=outer_source(SRC6, h), dst=backend, tc=tos, fl=(h >> 32) & 0xFFFFF, hlim=64,
                     nh=17 if kind == "gue" else inner_proto)
    else:
        outer = IP(src=outer_source(SRC4, h), dst=backend, tos=tos, ttl=64,
                   id=0 if df else (h >> 48) & 0xFFFF, flags="DF" if df else "",
                   proto=17 if kind == "gue" else inner_proto)
    if kind == "gue":
        udp = UDP(sport=0xC000 | ((h >> 16) & 0x3FFF), dport=6080)
        if ":" not in backend:
            udp.chksum = 0
        return bytes(eth / outer / udp / Raw(inner_bytes))
    return bytes(eth / outer / Raw(inner_bytes))


def main():
    exe = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    frames = [client_frame() for _ in range(count)]
    bad = total = 0
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.pcap"
        wrpcap(str(src), frames)
        for kind in ("ipip", "gue"):
            for backend in ("10.1.2.3", "2001:db8:b::3"):
                out = Path(tmp) / f"out-{kind}-{backend}.pcap"
                res = subprocess.run([exe, kind, backend, SRC4, SRC6, "0x5eed", str(src), str(out)],
                                     capture_output=True, text=True, check=True)
                lines = res.stdout.splitlines()
                got = [bytes(p) for p in rdpcap(str(out))]
                if len(lines) != count or len(got) != count or not all(l.endswith(" ok") for l in lines):
                    print(f"FAIL {kind} {backend}: {len(got)} frames out of {count}")
                    print(res.stdout[-2000:])
                    return 1
                for i, (line, frame, actual) in enumerate(zip(lines, frames, got)):
                    total += 1
                    want = expected(frame, kind, backend, int(line.split()[1], 16))
                    if actual != want:
                        bad += 1
                        if bad <= 5:
                            print(f"{kind} backend {backend} frame {i} differs:\n  got  {actual.hex()}\n  want {want.hex()}")
    print(f"{total - bad}/{total} encapsulated frames equal scapy's, byte for byte")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
