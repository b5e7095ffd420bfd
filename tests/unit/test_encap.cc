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

TEST_CASE("write_ipip4_headers writes the bytes write_encap_headers writes for IPv4 in IPv4", "[encap]") {
    // Random inner headers (TOS, DF or not, lengths), flow hashes, prefixes,
    // TTLs and backends: both writers, byte for byte, and a valid checksum.
    uint64_t x = 0x9e3779b97f4a7c15;
    const auto next = [&] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return x;
    };
    size_t with_df = 0;
    for (int round = 0; round < 20'000; ++round) {
        const uint32_t inner_len = 20 + static_cast<uint32_t>(next() % 1480);
        std::vector<uint8_t> inner(inner_len, 0);
        inner[0] = 0x45;
        inner[1] = static_cast<uint8_t>(next());
        store_be16(&inner[2], static_cast<uint16_t>(inner_len));
        inner[6] = static_cast<uint8_t>(next() & 0x40);
        with_df += inner[6] != 0;
        inner[9] = 6;
        EncapParams params;
        params.kind = EncapKind::ipip;
        const uint64_t r = next();
        for (size_t i = 0; i < 6; ++i) params.src_mac[i] = static_cast<uint8_t>(r >> (8 * i));
        MacAddress dst{};
        for (size_t i = 0; i < 6; ++i) dst[i] = static_cast<uint8_t>(r >> (8 * i + 16));
        params.dst_mac = dst;
        params.source_v4 = {v4addr(static_cast<uint8_t>(next()), static_cast<uint8_t>(next()), 7, 9),
                            static_cast<uint8_t>(next() % 40)};  // beyond 32: no host bits
        params.ttl = static_cast<uint8_t>(next());
        const IpAddress backend = v4addr(10, static_cast<uint8_t>(next()), static_cast<uint8_t>(next()), 1);
        const uint64_t hash = next();

        std::vector<uint8_t> generic(34), fast(34, 0xee);
        REQUIRE(write_encap_headers(generic, inner, backend, hash, params) == EncapError::ok);
        uint64_t mac_word = uint64_t{1} << 48;  // lb/next_hop.h's valid bit rides along
        for (size_t i = 0; i < 6; ++i) mac_word |= uint64_t{dst[i]} << (8 * i);
        write_ipip4_headers(fast.data(), inner.data(), inner_len, backend.bytes.data(), mac_word, params, hash);
        INFO("round " << round);
        REQUIRE(fast == generic);
        REQUIRE(ipv4_header_sum(fast.data() + 14) == 0xffff);
    }
    CHECK(with_df > 5'000);
    CHECK(with_df < 15'000);
}
