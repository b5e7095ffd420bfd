// Builds test frames byte by byte (Ethernet, VLAN, IPv4/IPv6 with extension
// headers, TCP/UDP/ICMP) with correct lengths and checksums, so that a test
// can then break exactly one thing. Test-only.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "packet.h"

namespace jitlb::test {

using Bytes = std::vector<uint8_t>;

inline void put16(Bytes& b, size_t at, uint16_t v) {
    b[at] = static_cast<uint8_t>(v >> 8);
    b[at + 1] = static_cast<uint8_t>(v);
}
inline void push16(Bytes& b, uint16_t v) {
    b.push_back(static_cast<uint8_t>(v >> 8));
    b.push_back(static_cast<uint8_t>(v));
}
inline void push32(Bytes& b, uint32_t v) {
    push16(b, static_cast<uint16_t>(v >> 16));
    push16(b, static_cast<uint16_t>(v));
}
inline void append(Bytes& b, const Bytes& more) { b.insert(b.end(), more.begin(), more.end()); }

inline Bytes v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) { return {a, b, c, d}; }
// 2001:db8::<last>
inline Bytes v6(uint8_t last) {
    Bytes a(16, 0);
    a[0] = 0x20; a[1] = 0x01; a[2] = 0x0d; a[3] = 0xb8;
    a[15] = last;
    return a;
}

inline Bytes tcp(uint16_t sport, uint16_t dport, uint8_t flags = 0x02, size_t payload = 0,
                 uint8_t data_offset_words = 5) {
    Bytes b;
    push16(b, sport);
    push16(b, dport);
    push32(b, 1000);  // seq
    push32(b, 0);     // ack
    b.push_back(static_cast<uint8_t>(data_offset_words << 4));
    b.push_back(flags);
    push16(b, 65535);  // window
    push16(b, 0);      // checksum (not checked by the parser)
    push16(b, 0);      // urgent
    for (unsigned i = 5; i < data_offset_words && i < 15; ++i) push32(b, 0x01010101);  // NOP options
    b.resize(b.size() + payload, 0xab);
    return b;
}

inline Bytes udp(uint16_t sport, uint16_t dport, size_t payload = 0) {
    Bytes b;
    push16(b, sport);
    push16(b, dport);
    push16(b, static_cast<uint16_t>(8 + payload));
    push16(b, 0);
    b.resize(b.size() + payload, 0xcd);
    return b;
}

inline Bytes icmp(uint8_t type, uint8_t code, uint32_t rest, const Bytes& body = {}) {
    Bytes b{type, code, 0, 0};
    push32(b, rest);
    append(b, body);
    return b;
}

struct Ipv4Opts {
    Bytes src = v4(198, 51, 100, 7);
    Bytes dst = v4(203, 0, 113, 10);
    uint8_t proto = 6;
    uint8_t ihl_words = 5;
    uint16_t frag = 0;  // flags and offset field as on the wire
    int total_length_delta = 0;
};

inline Bytes ipv4(const Ipv4Opts& o, const Bytes& l4) {
    Bytes b;
    b.push_back(static_cast<uint8_t>(0x40 | (o.ihl_words & 0x0f)));
    b.push_back(0);
    const size_t hdr = size_t{o.ihl_words} * 4;
    push16(b, static_cast<uint16_t>(static_cast<int>(std::max<size_t>(hdr, 20) + l4.size()) +
                                    o.total_length_delta));
    push16(b, 0x1234);  // id
    push16(b, o.frag);
    b.push_back(64);
    b.push_back(o.proto);
    push16(b, 0);
    append(b, o.src);
    append(b, o.dst);
    while (b.size() < hdr) b.push_back(1);  // options: NOP
    const uint16_t sum = ones_complement_sum({b.data(), std::max<size_t>(hdr, 20)});
    put16(b, 10, static_cast<uint16_t>(~sum));
    append(b, l4);
    return b;
}

// An extension header: type and its raw bytes (next-header byte is filled in).
struct ExtHeader {
    uint8_t type;
    Bytes body;  // whole header; byte 0 is overwritten with the next header
};
inline ExtHeader ext_opts(uint8_t type, size_t len_8 = 0) {  // hop-by-hop, dest opts, routing
    Bytes b(8 * (len_8 + 1), 0);
    b[1] = static_cast<uint8_t>(len_8);
    b[2] = 1;  // PadN
    b[3] = static_cast<uint8_t>(b.size() - 4);
    return {type, b};
}
inline ExtHeader ext_frag(uint16_t offset_8, bool more) {
    Bytes b(8, 0);
    put16(b, 2, static_cast<uint16_t>((offset_8 << 3) | (more ? 1 : 0)));
    b[7] = 0x42;  // identification
    return {44, b};
}

struct Ipv6Opts {
    Bytes src = v6(7);
    Bytes dst = v6(10);
    uint8_t proto = 6;  // of the last header
    std::vector<ExtHeader> ext;
    int payload_length_delta = 0;
};

inline Bytes ipv6(const Ipv6Opts& o, const Bytes& l4) {
    Bytes chain;
    for (size_t i = 0; i < o.ext.size(); ++i) {
        Bytes h = o.ext[i].body;
        h[0] = i + 1 < o.ext.size() ? o.ext[i + 1].type : o.proto;
        append(chain, h);
    }
    Bytes b{0x60, 0, 0, 0};
    push16(b, static_cast<uint16_t>(static_cast<int>(chain.size() + l4.size()) +
                                    o.payload_length_delta));
    b.push_back(o.ext.empty() ? o.proto : o.ext[0].type);
    b.push_back(64);
    append(b, o.src);
    append(b, o.dst);
    append(b, chain);
    append(b, l4);
    return b;
}

inline Bytes eth(uint16_t ethertype, const Bytes& l3, std::initializer_list<uint16_t> vlans = {},
                 uint16_t vlan_tpid = 0x8100) {
    Bytes b{0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02};
    for (uint16_t vid : vlans) {
        push16(b, vlan_tpid);
        push16(b, vid);
    }
    push16(b, ethertype);
    append(b, l3);
    return b;
}
inline Bytes eth4(const Bytes& l3, std::initializer_list<uint16_t> vlans = {}) {
    return eth(0x0800, l3, vlans);
}
inline Bytes eth6(const Bytes& l3, std::initializer_list<uint16_t> vlans = {}) {
    return eth(0x86dd, l3, vlans);
}

// An Ethernet frame with the given MACs (6 bytes each), untagged.
inline Bytes eth_frame(const Bytes& dst_mac, const Bytes& src_mac, uint16_t ethertype, const Bytes& l3) {
    Bytes b = dst_mac;
    append(b, src_mac);
    push16(b, ethertype);
    append(b, l3);
    return b;
}

// The 28-byte ARP body for Ethernet and IPv4: op 1 request, 2 reply; MACs of
// 6 bytes and IPv4 addresses of 4.
inline Bytes arp(uint16_t op, const Bytes& sender_mac, const Bytes& sender_ip, const Bytes& target_mac,
                 const Bytes& target_ip) {
    Bytes b;
    push16(b, 1);       // hardware: Ethernet
    push16(b, 0x0800);  // protocol: IPv4
    b.push_back(6);
    b.push_back(4);
    push16(b, op);
    append(b, sender_mac);
    append(b, sender_ip);
    append(b, target_mac);
    append(b, target_ip);
    return b;
}

// Pads a frame to Ethernet's minimum of 60 bytes (without FCS), as a NIC
// delivers a short frame.
inline Bytes pad_to_min(Bytes frame) {
    if (frame.size() < 60) frame.resize(60, 0);
    return frame;
}

}  // namespace jitlb::test
