// The frames of next-hop resolution (common/neighbour.h), byte for byte.
// The expected frames were made with scapy (/usr/bin/python3), e.g.
//   Ether(dst="ff:ff:ff:ff:ff:ff", src=own)/ARP(op=1, hwsrc=own, psrc="192.0.2.10", pdst="192.0.2.1")
//   Ether(dst="33:33:ff:45:67:89", src=own)/IPv6(src="2001:db8::10", dst="ff02::1:ff45:6789", hlim=255)
//       /ICMPv6ND_NS(tgt="2001:db8::1:2345:6789")/ICMPv6NDOptSrcLLAddr(lladdr=own)
// and pasted here, so that the checksum and layout are checked by a second,
// independent implementation.
#include <arpa/inet.h>

#include <cstring>
#include <vector>

#include <catch2/catch.hpp>

#include "ip_text.h"
#include "neighbour.h"

using namespace jitlb;
using jitlb::test::ip;

namespace {

using Bytes = std::vector<uint8_t>;

const MacAddress kOwn{0x02, 0xaa, 0x00, 0x00, 0x00, 0x01};
const MacAddress kNextHop{0x02, 0xbb, 0x00, 0x00, 0x00, 0x02};

const Bytes kArpRequest = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0xaa, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 0x06,
    0x04, 0x00, 0x01, 0x02, 0xaa, 0x00, 0x00, 0x00, 0x01, 0xc0, 0x00, 0x02, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xc0, 0x00, 0x02, 0x01};
const Bytes kArpRequestUnicast = {
    0x02, 0xbb, 0x00, 0x00, 0x00, 0x02, 0x02, 0xaa, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 0x06,
    0x04, 0x00, 0x01, 0x02, 0xaa, 0x00, 0x00, 0x00, 0x01, 0xc0, 0x00, 0x02, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xc0, 0x00, 0x02, 0x01};
const Bytes kSolicitation = {
    0x33, 0x33, 0xff, 0x45, 0x67, 0x89, 0x02, 0xaa, 0x00, 0x00, 0x00, 0x01, 0x86, 0xdd, 0x60, 0x00, 0x00, 0x00, 0x00,
    0x20, 0x3a, 0xff, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
    0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0x45, 0x67, 0x89, 0x87, 0x00, 0x28,
    0xd4, 0x00, 0x00, 0x00, 0x00, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x23, 0x45,
    0x67, 0x89, 0x01, 0x01, 0x02, 0xaa, 0x00, 0x00, 0x00, 0x01};
const Bytes kSolicitationUnicast = {
    0x02, 0xbb, 0x00, 0x00, 0x00, 0x02, 0x02, 0xaa, 0x00, 0x00, 0x00, 0x01, 0x86, 0xdd, 0x60, 0x00, 0x00, 0x00, 0x00,
    0x20, 0x3a, 0xff, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
    0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x23, 0x45, 0x67, 0x89, 0x87, 0x00, 0xd6,
    0x1e, 0x00, 0x00, 0x00, 0x00, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x23, 0x45,
    0x67, 0x89, 0x01, 0x01, 0x02, 0xaa, 0x00, 0x00, 0x00, 0x01};
// Ether(dst=own, src=nh)/IPv6(src=tgt, dst="2001:db8::10", hlim=255)/ICMPv6ND_NA(tgt=tgt, R=1, S=1, O=1)
//     /ICMPv6NDOptDstLLAddr(lladdr=nh)
const Bytes kAdvert = {
    0x02, 0xaa, 0x00, 0x00, 0x00, 0x01, 0x02, 0xbb, 0x00, 0x00, 0x00, 0x02, 0x86, 0xdd, 0x60, 0x00, 0x00, 0x00, 0x00,
    0x20, 0x3a, 0xff, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x23, 0x45, 0x67, 0x89,
    0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x88, 0x00, 0xf4,
    0x0b, 0xe0, 0x00, 0x00, 0x00, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x23, 0x45,
    0x67, 0x89, 0x02, 0x01, 0x02, 0xbb, 0x00, 0x00, 0x00, 0x02};
// Ether(dst=own, src=nh)/ARP(op=2, hwsrc=nh, psrc="192.0.2.1", hwdst=own, pdst="192.0.2.10")
const Bytes kArpReply = {
    0x02, 0xaa, 0x00, 0x00, 0x00, 0x01, 0x02, 0xbb, 0x00, 0x00, 0x00, 0x02, 0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 0x06,
    0x04, 0x00, 0x02, 0x02, 0xbb, 0x00, 0x00, 0x00, 0x02, 0xc0, 0x00, 0x02, 0x01, 0x02, 0xaa, 0x00, 0x00, 0x00, 0x01,
    0xc0, 0x00, 0x02, 0x0a};

// Re-computes the ICMPv6 checksum of an NA-shaped frame (IPv6 at 14, ICMPv6 at 54).
void fix_icmpv6_checksum(Bytes& f) {
    f[56] = f[57] = 0;
    uint32_t sum = 0;
    const size_t len = f.size() - 54;
    for (size_t i = 22; i < 54; i += 2) sum += static_cast<uint32_t>(f[i] << 8 | f[i + 1]);
    sum += static_cast<uint32_t>(len) + 58;
    for (size_t i = 54; i < f.size(); i += 2)
        sum += static_cast<uint32_t>(f[i] << 8 | (i + 1 < f.size() ? f[i + 1] : 0));
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    const auto c = static_cast<uint16_t>(~sum);
    f[56] = static_cast<uint8_t>(c >> 8);
    f[57] = static_cast<uint8_t>(c);
}

}  // namespace

TEST_CASE("an ARP request is scapy's, broadcast or unicast to the known MAC", "[neighbour][arp]") {
    Bytes out(64, 0xee);
    REQUIRE(write_arp_request(out, kOwn, ip("192.0.2.10"), ip("192.0.2.1")) == kArpRequestLen);
    CHECK(Bytes(out.begin(), out.begin() + kArpRequestLen) == kArpRequest);
    REQUIRE(write_arp_request(out, kOwn, ip("192.0.2.10"), ip("192.0.2.1"), &kNextHop) == kArpRequestLen);
    CHECK(Bytes(out.begin(), out.begin() + kArpRequestLen) == kArpRequestUnicast);
}

TEST_CASE("a neighbour solicitation is scapy's: solicited-node group, source link-layer option, checksum",
          "[neighbour][nd]") {
    CHECK(solicited_node_address(ip("2001:db8::1:2345:6789")) == ip("ff02::1:ff45:6789"));
    CHECK(ipv6_multicast_mac(ip("ff02::1:ff45:6789")) == MacAddress{0x33, 0x33, 0xff, 0x45, 0x67, 0x89});
    Bytes out(128, 0xee);
    REQUIRE(write_neighbour_solicitation(out, kOwn, ip("2001:db8::10"), ip("2001:db8::1:2345:6789")) ==
            kNeighbourSolicitationLen);
    CHECK(Bytes(out.begin(), out.begin() + kNeighbourSolicitationLen) == kSolicitation);
    REQUIRE(write_neighbour_solicitation(out, kOwn, ip("2001:db8::10"), ip("2001:db8::1:2345:6789"), &kNextHop) ==
            kNeighbourSolicitationLen);
    CHECK(Bytes(out.begin(), out.begin() + kNeighbourSolicitationLen) == kSolicitationUnicast);
}

TEST_CASE("a request is not written into a short buffer or for the wrong family", "[neighbour]") {
    Bytes small(kArpRequestLen - 1);
    CHECK(write_arp_request(small, kOwn, ip("192.0.2.10"), ip("192.0.2.1")) == 0);
    Bytes out(128);
    CHECK(write_arp_request(out, kOwn, ip("2001:db8::10"), ip("192.0.2.1")) == 0);
    CHECK(write_neighbour_solicitation(out, kOwn, ip("192.0.2.10"), ip("2001:db8::1")) == 0);
    Bytes short_ns(kNeighbourSolicitationLen - 1);
    CHECK(write_neighbour_solicitation(short_ns, kOwn, ip("2001:db8::10"), ip("2001:db8::1")) == 0);
}

TEST_CASE("an ARP reply and a neighbour advertisement give the sender's address and MAC", "[neighbour]") {
    NeighbourReply r;
    REQUIRE(parse_neighbour_reply(kArpReply, r) == NeighbourFrame::arp_reply);
    CHECK(r.sender == ip("192.0.2.1"));
    CHECK(r.mac == kNextHop);
    CHECK(r.has_mac);

    REQUIRE(parse_neighbour_reply(kAdvert, r) == NeighbourFrame::neighbour_advert);
    CHECK(r.sender == ip("2001:db8::1:2345:6789"));
    CHECK(r.mac == kNextHop);
    CHECK(r.has_mac);
    CHECK(r.solicited);

    // Without the target link-layer option (allowed in answer to a unicast NS).
    Bytes bare(kAdvert.begin(), kAdvert.end() - 8);
    bare[19] = 24;
    fix_icmpv6_checksum(bare);
    REQUIRE(parse_neighbour_reply(bare, r) == NeighbourFrame::neighbour_advert);
    CHECK_FALSE(r.has_mac);

    // Ethernet padding after the IPv6 packet is not an option.
    Bytes padded = kAdvert;
    padded.resize(padded.size() + 10, 0);
    CHECK(parse_neighbour_reply(padded, r) == NeighbourFrame::neighbour_advert);
}

TEST_CASE("requests, solicitations and other traffic are not replies", "[neighbour]") {
    NeighbourReply r;
    CHECK(parse_neighbour_reply(kArpRequest, r) == NeighbourFrame::other);
    CHECK(parse_neighbour_reply(kSolicitation, r) == NeighbourFrame::other);
}

TEST_CASE("a malformed reply is refused with a reason, never read past its end", "[neighbour][hostile]") {
    struct Case {
        const char* what;
        Bytes frame;
    };
    std::vector<Case> cases;
    {
        Bytes f = kArpReply;
        f[15] = 6;  // hardware type 6 (IEEE 802)
        cases.push_back({"ARP of another hardware type", f});
        f = kArpReply;
        f[22] = 0x01;  // sender MAC multicast
        cases.push_back({"ARP reply with a multicast sender MAC", f});
        f = kArpReply;
        std::memset(f.data() + 22, 0, 6);
        cases.push_back({"ARP reply with a zero sender MAC", f});
        cases.push_back({"ARP reply cut short", Bytes(kArpReply.begin(), kArpReply.end() - 1)});
    }
    {
        Bytes f = kAdvert;
        f[57] ^= 1;
        cases.push_back({"NA with a wrong checksum", f});
        f = kAdvert;
        f[21] = 254;
        fix_icmpv6_checksum(f);
        cases.push_back({"NA with hop limit 254 (routed)", f});
        f = kAdvert;
        f[55] = 1;
        fix_icmpv6_checksum(f);
        cases.push_back({"NA with code 1", f});
        f = kAdvert;
        f[79] = 0;
        fix_icmpv6_checksum(f);
        cases.push_back({"NA with an option of length 0", f});
        f = kAdvert;
        f[79] = 2;
        fix_icmpv6_checksum(f);
        cases.push_back({"NA with an option past the end", f});
        f = kAdvert;
        f[80] = 0x33;
        fix_icmpv6_checksum(f);
        cases.push_back({"NA with a multicast target MAC", f});
        f = Bytes(kAdvert.begin(), kAdvert.begin() + 54 + 20);
        f[19] = 20;
        fix_icmpv6_checksum(f);
        cases.push_back({"NA of 20 bytes", f});
        f = kAdvert;
        f[62] = 0xff;
        fix_icmpv6_checksum(f);
        cases.push_back({"NA for a multicast target", f});
    }
    for (const Case& c : cases) {
        INFO(c.what);
        NeighbourReply r;
        CHECK(parse_neighbour_reply(c.frame, r) == NeighbourFrame::malformed);
        CHECK(std::strlen(r.why) > 0);
    }
    // Every prefix of a good reply is refused or parsed, never read beyond.
    for (const Bytes* good : {&kArpReply, &kAdvert}) {
        for (size_t n = 0; n < good->size(); ++n) {
            const std::vector<uint8_t> cut(good->begin(), good->begin() + static_cast<long>(n));
            NeighbourReply r;
            CHECK(parse_neighbour_reply(cut, r) != (good == &kArpReply ? NeighbourFrame::arp_reply
                                                                       : NeighbourFrame::neighbour_advert));
        }
    }
}
