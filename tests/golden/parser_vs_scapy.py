#!/usr/bin/python3
"""The packet parser against an independent model: scapy.

Builds a seeded random mix of frames with scapy (IPv4/IPv6, TCP/UDP, 0-2 VLAN
tags, IPv6 extension chains, fragments, ICMP errors quoting a reply), plus
broken variants (bad checksum, cut inside a header, chains too long), writes
them to a pcap, runs tests/tools/parse_pcap over it and compares every line
with what scapy's own dissection says the frame is.

usage: parser_vs_scapy.py PARSE_PCAP_EXE [COUNT]
"""
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from scapy.all import (ICMP, IP, UDP, Dot1AD, Dot1Q, Ether, ICMPv6DestUnreach, ICMPv6PacketTooBig,
                       IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                       IPv6ExtHdrRouting, TCP, Raw, wrpcap)

rng = random.Random(20261125)


def addr4():
    return f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def addr6():
    return "2001:db8:" + ":".join(f"{rng.randint(0, 0xffff):x}" for _ in range(6))


def l2(vlans):
    e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if vlans == 1:
        e = e / Dot1Q(vlan=rng.randint(1, 4094))
    elif vlans == 2:
        e = e / Dot1AD(vlan=rng.randint(1, 4094)) / Dot1Q(vlan=rng.randint(1, 4094))
    return e


def l4(proto, sport, dport):
    payload = Raw(bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 64))))
    if proto == 6:
        return TCP(sport=sport, dport=dport, flags=rng.choice(["S", "SA", "A", "PA", "F", "R"])) / payload
    return UDP(sport=sport, dport=dport) / payload


def expect_ok(version, proto, src, dst, sport, dport, frag="none", l4present=1, icmp=0):
    return f"ok {version} {proto} {src} {dst} {sport} {dport} {frag} {l4present} {icmp}"


def good_frame():
    """A well-formed frame and what the parser must say, read back from scapy."""
    version = rng.choice([4, 6])
    proto = rng.choice([6, 17])
    sport, dport = rng.randint(1, 65535), rng.randint(1, 65535)
    vlans = rng.choice([0, 0, 1, 2])
    shape = rng.choice(["plain", "plain", "first_frag", "later_frag", "icmp_error", "ext"])
    if version == 4:
        src, dst = addr4(), addr4()
        if shape == "first_frag":
            pkt = l2(vlans) / IP(src=src, dst=dst, flags="MF") / l4(proto, sport, dport)
            frag = "first"
        elif shape == "later_frag":
            pkt = l2(vlans) / IP(src=src, dst=dst, proto=proto, frag=rng.randint(1, 8000)) / Raw(b"x" * 24)
            return pkt, expect_ok(4, proto, src, dst, 0, 0, "non_first", 0)
        elif shape == "icmp_error":
            quote = bytes(IP(src=dst, dst=src) / l4(proto, dport, sport))[:28]
            pkt = l2(vlans) / IP(src=addr4(), dst=dst) / ICMP(type=3, code=4, nexthopmtu=1400) / Raw(quote)
            # turned round: the quoted reply went dst->src, the client is src
            return pkt, expect_ok(4, proto, src, dst, sport, dport, "none", 1, 1)
        else:
            opts = b"\x01" * (4 * rng.randint(0, 3)) if shape == "ext" else b""
            pkt = l2(vlans) / IP(src=src, dst=dst, options=opts) / l4(proto, sport, dport)
            frag = "none"
    else:
        src, dst = addr6(), addr6()
        ip = IPv6(src=src, dst=dst)
        if shape == "ext":
            chain = []
            if rng.random() < 0.5:
                chain.append(IPv6ExtHdrHopByHop())
            for _ in range(rng.randint(1, 4)):
                chain.append(rng.choice([IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting()]))
            for h in chain:
                ip = ip / h
        if shape == "first_frag":
            pkt = l2(vlans) / ip / IPv6ExtHdrFragment(m=1, id=7) / l4(proto, sport, dport)
            frag = "first"
        elif shape == "later_frag":
            pkt = l2(vlans) / ip / IPv6ExtHdrFragment(offset=rng.randint(1, 8000), nh=proto) / Raw(b"y" * 24)
            return pkt, expect_ok(6, proto, src, dst, 0, 0, "non_first", 0)
        elif shape == "icmp_error":
            quote = bytes(IPv6(src=dst, dst=src) / l4(proto, dport, sport))[:48]
            icmp = rng.choice([ICMPv6PacketTooBig(mtu=1280), ICMPv6DestUnreach()])
            pkt = l2(vlans) / IPv6(src=addr6(), dst=dst) / icmp / Raw(quote)
            return pkt, expect_ok(6, proto, src, dst, sport, dport, "none", 1, 1)
        else:
            pkt = l2(vlans) / ip / l4(proto, sport, dport)
            frag = "none"
    # The model: scapy dissects the bytes it built, and that is what we expect.
    back = Ether(bytes(pkt))
    ipl = back[IP] if version == 4 else back[IPv6]
    t = back[TCP] if proto == 6 else back[UDP]
    return pkt, expect_ok(version, proto, ipl.src, ipl.dst, t.sport, t.dport, frag)


def broken_frame():
    kind = rng.choice(["checksum", "cut_l4", "cut_ip", "chain9", "hbh_late", "tcp_offset"])
    sport, dport = rng.randint(1, 65535), rng.randint(1, 65535)
    if kind == "checksum":
        b = bytearray(bytes(l2(0) / IP(src=addr4(), dst=addr4()) / TCP(sport=sport, dport=dport)))
        b[24] ^= 0xff  # a checksum byte
        return bytes(b), "ipv4_bad_checksum"
    if kind == "cut_l4":
        b = bytes(l2(rng.choice([0, 1])) / IP(src=addr4(), dst=addr4()) / TCP(sport=sport, dport=dport))
        b = bytes(b)
        # cut inside TCP and fix nothing: the IP total length now lies
        return b[: len(b) - rng.randint(1, 19)], "truncated"
    if kind == "cut_ip":
        b = bytes(l2(0) / IPv6(src=addr6(), dst=addr6()) / UDP(sport=sport, dport=dport))
        return b[: 14 + rng.randint(0, 39)], "truncated"
    if kind == "chain9":
        ip = IPv6(src=addr6(), dst=addr6())
        for _ in range(9):
            ip = ip / IPv6ExtHdrDestOpt()
        return bytes(l2(0) / ip / TCP(sport=sport, dport=dport)), "ipv6_ext_chain_too_long"
    if kind == "hbh_late":
        ip = IPv6(src=addr6(), dst=addr6()) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop()
        return bytes(l2(0) / ip / TCP(sport=sport, dport=dport)), "ipv6_bad_ext_header"
    b = bytearray(bytes(l2(0) / IPv6(src=addr6(), dst=addr6()) / TCP(sport=sport, dport=dport)))
    b[14 + 40 + 12] = 0x40  # data offset 4
    return bytes(b), "tcp_bad_offset"


def main():
    exe = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    frames, expected = [], []
    for i in range(count):
        if i % 4 == 3:
            raw, verdict = broken_frame()
            frames.append(Ether(raw))
            expected.append(f"{verdict} - - - - - - - - -")
        else:
            pkt, line = good_frame()
            frames.append(pkt)
            expected.append(line)
    with tempfile.TemporaryDirectory() as tmp:
        pcap = Path(tmp) / "mix.pcap"
        wrpcap(str(pcap), frames)
        out = subprocess.run([exe, str(pcap)], capture_output=True, text=True, check=True).stdout
    got = out.splitlines()
    if len(got) != len(expected):
        print(f"FAIL: parse_pcap printed {len(got)} lines for {len(expected)} frames")
        return 1
    bad = 0
    for i, (g, e) in enumerate(zip(got, expected)):
        g = g.split(" ", 1)[1]
        if g != e:
            bad += 1
            if bad <= 10:
                print(f"frame {i}: parser says '{g}', scapy model says '{e}'")
                print(f"  {bytes(frames[i]).hex()}")
    print(f"{len(expected) - bad}/{len(expected)} frames agree with the scapy model")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
