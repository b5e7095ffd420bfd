"""The data plane's golden cases (read by dataplane_golden.py): the node, its
services and grants, and a table of crafted input frames with the verdict each
must get from jitlb — an exact output frame, or the counter its drop is counted
under.

Expected frames are built here with scapy from the documented rules
(DESIGN.md, common/encap.h, lb/pipeline.h, RFC 793, 826 and 4861), never from
jitlb's output; the per-flow fields (Maglev backend, non-DF outer IPv4 id,
outer IPv6 flow label, GUE source port) come from the independent Python model
of the flow hash and Maglev in maglev_model.py.
"""
import ipaddress
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import maglev_model  # noqa: E402  (the flow hash and Maglev, written again in Python)

from scapy.all import (ARP, ICMP, IP, TCP, UDP, Dot1AD, Dot1Q, Ether, ICMPv6EchoRequest,  # noqa: E402
                       ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, ICMPv6NDOptSrcLLAddr,
                       ICMPv6PacketTooBig, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                       IPv6ExtHdrHopByHop, Padding, Raw)

# --- the node --------------------------------------------------------------------------

NODE_MAC = "02:00:00:00:00:10"
NEXT_HOP_MAC = "02:00:00:00:00:fe"
CLIENT_MAC = "02:00:00:00:00:01"
NODE4, NODE6 = "192.0.2.10", "2001:db8::10"
# /32 and /128: the outer source has no host bits, so it is the same for every flow.
OUTER4, OUTER6 = "10.255.0.1", "2001:db8:ff::1"
FLOW_HASH_SEED = 0x5EED_0F10_A7C0_FFEE
OUTER_TTL = 64
MTU = 1500
GUE_PORT = 6081  # the services' own port, not the default 6080: proves which one is used


@dataclass
class Backend:
    id: str
    address: str
    mac: Optional[str] = None
    weight: int = 1


@dataclass
class Service:
    name: str
    mode: str  # ipip, gue, l2dsr
    vips: list  # (address, port, "tcp" | "udp")
    backends: list
    table_size: int = 1009
    gue_port: int = 0
    disabled: bool = False


SERVICES = [
    Service("web", "ipip", [("192.0.2.100", 80, "tcp"), ("192.0.2.100", 53, "udp")],
            [Backend("web-1", "10.1.0.1")]),
    Service("web6", "ipip", [("2001:db8::100", 80, "tcp")], [Backend("web6-1", "2001:db8:b::1")]),
    Service("mix46", "ipip", [("192.0.2.103", 8080, "tcp")], [Backend("mix46-1", "2001:db8:b::31")]),
    Service("mix64", "ipip", [("2001:db8::104", 8080, "tcp")], [Backend("mix64-1", "10.4.0.1")]),
    Service("gue4", "gue", [("192.0.2.101", 443, "tcp"), ("2001:db8::101", 443, "tcp")],
            [Backend("gue4-1", "10.2.0.1")], gue_port=GUE_PORT),
    Service("gue6", "gue", [("2001:db8::102", 443, "udp"), ("192.0.2.102", 443, "udp")],
            [Backend("gue6-1", "2001:db8:b::21")], gue_port=GUE_PORT),
    Service("dsr", "l2dsr", [("192.0.2.105", 80, "tcp"), ("2001:db8::105", 80, "tcp")],
            [Backend("dsr-1", "10.3.0.1", mac="02:00:00:00:03:01")]),
    Service("maglev", "ipip", [("192.0.2.110", 80, "tcp")],
            [Backend(f"maglev-{i}", f"10.5.0.{i}") for i in range(1, 6)], table_size=65537),
    # VIPs without a port (3-tuple mode): every UDP packet to them, fragments included.
    Service("frag3", "ipip", [("192.0.2.130", 0, "udp"), ("2001:db8::130", 0, "udp")],
            [Backend(f"frag3-{i}", f"10.7.0.{i}") for i in range(1, 4)]),
    Service("empty", "ipip", [("192.0.2.120", 80, "tcp")], []),
    Service("off", "ipip", [("192.0.2.121", 80, "tcp")], [Backend("off-1", "10.6.0.1")], disabled=True),
]
SERVICE = {s.name: s for s in SERVICES}

# --- clients and their grants --------------------------------------------------------------

C4 = "198.51.100.7"          # granted to most services
C6 = "2001:db8:c::7"         # granted to the IPv6 services
C6_NET = "2001:db8:cc::1234"  # inside a granted /64
C4_NONE = "198.51.100.99"     # no grant at all
C4_REVOKED = "198.51.100.8"   # granted, then revoked
C4_WRONG = "198.51.100.9"     # granted for dsr only
C4_BADSIG = "198.51.100.10"   # its grant's signature does not verify
C4_EXPIRED = "198.51.100.11"  # its grant had ended before it was pushed
C4_NOSVC = "198.51.100.12"    # its grant names a service jitlb does not have
C4_SHIFT = "198.51.100.20"    # valid for the next hour: not yet valid at -10 min, ended at +2 h
C4_LONG = "198.51.100.21"     # valid from -20 h to +3 h: valid in every run
C4_LIVE = "198.51.100.30"     # a grant pushed to the running jitlb, valid for LIVE_GRANT_S
LIVE_GRANT_S = 3
MAGLEV_NET = "198.18.7.0/24"  # one /24 grant for the Maglev service
ROUTER4, ROUTER6 = "203.0.113.1", "2001:db8:e::1"


@dataclass
class GrantSpec:
    name: str
    source: str          # prefix
    service: str
    not_before_s: int    # relative to the test's start
    not_after_s: int
    revoke: bool = False         # push a revocation after it was activated
    bad_signature: bool = False  # flip the last byte of its signature before pushing
    expect_reason: Optional[str] = None  # GrantRejected reason; None: GrantActivated

    @property
    def expect_event(self):
        return "grant_rejected" if self.expect_reason else "grant_activated"


HOUR = 3600
GRANTS = [
    *[GrantSpec(f"c4-{s}", f"{C4}/32", s, -60, HOUR)
      for s in ("web", "mix46", "gue4", "gue6", "dsr", "empty", "off", "frag3")],
    *[GrantSpec(f"c6-{s}", f"{C6}/128", s, -60, HOUR) for s in ("web6", "mix64", "gue4", "gue6", "dsr", "frag3")],
    GrantSpec("c6net-web6", "2001:db8:cc::/64", "web6", -60, HOUR),
    GrantSpec("revoked", f"{C4_REVOKED}/32", "web", -60, HOUR, revoke=True),
    GrantSpec("wrong-service", f"{C4_WRONG}/32", "dsr", -60, HOUR),
    GrantSpec("bad-signature", f"{C4_BADSIG}/32", "web", -60, HOUR, bad_signature=True,
              expect_reason="bad_signature"),
    GrantSpec("already-expired", f"{C4_EXPIRED}/32", "web", -2 * HOUR, -HOUR, expect_reason="expired"),
    GrantSpec("unknown-service", f"{C4_NOSVC}/32", "nosuch", -60, HOUR, expect_reason="unknown_service"),
    GrantSpec("shift", f"{C4_SHIFT}/32", "web", -60, HOUR),
    GrantSpec("long", f"{C4_LONG}/32", "web", -20 * HOUR, 3 * HOUR),
    GrantSpec("maglev-net", MAGLEV_NET, "maglev", -60, HOUR),
]

# The runs, in order, each one jitlb process over the same state file: its
# clock shift and whether it has an exception port. The grants are pushed
# during the first.
RUNS = {
    "live": (0, False),
    "main": (0, True),
    "clock-10min": (-10 * 60 * 1000, False),  # C4_SHIFT's grant has not started yet
    "clock+2h": (2 * HOUR * 1000, False),     # C4_SHIFT's grant ended while jitlb was down
}

# --- the models ---------------------------------------------------------------------------------


def flow_hash(flow):
    """flow: (src, dst, sport, dport, proto) as the parser reads it (client -> VIP)."""
    src, dst, sport, dport, proto = flow
    return maglev_model.flow_hash(ipaddress.ip_address(src), ipaddress.ip_address(dst), sport, dport,
                                  proto, FLOW_HASH_SEED)


_tables = {}


def maglev_pick(backends, table_size, flow):
    """The backend Maglev picks for `flow` among `backends` (the Python model)."""
    key = (tuple((b.id, b.weight) for b in backends), table_size)
    if key not in _tables:
        _tables[key] = maglev_model.maglev_table(list(key[0]), table_size)
    return backends[maglev_model.lookup(_tables[key], flow_hash(flow))]


def maglev_backend(service, flow):
    svc = SERVICE[service]
    return maglev_pick(svc.backends, svc.table_size, flow)


# Run "live" changes the Maglev service's backends while flows are established:
# maglev-5 goes, maglev-6 comes.
MAGLEV_AFTER = [Backend(f"maglev-{i}", f"10.5.0.{i}") for i in (1, 2, 3, 4, 6)]


def after_change(flow, established):
    """DESIGN.md: a tracked flow keeps its backend while it exists; a flow whose backend
    went, and every new flow, follow the new table."""
    before = maglev_backend("maglev", flow)
    after = maglev_pick(MAGLEV_AFTER, SERVICE["maglev"].table_size, flow)
    if established and before.id in {b.id for b in MAGLEV_AFTER}:
        return before
    return after


def l3_of(frame):
    """The frame's (outer) IP packet, without Ethernet padding, and its scapy layer."""
    ip = frame.getlayer(IP) if frame.haslayer(IP) else frame.getlayer(IPv6)
    raw = bytes(ip)
    length = ip.len if ip.version == 4 else 40 + ip.plen
    return ip, raw[:length]


THREE_TUPLE = {(a, {"tcp": 6, "udp": 17}[p]) for s in SERVICES for a, port, p in s.vips if port == 0}


def flow_of(frame):
    """The 5-tuple the parser reads from a client frame (not ICMP errors: give those explicitly);
    to a VIP without a port, (src, dst, 0, 0, proto) for every packet, fragments included."""
    ip, _ = l3_of(frame)
    proto = ip.proto if ip.version == 4 else (ip[IPv6ExtHdrFragment].nh if ip.haslayer(IPv6ExtHdrFragment) else ip.nh)
    if (ip.dst, proto) in THREE_TUPLE:
        return (ip.src, ip.dst, 0, 0, proto)
    l4 = ip.payload
    while not isinstance(l4, (TCP, UDP)):
        if not l4:  # scapy's NoPayload is its own payload: a frame it does not dissect to L4
            raise ValueError(f"no TCP or UDP header scapy can find in {frame.summary()}")
        l4 = l4.payload
    proto = 6 if isinstance(l4, TCP) else 17
    return (ip.src, ip.dst, l4.sport, l4.dport, proto)


# --- expectations ----------------------------------------------------------------------------------


@dataclass
class Out:
    """Forwarded or answered: `build(input frame)` is the exact output frame (bytes), or
    (frame in place of the input, [frames sent after the input's rx burst])."""
    what: str  # for the report: "ipip -> 10.1.0.1", "arp reply", ...
    build: Callable
    counters: tuple = ()      # counted besides tx: forwarded, arp_replies, nd_replies
    flow: Optional[tuple] = None  # ICMP errors: the flow they belong to (no connection entry)
    more_counters: Optional[Callable] = None  # frame -> counters that depend on the frame


@dataclass
class Drop:
    """Dropped, counted under these counters (stats JSON names)."""
    counters: tuple
    tracked: bool = False  # dropped after the connection table took the flow (e.g. too_big)


def drop(*counters, tracked=False):
    return Drop(tuple(counters), tracked)


@dataclass
class ToKernel:
    """Handed, unchanged, to the exception port (the kernel's side of the node)."""
    counters: tuple = ("to_exception",)


@dataclass
class FromKernel:
    """The inputs are the kernel's frames, read from the exception port: each goes out
    of the data port unchanged (by whichever tx queue jitlb relays them)."""
    counters: tuple = ("from_exception",)


EXCEPTION_ALLOW = ["arp", "nd", "icmp", "ssh"]  # the runs with an exception port


def encap_frame(inner, backend, kind, flow, gue_port=GUE_PORT):
    """common/encap.h: the outer headers in front of the client's IP packet."""
    h = flow_hash(flow)
    v4_inner = inner[0] >> 4 == 4
    tos = inner[1] if v4_inner else ((inner[0] & 0x0F) << 4) | (inner[1] >> 4)
    df = bool(inner[6] & 0x40) if v4_inner else True
    eth = Ether(dst=NEXT_HOP_MAC, src=NODE_MAC)
    next_proto = 17 if kind == "gue" else (4 if v4_inner else 41)
    if ipaddress.ip_address(backend).version == 4:
        outer = IP(src=OUTER4, dst=backend, tos=tos, ttl=OUTER_TTL, flags="DF" if df else 0,
                   id=0 if df else (h >> 48) & 0xFFFF, proto=next_proto)
    else:
        outer = IPv6(src=OUTER6, dst=backend, tc=tos, fl=(h >> 32) & 0xFFFFF, hlim=OUTER_TTL, nh=next_proto)
    if kind == "gue":
        udp = UDP(sport=0xC000 | ((h >> 16) & 0x3FFF), dport=gue_port)
        if isinstance(outer, IP):
            udp.chksum = 0  # RFC 768: no checksum over IPv4
        return bytes(eth / outer / udp / Raw(inner))
    return bytes(eth / outer / Raw(inner))


def _encap(kind, service, flow=None):
    def build(frame):
        f = flow or flow_of(frame)
        return encap_frame(l3_of(frame)[1], maglev_backend(service, f).address, kind, f, SERVICE[service].gue_port)
    return Out(f"{kind} -> Maglev's pick", build, ("forwarded",), flow)


def ipip(service, flow=None):
    """IP-in-IP (or IPv6-in-IPv6, or mixed) to the backend Maglev picks for the flow
    (`flow`: the flow an ICMP error is about)."""
    return _encap("ipip", service, flow)


def gue(service):
    """GUE variant 1 to the backend Maglev picks: outer UDP to the service's port."""
    return _encap("gue", service)


def ipip_after_change(established):
    """IP-in-IP to the Maglev service's backend after MAGLEV_AFTER replaced its backends."""
    def build(frame):
        f = flow_of(frame)
        return encap_frame(l3_of(frame)[1], after_change(f, established).address, "ipip", f)

    def rehashed(frame):
        gone = maglev_backend("maglev", flow_of(frame)).id not in {b.id for b in MAGLEV_AFTER}
        return ("conn_rehashed",) if established and gone else ()
    return Out("ipip -> the backend after the change", build, ("forwarded",), None, rehashed)


def mac_bytes(mac):
    return bytes.fromhex(mac.replace(":", ""))


def l2dsr(service):
    """L2 direct server return: the backend's MAC as destination, the port's as source;
    every other byte (VLAN tags included) as it came."""
    def build(frame):
        return mac_bytes(maglev_backend(service, flow_of(frame)).mac) + mac_bytes(NODE_MAC) + bytes(frame)[12:]
    return Out("l2dsr: MACs rewritten", build, ("forwarded",))


def too_big_answer(mtu):
    """An ICMP fragmentation-needed (IPv4, DF) / packet-too-big (IPv6) from the VIP back to
    the client, advertising `mtu` (the port's MTU minus the encapsulation), quoting as much
    of the client's packet as fits in 576 / 1280 bytes."""
    def build(frame):
        ip, inner = l3_of(frame)
        if ip.version == 4:
            reply = IP(src=ip.dst, dst=ip.src, ttl=64, id=0, flags=0) / ICMP(type=3, code=4, nexthopmtu=mtu) / \
                inner[:576 - 28]
        else:
            reply = IPv6(src=ip.dst, dst=ip.src, hlim=64) / ICMPv6PacketTooBig(mtu=mtu) / inner[:1280 - 48]
        return bytes(Ether(dst=CLIENT_MAC, src=NODE_MAC) / reply)
    return Out(f"too big: ICMP to the client, MTU {mtu}", build, ("too_big", "too_big_sent"))


def answer(what, frame, counter):
    return Out(what, lambda _: bytes(frame), (counter,))


def rst(src, dst, sport, dport, seq, ack, with_ack):
    """A bare TCP reset (no options, window 0), IPv4 with DF, TTL / hop limit 64."""
    ip = IP(src=src, dst=dst, flags="DF", id=0, ttl=64) if ipaddress.ip_address(src).version == 4 \
        else IPv6(src=src, dst=dst, hlim=64)
    return ip / TCP(sport=sport, dport=dport, seq=seq, ack=ack if with_ack else 0, flags="RA" if with_ack else "R",
                    window=0)


def resets(service, grant_state):
    """DESIGN.md: a packet of a tracked TCP flow whose grant is no longer valid gets a
    reset towards the client (in place of the packet, from the VIP: RFC 793's
    <SEQ=SEG.ACK><CTL=RST>, or <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK> without ACK) and
    one towards the backend (the client's own RST, seq = its seq, through the service's
    forwarding mode), which leaves after the rx burst the packet came in."""
    def build(frame):
        ip, _ = l3_of(frame)
        t = frame[TCP]
        has_ack = "A" in t.flags
        seg_len = len(bytes(t.payload)) + (1 if t.flags & 0x03 else 0)
        vlans = sum(isinstance(layer, (Dot1Q, Dot1AD)) for layer in frame.iterpayloads())
        l2 = bytes(frame)[:14 + 4 * vlans]  # Ethernet and VLAN tags
        to_client = (l2[6:12] + mac_bytes(NODE_MAC) + l2[12:] +
                     bytes(rst(ip.dst, ip.src, t.dport, t.sport, t.ack if has_ack else 0, t.seq + seg_len,
                               not has_ack)))
        client_rst = bytes(rst(ip.src, ip.dst, t.sport, t.dport, t.seq, 0, False))
        flow = flow_of(frame)
        backend = maglev_backend(service, flow)
        svc = SERVICE[service]
        if svc.mode == "l2dsr":
            to_backend = mac_bytes(backend.mac) + mac_bytes(NODE_MAC) + l2[12:] + client_rst
        else:
            to_backend = encap_frame(client_rst, backend.address, svc.mode, flow, svc.gue_port)
        return to_client, [to_backend]
    return Out(f"{grant_state}: resets to client and backend", build, (grant_state, "resets_sent", "resets_sent"))


# --- input builders -----------------------------------------------------------------------------------


def eth(vlans=()):
    e = Ether(src=CLIENT_MAC, dst=NODE_MAC)
    for i, v in enumerate(vlans):
        e = e / (Dot1AD(vlan=v) if i + 1 < len(vlans) else Dot1Q(vlan=v))
    return e


def ip_for(src, dst, **kw):
    if ipaddress.ip_address(src).version == 4:
        return IP(src=src, dst=dst, **{k: v for k, v in kw.items() if k in ("tos", "flags", "id", "ttl", "frag")})
    return IPv6(src=src, dst=dst, **{k: v for k, v in kw.items() if k in ("tc", "fl", "hlim")})


def tcp(src, dst, dport, sport=40001, flags="S", payload=b"", vlans=(), seq=1000, ack=0, ip_flags="DF", **ipkw):
    ipkw["flags"] = ip_flags  # IPv4 only; `flags` are TCP's
    return (eth(vlans) / ip_for(src, dst, **ipkw) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack) /
            Raw(payload))


def udp(src, dst, dport, sport=40001, payload=b"hello", vlans=(), **ipkw):
    return eth(vlans) / ip_for(src, dst, **ipkw) / UDP(sport=sport, dport=dport) / Raw(payload)


def arp_request(target, sender=C4, vlans=()):
    e = eth(vlans)
    e.dst = "ff:ff:ff:ff:ff:ff"
    return e / ARP(op=1, hwsrc=CLIENT_MAC, psrc=sender, hwdst="00:00:00:00:00:00", pdst=target)


def arp_reply_for(target, sender=C4, vlans=()):
    e = Ether(dst=CLIENT_MAC, src=NODE_MAC)
    for i, v in enumerate(vlans):
        e = e / (Dot1AD(vlan=v) if i + 1 < len(vlans) else Dot1Q(vlan=v))
    return e / ARP(op=2, hwsrc=NODE_MAC, psrc=target, hwdst=CLIENT_MAC, pdst=sender)


def solicited_node(addr):
    low = ipaddress.IPv6Address(addr).packed[13:]
    group = ipaddress.IPv6Address(b"\xff\x02" + bytes(9) + b"\x01\xff" + low)
    return str(group), "33:33:" + ":".join(f"{b:02x}" for b in group.packed[12:])


def neighbour_solicitation(target, src=C6, hlim=255, option=True, unicast=None):
    """To the target's solicited-node group, or unicast (True: to the target itself)."""
    group, group_mac = solicited_node(target)
    if unicast:
        group, group_mac = target if unicast is True else unicast, NODE_MAC
    ns = Ether(src=CLIENT_MAC, dst=group_mac) / IPv6(src=src, dst=group, hlim=hlim) / ICMPv6ND_NS(tgt=target)
    return ns / ICMPv6NDOptSrcLLAddr(lladdr=CLIENT_MAC) if option else ns


def neighbour_advertisement(target, to=C6):
    """RFC 4861 7.2.4: solicited + override to the solicitor; to all-nodes, override only, after DAD."""
    dad = to == "::"
    return (Ether(dst="33:33:00:00:00:01" if dad else CLIENT_MAC, src=NODE_MAC) /
            IPv6(src=target, dst="ff02::1" if dad else to, hlim=255) /
            ICMPv6ND_NA(R=0, S=0 if dad else 1, O=1, tgt=target) /
            ICMPv6NDOptDstLLAddr(lladdr=NODE_MAC))


def icmp_frag_needed(mtu, vip="192.0.2.100", client=C4, sport=80, dport=40001):
    """A router's 'fragmentation needed' about the backend's reply vip:sport -> client:dport."""
    quote = bytes(IP(src=vip, dst=client, flags="DF") / TCP(sport=sport, dport=dport, flags="SA"))[:28]
    return eth() / IP(src=ROUTER4, dst=vip) / ICMP(type=3, code=4, nexthopmtu=mtu) / Raw(quote)


def icmp6_too_big(mtu, vip="2001:db8::100", client=C6, sport=80, dport=40001):
    quote = bytes(IPv6(src=vip, dst=client) / TCP(sport=sport, dport=dport, flags="SA"))
    return eth() / IPv6(src=ROUTER6, dst=vip) / ICMPv6PacketTooBig(mtu=mtu) / Raw(quote)


def lldp():
    return Ether(src=CLIENT_MAC, dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(bytes(46))


def raw_frame(l3_bytes, ethertype=0x0800, vlans=()):
    e = eth(vlans)
    e.lastlayer().type = ethertype
    return Ether(bytes(e / Raw(l3_bytes)))


def ipv4_bytes():
    """A well-formed IPv4 TCP SYN to web from C4, as bytes to break."""
    return bytearray(bytes(IP(src=C4, dst="192.0.2.100", flags="DF") / TCP(sport=40001, dport=80, flags="S")))


def with_ipv4_checksum(b):
    b[10:12] = b"\0\0"
    s = sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, (b[0] & 15) * 4, 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    b[10:12] = (~s & 0xFFFF).to_bytes(2, "big")
    return bytes(b)


def malformed(reason):
    """A frame the parser refuses with DropReason `reason` (common/packet.h)."""
    b = ipv4_bytes()
    if reason == "truncated_ethernet":
        return Raw(bytes(eth())[:10])  # not even an Ethernet header
    if reason == "truncated_tcp":  # IP total length leaves 10 bytes of the TCP header
        b = b[:30]
        b[2:4] = (30).to_bytes(2, "big")
        return raw_frame(with_ipv4_checksum(b))
    if reason == "l2_unsupported":  # LLDP
        return raw_frame(bytes(30), ethertype=0x88CC)
    if reason == "vlan_too_deep":
        return tcp(C4, "192.0.2.100", 80, vlans=(10, 20, 30))
    if reason == "ip_bad_version":  # ethertype IPv4, version 6
        b[0] = 0x65
        return raw_frame(bytes(b))
    if reason == "ipv4_bad_ihl":
        b[0] = 0x44
        return raw_frame(bytes(b))
    if reason == "ipv4_bad_total_length":
        b[2:4] = (16).to_bytes(2, "big")
        return raw_frame(with_ipv4_checksum(b))
    if reason == "ipv4_bad_checksum":
        b = bytearray(with_ipv4_checksum(b))
        b[10] ^= 0x01
        return raw_frame(bytes(b))
    if reason == "ipv6_ext_chain_too_long":
        chain = IPv6ExtHdrDestOpt()
        for _ in range(8):
            chain = chain / IPv6ExtHdrDestOpt()
        return eth() / IPv6(src=C6, dst="2001:db8::100") / chain / TCP(sport=40001, dport=80)
    if reason == "ipv6_bad_ext_header":  # hop-by-hop after another header
        return (eth() / IPv6(src=C6, dst="2001:db8::100") / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() /
                TCP(sport=40001, dport=80))
    if reason == "tcp_bad_offset":
        return eth() / IP(src=C4, dst="192.0.2.100") / TCP(sport=40001, dport=80, dataofs=4)
    if reason == "udp_bad_length":
        return eth() / IP(src=C4, dst="192.0.2.100") / UDP(sport=40001, dport=53, len=200) / Raw(b"0123456789")
    if reason == "icmp_bad_inner":  # an error quoting an ICMP echo: no ports to find the flow by
        quote = bytes(IP(src="192.0.2.100", dst=C4) / ICMP(type=8))
        return eth() / IP(src=ROUTER4, dst="192.0.2.100") / ICMP(type=3, code=1) / Raw(quote)
    raise ValueError(reason)


# --- the table ------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    inputs: list  # scapy frames, in order
    expect: object  # Out, Drop, ToKernel or FromKernel, for every input
    run: str = "main"  # a key of RUNS
    sets: Optional[str] = None  # "maglev": reported with the spread over the backends
    phase: int = 0  # run "live": which of its three phases (see cases())
    outputs: list = field(default_factory=list)  # filled by the runner: the expected frames

    def __post_init__(self):
        # Built and dissected again, so that every length and checksum field holds
        # its value; a frame too short for Ethernet stays raw bytes.
        self.inputs = [Ether(bytes(f)) if isinstance(f, Ether) else bytes(f) for f in self.inputs]


WEB, WEB6 = "192.0.2.100", "2001:db8::100"
BIG = 1480 - 40  # TCP payload that makes a 1480-byte IPv4 packet: 1500 with the outer header


def cases():
    """The table. Built on call: scapy objects are mutable."""
    t = [
        # Grants: who may pass.
        Case("grant valid (/32): TCP SYN -> web, IPIP v4-in-v4", [tcp(C4, WEB, 80)], ipip("web")),
        Case("no grant", [tcp(C4_NONE, WEB, 80)], drop("no_grant")),
        Case("grant revoked after push", [tcp(C4_REVOKED, WEB, 80)], drop("no_grant")),
        Case("grant for another service (dsr) -> web", [tcp(C4_WRONG, WEB, 80)], drop("no_grant")),
        Case("... the same grant on its own service", [tcp(C4_WRONG, "192.0.2.105", 80)], l2dsr("dsr")),
        Case("grant with a bad signature (rejected)", [tcp(C4_BADSIG, WEB, 80)], drop("no_grant")),
        Case("grant already expired when pushed (rejected)", [tcp(C4_EXPIRED, WEB, 80)], drop("no_grant")),
        Case("grant for a service jitlb lacks (rejected)", [tcp(C4_NOSVC, WEB, 80)], drop("no_grant")),
        Case("grant valid in every run (main)", [tcp(C4_LONG, WEB, 80, sport=41000)], ipip("web")),
        Case("grant valid now (the one the clock-shifted runs test)", [tcp(C4_SHIFT, WEB, 80, sport=41001)], ipip("web")),
        Case("grant not yet valid (clock -10 min)", [tcp(C4_SHIFT, WEB, 80, sport=41002)],
             drop("grant_not_yet_valid"), run="clock-10min"),
        Case("grant valid in every run (clock -10 min)", [tcp(C4_LONG, WEB, 80, sport=41003)], ipip("web"),
             run="clock-10min"),
        Case("ICMP echo to the node's own address, no exception port", [eth() / IP(src=C4, dst=NODE4) / ICMP(type=8)],
             drop("exception_denied"), run="clock-10min"),
        Case("grant ended while jitlb was down (clock +2 h): swept at start",
             [tcp(C4_SHIFT, WEB, 80, sport=41004)], drop("no_grant"), run="clock+2h"),
        Case("grant valid in every run (clock +2 h)", [tcp(C4_LONG, WEB, 80, sport=41005)], ipip("web"),
             run="clock+2h"),
        Case("grant for an IPv6 /64 covers an address in it", [tcp(C6_NET, WEB6, 80)], ipip("web6")),

        # IP-in-IP, every family combination.
        Case("IPIP v4-in-v4: UDP, no DF, DSCP/ECN 0xb9 (outer id from the flow hash)",
             [udp(C4, WEB, 53, flags=0, tos=0xB9, id=4242)], ipip("web")),
        Case("IPIP v4-in-v4: 802.1Q-tagged input, tag not carried", [tcp(C4, WEB, 80, sport=40002, vlans=(100,))],
             ipip("web")),
        Case("IPIP v4-in-v4: QinQ-tagged input, tags not carried",
             [tcp(C4, WEB, 80, sport=40003, vlans=(200, 100))], ipip("web")),
        Case("IPIP v4-in-v4: Ethernet padding not carried",
             [tcp(C4, WEB, 80, sport=40004) / Padding(b"\0" * 6)], ipip("web")),
        Case("IPIP v4-in-v4: one flow, 3 packets (1 new + 2 connection hits)",
             [tcp(C4, WEB, 80, sport=40005, flags="S"), tcp(C4, WEB, 80, sport=40005, flags="A", payload=b"GET /"),
              tcp(C4, WEB, 80, sport=40005, flags="FA")], ipip("web")),
        Case("IPIP v4-in-v4: 1480-byte inner packet fits the 1500 MTU",
             [tcp(C4, WEB, 80, sport=40006, flags="A", payload=bytes(BIG))], ipip("web")),
        Case("IPIP v4-in-v4: 1481-byte inner packet with DF: frag-needed to the client, MTU 1480",
             [tcp(C4, WEB, 80, sport=40007, flags="A", payload=bytes(BIG + 1))], too_big_answer(1480)),
        Case("IPIP v4-in-v4: 1481-byte inner packet without DF is dropped (not fragmented)",
             [tcp(C4, WEB, 80, sport=40017, flags="A", ip_flags=0, payload=bytes(BIG + 1))],
             drop("too_big", tracked=True)),
        Case("IPIP v6-in-v6: traffic class 0x28, flow label 0x12345",
             [tcp(C6, WEB6, 80, tc=0x28, fl=0x12345)], ipip("web6")),
        Case("IPIP v6-in-v6: 1460-byte inner packet fits the 1500 MTU",
             [tcp(C6, WEB6, 80, sport=40008, flags="A", payload=bytes(1460 - 60))], ipip("web6")),
        Case("IPIP v6-in-v6: 1461-byte inner packet: packet-too-big to the client, MTU 1460",
             [tcp(C6, WEB6, 80, sport=40009, flags="A", payload=bytes(1461 - 60))], too_big_answer(1460)),
        Case("IPIP v4-in-v6", [tcp(C4, "192.0.2.103", 8080, tos=0x10)], ipip("mix46")),
        Case("IPIP v6-in-v4 (outer DF always set)", [tcp(C6, "2001:db8::104", 8080)], ipip("mix64")),

        # GUE: outer UDP to the service's port, the inner IP packet as payload.
        Case("GUE over IPv4: v4 inner", [tcp(C4, "192.0.2.101", 443, sport=40010)], gue("gue4")),
        Case("GUE over IPv4: v6 inner", [tcp(C6, "2001:db8::101", 443, sport=40011)], gue("gue4")),
        Case("GUE over IPv6 (UDP checksum): v6 inner", [udp(C6, "2001:db8::102", 443, sport=40012)], gue("gue6")),
        Case("GUE over IPv6 (UDP checksum): v4 inner, VLAN-tagged",
             [udp(C4, "192.0.2.102", 443, sport=40013, vlans=(7,))], gue("gue6")),

        # L2 DSR: only the two MACs change.
        Case("L2 DSR v4", [tcp(C4, "192.0.2.105", 80, sport=40014)], l2dsr("dsr")),
        Case("L2 DSR v6", [tcp(C6, "2001:db8::105", 80, sport=40015)], l2dsr("dsr")),
        Case("L2 DSR v4, VLAN tag kept", [tcp(C4, "192.0.2.105", 80, sport=40016, vlans=(300,))], l2dsr("dsr")),

        # ICMP errors follow their flow (client -> VIP) to its backend.
        Case("ICMP frag-needed (MTU 1400) about a granted flow -> its backend",
             [icmp_frag_needed(1400)], ipip("web", flow=(C4, WEB, 40001, 80, 6))),
        Case("ICMP frag-needed with MTU 500 (< 576)", [icmp_frag_needed(500)], drop("icmp_mtu_too_small")),
        Case("ICMPv6 packet-too-big (MTU 1280) about a granted flow -> its backend",
             [icmp6_too_big(1280)], ipip("web6", flow=(C6, WEB6, 40001, 80, 6))),
        Case("ICMPv6 packet-too-big with MTU 1000 (< 1280)", [icmp6_too_big(1000)], drop("icmp_mtu_too_small")),
        Case("ICMP frag-needed about an ungranted flow", [icmp_frag_needed(1400, client=C4_NONE)], drop("no_grant")),

        # ARP and neighbour discovery for the node's addresses and VIPs.
        Case("ARP request for the node address", [arp_request(NODE4)],
             answer("arp reply", arp_reply_for(NODE4), "arp_replies")),
        Case("ARP request for a VIP", [arp_request(WEB)], answer("arp reply", arp_reply_for(WEB), "arp_replies")),
        Case("ARP request for a VIP, VLAN-tagged (tag kept)", [arp_request("192.0.2.110", vlans=(42,))],
             answer("arp reply", arp_reply_for("192.0.2.110", vlans=(42,)), "arp_replies")),
        Case("ARP request for an address not ours", [arp_request("192.0.2.99")], drop("not_for_us")),
        Case("NS for a v6 VIP -> solicited NA", [neighbour_solicitation(WEB6)],
             answer("neighbour advertisement", neighbour_advertisement(WEB6), "nd_replies")),
        Case("NS for the node's v6 address from :: (DAD) -> NA to all-nodes",
             [neighbour_solicitation(NODE6, src="::", option=False)],
             answer("neighbour advertisement", neighbour_advertisement(NODE6, to="::"), "nd_replies")),
        Case("NS to a VIP with hop limit 64 (RFC 4861: must be 255)",
             [neighbour_solicitation(WEB6, hlim=64, unicast=True)], drop("not_for_us")),
        Case("NS for another address, unicast to a VIP", [neighbour_solicitation("2001:db8::999", unicast=WEB6)],
             drop("not_for_us")),
        Case("NS for another address, multicast -> the kernel (nd allowed)",
             [neighbour_solicitation("2001:db8::999")], ToKernel()),
        Case("ARP reply to the node -> the kernel (arp allowed)",
             [eth() / ARP(op=2, hwsrc=CLIENT_MAC, psrc=C4, hwdst=NODE_MAC, pdst=NODE4)], ToKernel()),

        # Neither a service nor ours to forward.
        Case("unknown VIP address", [tcp(C4, "192.0.2.200", 80)], drop("unknown_vip")),
        Case("VIP address, port without a service", [tcp(C4, WEB, 8081)], drop("unknown_vip")),
        Case("VIP address, UDP to a TCP-only port", [udp(C4, WEB, 80)], drop("unknown_vip")),
        Case("TCP to the node's own address (ssh, allowed) -> the kernel", [tcp(C4, NODE4, 22)], ToKernel()),
        Case("TCP to the node's own address (bgp, not allowed)", [tcp(C4, NODE4, 179)], drop("exception_denied")),
        Case("UDP to the node's own address (nothing allows it)", [udp(C4, NODE4, 161)], drop("exception_denied")),
        Case("ICMP echo to the node's own address -> the kernel",
             [eth() / IP(src=C4, dst=NODE4) / ICMP(type=8)], ToKernel()),
        Case("ICMPv6 echo to the node's own address -> the kernel",
             [eth() / IPv6(src=C6, dst=NODE6) / ICMPv6EchoRequest()], ToKernel()),
        Case("the kernel's frames (echo reply, ssh SYN-ACK, ARP request) -> out of the data port",
             [Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=NODE4, dst=C4) / ICMP(type=0),
              Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=NODE4, dst=C4) / TCP(sport=22, dport=40001, flags="SA"),
              Ether(src=NODE_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=NODE_MAC, psrc=NODE4, pdst=C4)],
             FromKernel()),
        Case("ICMP echo to a VIP", [eth() / IP(src=C4, dst=WEB) / ICMP(type=8)], drop("icmp_not_allowed")),
        Case("ICMPv6 echo to a VIP", [eth() / IPv6(src=C6, dst=WEB6) / ICMPv6EchoRequest()], drop("icmp_not_allowed")),
        Case("service without backends", [tcp(C4, "192.0.2.120", 80)], drop("service_down")),
        Case("service disabled", [tcp(C4, "192.0.2.121", 80)], drop("service_down")),

        # Fragments are not reassembled.
        Case("IPv4 first fragment", [eth() / IP(src=C4, dst=WEB, flags="MF", proto=6) /
                                     Raw(bytes(TCP(sport=40020, dport=80)) + bytes(64))], drop("ip_fragment")),
        Case("IPv4 later fragment", [eth() / IP(src=C4, dst=WEB, frag=100, proto=6) / Raw(bytes(64))],
             drop("ip_fragment")),
        Case("IPv6 first fragment", [eth() / IPv6(src=C6, dst=WEB6) / IPv6ExtHdrFragment(m=1, id=7) /
                                     TCP(sport=40021, dport=80) / Raw(bytes(64))], drop("ip_fragment")),
        # A VIP without a port (3-tuple mode) takes fragments: all of a datagram, and
        # whole datagrams of the same source, to the one backend its (source, VIP, UDP) hashes to.
        Case("3-tuple VIP: a UDP datagram in three IPv4 fragments, then a whole one -> one backend",
             [eth() / IP(src=C4, dst="192.0.2.130", flags="MF", proto=17, id=31) /
              Raw(bytes(UDP(sport=40030, dport=5353, len=8 + 96)) + bytes(40)),
              eth() / IP(src=C4, dst="192.0.2.130", flags="MF", frag=6, proto=17, id=31) / Raw(bytes(32)),
              eth() / IP(src=C4, dst="192.0.2.130", frag=10, proto=17, id=31) / Raw(bytes(24)),
              udp(C4, "192.0.2.130", 9999, sport=40031)], ipip("frag3")),
        Case("3-tuple VIP: IPv6 first and last fragments -> one backend",
             [eth() / IPv6(src=C6, dst="2001:db8::130") / IPv6ExtHdrFragment(m=1, id=32, nh=17) /
              Raw(bytes(UDP(sport=40032, dport=5353, len=8 + 80)) + bytes(40)),
              eth() / IPv6(src=C6, dst="2001:db8::130") / IPv6ExtHdrFragment(m=0, offset=6, id=32, nh=17) /
              Raw(bytes(40))], ipip("frag3")),
        Case("3-tuple VIP: fragments from a source without a grant",
             [eth() / IP(src=C4_NONE, dst="192.0.2.130", flags="MF", proto=17, id=33) /
              Raw(bytes(UDP(sport=40033, dport=53, len=8 + 96)) + bytes(40)),
              eth() / IP(src=C4_NONE, dst="192.0.2.130", frag=6, proto=17, id=33) / Raw(bytes(48))],
             drop("no_grant")),
        Case("3-tuple VIP: TCP to a UDP-only VIP without a port", [tcp(C4, "192.0.2.130", 80)], drop("unknown_vip")),
        Case("IPv6 atomic fragment (offset 0, no more): a whole packet, forwarded",
             [eth() / IPv6(src=C6, dst=WEB6) / IPv6ExtHdrFragment(m=0, id=8) / TCP(sport=40022, dport=80, flags="S")],
             ipip("web6")),

        # The parser's drop reasons, one frame each.
        *[Case(f"malformed: {r}", [malformed(r)], drop(f"parse_{counter}")) for r, counter in [
            ("truncated_ethernet", "truncated"),
            ("truncated_tcp", "truncated"),
            ("l2_unsupported", "l2_unsupported"),
            ("vlan_too_deep", "vlan_too_deep"),
            ("ip_bad_version", "ip_bad_version"),
            ("ipv4_bad_ihl", "ipv4_bad_ihl"),
            ("ipv4_bad_total_length", "ipv4_bad_total_length"),
            ("ipv4_bad_checksum", "ipv4_bad_checksum"),
            ("ipv6_ext_chain_too_long", "ipv6_ext_chain_too_long"),
            ("ipv6_bad_ext_header", "ipv6_bad_ext_header"),
            ("tcp_bad_offset", "tcp_bad_offset"),
            ("udp_bad_length", "udp_bad_length"),
            ("icmp_bad_inner", "icmp_bad_inner"),
        ]],
    ]
    # Run "live", three phases through a FIFO. Each is one burst of 32 LLDP
    # frames and one of 32 case frames: the worker loads its service snapshot
    # and clock before rx_burst, which blocks on the FIFO, so the burst after
    # the one that unblocks it is read with fresh ones, and a full burst never
    # waits inside rx_burst for the next phase.
    #  1: while a short grant is valid; flows to the Maglev service.
    #  2: after jitlb posted the grant's GrantExpired.
    #  3: after the Maglev service's backends changed (MAGLEV_AFTER).
    established, fresh = live_maglev_flows()
    boundary = "rx burst boundary: 32 LLDP frames"
    t += [
        Case(boundary, [lldp() for _ in range(32)], drop("parse_l2_unsupported"), run="live", phase=1),
        Case("grant valid until its end: 16 new flows", [tcp(C4_LIVE, WEB, 80, sport=42000 + i) for i in range(16)],
             ipip("web"), run="live", phase=1),
        Case("Maglev: 16 flows before a change of backends", [tcp(*f) for f in established], ipip("maglev"),
             run="live", phase=1),
        Case(boundary, [lldp() for _ in range(32)], drop("parse_l2_unsupported"), run="live", phase=2),
        Case("grant ended: a new flow", [tcp(C4_LIVE, WEB, 80, sport=42100)], drop("no_grant"), run="live", phase=2),
        Case("grant ended: an established flow's ACK gets resets", [
            tcp(C4_LIVE, WEB, 80, sport=42000, flags="A", seq=1001, ack=777000)], resets("web", "no_grant"),
             run="live", phase=2),
        Case("grant ended: an established flow's SYN (no ACK) gets RST+ACK resets", [
            tcp(C4_LIVE, WEB, 80, sport=42001, flags="S", seq=5000)], resets("web", "no_grant"), run="live", phase=2),
        Case("rx burst filler: 29 LLDP frames (the resets' backend halves follow the burst)",
             [lldp() for _ in range(29)], drop("parse_l2_unsupported"), run="live", phase=2),
        Case(boundary, [lldp() for _ in range(32)], drop("parse_l2_unsupported"), run="live", phase=3),
        Case("Maglev: established flows keep their backend; those of the removed one move",
             [tcp(*f, flags="A", seq=1001) for f in established], ipip_after_change(True), run="live", phase=3),
        Case("Maglev: new flows follow the new table", [tcp(*f) for f in fresh], ipip_after_change(False),
             run="live", phase=3),
    ]
    return t


def live_maglev_flows():
    """16 flows (src, VIP, port, sport) to the Maglev service that will be established
    when its backends change, chosen by the model to cover the three outcomes: 4 on
    the backend that goes, 4 whose backend stays although the new table would move
    them, 8 that nothing moves; and 16 new flows for after the change."""
    import random
    rng = random.Random(11)
    net = ipaddress.ip_network(MAGLEV_NET)
    after_ids = {b.id for b in MAGLEV_AFTER}
    want = {"gone": 4, "kept": 4, "same": 8}
    picked = {k: [] for k in want}
    fresh = []
    while any(len(picked[k]) < n for k, n in want.items()) or len(fresh) < 16:
        flow = (str(net[rng.randint(1, 254)]), "192.0.2.110", 80, rng.randint(1024, 65535))
        f5 = (flow[0], flow[1], flow[3], flow[2], 6)
        before = maglev_backend("maglev", f5)
        after = maglev_pick(MAGLEV_AFTER, SERVICE["maglev"].table_size, f5)
        kind = "gone" if before.id not in after_ids else "kept" if before.id != after.id else "same"
        if len(picked[kind]) < want[kind]:
            picked[kind].append(flow)
        elif len(fresh) < 16:
            fresh.append(flow)
    established = [f for k in ("gone", "kept", "same") for f in picked[k]]
    return established, fresh


def maglev_case(count=500, seed=5):
    """`count` TCP SYNs from the granted /24 to the 5-backend service, each to Maglev's pick."""
    import random
    rng = random.Random(seed)
    net = ipaddress.ip_network(MAGLEV_NET)
    frames = [tcp(str(net[rng.randint(1, 254)]), "192.0.2.110", 80, sport=rng.randint(1024, 65535))
              for _ in range(count)]
    return Case(f"Maglev: {count} SYNs from {MAGLEV_NET} over 5 backends", frames, ipip("maglev"), sets="maglev")
