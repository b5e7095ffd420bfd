// Encapsulation towards a backend: the outer headers the data plane writes in
// front of a client's IP packet (IP-in-IP, IPv6-in-IPv6 and the mixed
// families, GUE variant 1), and the MAC rewrite of L2 direct server return.
// Pure functions over bytes: the worker calls them on mbuf data after
// rte_pktmbuf_prepend, tests and tools call them on plain buffers.
//
// Header choices (as Katran and Maglev): the outer source address is taken from
// a configured prefix with per-flow entropy in its host bits, so backends and
// ECMP can spread load; outer TTL / hop limit is configurable (64); DSCP and ECN
// are copied from the inner packet; the outer IPv4 DF bit is copied from the
// inner IPv4 packet (always set for an inner IPv6 packet, which routers never
// fragment) and the IPv4 ID is 0 when DF is set; GUE over IPv6 always carries a
// UDP checksum (never zero, RFC 8200 8.1).
#pragma once

#include <array>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "flow.h"

namespace jitlb {

using MacAddress = std::array<uint8_t, 6>;

enum class EncapKind : uint8_t { ipip = 0, gue = 1 };


// The outer source prefix: per-flow entropy replaces its host bits.
struct SourcePrefix {
    IpAddress base;
    uint8_t prefix_len = 32;  // host bits = 32 - len (v4) or 128 - len (v6)
};

struct EncapParams {
    EncapKind kind = EncapKind::ipip;
    MacAddress src_mac{};        // the port's own MAC
    MacAddress dst_mac{};        // the next hop's MAC
    SourcePrefix source_v4;      // used when the backend is IPv4
    SourcePrefix source_v6;      // used when the backend is IPv6
    uint8_t ttl = 64;
    uint16_t gue_port = 6080;
};

inline constexpr size_t kEthLen = 14;
inline constexpr size_t kIpv4Len = 20;
inline constexpr size_t kIpv6Len = 40;
inline constexpr size_t kUdpLen = 8;

// Bytes of Ethernet + outer IP (+ UDP for GUE) in front of the inner packet.
constexpr size_t encap_header_len(EncapKind kind, IpVersion backend) noexcept {
    return kEthLen + (backend == IpVersion::v6 ? kIpv6Len : kIpv4Len) +
           (kind == EncapKind::gue ? kUdpLen : 0);
}

// Why an encapsulation could not be written.
enum class EncapError : uint8_t {
    ok = 0,
    bad_inner,        // inner is not an IPv4/IPv6 packet of consistent length
    bad_backend,      // backend address has no family
    too_long,         // the outer packet would exceed 65535 bytes
    header_size,      // `headers` is not exactly encap_header_len bytes
};

// Writes the outer headers into `headers`, which must be exactly
// encap_header_len(params.kind, backend.version) bytes and is meant to sit
// directly before `inner` (the client's IP packet, unchanged) in memory.
// `flow_hash` supplies the per-flow entropy (outer source host bits, IPv6
// flow label, GUE source port).
EncapError write_encap_headers(std::span<uint8_t> headers, std::span<const uint8_t> inner,
                               const IpAddress& backend, uint64_t flow_hash,
                               const EncapParams& params) noexcept;

// The outer source address for a flow: the prefix with its host bits taken
// from the flow hash.
IpAddress outer_source(const SourcePrefix& prefix, uint64_t flow_hash) noexcept;

// outer_source of an IPv4 prefix as a host-order number: both writers use it.
inline uint32_t outer_source_v4(const SourcePrefix& prefix, uint64_t flow_hash) noexcept {
    const unsigned host = 32 - std::min<unsigned>(prefix.prefix_len, 32);
    const uint32_t mask = host >= 32 ? ~uint32_t{0} : (uint32_t{1} << host) - 1;
    uint32_t base_be;
    std::memcpy(&base_be, prefix.base.bytes.data(), 4);
    return (__builtin_bswap32(base_be) & ~mask) | (static_cast<uint32_t>(flow_hash) & mask);
}

// IP-in-IP of an IPv4 packet to an IPv4 backend, the data plane's common case:
// the same 34 bytes write_encap_headers writes for it (a unit test compares
// the two), without its checks and branches. `start` is the 34 bytes right
// before `inner`, an IPv4 packet whose header and total length (`inner_len`,
// at most 65515) the parser checked; `backend_v4` is the backend's address as
// it sits in memory; `dst_mac_word` holds the next hop's MAC in its low 48
// bits, first byte lowest (lb/next_hop.h).
inline void write_ipip4_headers(uint8_t* start, const uint8_t* inner, uint32_t inner_len,
                                const uint8_t* backend_v4, uint64_t dst_mac_word, const EncapParams& params,
                                uint64_t flow_hash) noexcept {
    // Ethernet: the next hop's MAC (8 bytes stored, the last 2 overwritten), ours, IPv4.
    std::memcpy(start, &dst_mac_word, 8);
    std::memcpy(start + 6, params.src_mac.data(), 6);
    start[12] = 0x08;
    start[13] = 0x00;
    const uint32_t src = outer_source_v4(params.source_v4, flow_hash);
    uint32_t dst_be;
    std::memcpy(&dst_be, backend_v4, 4);
    const uint32_t dst = __builtin_bswap32(dst_be);
    // Header words in host order: the checksum sums them as 16-bit numbers.
    const uint32_t tos = inner[1];
    const bool dont_fragment = (inner[6] & 0x40) != 0;
    const uint32_t total = inner_len + 20;
    const uint32_t id = dont_fragment ? 0 : static_cast<uint32_t>(flow_hash >> 48);
    const uint32_t flags = dont_fragment ? 0x4000 : 0;
    const uint32_t ttl_proto = uint32_t{params.ttl} << 8 | 4;
    uint32_t sum = (0x4500 | tos) + total + id + flags + ttl_proto + (src >> 16) + (src & 0xffff) + (dst >> 16) +
                   (dst & 0xffff);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    const uint32_t check = ~sum & 0xffff;
    uint8_t* ip = start + kEthLen;
    const uint64_t w0 = uint64_t{0x4500 | tos} << 48 | uint64_t{total} << 32 | id << 16 | flags;
    const uint64_t w1 = uint64_t{ttl_proto} << 48 | uint64_t{check} << 32 | src;
    const uint64_t b0 = __builtin_bswap64(w0), b1 = __builtin_bswap64(w1);
    std::memcpy(ip, &b0, 8);
    std::memcpy(ip + 8, &b1, 8);
    std::memcpy(ip + 16, &dst_be, 4);
}

// L2 direct server return: the destination MAC becomes the backend's and the
// source MAC the port's own (otherwise a bridge would learn the client's MAC
// on jitlb's port). The rest of the frame is left as it is.
inline void rewrite_l2_dsr(std::span<uint8_t> frame, const MacAddress& backend_mac,
                           const MacAddress& port_mac) noexcept {
    if (frame.size() < 12) return;
    for (size_t i = 0; i < 6; ++i) {
        frame[i] = backend_mac[i];
        frame[6 + i] = port_mac[i];
    }
}

}  // namespace jitlb
