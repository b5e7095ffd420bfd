// Software RSS's choice of worker (lb/software_rss.h): which frames it hashes,
// that a packet's fragments and a flow's packets stay together, and that
// sources spread evenly over the workers.
#include <catch2/catch.hpp>

#include <array>
#include <map>
#include <optional>

#include "packet_builder.h"
#include "software_rss.h"

using namespace jitlb;
using namespace jitlb::test;
using lb::software_rss_hash;
using lb::software_rss_worker;

namespace {

constexpr uint64_t kSeed = 0x1234'5678'9abc'def0;

std::optional<uint64_t> hash(const Bytes& frame, uint64_t seed = kSeed) { return software_rss_hash(frame, seed); }

Bytes tcp4(const Bytes& src, const Bytes& dst, uint16_t sport, uint16_t dport, std::initializer_list<uint16_t> vlans = {}) {
    return eth4(ipv4({.src = src, .dst = dst}, tcp(sport, dport)), vlans);
}

}  // namespace

TEST_CASE("a flow's packets and every fragment of a packet get the same hash: only the addresses count",
          "[software_rss]") {
    const Bytes src = v4(198, 51, 100, 7), dst = v4(203, 0, 113, 10);
    const auto first = hash(tcp4(src, dst, 40000, 443));
    REQUIRE(first.has_value());
    CHECK(hash(tcp4(src, dst, 40001, 443)) == first);  // another connection of the same pair
    CHECK(hash(eth4(ipv4({.src = src, .dst = dst, .proto = 17}, udp(53, 53)))) == first);
    // A later fragment (offset 185 x 8 bytes, no L4 header): same worker as the first.
    CHECK(hash(eth4(ipv4({.src = src, .dst = dst, .frag = 185}, Bytes(64, 0xee)))) == first);
    // VLAN tags, one or two (802.1Q, 802.1ad outer), do not change it.
    CHECK(hash(tcp4(src, dst, 40000, 443, {7})) == first);
    CHECK(hash(eth(0x0800, ipv4({.src = src, .dst = dst}, tcp(1, 2)), {7, 8}, 0x88a8)) == first);

    const Bytes src6 = v6(7), dst6 = v6(10);
    const auto first6 = hash(eth6(ipv6({.src = src6, .dst = dst6}, tcp(40000, 443))));
    REQUIRE(first6.has_value());
    CHECK(hash(eth6(ipv6({.src = src6, .dst = dst6, .proto = 17}, udp(1, 2)))) == first6);
    CHECK(hash(eth6(ipv6({.src = src6, .dst = dst6, .proto = 6, .ext = {ext_frag(100, false)}}, Bytes(48, 1)))) ==
          first6);
}

TEST_CASE("the hash depends on source, destination and seed, and on every byte of an IPv6 address",
          "[software_rss]") {
    const auto base = hash(tcp4(v4(198, 51, 100, 7), v4(203, 0, 113, 10), 1, 2));
    CHECK(hash(tcp4(v4(198, 51, 100, 8), v4(203, 0, 113, 10), 1, 2)) != base);
    CHECK(hash(tcp4(v4(198, 51, 100, 7), v4(203, 0, 113, 11), 1, 2)) != base);
    CHECK(hash(tcp4(v4(198, 51, 100, 7), v4(203, 0, 113, 10), 1, 2), kSeed + 1) != base);
    // Source and destination swapped: a different hash (a direction is a different flow).
    CHECK(hash(tcp4(v4(203, 0, 113, 10), v4(198, 51, 100, 7), 1, 2)) != base);

    const Bytes frame6 = eth6(ipv6({}, tcp(1, 2)));
    const auto base6 = hash(frame6);
    for (size_t byte = 14 + 8; byte < 14 + 40; ++byte) {  // both addresses
        Bytes changed = frame6;
        changed[byte] ^= 0x01;
        INFO("address byte " << byte - 22);
        CHECK(hash(changed) != base6);
    }
}

TEST_CASE("frames that are not IPv4 or IPv6 with both addresses are not hashed: the owning worker keeps them",
          "[software_rss]") {
    const Bytes mac{0x02, 0, 0, 0, 0, 1};
    CHECK_FALSE(hash(eth_frame(Bytes(6, 0xff), mac, 0x0806,
                               arp(1, mac, v4(10, 0, 0, 1), Bytes(6, 0), v4(10, 0, 0, 2))))
                    .has_value());
    const Bytes ok = tcp4(v4(198, 51, 100, 7), v4(203, 0, 113, 10), 1, 2);
    // Cut anywhere before the end of the destination address.
    for (size_t len = 0; len < 14 + 20; ++len) {
        INFO("length " << len);
        CHECK_FALSE(software_rss_hash({ok.data(), len}, kSeed).has_value());
    }
    CHECK(software_rss_hash({ok.data(), 14 + 20}, kSeed).has_value());
    const Bytes ok6 = eth6(ipv6({}, tcp(1, 2)));
    CHECK_FALSE(software_rss_hash({ok6.data(), 14 + 39}, kSeed).has_value());
    CHECK(software_rss_hash({ok6.data(), 14 + 40}, kSeed).has_value());
    // An IPv4 EtherType carrying a version-6 header, and the reverse.
    Bytes liar = ok;
    liar[14] = 0x65;
    CHECK_FALSE(hash(liar).has_value());
    Bytes liar6 = ok6;
    liar6[14] = 0x45;
    CHECK_FALSE(hash(liar6).has_value());
    // Three VLAN tags: more than the parser takes.
    CHECK_FALSE(hash(tcp4(v4(1, 2, 3, 4), v4(5, 6, 7, 8), 1, 2, {1, 2, 3})).has_value());
}

TEST_CASE("10k sources spread over 2, 3 and 4 workers within 5% of an equal share", "[software_rss]") {
    for (const unsigned workers : {2u, 3u, 4u}) {
        std::map<unsigned, unsigned> per_worker;
        for (unsigned i = 0; i < 10'000; ++i) {
            const Bytes src = v4(10, static_cast<uint8_t>(i >> 16), static_cast<uint8_t>(i >> 8), static_cast<uint8_t>(i));
            const auto h = hash(tcp4(src, v4(203, 0, 113, 10), 40000, 443));
            REQUIRE(h.has_value());
            const unsigned w = software_rss_worker(*h, workers);
            REQUIRE(w < workers);
            ++per_worker[w];
        }
        INFO(workers << " workers");
        REQUIRE(per_worker.size() == workers);
        for (const auto& [w, n] : per_worker) {
            INFO("worker " << w << ": " << n);
            CHECK(std::abs(static_cast<double>(n) - 10'000.0 / workers) <= 0.05 * 10'000.0 / workers);
        }
    }
}

TEST_CASE("software_rss_worker maps the whole hash range onto 0..workers-1", "[software_rss]") {
    CHECK(software_rss_worker(0, 4) == 0);
    CHECK(software_rss_worker(~uint64_t{0}, 4) == 3);
    CHECK(software_rss_worker(uint64_t{1} << 63, 4) == 2);
    CHECK(software_rss_worker(~uint64_t{0}, 1) == 0);
    CHECK(software_rss_worker(~uint64_t{0}, 64) == 63);
}
