// Encapsulation headers: see encap.h.
#include "encap.h"

#include <algorithm>
#include <cstring>

#include "packet.h"

namespace jitlb {
namespace {

constexpr uint8_t kProtoIpip = 4;
constexpr uint8_t kProtoIpv6 = 41;
constexpr uint8_t kProtoUdp = 17;


// What the outer headers copy from the inner packet.
struct InnerFacts {
    IpVersion version = IpVersion::none;
    uint8_t tos = 0;  // DSCP + ECN (IPv4 TOS, IPv6 traffic class)
    bool dont_fragment = true;
};

bool inner_facts(std::span<const uint8_t> inner, InnerFacts& out) noexcept {
    if (inner.empty()) return false;
    switch (inner[0] >> 4) {
        case 4:
            if (inner.size() < 20 || load_be16(&inner[2]) != inner.size()) return false;
            out.version = IpVersion::v4;
            out.tos = inner[1];
            out.dont_fragment = (inner[6] & 0x40) != 0;
            return true;
        case 6:
            if (inner.size() < 40 || size_t{load_be16(&inner[4])} + 40 != inner.size()) return false;
            out.version = IpVersion::v6;
            out.tos = static_cast<uint8_t>(((inner[0] & 0x0f) << 4) | (inner[1] >> 4));
            out.dont_fragment = true;
            return true;
        default:
            return false;
    }
}

}  // namespace

IpAddress outer_source(const SourcePrefix& prefix, uint64_t flow_hash) noexcept {
    IpAddress a = prefix.base;
    // The host bits, read as a big-endian number, become the low bits of the
    // hash (64 at most, which covers a /64; shorter IPv6 prefixes keep the
    // base's upper host bits).
    if (a.version == IpVersion::v6) {
        const unsigned host = 128 - std::min<unsigned>(prefix.prefix_len, 128);
        const uint64_t mask = host >= 64 ? ~uint64_t{0} : (uint64_t{1} << host) - 1;
        uint64_t low;
        std::memcpy(&low, a.bytes.data() + 8, 8);
        low = __builtin_bswap64((__builtin_bswap64(low) & ~mask) | (flow_hash & mask));
        std::memcpy(a.bytes.data() + 8, &low, 8);
    } else {
        const uint32_t word = __builtin_bswap32(outer_source_v4(prefix, flow_hash));
        std::memcpy(a.bytes.data(), &word, 4);
    }
    return a;
}

EncapError write_encap_headers(std::span<uint8_t> headers, std::span<const uint8_t> inner,
                               const IpAddress& backend, uint64_t flow_hash,
                               const EncapParams& params) noexcept {
    InnerFacts facts;
    if (!inner_facts(inner, facts)) return EncapError::bad_inner;
    if (backend.version != IpVersion::v4 && backend.version != IpVersion::v6)
        return EncapError::bad_backend;
    if (headers.size() != encap_header_len(params.kind, backend.version))
        return EncapError::header_size;
    const bool gue = params.kind == EncapKind::gue;
    const size_t udp_len = (gue ? kUdpLen : 0) + inner.size();
    const uint8_t inner_proto = facts.version == IpVersion::v4 ? kProtoIpip : kProtoIpv6;

    uint8_t* p = headers.data();
    std::memcpy(p, params.dst_mac.data(), 6);
    std::memcpy(p + 6, params.src_mac.data(), 6);
    store_be16(p + 12, backend.version == IpVersion::v4 ? 0x0800 : 0x86dd);
    uint8_t* ip = p + kEthLen;
    uint8_t* udp = nullptr;

    if (backend.version == IpVersion::v4) {
        const size_t total = kIpv4Len + udp_len;
        if (total > 0xffff) return EncapError::too_long;
        const IpAddress src = outer_source(params.source_v4, flow_hash);
        ip[0] = 0x45;
        ip[1] = facts.tos;
        store_be16(ip + 2, static_cast<uint16_t>(total));
        // ID 0 with DF (RFC 6864: the ID only matters for fragments); without DF,
        // a per-flow ID keeps reassembly of different flows apart.
        store_be16(ip + 4, facts.dont_fragment ? 0 : static_cast<uint16_t>(flow_hash >> 48));
        store_be16(ip + 6, facts.dont_fragment ? 0x4000 : 0);
        ip[8] = params.ttl;
        ip[9] = gue ? kProtoUdp : inner_proto;
        store_be16(ip + 10, 0);
        std::memcpy(ip + 12, src.bytes.data(), 4);
        std::memcpy(ip + 16, backend.bytes.data(), 4);
        store_be16(ip + 10, static_cast<uint16_t>(~ipv4_header_sum(ip)));
        udp = ip + kIpv4Len;
    } else {
        if (udp_len > 0xffff) return EncapError::too_long;
        const IpAddress src = outer_source(params.source_v6, flow_hash);
        const uint32_t flow_label = static_cast<uint32_t>(flow_hash >> 32) & 0xfffff;
        ip[0] = static_cast<uint8_t>(0x60 | (facts.tos >> 4));
        ip[1] = static_cast<uint8_t>((facts.tos << 4) | (flow_label >> 16));
        store_be16(ip + 2, static_cast<uint16_t>(flow_label));
        store_be16(ip + 4, static_cast<uint16_t>(udp_len));
        ip[6] = gue ? kProtoUdp : inner_proto;
        ip[7] = params.ttl;
        std::memcpy(ip + 8, src.bytes.data(), 16);
        std::memcpy(ip + 24, backend.bytes.data(), 16);
        udp = ip + kIpv6Len;
    }

    if (gue) {
        // Source port: per-flow entropy in the dynamic range, so that backends
        // and routers hashing the outer 5-tuple keep a flow together.
        store_be16(udp, static_cast<uint16_t>(0xc000 | ((flow_hash >> 16) & 0x3fff)));
        store_be16(udp + 2, params.gue_port);
        store_be16(udp + 4, static_cast<uint16_t>(udp_len));
        store_be16(udp + 6, 0);  // IPv4: no checksum, as RFC 768 allows
        if (backend.version == IpVersion::v6) {
            // Pseudo-header (source, destination, length, next header) + UDP + payload.
            uint32_t pseudo = static_cast<uint32_t>(udp_len) + kProtoUdp;
            pseudo += ones_complement_sum({ip + 8, 32});
            const uint16_t head = ones_complement_sum({udp, kUdpLen}, pseudo);
            const uint16_t sum = ones_complement_sum(inner, head);
            const uint16_t check = static_cast<uint16_t>(~sum);
            store_be16(udp + 6, check == 0 ? 0xffff : check);
        }
    }
    return EncapError::ok;
}

}  // namespace jitlb
