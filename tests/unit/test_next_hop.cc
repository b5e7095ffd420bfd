// Next-hop resolution's state machine (lb/next_hop.h) on a fake clock: when
// requests go out and to whom, which replies are accepted, how the MAC is
// kept through an unanswered refresh, and the words workers read.
#include <arpa/inet.h>

#include <cstring>
#include <vector>

#include <catch2/catch.hpp>

#include "ip_text.h"
#include "neighbour.h"
#include "next_hop.h"

using namespace jitlb;
using jitlb::test::ip;
using namespace jitlb::lb;

namespace {

using Bytes = std::vector<uint8_t>;

const MacAddress kOwn{0x02, 0xaa, 0x00, 0x00, 0x00, 0x01};
const MacAddress kRouter{0x02, 0xbb, 0x00, 0x00, 0x00, 0x02};
const MacAddress kRouter2{0x02, 0xbb, 0x00, 0x00, 0x00, 0x03};
const MacAddress kBroadcast{0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

NeighbourReply reply(const char* sender, const MacAddress& mac) {
    NeighbourReply r;
    r.sender = ip(sender);
    r.mac = mac;
    r.has_mac = true;
    r.solicited = true;
    return r;
}

// The request due at `now`, or an empty frame when none is.
Bytes poll(NextHopResolver& r, int64_t now) {
    if (!r.due(now)) return {};
    Bytes out(kNeighbourSolicitationLen);
    const size_t n = r.write_request(now, out);
    REQUIRE(n > 0);
    out.resize(n);
    return out;
}

MacAddress dst_of(const Bytes& frame) {
    MacAddress m{};
    std::memcpy(m.data(), frame.data(), 6);
    return m;
}

// An ARP reply frame from (mac, sender) to the node, as a router sends it.
Bytes arp_reply_frame(const MacAddress& mac, const char* sender) {
    Bytes f(42, 0);
    std::memcpy(f.data(), kOwn.data(), 6);
    std::memcpy(f.data() + 6, mac.data(), 6);
    f[12] = 0x08, f[13] = 0x06, f[15] = 1, f[16] = 0x08, f[18] = 6, f[19] = 4, f[21] = 2;
    std::memcpy(f.data() + 22, mac.data(), 6);
    const IpAddress s = ip(sender);
    std::memcpy(f.data() + 28, s.bytes.data(), 4);
    std::memcpy(f.data() + 32, kOwn.data(), 6);
    const IpAddress t = ip("192.0.2.10");
    std::memcpy(f.data() + 38, t.bytes.data(), 4);
    return f;
}

}  // namespace

TEST_CASE("the word workers read holds the MAC and a valid bit; 0 is unresolved", "[next_hop]") {
    const uint64_t w = next_hop_word(kRouter);
    CHECK(next_hop_valid(w));
    CHECK(next_hop_mac(w) == kRouter);
    CHECK_FALSE(next_hop_valid(0));
    // Even an all-zero MAC would be marked valid: validity is never the MAC's value.
    CHECK(next_hop_valid(next_hop_word(MacAddress{})));
}

TEST_CASE("an unresolved next hop is asked at once by broadcast ARP, then every second until it answers",
          "[next_hop]") {
    NextHopResolver r(ip("192.0.2.1"), ip("192.0.2.10"), kOwn);
    CHECK_FALSE(r.resolved());
    Bytes f = poll(r, 5'000);
    REQUIRE(f.size() == kArpRequestLen);
    CHECK(dst_of(f) == kBroadcast);
    CHECK(poll(r, 5'999).empty());
    CHECK(poll(r, 6'000).size() == kArpRequestLen);
    CHECK(poll(r, 6'500).empty());
    CHECK(poll(r, 7'000).size() == kArpRequestLen);
    CHECK(r.stats().requests_sent == 3);
    CHECK_FALSE(r.resolved());
    CHECK(r.word() == 0);
}

TEST_CASE("a reply from the next hop resolves it; 30 s later a unicast refresh checks the MAC", "[next_hop]") {
    NextHopResolver r(ip("192.0.2.1"), ip("192.0.2.10"), kOwn);
    poll(r, 0);
    CHECK(r.on_reply(reply("192.0.2.1", kRouter), 300) == NextHopResolver::Verdict::learned);
    CHECK(r.resolved());
    CHECK(r.mac() == kRouter);
    CHECK(r.word() == next_hop_word(kRouter));
    CHECK(poll(r, 1'000).empty());  // no retry once answered
    CHECK(poll(r, 30'299).empty());
    Bytes refresh = poll(r, 30'300);
    REQUIRE(refresh.size() == kArpRequestLen);
    CHECK(dst_of(refresh) == kRouter);  // unicast to the known MAC
    CHECK(r.on_reply(reply("192.0.2.1", kRouter), 30'310) == NextHopResolver::Verdict::confirmed);
    CHECK(poll(r, 60'309).empty());
    CHECK(dst_of(poll(r, 60'310)) == kRouter);
    CHECK(r.stats().replies_accepted == 2);
    CHECK(r.stats().mac_changes == 0);
}

TEST_CASE("while a refresh is unanswered the last MAC stays in use and requests go broadcast every second; "
          "a silence of 5 s is reported once",
          "[next_hop]") {
    NextHopResolver r(ip("2001:db8::1"), ip("2001:db8::10"), kOwn);
    poll(r, 0);
    REQUIRE(r.on_reply(reply("2001:db8::1", kRouter), 10) == NextHopResolver::Verdict::learned);
    Bytes first = poll(r, 30'010);
    REQUIRE(first.size() == kNeighbourSolicitationLen);
    CHECK(dst_of(first) == kRouter);  // unicast NS to the known MAC
    for (int64_t t = 31'010; t <= 34'010; t += 1'000) {
        Bytes f = poll(r, t);
        REQUIRE(f.size() == kNeighbourSolicitationLen);
        CHECK(dst_of(f) == MacAddress{0x33, 0x33, 0xff, 0x00, 0x00, 0x01});  // solicited-node group
        CHECK(r.resolved());
        CHECK(r.mac() == kRouter);
        CHECK_FALSE(r.check_unanswered(t));
    }
    CHECK(r.check_unanswered(35'010));
    CHECK_FALSE(r.check_unanswered(36'010));  // once per silence
    CHECK(r.stats().unanswered == 1);
    CHECK(r.mac() == kRouter);
    // An answer ends the silence; the next one is reported again.
    r.on_reply(reply("2001:db8::1", kRouter), 36'100);
    CHECK(r.unanswered_since_ms() == -1);
    poll(r, 66'100);
    CHECK_FALSE(r.check_unanswered(70'000));
    CHECK(r.check_unanswered(71'100));
    CHECK(r.stats().unanswered == 2);
}

TEST_CASE("a next hop that never answers is reported after 5 s of requests", "[next_hop]") {
    NextHopResolver r(ip("192.0.2.1"), ip("192.0.2.10"), kOwn);
    for (int64_t t = 0; t < 5'000; t += 100) {
        poll(r, t);
        CHECK_FALSE(r.check_unanswered(t));
    }
    CHECK(r.check_unanswered(5'000));
    CHECK(r.stats().requests_sent == 5);
}

TEST_CASE("a reply from anyone but the next hop is ignored and counted; the MAC stays", "[next_hop]") {
    NextHopResolver r(ip("192.0.2.1"), ip("192.0.2.10"), kOwn);
    poll(r, 0);
    CHECK(r.on_reply(reply("192.0.2.99", kRouter2), 5) == NextHopResolver::Verdict::ignored);
    CHECK_FALSE(r.resolved());
    CHECK(r.on_reply(reply("192.0.2.1", kRouter), 6) == NextHopResolver::Verdict::learned);
    CHECK(r.on_reply(reply("192.0.2.2", kRouter2), 7) == NextHopResolver::Verdict::ignored);
    CHECK(r.on_reply(reply("2001:db8::1", kRouter2), 8) == NextHopResolver::Verdict::ignored);
    CHECK(r.mac() == kRouter);
    CHECK(r.stats().replies_ignored == 3);
    CHECK(r.stats().replies_accepted == 1);
    // An NA without a link-layer option says nothing before a MAC is known.
    NextHopResolver v6(ip("2001:db8::1"), ip("2001:db8::10"), kOwn);
    NeighbourReply bare = reply("2001:db8::1", kRouter);
    bare.has_mac = false;
    CHECK(v6.on_reply(bare, 0) == NextHopResolver::Verdict::ignored);
    CHECK(v6.on_reply(reply("2001:db8::1", kRouter), 1) == NextHopResolver::Verdict::learned);
    CHECK(v6.on_reply(bare, 2) == NextHopResolver::Verdict::confirmed);
    CHECK(v6.mac() == kRouter);
}

TEST_CASE("a reply with another MAC replaces it and is counted as a change", "[next_hop]") {
    NextHopResolver r(ip("192.0.2.1"), ip("192.0.2.10"), kOwn);
    r.on_reply(reply("192.0.2.1", kRouter), 0);
    CHECK(r.on_reply(reply("192.0.2.1", kRouter2), 1) == NextHopResolver::Verdict::changed);
    CHECK(r.mac() == kRouter2);
    CHECK(r.stats().mac_changes == 1);
}

TEST_CASE("a set publishes each family's MAC; with one next hop it serves both families", "[next_hop]") {
    NextHopMacs macs;
    SECTION("IPv4 only") {
        NextHopSet set(kOwn);
        REQUIRE(set.add(ip("192.0.2.1"), ip("192.0.2.10")));
        CHECK_FALSE(set.add(ip("192.0.2.2"), ip("192.0.2.10")));    // one per family
        CHECK_FALSE(set.add(ip("2001:db8::1"), ip("192.0.2.10")));  // mixed families
        set.publish(macs);
        CHECK(macs.v4.load() == 0);
        CHECK(macs.v6.load() == 0);
        const Bytes f = arp_reply_frame(kRouter, "192.0.2.1");
        const auto result = set.on_frame(f, 10);
        CHECK(result.kind == NeighbourFrame::arp_reply);
        CHECK(result.verdict == NextHopResolver::Verdict::learned);
        set.publish(macs);
        CHECK(macs.v4.load() == next_hop_word(kRouter));
        CHECK(macs.v6.load() == next_hop_word(kRouter));
        CHECK(set.resolved_count() == 1);
    }
    SECTION("both families, each its own router") {
        NextHopSet set(kOwn);
        REQUIRE(set.add(ip("192.0.2.1"), ip("192.0.2.10")));
        REQUIRE(set.add(ip("2001:db8::1"), ip("2001:db8::10")));
        set.resolvers()[1].on_reply(reply("2001:db8::1", kRouter2), 0);
        set.publish(macs);
        CHECK(macs.v4.load() == 0);
        CHECK(macs.v6.load() == next_hop_word(kRouter2));
        CHECK(set.on_frame(arp_reply_frame(kRouter, "192.0.2.1"), 1).verdict == NextHopResolver::Verdict::learned);
        set.publish(macs);
        CHECK(macs.v4.load() == next_hop_word(kRouter));
        CHECK(set.resolved_count() == 2);
    }
    SECTION("malformed frames and replies of a family without a next hop are counted") {
        NextHopSet set(kOwn);
        REQUIRE(set.add(ip("2001:db8::1"), ip("2001:db8::10")));
        Bytes bad = arp_reply_frame(kRouter, "192.0.2.1");
        bad[22] = 0x01;  // multicast sender MAC
        CHECK(set.on_frame(bad, 0).kind == NeighbourFrame::malformed);
        CHECK(set.on_frame(Bytes(10, 0), 0).kind == NeighbourFrame::malformed);
        CHECK(set.malformed() == 2);
        CHECK(set.on_frame(arp_reply_frame(kRouter, "192.0.2.1"), 0).verdict ==
              NextHopResolver::Verdict::ignored);
        CHECK(set.totals().replies_ignored == 1);
        CHECK(set.resolved_count() == 0);
    }
}
