// The worker's pipeline over plain buffers: the grant verdicts and every drop
// reason, the exact output bytes of each forwarding mode (IPIP, IPv6-in-IPv6,
// GUE, L2 DSR) with the buffer geometry after encapsulation, ARP and neighbour
// discovery replies, the exception path, and flows on their backends (Maglev
// spread, the connection table across backend changes, a full table), checked
// against an independent model: maglev_lookup(flow_hash(tuple, seed)).
#include <arpa/inet.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "ip_text.h"
#include "flow_hash.h"
#include "grant_table.h"
#include "maglev.h"
#include "packet_builder.h"
#include "pipeline.h"
#include "service_table.h"

using namespace jitlb;
using namespace jitlb::lb;
using namespace jitlb::test;

namespace {

constexpr uint64_t kNow = 1'000'000;  // ticks; ticks_per_second = 1000, so ms
constexpr uint64_t kSeed = 0x5eed'f10e'0000'0001;
const MacAddress kNodeMac{0x02, 0xaa, 0x00, 0x00, 0x00, 0x01};
const MacAddress kNextHopMac{0x02, 0xbb, 0x00, 0x00, 0x00, 0x02};
const MacAddress kDsrBackendMac{0x02, 0xcc, 0x00, 0x00, 0x00, 0x03};

// The address's bytes as on the wire (4 or 16).
Bytes wire(const char* text) {
    const IpAddress a = ip(text);
    return Bytes(a.bytes.begin(), a.bytes.begin() + (a.version == IpVersion::v4 ? 4 : 16));
}

Bytes mac_bytes(const MacAddress& m) { return Bytes(m.begin(), m.end()); }

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }

// RFC 1071, 16 bits at a time, written here rather than taken from
// packet.h, so that the pipeline's checksums are checked independently.
uint32_t sum16(const uint8_t* p, size_t n, uint32_t sum = 0) {
    for (size_t i = 0; i + 1 < n; i += 2) sum += static_cast<uint32_t>(p[i] << 8 | p[i + 1]);
    if (n % 2 != 0) sum += static_cast<uint32_t>(p[n - 1] << 8);
    return sum;
}
uint16_t fold(uint32_t sum) {
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return static_cast<uint16_t>(sum);
}
// ICMPv6 over the pseudo-header; `ip6` is the IPv6 header, the message follows it.
uint16_t icmpv6_sum(const uint8_t* ip6, const uint8_t* icmp, size_t len) {
    uint32_t sum = sum16(ip6 + 8, 32);  // source, destination
    sum += static_cast<uint32_t>(len >> 16) + static_cast<uint32_t>(len & 0xffff) + 58;
    return fold(sum16(icmp, len, sum));
}

NodeIdentity node_identity(uint64_t seed = kSeed) {
    NodeIdentity n;
    n.mac = kNodeMac;
    n.next_hop_mac = kNextHopMac;
    n.addresses = {ip("192.0.2.10"), ip("2001:db8::10")};
    n.outer_source_v4 = {ip("10.255.0.0"), 16};
    n.outer_source_v6 = {ip("fd00:ff::"), 64};
    n.outer_ttl = 64;
    n.mtu = 1500;
    n.flow_hash_seed = seed;
    n.ticks_per_second = 1000;
    n.exception_allow = kExceptionSsh;
    return n;
}

// Memory as the state file gives it: 64-byte aligned (page aligned here).
struct AlignedMemory {
    explicit AlignedMemory(size_t n) : size((n + 4095) / 4096 * 4096) {
        data = static_cast<std::byte*>(std::aligned_alloc(4096, size));
        std::memset(data, 0xa5, size);  // create must not rely on zeroed memory
    }
    ~AlignedMemory() { std::free(data); }
    AlignedMemory(const AlignedMemory&) = delete;
    AlignedMemory& operator=(const AlignedMemory&) = delete;
    std::byte* data;
    size_t size;
};

GrantTableConfig grant_config() {
    GrantTableConfig c;
    c.capacity = 256;
    c.max_service_id = 16;
    c.ticks_per_second = 1000;  // ticks are ms
    c.hash_seed = 0x5eed;
    return c;
}

// A frame in a buffer with room before and after it, as an mbuf has.
struct Buf {
    explicit Buf(const Bytes& frame, uint32_t headroom = 128, uint32_t tailroom = 64)
        : storage(headroom + frame.size() + tailroom, 0xee) {
        std::copy(frame.begin(), frame.end(), storage.begin() + headroom);
        pkt.data = storage.data() + headroom;
        pkt.len = static_cast<uint32_t>(frame.size());
        pkt.headroom = headroom;
        pkt.tailroom = tailroom;
    }
    Buf(Buf&&) = default;
    Buf& operator=(Buf&&) = default;
    Buf(const Buf&) = delete;
    Buf& operator=(const Buf&) = delete;

    Bytes bytes() const { return Bytes(pkt.data, pkt.data + pkt.len); }
    uint32_t capacity() const { return pkt.headroom + pkt.len + pkt.tailroom; }
    // The PacketBuf describes the same memory it started with.
    bool consistent() const {
        return pkt.data == storage.data() + pkt.headroom && capacity() == storage.size();
    }

    std::vector<uint8_t> storage;
    PacketBuf pkt;
};

// A worker with its node identity, grant table, services and counters.
struct TestNode {
    explicit TestNode(ConnTableConfig conn = {}, NodeIdentity identity = node_identity())
        : memory(GrantTable::bytes_needed(grant_config())) {
        GrantTableError error;
        auto w = GrantTableWriter::create({memory.data, memory.size}, grant_config(), {}, error);
        INFO(error.message);
        REQUIRE(w);
        grants.emplace(std::move(*w));
        pipeline = std::make_unique<Pipeline>(identity, conn, grants->reader(), counters);
    }

    uint64_t get(Counter c) const { return counters.get(c); }
    uint64_t parse_drops(DropReason r) const { return counters.parse_drops[static_cast<size_t>(r)]; }

    // A grant for `prefix`/`len` of `service`, valid [not_before, not_after) ms.
    // Applied at `not_before`, so that a grant of the past or future is taken.
    void grant(uint16_t service, const char* prefix, uint8_t len, int64_t not_before, int64_t not_after) {
        const IpAddress a = ip(prefix);
        GrantEntry e;
        e.key = {service, a.version, len, a.bytes};
        ++grant_count;
        std::memcpy(e.grant_id.data(), &grant_count, sizeof grant_count);
        e.issuer_key_id.fill(1);
        e.not_before_ms = not_before;
        e.not_after_ms = not_after;
        e.record_hash.fill(static_cast<uint8_t>(grant_count));
        const UpsertResult r = grants->upsert(e, not_before);
        INFO(upsert_result_name(r));
        REQUIRE(upsert_succeeded(r));
    }
    void grant(uint16_t service, const char* prefix, uint8_t len) {
        grant(service, prefix, len, static_cast<int64_t>(kNow) - 1000, static_cast<int64_t>(kNow) + 60'000);
    }

    void apply(uint16_t id, const ServiceSet& set) {
        const ServiceApplyResult r = services.apply(id, set);
        INFO(r.error);
        REQUIRE(r.ok);
    }
    void apply(const BackendSet& set) {
        const ServiceApplyResult r = services.apply(set);
        INFO(r.error);
        REQUIRE(r.ok);
    }
    const Service& service(const char* name) {
        const Service* s = services.find_by_name(name);
        REQUIRE(s != nullptr);
        return *s;
    }

    Action process(Buf& b, uint64_t now = kNow) { return process_with(*pipeline, b, now); }
    Action process_with(Pipeline& p, Buf& b, uint64_t now = kNow) {
        Action action = Action::transmit;
        p.process_burst({&b.pkt, 1}, *services.current(), now, {&action, 1});
        return action;
    }
    // Any number of buffers, in bursts of kBurst.
    std::vector<Action> process(std::vector<Buf>& bufs, uint64_t now = kNow) {
        return process_with(*pipeline, bufs, now);
    }
    // Bursts that came in by the port of index `port`.
    std::vector<Action> process_on(size_t port, std::vector<Buf>& bufs) {
        return process_with(*pipeline, bufs, kNow, port);
    }
    Action process_on(size_t port, Buf& b) {
        Action action = Action::transmit;
        pipeline->process_burst({&b.pkt, 1}, *services.current(), kNow, {&action, 1}, nullptr, port);
        return action;
    }
    std::vector<Action> process_with(Pipeline& p, std::vector<Buf>& bufs, uint64_t now = kNow, size_t port = 0) {
        std::vector<Action> actions(bufs.size(), Action::transmit);
        for (size_t start = 0; start < bufs.size(); start += kBurst) {
            const size_t n = std::min(kBurst, bufs.size() - start);
            PacketBuf pkts[kBurst];
            for (size_t i = 0; i < n; ++i) pkts[i] = bufs[start + i].pkt;
            p.process_burst({pkts, n}, *services.current(), now, {actions.data() + start, n}, nullptr, port);
            for (size_t i = 0; i < n; ++i) bufs[start + i].pkt = pkts[i];
        }
        return actions;
    }

    AlignedMemory memory;
    std::optional<GrantTableWriter> grants;
    ServiceTable services;
    WorkerCounters counters;
    std::unique_ptr<Pipeline> pipeline;
    uint64_t grant_count = 0;
};

Vip vip(const char* address, uint16_t port, L4Protocol protocol = L4Protocol::tcp) {
    return {ip(address), port, protocol};
}

ServiceSet service_set(const char* name, std::vector<Vip> vips, ForwardingMode mode = ForwardingMode::ipip,
                       uint16_t gue_port = 0) {
    ServiceSet s;
    s.name = name;
    s.mode = mode;
    s.gue_port = gue_port;
    s.maglev_table_size = 65537;
    s.vips = std::move(vips);
    return s;
}

Backend backend(const char* id, const char* address, MacAddress mac = {}) {
    Backend b;
    b.id = id;
    b.address = ip(address);
    b.mac = mac;
    return b;
}

// The services most tests use, one backend each so that outputs are exact:
//   1 web4  IPIP  203.0.113.10:80/tcp, :53/udp   -> 172.16.0.1
//   2 web6  IPIP  [2001:db8::64]:443/tcp         -> 2001:db8:b::1
//   3 gue   GUE   203.0.113.20:80/tcp, port 5555 -> 172.16.0.2
//   4 dsr   L2DSR 203.0.113.30:80/tcp            -> 172.16.0.3, 02:cc:00:00:00:03
//   5 down  IPIP  203.0.113.40:80/tcp            -> no backends
//   6 off   IPIP  203.0.113.50:80/tcp, disabled  -> 172.16.0.4
// The client 198.51.100.7 holds a grant for 1, 3, 4, 5, 6 and 2001:db8::7 for 2.
constexpr uint16_t kWeb4 = 1, kWeb6 = 2, kGue = 3, kDsr = 4, kDown = 5, kOff = 6;
constexpr uint16_t kGuePort = 5555;  // not encap.h's default 6080

void add_standard_services(TestNode& n) {
    n.apply(kWeb4, service_set("web4", {vip("203.0.113.10", 80), vip("203.0.113.10", 53, L4Protocol::udp)}));
    n.apply({"web4", {backend("w4", "172.16.0.1")}});
    n.apply(kWeb6, service_set("web6", {vip("2001:db8::64", 443)}));
    n.apply({"web6", {backend("w6", "2001:db8:b::1")}});
    n.apply(kGue, service_set("gue", {vip("203.0.113.20", 80)}, ForwardingMode::gue, kGuePort));
    n.apply({"gue", {backend("g", "172.16.0.2")}});
    n.apply(kDsr, service_set("dsr", {vip("203.0.113.30", 80)}, ForwardingMode::l2dsr));
    n.apply({"dsr", {backend("d", "172.16.0.3", kDsrBackendMac)}});
    n.apply(kDown, service_set("down", {vip("203.0.113.40", 80)}));
    ServiceSet off = service_set("off", {vip("203.0.113.50", 80)});
    off.flags = kServiceFlagDisabled;
    n.apply(kOff, off);
    n.apply({"off", {backend("o", "172.16.0.4")}});
}

void grant_standard_client(TestNode& n) {
    for (uint16_t s : {kWeb4, kGue, kDsr, kDown, kOff}) n.grant(s, "198.51.100.7", 32);
    n.grant(kWeb6, "2001:db8::7", 128);
}

Bytes tcp4(const char* src, const char* dst, uint16_t sport, uint16_t dport, size_t payload = 0) {
    return ipv4(Ipv4Opts{.src = wire(src), .dst = wire(dst)}, tcp(sport, dport, 0x02, payload));
}
Bytes tcp6(const char* src, const char* dst, uint16_t sport, uint16_t dport, size_t payload = 0) {
    return ipv6(Ipv6Opts{.src = wire(src), .dst = wire(dst)}, tcp(sport, dport, 0x02, payload));
}

// The counters of the grant verdict, for checking that exactly one moved.
const Counter kVerdictCounters[] = {Counter::forwarded, Counter::drop_no_grant, Counter::drop_grant_expired,
                                    Counter::drop_grant_not_yet_valid, Counter::drop_grant_busy};

}  // namespace

// --- grants -----------------------------------------------------------------

TEST_CASE("a packet is forwarded only while a grant for its source and service is valid; each refusal is counted by reason",
          "[pipeline][grant]") {
    struct Row {
        const char* what;
        uint16_t grant_service;  // 0: no grant
        const char* grant_prefix;
        uint8_t grant_len;
        int64_t not_before, not_after;
        const char* source;
        const char* vip;
        uint16_t port;
        Action action;
        Counter counter;
    };
    const int64_t now = static_cast<int64_t>(kNow);
    const Row rows[] = {
        {"no grant at all", 0, "", 0, 0, 0, "198.51.100.7", "203.0.113.10", 80, Action::drop,
         Counter::drop_no_grant},
        {"a valid grant", kWeb4, "198.51.100.7", 32, now - 1000, now + 1000, "198.51.100.7", "203.0.113.10", 80,
         Action::transmit, Counter::forwarded},
        {"a grant in its first tick", kWeb4, "198.51.100.7", 32, now, now + 1000, "198.51.100.7",
         "203.0.113.10", 80, Action::transmit, Counter::forwarded},
        {"a grant in its last tick", kWeb4, "198.51.100.7", 32, now - 1000, now + 1, "198.51.100.7",
         "203.0.113.10", 80, Action::transmit, Counter::forwarded},
        {"a grant that ended (not_after is exclusive)", kWeb4, "198.51.100.7", 32, now - 2000, now,
         "198.51.100.7", "203.0.113.10", 80, Action::drop, Counter::drop_grant_expired},
        {"a grant that ended long ago", kWeb4, "198.51.100.7", 32, now - 9000, now - 5000, "198.51.100.7",
         "203.0.113.10", 80, Action::drop, Counter::drop_grant_expired},
        {"a grant not yet valid", kWeb4, "198.51.100.7", 32, now + 1, now + 5000, "198.51.100.7",
         "203.0.113.10", 80, Action::drop, Counter::drop_grant_not_yet_valid},
        {"a grant for another service", kGue, "198.51.100.7", 32, now - 1000, now + 1000, "198.51.100.7",
         "203.0.113.10", 80, Action::drop, Counter::drop_no_grant},
        {"a grant for another source", kWeb4, "198.51.100.8", 32, now - 1000, now + 1000, "198.51.100.7",
         "203.0.113.10", 80, Action::drop, Counter::drop_no_grant},
        {"a /24 grant covers an address in it", kWeb4, "198.51.100.0", 24, now - 1000, now + 1000,
         "198.51.100.77", "203.0.113.10", 80, Action::transmit, Counter::forwarded},
        {"a /24 grant does not cover the next /24", kWeb4, "198.51.100.0", 24, now - 1000, now + 1000,
         "198.51.101.77", "203.0.113.10", 80, Action::drop, Counter::drop_no_grant},
        {"a grant covers every VIP of its service (UDP VIP)", kWeb4, "198.51.100.7", 32, now - 1000, now + 1000,
         "198.51.100.7", "203.0.113.10", 53, Action::transmit, Counter::forwarded},
        {"an IPv6 /64 grant", kWeb6, "2001:db8::", 64, now - 1000, now + 1000, "2001:db8::7", "2001:db8::64",
         443, Action::transmit, Counter::forwarded},
        {"an IPv4 grant does not cover an IPv6 source", kWeb6, "198.51.100.7", 32, now - 1000, now + 1000,
         "2001:db8::7", "2001:db8::64", 443, Action::drop, Counter::drop_no_grant},
    };
    for (const Row& row : rows) {
        INFO(row.what);
        TestNode n;
        add_standard_services(n);
        // Applied at its not_before: the writer takes it then, whatever the
        // pipeline's clock says later.
        if (row.grant_service != 0)
            n.grant(row.grant_service, row.grant_prefix, row.grant_len, row.not_before, row.not_after);
        const bool v6 = std::strchr(row.source, ':') != nullptr;
        Bytes frame;
        if (v6) {
            frame = eth6(tcp6(row.source, row.vip, 40000, row.port));
        } else if (row.port == 53) {
            frame = eth4(ipv4(Ipv4Opts{.src = wire(row.source), .dst = wire(row.vip), .proto = 17},
                              udp(40000, 53, 20)));
        } else {
            frame = eth4(tcp4(row.source, row.vip, 40000, row.port));
        }
        Buf b(pad_to_min(frame));
        CHECK(n.process(b) == row.action);
        for (const Counter c : kVerdictCounters) {
            INFO(counter_name(c));
            CHECK(n.get(c) == (c == row.counter ? 1u : 0u));
        }
        CHECK(n.get(Counter::rx_packets) == 1);
    }
}

// --- what is not forwarded ---------------------------------------------------

TEST_CASE("packets for no service, a service that is down, or IP fragments are dropped with their reason",
          "[pipeline][drops]") {
    struct Row {
        const char* what;
        Bytes frame;
        Counter counter;
    };
    const Bytes src = wire("198.51.100.7");
    const std::vector<Row> rows = {
        {"no service at the address", eth4(tcp4("198.51.100.7", "203.0.113.99", 40000, 80)),
         Counter::drop_unknown_vip},
        {"a VIP address on another port", eth4(tcp4("198.51.100.7", "203.0.113.10", 40000, 81)),
         Counter::drop_unknown_vip},
        {"a VIP address and port with another protocol",
         eth4(ipv4({.src = src, .dst = wire("203.0.113.10"), .proto = 17}, udp(40000, 80))),
         Counter::drop_unknown_vip},
        {"an IPv6 address that is no VIP", eth6(tcp6("2001:db8::7", "2001:db8::65", 40000, 443)),
         Counter::drop_unknown_vip},
        {"a service without backends", eth4(tcp4("198.51.100.7", "203.0.113.40", 40000, 80)),
         Counter::drop_service_down},
        {"a disabled service", eth4(tcp4("198.51.100.7", "203.0.113.50", 40000, 80)), Counter::drop_service_down},
        {"an IPv4 first fragment",
         eth4(ipv4({.src = src, .dst = wire("203.0.113.10"), .frag = 0x2000}, tcp(40000, 80, 0x02, 64))),
         Counter::drop_ip_fragment},
        {"an IPv4 later fragment",
         eth4(ipv4({.src = src, .dst = wire("203.0.113.10"), .frag = 0x00b9}, Bytes(64, 0x5a))),
         Counter::drop_ip_fragment},
        {"an IPv6 first fragment",
         eth6(ipv6({.src = wire("2001:db8::7"), .dst = wire("2001:db8::64"), .ext = {ext_frag(0, true)}},
                   tcp(40000, 443, 0x02, 64))),
         Counter::drop_ip_fragment},
        {"an IPv6 later fragment",
         eth6(ipv6({.src = wire("2001:db8::7"), .dst = wire("2001:db8::64"), .ext = {ext_frag(100, false)}},
                   Bytes(64, 0x5a))),
         Counter::drop_ip_fragment},
    };
    for (const Row& row : rows) {
        INFO(row.what);
        TestNode n;
        add_standard_services(n);
        grant_standard_client(n);
        Buf b(pad_to_min(row.frame));
        CHECK(n.process(b) == Action::drop);
        CHECK(n.get(row.counter) == 1);
        CHECK(n.counters.total_drops() == 1);
        CHECK(n.get(Counter::forwarded) == 0);
        CHECK(n.get(Counter::conn_new) == 0);
    }
}

TEST_CASE("a VIP without a port (3-tuple mode) takes every packet of its protocol, fragments included, to one "
          "backend per source, only with a grant; a VIP with a port still drops every fragment",
          "[pipeline][fragments]") {
    constexpr uint16_t kFrag = 7;
    TestNode n;
    add_standard_services(n);
    grant_standard_client(n);
    n.apply(kFrag, service_set("frag", {vip("203.0.113.70", 0, L4Protocol::udp), vip("2001:db8::70", 0, L4Protocol::udp)}));
    std::vector<Backend> pool;
    for (int b = 1; b <= 8; ++b) pool.push_back(backend(("f" + std::to_string(b)).c_str(), ("172.16.7." + std::to_string(b)).c_str()));
    n.apply({"frag", pool});
    n.grant(kFrag, "198.51.100.0", 24);
    n.grant(kFrag, "2001:db8::", 64);

    // The outer destination (the backend) of a forwarded IPv4 or IPv6 packet, or "" when dropped.
    const auto backend_of = [&](const Bytes& frame) -> std::string {
        Buf b(pad_to_min(frame));
        if (n.process(b) != Action::transmit) return "";
        const uint8_t* d = b.pkt.data;
        return d[14] >> 4 == 4 ? std::string(reinterpret_cast<const char*>(d + 14 + 16), 4)
                               : std::string(reinterpret_cast<const char*>(d + 14 + 24), 16);
    };
    const auto udp4 = [](const char* src, uint16_t frag, const Bytes& l4) {
        return eth4(ipv4({.src = wire(src), .dst = wire("203.0.113.70"), .proto = 17, .frag = frag}, l4));
    };
    for (int c = 1; c <= 40; ++c) {
        const std::string src = "198.51.100." + std::to_string(c);
        INFO(src);
        const std::string first = backend_of(udp4(src.c_str(), 0x2000, udp(5000 + c, 53, 64)));
        REQUIRE_FALSE(first.empty());
        CHECK(backend_of(udp4(src.c_str(), 0x000a, Bytes(64, 0x5a))) == first);   // a later fragment, MF set
        CHECK(backend_of(udp4(src.c_str(), 0x0014, Bytes(24, 0x5a))) == first);   // the last one
        CHECK(backend_of(udp4(src.c_str(), 0, udp(6000 + c, 9999, 16))) == first);  // whole datagrams, other ports
    }
    // The 40 sources spread over the pool.
    std::set<std::string> used;
    for (int c = 1; c <= 40; ++c)
        used.insert(backend_of(udp4(("198.51.100." + std::to_string(c)).c_str(), 0x00b9, Bytes(8, 1))));
    CHECK(used.size() >= 4);
    // IPv6: a fragment header, first and later.
    const auto frag6 = [](uint16_t offset, bool more, const Bytes& l4) {
        return eth6(ipv6({.src = wire("2001:db8::9"), .dst = wire("2001:db8::70"), .proto = 17,
                          .ext = {ext_frag(offset, more)}}, l4));
    };
    const std::string v6first = backend_of(frag6(0, true, udp(7000, 53, 64)));
    REQUIRE_FALSE(v6first.empty());
    CHECK(backend_of(frag6(9, false, Bytes(32, 0x5a))) == v6first);

    const uint64_t forwarded = n.get(Counter::forwarded);
    // Without a grant for the source: dropped as no_grant, whole or in pieces.
    CHECK(backend_of(udp4("192.0.2.77", 0x2000, udp(5000, 53, 64))).empty());
    CHECK(backend_of(udp4("192.0.2.77", 0x000a, Bytes(64, 0x5a))).empty());
    CHECK(n.get(Counter::drop_no_grant) == 2);
    // TCP to the UDP-only VIP: no service.
    CHECK(backend_of(eth4(tcp4("198.51.100.7", "203.0.113.70", 40000, 80))).empty());
    CHECK(n.get(Counter::drop_unknown_vip) == 1);
    // A VIP with a port drops fragments, first and later, as before.
    CHECK(backend_of(eth4(ipv4({.src = wire("198.51.100.7"), .dst = wire("203.0.113.10"), .frag = 0x2000},
                               tcp(40000, 80, 0x02, 64)))).empty());
    CHECK(backend_of(eth4(ipv4({.src = wire("198.51.100.7"), .dst = wire("203.0.113.10"), .frag = 0x00b9},
                               Bytes(64, 0x5a)))).empty());
    CHECK(n.get(Counter::drop_ip_fragment) == 2);
    CHECK(n.get(Counter::forwarded) == forwarded);
    // A whole packet to the port service still forwards (its own lookup is untouched).
    CHECK_FALSE(backend_of(eth4(tcp4("198.51.100.7", "203.0.113.10", 40000, 80))).empty());
}

TEST_CASE("each malformed frame is dropped and counted under its parser reason", "[pipeline][drops]") {
    struct Row {
        const char* what;
        Bytes frame;
        DropReason reason;
    };
    const Bytes good = eth4(tcp4("198.51.100.7", "203.0.113.10", 40000, 80));
    Bytes bad_checksum = good;
    bad_checksum[14 + 10] ^= 0x01;
    Bytes bad_udp_length = eth4(ipv4({.src = wire("198.51.100.7"), .dst = wire("203.0.113.10"), .proto = 17},
                                     udp(40000, 53, 8)));
    put16(bad_udp_length, 14 + 20 + 4, 100);  // longer than the IP payload
    const std::vector<Row> rows = {
        {"shorter than an Ethernet header", Bytes(10, 0), DropReason::truncated},
        {"IPv4 header cut short", Bytes(good.begin(), good.begin() + 14 + 12), DropReason::truncated},
        {"LLDP", eth(0x88cc, Bytes(46, 0)), DropReason::l2_unsupported},
        {"three VLAN tags", eth4(tcp4("198.51.100.7", "203.0.113.10", 40000, 80), {1, 2, 3}),
         DropReason::vlan_too_deep},
        {"IPv6 under the IPv4 ethertype", eth(0x0800, tcp6("2001:db8::7", "2001:db8::64", 40000, 443)),
         DropReason::ip_bad_version},
        {"IPv4 header checksum wrong", bad_checksum, DropReason::ipv4_bad_checksum},
        {"IPv4 IHL 4", eth4(ipv4({.src = wire("198.51.100.7"), .dst = wire("203.0.113.10"), .ihl_words = 4},
                                 tcp(40000, 80))),
         DropReason::ipv4_bad_ihl},
        {"TCP data offset 4", eth4(ipv4({.src = wire("198.51.100.7"), .dst = wire("203.0.113.10")},
                                        tcp(40000, 80, 0x02, 0, 4))),
         DropReason::tcp_bad_offset},
        {"UDP length beyond the packet", bad_udp_length, DropReason::udp_bad_length},
    };
    for (const Row& row : rows) {
        INFO(row.what);
        TestNode n;
        add_standard_services(n);
        grant_standard_client(n);
        Buf b(row.frame);
        CHECK(n.process(b) == Action::drop);
        CHECK(n.parse_drops(row.reason) == 1);
        uint64_t parse_total = 0;
        for (const uint64_t c : n.counters.parse_drops) parse_total += c;
        CHECK(parse_total == 1);
        CHECK(n.get(Counter::rx_packets) == 1);
        CHECK(n.get(Counter::forwarded) == 0);
        CHECK(b.bytes() == row.frame);  // left as it was
    }
}

TEST_CASE("traffic to a node address that is not a VIP goes to the exception path when its kind is allowed",
          "[pipeline][exception]") {
    TestNode n;  // exception_allow: SSH only
    add_standard_services(n);
    grant_standard_client(n);
    const Bytes ssh4 = pad_to_min(eth4(tcp4("198.51.100.7", "192.0.2.10", 40000, 22)));
    const Bytes ssh6 = eth6(tcp6("2001:db8::7", "2001:db8::10", 40000, 22));
    Buf b4(ssh4), b6(ssh6);
    CHECK(n.process(b4) == Action::exception);
    CHECK(n.process(b6) == Action::exception);
    CHECK(n.get(Counter::to_exception) == 2);
    CHECK(n.counters.total_drops() == 0);
    CHECK(n.get(Counter::forwarded) == 0);
    CHECK(b4.bytes() == ssh4);  // handed on unchanged
    CHECK(b6.bytes() == ssh6);

    // Another kind of traffic to the node is not on the allowlist.
    Buf web(pad_to_min(eth4(tcp4("198.51.100.7", "192.0.2.10", 40000, 8080))));
    CHECK(n.process(web) == Action::drop);
    CHECK(n.get(Counter::drop_exception_denied) == 1);
    CHECK(n.get(Counter::to_exception) == 2);
}

// --- forwarding modes: exact output ------------------------------------------

TEST_CASE("IPIP: an IPv4 client's packet reaches its IPv4 backend inside an outer IPv4 header, byte for byte",
          "[pipeline][encap]") {
    TestNode n;
    add_standard_services(n);
    grant_standard_client(n);
    const Bytes inner = tcp4("198.51.100.7", "203.0.113.10", 40000, 80);
    REQUIRE(inner.size() == 40);
    const Bytes frame = pad_to_min(eth4(inner));  // 54 bytes padded to 60
    REQUIRE(frame.size() == 60);
    Buf b(frame, /*headroom=*/128, /*tailroom=*/64);
    const uint32_t capacity = b.capacity();

    REQUIRE(n.process(b) == Action::transmit);
    const Bytes out = b.bytes();
    REQUIRE(out.size() == 14 + 20 + inner.size());  // the padding is gone
    CHECK(Bytes(out.begin(), out.begin() + 6) == mac_bytes(kNextHopMac));
    CHECK(Bytes(out.begin() + 6, out.begin() + 12) == mac_bytes(kNodeMac));
    CHECK(be16(&out[12]) == 0x0800);
    const uint8_t* outer = &out[14];
    CHECK(outer[0] == 0x45);
    CHECK(be16(outer + 2) == 20 + inner.size());
    CHECK(outer[8] == 64);  // TTL
    CHECK(outer[9] == 4);   // IP-in-IP
    CHECK(fold(sum16(outer, 20)) == 0xffff);  // header checksum verifies
    CHECK(Bytes(outer + 12, outer + 14) == Bytes{10, 255});  // source in 10.255.0.0/16
    CHECK(Bytes(outer + 16, outer + 20) == wire("172.16.0.1"));
    CHECK(Bytes(out.begin() + 34, out.end()) == inner);

    // Geometry: 20 bytes more in front (34 written where 14 were), same buffer.
    CHECK(b.pkt.headroom == 128 - 20);
    CHECK(b.pkt.len == out.size());
    CHECK(b.capacity() == capacity);
    CHECK(b.consistent());
    CHECK(n.get(Counter::forwarded) == 1);
    CHECK(n.get(Counter::conn_new) == 1);

    SECTION("a VLAN-tagged frame of the same flow gives the same output") {
        Buf tagged(pad_to_min(eth4(inner, {100})), 128, 64);
        REQUIRE(n.process(tagged) == Action::transmit);
        CHECK(tagged.bytes() == out);
        CHECK(tagged.pkt.headroom == 128 - 16);  // 34 written where 18 were
        CHECK(tagged.consistent());
        CHECK(n.get(Counter::conn_hit) == 1);
    }
    SECTION("a QinQ frame too") {
        Buf tagged(eth(0x0800, inner, {100, 200}, 0x88a8), 128, 64);
        REQUIRE(n.process(tagged) == Action::transmit);
        CHECK(tagged.bytes() == out);
        CHECK(tagged.pkt.headroom == 128 - 12);
        CHECK(tagged.consistent());
    }
}

TEST_CASE("IPIP: an IPv6 client's packet reaches its IPv6 backend as IPv6-in-IPv6, byte for byte",
          "[pipeline][encap]") {
    TestNode n;
    add_standard_services(n);
    grant_standard_client(n);
    const Bytes inner = tcp6("2001:db8::7", "2001:db8::64", 40000, 443, 10);
    Buf b(eth6(inner), 128, 64);
    const uint32_t capacity = b.capacity();
    REQUIRE(n.process(b) == Action::transmit);
    const Bytes out = b.bytes();
    REQUIRE(out.size() == 14 + 40 + inner.size());
    CHECK(Bytes(out.begin(), out.begin() + 6) == mac_bytes(kNextHopMac));
    CHECK(Bytes(out.begin() + 6, out.begin() + 12) == mac_bytes(kNodeMac));
    CHECK(be16(&out[12]) == 0x86dd);
    const uint8_t* outer = &out[14];
    CHECK(outer[0] >> 4 == 6);
    CHECK(be16(outer + 4) == inner.size());  // payload length
    CHECK(outer[6] == 41);                   // IPv6-in-IPv6
    CHECK(outer[7] == 64);                   // hop limit
    CHECK(Bytes(outer + 8, outer + 16) == Bytes{0xfd, 0x00, 0x00, 0xff, 0, 0, 0, 0});  // fd00:ff::/64
    CHECK(Bytes(outer + 24, outer + 40) == wire("2001:db8:b::1"));
    CHECK(Bytes(out.begin() + 54, out.end()) == inner);
    CHECK(b.pkt.headroom == 128 - 40);
    CHECK(b.capacity() == capacity);
    CHECK(b.consistent());
}

TEST_CASE("GUE: the outer UDP header goes to the service's GUE port and carries the client's IP packet",
          "[pipeline][encap]") {
    TestNode n;
    add_standard_services(n);
    grant_standard_client(n);
    const Bytes inner = tcp4("198.51.100.7", "203.0.113.20", 40000, 80, 100);
    Buf b(eth4(inner), 128, 64);
    const uint32_t capacity = b.capacity();
    REQUIRE(n.process(b) == Action::transmit);
    const Bytes out = b.bytes();
    REQUIRE(out.size() == 14 + 20 + 8 + inner.size());
    CHECK(Bytes(out.begin(), out.begin() + 6) == mac_bytes(kNextHopMac));
    CHECK(Bytes(out.begin() + 6, out.begin() + 12) == mac_bytes(kNodeMac));
    const uint8_t* outer = &out[14];
    CHECK(be16(outer + 2) == 20 + 8 + inner.size());
    CHECK(outer[9] == 17);
    CHECK(fold(sum16(outer, 20)) == 0xffff);
    CHECK(Bytes(outer + 12, outer + 14) == Bytes{10, 255});
    CHECK(Bytes(outer + 16, outer + 20) == wire("172.16.0.2"));
    const uint8_t* udp_header = outer + 20;
    CHECK(be16(udp_header + 2) == kGuePort);
    CHECK(be16(udp_header + 4) == 8 + inner.size());
    CHECK(Bytes(out.begin() + 42, out.end()) == inner);
    CHECK(b.pkt.headroom == 128 - 28);
    CHECK(b.capacity() == capacity);
    CHECK(b.consistent());
}

TEST_CASE("L2 DSR: only the two MAC addresses change, to the backend's and the node's", "[pipeline][encap]") {
    TestNode n;
    add_standard_services(n);
    grant_standard_client(n);
    const Bytes frame = pad_to_min(eth4(tcp4("198.51.100.7", "203.0.113.30", 40000, 80)));
    Buf b(frame, 128, 64);
    REQUIRE(n.process(b) == Action::transmit);
    Bytes expected = frame;
    std::copy(kDsrBackendMac.begin(), kDsrBackendMac.end(), expected.begin());
    std::copy(kNodeMac.begin(), kNodeMac.end(), expected.begin() + 6);
    CHECK(b.bytes() == expected);
    CHECK(b.pkt.headroom == 128);
    CHECK(b.pkt.tailroom == 64);
    CHECK(b.consistent());
    CHECK(n.get(Counter::forwarded) == 1);
}

TEST_CASE("a packet without headroom for the outer headers is dropped as no_headroom, unchanged",
          "[pipeline][encap]") {
    struct Row {
        const char* what;
        Bytes frame;
        uint32_t needed;  // headroom: outer headers minus the Ethernet header they replace
    };
    const std::vector<Row> rows = {
        {"IPIP to IPv4", eth4(tcp4("198.51.100.7", "203.0.113.10", 40000, 80)), 20},
        {"IPIP to IPv4, VLAN-tagged", eth4(tcp4("198.51.100.7", "203.0.113.10", 40000, 80), {7}), 16},
        {"IPv6-in-IPv6", eth6(tcp6("2001:db8::7", "2001:db8::64", 40000, 443)), 40},
        {"GUE to IPv4", eth4(tcp4("198.51.100.7", "203.0.113.20", 40000, 80)), 28},
    };
    for (const Row& row : rows) {
        INFO(row.what);
        TestNode n;
        add_standard_services(n);
        grant_standard_client(n);
        Buf short_of_one(row.frame, row.needed - 1, 0);
        CHECK(n.process(short_of_one) == Action::drop);
        CHECK(n.get(Counter::drop_no_headroom) == 1);
        CHECK(short_of_one.bytes() == row.frame);
        CHECK(short_of_one.pkt.headroom == row.needed - 1);
        CHECK(short_of_one.consistent());

        Buf exact(row.frame, row.needed, 0);
        CHECK(n.process(exact) == Action::transmit);
        CHECK(exact.pkt.headroom == 0);
        CHECK(exact.pkt.data == exact.storage.data());
        CHECK(exact.consistent());
        CHECK(n.get(Counter::drop_no_headroom) == 1);
    }
}

TEST_CASE("a packet whose encapsulation exceeds the MTU is counted too_big and answered with packet-too-big "
          "when it may not be fragmented; one that fits is sent",
          "[pipeline][encap]") {
    struct Row {
        const char* what;
        bool v6;
        const char* vip;
        uint16_t port;
        size_t largest_inner;  // mtu 1500 minus the outer IP (and UDP) header
    };
    const Row rows[] = {
        {"IPIP to IPv4", false, "203.0.113.10", 80, 1480},
        {"GUE to IPv4", false, "203.0.113.20", 80, 1472},
        {"IPv6-in-IPv6", true, "2001:db8::64", 443, 1460},
    };
    for (const Row& row : rows) {
        INFO(row.what);
        TestNode n;
        add_standard_services(n);
        grant_standard_client(n);
        const size_t l3_and_l4 = row.v6 ? 60 : 40;
        auto frame_of = [&](size_t inner) {
            return row.v6 ? eth6(tcp6("2001:db8::7", row.vip, 40000, row.port, inner - l3_and_l4))
                          : eth4(tcp4("198.51.100.7", row.vip, 40000, row.port, inner - l3_and_l4));
        };
        Buf fits(frame_of(row.largest_inner));
        CHECK(n.process(fits) == Action::transmit);
        CHECK(fits.pkt.len - 14 == 1500);  // the outer IP packet is exactly the MTU
        Buf too_big(frame_of(row.largest_inner + 1));
        const Bytes before = too_big.bytes();
        if (row.v6) {
            // IPv6 is never fragmented on the way: the client gets a packet-too-big
            // from the VIP with the MTU left after the outer header.
            CHECK(n.process(too_big) == Action::transmit);
            CHECK(n.get(Counter::too_big_sent) == 1);
            const Bytes out = too_big.bytes();
            REQUIRE(out.size() == 14 + 1280);  // quoted as far as 1280 bytes allow
            CHECK(out[14 + 6] == 58);                                        // ICMPv6
            CHECK(std::equal(out.begin() + 22, out.begin() + 38, before.begin() + 14 + 24));  // from the VIP
            CHECK(std::equal(out.begin() + 38, out.begin() + 54, before.begin() + 14 + 8));   // to the client
            CHECK(out[54] == 2);                                             // packet too big
            CHECK((out[58] << 24 | out[59] << 16 | out[60] << 8 | out[61]) == 1460);
            CHECK(std::equal(out.begin() + 62, out.end(), before.begin() + 14));  // the client's packet
        } else {
            // These IPv4 packets do not set DF: dropped, not answered.
            CHECK(n.process(too_big) == Action::drop);
            CHECK(too_big.bytes() == before);
            CHECK(n.get(Counter::too_big_sent) == 0);
        }
        CHECK(n.get(Counter::drop_too_big) == 1);
        CHECK(n.get(Counter::forwarded) == 1);
    }
}

// --- ARP and neighbour discovery ---------------------------------------------

TEST_CASE("an ARP request for a node address or a VIP is answered in place; others are dropped as not_for_us",
          "[pipeline][arp]") {
    const Bytes asker_mac{0x02, 0x11, 0x22, 0x33, 0x44, 0x55};
    const Bytes broadcast(6, 0xff);
    const Bytes asker_ip = wire("192.0.2.1");
    auto request = [&](const char* asked) {
        return pad_to_min(eth_frame(broadcast, asker_mac, 0x0806, arp(1, asker_mac, asker_ip, Bytes(6, 0), wire(asked))));
    };
    auto reply = [&](const char* asked) {
        return pad_to_min(eth_frame(asker_mac, mac_bytes(kNodeMac), 0x0806,
                                    arp(2, mac_bytes(kNodeMac), wire(asked), asker_mac, asker_ip)));
    };
    TestNode n;
    add_standard_services(n);

    for (const char* asked : {"192.0.2.10", "203.0.113.10"}) {
        INFO(asked);
        Buf b(request(asked));
        CHECK(n.process(b) == Action::transmit);
        CHECK(b.bytes() == reply(asked));
        CHECK(b.consistent());
    }
    CHECK(n.get(Counter::arp_replies) == 2);

    Buf other(request("192.0.2.99"));
    CHECK(n.process(other) == Action::drop);
    CHECK(other.bytes() == request("192.0.2.99"));
    Buf not_a_request(pad_to_min(eth_frame(broadcast, asker_mac, 0x0806,
                                           arp(2, asker_mac, asker_ip, Bytes(6, 0), wire("192.0.2.99")))));
    CHECK(n.process(not_a_request) == Action::drop);
    CHECK(n.get(Counter::drop_not_for_us) == 2);
    CHECK(n.get(Counter::arp_replies) == 2);
}

namespace {

// A neighbour solicitation for `target` from `source` (:: for duplicate
// address detection, which carries no source link-layer option), with a
// valid checksum.
Bytes neighbour_solicitation(const Bytes& asker_mac, const char* source, const char* target, uint8_t hop_limit) {
    const bool dad = std::string(source) == "::";
    Bytes body = wire(target);
    if (!dad) {
        body.push_back(1);  // source link-layer address
        body.push_back(1);
        append(body, asker_mac);
    }
    const Bytes target_bytes = wire(target);
    Bytes solicited_node = wire("ff02::1:ff00:0");
    std::copy(target_bytes.end() - 3, target_bytes.end(), solicited_node.end() - 3);
    Bytes packet = ipv6({.src = wire(source), .dst = solicited_node, .proto = 58}, icmp(135, 0, 0, body));
    packet[7] = hop_limit;
    put16(packet, 40 + 2, static_cast<uint16_t>(~icmpv6_sum(packet.data(), packet.data() + 40, packet.size() - 40)));
    const Bytes multicast_mac{0x33, 0x33, 0xff, solicited_node[13], solicited_node[14], solicited_node[15]};
    return eth_frame(multicast_mac, asker_mac, 0x86dd, packet);
}

// The advertisement the node must answer with, built field by field.
Bytes neighbour_advertisement(const Bytes& dst_mac, const char* dst, const char* target, uint8_t flags) {
    Bytes body = wire(target);
    body.push_back(2);  // target link-layer address
    body.push_back(1);
    append(body, mac_bytes(kNodeMac));
    Bytes packet = ipv6({.src = wire(target), .dst = wire(dst), .proto = 58},
                        icmp(136, 0, static_cast<uint32_t>(flags) << 24, body));
    packet[7] = 255;
    put16(packet, 40 + 2, static_cast<uint16_t>(~icmpv6_sum(packet.data(), packet.data() + 40, packet.size() - 40)));
    return eth_frame(dst_mac, mac_bytes(kNodeMac), 0x86dd, packet);
}

}  // namespace

TEST_CASE("a neighbour solicitation for a VIP or node address gets a solicited, override advertisement with the node's MAC",
          "[pipeline][nd]") {
    const Bytes asker_mac{0x02, 0x11, 0x22, 0x33, 0x44, 0x55};
    TestNode n;
    add_standard_services(n);

    for (const char* target : {"2001:db8::64", "2001:db8::10"}) {
        INFO(target);
        Buf b(neighbour_solicitation(asker_mac, "2001:db8::7", target, 255));
        REQUIRE(n.process(b) == Action::transmit);
        const Bytes out = b.bytes();
        REQUIRE(out.size() == 14 + 40 + 32);
        // Field by field, then the whole frame.
        const uint8_t* ip6 = &out[14];
        const uint8_t* icmp6 = &out[54];
        CHECK(icmp6[0] == 136);
        CHECK(icmp6[1] == 0);
        CHECK(icmp6[4] == 0x60);  // S and O, not R
        CHECK(Bytes(icmp6 + 8, icmp6 + 24) == wire(target));
        CHECK(icmp6[24] == 2);
        CHECK(icmp6[25] == 1);
        CHECK(Bytes(icmp6 + 26, icmp6 + 32) == mac_bytes(kNodeMac));
        CHECK(ip6[7] == 255);
        CHECK(be16(ip6 + 4) == 32);
        CHECK(Bytes(ip6 + 8, ip6 + 24) == wire(target));
        CHECK(Bytes(ip6 + 24, ip6 + 40) == wire("2001:db8::7"));
        CHECK(icmpv6_sum(ip6, icmp6, 32) == 0xffff);  // the checksum verifies
        CHECK(out == neighbour_advertisement(asker_mac, "2001:db8::7", target, 0x60));
        CHECK(b.consistent());
    }
    CHECK(n.get(Counter::nd_replies) == 2);

    SECTION("duplicate address detection (from ::) is answered to all nodes, without S") {
        Buf b(neighbour_solicitation(asker_mac, "::", "2001:db8::64", 255));
        REQUIRE(b.pkt.len == 14 + 40 + 24);  // no option: the reply grows into the tailroom
        REQUIRE(n.process(b) == Action::transmit);
        const Bytes out = b.bytes();
        CHECK(out == neighbour_advertisement({0x33, 0x33, 0, 0, 0, 1}, "ff02::1", "2001:db8::64", 0x20));
        CHECK(icmpv6_sum(&out[14], &out[54], 32) == 0xffff);
        CHECK(b.pkt.tailroom == 64 - 8);
        CHECK(b.consistent());
    }
    // Not answered: dropped (counted as not for us, or as not allowed to the
    // kernel, since the solicitation went to a multicast group), unchanged.
    SECTION("a solicitation for another address is not answered") {
        const Bytes frame = neighbour_solicitation(asker_mac, "2001:db8::7", "2001:db8::99", 255);
        Buf b(frame);
        CHECK(n.process(b) == Action::drop);
        CHECK(n.counters.total_drops() == 1);
        CHECK(n.get(Counter::nd_replies) == 2);
        CHECK(b.bytes() == frame);
    }
    SECTION("a solicitation with a hop limit below 255 is not answered (RFC 4861: it was routed)") {
        const Bytes frame = neighbour_solicitation(asker_mac, "2001:db8::7", "2001:db8::64", 64);
        Buf b(frame);
        CHECK(n.process(b) == Action::drop);
        CHECK(n.counters.total_drops() == 1);
        CHECK(n.get(Counter::nd_replies) == 2);
        CHECK(b.bytes() == frame);
    }
}

// --- flows and backends ---------------------------------------------------------

namespace {

// The pool: service 8 at 203.0.113.60:443 over backends b1..bN at
// 172.16.1.1..N; sources 198.18.0.0/16 hold a grant for it.
constexpr uint16_t kPool = 8;
constexpr const char* kPoolVip = "203.0.113.60";

// Backends `numbers`, weight 1 but those in `draining` (weight 0).
BackendSet pool_backends(std::vector<int> numbers, std::vector<int> draining = {}) {
    BackendSet set;
    set.service = "pool";
    for (const int i : numbers) {
        Backend b;
        b.id = "b" + std::to_string(i);
        b.address = ip(("172.16.1." + std::to_string(i)).c_str());
        b.weight = std::count(draining.begin(), draining.end(), i) != 0 ? 0 : 1;
        set.backends.push_back(b);
    }
    return set;
}

void add_pool(TestNode& n, std::vector<int> backends) {
    n.apply(kPool, service_set("pool", {vip(kPoolVip, 443), vip("2001:db8::60", 443)}));
    n.apply(pool_backends(std::move(backends)));
    n.grant(kPool, "198.18.0.0", 16);
    n.grant(kPool, "2001:db8:f::", 48);
}

struct Flow {
    std::array<uint8_t, 4> src;
    uint16_t sport;

    // The tuple as the test knows it, not as the parser found it.
    FlowTuple tuple() const {
        FlowTuple t;
        std::copy(src.begin(), src.end(), t.src.begin());
        const Bytes vip_bytes = wire(kPoolVip);
        std::copy(vip_bytes.begin(), vip_bytes.end(), t.dst.begin());
        t.src_port = sport;
        t.dst_port = 443;
        t.proto = 6;
        t.version = IpVersion::v4;
        return t;
    }
    Bytes frame(uint8_t tcp_flags = 0x10) const {
        return pad_to_min(eth4(ipv4({.src = Bytes(src.begin(), src.end()), .dst = wire(kPoolVip)},
                                    tcp(sport, 443, tcp_flags))));
    }
};

// Flow i of a family of flows: distinct sources in 198.18.0.0/16, ports
// varying with `family` so that two families share no flow.
std::vector<Flow> flows(size_t count, uint16_t family = 0) {
    std::vector<Flow> out;
    for (size_t i = 0; i < count; ++i) {
        const auto src = std::array<uint8_t, 4>{198, 18, static_cast<uint8_t>(i >> 8), static_cast<uint8_t>(i)};
        out.push_back({src, static_cast<uint16_t>(1024 + (i * 7919 + family * 104729) % 60000)});
    }
    return out;
}

// Sends every flow once; the backend each reached (the last byte of the
// outer destination, 172.16.1.N), or 0 when not forwarded.
std::vector<int> send_flows(TestNode& n, const std::vector<Flow>& fs, Pipeline* pipeline = nullptr,
                      std::vector<Bytes>* outputs = nullptr) {
    std::vector<Buf> bufs;
    bufs.reserve(fs.size());
    for (const Flow& f : fs) bufs.emplace_back(f.frame());
    const std::vector<Action> actions = n.process_with(pipeline ? *pipeline : *n.pipeline, bufs);
    std::vector<int> backends;
    for (size_t i = 0; i < bufs.size(); ++i) {
        if (actions[i] != Action::transmit || bufs[i].pkt.len < 34) {
            backends.push_back(0);
        } else {
            const uint8_t* dst = bufs[i].pkt.data + 14 + 16;
            backends.push_back(dst[0] == 172 && dst[1] == 16 && dst[2] == 1 ? dst[3] : -1);
        }
        if (outputs) outputs->push_back(bufs[i].bytes());
    }
    return backends;
}

// The independent model: the backend number Maglev gives the flow in the
// service as it is now.
int model_backend(const Service& s, const Flow& f, uint64_t seed = kSeed) {
    const uint32_t index = maglev_lookup(s.maglev, flow_hash(f.tuple(), seed));
    return s.backends.at(index).address.bytes[3];
}

std::map<int, size_t> histogram(const std::vector<int>& backends) {
    std::map<int, size_t> h;
    for (const int b : backends) ++h[b];
    return h;
}

ConnTableConfig roomy_conn_table() {
    ConnTableConfig c;
    c.capacity = 1u << 17;  // 10,000 flows never fill a probe window
    return c;
}

}  // namespace

TEST_CASE("10,000 new flows over 5 equal backends give each within 10% of 2,000", "[pipeline][maglev]") {
    TestNode n(roomy_conn_table());
    add_pool(n, {1, 2, 3, 4, 5});
    const std::vector<int> got = send_flows(n, flows(10'000));
    const std::map<int, size_t> h = histogram(got);
    REQUIRE(h.count(0) == 0);
    REQUIRE(h.size() == 5);
    for (int b = 1; b <= 5; ++b) {
        INFO("backend " << b);
        CHECK(h.at(b) >= 1800);
        CHECK(h.at(b) <= 2200);
    }
    CHECK(n.get(Counter::conn_new) == 10'000);
    CHECK(n.pipeline->connections().live(kNow) == 10'000);
}

TEST_CASE("when a backend is removed, tracked flows of the others keep their backend and only the removed one's flows move",
          "[pipeline][maglev][conn]") {
    TestNode n(roomy_conn_table());
    add_pool(n, {1, 2, 3, 4, 5});
    const std::vector<Flow> fs = flows(10'000);
    const std::vector<int> before = send_flows(n, fs);
    REQUIRE(n.get(Counter::conn_new) == 10'000);

    n.apply(pool_backends({1, 2, 4, 5}));  // b3 removed
    const Service& pool = n.service("pool");
    // Without the connection table some flows of b1, b2, b4, b5 would move
    // too (Maglev's table changes a little): the test can tell the difference.
    size_t maglev_alone_would_move = 0;
    for (size_t i = 0; i < fs.size(); ++i)
        if (before[i] != 3 && model_backend(pool, fs[i]) != before[i]) ++maglev_alone_would_move;
    INFO("flows of the other backends Maglev alone would move: " << maglev_alone_would_move);
    CHECK(maglev_alone_would_move > 0);

    const std::vector<int> after = send_flows(n, fs);
    size_t moved = 0;
    for (size_t i = 0; i < fs.size(); ++i) {
        INFO("flow " << i << ": backend " << before[i] << " then " << after[i]);
        REQUIRE(after[i] > 0);
        if (before[i] == 3) {
            CHECK(after[i] != 3);
            CHECK(after[i] == model_backend(pool, fs[i]));  // chosen again by the new table
            ++moved;
        } else {
            REQUIRE(after[i] == before[i]);
        }
    }
    CHECK(moved == static_cast<size_t>(std::count(before.begin(), before.end(), 3)));
    CHECK(moved > 1500);
    CHECK(n.get(Counter::conn_rehashed) == moved);
    CHECK(n.get(Counter::conn_hit) == 10'000);
    CHECK(n.get(Counter::conn_new) == 10'000);

    // Moved flows stay where they were moved to.
    CHECK(send_flows(n, fs) == after);
    CHECK(n.get(Counter::conn_rehashed) == moved);
}

TEST_CASE("when a sixth backend is added, every tracked flow keeps its backend and new flows reach the sixth",
          "[pipeline][maglev][conn]") {
    TestNode n(roomy_conn_table());
    add_pool(n, {1, 2, 3, 4, 5});
    const std::vector<Flow> old_flows = flows(10'000, 0);
    const std::vector<int> before = send_flows(n, old_flows);
    REQUIRE(std::count(before.begin(), before.end(), 0) == 0);

    n.apply(pool_backends({1, 2, 3, 4, 5, 6}));
    const Service& pool = n.service("pool");
    size_t maglev_alone_would_move = 0;
    for (size_t i = 0; i < old_flows.size(); ++i)
        if (model_backend(pool, old_flows[i]) != before[i]) ++maglev_alone_would_move;
    INFO("tracked flows Maglev alone would move: " << maglev_alone_would_move);
    CHECK(maglev_alone_would_move > 1000);  // about one in six

    CHECK(send_flows(n, old_flows) == before);
    CHECK(n.get(Counter::conn_rehashed) == 0);

    const std::vector<Flow> new_flows = flows(6'000, 1);
    const std::vector<int> fresh = send_flows(n, new_flows);
    const std::map<int, size_t> h = histogram(fresh);
    REQUIRE(h.count(0) == 0);
    CHECK(h.size() == 6);
    CHECK(h.count(6) == 1);
    if (h.count(6) != 0) {
        CHECK(h.at(6) >= 800);  // about 1,000
    }
    for (size_t i = 0; i < new_flows.size(); ++i) REQUIRE(fresh[i] == model_backend(pool, new_flows[i]));
    CHECK(n.get(Counter::conn_new) == 16'000);
}

// --- draining: a backend of weight 0 keeps its tracked flows, gets no new ones -------

TEST_CASE("a draining backend gets no new flows", "[pipeline][maglev][drain]") {
    TestNode n(roomy_conn_table());
    add_pool(n, {1, 2, 3, 4, 5});
    n.apply(pool_backends({1, 2, 3, 4, 5}, /*draining=*/{3}));
    const Service& pool = n.service("pool");

    const std::vector<Flow> fs = flows(5'000);
    const std::vector<int> got = send_flows(n, fs);
    const std::map<int, size_t> h = histogram(got);
    CHECK(h.count(0) == 0);
    CHECK(h.count(3) == 0);
    CHECK(h.size() == 4);
    for (size_t i = 0; i < fs.size(); ++i) REQUIRE(got[i] == model_backend(pool, fs[i]));
    CHECK(n.get(Counter::conn_new) == 5'000);
    CHECK(n.get(Counter::forwarded) == 5'000);
}

TEST_CASE("a tracked flow to a backend that starts draining keeps its backend",
          "[pipeline][maglev][drain]") {
    TestNode n(roomy_conn_table());
    add_pool(n, {1, 2, 3, 4, 5});
    const std::vector<Flow> fs = flows(10'000);
    const std::vector<int> before = send_flows(n, fs);
    REQUIRE(std::count(before.begin(), before.end(), 0) == 0);
    const size_t on_3 = static_cast<size_t>(std::count(before.begin(), before.end(), 3));
    REQUIRE(on_3 > 1500);

    n.apply(pool_backends({1, 2, 3, 4, 5}, /*draining=*/{3}));
    const Service& pool = n.service("pool");
    // Maglev alone would move every flow of b3: the check below is not vacuous.
    for (size_t i = 0; i < fs.size(); ++i)
        if (before[i] == 3) REQUIRE(model_backend(pool, fs[i]) != 3);

    CHECK(send_flows(n, fs) == before);
    CHECK(n.get(Counter::conn_rehashed) == 0);
    CHECK(n.get(Counter::conn_hit) == 10'000);
    CHECK(n.get(Counter::forwarded) == 20'000);
    const size_t i =
        static_cast<size_t>(std::find(before.begin(), before.end(), 3) - before.begin());

    SECTION("to its last packet") {
        Buf fin(fs[i].frame(0x11));  // FIN, ACK
        REQUIRE(n.process(fin) == Action::transmit);
        CHECK(fin.pkt.data[14 + 19] == 3);  // outer destination 172.16.1.3
    }
    SECTION("and its resets go to that backend when its grant ends") {
        Buf pkt(fs[i].frame(), 128, 128);
        Buf spare(Bytes(60, 0), 128, 128);
        ExtraPackets extra;
        extra.bufs[0] = spare.pkt;
        extra.available = 1;
        Action action = Action::drop;
        // The pool's grant ends at kNow + 60 s; the entry lives 300 s.
        n.pipeline->process_burst({&pkt.pkt, 1}, *n.services.current(), kNow + 61'000, {&action, 1},
                                  &extra);
        CHECK(n.get(Counter::drop_grant_expired) == 1);
        CHECK(action == Action::transmit);  // the reset to the client
        REQUIRE(extra.used == 1);
        CHECK(extra.bufs[0].data[14 + 19] == 3);  // the reset to b3
        CHECK(n.get(Counter::resets_sent) == 2);
    }
}

// The frames of `fs` with the given TCP flags; the backend each went to (0: not sent).
std::vector<int> send_flagged(TestNode& n, const std::vector<Flow>& fs, uint8_t tcp_flags) {
    std::vector<Buf> bufs;
    bufs.reserve(fs.size());
    for (const Flow& f : fs) bufs.emplace_back(f.frame(tcp_flags));
    const std::vector<Action> actions = n.process_with(*n.pipeline, bufs);
    std::vector<int> backends;
    for (size_t i = 0; i < bufs.size(); ++i) {
        const uint8_t* dst = bufs[i].pkt.data + 14 + 16;
        backends.push_back(actions[i] != Action::transmit ? 0 : dst[0] == 172 && dst[2] == 1 ? dst[3] : -1);
    }
    return backends;
}

TEST_CASE("a SYN reusing the ports of a closed flow is a new connection: it avoids a draining backend",
          "[pipeline][maglev][drain]") {
    TestNode n(roomy_conn_table());
    add_pool(n, {1, 2, 3, 4, 5});
    const std::vector<Flow> fs = flows(5'000);
    const std::vector<int> before = send_flagged(n, fs, 0x02);  // SYN
    REQUIRE(std::count(before.begin(), before.end(), 0) == 0);
    const size_t on_3 = static_cast<size_t>(std::count(before.begin(), before.end(), 3));
    REQUIRE(on_3 > 700);
    CHECK(send_flagged(n, fs, 0x11) == before);  // FIN, ACK: the connections end
    n.apply(pool_backends({1, 2, 3, 4, 5}, /*draining=*/{3}));
    const Service& pool = n.service("pool");

    SECTION("a SYN after FIN is balanced afresh, by the table as it is now") {
        const std::vector<int> again = send_flagged(n, fs, 0x02);
        for (size_t i = 0; i < fs.size(); ++i) REQUIRE(again[i] == model_backend(pool, fs[i]));
        CHECK(std::count(again.begin(), again.end(), 3) == 0);
        CHECK(n.get(Counter::conn_reopened) == 5'000);
        CHECK(n.get(Counter::conn_new) == 10'000);
        // The new connection's entry is live again, not closing: its data stays put.
        CHECK(send_flagged(n, fs, 0x10) == again);
        CHECK(n.get(Counter::conn_reopened) == 5'000);
    }
    SECTION("the FIN's own retransmission, an ACK or a RST still follow the old connection") {
        CHECK(send_flagged(n, fs, 0x11) == before);
        CHECK(send_flagged(n, fs, 0x10) == before);
        CHECK(send_flagged(n, fs, 0x04) == before);
        CHECK(n.get(Counter::conn_reopened) == 0);
    }
    SECTION("a SYN-ACK or SYN-FIN on a closed tuple is no new connection") {
        CHECK(send_flagged(n, fs, 0x12) == before);
        CHECK(send_flagged(n, fs, 0x03) == before);
        CHECK(n.get(Counter::conn_reopened) == 0);
    }
}

TEST_CASE("a retransmitted SYN of a live flow keeps its backend, draining or not",
          "[pipeline][maglev][drain]") {
    TestNode n(roomy_conn_table());
    add_pool(n, {1, 2, 3, 4, 5});
    const std::vector<Flow> fs = flows(5'000);
    const std::vector<int> before = send_flagged(n, fs, 0x02);
    REQUIRE(std::count(before.begin(), before.end(), 3) > 700);
    n.apply(pool_backends({1, 2, 3, 4, 5}, /*draining=*/{3}));
    CHECK(send_flagged(n, fs, 0x02) == before);
    CHECK(n.get(Counter::conn_reopened) == 0);
    CHECK(n.get(Counter::conn_hit) == 5'000);
}

TEST_CASE(
    "a service whose backends all drain drops new flows with service_down but keeps tracked ones",
    "[pipeline][maglev][drain]") {
    TestNode n(roomy_conn_table());
    add_pool(n, {1, 2, 3});
    const std::vector<Flow> tracked = flows(3'000);
    const std::vector<int> before = send_flows(n, tracked);
    REQUIRE(std::count(before.begin(), before.end(), 0) == 0);

    n.apply(pool_backends({1, 2, 3}, /*draining=*/{1, 2, 3}));
    REQUIRE(n.service("pool").maglev.empty());
    CHECK(send_flows(n, tracked) == before);

    // New flows are dropped after the grant check (stage 3) and not tracked.
    const std::vector<Flow> fresh = flows(1'000, 1);
    const std::vector<int> dropped = send_flows(n, fresh);
    CHECK(std::count(dropped.begin(), dropped.end(), 0) == 1'000);
    CHECK(n.get(Counter::drop_service_down) == 1'000);
    CHECK(n.get(Counter::conn_new) == 3'000);
    CHECK(n.get(Counter::forwarded) == 6'000);
    CHECK(n.pipeline->connections().live(kNow) == 3'000);
    // Without a grant a new flow is a grant denial first.
    Buf stranger(pad_to_min(eth4(tcp4("198.51.100.99", kPoolVip, 40000, 443))));
    CHECK(n.process(stranger) == Action::drop);
    CHECK(n.get(Counter::drop_no_grant) == 1);

    SECTION(
        "a tracked flow whose backend is removed has nowhere to go: service_down, not rehashed") {
        n.apply(pool_backends({1, 2}, /*draining=*/{1, 2}));  // b3 removed, the rest drain
        const std::vector<int> after = send_flows(n, tracked);
        size_t lost = 0;
        for (size_t i = 0; i < tracked.size(); ++i) {
            if (before[i] == 3) {
                REQUIRE(after[i] == 0);
                ++lost;
            } else {
                REQUIRE(after[i] == before[i]);
            }
        }
        CHECK(lost > 0);
        CHECK(n.get(Counter::drop_service_down) == 1'000 + lost);
        CHECK(n.get(Counter::conn_rehashed) == 0);

        // Once a backend takes new flows again, those flows are chosen again.
        n.apply(pool_backends({1, 2}, /*draining=*/{2}));
        const std::vector<int> again = send_flows(n, tracked);
        for (size_t i = 0; i < tracked.size(); ++i)
            REQUIRE(again[i] == (before[i] == 3 ? 1 : before[i]));
        CHECK(n.get(Counter::conn_rehashed) == lost);
    }
}

TEST_CASE("undraining (weight back to 1) gives it new flows again", "[pipeline][maglev][drain]") {
    TestNode n(roomy_conn_table());
    add_pool(n, {1, 2, 3, 4, 5});
    n.apply(pool_backends({1, 2, 3, 4, 5}, /*draining=*/{3}));
    const std::map<int, size_t> drained = histogram(send_flows(n, flows(5'000, 1)));
    CHECK(drained.count(3) == 0);

    n.apply(pool_backends({1, 2, 3, 4, 5}));
    const Service& pool = n.service("pool");
    const std::vector<Flow> fs = flows(5'000, 2);
    const std::vector<int> got = send_flows(n, fs);
    const std::map<int, size_t> h = histogram(got);
    REQUIRE(h.count(3) == 1);
    CHECK(h.at(3) >= 800);  // about 1,000
    for (size_t i = 0; i < fs.size(); ++i) REQUIRE(got[i] == model_backend(pool, fs[i]));
}

TEST_CASE("the same flow sent again gets the same backend, in one burst and across bursts", "[pipeline][conn]") {
    TestNode n;
    add_pool(n, {1, 2, 3, 4, 5});
    const std::vector<Flow> fs = flows(64);
    std::vector<Flow> doubled;
    for (const Flow& f : fs) {
        doubled.push_back(f);
        doubled.push_back(f);  // twice in a row, within a burst
    }
    const std::vector<int> got = send_flows(n, doubled);
    for (size_t i = 0; i < fs.size(); ++i) {
        REQUIRE(got[2 * i] > 0);
        CHECK(got[2 * i] == got[2 * i + 1]);
    }
    CHECK(n.get(Counter::conn_new) == 64);
    CHECK(n.get(Counter::conn_hit) == 64);
    const std::vector<int> again = send_flows(n, fs);
    for (size_t i = 0; i < fs.size(); ++i) CHECK(again[i] == got[2 * i]);
    CHECK(n.get(Counter::conn_hit) == 128);
}

TEST_CASE("a full connection table counts conn_table_full and still forwards every flow by Maglev",
          "[pipeline][conn]") {
    ConnTableConfig small;
    small.capacity = 64;
    TestNode n(small);
    add_pool(n, {1, 2, 3, 4, 5});
    const std::vector<Flow> fs = flows(1000);
    const std::vector<int> got = send_flows(n, fs);
    const Service& pool = n.service("pool");
    for (size_t i = 0; i < fs.size(); ++i) {
        INFO("flow " << i);
        REQUIRE(got[i] == model_backend(pool, fs[i]));
    }
    CHECK(n.get(Counter::forwarded) == 1000);
    CHECK(n.get(Counter::conn_table_full) >= 1000 - 64);
    CHECK(n.get(Counter::conn_new) <= 64);
    CHECK(n.get(Counter::conn_new) + n.get(Counter::conn_table_full) == 1000);
    CHECK(n.pipeline->connections().live(kNow) == n.get(Counter::conn_new));
    CHECK(n.counters.total_drops() == 0);
    // Untracked flows keep their backend while the backends do not change.
    CHECK(send_flows(n, fs) == got);
}

TEST_CASE("a new flow's backend is maglev_lookup(service.maglev, flow_hash(tuple, seed)), the same on two workers",
          "[pipeline][maglev]") {
    TestNode n;
    add_pool(n, {1, 2, 3, 4, 5});
    const Service& pool = n.service("pool");
    const std::vector<Flow> fs = flows(2000, 3);
    std::vector<Bytes> out_a, out_b, out_other_seed;
    const std::vector<int> a = send_flows(n, fs, nullptr, &out_a);
    for (size_t i = 0; i < fs.size(); ++i) {
        INFO("flow " << i);
        REQUIRE(a[i] == model_backend(pool, fs[i]));
    }

    // A second worker: its own counters and connection table, the same seed.
    WorkerCounters counters_b;
    Pipeline worker_b(node_identity(), {}, n.grants->reader(), counters_b);
    const std::vector<int> b = send_flows(n, fs, &worker_b, &out_b);
    CHECK(b == a);
    CHECK(out_b == out_a);  // outer source and all: byte for byte
    CHECK(counters_b.get(Counter::conn_new) == 2000);

    // Another seed is another model: the check above is not vacuous.
    WorkerCounters counters_c;
    Pipeline worker_c(node_identity(kSeed + 1), {}, n.grants->reader(), counters_c);
    const std::vector<int> c = send_flows(n, fs, &worker_c, &out_other_seed);
    size_t same = 0;
    for (size_t i = 0; i < fs.size(); ++i) {
        REQUIRE(c[i] == model_backend(pool, fs[i], kSeed + 1));
        same += c[i] == a[i] ? 1 : 0;
    }
    CHECK(same < 1000);  // about one in five by chance

    SECTION("IPv6 flows too") {
        for (uint16_t port = 1000; port < 1200; ++port) {
            const Bytes inner = tcp6("2001:db8:f::7", "2001:db8::60", port, 443);
            Buf one(eth6(inner)), two(eth6(inner));
            REQUIRE(n.process(one) == Action::transmit);
            REQUIRE(n.process_with(worker_b, two) == Action::transmit);
            FlowTuple t;
            const Bytes s = wire("2001:db8:f::7"), d = wire("2001:db8::60");
            std::copy(s.begin(), s.end(), t.src.begin());
            std::copy(d.begin(), d.end(), t.dst.begin());
            t.src_port = port;
            t.dst_port = 443;
            t.proto = 6;
            t.version = IpVersion::v6;
            const BackendInfo& expected = pool.backends.at(maglev_lookup(pool.maglev, flow_hash(t, kSeed)));
            // An IPv4 backend: outer IPv4 destination.
            CHECK(Bytes(one.pkt.data + 30, one.pkt.data + 34) ==
                  Bytes(expected.address.bytes.begin(), expected.address.bytes.begin() + 4));
            CHECK(one.bytes() == two.bytes());
        }
    }
}

TEST_CASE("a flow whose VIP moved to another service is tracked by one entry, not one per packet",
          "[pipeline][conn]") {
    TestNode n(roomy_conn_table());
    add_pool(n, {1, 2, 3});
    const std::vector<Flow> fs = flows(1);
    REQUIRE(send_flows(n, fs)[0] > 0);
    REQUIRE(n.get(Counter::conn_new) == 1);

    // The pool goes; a new service (another id) takes its VIP.
    REQUIRE(n.services.remove("pool").ok);
    n.apply(9, service_set("pool2", {vip(kPoolVip, 443)}));
    BackendSet set = pool_backends({4, 5});
    set.service = "pool2";
    n.apply(set);
    n.grant(9, "198.18.0.0", 16);

    for (int i = 0; i < 3; ++i) {
        const int b = send_flows(n, fs)[0];
        CHECK((b == 4 || b == 5));
    }
    // One new entry for the new service's flow, then hits.
    CHECK(n.get(Counter::conn_new) == 2);
    CHECK(n.get(Counter::conn_hit) == 2);
}

TEST_CASE("denials are sampled at a bounded rate, each sample carrying the count of its reason since the last",
          "[pipeline][grant]") {
    TestNode n;
    add_standard_services(n);
    std::vector<Buf> bufs;
    for (int i = 0; i < 20; ++i)
        bufs.emplace_back(eth4(tcp4("198.51.100.99", "203.0.113.10", static_cast<uint16_t>(40000 + i), 80, 0)));
    n.process(bufs);
    CHECK(n.get(Counter::drop_no_grant) == 20);
    // A burst of kDenialSampleBurst samples, one denial each; the rest only counted.
    auto samples = n.pipeline->denial_samples();
    REQUIRE(samples.size() == kDenialSampleBurst);
    for (const DenialSample& d : samples) {
        CHECK(d.reason == DenialReason::no_grant);
        CHECK(d.count == 1);
        CHECK(d.family == IpVersion::v4);
        CHECK(d.protocol == 6);
        CHECK(d.vip_port == 80);
        CHECK(d.source[0] == 198);
        CHECK(d.source[3] == 99);
        CHECK(d.vip[0] == 203);
    }
    // A second later the bucket has refilled: the next sample carries the 12 denials
    // that were counted without a sample, plus its own.
    Buf one(eth4(tcp4("198.51.100.99", "203.0.113.10", 41000, 80, 0)));
    n.process(one, kNow + 1000);
    samples = n.pipeline->denial_samples();
    REQUIRE(samples.size() == 1);
    CHECK(samples[0].count == 13);
    // A granted packet adds no sample.
    grant_standard_client(n);
    Buf ok(eth4(tcp4("198.51.100.7", "203.0.113.10", 41001, 80, 0)));
    CHECK(n.process(ok, kNow + 2000) == Action::transmit);
    CHECK(n.pipeline->denial_samples().empty());
}

TEST_CASE("forwarded packets are counted per service, with the bytes as the client sent them", "[pipeline]") {
    TestNode n;
    std::vector<ServiceCounters> per_service(64);
    n.pipeline = std::make_unique<Pipeline>(node_identity(), ConnTableConfig{}, n.grants->reader(), n.counters,
                                            std::span<ServiceCounters>(per_service));
    add_standard_services(n);
    grant_standard_client(n);
    std::vector<Buf> bufs;
    size_t bytes = 0;
    for (int i = 0; i < 5; ++i) {
        bufs.emplace_back(eth4(tcp4("198.51.100.7", "203.0.113.10", static_cast<uint16_t>(40000 + i), 80, 10 * i)));
        bytes += bufs.back().pkt.len;
    }
    bufs.emplace_back(eth4(tcp4("198.51.100.99", "203.0.113.10", 40100, 80, 0)));  // no grant: not counted
    n.process(bufs);
    CHECK(n.get(Counter::forwarded) == 5);
    CHECK(per_service[kWeb4].packets == 5);
    CHECK(per_service[kWeb4].bytes == bytes);
    uint64_t others = 0;
    for (size_t id = 0; id < per_service.size(); ++id)
        if (id != kWeb4) others += per_service[id].packets;
    CHECK(others == 0);
}

TEST_CASE("forwarded packets are counted on their backend's slot in every mode, new and tracked flows alike",
          "[pipeline]") {
    TestNode n;
    std::vector<ServiceCounters> per_service(64);
    std::vector<BackendCounters> per_backend(kDefaultBackendCapacity);
    n.pipeline = std::make_unique<Pipeline>(node_identity(), ConnTableConfig{}, n.grants->reader(), n.counters,
                                            std::span<ServiceCounters>(per_service),
                                            std::span<BackendCounters>(per_backend));
    add_standard_services(n);
    grant_standard_client(n);
    const auto slot = [&](const char* service) {
        const uint32_t s = n.service(service).backends.at(0).counter_slot;
        REQUIRE(s < per_backend.size());
        return s;
    };
    std::map<uint32_t, ForwardCounters> want;
    std::vector<Buf> bufs;
    const auto send = [&](const char* service, Bytes frame) {
        bufs.emplace_back(std::move(frame));
        if (service == nullptr) return;
        ++want[slot(service)].packets;
        want[slot(service)].bytes += bufs.back().pkt.len;
    };
    for (int i = 0; i < 3; ++i)  // three new flows, then one of them twice more (tracked)
        send("web4", eth4(tcp4("198.51.100.7", "203.0.113.10", static_cast<uint16_t>(41000 + i), 80, 10 * i)));
    send("web4", eth4(tcp4("198.51.100.7", "203.0.113.10", 41000, 80, 100)));
    send("web4", eth4(tcp4("198.51.100.7", "203.0.113.10", 41000, 80, 7)));
    send("web6", eth6(tcp6("2001:db8::7", "2001:db8::64", 41000, 443, 5)));
    send("gue", eth4(tcp4("198.51.100.7", "203.0.113.20", 41000, 80)));
    send("dsr", eth4(tcp4("198.51.100.7", "203.0.113.30", 41000, 80, 1)));
    send(nullptr, eth4(tcp4("198.51.100.99", "203.0.113.10", 41000, 80)));  // no grant: not forwarded
    send(nullptr, eth4(tcp4("198.51.100.7", "203.0.113.50", 41000, 80)));   // disabled service
    n.process(bufs);
    REQUIRE(n.get(Counter::forwarded) == 8);
    CHECK(n.get(Counter::conn_hit) == 2);
    uint64_t total = 0;
    for (uint32_t s = 0; s < per_backend.size(); ++s) {
        INFO("slot " << s);
        CHECK(per_backend[s].packets == want[s].packets);
        CHECK(per_backend[s].bytes == want[s].bytes);
        total += per_backend[s].packets;
    }
    CHECK(total == n.get(Counter::forwarded));

    // A backend joins and the first leaves: the tracked flow is rehashed and
    // counts on its new backend; the backend that left keeps its counts, and
    // one that stays its slot.
    const uint32_t w4 = slot("web4");
    n.apply({"web4", {backend("w4", "172.16.0.1"), backend("w4b", "172.16.0.9")}});
    CHECK(slot("web4") == w4);
    n.apply({"web4", {backend("w4b", "172.16.0.9")}});
    const uint32_t w4b = slot("web4");
    CHECK(w4b != w4);
    Buf again(eth4(tcp4("198.51.100.7", "203.0.113.10", 41000, 80, 3)));
    const uint32_t received = again.pkt.len;
    REQUIRE(n.process(again) == Action::transmit);
    CHECK(n.get(Counter::conn_rehashed) == 1);
    CHECK(per_backend[w4].packets == 5);
    CHECK(per_backend[w4b].packets == 1);
    CHECK(per_backend[w4b].bytes == received);
}

namespace {

// RFC 1071 over `b`, done here apart from the code under test.
uint16_t fold_sum(const Bytes& b, size_t from, size_t to, uint32_t sum = 0) {
    for (size_t i = from; i + 1 < to; i += 2) sum += static_cast<uint32_t>(b[i] << 8 | b[i + 1]);
    if ((to - from) % 2) sum += static_cast<uint32_t>(b[to - 1] << 8);
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return static_cast<uint16_t>(sum);
}

}  // namespace

TEST_CASE("an echo request to a VIP is answered only when its service answers echo, and then byte for byte",
          "[pipeline][icmp]") {
    TestNode n;
    add_standard_services(n);
    ServiceSet pingable = service_set("ping", {vip("203.0.113.60", 80), vip("2001:db8::60", 80)});
    pingable.flags = kServiceFlagAnswerEcho;
    n.apply(7, pingable);
    n.apply({"ping", {backend("p", "172.16.0.7")}});
    const Bytes payload = {'j', 'i', 't', 'l', 'b', '!', 0, 1, 2, 3};

    SECTION("IPv4") {
        Buf b(eth4(ipv4(Ipv4Opts{.src = wire("198.51.100.9"), .dst = wire("203.0.113.60"), .proto = 1},
                        icmp(8, 0, 0x12340001, payload))));
        const Bytes in = b.bytes();
        REQUIRE(n.process(b) == Action::transmit);
        CHECK(n.get(Counter::echo_replies) == 1);
        const Bytes out = b.bytes();
        REQUIRE(out.size() == in.size());
        CHECK(Bytes(out.begin(), out.begin() + 6) == Bytes(in.begin() + 6, in.begin() + 12));  // to the asker
        CHECK(Bytes(out.begin() + 6, out.begin() + 12) == mac_bytes(node_identity().mac));
        CHECK(Bytes(out.begin() + 26, out.begin() + 30) == wire("203.0.113.60"));  // from the VIP
        CHECK(Bytes(out.begin() + 30, out.begin() + 34) == wire("198.51.100.9"));
        CHECK(out[22] == 64);
        CHECK(fold_sum(out, 14, 34) == 0xffff);  // IPv4 header checksum
        CHECK(out[34] == 0);                     // echo reply
        CHECK(fold_sum(out, 34, out.size()) == 0xffff);
        CHECK(Bytes(out.begin() + 38, out.end()) == Bytes(in.begin() + 38, in.end()));  // id, seq, payload
    }
    SECTION("IPv6") {
        Buf b(eth6(ipv6(Ipv6Opts{.src = wire("2001:db8::9"), .dst = wire("2001:db8::60"), .proto = 58},
                        icmp(128, 0, 0x12340001, payload))));
        const Bytes in = b.bytes();
        REQUIRE(n.process(b) == Action::transmit);
        const Bytes out = b.bytes();
        CHECK(Bytes(out.begin() + 22, out.begin() + 38) == wire("2001:db8::60"));
        CHECK(Bytes(out.begin() + 38, out.begin() + 54) == wire("2001:db8::9"));
        CHECK(out[54] == 129);
        // ICMPv6 checksum over the pseudo-header and the message.
        uint32_t pseudo = fold_sum(out, 22, 54);
        pseudo += static_cast<uint32_t>(out.size() - 54) + 58;
        CHECK(fold_sum(out, 54, out.size(), pseudo) == 0xffff);
        CHECK(Bytes(out.begin() + 58, out.end()) == Bytes(in.begin() + 58, in.end()));
    }
    SECTION("a VIP whose service does not answer echo") {
        Buf b(eth4(ipv4(Ipv4Opts{.src = wire("198.51.100.9"), .dst = wire("203.0.113.10"), .proto = 1},
                        icmp(8, 0, 0x12340001, payload))));
        CHECK(n.process(b) == Action::drop);
        CHECK(n.get(Counter::drop_icmp_not_allowed) == 1);
        CHECK(n.get(Counter::echo_replies) == 0);
    }
    SECTION("above the rate, echo is dropped and counted") {
        uint64_t replied = 0;
        for (int i = 0; i < 300; ++i) {
            Buf b(eth4(ipv4(Ipv4Opts{.src = wire("198.51.100.9"), .dst = wire("203.0.113.60"), .proto = 1},
                            icmp(8, 0, 0x12340001u + static_cast<uint32_t>(i), payload))));
            replied += n.process(b) == Action::transmit;
        }
        CHECK(replied == kEchoBurst);
        CHECK(n.get(Counter::drop_icmp_rate_limited) == 300 - kEchoBurst);
    }
}

TEST_CASE("ICMP errors about a granted flow are forwarded only when sent to the quoted VIP, and at most "
          "1000 per second per worker; errors about flows without a grant do not use the budget",
          "[pipeline][icmp]") {
    TestNode n;
    add_standard_services(n);
    grant_standard_client(n);
    // Host unreachable from a router about the flow 203.0.113.10:80 -> client:40000.
    const auto error_about = [](const char* client, const char* to) {
        const Bytes quoted = tcp4("203.0.113.10", client, 80, 40000);
        return eth4(ipv4(Ipv4Opts{.src = wire("192.0.2.254"), .dst = wire(to), .proto = 1},
                         icmp(3, 1, 0, Bytes(quoted.begin(), quoted.begin() + 28))));
    };
    SECTION("the outer destination must be the VIP the quote came from") {
        Buf elsewhere(error_about("198.51.100.7", "203.0.113.99"));
        CHECK(n.process(elsewhere) == Action::drop);
        CHECK(n.get(Counter::drop_icmp_not_allowed) == 1);
        Buf to_vip(error_about("198.51.100.7", "203.0.113.10"));
        CHECK(n.process(to_vip) == Action::transmit);
        CHECK(n.get(Counter::forwarded) == 1);
    }
    SECTION("a flood: 100 at once (the burst), then one per millisecond") {
        std::vector<Buf> ungranted;
        for (int i = 0; i < 300; ++i) ungranted.emplace_back(error_about("198.51.100.99", "203.0.113.10"));
        n.process(ungranted);
        CHECK(n.get(Counter::drop_no_grant) == 300);
        std::vector<Buf> granted;
        for (int i = 0; i < 160; ++i) granted.emplace_back(error_about("198.51.100.7", "203.0.113.10"));
        const auto actions = n.process(granted);
        CHECK(std::count(actions.begin(), actions.end(), Action::transmit) == kIcmpErrorBurst);
        CHECK(n.get(Counter::drop_icmp_rate_limited) == 160 - kIcmpErrorBurst);
        Buf later(error_about("198.51.100.7", "203.0.113.10"));
        CHECK(n.process(later, kNow + 1) == Action::transmit);  // 1 ms on: one more token (1000 per second)
    }
}

// --- the next hop's MAC -------------------------------------------------------

TEST_CASE("until the resolver knows the next hop's MAC, encapsulated packets are dropped as next_hop_unresolved; "
          "then they go to the learned MAC, by the backend's family",
          "[pipeline][next_hop]") {
    const MacAddress learned4{0x02, 0xdd, 0x00, 0x00, 0x00, 0x04};
    const MacAddress learned6{0x02, 0xdd, 0x00, 0x00, 0x00, 0x06};
    NextHopMacs macs;
    NodeIdentity identity = node_identity();
    identity.next_hop_mac = {};
    identity.next_hop_macs = &macs;
    TestNode n({}, identity);
    add_standard_services(n);
    grant_standard_client(n);
    const Bytes ipip4 = pad_to_min(eth4(tcp4("198.51.100.7", "203.0.113.10", 40000, 80)));
    const Bytes ipip6 = eth6(tcp6("2001:db8::7", "2001:db8::64", 40000, 443));
    const Bytes gue = pad_to_min(eth4(tcp4("198.51.100.7", "203.0.113.20", 40000, 80)));
    const Bytes dsr = pad_to_min(eth4(tcp4("198.51.100.7", "203.0.113.30", 40000, 80)));

    {
        Buf a(ipip4), b(ipip6), c(gue), d(dsr);
        CHECK(n.process(a) == Action::drop);
        CHECK(n.process(b) == Action::drop);
        CHECK(n.process(c) == Action::drop);
        CHECK(n.process(d) == Action::transmit);  // L2 DSR needs no next hop
        CHECK(n.get(Counter::drop_next_hop_unresolved) == 3);
        CHECK(n.get(Counter::forwarded) == 1);
        CHECK(a.bytes() == ipip4);  // untouched
    }

    macs.v4.store(next_hop_word(learned4));
    {
        Buf a(ipip4), b(ipip6), c(gue);
        REQUIRE(n.process(a) == Action::transmit);
        CHECK(Bytes(a.pkt.data, a.pkt.data + 6) == mac_bytes(learned4));
        CHECK(Bytes(a.pkt.data + 6, a.pkt.data + 12) == mac_bytes(kNodeMac));
        REQUIRE(n.process(c) == Action::transmit);
        CHECK(Bytes(c.pkt.data, c.pkt.data + 6) == mac_bytes(learned4));
        CHECK(n.process(b) == Action::drop);  // the IPv6 next hop is still unknown
        CHECK(n.get(Counter::drop_next_hop_unresolved) == 4);
    }

    macs.v6.store(next_hop_word(learned6));
    {
        Buf b(ipip6);
        REQUIRE(n.process(b) == Action::transmit);
        CHECK(Bytes(b.pkt.data, b.pkt.data + 6) == mac_bytes(learned6));
        CHECK(be16(b.pkt.data + 12) == 0x86dd);
    }

    // A new MAC (the router changed) applies from the next burst.
    macs.v4.store(next_hop_word(learned6));
    {
        Buf a(ipip4);
        REQUIRE(n.process(a) == Action::transmit);
        CHECK(Bytes(a.pkt.data, a.pkt.data + 6) == mac_bytes(learned6));
    }
    CHECK(n.get(Counter::drop_next_hop_unresolved) == 4);
}

TEST_CASE("with no next-hop MAC at all, encapsulated packets are dropped, never sent to 00:00:00:00:00:00",
          "[pipeline][next_hop]") {
    NodeIdentity identity = node_identity();
    identity.next_hop_mac = {};
    TestNode n({}, identity);
    add_standard_services(n);
    grant_standard_client(n);
    Buf a(pad_to_min(eth4(tcp4("198.51.100.7", "203.0.113.10", 40000, 80))));
    CHECK(n.process(a) == Action::drop);
    CHECK(n.get(Counter::drop_next_hop_unresolved) == 1);
    CHECK(n.get(Counter::forwarded) == 0);
}

TEST_CASE("with the resolver on, ARP replies and neighbour advertisements to the node go to it, even without an "
          "exception port; requests are still answered",
          "[pipeline][next_hop]") {
    const Bytes router_mac{0x02, 0x11, 0x22, 0x33, 0x44, 0x55};
    const Bytes node_mac = mac_bytes(kNodeMac);
    const auto arp_reply_to = [&](const char* target) {
        return pad_to_min(eth_frame(node_mac, router_mac, 0x0806,
                                    arp(2, router_mac, wire("192.0.2.1"), node_mac, wire(target))));
    };
    NodeIdentity identity = node_identity();
    identity.exception_allow = 0;  // no exception port
    SECTION("resolver on") {
        identity.resolver_takes_replies = true;
        TestNode n({}, identity);
        add_standard_services(n);
        Buf reply(arp_reply_to("192.0.2.10"));
        CHECK(n.process(reply) == Action::resolver);
        CHECK(reply.bytes() == arp_reply_to("192.0.2.10"));  // unchanged
        Buf elsewhere(arp_reply_to("192.0.2.99"));
        CHECK(n.process(elsewhere) == Action::drop);
        CHECK(n.get(Counter::drop_not_for_us) == 1);
        Buf na(neighbour_advertisement(node_mac, "2001:db8::10", "2001:db8::1", 0x60));
        CHECK(n.process(na) == Action::resolver);
        Buf unsolicited(neighbour_advertisement(Bytes{0x33, 0x33, 0, 0, 0, 1}, "ff02::1", "2001:db8::1", 0x20));
        CHECK(n.process(unsolicited) == Action::resolver);
        CHECK(n.get(Counter::to_resolver) == 3);
        // What the node answers itself is unchanged.
        Buf ns(neighbour_solicitation(router_mac, "2001:db8::1", "2001:db8::10", 255));
        CHECK(n.process(ns) == Action::transmit);
        Buf request(pad_to_min(eth_frame(Bytes(6, 0xff), router_mac, 0x0806,
                                         arp(1, router_mac, wire("192.0.2.1"), Bytes(6, 0), wire("192.0.2.10")))));
        CHECK(n.process(request) == Action::transmit);
        CHECK(n.get(Counter::to_exception) == 0);
        CHECK(n.get(Counter::drop_exception_denied) == 0);
    }
    SECTION("resolver off: the exception path decides, as before") {
        TestNode n({}, identity);
        add_standard_services(n);
        Buf reply(arp_reply_to("192.0.2.10"));
        CHECK(n.process(reply) == Action::drop);
        Buf na(neighbour_advertisement(node_mac, "2001:db8::10", "2001:db8::1", 0x60));
        CHECK(n.process(na) == Action::drop);
        CHECK(n.get(Counter::drop_exception_denied) == 2);
        CHECK(n.get(Counter::to_resolver) == 0);
    }
}

// --- several ports: each its own MAC, next hop and MTU --------------------------

namespace {

const MacAddress kPort1Mac{0x02, 0xaa, 0x00, 0x00, 0x01, 0x01};
const MacAddress kPort1NextHopMac{0x02, 0xbb, 0x00, 0x00, 0x01, 0x02};

// Port 0 as node_identity()'s one port; port 1 with its own MAC, next hop and
// a smaller MTU.
NodeIdentity two_port_identity() {
    NodeIdentity n = node_identity();
    n.ports = {{kNodeMac, kNextHopMac, nullptr, 1500}, {kPort1Mac, kPort1NextHopMac, nullptr, 1400}};
    return n;
}

Bytes src_mac_of(const Buf& b) { return Bytes(b.pkt.data + 6, b.pkt.data + 12); }
Bytes dst_mac_of(const Buf& b) { return Bytes(b.pkt.data, b.pkt.data + 6); }

}  // namespace

TEST_CASE("an ARP request or neighbour solicitation is answered with the MAC of the port it came in by",
          "[pipeline][ports][arp]") {
    const Bytes asker_mac{0x02, 0x11, 0x22, 0x33, 0x44, 0x55};
    const auto request = [&] {
        return pad_to_min(eth_frame(Bytes(6, 0xff), asker_mac, 0x0806,
                                    arp(1, asker_mac, wire("192.0.2.1"), Bytes(6, 0), wire("192.0.2.10"))));
    };
    const auto reply_from = [&](const MacAddress& mac) {
        return pad_to_min(eth_frame(asker_mac, mac_bytes(mac), 0x0806,
                                    arp(2, mac_bytes(mac), wire("192.0.2.10"), asker_mac, wire("192.0.2.1"))));
    };
    TestNode n({}, two_port_identity());
    add_standard_services(n);
    Buf on_0(request()), on_1(request());
    CHECK(n.process_on(1, on_1) == Action::transmit);
    CHECK(on_1.bytes() == reply_from(kPort1Mac));
    CHECK(n.process_on(0, on_0) == Action::transmit);
    CHECK(on_0.bytes() == reply_from(kNodeMac));

    Buf ns(neighbour_solicitation(asker_mac, "2001:db8::7", "2001:db8::10", 255));
    REQUIRE(n.process_on(1, ns) == Action::transmit);
    CHECK(src_mac_of(ns) == mac_bytes(kPort1Mac));
    CHECK(Bytes(ns.pkt.data + 54 + 26, ns.pkt.data + 54 + 32) == mac_bytes(kPort1Mac));  // target link-layer address
    CHECK(n.get(Counter::arp_replies) == 2);
    CHECK(n.get(Counter::nd_replies) == 1);
}

TEST_CASE("a granted packet is encapsulated from the MAC of the port it came in by to that port's next hop; "
          "L2 DSR sends from that port's MAC",
          "[pipeline][ports][encap]") {
    TestNode n({}, two_port_identity());
    add_standard_services(n);
    grant_standard_client(n);
    // The same burst on each port: IPIP, GUE, L2 DSR.
    const auto burst = [] {
        std::vector<Buf> b;
        b.emplace_back(pad_to_min(eth4(tcp4("198.51.100.7", "203.0.113.10", 40000, 80))));
        b.emplace_back(pad_to_min(eth4(tcp4("198.51.100.7", "203.0.113.20", 40000, 80))));
        b.emplace_back(pad_to_min(eth4(tcp4("198.51.100.7", "203.0.113.30", 40000, 80))));
        return b;
    };
    struct Row {
        size_t port;
        MacAddress mac, next_hop;
    };
    for (const Row& row : {Row{1, kPort1Mac, kPort1NextHopMac}, Row{0, kNodeMac, kNextHopMac}, Row{1, kPort1Mac, kPort1NextHopMac}}) {
        INFO("port " << row.port);
        std::vector<Buf> b = burst();
        const std::vector<Action> actions = n.process_on(row.port, b);
        CHECK(actions == std::vector<Action>(3, Action::transmit));
        for (size_t i : {0, 1}) {
            CHECK(dst_mac_of(b[i]) == mac_bytes(row.next_hop));
            CHECK(src_mac_of(b[i]) == mac_bytes(row.mac));
        }
        CHECK(dst_mac_of(b[2]) == mac_bytes(kDsrBackendMac));
        CHECK(src_mac_of(b[2]) == mac_bytes(row.mac));
    }
    CHECK(n.get(Counter::forwarded) == 9);
}

TEST_CASE("a packet that fits port 0's MTU but not port 1's is too_big on port 1 only, answered from port 1's MAC "
          "with port 1's MTU",
          "[pipeline][ports][encap]") {
    TestNode n({}, two_port_identity());
    add_standard_services(n);
    grant_standard_client(n);
    // IPv6-in-IPv6: 1460 bytes inside fill 1500 exactly.
    const Bytes frame = eth6(tcp6("2001:db8::7", "2001:db8::64", 40000, 443, 1460 - 60));
    Buf on_0(frame), on_1(frame);
    CHECK(n.process_on(0, on_0) == Action::transmit);
    CHECK(on_0.pkt.len - 14 == 1500);
    CHECK(n.get(Counter::drop_too_big) == 0);
    REQUIRE(n.process_on(1, on_1) == Action::transmit);  // the packet-too-big
    CHECK(n.get(Counter::drop_too_big) == 1);
    CHECK(n.get(Counter::too_big_sent) == 1);
    const Bytes out = on_1.bytes();
    REQUIRE(out.size() == 14 + 1280);
    CHECK(Bytes(out.begin() + 6, out.begin() + 12) == mac_bytes(kPort1Mac));
    CHECK(out[54] == 2);  // packet too big
    CHECK((out[58] << 24 | out[59] << 16 | out[60] << 8 | out[61]) == 1400 - 40);
    // One that fits port 1 (1360 inside) goes on.
    Buf fits(eth6(tcp6("2001:db8::7", "2001:db8::64", 40001, 443, 1360 - 60)));
    CHECK(n.process_on(1, fits) == Action::transmit);
    CHECK(fits.pkt.len - 14 == 1400);
    CHECK(n.get(Counter::forwarded) == 2);
}

TEST_CASE("each port reads its own resolver's words: port 1 unresolved while port 0 is resolved drops "
          "next_hop_unresolved on port 1 only",
          "[pipeline][ports][next_hop]") {
    const MacAddress learned0{0x02, 0xdd, 0x00, 0x00, 0x00, 0x10};
    const MacAddress learned1{0x02, 0xdd, 0x00, 0x00, 0x00, 0x11};
    NextHopMacs macs0, macs1;
    macs0.v4.store(next_hop_word(learned0));
    NodeIdentity identity = node_identity();
    identity.ports = {{kNodeMac, {}, &macs0, 1500}, {kPort1Mac, {}, &macs1, 1500}};
    TestNode n({}, identity);
    add_standard_services(n);
    grant_standard_client(n);
    const Bytes ipip4 = pad_to_min(eth4(tcp4("198.51.100.7", "203.0.113.10", 40000, 80)));
    {
        Buf on_0(ipip4), on_1(ipip4);
        REQUIRE(n.process_on(0, on_0) == Action::transmit);
        CHECK(dst_mac_of(on_0) == mac_bytes(learned0));
        CHECK(n.process_on(1, on_1) == Action::drop);
        CHECK(on_1.bytes() == ipip4);
        CHECK(n.get(Counter::drop_next_hop_unresolved) == 1);
    }
    macs1.v4.store(next_hop_word(learned1));
    {
        Buf on_0(ipip4), on_1(ipip4);
        REQUIRE(n.process_on(1, on_1) == Action::transmit);
        CHECK(dst_mac_of(on_1) == mac_bytes(learned1));
        CHECK(src_mac_of(on_1) == mac_bytes(kPort1Mac));
        REQUIRE(n.process_on(0, on_0) == Action::transmit);
        CHECK(dst_mac_of(on_0) == mac_bytes(learned0));
    }
    CHECK(n.get(Counter::drop_next_hop_unresolved) == 1);
    CHECK(n.get(Counter::forwarded) == 3);
}

TEST_CASE("without a ports list, the node's own MAC, next hop and MTU are port 0's, and a port index beyond "
          "the ports is port 0",
          "[pipeline][ports]") {
    TestNode n;
    add_standard_services(n);
    grant_standard_client(n);
    REQUIRE(n.pipeline->ports().size() == 1);
    Buf b(pad_to_min(eth4(tcp4("198.51.100.7", "203.0.113.10", 40000, 80))));
    REQUIRE(n.process_on(3, b) == Action::transmit);
    CHECK(dst_mac_of(b) == mac_bytes(kNextHopMac));
    CHECK(src_mac_of(b) == mac_bytes(kNodeMac));
}
