#!/usr/bin/python3
"""Writes the seed corpus of fuzz_packet (tests/fuzz/corpus/fuzz_packet/) with
scapy: one well-formed frame of each shape the parser knows, so the fuzzer
starts deep inside every branch. Run again after adding a shape."""
from pathlib import Path

from scapy.all import (ARP, ICMP, IP, UDP, Dot1AD, Dot1Q, Ether, ICMPv6EchoRequest,
                       ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, ICMPv6NDOptSrcLLAddr, ICMPv6PacketTooBig, IPv6, IPv6ExtHdrDestOpt,
                       IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, TCP, Raw)

OUT = Path(__file__).resolve().parent / "corpus" / "fuzz_packet"
C4, V4 = "198.51.100.7", "203.0.113.10"
C6, V6 = "2001:db8::7", "2001:db8::10"
E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")

seeds = {
    "v4_tcp_syn": E / IP(src=C4, dst=V4) / TCP(sport=40000, dport=80, flags="S"),
    "v4_udp": E / IP(src=C4, dst=V4) / UDP(sport=5353, dport=53) / Raw(b"x" * 12),
    "v4_options": E / IP(src=C4, dst=V4, options=b"\x01\x01\x01\x00") / TCP(dport=443),
    "v4_first_frag": E / IP(src=C4, dst=V4, flags="MF") / TCP(dport=80) / Raw(b"a" * 32),
    "v4_later_frag": E / IP(src=C4, dst=V4, frag=4, proto=6) / Raw(b"b" * 32),
    "v4_vlan": E / Dot1Q(vlan=100) / IP(src=C4, dst=V4) / TCP(dport=80),
    "v4_qinq": E / Dot1AD(vlan=10) / Dot1Q(vlan=20) / IP(src=C4, dst=V4) / UDP(dport=53),
    "v4_icmp_echo": E / IP(src=C4, dst=V4) / ICMP(),
    "v4_icmp_fragneeded": E / IP(src="192.0.2.1", dst=V4) / ICMP(type=3, code=4, nexthopmtu=1400)
        / bytes(IP(src=V4, dst=C4) / TCP(sport=80, dport=40000))[:28],
    "arp": E / ARP(psrc=C4, pdst=V4),
    "v6_tcp": E / IPv6(src=C6, dst=V6) / TCP(sport=40000, dport=443, flags="S"),
    "v6_chain": E / IPv6(src=C6, dst=V6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting() / TCP(dport=443),
    "v6_first_frag": E / IPv6(src=C6, dst=V6) / IPv6ExtHdrFragment(m=1) / UDP(dport=53) / Raw(b"c" * 40),
    "v6_later_frag": E / IPv6(src=C6, dst=V6) / IPv6ExtHdrFragment(offset=8, nh=6) / Raw(b"d" * 40),
    "v6_ns": E / IPv6(src=C6, dst=V6) / ICMPv6ND_NS(tgt=V6),
    # next-hop resolution: the replies parse_neighbour_reply reads, and jitlb's own NS
    "arp_reply": E / ARP(op=2, hwsrc="02:00:00:00:00:01", psrc="192.0.2.1", pdst="192.0.2.10"),
    "arp_reply_vlan": E / Dot1Q(vlan=100) / ARP(op=2, hwsrc="02:00:00:00:00:01", psrc="192.0.2.1", pdst="192.0.2.10"),
    "v6_na": E / IPv6(src="2001:db8::1", dst=V6, hlim=255) / ICMPv6ND_NA(tgt="2001:db8::1", S=1, O=1)
        / ICMPv6NDOptDstLLAddr(lladdr="02:00:00:00:00:01"),
    "v6_na_bare": E / IPv6(src="2001:db8::1", dst=V6, hlim=255) / ICMPv6ND_NA(tgt="2001:db8::1", S=1),
    "v6_ns_multicast": Ether(src="02:00:00:00:00:02", dst="33:33:ff:00:00:01")
        / IPv6(src=V6, dst="ff02::1:ff00:1", hlim=255) / ICMPv6ND_NS(tgt="2001:db8::1")
        / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:02"),
    "v6_echo": E / IPv6(src=C6, dst=V6) / ICMPv6EchoRequest(),
    "v6_ptb": E / IPv6(src="2001:db8::1", dst=V6) / ICMPv6PacketTooBig(mtu=1280)
        / bytes(IPv6(src=V6, dst=C6) / TCP(sport=443, dport=50000))[:48],
}

OUT.mkdir(parents=True, exist_ok=True)
for name, pkt in seeds.items():
    (OUT / name).write_bytes(bytes(pkt))
print(f"wrote {len(seeds)} seeds to {OUT}")
