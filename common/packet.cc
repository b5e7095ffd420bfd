// Packet parser: see packet.h. Every read goes through a bounds check against
// the span it belongs to; lengths taken from the packet are never trusted
// before they are checked against what is actually there.
#include "packet.h"

#include <array>
#include <bit>
#include <cstring>

namespace jitlb {
namespace {

constexpr uint16_t kEtherTypeIpv4 = 0x0800;
constexpr uint16_t kEtherTypeArp = 0x0806;
constexpr uint16_t kEtherTypeVlan = 0x8100;
constexpr uint16_t kEtherTypeQinQ = 0x88a8;
constexpr uint16_t kEtherTypeIpv6 = 0x86dd;
constexpr size_t kEthHeaderLen = 14;
constexpr size_t kArpEthIpv4Len = 28;

constexpr uint8_t kProtoHopByHop = 0;
constexpr uint8_t kProtoIcmp = 1;
constexpr uint8_t kProtoTcp = 6;
constexpr uint8_t kProtoUdp = 17;
constexpr uint8_t kProtoRouting = 43;
constexpr uint8_t kProtoFragment = 44;
constexpr uint8_t kProtoEsp = 50;
constexpr uint8_t kProtoAh = 51;
constexpr uint8_t kProtoIcmpv6 = 58;
constexpr uint8_t kProtoNoNext = 59;
constexpr uint8_t kProtoDestOpts = 60;

constexpr std::array<std::string_view, static_cast<size_t>(DropReason::count_)> kDropNames = {
    "none",
    "truncated",
    "l2_unsupported",
    "vlan_too_deep",
    "ip_bad_version",
    "ipv4_bad_ihl",
    "ipv4_bad_total_length",
    "ipv4_bad_checksum",
    "ipv6_ext_chain_too_long",
    "ipv6_bad_ext_header",
    "tcp_bad_offset",
    "udp_bad_length",
    "icmp_bad_inner",
    "frame_too_long",
};

inline uint32_t load_be32(const uint8_t* p) noexcept {
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

// Result of walking an IPv6 extension-header chain.
struct Ipv6Chain {
    uint8_t proto = 0;        // the first header that is not an extension header
    size_t l4_offset = 0;     // its offset from the start of the IPv6 header
    FragmentState fragment = FragmentState::none;
};

// Walks the extension headers of the IPv6 packet `ip6` (header included; the
// span ends where the payload ends). Stops at the first non-extension header,
// at ESP / no-next-header, or at a non-first fragment (whose payload is not
// an L4 header).
DropReason walk_ipv6_chain(std::span<const uint8_t> ip6, Ipv6Chain& out) noexcept {
    uint8_t nh = ip6[6];
    size_t off = 40;
    unsigned headers = 0;
    bool seen_fragment = false;
    for (;;) {
        size_t len = 0;
        switch (nh) {
            case kProtoHopByHop:
                // RFC 8200 4.1: hop-by-hop options may only follow the IPv6 header.
                if (headers != 0) return DropReason::ipv6_bad_ext_header;
                [[fallthrough]];
            case kProtoRouting:
            case kProtoDestOpts:
                if (off + 2 > ip6.size()) return DropReason::truncated;
                len = (size_t{ip6[off + 1]} + 1) * 8;
                break;
            case kProtoAh:
                if (off + 2 > ip6.size()) return DropReason::truncated;
                len = (size_t{ip6[off + 1]} + 2) * 4;
                break;
            case kProtoFragment: {
                if (seen_fragment) return DropReason::ipv6_bad_ext_header;
                seen_fragment = true;
                len = 8;
                if (off + len > ip6.size()) return DropReason::truncated;
                const uint16_t off_flags = load_be16(&ip6[off + 2]);
                const bool more = (off_flags & 1) != 0;
                const bool first = (off_flags >> 3) == 0;
                if (!first) {
                    out.fragment = FragmentState::non_first;
                    out.proto = ip6[off];
                    out.l4_offset = 0;
                    return DropReason::none;
                }
                // offset 0 and no more fragments is an atomic fragment (RFC 6946):
                // a whole packet, treated as unfragmented.
                out.fragment = more ? FragmentState::first : FragmentState::none;
                break;
            }
            default:
                // TCP, UDP, ICMPv6, ESP, no-next-header or anything unknown: the
                // chain ends here; the caller decides what it can read.
                out.proto = nh;
                out.l4_offset = off;
                return DropReason::none;
        }
        ++headers;
        if (headers > kMaxIpv6ExtHeaders || off + len - 40 > kMaxIpv6ExtBytes)
            return DropReason::ipv6_ext_chain_too_long;
        if (off + len > ip6.size()) return DropReason::truncated;
        nh = ip6[off];
        off += len;
    }
}

void copy_v4(std::array<uint8_t, 16>& dst, const uint8_t* src) noexcept {
    dst.fill(0);
    std::memcpy(dst.data(), src, 4);
}
void copy_v6(std::array<uint8_t, 16>& dst, const uint8_t* src) noexcept {
    std::memcpy(dst.data(), src, 16);
}

bool is_icmpv4_error(uint8_t type) noexcept {
    return type == 3 /* destination unreachable */ || type == 11 /* time exceeded */;
}
bool is_icmpv6_error(uint8_t type) noexcept {
    return type == 1 /* destination unreachable */ || type == 2 /* packet too big */ ||
           type == 3 /* time exceeded */;
}

// Parses the packet quoted in an ICMP error (starting at its IP header, of the
// same version as the outer packet) and stores its flow turned round, so that
// it reads client -> VIP like the client's own packets. The quote is usually
// truncated, so only the IP header and the first 8 bytes of L4 (the ports) are
// required.
DropReason parse_icmp_inner(std::span<const uint8_t> quote, IpVersion version,
                            ParsedPacket& out) noexcept {
    FlowTuple inner{};
    uint8_t proto = 0;
    size_t l4 = 0;
    if (version == IpVersion::v4) {
        if (quote.size() < 20 || (quote[0] >> 4) != 4) return DropReason::icmp_bad_inner;
        const size_t ihl = size_t{quote[0] & 0x0fu} * 4;
        if (ihl < 20) return DropReason::icmp_bad_inner;
        if ((load_be16(&quote[6]) & 0x1fff) != 0) return DropReason::icmp_bad_inner;  // no ports
        proto = quote[9];
        l4 = ihl;
        copy_v4(inner.src, &quote[12]);
        copy_v4(inner.dst, &quote[16]);
    } else {
        if (quote.size() < 40 || (quote[0] >> 4) != 6) return DropReason::icmp_bad_inner;
        Ipv6Chain chain;
        if (walk_ipv6_chain(quote, chain) != DropReason::none ||
            chain.fragment == FragmentState::non_first)
            return DropReason::icmp_bad_inner;
        proto = chain.proto;
        l4 = chain.l4_offset;
        copy_v6(inner.src, &quote[8]);
        copy_v6(inner.dst, &quote[24]);
    }
    if (proto != kProtoTcp && proto != kProtoUdp) return DropReason::icmp_bad_inner;
    if (l4 + 8 > quote.size()) return DropReason::icmp_bad_inner;

    FlowTuple& f = out.flow;
    f.src = inner.dst;
    f.dst = inner.src;
    f.src_port = load_be16(&quote[l4 + 2]);
    f.dst_port = load_be16(&quote[l4]);
    f.proto = proto;
    f.version = version;
    out.icmp_error = true;
    return DropReason::none;
}

// Parses the L4 header at l3[l4_off..], where l3 ends at the end of the IP
// payload. `base` is the offset of l3 within the frame.
DropReason parse_l4(std::span<const uint8_t> l3, size_t l4_off, uint8_t proto, size_t base,
                    ParsedPacket& out) noexcept {
    const std::span<const uint8_t> l4 = l3.subspan(l4_off);
    FlowTuple& f = out.flow;
    f.proto = proto;
    size_t header_len = 0;
    switch (proto) {
        case kProtoTcp: {
            if (l4.size() < 20) return DropReason::truncated;
            header_len = size_t{l4[12]} / 16 * 4;
            if (header_len < 20 || header_len > l4.size()) return DropReason::tcp_bad_offset;
            f.src_port = load_be16(&l4[0]);
            f.dst_port = load_be16(&l4[2]);
            out.tcp_flags = l4[13];
            break;
        }
        case kProtoUdp: {
            if (l4.size() < 8) return DropReason::truncated;
            const size_t udp_len = load_be16(&l4[4]);
            // A first fragment carries only part of the datagram, so its UDP
            // length may exceed what is here; it must still cover the header.
            if (udp_len < 8 || (out.fragment == FragmentState::none && udp_len > l4.size()))
                return DropReason::udp_bad_length;
            header_len = 8;
            f.src_port = load_be16(&l4[0]);
            f.dst_port = load_be16(&l4[2]);
            break;
        }
        case kProtoIcmp:
        case kProtoIcmpv6: {
            const bool v6 = proto == kProtoIcmpv6;
            if (v6 != (f.version == IpVersion::v6)) {
                // ICMPv4 inside IPv6 or ICMPv6 inside IPv4: no meaning, no L4.
                out.l4_present = false;
                out.payload_offset = static_cast<uint16_t>(base + l4_off);
                return DropReason::none;
            }
            if (l4.size() < 8) return DropReason::truncated;
            header_len = 8;
            out.icmp_type = l4[0];
            out.icmp_code = l4[1];
            if (v6 && out.icmp_type >= 133 && out.icmp_type <= 137) {
                out.kind = PacketKind::ndp;
            } else if (v6 ? is_icmpv6_error(out.icmp_type) : is_icmpv4_error(out.icmp_type)) {
                if (v6 && out.icmp_type == 2) out.icmp_mtu = load_be32(&l4[4]);
                if (!v6 && out.icmp_type == 3 && out.icmp_code == 4) out.icmp_mtu = load_be16(&l4[6]);
                if (out.fragment != FragmentState::none) return DropReason::icmp_bad_inner;
                if (const DropReason r = parse_icmp_inner(l4.subspan(8), f.version, out);
                    r != DropReason::none)
                    return r;
            }
            break;
        }
        default:
            // ESP, no-next-header, GRE, SCTP, ...: an IP packet without a
            // transport header jitlb understands. The data plane decides.
            out.l4_present = false;
            out.payload_offset = static_cast<uint16_t>(base + l4_off);
            return DropReason::none;
    }
    out.l4_present = true;
    out.l4_offset = static_cast<uint16_t>(base + l4_off);
    out.payload_offset = static_cast<uint16_t>(base + l4_off + header_len);
    return DropReason::none;
}

DropReason parse_ipv4(std::span<const uint8_t> frame, size_t off, ParsedPacket& out) noexcept {
    const std::span<const uint8_t> rest = frame.subspan(off);
    if (rest.size() < 20) return DropReason::truncated;
    if ((rest[0] >> 4) != 4) return DropReason::ip_bad_version;
    const size_t ihl = size_t{rest[0] & 0x0fu} * 4;
    if (ihl < 20) return DropReason::ipv4_bad_ihl;
    if (ihl > rest.size()) return DropReason::truncated;
    const size_t total = load_be16(&rest[2]);
    if (total < ihl) return DropReason::ipv4_bad_total_length;
    if (total > rest.size()) return DropReason::truncated;
    if ((ihl == 20 ? ipv4_header_sum(rest.data()) : ones_complement_sum(rest.first(ihl))) != 0xffff)
        return DropReason::ipv4_bad_checksum;

    const uint16_t frag = load_be16(&rest[6]);
    const bool more = (frag & 0x2000) != 0;
    const uint16_t frag_off = frag & 0x1fff;
    out.fragment = frag_off != 0 ? FragmentState::non_first
                   : more        ? FragmentState::first
                                 : FragmentState::none;

    FlowTuple& f = out.flow;
    f.version = IpVersion::v4;
    copy_v4(f.src, &rest[12]);
    copy_v4(f.dst, &rest[16]);
    f.proto = rest[9];
    out.l3_offset = static_cast<uint16_t>(off);
    out.l3_length = static_cast<uint16_t>(total);
    if (out.fragment == FragmentState::non_first) {
        out.payload_offset = static_cast<uint16_t>(off + ihl);
        return DropReason::none;
    }
    return parse_l4(rest.first(total), ihl, f.proto, off, out);
}

DropReason parse_ipv6(std::span<const uint8_t> frame, size_t off, ParsedPacket& out) noexcept {
    const std::span<const uint8_t> rest = frame.subspan(off);
    if (rest.size() < 40) return DropReason::truncated;
    if ((rest[0] >> 4) != 6) return DropReason::ip_bad_version;
    const size_t total = 40 + size_t{load_be16(&rest[4])};
    if (total > rest.size()) return DropReason::truncated;
    const std::span<const uint8_t> ip6 = rest.first(total);

    FlowTuple& f = out.flow;
    f.version = IpVersion::v6;
    copy_v6(f.src, &ip6[8]);
    copy_v6(f.dst, &ip6[24]);
    out.l3_offset = static_cast<uint16_t>(off);
    out.l3_length = static_cast<uint16_t>(total);

    Ipv6Chain chain;
    if (const DropReason r = walk_ipv6_chain(ip6, chain); r != DropReason::none) return r;
    out.fragment = chain.fragment;
    f.proto = chain.proto;
    if (chain.fragment == FragmentState::non_first) {
        out.payload_offset = static_cast<uint16_t>(off + total);
        return DropReason::none;
    }
    if (chain.proto == kProtoEsp || chain.proto == kProtoNoNext) {
        out.payload_offset = static_cast<uint16_t>(off + chain.l4_offset);
        return DropReason::none;
    }
    return parse_l4(ip6, chain.l4_offset, chain.proto, off, out);
}

DropReason parse_ip_at(std::span<const uint8_t> frame, size_t off, ParsedPacket& out) noexcept {
    if (off >= frame.size()) return DropReason::truncated;
    switch (frame[off] >> 4) {
        case 4: return parse_ipv4(frame, off, out);
        case 6: return parse_ipv6(frame, off, out);
        default: return DropReason::ip_bad_version;
    }
}

}  // namespace

std::string_view drop_reason_name(DropReason reason) noexcept {
    const auto i = static_cast<size_t>(reason);
    return i < kDropNames.size() ? kDropNames[i] : std::string_view("unknown");
}

uint16_t ones_complement_sum(std::span<const uint8_t> bytes, uint32_t initial) noexcept {
    // RFC 1071 section 2(B): the sum can be taken in native byte order, 32 bits at
    // a time, and swapped once at the end. Twice as fast as 16-bit big-endian steps.
    static_assert(std::endian::native == std::endian::little);
    uint64_t sum = 0;
    size_t i = 0;
    for (; i + 4 <= bytes.size(); i += 4) {
        uint32_t word;
        std::memcpy(&word, &bytes[i], 4);
        sum += word;
    }
    for (; i + 2 <= bytes.size(); i += 2) {
        uint16_t half;
        std::memcpy(&half, &bytes[i], 2);
        sum += half;
    }
    if (i < bytes.size()) sum += bytes[i];  // odd byte: the high byte of a big-endian word
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    uint32_t be = static_cast<uint16_t>((sum >> 8) | (sum << 8));
    be += initial;
    while (be >> 16) be = (be & 0xffff) + (be >> 16);
    return static_cast<uint16_t>(be);
}

DropReason parse_packet(std::span<const uint8_t> frame, ParsedPacket& out) noexcept {
    out = ParsedPacket{};
    if (frame.size() > 0xffff) return DropReason::frame_too_long;
    if (frame.size() < kEthHeaderLen) return DropReason::truncated;
    size_t off = 12;
    uint16_t ethertype = load_be16(&frame[off]);
    off += 2;
    while (ethertype == kEtherTypeVlan || ethertype == kEtherTypeQinQ) {
        if (out.vlan_count == kMaxVlanTags) return DropReason::vlan_too_deep;
        if (off + 4 > frame.size()) return DropReason::truncated;
        out.vlan_ids[out.vlan_count++] = load_be16(&frame[off]) & 0x0fff;
        ethertype = load_be16(&frame[off + 2]);
        off += 4;
    }
    switch (ethertype) {
        case kEtherTypeIpv4:
            if (off < frame.size() && (frame[off] >> 4) != 4) return DropReason::ip_bad_version;
            return parse_ipv4(frame, off, out);
        case kEtherTypeIpv6:
            if (off < frame.size() && (frame[off] >> 4) != 6) return DropReason::ip_bad_version;
            return parse_ipv6(frame, off, out);
        case kEtherTypeArp:
            if (off + kArpEthIpv4Len > frame.size()) return DropReason::truncated;
            out.kind = PacketKind::arp;
            out.l3_offset = static_cast<uint16_t>(off);
            return DropReason::none;
        default:
            return DropReason::l2_unsupported;
    }
}

DropReason parse_ip_packet(std::span<const uint8_t> packet, ParsedPacket& out) noexcept {
    out = ParsedPacket{};
    if (packet.size() > 0xffff) return DropReason::frame_too_long;
    return parse_ip_at(packet, 0, out);
}

}  // namespace jitlb
