// jitlb-pktgen's traffic model: templates are valid frames whose checksums
// stay valid when stamped, the RX checks classify what comes back (through the
// data plane's own encapsulation code, common/encap.h), and the latency
// histogram's quantiles hold their stated error.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "encap.h"
#include "traffic.h"

using namespace jitlb;
using namespace jitlb::pktgen;

namespace {

IpAddress addr(const char* text) { return *parse_address(text); }

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }

// RFC 1071 over the pseudo-header and segment: 0 (or 0xffff) when valid.
uint16_t l4_checksum_residue(const std::vector<uint8_t>& f, bool v4) {
    const size_t l3 = 14, l4 = v4 ? 34 : 54;
    uint64_t s = 0;
    const auto add = [&](const uint8_t* p, size_t n) {
        for (size_t i = 0; i + 1 < n; i += 2) s += be16(p + i);
        if (n & 1) s += uint64_t{p[n - 1]} << 8;
    };
    add(&f[l3 + (v4 ? 12 : 8)], v4 ? 8 : 32);
    s += (v4 ? f[l3 + 9] : f[l3 + 6]);
    s += f.size() - l4;
    add(&f[l4], f.size() - l4);
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return static_cast<uint16_t>(s);
}

uint16_t ipv4_header_residue(const std::vector<uint8_t>& f) {
    uint64_t s = 0;
    for (size_t i = 14; i < 34; i += 2) s += be16(&f[i]);
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return static_cast<uint16_t>(s);
}

TrafficConfig one_service(const char* vip, bool tcp, Expect expect, uint32_t size) {
    TrafficConfig c;
    ServiceTraffic s;
    s.name = "web";
    s.vip = addr(vip);
    s.port = 80;
    s.tcp = tcp;
    s.expect = expect;
    const bool v4 = s.vip.version == IpVersion::v4;
    s.backends = {addr(v4 ? "10.0.0.1" : "fd00::1"), addr(v4 ? "10.0.0.2" : "fd00::2")};
    s.backend_macs = {Mac{2, 0, 0, 0, 0xbe, 1}, Mac{2, 0, 0, 0, 0xbe, 2}};
    s.granted = {addr(v4 ? "198.18.0.1" : "2001:db8:1::1"), 3};
    s.ungranted = {addr(v4 ? "198.19.0.1" : "2001:db8:2::1"), 2};
    s.flows_per_source = 2;
    c.services.push_back(s);
    REQUIRE(set_sizes(c, std::to_string(size)).empty());
    return c;
}

struct Setup {
    TrafficConfig c;
    std::vector<Flow> flows;
    std::vector<Template> templates;
    std::vector<FlowRx> rx;
    explicit Setup(TrafficConfig config) : c(std::move(config)), flows(make_flows(c)) {
        REQUIRE(check_config(c).empty());
        for (size_t f = 0; f < flows.size(); ++f)
            for (uint32_t size : c.sizes) templates.push_back(build_template(c, flows[f], static_cast<uint32_t>(f), size));
        rx.resize(flows.size());
    }
    std::vector<uint8_t> frame(uint32_t flow, uint32_t seq, uint32_t tsc, size_t size_index = 0) const {
        const Template& t = templates[flow * c.sizes.size() + size_index];
        std::vector<uint8_t> f(t.len);
        write_frame(t, f.data(), seq, tsc);
        return f;
    }
    // The frame as the data plane sends it to `backend` (common/encap.h).
    std::vector<uint8_t> encapsulated(const std::vector<uint8_t>& f, const IpAddress& backend, EncapKind kind) const {
        EncapParams p;
        p.kind = kind;
        p.source_v4 = {addr("10.255.0.0"), 16};
        p.source_v6 = {addr("fd00:ff::"), 64};
        p.dst_mac = {2, 0, 0, 0, 0xfe, 0xfe};
        const std::span<const uint8_t> inner(f.data() + 14, f.size() - 14);
        std::vector<uint8_t> out(encap_header_len(kind, backend.version) + inner.size());
        std::memcpy(out.data() + out.size() - inner.size(), inner.data(), inner.size());
        REQUIRE(write_encap_headers({out.data(), out.size() - inner.size()}, {out.data() + out.size() - inner.size(), inner.size()},
                                    backend, 12345, p) == EncapError::ok);
        return out;
    }
    RxResult check(const std::vector<uint8_t>& f, uint64_t tsc = 1000) {
        RxChecker checker(c, flows, templates);
        return checker.check(f.data(), static_cast<uint32_t>(f.size()), rx, tsc);
    }
};

}  // namespace

TEST_CASE("templates are valid frames and stay valid when stamped, in every family and protocol") {
    struct Kind {
        const char* vip;
        bool tcp;
        uint32_t size;
    };
    for (const Kind k : {Kind{"192.0.2.100", true, 64}, Kind{"192.0.2.100", false, 64}, Kind{"2001:db8::100", true, 82},
                         Kind{"2001:db8::100", false, 78}, Kind{"192.0.2.100", true, 1518},
                         Kind{"2001:db8::100", false, 1280}}) {
        CAPTURE(k.vip, k.tcp, k.size);
        Setup s(one_service(k.vip, k.tcp, Expect::ipip, k.size));
        const bool v4 = k.vip[0] == '1';
        for (uint32_t seq : {1u, 2u, 0xffffffffu, 0x12345678u}) {
            for (uint32_t tsc : {0u, 0xffffu, 0xdeadbeefu}) {
                const auto f = s.frame(3, seq, tsc);
                REQUIRE(f.size() == k.size - 4);
                CHECK(be16(&f[12]) == (v4 ? 0x0800 : 0x86dd));
                if (v4) {
                    CHECK(ipv4_header_residue(f) == 0xffff);
                    CHECK(be16(&f[16]) == f.size() - 14);
                } else {
                    CHECK(be16(&f[18]) == f.size() - 54);
                }
                const size_t l4 = v4 ? 34 : 54;
                CHECK(be16(&f[l4]) == 10001);  // flow 3: second source, second port
                CHECK(be16(&f[l4 + 2]) == 80);
                if (k.tcp || !v4) CHECK(l4_checksum_residue(f, v4) == 0xffff);
                else CHECK(be16(&f[l4 + 6]) == 0);  // IPv4 UDP: no checksum
                const size_t flow_at = l4 + (k.tcp ? 20 : 8);
                CHECK(get_u32(&f[flow_at]) == 3);
                CHECK(get_u32(&f[k.tcp ? l4 + 4 : flow_at + 4]) == seq);
                CHECK(get_u32(&f[k.tcp ? l4 + 8 : flow_at + 8]) == tsc);
            }
        }
    }
}

TEST_CASE("write_frame writes exactly the stamped template at every frame length and nothing beyond it") {
    // write_frame copies a template's head in 32-byte moves, the last one
    // overlapping: every length from the smallest frame to past kSlab, each
    // byte against the template (and the fill pattern beyond kSlab).
    for (const char* vip : {"192.0.2.1", "2001:db8::1"}) {
        const bool v4 = std::string_view(vip).find(':') == std::string_view::npos;
        const uint32_t first = v4 ? 64 : 82;
        for (uint32_t size = first; size <= kSlab + 4 + 70; ++size) {
            CAPTURE(vip, size);
            const Setup st(one_service(vip, true, Expect::ipip, size));
            const Template& t = st.templates[0];
            REQUIRE(t.len == size - 4);
            std::vector<uint8_t> out(t.len + 64, 0xa5);
            write_frame(t, out.data(), 0x01020304, 0x0a0b0c0d);
            std::vector<uint8_t> want(t.len);
            for (size_t i = 0; i < t.len; ++i) want[i] = i < kSlab ? t.head[i] : fill_pattern()[i - kSlab];
            put_u32(want.data() + t.seq_off, 0x01020304);
            put_u32(want.data() + t.tsc_off, 0x0a0b0c0d);
            REQUIRE(t.csum_off != 0);
            const uint16_t c = stamped_checksum(t, 0x01020304, 0x0a0b0c0d);
            want[t.csum_off] = static_cast<uint8_t>(c >> 8);
            want[t.csum_off + 1] = static_cast<uint8_t>(c);
            CHECK(std::equal(want.begin(), want.end(), out.begin()));
            CHECK(std::all_of(out.begin() + t.len, out.end(), [](uint8_t b) { return b == 0xa5; }));
        }
    }
}

TEST_CASE("a frame too small for its headers and the stamp is refused with the minimum") {
    TrafficConfig c = one_service("2001:db8::100", true, Expect::ipip, 78);
    const std::string e = check_config(c);
    CHECK(e.find("at least 82") != std::string::npos);
    CHECK(min_frame_size(IpVersion::v4, true) == 64);
    CHECK(min_frame_size(IpVersion::v4, false) == 64);
    CHECK(min_frame_size(IpVersion::v6, false) == 78);
    TrafficConfig bad = one_service("192.0.2.100", true, Expect::ipip, 64);
    CHECK(set_sizes(bad, "63").find("outside") != std::string::npos);
    CHECK(set_sizes(bad, "64,,128").find("not a number") != std::string::npos);
    bad.services[0].backends.clear();
    CHECK(check_config(bad).find("needs the service's backends") != std::string::npos);
}

TEST_CASE("flows cover every source and port once, and the TX order is a permutation") {
    Setup s(one_service("192.0.2.100", true, Expect::ipip, 64));
    REQUIRE(s.flows.size() == (3 + 2) * 2);
    std::set<std::pair<std::string, uint16_t>> seen;
    size_t granted = 0;
    for (const Flow& f : s.flows) {
        seen.insert({format_address(f.source), f.sport});
        granted += f.granted;
    }
    CHECK(seen.size() == s.flows.size());
    CHECK(granted == 6);
    CHECK(format_address(s.flows[2].source) == "198.18.0.2");
    CHECK(format_address(s.flows[6].source) == "198.19.0.1");
    auto order = make_tx_order(1000, 7);
    CHECK(order != make_tx_order(1000, 8));
    std::sort(order.begin(), order.end());
    for (uint32_t i = 0; i < 1000; ++i) REQUIRE(order[i] == i);
}

TEST_CASE("what comes back through IP-in-IP, GUE, L2 DSR or a reflector is classified") {
    SECTION("IP-in-IP (v4 and v6) and GUE to a backend of the service: ok, then duplicate and reordered") {
        for (const char* vip : {"192.0.2.100", "2001:db8::100"}) {
            for (const EncapKind kind : {EncapKind::ipip, EncapKind::gue}) {
                CAPTURE(vip, static_cast<int>(kind));
                const bool v4 = vip[0] == '1';
                Setup s(one_service(vip, true, kind == EncapKind::gue ? Expect::gue : Expect::ipip, v4 ? 64 : 82));
                const IpAddress b = s.c.services[0].backends[1];
                const auto r = s.check(s.encapsulated(s.frame(1, 5, 777), b, kind), 2000);
                CHECK(r.verdict == RxVerdict::ok);
                CHECK(r.flow == 1);
                CHECK(r.tx_tsc == 777);
                CHECK(s.rx[1].backend == 1);
                CHECK(s.check(s.encapsulated(s.frame(1, 5, 778), b, kind)).verdict == RxVerdict::duplicate);
                CHECK(s.check(s.encapsulated(s.frame(1, 3, 779), b, kind)).verdict == RxVerdict::reordered);
                CHECK(s.check(s.encapsulated(s.frame(1, 3, 779), b, kind)).verdict == RxVerdict::duplicate);
                CHECK(s.check(s.encapsulated(s.frame(1, 100, 780), b, kind)).verdict == RxVerdict::ok);
                CHECK(s.check(s.encapsulated(s.frame(1, 4, 781), b, kind)).verdict == RxVerdict::reordered);  // beyond the window
                CHECK(s.rx[1].packets == 4);
                // A new trial: sequence numbers go on from 100; what was sent before is stale.
                s.rx[1] = FlowRx{.floor = 100};
                CHECK(s.check(s.encapsulated(s.frame(1, 100, 782), b, kind)).verdict == RxVerdict::stale);
                CHECK(s.check(s.encapsulated(s.frame(1, 7, 783), b, kind)).verdict == RxVerdict::stale);
                CHECK(s.check(s.encapsulated(s.frame(1, 101, 784), b, kind)).verdict == RxVerdict::ok);
                CHECK(s.rx[1].packets == 1);
                s.rx[1] = FlowRx{.floor = 0, .highest = 101, .window = 1, .backend = 1};
                // The flow moves to the other backend: misforwarded.
                CHECK(s.check(s.encapsulated(s.frame(1, 101, 0), s.c.services[0].backends[0], kind)).verdict ==
                      RxVerdict::misforwarded);
            }
        }
    }
    SECTION("a destination that is not a backend, or the wrong encapsulation, is misforwarded") {
        Setup s(one_service("192.0.2.100", true, Expect::ipip, 64));
        CHECK(s.check(s.encapsulated(s.frame(0, 1, 1), addr("10.0.0.9"), EncapKind::ipip)).verdict == RxVerdict::misforwarded);
        CHECK(s.check(s.frame(0, 2, 1)).verdict == RxVerdict::misforwarded);  // came back unencapsulated
    }
    SECTION("a source without a grant that comes back has leaked") {
        Setup s(one_service("192.0.2.100", true, Expect::ipip, 64));
        REQUIRE_FALSE(s.flows[7].granted);
        CHECK(s.check(s.encapsulated(s.frame(7, 1, 1), s.c.services[0].backends[0], EncapKind::ipip)).verdict ==
              RxVerdict::leaked);
    }
    SECTION("any changed byte of the inner packet, checksum or stamp included, is corruption") {
        Setup s(one_service("192.0.2.100", true, Expect::ipip, 128));
        const auto good = s.encapsulated(s.frame(2, 1, 9), s.c.services[0].backends[0], EncapKind::ipip);
        const size_t inner = good.size() - (128 - 4 - 14);
        // No changed byte of the inner packet passes: the stamp fields through
        // the checksum; a header the checker cannot read (version, IHL,
        // protocol) or a flow id beyond the flows makes the frame foreign.
        for (size_t i = inner; i < good.size(); ++i) {
            auto bad = good;
            bad[i] ^= 0x40;
            CAPTURE(i - inner);
            const RxVerdict v = s.check(bad).verdict;
            CHECK((v == RxVerdict::corrupted || v == RxVerdict::foreign));
            if (i - inner >= 44) CHECK(v == RxVerdict::corrupted);  // the payload after the flow id
        }
        auto shorter = good;
        shorter.pop_back();
        CHECK(s.check(shorter).verdict == RxVerdict::corrupted);
    }
    SECTION("L2 DSR: the destination MAC must be a backend's; a reflector returns the frame") {
        Setup s(one_service("192.0.2.100", true, Expect::l2dsr, 64));
        auto f = s.frame(0, 1, 1);
        CHECK(s.check(f).verdict == RxVerdict::misforwarded);  // the MAC is still the load balancer's
        const Mac m = s.c.services[0].backend_macs[1];
        std::copy(m.begin(), m.end(), f.begin());
        f = s.frame(0, 2, 1);
        std::copy(m.begin(), m.end(), f.begin());
        CHECK(s.check(f).verdict == RxVerdict::ok);
        Setup r(one_service("192.0.2.100", false, Expect::reflect, 64));
        CHECK(r.check(r.frame(0, 1, 1)).verdict == RxVerdict::ok);
    }
    SECTION("trailing bytes a NIC adds after the IP packet (padding) are not part of it") {
        Setup s(one_service("192.0.2.100", false, Expect::reflect, 64));
        auto f = s.frame(1, 1, 1);
        f.insert(f.end(), 6, 0);
        CHECK(s.check(f).verdict == RxVerdict::ok);
        auto g = s.frame(1, 2, 1);
        g[16] = 0;  // IPv4 total length claims more than the frame holds
        g[17] = 200;
        CHECK(s.check(g).verdict == RxVerdict::corrupted);
    }
    SECTION("frames that are not ours are foreign") {
        Setup s(one_service("192.0.2.100", true, Expect::ipip, 64));
        std::vector<uint8_t> arp(60, 0);
        arp[12] = 0x08, arp[13] = 0x06;
        CHECK(s.check(arp).verdict == RxVerdict::foreign);
        auto f = s.encapsulated(s.frame(0, 1, 1), s.c.services[0].backends[0], EncapKind::ipip);
        put_u32(&f[f.size() - 6], 999999);  // a flow index beyond the flows
        CHECK(s.check(f).verdict == RxVerdict::foreign);
        CHECK(s.check(std::vector<uint8_t>(20, 0)).verdict == RxVerdict::foreign);
    }
}

TEST_CASE("the latency histogram's quantiles are within 1/64 of the exact ones") {
    LatencyHistogram h;
    std::vector<uint64_t> v;
    std::mt19937_64 rng(3);
    std::lognormal_distribution<double> d(8.0, 1.5);
    for (int i = 0; i < 100000; ++i) {
        const uint64_t x = static_cast<uint64_t>(d(rng));
        v.push_back(x);
        h.add(x);
    }
    std::sort(v.begin(), v.end());
    CHECK(h.count() == v.size());
    CHECK(h.min() == v.front());
    CHECK(h.max() == v.back());
    for (double q : {0.0, 0.5, 0.9, 0.99, 0.999, 1.0}) {
        const uint64_t exact = v[std::max<size_t>(1, static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())))) - 1];
        const uint64_t got = h.quantile(q);
        CAPTURE(q, exact, got);
        CHECK(got >= exact);
        CHECK(static_cast<double>(got) <= static_cast<double>(exact) * (1.0 + 1.0 / 64) + 1);
    }
    for (unsigned b = 1; b < LatencyHistogram::kBuckets - 1; ++b)
        REQUIRE(LatencyHistogram::bucket_of(LatencyHistogram::bucket_upper(b)) == b);
    LatencyHistogram other;
    other.add(1);
    h.merge(other);
    CHECK(h.min() == 1);
    CHECK(h.count() == v.size() + 1);
    CHECK(LatencyHistogram{}.quantile(0.5) == 0);
}

TEST_CASE("a traffic file is read strictly, with the key and what is wrong") {
    const std::string path = "/tmp/jitlb-pktgen-test-" + std::to_string(::getpid()) + ".toml";
    const auto load = [&](const std::string& text, TrafficConfig& c) {
        std::ofstream(path) << text;
        return load_traffic_file(path, c);
    };
    TrafficConfig c;
    REQUIRE(load("sizes = \"imix\"\n[[service]]\nname = \"web\"\nvip = \"192.0.2.100\"\nport = 443\nexpect = \"gue\"\n"
                 "backends = [\"10.0.0.1\"]\ngranted = { base = \"198.18.0.1\", count = 10 }\nflows_per_source = 4\n",
                 c) == "");
    CHECK(c.sizes == std::vector<uint32_t>{64, 594, 1518});
    REQUIRE(c.services.size() == 1);
    CHECK(c.services[0].port == 443);
    CHECK(c.services[0].expect == Expect::gue);
    CHECK(c.services[0].granted.count == 10);
    CHECK(check_config(c).empty());
    TrafficConfig d;
    CHECK(load("[[service]]\nvip = \"192.0.2.100\"\nflows_per_sorce = 2\n", d).find(
              "service[0].flows_per_sorce: unknown key (did you mean 'flows_per_source'?)") != std::string::npos);
    CHECK(load("[[service]]\nvip = \"192.0.2.300\"\n", d).find("vip: not an IPv4 or IPv6 address") != std::string::npos);
    CHECK(load("[[service]]\nvip = \"192.0.2.1\"\nport = 70000\n", d).find("port: 70000 is outside 1..65535") !=
          std::string::npos);
    CHECK(load("src_mac = \"02:00:00\"\n[[service]]\nvip = \"192.0.2.1\"\n", d).find("src_mac: not a MAC") !=
          std::string::npos);
    CHECK(load("[[service]\n", d).find("line 1") != std::string::npos);
    std::remove(path.c_str());
}

TEST_CASE("the pacer holds its rate to within a burst, catches up on stalls no faster than its limit and counts longer ones as lost") {
    // 1 GHz TSC, 10 Mpps: a packet every 100 cycles; bursts of 32; 200 us of catch-up.
    constexpr double cpp = 100;
    constexpr uint16_t burst = 32;
    constexpr double max_lag = 200'000;
    const auto run = [&](Pacer& p, uint64_t from, uint64_t to, uint64_t step) {
        uint64_t sent = 0;
        for (uint64_t now = from; now < to; now += step)
            if (p.due(now, burst)) sent += burst;
        return sent;
    };
    SECTION("polled often, the packets booked are the rate times the time") {
        Pacer p(cpp, max_lag, 0);
        const uint64_t sent = run(p, 0, 100'000'000, 37);  // 0.1 s
        CHECK(sent >= 1'000'000 - burst);
        CHECK(sent <= 1'000'000 + burst);
        CHECK(p.stalls() == 0);
        CHECK(p.lost_packets() == 0);
    }
    SECTION("a 150 us stall is caught up: nothing lost, the average rate kept") {
        Pacer p(cpp, max_lag, 0);
        uint64_t sent = run(p, 0, 50'000'000, 37);
        sent += run(p, 50'150'000, 100'000'000, 37);  // away for 150'000 cycles
        CHECK(sent >= 1'000'000 - burst);
        CHECK(sent <= 1'000'000 + burst);
        CHECK(p.stalls() == 0);
    }
    SECTION("a 3 ms stall restarts the schedule: its packets are counted lost, not sent in a flood") {
        Pacer p(cpp, max_lag, 0);
        uint64_t sent = run(p, 0, 50'000'000, 37);
        sent += run(p, 53'000'000, 100'000'000, 37);  // away for 3'000'000 cycles = 30'000 packets
        CHECK(p.stalls() == 1);
        CHECK(p.lost_packets() == Approx(30'000).margin(burst));
        // Booked plus lost is the schedule: the pacer's own error is within a burst.
        CHECK(static_cast<double>(sent) + p.lost_packets() == Approx(1'000'000).margin(2 * burst));
        // Right after the stall, one burst only: no catch-up flood.
        Pacer q(cpp, max_lag, 0);
        run(q, 0, 1'000'000, 37);
        CHECK(q.due(4'000'000, burst));
        CHECK_FALSE(q.due(4'000'001, burst));
    }
    SECTION("a 2 ms stall with a 10% catch-up limit: made up at no more than 1.1 times the rate, nothing lost") {
        // The default of jitlb-pktgen: up to 10 ms behind, caught up at +10%.
        Pacer p(cpp, 10'000'000, 0, 0.10);
        uint64_t sent = run(p, 0, 30'000'000, 37);
        CHECK(p.catch_ups() == 0);
        // Away for 2 ms: 20'000 packets behind, made up at 1 Mpps extra in about 20 ms.
        const uint64_t back = 32'000'000;
        const uint64_t in_first_10ms = run(p, back, back + 10'000'000, 37);
        CHECK(p.catch_ups() == 1);
        CHECK(p.stalls() == 0);
        // The stall is reported: about 2 ms long, from about 30 ms into the schedule.
        CHECK(p.longest_behind() == Approx(2'000'000).margin(100 * burst));
        CHECK(p.longest_behind_at() == Approx(30'000'000).margin(100 * burst));
        // 10 ms at 11 Mpps, give or take a burst or two, not the 10 ms of
        // schedule plus the whole backlog at once.
        CHECK(in_first_10ms >= 110'000 - 2 * burst);
        CHECK(in_first_10ms <= 110'000 + 2 * burst);
        sent += in_first_10ms + run(p, back + 10'000'000, 100'000'000, 37);
        // By the end of 0.1 s the backlog is made up: the average rate is kept.
        CHECK(sent >= 1'000'000 - 2 * burst);
        CHECK(sent <= 1'000'000 + burst);
        CHECK(p.lost_packets() == 0);
    }
    SECTION("on schedule, the catch-up limit changes nothing") {
        Pacer p(cpp, 10'000'000, 0, 0.10);
        const uint64_t sent = run(p, 0, 100'000'000, 37);
        CHECK(sent >= 1'000'000 - burst);
        CHECK(sent <= 1'000'000 + burst);
        CHECK(p.catch_ups() == 0);
    }
    SECTION("behind by more than max_lag with a catch-up limit: the excess is counted lost, the rest made up") {
        Pacer p(cpp, 10'000'000, 0, 0.10);
        uint64_t sent = run(p, 0, 10'000'000, 37);
        sent += run(p, 25'000'000, 100'000'000, 37);  // away 15 ms: over the 10 ms limit
        CHECK(p.stalls() == 1);
        CHECK(p.catch_ups() == 0);  // restarted, not made up
        CHECK(p.lost_packets() == Approx(150'000).margin(burst));
        CHECK(static_cast<double>(sent) + p.lost_packets() == Approx(1'000'000).margin(2 * burst));
    }
    SECTION("no rate: every call is due") {
        Pacer p(0, max_lag, 0);
        CHECK(run(p, 0, 1000, 1) == 1000u * burst);
    }
}
