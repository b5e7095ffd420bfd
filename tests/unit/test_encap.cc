// Encapsulation: the error cases and the fields the scapy golden test
// (tests/golden/encap_vs_scapy.py) does not vary.
#include <catch2/catch.hpp>

#include <vector>

#include "encap.h"
#include "packet_builder.h"

using namespace jitlb;
using namespace jitlb::test;

namespace {
IpAddress v4addr(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
    IpAddress x;
    x.version = IpVersion::v4;
    x.bytes[0] = a; x.bytes[1] = b; x.bytes[2] = c; x.bytes[3] = d;
    return x;
}
}  // namespace

TEST_CASE("outer source keeps the prefix and takes host bits from the flow hash", "[encap]") {
    SourcePrefix p{v4addr(100, 64, 0, 0), 16};
    const IpAddress a = outer_source(p, 0x1234);
    CHECK(a.bytes[0] == 100);
    CHECK(a.bytes[1] == 64);
    CHECK(a.bytes[2] == 0x12);
    CHECK(a.bytes[3] == 0x34);
    p.prefix_len = 32;  // no host bits: the address itself
    CHECK(outer_source(p, ~0ull) == v4addr(100, 64, 0, 0));
    IpAddress six;
    six.version = IpVersion::v6;
    six.bytes[0] = 0x20;
    six.bytes[15] = 0xff;  // host bits of the base are replaced
    const IpAddress b = outer_source({six, 120}, 0x01);
    CHECK(b.bytes[0] == 0x20);
    CHECK(b.bytes[15] == 0x01);
}

TEST_CASE("encapsulation refuses a bad inner packet, backend or header size", "[encap]") {
    EncapParams params;
    params.source_v4 = {v4addr(100, 64, 0, 0), 16};
    const Bytes inner = ipv4({}, tcp(1, 2));
    std::vector<uint8_t> hdr(encap_header_len(EncapKind::ipip, IpVersion::v4));
    CHECK(write_encap_headers(hdr, inner, v4addr(10, 0, 0, 1), 7, params) == EncapError::ok);
    CHECK(hdr[14 + 9] == 4);  // IP-in-IP
    CHECK(write_encap_headers(hdr, Bytes{0x45, 0}, v4addr(10, 0, 0, 1), 7, params) == EncapError::bad_inner);
    Bytes lying = inner;
    lying[3] ^= 1;  // total length no longer matches
    CHECK(write_encap_headers(hdr, lying, v4addr(10, 0, 0, 1), 7, params) == EncapError::bad_inner);
    CHECK(write_encap_headers(hdr, inner, IpAddress{}, 7, params) == EncapError::bad_backend);
    std::vector<uint8_t> small(hdr.size() - 1);
    CHECK(write_encap_headers(small, inner, v4addr(10, 0, 0, 1), 7, params) == EncapError::header_size);
    CHECK(encap_header_len(EncapKind::gue, IpVersion::v6) == 14 + 40 + 8);
}

TEST_CASE("l2 dsr rewrites only the two MAC addresses", "[encap]") {
    Bytes frame = eth4(ipv4({}, tcp(1, 2)));
    const Bytes before = frame;
    rewrite_l2_dsr(frame, {0xb, 0xb, 0xb, 0xb, 0xb, 0xb}, {0xa, 0xa, 0xa, 0xa, 0xa, 0xa});
    CHECK(frame[0] == 0xb);
    CHECK(frame[5] == 0xb);
    CHECK(frame[6] == 0xa);
    CHECK(frame[11] == 0xa);
    CHECK(std::equal(frame.begin() + 12, frame.end(), before.begin() + 12));
}
