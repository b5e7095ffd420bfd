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
#include <cstddef>
#include <cstdint>
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
