"""Hostile packets and hostile grants for the real data plane (read by hostile_golden.py).

The rule every case checks: without a valid grant for (source, service) nothing
is forwarded, whatever the packet looks like. Each case is a table row as in
dataplane_cases.py — input frames and the exact output frame, or the counter the
drop is counted under — and the runner checks, before jitlb runs, that every row
expecting a forwarded frame names a (source, service) that a grant of this file
covers at that point (rule_violations).

The categories (the number starts each case's name):
  1  headers cut at every byte (Ethernet, 802.1Q, QinQ, IPv4, IPv6, TCP, UDP) and
     lengths that lie (IPv4 total length, IHL, TCP data offset, UDP length, IPv6
     payload length), bad IPv4 header checksums;
  2  IPv6 extension-header chains: hidden, long, malformed, with fragment headers,
     atomic fragments;
  3  fragments (docs/dataplane.md: every fragment is dropped, `ip_fragment`; one
     too small to hold its L4 header is `parse_truncated`; an IPv6 atomic fragment
     is a whole packet), so a later fragment never changes a flow's ports;
  4  sources that are a VIP, the node, multicast, broadcast, 0.0.0.0, loopback,
     link-local, IPv4-mapped / -compatible IPv6 against an IPv4 grant;
  5  a granted source to services it has no grant for; VLAN stacks (802.1Q, 802.1ad);
  6  ICMP errors naming another client's flow; frag-needed / packet-too-big with an
     absurd MTU;
  7  grants jitlb must refuse, pushed through jitlb_stage into the running jitlb
     (HOSTILE_GRANTS: the GrantRejected reason each must get), and the packets of
     their sources: none forwarded.

Covered elsewhere, not repeated here:
  - dataplane_cases.py: one frame per parser drop reason (`malformed()`: a truncated
    Ethernet header and TCP header, LLDP, three VLAN tags 88a8/88a8/8100, ethertype
    IPv4 with version 6, IHL 4, total length 16, a checksum bit flip, 9 destination
    options headers, hop-by-hop after another header, TCP offset 4, UDP length 200,
    an ICMP error quoting an echo); the IPv4 and IPv6 first and later fragment and
    the IPv6 atomic fragment; frag-needed MTU 500 and packet-too-big MTU 1000; a
    frag-needed about an ungranted flow; grants rejected for a flipped last
    signature byte (`bad_signature`), a not-after already past (`expired`) and an
    unknown service (`unknown_service`); a revocation after activation; a grant for
    another service; a grant that ended or has not started (clock-shifted runs).
  - test_jitlb_stage.py: jitlb_stage's own checking of scripts and its encoding of
    every command (no jitlb).
  - tests/unit/test_grant.cc and tests/fuzz/fuzz_grant.cc: verify_grant on every bit
    of a signed grant flipped, and the record's format errors field by field;
    tests/unit/test_control_loop.cc: the control loop's answers (superseded, key
    reload, revoked ids) on an in-process ring; tests/fuzz/fuzz_pipeline.cc: the
    pipeline on random frames. Here the same refusals go through the real jitlb and
    its command ring, and the packets of their sources through its workers.
"""
import ipaddress
import os
import struct
import sys
from dataclasses import dataclass
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dataplane_cases as dc  # noqa: E402
from dataplane_cases import C4, C6, WEB, WEB6, Case, drop, gue, ipip, tcp, udp  # noqa: E402

from scapy.all import (ICMP, IP, TCP, UDP, Ether, ICMPv6DestUnreach, ICMPv6PacketTooBig,  # noqa: E402
                       ICMPv6TimeExceeded, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                       IPv6ExtHdrRouting, PadN, Raw)

# --- clients, sources and the grants pushed to the running jitlb -------------------------------

C4_NONE = dc.C4_NONE           # no grant at all
C6_NONE = "2001:db8:c::99"     # no grant at all
NET = "198.18.9.0/24"          # one /24 granted for web
MAPPED = "::ffff:198.51.100.50"  # an IPv4-mapped IPv6 source, granted for gue4 as IPv6
V4_OF_MAPPED = "198.51.100.50"   # the same address as IPv4: no grant
GUE4_V4, GUE4_V6 = "192.0.2.101", "2001:db8::101"  # gue4: one TCP service, both families
GUE6_V4, GUE6_V6 = "192.0.2.102", "2001:db8::102"  # gue6: UDP 443
HOUR, DAY = 3600, 86400
SHORT_S = 3  # the grant that expires during the live run


def h(n):
    """A source of category 7: 198.51.100.<n>."""
    return f"198.51.100.{n}"


# Record offsets (docs/grants.md): the fields a forger edits.
REC_PREFIX_LEN, REC_ISSUER, REC_ID, REC_NOT_AFTER, REC_SOURCE, REC_SERVICE, REC_SIG = 2, 16, 24, 48, 56, 72, 168


def set_source(addr):
    def edit(raw, ctx):
        raw[REC_SOURCE:REC_SOURCE + 4] = ipaddress.ip_address(addr).packed
    return edit


def set_byte(offset, value):
    def edit(raw, ctx):
        raw[offset] = value
    return edit


def flip_bit(offset, bit=0):
    def edit(raw, ctx):
        raw[offset] ^= 1 << bit
    return edit


def extend_not_after(seconds):
    def edit(raw, ctx):
        t = struct.unpack_from("<q", raw, REC_NOT_AFTER)[0]
        struct.pack_into("<q", raw, REC_NOT_AFTER, t + seconds * 1000)
    return edit


def set_service(name):
    def edit(raw, ctx):
        raw[REC_SERVICE:REC_SERVICE + 32] = name.encode().ljust(32, b"\0")
    return edit


def set_issuer(key):
    def edit(raw, ctx):
        raw[REC_ISSUER:REC_ISSUER + 8] = bytes.fromhex(ctx["key_ids"][key])
    return edit


def zero_signature(raw, ctx):
    raw[REC_SIG:] = bytes(64)


def signature_of(name):
    def edit(raw, ctx):
        raw[REC_SIG:] = ctx["signed"][name][REC_SIG:]
    return edit


@dataclass
class HostileGrant:
    name: str
    source: str             # the prefix signed
    service: str
    not_before_s: int       # relative to the live run's start
    not_after_s: int
    push: int = 1           # the live run's push that carries it (see hostile_golden.py)
    issuer: str = "main"    # main (trusted), rotated (trusted until the key reload), untrusted (never)
    tamper: Optional[Callable] = None  # edits the 232 signed bytes after signing
    id_of: Optional[str] = None        # signed with this grant's id (a different record)
    replay_of: Optional[str] = None    # the very bytes of this grant, pushed again
    expect: Optional[str] = None       # GrantRejected reason; None: GrantActivated
    valid_in: tuple = ()    # the runs / phases where it is in force: "p1", "p2", "p3" (live), "main"


EVERYWHERE = ("p1", "p2", "p3", "main")

HOSTILE_GRANTS = [
    # What the packet categories need: valid throughout.
    HostileGrant("c4-web", f"{C4}/32", "web", -60, HOUR, valid_in=EVERYWHERE),
    HostileGrant("c4-gue4", f"{C4}/32", "gue4", -60, HOUR, valid_in=EVERYWHERE),
    HostileGrant("c6-web6", f"{C6}/128", "web6", -60, HOUR, valid_in=EVERYWHERE),
    HostileGrant("c6-gue4", f"{C6}/128", "gue4", -60, HOUR, valid_in=EVERYWHERE),
    HostileGrant("c6-gue6", f"{C6}/128", "gue6", -60, HOUR, valid_in=EVERYWHERE),
    HostileGrant("net-web", NET, "web", -60, HOUR, valid_in=EVERYWHERE),
    HostileGrant("mapped-gue4", f"{MAPPED}/128", "gue4", -60, HOUR, valid_in=EVERYWHERE),
    # Category 7, push 1: refused at once or at verification.
    HostileGrant("untrusted-key", f"{h(150)}/32", "web", -60, HOUR, issuer="untrusted", expect="unknown_issuer"),
    HostileGrant("signature-first-bit", f"{h(151)}/32", "web", -60, HOUR, tamper=flip_bit(REC_SIG),
                 expect="bad_signature"),
    HostileGrant("signature-zero", f"{h(152)}/32", "web", -60, HOUR, tamper=zero_signature, expect="bad_signature"),
    HostileGrant("signature-of-another-grant", f"{h(153)}/32", "web", -60, HOUR, tamper=signature_of("c4-web"),
                 expect="bad_signature"),
    HostileGrant("source-edited", f"{h(154)}/32", "web", -60, HOUR, tamper=set_source(h(155)),
                 expect="bad_signature"),
    HostileGrant("prefix-widened-32-to-24", "198.51.101.0/32", "web", -60, HOUR,
                 tamper=set_byte(REC_PREFIX_LEN, 24), expect="bad_signature"),
    HostileGrant("not-after-extended", f"{h(156)}/32", "web", -60, HOUR, tamper=extend_not_after(HOUR),
                 expect="bad_signature"),
    HostileGrant("service-edited-dsr-to-web", f"{h(157)}/32", "dsr", -60, HOUR, tamper=set_service("web"),
                 expect="bad_signature"),
    HostileGrant("issuer-edited-to-another-trusted-key", f"{h(158)}/32", "web", -60, HOUR,
                 tamper=set_issuer("rotated"), expect="bad_signature"),
    HostileGrant("issuer-edited-to-an-untrusted-key", f"{h(159)}/32", "web", -60, HOUR,
                 tamper=set_issuer("untrusted"), expect="unknown_issuer"),
    HostileGrant("grant-id-edited", f"{h(160)}/32", "web", -60, HOUR, tamper=flip_bit(REC_ID + 5, 3),
                 expect="bad_signature"),
    HostileGrant("duration-max-plus-1s", f"{h(161)}/32", "web", -60, DAY - 59, expect="too_long"),
    HostileGrant("duration-exactly-max", f"{h(162)}/32", "web", -HOUR, DAY - HOUR, valid_in=EVERYWHERE),
    HostileGrant("starts-beyond-horizon", f"{h(163)}/32", "web", DAY + 120, DAY + 120 + HOUR,
                 expect="starts_too_far_ahead"),
    # Verification passes it (within the horizon), but the grant table stores no grant that
    # has not started: jitd pushes it again when it starts (docs/architecture.md, docs/api.md).
    HostileGrant("starts-within-horizon", f"{h(164)}/32", "web", DAY - HOUR, DAY, expect="superseded"),
    # Category 7, push 1: activated, then ended during the live run.
    HostileGrant("rotated-key", f"{h(140)}/32", "web", -60, HOUR, issuer="rotated", valid_in=("p1",)),
    HostileGrant("short", f"{h(141)}/32", "web", -60, SHORT_S, valid_in=("p1",)),
    HostileGrant("revoked", f"{h(142)}/32", "web", -60, HOUR, valid_in=("p1",)),
    HostileGrant("known", f"{h(143)}/32", "web", -60, HOUR, valid_in=EVERYWHERE),
    # Push 3: after the revocation and the key reload.
    HostileGrant("known-id-other-record", f"{h(144)}/32", "web", -60, HOUR, push=3, id_of="known",
                 expect="malformed"),
    HostileGrant("revoked-replayed", f"{h(142)}/32", "web", -60, HOUR, push=3, replay_of="revoked",
                 expect="revoked"),
    HostileGrant("revoked-id-other-record", f"{h(145)}/32", "web", -60, HOUR, push=3, id_of="revoked",
                 expect="revoked"),
    HostileGrant("rotated-key-replayed", f"{h(140)}/32", "web", -60, HOUR, push=3, replay_of="rotated-key",
                 expect="unknown_issuer"),
    HostileGrant("rotated-key-new-grant", f"{h(146)}/32", "web", -60, HOUR, push=3, issuer="rotated",
                 expect="unknown_issuer"),
    # Push 4: after the short grant's GrantExpired.
    HostileGrant("short-replayed-after-expiry", f"{h(141)}/32", "web", -60, SHORT_S, push=4, replay_of="short",
                 expect="expired"),
]
PACKET_GRANTS = {"c4-web", "c4-gue4", "c6-web6", "c6-gue4", "c6-gue6", "net-web", "mapped-gue4"}  # categories 1-6

# The runs, in order, over one state file: "live" (jitlb up while grants are pushed,
# frames through a FIFO in three phases) and "main" (restarted; every packet case).
RUNS = {"live": (0, False), "main": (0, False)}


def service_at(vip, port, proto):
    for s in dc.SERVICES:
        if (vip, port, proto) in {(str(ipaddress.ip_address(a)), p, pr) for a, p, pr in s.vips}:
            return s.name
    return None


def rule_violations(cases):
    """Rows expecting a forwarded frame whose (source, service) no grant in force covers."""
    bad = []
    for case in cases:
        e = case.expect
        if not isinstance(e, dc.Out) or not ({"forwarded", "too_big"} & set(e.counters)):
            continue
        when = case.run if case.run != "live" else f"p{case.phase}"
        for frame in case.inputs:
            src, dst, _, dport, proto = e.flow or dc.flow_of(frame)
            service = service_at(str(ipaddress.ip_address(dst)), dport, {6: "tcp", 17: "udp"}[proto])
            source = ipaddress.ip_address(src)
            if not any(g.service == service and when in g.valid_in and g.expect is None and
                       source.version == ipaddress.ip_network(g.source).version and
                       source in ipaddress.ip_network(g.source) for g in HOSTILE_GRANTS):
                bad.append(f"{case.name}: {src} -> {service} is forwarded without a grant in force ({when})")
    return bad


# --- frame builders ----------------------------------------------------------------------------


def eth_raw(l3, ethertype=0x0800, tags=()):
    """Ethernet, then `tags` as (TPID, VLAN id) in order, then ethertype and `l3` bytes."""
    b = dc.mac_bytes(dc.NODE_MAC) + dc.mac_bytes(dc.CLIENT_MAC)
    for tpid, vid in tags:
        b += struct.pack(">HH", tpid, vid)
    return Ether(b + struct.pack(">H", ethertype) + bytes(l3))


def ip4_bytes(src=C4, dst=WEB, dport=80, sport=44100, payload=b"", proto="tcp", **ipkw):
    l4 = TCP(sport=sport, dport=dport, flags="S", seq=1000) if proto == "tcp" else UDP(sport=sport, dport=dport)
    ipkw.setdefault("flags", "DF")
    return bytearray(bytes(IP(src=src, dst=dst, **ipkw) / l4 / Raw(payload)))


def ip6_bytes(src=C6, dst=WEB6, dport=80, sport=44100, payload=b"", proto="tcp"):
    l4 = TCP(sport=sport, dport=dport, flags="S", seq=1000) if proto == "tcp" else UDP(sport=sport, dport=dport)
    return bytearray(bytes(IPv6(src=src, dst=dst) / l4 / Raw(payload)))


def fix_l4_v4(b):
    """The TCP or UDP checksum of an IPv4 packet recomputed over what its total length holds."""
    ihl, total = (b[0] & 15) * 4, b[2] << 8 | b[3]
    at = ihl + (16 if b[9] == 6 else 6)
    b[at:at + 2] = b"\0\0"
    pseudo = bytes(b[12:20]) + bytes([0, b[9]]) + struct.pack(">H", total - ihl)
    s = ones_sum(pseudo + bytes(b[ihl:total]))
    b[at:at + 2] = struct.pack(">H", (~s & 0xFFFF) or 0xFFFF)
    return b


def ones_sum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def fix4(b):
    """The IPv4 header checksum recomputed (over the IHL the header claims)."""
    return bytearray(dc.with_ipv4_checksum(bytearray(b)))


def v4(b, fix=True):
    """Ethernet around IPv4 bytes, their header checksum recomputed unless fix is False."""
    return eth_raw(fix4(b) if fix else b, 0x0800)


def v6(b):
    return eth_raw(b, 0x86DD)


def set16(b, off, value):
    b[off:off + 2] = struct.pack(">H", value & 0xFFFF)
    return b


def cut_l4_v4(b, keep):
    """The IPv4 packet with only `keep` bytes after its header, total length to match."""
    ihl = (b[0] & 15) * 4
    c = bytearray(b[:ihl + keep])
    return fix4(set16(c, 2, len(c)))


def cut_l4_v6(b, keep):
    """The IPv6 packet with only `keep` bytes after its header, payload length to match."""
    c = bytearray(b[:40 + keep])
    return set16(c, 4, keep)


def tcp_offset(b, l4_at, words):
    b[l4_at + 12] = (words << 4) | (b[l4_at + 12] & 0x0F)
    return b


def rebuild_differs(case, why):
    """A row whose expected frame scapy, rebuilding it, would make consistent (its lie is the
    point): the runner's selfcheck leaves it out of the rebuild comparison."""
    case.rebuild_differs = why
    return case


def lldp_filler(n, phase):
    return Case(f"rx burst filler: {n} LLDP frames", [dc.lldp() for _ in range(n)], drop("parse_l2_unsupported"),
                run="live", phase=phase)


# --- ICMP errors --------------------------------------------------------------------------------


def icmp4_error(type_, code, client=C4, vip=WEB, vport=80, cport=40001, proto="tcp", mtu=0, outer_src=dc.ROUTER4,
                outer_dst=None, quote_l4=8, inner_frag=0):
    """An ICMP error about the backend's packet vip:vport -> client:cport, quoting its IP
    header and `quote_l4` bytes of L4."""
    l4 = TCP(sport=vport, dport=cport, flags="SA") if proto == "tcp" else UDP(sport=vport, dport=cport)
    inner = bytes(IP(src=vip, dst=client, flags="DF", frag=inner_frag) / l4)[:20 + quote_l4]
    # The next-hop MTU field of a destination unreachable means something only in a frag-needed (code 4).
    icmp = ICMP(type=type_, code=code, nexthopmtu=mtu) if type_ == 3 else ICMP(type=type_, code=code)
    return dc.eth() / IP(src=outer_src, dst=outer_dst or vip) / icmp / Raw(inner)


def icmp6_error(kind, client=C6, vip=WEB6, vport=80, cport=40001, proto="tcp", mtu=1280, outer_src=dc.ROUTER6,
                inner_ext=None):
    l4 = TCP(sport=vport, dport=cport, flags="SA") if proto == "tcp" else UDP(sport=vport, dport=cport)
    inner = IPv6(src=vip, dst=client)
    if inner_ext is not None:
        inner = inner / inner_ext
    msg = {"ptb": ICMPv6PacketTooBig(mtu=mtu), "unreach": ICMPv6DestUnreach(code=3),
           "time": ICMPv6TimeExceeded(code=0)}[kind]
    return dc.eth() / IPv6(src=outer_src, dst=vip) / msg / Raw(bytes(inner / l4))


FLOW4 = (C4, WEB, 40001, 80, 6)      # the granted flows the ICMP errors name
FLOW4_UDP = (C4, WEB, 40001, 53, 17)
FLOW6 = (C6, WEB6, 40001, 80, 6)


# --- the table -----------------------------------------------------------------------------------


def truncation_cases():
    """Category 1a: a granted flow's first packet cut at every byte boundary: each cut is
    parse_truncated (the IP length then exceeds the frame, or a header is short)."""
    bases = [
        ("Ethernet/IPv4/TCP", tcp(C4, WEB, 80, sport=44001), ipip("web")),
        ("Ethernet/802.1Q/IPv4/TCP", tcp(C4, WEB, 80, sport=44002, vlans=(100,)), ipip("web")),
        ("Ethernet/802.1ad/802.1Q/IPv4/TCP", tcp(C4, WEB, 80, sport=44003, vlans=(200, 100)), ipip("web")),
        ("Ethernet/IPv4/UDP", udp(C4, WEB, 53, sport=44004), ipip("web")),
        ("Ethernet/IPv6/TCP", tcp(C6, WEB6, 80, sport=44005), ipip("web6")),
        ("Ethernet/802.1Q/IPv6/UDP", udp(C6, GUE6_V6, 443, sport=44006, vlans=(7,)), gue("gue6")),
    ]
    t = []
    for name, frame, forwarded in bases:
        raw = bytes(frame)
        t.append(Case(f"1 control: the whole {name} packet of a granted flow ({len(raw)} bytes)", [frame], forwarded))
        t.append(Case(f"1 {name} cut at each of its {len(raw)} byte boundaries (0..{len(raw) - 1} bytes)",
                      [raw[:n] for n in range(len(raw))], drop("parse_truncated")))
    # The IP length made to agree with the cut: the L4 header itself is short.
    t += [
        Case("1 IPv4 total length agrees, TCP header cut at each of 0..19 bytes",
             [v4(cut_l4_v4(ip4_bytes(sport=44007), k)) for k in range(20)], drop("parse_truncated")),
        Case("1 IPv4 total length agrees, UDP header cut at each of 0..7 bytes",
             [v4(cut_l4_v4(ip4_bytes(dport=53, sport=44008, proto="udp"), k)) for k in range(8)],
             drop("parse_truncated")),
        Case("1 IPv6 payload length agrees, TCP header cut at each of 0..19 bytes",
             [v6(cut_l4_v6(ip6_bytes(sport=44009), k)) for k in range(20)], drop("parse_truncated")),
        Case("1 IPv6 payload length agrees, UDP header cut at each of 0..7 bytes",
             [v6(cut_l4_v6(ip6_bytes(dst=GUE6_V6, dport=443, sport=44010, proto="udp"), k)) for k in range(8)],
             drop("parse_truncated")),
    ]
    return t


def length_cases():
    """Category 1b: lengths that lie, and IPv4 header checksums that do not verify."""
    base = ip4_bytes(sport=44100)  # 40 bytes: IPv4 + TCP SYN, from the granted C4 to web
    t = []

    def with_total(n, sport):
        return set16(ip4_bytes(sport=sport), 2, n)

    t += [
        Case("1 IPv4 total length larger than the frame (41, 1500, 65535)",
             [v4(with_total(n, 44101)) for n in (41, 1500, 65535)], drop("parse_truncated")),
        Case("1 IPv4 total length below its header (0, 1, 19)",
             [v4(with_total(n, 44102)) for n in (0, 1, 19)], drop("parse_ipv4_bad_total_length")),
        Case("1 IPv4 total length 20 and 39: no room for the TCP header it names",
             [v4(with_total(n, 44103)) for n in (20, 39)], drop("parse_truncated")),
        Case("1 IPv4 total length 40 in front of 12 more bytes: they are padding, not carried",
             [v4(ip4_bytes(sport=44104) + b"not-the-pkt!")], ipip("web")),
    ]
    # IHL.
    ihl_low = []
    for ihl in range(5):
        b = bytearray(base)
        b[0] = 0x40 | ihl
        ihl_low.append(v4(b, fix=False))
    options = bytearray(bytes(IP(src=C4, dst=WEB, flags="DF", options=[]) / TCP(sport=44105, dport=80, flags="S")))
    with_nops = bytearray(options[:20]) + b"\x01\x01\x01\x01" + options[20:]
    with_nops[0] = 0x46
    set16(with_nops, 2, len(with_nops))
    ihl6_no_options = bytearray(ip4_bytes(sport=44106))
    ihl6_no_options[0] = 0x46  # the TCP header's first 4 bytes read as options: 16 bytes of TCP left
    ihl15_short = bytearray(ip4_bytes(sport=44107))
    ihl15_short[0] = 0x4F      # 60 bytes of header in a 40-byte packet that ends the frame
    ihl15_long = bytearray(ip4_bytes(sport=44108, payload=bytes(40)))
    ihl15_long[0] = 0x4F
    set16(ihl15_long, 2, 40)   # the frame holds 80 bytes, the total length says 40 < 60
    t += [
        Case("1 IPv4 IHL 0..4", ihl_low, drop("parse_ipv4_bad_ihl")),
        Case("1 IPv4 IHL 6 with 4 bytes of options (NOPs): carried as they are", [v4(with_nops)], ipip("web")),
        Case("1 IPv4 IHL 6 without options: the TCP header is left 16 bytes", [v4(ihl6_no_options)],
             drop("parse_truncated")),
        Case("1 IPv4 IHL 15 beyond the end of the frame", [v4(ihl15_short)], drop("parse_truncated")),
        Case("1 IPv4 IHL 15 beyond the total length", [v4(ihl15_long)], drop("parse_ipv4_bad_total_length")),
    ]
    # TCP data offset: below 5, or beyond the segment; options that fit are fine.
    l4 = 20
    t += [
        Case("1 TCP data offset 0..4", [v4(tcp_offset(ip4_bytes(sport=44110), l4, w)) for w in range(5)],
             drop("parse_tcp_bad_offset")),
        Case("1 TCP data offset 6..15 in a 20-byte segment",
             [v4(tcp_offset(ip4_bytes(sport=44111), l4, w)) for w in range(6, 16)], drop("parse_tcp_bad_offset")),
        Case("1 TCP data offset 6 over 4 bytes of data (they are its options): forwarded",
             [v4(fix_l4_v4(tcp_offset(ip4_bytes(sport=44112, payload=b"\x01\x01\x01\x01"), l4, 6)))], ipip("web")),
        Case("1 TCP data offset 15 over 40 bytes of data: forwarded",
             [v4(fix_l4_v4(tcp_offset(ip4_bytes(sport=44113, payload=b"\x01" * 40), l4, 15)))], ipip("web")),
        Case("1 IPv6: TCP data offset 4, and 6 in a 20-byte segment",
             [v6(tcp_offset(ip6_bytes(sport=44114), 40, w)) for w in (4, 6)], drop("parse_tcp_bad_offset")),
    ]
    # UDP length.
    def udp4(ulen, sport):  # checksum 0: none (RFC 768)
        return v4(set16(set16(ip4_bytes(dport=53, sport=sport, proto="udp", payload=b"hello"), 24, ulen), 26, 0))

    def udp6(ulen, sport):
        return v6(set16(ip6_bytes(dst=GUE6_V6, dport=443, sport=sport, proto="udp", payload=b"hello"), 44, ulen))
    t += [
        Case("1 UDP length 0..7", [udp4(n, 44120) for n in range(8)], drop("parse_udp_bad_length")),
        Case("1 UDP length beyond the IP payload (14, 65535)", [udp4(n, 44121) for n in (14, 65535)],
             drop("parse_udp_bad_length")),
        rebuild_differs(Case("1 UDP length 8, shorter than the IP payload: forwarded whole", [udp4(8, 44122)],
                             ipip("web")), "scapy takes the IP payload beyond the UDP length for padding"),
        Case("1 IPv6: UDP length 0 (a jumbogram's), 7 and 14", [udp6(n, 44123) for n in (0, 7, 14)],
             drop("parse_udp_bad_length")),
    ]
    # IPv6 payload length.
    big = ip6_bytes(sport=44130)
    t += [
        Case("1 IPv6 payload length larger than the frame (21, 65535)",
             [v6(set16(bytearray(big), 4, n)) for n in (21, 65535)], drop("parse_truncated")),
        Case("1 IPv6 payload length 0 over a TCP header", [v6(set16(bytearray(big), 4, 0))], drop("parse_truncated")),
        Case("1 IPv6 payload length 20 in front of 8 more bytes: padding, not carried",
             [v6(ip6_bytes(sport=44131) + b"trailing")], ipip("web6")),
    ]
    # The IPv4 header checksum.
    good = fix4(ip4_bytes(sport=44140))
    spoofed = bytearray(fix4(ip4_bytes(src=C4_NONE, sport=44141)))
    spoofed[12:16] = ipaddress.ip_address(C4).packed  # source made a granted one, checksum left
    ttl = bytearray(good)
    ttl[8] -= 1
    t += [
        Case("1 IPv4 checksum off by one, zero, and the source edited to a granted one without it",
             [v4(set16(bytearray(good), 10, (good[10] << 8 | good[11]) + 1), fix=False),
              v4(set16(bytearray(good), 10, 0), fix=False), v4(spoofed, fix=False), v4(ttl, fix=False)],
             drop("parse_ipv4_bad_checksum")),
        Case("1 IP version 4 under the IPv6 ethertype, and version 0 under IPv4",
             [eth_raw(good, 0x86DD), eth_raw(bytes([0x05]) + bytes(good[1:]), 0x0800)], drop("parse_ip_bad_version")),
        Case("1 a 3000-byte frame of a granted flow (more than one 2048-byte mbuf)",
             [tcp(C4, WEB, 80, sport=44142, flags="A", payload=bytes(3000 - 54))], drop("multi_segment")),
    ]
    return t


def ipv6_chain_cases():
    """Category 2: IPv6 extension-header chains, from the granted C6 to web6."""
    def pkt(*ext, src=C6, sport=44200, flags="S"):
        p = IPv6(src=src, dst=WEB6)
        for e in ext:
            p = p / e
        return dc.eth() / p / TCP(sport=sport, dport=80, flags=flags)

    def dest(n_bytes):  # a destination options header of n_bytes (a multiple of 8, >= 8), PadN only
        left, pads = n_bytes - 2, []
        while left:
            take = min(left, 200) if left - min(left, 200) != 1 else 199
            pads.append(PadN(optdata=bytes(take - 2)))
            left -= take
        return IPv6ExtHdrDestOpt(options=pads)

    eight = [IPv6ExtHdrHopByHop()] + [IPv6ExtHdrDestOpt() for _ in range(7)]
    return [
        Case("2 hop-by-hop, destination options, routing (0 segments left), destination options, then TCP",
             [pkt(IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(), IPv6ExtHdrDestOpt(), sport=44201)],
             ipip("web6")),
        Case("2 8 extension headers (the most walked), then TCP", [pkt(*eight, sport=44202)], ipip("web6")),
        Case("2 256 bytes of extension headers (the most walked), then TCP", [pkt(dest(248), dest(8), sport=44203)],
             ipip("web6")),
        Case("2 264 bytes of extension headers", [pkt(dest(248), dest(8), dest(8), sport=44204)],
             drop("parse_ipv6_ext_chain_too_long")),
        Case("2 one 264-byte destination options header", [pkt(dest(264), sport=44205)],
             drop("parse_ipv6_ext_chain_too_long")),
        Case("2 hop-by-hop and 8 destination options (9 headers)",
             [pkt(IPv6ExtHdrHopByHop(), *[IPv6ExtHdrDestOpt() for _ in range(8)], sport=44206)],
             drop("parse_ipv6_ext_chain_too_long")),
        Case("2 a header whose length runs past the payload",
             [v6(set16(bytearray(bytes(IPv6(src=C6, dst=WEB6, nh=60)) + bytes([6, 4]) + bytes(6)), 4, 8))],
             drop("parse_truncated")),
        Case("2 TCP behind an unknown next header (253), no-next-header (59) or ESP (50): no L4, no service",
             [v6(bytearray(bytes(IPv6(src=C6, dst=WEB6, nh=60) / IPv6ExtHdrDestOpt(nh=nh) /
                                 TCP(sport=44207, dport=80, flags="S")))) for nh in (253, 59, 50)],
             drop("unknown_vip")),
        Case("2 the same from an ungranted source", [v6(bytearray(bytes(IPv6(src=C6_NONE, dst=WEB6, nh=60) /
                                                                       IPv6ExtHdrDestOpt(nh=253) / TCP(dport=80))))],
             drop("unknown_vip")),
        Case("2 two fragment headers (atomic)",
             [pkt(IPv6ExtHdrFragment(m=0, id=1), IPv6ExtHdrFragment(m=0, id=2), sport=44208)],
             drop("parse_ipv6_bad_ext_header")),
        Case("2 hop-by-hop after an atomic fragment header",
             [pkt(IPv6ExtHdrFragment(m=0, id=3), IPv6ExtHdrHopByHop(), sport=44209)],
             drop("parse_ipv6_bad_ext_header")),
        Case("2 a first fragment header inside the chain (destination options, fragment, TCP)",
             [pkt(IPv6ExtHdrDestOpt(), IPv6ExtHdrFragment(m=1, id=4), sport=44210)], drop("ip_fragment")),
        Case("2 a later fragment header inside the chain (hop-by-hop, fragment offset 8)",
             [pkt(IPv6ExtHdrHopByHop(), IPv6ExtHdrFragment(m=0, offset=1, id=5), sport=44211)], drop("ip_fragment")),
        Case("2 an atomic fragment deep in the chain (hop-by-hop, destination options, fragment): a whole packet",
             [pkt(IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrFragment(m=0, id=6), sport=44212)],
             ipip("web6")),
        Case("2 an atomic fragment from an ungranted source",
             [pkt(IPv6ExtHdrFragment(m=0, id=7), src=C6_NONE, sport=44213)], drop("no_grant")),
    ]


def fragment_cases():
    """Category 3: fragments, IPv4 and IPv6, from granted and ungranted sources."""
    syn = bytes(TCP(sport=44300, dport=80, flags="S", seq=1000))

    def frag4(payload, src=C4, mf=True, offset=0, id_=777, proto=6, flags=None):
        f = flags if flags is not None else ("MF" if mf else 0)
        return dc.eth() / IP(src=src, dst=WEB, id=id_, flags=f, frag=offset, proto=proto) / Raw(payload)

    def frag6(payload, src=C6, m=1, offset=0, id_=888, nh=6):
        return dc.eth() / IPv6(src=src, dst=WEB6) / IPv6ExtHdrFragment(m=m, offset=offset, id=id_, nh=nh) / \
            Raw(payload)
    fake_other = bytes(TCP(sport=44300, dport=80, flags="S"))  # "ports" in a later fragment
    return [
        Case("3 IPv4 first fragment with 0, 4, 8 and 19 bytes of TCP (too small for its header)",
             [frag4(syn[:n]) for n in (0, 4, 8, 19)], drop("parse_truncated")),
        Case("3 IPv4 first fragment with 4 bytes of UDP", [frag4(bytes(UDP(sport=44301, dport=53))[:4], proto=17)],
             drop("parse_truncated")),
        Case("3 IPv4 first fragment with the UDP header only (UDP length 100)",
             [frag4(bytes(UDP(sport=44302, dport=53, len=100)), proto=17)], drop("ip_fragment")),
        Case("3 IPv4 DF and MF both set, offset 0 (a first fragment)", [frag4(syn, flags="DF+MF")], drop("ip_fragment")),
        Case("3 IPv4 reserved flag bit set, offset 0, no MF: not a fragment, forwarded",
             [tcp(C4, WEB, 80, sport=44303, ip_flags="evil")], ipip("web")),
        Case("3 IPv4 overlapping fragments: offset 0 with the TCP header, offset 8 rewriting it",
             [frag4(syn + bytes(8), id_=901), frag4(fake_other, mf=False, offset=1, id_=901)], drop("ip_fragment")),
        Case("3 IPv4 out of order: the last fragment first, then the first",
             [frag4(bytes(16), mf=False, offset=3, id_=902), frag4(syn + bytes(4), id_=902)], drop("ip_fragment")),
        Case("3 IPv4 later fragment whose payload is a TCP header of a granted flow (granted source)",
             [frag4(fake_other, offset=2, id_=903)], drop("ip_fragment")),
        Case("3 IPv4 later fragment, the same from an ungranted source (dropped before any grant lookup)",
             [frag4(fake_other, src=C4_NONE, offset=2, id_=904)], drop("ip_fragment")),
        # A tracked flow, then fragments that claim its ports, then the flow goes on unchanged.
        Case("3 a granted flow's SYN (tracked)", [tcp(C4, WEB, 80, sport=44310, id=905)], ipip("web")),
        Case("3 ... a later fragment with its IP id, reading as the flow to another port",
             [frag4(bytes(TCP(sport=44310, dport=81)), offset=1, id_=905)], drop("ip_fragment")),
        Case("3 ... a first fragment with its IP id and ports", [frag4(bytes(TCP(sport=44310, dport=80)), id_=905)],
             drop("ip_fragment")),
        Case("3 ... the flow's next packet: the same backend, ports unchanged",
             [tcp(C4, WEB, 80, sport=44310, flags="A", seq=1001, ack=1)], ipip("web")),
        Case("3 IPv6 first fragment with 0, 4, 8 and 19 bytes of TCP", [frag6(syn[:n]) for n in (0, 4, 8, 19)],
             drop("parse_truncated")),
        Case("3 IPv6 first fragment with the UDP header only (UDP length 100)",
             [dc.eth() / IPv6(src=C6, dst=GUE6_V6) / IPv6ExtHdrFragment(m=1, id=889, nh=17) /
              Raw(bytes(UDP(sport=44320, dport=443, len=100)))], drop("ip_fragment")),
        Case("3 IPv6 overlapping fragments: offset 0 with the TCP header, offset 8 rewriting it",
             [frag6(syn + bytes(8), id_=906), frag6(fake_other, m=0, offset=1, id_=906)], drop("ip_fragment")),
        Case("3 IPv6 out of order: the last fragment first", [frag6(bytes(16), m=0, offset=3, id_=907),
                                                             frag6(syn + bytes(4), id_=907)], drop("ip_fragment")),
        Case("3 IPv6 later fragment whose payload is a TCP header of a granted flow",
             [frag6(fake_other, m=1, offset=2, id_=908)], drop("ip_fragment")),
        Case("3 an ICMP error that is itself a first fragment",
             [dc.eth() / IP(src=dc.ROUTER4, dst=WEB, flags="MF") / ICMP(type=3, code=1) /
              Raw(bytes(IP(src=WEB, dst=C4) / TCP(sport=80, dport=40001))[:28])], drop("parse_icmp_bad_inner")),
        Case("3 an ICMP error that is a later fragment", [dc.eth() / IP(src=dc.ROUTER4, dst=WEB, frag=1, proto=1) /
                                                         Raw(bytes(36))], drop("ip_fragment")),
        Case("3 an ICMP error quoting a later fragment of a granted flow",
             [icmp4_error(3, 1, inner_frag=1)], drop("parse_icmp_bad_inner")),
        Case("3 an ICMPv6 error quoting a later fragment of a granted flow",
             [icmp6_error("unreach", inner_ext=IPv6ExtHdrFragment(m=0, offset=1, id=9))],
             drop("parse_icmp_bad_inner")),
    ]


def source_cases():
    """Category 4: sources no grant names (and two inside a granted /24)."""
    v4_sources = [WEB, "192.0.2.105", dc.NODE4, "224.0.0.1", "239.255.255.250", "255.255.255.255", "192.0.2.255",
                  "198.51.100.255", "0.0.0.0", "127.0.0.1", "169.254.0.1"]
    v6_sources = ["::1", "::", "ff02::1", "ff0e::1", WEB6, dc.NODE6, "fe80::1"]
    net = ipaddress.ip_network(NET)
    return [
        Case("4 IPv4 source: a VIP (its own, another), the node, multicast, broadcast (limited, the node's /24, the "
             "clients' /24), 0.0.0.0, loopback, link-local",
             [tcp(s, WEB, 80, sport=44400) for s in v4_sources], drop("no_grant")),
        Case("4 IPv6 source: loopback, unspecified, multicast (link, global), the VIP, the node, link-local",
             [tcp(s, WEB6, 80, sport=44401) for s in v6_sources], drop("no_grant")),
        Case("4 IPv4-mapped (::ffff:C4), IPv4-compatible (::C4) and C4's bytes as IPv6 (c633:6407::) to gue4's "
             "IPv6 VIP, where C4 holds an IPv4 grant for gue4",
             [tcp(s, GUE4_V6, 443, sport=44402) for s in (f"::ffff:{C4}", f"::{C4}", "c633:6407::")],
             drop("no_grant")),
        Case("4 control: C4 to gue4's IPv4 VIP", [tcp(C4, GUE4_V4, 443, sport=44403)], gue("gue4")),
        Case("4 control: C6 to gue4's IPv6 VIP", [tcp(C6, GUE4_V6, 443, sport=44404)], gue("gue4")),
        Case("4 the IPv4-mapped source granted for gue4, to its IPv6 VIP", [tcp(MAPPED, GUE4_V6, 443, sport=44405)],
             gue("gue4")),
        Case("4 ... the same address as IPv4 to gue4's IPv4 VIP", [tcp(V4_OF_MAPPED, GUE4_V4, 443, sport=44406)],
             drop("no_grant")),
        Case(f"4 the network and broadcast addresses of the granted {NET}: a grant is the only check",
             [tcp(str(net[0]), WEB, 80, sport=44407), tcp(str(net[-1]), WEB, 80, sport=44408)], ipip("web")),
    ]


def service_and_vlan_cases():
    """Category 5: a granted source to other services; VLAN stacks."""
    net_host = str(ipaddress.ip_network(NET)[77])
    q, ad = 0x8100, 0x88A8
    ip = fix4(ip4_bytes(sport=44500))

    def tagged(tags, sport, l3=None, ethertype=0x0800):
        return eth_raw(l3 if l3 is not None else fix4(ip4_bytes(sport=sport)), ethertype, tags)
    arp = bytes(dc.arp_request(WEB))[14:]
    v6pkt = ip6_bytes(sport=44501)
    return [
        Case("5 C4 (granted web and gue4) to dsr, maglev, mix46, and gue6's UDP VIP",
             [tcp(C4, "192.0.2.105", 80, sport=44510), tcp(C4, "192.0.2.110", 80, sport=44511),
              tcp(C4, "192.0.2.103", 8080, sport=44512), udp(C4, GUE6_V4, 443, sport=44513)], drop("no_grant")),
        Case("5 C6 (granted web6, gue4, gue6) to mix64 and dsr",
             [tcp(C6, "2001:db8::104", 8080, sport=44514), tcp(C6, "2001:db8::105", 80, sport=44515)],
             drop("no_grant")),
        Case(f"5 a host of the granted {NET} to dsr", [tcp(net_host, "192.0.2.105", 80, sport=44516)],
             drop("no_grant")),
        Case("5 the granted IPv4-mapped source to web6", [tcp(MAPPED, WEB6, 80, sport=44517)], drop("no_grant")),
        Case("5 control: C4 to web's UDP VIP", [udp(C4, WEB, 53, sport=44518)], ipip("web")),
        Case("5 three or more VLAN tags: 8100x3, 88a8x3, 8100/8100/88a8, five tags; IPv6 and ARP under three",
             [tagged([(q, 1), (q, 2), (q, 3)], 44520), tagged([(ad, 1), (ad, 2), (ad, 3)], 44521),
              tagged([(q, 1), (q, 2), (ad, 3)], 44522), tagged([(ad, i) for i in range(1, 6)], 44523),
              tagged([(ad, 1), (q, 2), (q, 3)], 0, v6pkt, 0x86DD), tagged([(ad, 1), (ad, 2), (q, 3)], 0, arp, 0x0806)],
             drop("parse_vlan_too_deep")),
        Case("5 two tags, both 802.1ad (88a8/88a8)", [tagged([(ad, 10), (ad, 20)], 44530)], ipip("web")),
        Case("5 two tags, both 802.1Q (8100/8100)", [tagged([(q, 10), (q, 20)], 44531)], ipip("web")),
        Case("5 two tags, 802.1Q outside 802.1ad (8100/88a8)", [tagged([(q, 10), (ad, 20)], 44532)], ipip("web")),
        Case("5 one 802.1ad tag", [tagged([(ad, 10)], 44533)], ipip("web")),
        Case("5 the old QinQ TPID 0x9100, alone and under an 802.1ad tag",
             [tagged([(0x9100, 10)], 0, ip), tagged([(ad, 10), (0x9100, 20)], 0, ip)], drop("parse_l2_unsupported")),
    ]


def icmp_cases():
    """Category 6: ICMP errors about someone's flow; absurd MTUs."""
    t = [
        Case("6 IPv4 host unreachable about C4's flow, from a router", [icmp4_error(3, 1)], ipip("web", flow=FLOW4)),
        Case("6 IPv4 time exceeded about C4's flow", [icmp4_error(11, 0)], ipip("web", flow=FLOW4)),
        Case("6 IPv4 port unreachable about C4's UDP flow", [icmp4_error(3, 3, vport=53, proto="udp")],
             ipip("web", flow=FLOW4_UDP)),
        Case("6 IPv4 host unreachable about C4's flow, sent by an ungranted client (the quoted flow's client's "
             "grant decides)", [icmp4_error(3, 1, outer_src=C4_NONE)], ipip("web", flow=FLOW4)),
        Case("6 IPv4 host unreachable about C4's flow, sent to an address that is not the VIP it quotes",
             [icmp4_error(3, 1, outer_dst="192.0.2.200")], drop("icmp_not_allowed")),
        Case("6 IPv4 host unreachable with 1 in its unused field (not a frag-needed): no MTU to check",
             [icmp4_error(3, 1, mtu=1)], ipip("web", flow=FLOW4)),
        Case("6 IPv4 errors (unreachable, time exceeded, frag-needed 1400) about an ungranted client's flow",
             [icmp4_error(3, 1, client=C4_NONE), icmp4_error(11, 0, client=C4_NONE),
              icmp4_error(3, 4, client=C4_NONE, mtu=1400)], drop("no_grant")),
        Case("6 IPv4 unreachable sent by the granted C4 about an ungranted client's flow",
             [icmp4_error(3, 1, client=C4_NONE, outer_src=C4)], drop("no_grant")),
        Case("6 IPv4 unreachable about C4's flow to a service C4 has no grant for (maglev)",
             [icmp4_error(3, 1, vip="192.0.2.110")], drop("no_grant")),
        Case("6 IPv4 unreachable about a VIP port with no service", [icmp4_error(3, 1, vport=8081)],
             drop("unknown_vip")),
        Case("6 IPv4 unreachable quoting 4 bytes of TCP (no ports)", [icmp4_error(3, 1, quote_l4=4)],
             drop("parse_icmp_bad_inner")),
        Case("6 IPv4 unreachable quoting an IPv6 packet", [dc.eth() / IP(src=dc.ROUTER4, dst=WEB) /
                                                          ICMP(type=3, code=1) /
                                                          Raw(bytes(IPv6(src=WEB6, dst=C6) / TCP(sport=80)))],
             drop("parse_icmp_bad_inner")),
        Case("6 IPv6 unreachable and time exceeded about C6's flow",
             [icmp6_error("unreach"), icmp6_error("time")], ipip("web6", flow=FLOW6)),
        Case("6 IPv6 unreachable, time exceeded, packet-too-big 1400 about an ungranted client's flow",
             [icmp6_error("unreach", client=C6_NONE), icmp6_error("time", client=C6_NONE),
              icmp6_error("ptb", client=C6_NONE, mtu=1400)], drop("no_grant")),
        Case("6 IPv6 unreachable sent by the granted C6 about an ungranted client's flow",
             [icmp6_error("unreach", client=C6_NONE, outer_src=C6)], drop("no_grant")),
        Case("6 IPv6 unreachable quoting IPv4", [dc.eth() / IPv6(src=dc.ROUTER6, dst=WEB6) / ICMPv6DestUnreach() /
                                                Raw(bytes(IP(src=WEB, dst=C4) / TCP(sport=80)))],
             drop("parse_icmp_bad_inner")),
        # Absurd MTUs: below 576 (v4) / 1280 (v6) is dropped; above the packet is harmless (RFC 8201 4:
        # a host never raises its path MTU from a packet-too-big) and goes to the flow's backend.
        Case("6 IPv4 frag-needed about C4's flow with MTU 0, 1, 67, 575",
             [icmp4_error(3, 4, mtu=m) for m in (0, 1, 67, 575)], drop("icmp_mtu_too_small")),
        Case("6 IPv4 frag-needed about C4's flow with MTU 576 and 65535",
             [icmp4_error(3, 4, mtu=m) for m in (576, 65535)], ipip("web", flow=FLOW4)),
        Case("6 IPv6 packet-too-big about C6's flow with MTU 0, 1, 67, 1279",
             [icmp6_error("ptb", mtu=m) for m in (0, 1, 67, 1279)], drop("icmp_mtu_too_small")),
        Case("6 IPv6 packet-too-big about C6's flow with MTU 65535 and 2^32-1",
             [icmp6_error("ptb", mtu=m) for m in (65535, 0xFFFFFFFF)], ipip("web6", flow=FLOW6)),
    ]
    return t


def grant_cases():
    """Category 7's packets in the main run: each grant's source (and the source its forger
    wrote in) to its service."""
    def probe(src, service, sport):
        vip, port, proto = dc.SERVICE[service].vips[0]
        return tcp(src, vip, port, sport=sport) if proto == "tcp" else udp(src, vip, port, sport=sport)
    forwarded = {"web": ipip("web")}
    t = []
    sport = 44700
    for g in HOSTILE_GRANTS:
        if g.name in PACKET_GRANTS:
            continue
        sources = [str(ipaddress.ip_network(g.source)[0])]
        extra = {"source-edited": [h(155)], "prefix-widened-32-to-24": ["198.51.101.77"]}.get(g.name, [])
        services = [g.service] + (["web"] if g.name == "service-edited-dsr-to-web" else [])
        pairs = [(s, svc) for s in sources + extra for svc in services]
        frames = [probe(s, svc, sport + i) for i, (s, svc) in enumerate(pairs)]
        sport += 10
        if "main" in g.valid_in:
            expect, what = forwarded[g.service], "forwarded"
        else:
            expect, what = drop("no_grant"), "nothing forwarded"
        how = f"rejected as {g.expect}" if g.expect else "activated"
        t.append(Case(f"7 grant {g.name} ({how}): its source{'s' if len(frames) > 1 else ''}, {what}", frames,
                      expect))
    return t


def live_cases():
    """Run "live": three phases of frames, each one burst of LLDP (the worker's
    snapshot and clock are fresh for the burst after the one that unblocked rx) and one
    burst of cases padded with LLDP (net_pcap on a FIFO returns only full bursts).
      1: after push 1: every grant of push 1 activated or refused.
      2: after push 2: 'revoked' revoked, the issuer of 'rotated-key' removed by a key reload.
      3: after pushes 3 and 4: the replays refused, and 'short' expired."""
    def boundary(phase):
        return Case("rx burst boundary: 32 LLDP frames", [dc.lldp() for _ in range(32)],
                    drop("parse_l2_unsupported"), run="live", phase=phase)

    def live(name, frames, expect, phase):
        return Case(name, frames, expect, run="live", phase=phase)
    refused = [str(ipaddress.ip_network(g.source)[0]) for g in HOSTILE_GRANTS if g.push == 1 and g.expect]
    phases = {
        1: [live("7 the key to be rotated out: its grant forwards", [tcp(h(140), WEB, 80, sport=43000)],
                 ipip("web"), 1),
            live("7 'short' before its end", [tcp(h(141), WEB, 80, sport=43001)], ipip("web"), 1),
            live("7 'revoked' before its revocation", [tcp(h(142), WEB, 80, sport=43002)], ipip("web"), 1),
            live("7 'known'", [tcp(h(143), WEB, 80, sport=43003)], ipip("web"), 1),
            live("7 refused grants of push 1: their sources (and the one a forger wrote in)",
                 [tcp(s, WEB, 80, sport=43005) for s in refused + [h(155)]], drop("no_grant"), 1)],
        2: [live("7 key removed by a reload: the tracked flow gets resets", [
                tcp(h(140), WEB, 80, sport=43000, flags="A", seq=1001, ack=5000)], dc.resets("web", "no_grant"), 2),
            live("7 key removed by a reload: a new flow", [tcp(h(140), WEB, 80, sport=43010)], drop("no_grant"), 2),
            live("7 revoked: the tracked flow gets resets",
                 [tcp(h(142), WEB, 80, sport=43002, flags="A", seq=1001, ack=6000)], dc.resets("web", "no_grant"), 2),
            live("7 revoked: a new flow", [tcp(h(142), WEB, 80, sport=43011)], drop("no_grant"), 2),
            live("7 'known' goes on", [tcp(h(143), WEB, 80, sport=43003, flags="A", seq=1001)], ipip("web"), 2)],
        3: [live("7 after the replays: revoked, rotated out, expired, and the reused ids' sources",
                 [tcp(h(n), WEB, 80, sport=43020) for n in (142, 140, 141, 144, 145, 146)], drop("no_grant"), 3),
            live("7 'known' goes on", [tcp(h(143), WEB, 80, sport=43003, flags="A", seq=1002)], ipip("web"), 3)],
    }
    t = []
    for phase, cases in phases.items():
        t.append(boundary(phase))
        t += cases
        n = sum(len(c.inputs) for c in cases)
        assert n <= 32, f"phase {phase}: {n} frames, more than one burst"
        if n < 32:
            t.append(lldp_filler(32 - n, phase))
    return t


def cases():
    """The table, in input order. Built on call: scapy objects are mutable."""
    return (live_cases() + truncation_cases() + length_cases() + ipv6_chain_cases() + fragment_cases() +
            source_cases() + service_and_vlan_cases() + icmp_cases() + grant_cases())
