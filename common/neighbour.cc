// ARP and neighbour discovery frames for next-hop resolution (neighbour.h).
#include "neighbour.h"

#include <cstring>

#include "packet.h"

namespace jitlb {

namespace {

constexpr uint8_t kProtoIcmpv6 = 58;
constexpr uint8_t kNdNeighbourSolicitation = 135;
constexpr uint8_t kNdNeighbourAdvert = 136;
constexpr uint8_t kOptionSourceLinkLayer = 1;
constexpr uint8_t kOptionTargetLinkLayer = 2;


bool usable_mac(const uint8_t* mac) noexcept {
    static constexpr uint8_t kZero[6] = {};
    return (mac[0] & 1) == 0 && std::memcmp(mac, kZero, 6) != 0;
}

// The ICMPv6 checksum over the pseudo-header of the IPv6 header at `ip6`.
uint16_t icmpv6_sum(const uint8_t* ip6, const uint8_t* icmp, uint32_t len) noexcept {
    uint32_t sum = 0;
    for (int i = 8; i < 40; i += 2) sum += load_be16(ip6 + i);  // source and destination
    sum += len >> 16;
    sum += len & 0xffff;
    sum += kProtoIcmpv6;
    return ones_complement_sum({icmp, len}, sum);
}

}  // namespace

IpAddress solicited_node_address(const IpAddress& target) noexcept {
    IpAddress group;
    group.version = IpVersion::v6;
    group.bytes = {0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, 0, 0, 0};
    std::memcpy(group.bytes.data() + 13, target.bytes.data() + 13, 3);
    return group;
}

MacAddress ipv6_multicast_mac(const IpAddress& group) noexcept {
    return {0x33, 0x33, group.bytes[12], group.bytes[13], group.bytes[14], group.bytes[15]};
}

size_t write_arp_request(std::span<uint8_t> out, const MacAddress& sender_mac, const IpAddress& sender_ip,
                         const IpAddress& target, const MacAddress* unicast_to) noexcept {
    if (out.size() < kArpRequestLen || sender_ip.version != IpVersion::v4 || target.version != IpVersion::v4)
        return 0;
    uint8_t* f = out.data();
    if (unicast_to != nullptr) std::memcpy(f, unicast_to->data(), 6);
    else std::memset(f, 0xff, 6);
    std::memcpy(f + 6, sender_mac.data(), 6);
    store_be16(f + 12, 0x0806);
    uint8_t* a = f + 14;
    store_be16(a, 1);           // hardware: Ethernet
    store_be16(a + 2, 0x0800);  // protocol: IPv4
    a[4] = 6;
    a[5] = 4;
    store_be16(a + 6, 1);  // request
    std::memcpy(a + 8, sender_mac.data(), 6);
    std::memcpy(a + 14, sender_ip.bytes.data(), 4);
    std::memset(a + 18, 0, 6);  // target hardware address: what is asked
    std::memcpy(a + 24, target.bytes.data(), 4);
    return kArpRequestLen;
}

size_t write_neighbour_solicitation(std::span<uint8_t> out, const MacAddress& src_mac, const IpAddress& src_ip,
                                    const IpAddress& target, const MacAddress* unicast_to) noexcept {
    if (out.size() < kNeighbourSolicitationLen || src_ip.version != IpVersion::v6 ||
        target.version != IpVersion::v6)
        return 0;
    const IpAddress dst = unicast_to != nullptr ? target : solicited_node_address(target);
    const MacAddress dst_mac = unicast_to != nullptr ? *unicast_to : ipv6_multicast_mac(dst);
    uint8_t* f = out.data();
    std::memcpy(f, dst_mac.data(), 6);
    std::memcpy(f + 6, src_mac.data(), 6);
    store_be16(f + 12, 0x86dd);
    uint8_t* ip6 = f + 14;
    ip6[0] = 0x60;  // version 6, traffic class 0, flow label 0
    ip6[1] = ip6[2] = ip6[3] = 0;
    constexpr uint16_t kIcmpLen = 32;  // header, reserved, target, one 8-byte option
    store_be16(ip6 + 4, kIcmpLen);
    ip6[6] = kProtoIcmpv6;
    ip6[7] = 255;  // RFC 4861 7.1.1: a receiver refuses anything else
    std::memcpy(ip6 + 8, src_ip.bytes.data(), 16);
    std::memcpy(ip6 + 24, dst.bytes.data(), 16);
    uint8_t* icmp = ip6 + 40;
    icmp[0] = kNdNeighbourSolicitation;
    icmp[1] = 0;
    store_be16(icmp + 2, 0);
    std::memset(icmp + 4, 0, 4);  // reserved
    std::memcpy(icmp + 8, target.bytes.data(), 16);
    icmp[24] = kOptionSourceLinkLayer;
    icmp[25] = 1;  // in units of 8 bytes
    std::memcpy(icmp + 26, src_mac.data(), 6);
    store_be16(icmp + 2, static_cast<uint16_t>(~icmpv6_sum(ip6, icmp, kIcmpLen)));
    return kNeighbourSolicitationLen;
}

NeighbourFrame parse_neighbour_reply(std::span<const uint8_t> frame, NeighbourReply& out) noexcept {
    out = NeighbourReply{};
    ParsedPacket p;
    if (const DropReason r = parse_packet(frame, p); r != DropReason::none) {
        out.why = "not a well-formed frame";
        return NeighbourFrame::malformed;
    }
    if (p.kind == PacketKind::arp) {
        const uint8_t* a = frame.data() + p.l3_offset;  // the parser saw 28 bytes
        if (load_be16(a) != 1 || load_be16(a + 2) != 0x0800 || a[4] != 6 || a[5] != 4) {
            out.why = "ARP for another hardware or protocol type";
            return NeighbourFrame::malformed;
        }
        if (load_be16(a + 6) != 2) return NeighbourFrame::other;
        if (!usable_mac(a + 8)) {
            out.why = "ARP reply with a multicast or zero sender MAC";
            return NeighbourFrame::malformed;
        }
        out.sender.version = IpVersion::v4;
        std::memcpy(out.sender.bytes.data(), a + 14, 4);
        std::memcpy(out.mac.data(), a + 8, 6);
        out.has_mac = true;
        out.solicited = true;
        return NeighbourFrame::arp_reply;
    }
    if (p.kind != PacketKind::ndp || p.icmp_type != kNdNeighbourAdvert) return NeighbourFrame::other;
    // The ICMPv6 message runs from l4_offset to the end of the IPv6 payload
    // (extension headers, if any, sit between them; parse_packet walked them).
    const uint8_t* ip6 = frame.data() + p.l3_offset;
    const uint32_t icmp_len = static_cast<uint32_t>(p.l3_offset) + p.l3_length - p.l4_offset;
    if (!p.l4_present || p.l3_offset + size_t{p.l3_length} > frame.size() || p.l4_offset > p.l3_offset + p.l3_length ||
        icmp_len < 24) {
        out.why = "neighbour advertisement shorter than 24 bytes";
        return NeighbourFrame::malformed;
    }
    const uint8_t* icmp = frame.data() + p.l4_offset;
    if (ip6[7] != 255 || p.icmp_code != 0) {
        out.why = "neighbour advertisement with hop limit other than 255 or a non-zero code";
        return NeighbourFrame::malformed;
    }
    if (icmpv6_sum(ip6, icmp, icmp_len) != 0xffff) {
        out.why = "neighbour advertisement with a wrong ICMPv6 checksum";
        return NeighbourFrame::malformed;
    }
    if (icmp[8] == 0xff) {
        out.why = "neighbour advertisement for a multicast target";
        return NeighbourFrame::malformed;
    }
    out.sender.version = IpVersion::v6;
    std::memcpy(out.sender.bytes.data(), icmp + 8, 16);
    out.solicited = (icmp[4] & 0x40) != 0;
    for (uint32_t at = 24; at < icmp_len;) {
        if (icmp_len - at < 2 || icmp[at + 1] == 0 || icmp[at + 1] * 8u > icmp_len - at) {
            out.why = "neighbour advertisement with an option of length 0 or past the end";
            return NeighbourFrame::malformed;
        }
        if (icmp[at] == kOptionTargetLinkLayer) {
            if (icmp[at + 1] != 1 || !usable_mac(icmp + at + 2)) {
                out.why = "neighbour advertisement whose target link-layer option is not one unicast MAC";
                return NeighbourFrame::malformed;
            }
            std::memcpy(out.mac.data(), icmp + at + 2, 6);
            out.has_mac = true;
        }
        at += icmp[at + 1] * 8u;
    }
    return NeighbourFrame::neighbour_advert;
}

}  // namespace jitlb
