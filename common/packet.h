// Packet parser for untrusted frames: Ethernet (with up to two VLAN tags),
// IPv4/IPv6 (with the IPv6 extension-header chain), TCP/UDP/ICMP/ICMPv6, and
// the inner header of ICMP errors. It reads a byte span, never an mbuf, so the
// same code runs in unit tests, fuzz targets, tools and the data plane.
//
// The parser either fills a ParsedPacket or returns a DropReason; it never
// reads outside the span and never half-fills a result the caller may trust.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

#include "flow.h"

namespace jitlb {

// Why a frame was not accepted. The names are the counter names in stats and
// telemetry: keep them stable, add at the end.
enum class DropReason : uint8_t {
    none = 0,
    truncated,              // a header runs past the end of the frame
    l2_unsupported,         // ethertype jitlb does not handle (not IPv4/IPv6/ARP)
    vlan_too_deep,          // more than two VLAN tags (802.1Q/802.1ad)
    ip_bad_version,         // IP version field does not match the ethertype
    ipv4_bad_ihl,           // IHL < 5
    ipv4_bad_total_length,  // total length smaller than the header
    ipv4_bad_checksum,      // IPv4 header checksum does not verify
    ipv6_ext_chain_too_long,// more extension headers / bytes than we walk
    ipv6_bad_ext_header,    // malformed extension header (e.g. hop-by-hop not first)
    tcp_bad_offset,         // TCP data offset < 5 or beyond the IP payload
    udp_bad_length,         // UDP length field inconsistent with the IP payload
    icmp_bad_inner,         // ICMP error whose quoted packet cannot be parsed
    frame_too_long,         // frame longer than 65535 bytes (offsets are 16-bit)
    count_                  // number of reasons; not a reason
};

std::string_view drop_reason_name(DropReason reason) noexcept;

// What the frame carries, as far as the data plane is concerned.
enum class PacketKind : uint8_t {
    ip = 0,       // IPv4 or IPv6 (see flow.version), L4 may or may not be known
    arp,          // ARP (for the responder)
    ndp,          // ICMPv6 router/neighbour discovery (types 133..137)
};

enum class FragmentState : uint8_t {
    none = 0,   // not a fragment (an IPv6 atomic fragment counts as none)
    first,      // offset 0, more fragments follow: L4 header present
    non_first,  // offset != 0: no L4 header, no ports
};

struct ParsedPacket {
    PacketKind kind = PacketKind::ip;
    FragmentState fragment = FragmentState::none;
    uint8_t vlan_count = 0;
    uint8_t tcp_flags = 0;       // TCP only
    uint16_t vlan_ids[2] = {0, 0};
    uint16_t l3_offset = 0;      // start of the (outer) IP header / ARP body
    uint16_t l4_offset = 0;      // start of the L4 header; 0 when l4_present is false
    uint16_t l3_length = 0;      // IP total length (v4) or 40 + payload length (v6)
    uint16_t payload_offset = 0; // first byte after the L4 header
    bool l4_present = false;     // ports (or ICMP type/code) were read
    bool icmp_error = false;     // flow is the quoted flow, turned to client->VIP
    uint8_t icmp_type = 0;
    uint8_t icmp_code = 0;
    uint32_t icmp_mtu = 0;       // frag-needed (v4) / packet-too-big (v6) MTU
    // The 5-tuple. For an ICMP error this is the flow of the quoted packet,
    // turned round: the quoted packet went VIP->client, so src is the client
    // and dst the VIP, as for the client's own packets.
    FlowTuple flow{};
};

// Bounds on the IPv6 extension-header walk: firewalls get bypassed by hiding
// the transport header behind a long chain, so the parser either finds it
// within these bounds or refuses the packet.
inline constexpr unsigned kMaxIpv6ExtHeaders = 8;
inline constexpr unsigned kMaxIpv6ExtBytes = 256;
inline constexpr unsigned kMaxVlanTags = 2;

// Parses an Ethernet frame. Returns DropReason::none and fills `out` on
// success; otherwise returns the reason and `out` must not be used.
DropReason parse_packet(std::span<const uint8_t> frame, ParsedPacket& out) noexcept;

// Parses a packet that starts at the IP header (no Ethernet), e.g. the inner
// packet of an encapsulation. Same contract as parse_packet.
DropReason parse_ip_packet(std::span<const uint8_t> packet, ParsedPacket& out) noexcept;

// RFC 1071 ones' complement sum over `bytes`, folded, not inverted.
// Big-endian (network order) 16-bit fields, for every parser and builder.
inline uint16_t load_be16(const uint8_t* p) noexcept { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
inline void store_be16(uint8_t* p, uint16_t v) noexcept {
    p[0] = static_cast<uint8_t>(v >> 8);
    p[1] = static_cast<uint8_t>(v);
}

uint16_t ones_complement_sum(std::span<const uint8_t> bytes, uint32_t initial = 0) noexcept;

// The same for a 20-byte IPv4 header (no options), inline: the per-packet case
// (the parser's check, the outer header of IP-in-IP).
inline uint16_t ipv4_header_sum(const uint8_t* header) noexcept {
    uint64_t sum = 0;
    for (int i = 0; i < 20; i += 4) {
        uint32_t word;
        std::memcpy(&word, header + i, 4);
        sum += word;
    }
    sum = (sum & 0xffffffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return static_cast<uint16_t>((sum >> 8) | (sum << 8));  // native order was summed: swap once
}

}  // namespace jitlb
