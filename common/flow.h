// The 5-tuple that identifies a flow, shared by the parser, the flow hash and
// the data plane's connection table. Plain bytes, no DPDK.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>

namespace jitlb {

enum class IpVersion : uint8_t { none = 0, v4 = 4, v6 = 6 };

// Addresses are in network byte order. An IPv4 address occupies bytes 0..3 and
// bytes 4..15 are zero, so that a tuple compares and hashes by plain bytes.
// Ports are in host byte order. The struct is 40 bytes with no padding.
struct FlowTuple {
    std::array<uint8_t, 16> src{};
    std::array<uint8_t, 16> dst{};
    uint16_t src_port = 0;
    uint16_t dst_port = 0;
    uint8_t proto = 0;  // IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, ...
    IpVersion version = IpVersion::none;
    uint8_t pad_[2] = {0, 0};  // always zero: the tuple is hashed as bytes

    friend bool operator==(const FlowTuple&, const FlowTuple&) = default;
};
static_assert(sizeof(FlowTuple) == 40);
static_assert(offsetof(FlowTuple, src_port) == 32);

// An address with its family; IPv4 occupies bytes 0..3 and bytes 4..15 are
// zero (as in FlowTuple). One type for messages, encapsulation and config.
struct IpAddress {
    IpVersion version = IpVersion::none;
    std::array<uint8_t, 16> bytes{};
    friend bool operator==(const IpAddress&, const IpAddress&) = default;
};

}  // namespace jitlb
