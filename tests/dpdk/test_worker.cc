// The worker lcore over DPDK (lb/worker.h): what test_pipeline's plain buffers
// cannot reach. mbufs go in and out of two net_ring ports (ring-backed
// ethdevs: a test enqueues into a port's rx ring, runs worker_poll once and
// dequeues what the worker sent from the port's tx ring); the exception,
// denial and return rings; the spare mbufs of the reset path; and the
// mempool's accounting, so that a dropped mbuf that is not freed shows. No
// NIC, no jitlb binary.
//
// main() starts EAL with fixed arguments (no PCI, no hugepages) and hands the
// real argv to Catch (scripts/test adds -r junit -o FILE); it exits 77
// (meson's skip) only when EAL cannot start at all.
#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_eth_ring.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>
#include <rte_ring_elem.h>

#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "grant_table.h"
#include "ip_text.h"
#include "packet_builder.h"
#include "pipeline.h"
#include "service_table.h"
#include "shared_layout.h"
#include "software_rss.h"
#include "worker.h"

using namespace jitlb;
using namespace jitlb::lb;
using namespace jitlb::test;

namespace {

const MacAddress kNodeMac{0x02, 0xaa, 0x00, 0x00, 0x00, 0x01};
const MacAddress kNextHopMac{0x02, 0xbb, 0x00, 0x00, 0x00, 0x02};
const Bytes kClientMac{0x02, 0, 0, 0, 0, 0x02};     // packet_builder's eth(): source MAC
constexpr const char* kClient = "198.51.100.7";     // holds a grant for kWeb
constexpr const char* kStranger = "198.51.100.99";  // holds none
constexpr const char* kVip = "203.0.113.10";        // kWeb, port 80/tcp
constexpr const char* kBackend = "172.16.0.1";      // kWeb's only backend
constexpr const char* kNodeAddress = "192.0.2.10";
constexpr uint16_t kWeb = 1;

constexpr unsigned kPoolMbufs = 4095;
constexpr unsigned kPortRingSize = 256;      // 255 usable
constexpr unsigned kExceptionRingSize = 64;  // 63 usable
constexpr unsigned kDenialRingSize = 256;    // as main.cc
constexpr size_t kSpares = ExtraPackets{}.bufs.size();

IpAddress address(const char* text) { return jitlb::test::ip(text); }

// The address's bytes as on the wire (4 or 16).
Bytes wire(const char* text) {
    const IpAddress a = address(text);
    return Bytes(a.bytes.begin(), a.bytes.begin() + (a.version == IpVersion::v4 ? 4 : 16));
}

// The address as FlowTuple / DenialSample hold it: IPv4 in bytes 0..3, the rest zero.
std::array<uint8_t, 16> padded(const char* text) { return address(text).bytes; }

Bytes mac_bytes(const MacAddress& m) { return Bytes(m.begin(), m.end()); }

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
uint32_t be32(const uint8_t* p) { return uint32_t{be16(p)} << 16 | be16(p + 2); }
void put32(Bytes& b, size_t at, uint32_t v) {
    put16(b, at, static_cast<uint16_t>(v >> 16));
    put16(b, at + 2, static_cast<uint16_t>(v));
}

// RFC 1071, written here rather than taken from packet.h, so that the
// worker's checksums are checked independently.
uint32_t sum16(const uint8_t* p, size_t n, uint32_t sum = 0) {
    for (size_t i = 0; i + 1 < n; i += 2) sum += static_cast<uint32_t>(p[i] << 8 | p[i + 1]);
    if (n % 2 != 0) sum += static_cast<uint32_t>(p[n - 1] << 8);
    return sum;
}
uint16_t fold(uint32_t sum) {
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return static_cast<uint16_t>(sum);
}
// The TCP checksum over the IPv4 pseudo-header verifies (`ip4` at a 20-byte header).
bool tcp4_checksum_ok(const uint8_t* ip4) {
    const size_t tcp_len = be16(ip4 + 2) - 20u;
    const uint32_t pseudo = sum16(ip4 + 12, 8) + 6 + static_cast<uint32_t>(tcp_len);
    return fold(sum16(ip4 + 20, tcp_len, pseudo)) == 0xffff;
}

Bytes tcp4(const char* src, const char* dst, uint16_t sport, uint16_t dport, uint8_t flags = 0x02,
           size_t payload = 0) {
    return ipv4(Ipv4Opts{.src = wire(src), .dst = wire(dst)}, tcp(sport, dport, flags, payload));
}
// A frame as a NIC delivers it: padded to 60 bytes.
Bytes frame4(const char* src, const char* dst, uint16_t sport, uint16_t dport, uint8_t flags = 0x02,
             size_t payload = 0) {
    return pad_to_min(eth4(tcp4(src, dst, sport, dport, flags, payload)));
}
Bytes arp_request(const Bytes& asker_mac, const char* asker_ip, const char* target) {
    return pad_to_min(eth_frame(Bytes(6, 0xff), asker_mac, 0x0806,
                                arp(1, asker_mac, wire(asker_ip), Bytes(6, 0), wire(target))));
}

// The unix ms the TSC stands for when the clock offset is 0 (now = rte_rdtsc()).
int64_t tsc_now_ms() {
    const uint64_t t = rte_rdtsc(), hz = rte_get_tsc_hz();
    return static_cast<int64_t>(t / hz * 1000 + t % hz * 1000 / hz);
}

// --- the ports: created once (an ethdev is not cheaply re-made), closed in main ---

struct Ports {
    rte_mempool* pool = nullptr;
    std::array<rte_ring*, 2> rx{};  // the test enqueues, the port's rx queue 0 dequeues
    std::array<rte_ring*, 2> tx{};  // the port's tx queue 0 enqueues, the test dequeues
    std::array<uint16_t, 2> id{};
};
Ports* g_ports = nullptr;

void free_all(rte_ring* r) {
    void* obj = nullptr;
    while (rte_ring_dequeue(r, &obj) == 0) rte_pktmbuf_free(static_cast<rte_mbuf*>(obj));
}

Ports& ports() {
    if (g_ports != nullptr) return *g_ports;
    auto p = std::make_unique<Ports>();
    p->pool = rte_pktmbuf_pool_create("tw_mbufs", kPoolMbufs, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                      SOCKET_ID_ANY);
    INFO("mbuf pool: " << rte_strerror(rte_errno));
    REQUIRE(p->pool != nullptr);
    for (size_t i = 0; i < 2; ++i) {
        const std::string n = std::to_string(i);
        p->rx[i] = rte_ring_create(("tw_rx" + n).c_str(), kPortRingSize, SOCKET_ID_ANY,
                                   RING_F_SP_ENQ | RING_F_SC_DEQ);
        p->tx[i] = rte_ring_create(("tw_tx" + n).c_str(), kPortRingSize, SOCKET_ID_ANY,
                                   RING_F_SP_ENQ | RING_F_SC_DEQ);
        INFO("port rings: " << rte_strerror(rte_errno));
        REQUIRE(p->rx[i] != nullptr);
        REQUIRE(p->tx[i] != nullptr);
        const int port =
            rte_eth_from_rings(("tw" + n).c_str(), &p->rx[i], 1, &p->tx[i], 1, rte_socket_id());
        INFO("rte_eth_from_rings: " << rte_strerror(rte_errno));
        REQUIRE(port >= 0);
        p->id[i] = static_cast<uint16_t>(port);
        rte_eth_conf conf{};
        REQUIRE(rte_eth_dev_configure(p->id[i], 1, 1, &conf) == 0);
        const auto socket = static_cast<unsigned>(rte_eth_dev_socket_id(p->id[i]));
        REQUIRE(rte_eth_rx_queue_setup(p->id[i], 0, kPortRingSize, socket, nullptr, p->pool) == 0);
        REQUIRE(rte_eth_tx_queue_setup(p->id[i], 0, kPortRingSize, socket, nullptr) == 0);
        REQUIRE(rte_eth_dev_start(p->id[i]) == 0);
    }
    g_ports = p.release();
    return *g_ports;
}

// A port without RSS for software RSS tests: one rx queue, a tx queue per
// worker (two), as main.cc configures a spread port.
struct SpreadPort {
    rte_ring* rx = nullptr;
    std::array<rte_ring*, 2> tx{};
    uint16_t id = 0;
};
SpreadPort* g_spread = nullptr;

SpreadPort& spread_port() {
    if (g_spread != nullptr) return *g_spread;
    Ports& p = ports();
    auto s = std::make_unique<SpreadPort>();
    s->rx = rte_ring_create("tws_rx", kPortRingSize, SOCKET_ID_ANY, RING_F_SP_ENQ | RING_F_SC_DEQ);
    for (size_t q = 0; q < 2; ++q)
        s->tx[q] = rte_ring_create(("tws_tx" + std::to_string(q)).c_str(), kPortRingSize, SOCKET_ID_ANY,
                                   RING_F_SP_ENQ | RING_F_SC_DEQ);
    INFO("rings: " << rte_strerror(rte_errno));
    REQUIRE(s->rx != nullptr);
    REQUIRE(s->tx[0] != nullptr);
    REQUIRE(s->tx[1] != nullptr);
    const int port = rte_eth_from_rings("tws", &s->rx, 1, s->tx.data(), 2, rte_socket_id());
    INFO("rte_eth_from_rings: " << rte_strerror(rte_errno));
    REQUIRE(port >= 0);
    s->id = static_cast<uint16_t>(port);
    rte_eth_conf conf{};
    REQUIRE(rte_eth_dev_configure(s->id, 1, 2, &conf) == 0);
    const auto socket = static_cast<unsigned>(rte_eth_dev_socket_id(s->id));
    REQUIRE(rte_eth_rx_queue_setup(s->id, 0, kPortRingSize, socket, nullptr, p.pool) == 0);
    for (uint16_t q = 0; q < 2; ++q) REQUIRE(rte_eth_tx_queue_setup(s->id, q, kPortRingSize, socket, nullptr) == 0);
    REQUIRE(rte_eth_dev_start(s->id) == 0);
    g_spread = s.release();
    return *g_spread;
}

void close_ports() {
    if (g_spread != nullptr) {
        rte_eth_dev_stop(g_spread->id);
        rte_eth_dev_close(g_spread->id);
        free_all(g_spread->rx);
        rte_ring_free(g_spread->rx);
        for (rte_ring* r : g_spread->tx) {
            free_all(r);
            rte_ring_free(r);
        }
        delete g_spread;
        g_spread = nullptr;
    }
    if (g_ports == nullptr) return;
    for (size_t i = 0; i < 2; ++i) {
        rte_eth_dev_stop(g_ports->id[i]);
        rte_eth_dev_close(g_ports->id[i]);  // rings given to rte_eth_from_rings stay ours
        free_all(g_ports->rx[i]);
        free_all(g_ports->tx[i]);
        rte_ring_free(g_ports->rx[i]);
        rte_ring_free(g_ports->tx[i]);
    }
    rte_mempool_free(g_ports->pool);
    delete g_ports;
    g_ports = nullptr;
}

// mbufs the test holds; freed when it goes out of scope (a failed REQUIRE too).
struct Mbufs {
    std::vector<rte_mbuf*> m;
    Mbufs() = default;
    Mbufs(const Mbufs&) = delete;
    Mbufs& operator=(const Mbufs&) = delete;
    ~Mbufs() {
        for (rte_mbuf* x : m) rte_pktmbuf_free(x);
    }
    size_t size() const { return m.size(); }
    rte_mbuf* operator[](size_t i) const { return m.at(i); }
};

// Everything a ring holds, in order.
void dequeue_all(rte_ring* r, Mbufs& out) {
    void* obj = nullptr;
    while (rte_ring_dequeue(r, &obj) == 0) out.m.push_back(static_cast<rte_mbuf*>(obj));
}

// One mbuf's frame; every frame the worker sends is one segment.
Bytes bytes_of(const rte_mbuf* m) {
    REQUIRE(m->nb_segs == 1);
    REQUIRE(m->data_len == m->pkt_len);
    const auto* p = rte_pktmbuf_mtod(m, const uint8_t*);
    return Bytes(p, p + m->data_len);
}

GrantTableConfig grant_config() {
    GrantTableConfig c;
    c.capacity = 256;
    c.max_service_id = 16;
    c.ticks_per_second = rte_get_tsc_hz();  // the worker's clock is the TSC (offset 0 here)
    c.hash_seed = 0x5eed;
    return c;
}

NodeIdentity node_identity() {
    NodeIdentity n;
    n.mac = kNodeMac;
    n.next_hop_mac = kNextHopMac;
    n.addresses = {address(kNodeAddress), address("2001:db8::10")};
    n.outer_source_v4 = {address("10.255.0.0"), 16};
    n.outer_source_v6 = {address("fd00:ff::"), 64};
    n.outer_ttl = 64;
    n.mtu = 1500;
    n.flow_hash_seed = 0x5eed'f10e'0000'0001;
    n.ticks_per_second = rte_get_tsc_hz();
    n.exception_allow = kExceptionSsh;
    return n;
}

// Memory as the state file gives it: page aligned.
struct AlignedMemory {
    explicit AlignedMemory(size_t n) : size((n + 4095) / 4096 * 4096) {
        data = static_cast<std::byte*>(std::aligned_alloc(4096, size));
        std::memset(data, 0, size);
    }
    ~AlignedMemory() { std::free(data); }
    AlignedMemory(const AlignedMemory&) = delete;
    AlignedMemory& operator=(const AlignedMemory&) = delete;
    std::byte* data;
    size_t size;
};

// One worker (index 0) over port 0 queue 0, wired as main.cc wires it: a
// pipeline with the service web (203.0.113.10:80/tcp -> 172.16.0.1, IPIP) and
// a grant for 198.51.100.7, its own exception and denial rings, a zeroed state
// header (clock offset 0). The mempool's in-use count is taken after the
// shared rings are emptied, so that a test can check that it comes back.
struct Rig {
    Rig() : p(ports()), memory(GrantTable::bytes_needed(grant_config())) {
        for (size_t i = 0; i < 2; ++i) {
            free_all(p.rx[i]);
            free_all(p.tx[i]);
        }
        baseline = rte_mempool_in_use_count(p.pool);

        GrantTableError error;
        auto writer =
            GrantTableWriter::create({memory.data, memory.size}, grant_config(), {}, error);
        INFO(error.message);
        REQUIRE(writer);
        grants.emplace(std::move(*writer));
        ServiceSet web;
        web.name = "web";
        web.vips = {{address(kVip), 80, L4Protocol::tcp}};
        REQUIRE(services.apply(kWeb, web).ok);
        Backend b;
        b.id = "w1";
        b.address = address(kBackend);
        REQUIRE(services.apply(BackendSet{"web", {b}}).ok);
        client_grant = grant(kWeb, kClient);

        static unsigned instance = 0;
        ++instance;
        const std::string n = std::to_string(instance);
        exception_ring = rte_ring_create(("tw_exc" + n).c_str(), kExceptionRingSize, SOCKET_ID_ANY,
                                         RING_F_SP_ENQ | RING_F_SC_DEQ);
        denial_ring =
            rte_ring_create_elem(("tw_deny" + n).c_str(), sizeof(DenialSample), kDenialRingSize,
                                 SOCKET_ID_ANY, RING_F_SP_ENQ | RING_F_SC_DEQ);
        INFO(rte_strerror(rte_errno));
        REQUIRE(exception_ring != nullptr);
        REQUIRE(denial_ring != nullptr);

        ctx.index = 0;
        ctx.queues = {{p.id[0], 0}};
        ctx.pipeline = std::make_unique<Pipeline>(node_identity(), ConnTableConfig{},
                                                  grants->reader(), counters);
        ctx.counters = &counters;
        ctx.exception_ring = exception_ring;
        ctx.denial_ring = denial_ring;
        ctx.services = &services;
        ctx.quiescence = &quiescence;
        ctx.state_header = &header;
        ctx.pool = p.pool;
        ctx.stop = &stop;
    }
    ~Rig() {
        for (size_t i = 0; i < 2; ++i) {
            free_all(p.rx[i]);
            free_all(p.tx[i]);
        }
        if (exception_ring != nullptr) free_all(exception_ring);
        if (ctx.from_kernel_ring != nullptr) {
            free_all(ctx.from_kernel_ring);
            rte_ring_free(ctx.from_kernel_ring);  // a test's own
        }
        worker_release(ctx);
        rte_ring_free(exception_ring);
        rte_ring_free(denial_ring);
    }
    Rig(const Rig&) = delete;
    Rig& operator=(const Rig&) = delete;

    // A grant for `source`/32 of `service`, valid from the epoch until hours
    // after the TSC's present (the worker's clock: now = rte_rdtsc()).
    GrantId grant(uint16_t service, const char* source) {
        GrantEntry e;
        const IpAddress a = address(source);
        e.key = {service, a.version, 32, a.bytes};
        ++grant_count;
        std::memcpy(e.grant_id.data(), &grant_count, sizeof grant_count);
        e.issuer_key_id.fill(1);
        const int64_t now_ms = tsc_now_ms();
        e.not_before_ms = 1;
        e.not_after_ms = now_ms + 10 * 3600 * 1000;
        e.record_hash.fill(static_cast<uint8_t>(grant_count));
        const UpsertResult r = grants->upsert(e, now_ms);
        INFO(upsert_result_name(r));
        REQUIRE(upsert_succeeded(r));
        REQUIRE(grants->reader().ms_to_ticks(e.not_after_ms) >
                rte_rdtsc() + rte_get_tsc_hz() * 3600);
        return e.grant_id;
    }

    rte_mbuf* mbuf(const Bytes& frame) {
        rte_mbuf* m = rte_pktmbuf_alloc(p.pool);
        REQUIRE(m != nullptr);
        char* d = rte_pktmbuf_append(m, static_cast<uint16_t>(frame.size()));
        REQUIRE(d != nullptr);
        std::memcpy(d, frame.data(), frame.size());
        return m;
    }
    // Enqueues into a port's rx ring; returns the mbufs (the worker owns them now).
    std::vector<rte_mbuf*> inject(const std::vector<Bytes>& frames, size_t port = 0) {
        std::vector<rte_mbuf*> ms;
        for (const Bytes& f : frames) ms.push_back(mbuf(f));
        put(ms, port);
        return ms;
    }
    void put(const std::vector<rte_mbuf*>& ms, size_t port = 0) {
        REQUIRE(rte_ring_enqueue_burst(p.rx[port], reinterpret_cast<void* const*>(ms.data()),
                                       static_cast<unsigned>(ms.size()), nullptr) == ms.size());
    }
    // Fills `r` with empty mbufs until `room` slots are left; they stay in the ring.
    unsigned fill(rte_ring* r, unsigned room) {
        const unsigned n = rte_ring_free_count(r) - room;
        for (unsigned i = 0; i < n; ++i) {
            rte_mbuf* m = rte_pktmbuf_alloc(p.pool);
            REQUIRE(m != nullptr);
            REQUIRE(rte_ring_enqueue(r, m) == 0);
        }
        return n;
    }
    unsigned in_use() const { return rte_mempool_in_use_count(p.pool); }
    uint64_t get(Counter c) const { return counters.get(c); }

    Ports& p;
    unsigned baseline = 0;
    AlignedMemory memory;
    std::optional<GrantTableWriter> grants;
    uint64_t grant_count = 0;
    GrantId client_grant{};
    ServiceTable services;
    Quiescence quiescence{1};
    StateHeader header{};
    std::atomic<bool> stop{false};
    WorkerCounters counters;
    rte_ring* exception_ring = nullptr;
    rte_ring* denial_ring = nullptr;
    WorkerContext ctx;
};

// The fixed parts of `out` (an IPIP frame from the node to kBackend); the inner
// IP packet follows at 34.
void check_ipip_headers(const Bytes& out, size_t inner_len) {
    REQUIRE(out.size() == 14 + 20 + inner_len);
    CHECK(Bytes(out.begin(), out.begin() + 6) == mac_bytes(kNextHopMac));
    CHECK(Bytes(out.begin() + 6, out.begin() + 12) == mac_bytes(kNodeMac));
    CHECK(be16(&out[12]) == 0x0800);
    const uint8_t* outer = &out[14];
    CHECK(outer[0] == 0x45);
    CHECK(be16(outer + 2) == 20 + inner_len);
    CHECK(outer[8] == 64);                                   // TTL
    CHECK(outer[9] == 4);                                    // IP-in-IP
    CHECK(fold(sum16(outer, 20)) == 0xffff);                 // header checksum verifies
    CHECK(Bytes(outer + 12, outer + 14) == Bytes{10, 255});  // source in 10.255.0.0/16
    CHECK(Bytes(outer + 16, outer + 20) == wire(kBackend));
}

// docs/counters.md, "How they add up": every frame received gets exactly one
// verdict, and what was offered to a tx ring was either sent or counted tx_full.
void check_counters_add_up(const WorkerCounters& c, uint64_t kernel_frames = 0) {
    uint64_t verdicts = c.get(Counter::forwarded) + c.get(Counter::arp_replies) + c.get(Counter::nd_replies) +
                        c.get(Counter::echo_replies) + c.get(Counter::to_exception) + c.get(Counter::to_resolver);
    for (size_t i = 0; i < static_cast<size_t>(Counter::count_); ++i) {
        const auto counter = static_cast<Counter>(i);
        if (is_drop(counter) && counter != Counter::drop_exception_full && counter != Counter::drop_tx_full &&
            counter != Counter::drop_resolver_full)
            verdicts += c.get(counter);
    }
    for (size_t i = 1; i < c.parse_drops.size(); ++i) verdicts += c.parse_drops[i];
    CHECK(c.get(Counter::rx_packets) == verdicts);
    CHECK(c.get(Counter::tx_packets) + c.get(Counter::drop_tx_full) ==
          c.get(Counter::forwarded) + c.get(Counter::arp_replies) + c.get(Counter::nd_replies) +
              c.get(Counter::echo_replies) + c.get(Counter::too_big_sent) + c.get(Counter::resets_sent) +
              kernel_frames);
}

}  // namespace

// --- the mbuf adapter ---------------------------------------------------------

TEST_CASE("a granted TCP packet enqueued as an mbuf leaves the tx ring IPIP-encapsulated in the same mbuf, its data_off moved back by the outer header",
          "[worker][adapter]") {
    Rig r;
    const Bytes inner = tcp4(kClient, kVip, 40000, 80, 0x02, 100);
    const Bytes frame = eth4(inner);  // 154 bytes: no Ethernet padding
    rte_mbuf* in = r.inject({frame})[0];
    const uint16_t data_off = in->data_off;
    const uint32_t room = in->buf_len;

    CHECK(worker_poll(r.ctx) == 1);
    Mbufs tx;
    dequeue_all(r.p.tx[0], tx);
    REQUIRE(tx.size() == 1);
    rte_mbuf* out = tx[0];
    CHECK(out == in);  // rewritten in place
    const Bytes bytes = bytes_of(out);
    CHECK(out->data_len == 14 + 20 + inner.size());
    CHECK(out->pkt_len == 14 + 20 + inner.size());
    check_ipip_headers(bytes, inner.size());
    CHECK(Bytes(bytes.begin() + 34, bytes.end()) == inner);  // byte for byte
    // 34 bytes written where the 14 of Ethernet were: 20 more of the headroom used.
    CHECK(out->data_off == data_off - 20);
    CHECK(rte_pktmbuf_headroom(out) == data_off - 20u);
    CHECK(out->buf_len == room);
    CHECK(rte_pktmbuf_mtod(out, uint8_t*) == static_cast<uint8_t*>(out->buf_addr) + out->data_off);

    CHECK(r.get(Counter::rx_packets) == 1);
    CHECK(r.get(Counter::rx_bytes) == frame.size());
    CHECK(r.get(Counter::forwarded) == 1);
    CHECK(r.get(Counter::tx_packets) == 1);
    CHECK(r.get(Counter::tx_bytes) == 14 + 20 + inner.size());
    CHECK(r.counters.total_drops() == 0);
    CHECK(rte_ring_count(r.p.tx[1]) == 0);  // out of the port it came in by, only
    check_counters_add_up(r.counters);
}

TEST_CASE("a burst of 32 mixed packets sends only the granted ones and the ARP replies, in order, and frees every dropped mbuf",
          "[worker][adapter][mempool]") {
    Rig r;
    // i % 4: 0 granted, 1 source without a grant, 2 unknown VIP, 3 ARP request for the VIP.
    std::vector<Bytes> frames;
    std::vector<Bytes> expected;  // what the tx ring must hold, in order
    for (int i = 0; i < 32; ++i) {
        const auto sport = static_cast<uint16_t>(40000 + i);
        const std::string asker = "198.51.100." + std::to_string(100 + i);
        const Bytes asker_mac{0x02, 0xcc, 0, 0, 0, static_cast<uint8_t>(i)};
        switch (i % 4) {
            case 0:
                frames.push_back(frame4(kClient, kVip, sport, 80));
                expected.push_back(tcp4(kClient, kVip, sport, 80));  // the inner packet
                break;
            case 1:
                frames.push_back(frame4(kStranger, kVip, sport, 80));
                break;
            case 2:
                frames.push_back(frame4(kClient, "203.0.113.99", sport, 80));
                break;
            case 3:
                frames.push_back(arp_request(asker_mac, asker.c_str(), kVip));
                expected.push_back(pad_to_min(eth_frame(
                    asker_mac, mac_bytes(kNodeMac), 0x0806,
                    arp(2, mac_bytes(kNodeMac), wire(kVip), asker_mac, wire(asker.c_str())))));
                break;
        }
    }
    REQUIRE(frames.size() == kBurst);
    const std::vector<rte_mbuf*> in = r.inject(frames);
    CHECK(r.in_use() == r.baseline + 32);

    CHECK(worker_poll(r.ctx) == 32);
    // 16 on the tx ring and the worker's spares: the 16 dropped are back in the pool.
    CHECK(r.in_use() == r.baseline + 16 + kSpares);
    uint64_t tx_bytes = 0;
    {
        Mbufs tx;
        dequeue_all(r.p.tx[0], tx);
        REQUIRE(tx.size() == expected.size());
        for (size_t k = 0; k < tx.size(); ++k) {
            INFO("tx frame " << k);
            CHECK(tx[k] == in[k / 2 * 4 + (k % 2 == 0 ? 0 : 3)]);  // each in its own mbuf, in order
            const Bytes out = bytes_of(tx[k]);
            tx_bytes += out.size();
            if (k % 2 == 0) {  // forwarded: IPIP around the client's packet, padding gone
                check_ipip_headers(out, expected[k].size());
                CHECK(Bytes(out.begin() + 34, out.end()) == expected[k]);
            } else {  // the ARP reply, in the request's mbuf
                CHECK(out == expected[k]);
            }
        }
    }  // the sent mbufs go back to the pool
    CHECK(r.get(Counter::rx_packets) == 32);
    CHECK(r.get(Counter::rx_bytes) == 32 * 60);
    CHECK(r.get(Counter::forwarded) == 8);
    CHECK(r.get(Counter::arp_replies) == 8);
    CHECK(r.get(Counter::drop_no_grant) == 8);
    CHECK(r.get(Counter::drop_unknown_vip) == 8);
    CHECK(r.counters.total_drops() == 16);
    CHECK(r.get(Counter::tx_packets) == 16);
    CHECK(r.get(Counter::tx_bytes) == tx_bytes);
    CHECK(tx_bytes == 8 * (14 + 20 + 40) + 8 * 60);
    CHECK(r.get(Counter::drop_tx_full) == 0);
    check_counters_add_up(r.counters);

    worker_release(r.ctx);
    CHECK(r.ctx.extra.available == 0);
    CHECK(r.in_use() == r.baseline);  // every mbuf accounted for, the spares too
}

// --- the rings ------------------------------------------------------------------

TEST_CASE("SSH to a node address lands on the exception ring unchanged, in its own mbuf",
          "[worker][exception]") {
    Rig r;
    const Bytes ssh = frame4(kClient, kNodeAddress, 40000, 22);
    rte_mbuf* in = r.inject({ssh})[0];
    const uint16_t data_off = in->data_off;
    CHECK(worker_poll(r.ctx) == 1);
    Mbufs exc;
    dequeue_all(r.exception_ring, exc);
    REQUIRE(exc.size() == 1);
    CHECK(exc[0] == in);
    CHECK(bytes_of(exc[0]) == ssh);  // padding and all
    CHECK(exc[0]->data_off == data_off);
    CHECK(rte_ring_count(r.p.tx[0]) == 0);
    CHECK(r.get(Counter::to_exception) == 1);
    CHECK(r.get(Counter::drop_exception_full) == 0);
    CHECK(r.get(Counter::tx_packets) == 0);
    CHECK(r.counters.total_drops() == 0);
    check_counters_add_up(r.counters);
}

TEST_CASE("exception traffic the exception ring cannot take is dropped, counted drop_exception_full and freed",
          "[worker][exception][mempool]") {
    Rig r;
    const unsigned fillers = r.fill(r.exception_ring, 1);
    std::vector<Bytes> frames;
    for (uint16_t i = 0; i < 3; ++i)
        frames.push_back(frame4(kClient, kNodeAddress, static_cast<uint16_t>(40000 + i), 22));
    const std::vector<rte_mbuf*> in = r.inject(frames);
    CHECK(worker_poll(r.ctx) == 3);
    CHECK(r.get(Counter::to_exception) == 3);
    CHECK(r.get(Counter::drop_exception_full) == 2);
    CHECK(r.counters.total_drops() == 2);
    check_counters_add_up(r.counters);
    CHECK(rte_ring_count(r.p.tx[0]) == 0);
    // The first took the last slot; the other two went back to the pool.
    CHECK(r.in_use() == r.baseline + fillers + 1 + kSpares);
    Mbufs exc;
    dequeue_all(r.exception_ring, exc);
    REQUIRE(exc.size() == fillers + 1);
    CHECK(exc[fillers] == in[0]);
    CHECK(bytes_of(exc[fillers]) == frames[0]);
}

TEST_CASE("packets a full tx ring does not take are freed and counted tx_full; tx_packets and tx_bytes count only what was sent",
          "[worker][tx][mempool]") {
    Rig r;
    const unsigned fillers = r.fill(r.p.tx[0], 2);
    std::vector<Bytes> frames;
    for (uint16_t i = 0; i < 5; ++i)
        frames.push_back(frame4(kClient, kVip, static_cast<uint16_t>(41000 + i), 80));
    const std::vector<rte_mbuf*> in = r.inject(frames);
    CHECK(worker_poll(r.ctx) == 5);
    CHECK(r.get(Counter::forwarded) == 5);
    CHECK(r.get(Counter::tx_packets) == 2);
    CHECK(r.get(Counter::tx_bytes) == 2 * (14 + 20 + 40));
    CHECK(r.get(Counter::drop_tx_full) == 3);
    CHECK(r.counters.total_drops() == 3);
    check_counters_add_up(r.counters);
    CHECK(r.in_use() == r.baseline + fillers + 2 + kSpares);
    Mbufs tx;
    dequeue_all(r.p.tx[0], tx);
    REQUIRE(tx.size() == fillers + 2);
    for (size_t k = 0; k < 2; ++k) {
        INFO("sent " << k);
        CHECK(tx[fillers + k] == in[k]);  // the first two of the burst
        const Bytes out = bytes_of(tx[fillers + k]);
        check_ipip_headers(out, 40);
        CHECK(Bytes(out.begin() + 34, out.end()) ==
              tcp4(kClient, kVip, static_cast<uint16_t>(41000 + k), 80));
    }
}

TEST_CASE("a frame in two chained mbufs is dropped, counted multi_segment and both segments freed; the rest of its burst goes on",
          "[worker][adapter][mempool]") {
    Rig r;
    const Bytes big = eth4(tcp4(kClient, kVip, 42000, 80, 0x02, 100));
    rte_mbuf* head = r.mbuf(Bytes(big.begin(), big.begin() + 60));
    rte_mbuf* tail = r.mbuf(Bytes(big.begin() + 60, big.end()));
    REQUIRE(rte_pktmbuf_chain(head, tail) == 0);
    REQUIRE(head->nb_segs == 2);
    REQUIRE(head->pkt_len == big.size());
    const Bytes good = frame4(kClient, kVip, 42001, 80);
    rte_mbuf* one = r.mbuf(good);
    r.put({head, one});  // the chain first: the adapter must keep the burst's order
    CHECK(r.in_use() == r.baseline + 3);

    CHECK(worker_poll(r.ctx) == 2);
    CHECK(r.get(Counter::drop_multi_segment) == 1);
    CHECK(r.get(Counter::rx_packets) == 2);
    CHECK(r.get(Counter::rx_bytes) == big.size() + good.size());
    CHECK(r.get(Counter::forwarded) == 1);
    CHECK(r.get(Counter::tx_packets) == 1);
    CHECK(r.counters.total_drops() == 1);
    check_counters_add_up(r.counters);
    CHECK(r.in_use() == r.baseline + 1 + kSpares);  // head and tail back in the pool
    Mbufs tx;
    dequeue_all(r.p.tx[0], tx);
    REQUIRE(tx.size() == 1);
    CHECK(tx[0] == one);
    const Bytes out = bytes_of(tx[0]);
    check_ipip_headers(out, 40);
    CHECK(Bytes(out.begin() + 34, out.end()) == tcp4(kClient, kVip, 42001, 80));
}

TEST_CASE("a tracked flow whose grant was revoked gets a reset to the client in its packet's mbuf and a reset to the backend in a spare mbuf",
          "[worker][reset]") {
    Rig r;
    // The SYN: granted, tracked.
    r.inject({frame4(kClient, kVip, 40000, 80, 0x02)});
    CHECK(worker_poll(r.ctx) == 1);
    REQUIRE(r.get(Counter::conn_new) == 1);
    {
        Mbufs syn;
        dequeue_all(r.p.tx[0], syn);
        REQUIRE(syn.size() == 1);
    }
    REQUIRE(r.grants->revoke(r.client_grant, tsc_now_ms() + 3600 * 1000).entry_removed);

    // The client's ACK: seq 1001, ack 0x12345678, no payload.
    Bytes seg = tcp(40000, 80, 0x10);
    put32(seg, 4, 1001);
    put32(seg, 8, 0x12345678);
    const Bytes ack = pad_to_min(eth4(ipv4({.src = wire(kClient), .dst = wire(kVip)}, seg)));
    rte_mbuf* in = r.inject({ack})[0];
    const unsigned in_use_before = r.in_use();
    CHECK(worker_poll(r.ctx) == 1);

    Mbufs tx;
    dequeue_all(r.p.tx[0], tx);
    REQUIRE(tx.size() == 2);
    CHECK(r.get(Counter::resets_sent) == 2);
    CHECK(r.get(Counter::reset_no_buffer) == 0);
    CHECK(r.get(Counter::drop_no_grant) == 1);
    CHECK(r.get(Counter::tx_packets) == 3);  // the SYN, then the two resets
    check_counters_add_up(r.counters);

    SECTION(
        "the reset to the client, in place of its packet: from the VIP, seq = the client's ack") {
        CHECK(tx[0] == in);
        const Bytes out = bytes_of(tx[0]);
        REQUIRE(out.size() == 14 + 20 + 20);  // the padding is gone
        CHECK(Bytes(out.begin(), out.begin() + 6) == kClientMac);
        CHECK(Bytes(out.begin() + 6, out.begin() + 12) == mac_bytes(kNodeMac));
        CHECK(be16(&out[12]) == 0x0800);
        const uint8_t* ip4 = &out[14];
        CHECK(ip4[0] == 0x45);
        CHECK(be16(ip4 + 2) == 40);
        CHECK(ip4[9] == 6);
        CHECK(fold(sum16(ip4, 20)) == 0xffff);
        CHECK(Bytes(ip4 + 12, ip4 + 16) == wire(kVip));
        CHECK(Bytes(ip4 + 16, ip4 + 20) == wire(kClient));
        const uint8_t* t = ip4 + 20;
        CHECK(be16(t) == 80);
        CHECK(be16(t + 2) == 40000);
        CHECK(be32(t + 4) == 0x12345678);  // RFC 793: <SEQ=SEG.ACK><CTL=RST>
        CHECK(be32(t + 8) == 0);
        CHECK(t[13] == 0x04);  // RST
        CHECK(tcp4_checksum_ok(ip4));
    }
    SECTION(
        "the reset to the backend, from a spare mbuf: the client's own RST (seq = its seq), IPIP "
        "to the backend") {
        rte_mbuf* spare = tx[1];
        CHECK(spare != in);
        const Bytes out = bytes_of(spare);
        check_ipip_headers(out, 40);
        const uint8_t* ip4 = &out[34];
        CHECK(ip4[0] == 0x45);
        CHECK(be16(ip4 + 2) == 40);
        CHECK(ip4[9] == 6);
        CHECK(fold(sum16(ip4, 20)) == 0xffff);
        CHECK(Bytes(ip4 + 12, ip4 + 16) == wire(kClient));
        CHECK(Bytes(ip4 + 16, ip4 + 20) == wire(kVip));
        const uint8_t* t = ip4 + 20;
        CHECK(be16(t) == 40000);
        CHECK(be16(t + 2) == 80);
        CHECK(be32(t + 4) == 1001);
        CHECK(be32(t + 8) == 0);
        CHECK(t[13] == 0x04);
        CHECK(tcp4_checksum_ok(ip4));
        // Built at the spare's start of data, then 20 bytes of outer header in front.
        CHECK(spare->data_off == RTE_PKTMBUF_HEADROOM - 20);
        CHECK(spare->data_len == 14 + 20 + 40);
        CHECK(spare->pkt_len == 14 + 20 + 40);
        CHECK(spare->nb_segs == 1);
    }
    SECTION("the spare taken is replaced from the pool") {
        CHECK(r.ctx.extra.available == kSpares);
        CHECK(r.ctx.extra.used == 0);
        CHECK(r.in_use() == in_use_before + 1);  // the reset's mbuf, now on the tx ring
    }
}

TEST_CASE("denials of a burst of ungranted packets arrive on the denial ring as DenialSample values with their source, VIP and port",
          "[worker][denial]") {
    Rig r;
    std::vector<Bytes> frames;
    for (uint16_t i = 0; i < 20; ++i)
        frames.push_back(frame4(kStranger, kVip, static_cast<uint16_t>(43000 + i), 80));

    SECTION("the ring takes them") {
        r.inject(frames);
        CHECK(worker_poll(r.ctx) == 20);
        CHECK(r.get(Counter::drop_no_grant) == 20);
        DenialSample samples[32];
        const unsigned n = rte_ring_sc_dequeue_burst_elem(r.denial_ring, samples,
                                                          sizeof(DenialSample), 32, nullptr);
        CHECK(n == kDenialSampleBurst);  // the rest only counted (the token bucket's burst)
        for (unsigned k = 0; k < n; ++k) {
            INFO("sample " << k);
            CHECK(samples[k].reason == DenialReason::no_grant);
            CHECK(samples[k].family == IpVersion::v4);
            CHECK(samples[k].protocol == 6);
            CHECK(samples[k].service_id == kWeb);
            CHECK(samples[k].source == padded(kStranger));
            CHECK(samples[k].vip == padded(kVip));
            CHECK(samples[k].vip_port == 80);
            CHECK(samples[k].count == 1);
        }
        CHECK(r.get(Counter::denial_samples_lost) == 0);
        check_counters_add_up(r.counters);
        CHECK(r.in_use() == r.baseline + kSpares);  // the denied mbufs freed
    }
    SECTION("a full ring: the samples it does not take are counted denial_samples_lost") {
        DenialSample filler;
        const unsigned room = rte_ring_free_count(r.denial_ring);
        for (unsigned k = 0; k < room - 3; ++k)
            REQUIRE(rte_ring_sp_enqueue_elem(r.denial_ring, &filler, sizeof filler) == 0);
        r.inject(frames);
        CHECK(worker_poll(r.ctx) == 20);
        CHECK(rte_ring_free_count(r.denial_ring) == 0);
        CHECK(r.get(Counter::denial_samples_lost) == kDenialSampleBurst - 3);
        check_counters_add_up(r.counters);
    }
}

TEST_CASE("worker_poll announces the service snapshot's generation, idle or not, so that an older snapshot can be reclaimed",
          "[worker][quiescence]") {
    Rig r;
    // The rig's own applies (service, backends) retired the snapshots before `first`.
    const uint64_t first = r.services.current()->generation();
    const size_t retired = r.services.retired_count();
    REQUIRE(retired >= 1);
    CHECK(r.quiescence.oldest_in_use() < first);
    CHECK(r.services.reclaim(r.quiescence) == 0);  // the worker has announced nothing yet
    CHECK(worker_poll(r.ctx) == 0);                // no packet: it announces all the same
    CHECK(r.quiescence.oldest_in_use() == first);
    CHECK(r.services.reclaim(r.quiescence) == retired);

    ServiceSet other;
    other.name = "other";
    other.vips = {{address("203.0.113.20"), 80, L4Protocol::tcp}};
    REQUIRE(r.services.apply(2, other).ok);
    const uint64_t second = r.services.current()->generation();
    REQUIRE(second > first);
    REQUIRE(r.services.retired_count() == 1);
    CHECK(r.services.reclaim(r.quiescence) == 0);  // the worker may still hold `first`

    r.inject({frame4(kClient, kVip, 40000, 80)});
    CHECK(worker_poll(r.ctx) == 1);
    CHECK(r.quiescence.oldest_in_use() == second);
    CHECK(r.services.reclaim(r.quiescence) == 1);
    CHECK(r.services.retired_count() == 0);
    check_counters_add_up(r.counters);
}

TEST_CASE("a packet leaves by the port it came in on, and what the kernel sends leaves by its m->port, on the worker's tx queue",
          "[worker][tx]") {
    Rig r;
    r.ctx.queues = {{r.p.id[0], 0}, {r.p.id[1], 0}};
    // The main lcore's return ring (main.cc gives it to worker 0); the rig frees it.
    rte_ring* from_kernel =
        rte_ring_create("tw_from_kernel", 64, SOCKET_ID_ANY, RING_F_SP_ENQ | RING_F_SC_DEQ);
    REQUIRE(from_kernel != nullptr);
    r.ctx.from_kernel_ring = from_kernel;

    rte_mbuf* on_1 = r.inject({frame4(kClient, kVip, 44000, 80)}, 1)[0];
    const Bytes kernel_frame = frame4(kNodeAddress, kClient, 22, 40000);
    rte_mbuf* from_tap = r.mbuf(kernel_frame);
    from_tap->port = r.p.id[0];  // main.cc marks the kernel's frames with the first port
    REQUIRE(rte_ring_enqueue(from_kernel, from_tap) == 0);
    CHECK(worker_poll(r.ctx) == 1);  // the return ring's packets are not received ones

    Mbufs tx0, tx1;
    dequeue_all(r.p.tx[0], tx0);
    dequeue_all(r.p.tx[1], tx1);
    REQUIRE(tx1.size() == 1);
    CHECK(tx1[0] == on_1);
    check_ipip_headers(bytes_of(tx1[0]), 40);
    REQUIRE(tx0.size() == 1);
    CHECK(tx0[0] == from_tap);
    CHECK(bytes_of(tx0[0]) == kernel_frame);  // as the kernel wrote it
    CHECK(r.get(Counter::tx_packets) == 2);
    CHECK(r.get(Counter::tx_bytes) == (14 + 20 + 40) + kernel_frame.size());
    check_counters_add_up(r.counters, 1);
}

TEST_CASE("each port answers and encapsulates with its own MAC and next hop, and a frame on the return ring "
          "marked with port 1 leaves by port 1",
          "[worker][tx][ports]") {
    const MacAddress port1_mac{0x02, 0xaa, 0x00, 0x00, 0x01, 0x01};
    const MacAddress port1_next_hop{0x02, 0xbb, 0x00, 0x00, 0x01, 0x02};
    Rig r;
    NodeIdentity identity = node_identity();
    identity.resolver_takes_replies = true;
    identity.ports = {{kNodeMac, kNextHopMac, nullptr, 1500}, {port1_mac, port1_next_hop, nullptr, 1500}};
    r.ctx.pipeline = std::make_unique<Pipeline>(identity, ConnTableConfig{}, r.grants->reader(), r.counters);
    r.ctx.queues = {{r.p.id[0], 0}, {r.p.id[1], 0}};
    r.ctx.port_index[r.p.id[1]] = 1;  // as main.cc: port id -> the index of its PortIdentity
    rte_ring* from_kernel = rte_ring_create("tw_ports_ret", 64, SOCKET_ID_ANY, RING_F_SP_ENQ | RING_F_SC_DEQ);
    rte_ring* resolver = rte_ring_create("tw_ports_nh", 64, SOCKET_ID_ANY, RING_F_SP_ENQ | RING_F_SC_DEQ);
    REQUIRE(from_kernel != nullptr);
    REQUIRE(resolver != nullptr);
    r.ctx.from_kernel_ring = from_kernel;  // the rig frees it
    r.ctx.resolver_ring = resolver;

    const Bytes asker_mac{0x02, 0x11, 0x22, 0x33, 0x44, 0x55};
    const Bytes router_mac{0x02, 0x11, 0x22, 0x33, 0x44, 0x66};
    const Bytes reply_to_node = pad_to_min(eth_frame(mac_bytes(port1_mac), router_mac, 0x0806,
                                                     arp(2, router_mac, wire("192.0.2.1"), mac_bytes(port1_mac),
                                                         wire(kNodeAddress))));
    rte_mbuf* on_0 = r.inject({frame4(kClient, kVip, 44000, 80)}, 0)[0];
    const std::vector<rte_mbuf*> on_1 =
        r.inject({frame4(kClient, kVip, 44001, 80), arp_request(asker_mac, "192.0.2.1", kNodeAddress), reply_to_node}, 1);
    // A resolver's request for port 1, as main.cc marks it.
    const Bytes request = arp_request(mac_bytes(port1_mac), kNodeAddress, "192.0.2.1");
    rte_mbuf* returned = r.mbuf(request);
    returned->port = r.p.id[1];
    REQUIRE(rte_ring_enqueue(from_kernel, returned) == 0);
    CHECK(worker_poll(r.ctx) == 4);

    Mbufs tx0, tx1, to_resolver;
    dequeue_all(r.p.tx[0], tx0);
    dequeue_all(r.p.tx[1], tx1);
    dequeue_all(resolver, to_resolver);
    REQUIRE(tx0.size() == 1);
    CHECK(tx0[0] == on_0);
    check_ipip_headers(bytes_of(tx0[0]), 40);  // kNextHopMac from kNodeMac
    REQUIRE(tx1.size() == 3);
    // Port 1's burst, then the return ring's frame.
    CHECK(tx1[0] == on_1[0]);
    const Bytes encapsulated = bytes_of(tx1[0]);
    CHECK(Bytes(encapsulated.begin(), encapsulated.begin() + 6) == mac_bytes(port1_next_hop));
    CHECK(Bytes(encapsulated.begin() + 6, encapsulated.begin() + 12) == mac_bytes(port1_mac));
    CHECK(tx1[1] == on_1[1]);
    const Bytes arp_reply = bytes_of(tx1[1]);
    CHECK(Bytes(arp_reply.begin() + 6, arp_reply.begin() + 12) == mac_bytes(port1_mac));
    CHECK(Bytes(arp_reply.begin() + 22, arp_reply.begin() + 28) == mac_bytes(port1_mac));  // ARP sender
    CHECK(tx1[2] == returned);
    CHECK(bytes_of(tx1[2]) == request);
    // The reply to the node goes to the resolver marked with the port it came in by.
    REQUIRE(to_resolver.size() == 1);
    CHECK(to_resolver[0] == on_1[2]);
    CHECK(to_resolver[0]->port == r.p.id[1]);
    CHECK(r.get(Counter::forwarded) == 2);
    CHECK(r.get(Counter::arp_replies) == 1);
    CHECK(r.get(Counter::to_resolver) == 1);
    CHECK(r.get(Counter::tx_packets) == 4);
    check_counters_add_up(r.counters, 1);
    rte_ring_free(resolver);
}

// --- software RSS ------------------------------------------------------------------

namespace {

// Two workers over the spread port, wired as main.cc wires them when a port
// has no RSS: worker 0 owns the port's one rx queue and spreads it; each
// worker has its own pipeline, counters and handoff ring, and sends on its own
// tx queue. Worker 0 is the Rig's (its grants and services); worker 1 shares them.
struct SpreadRig {
    SpreadRig() : sp(spread_port()) {
        free_all(sp.rx);
        for (rte_ring* t : sp.tx) free_all(t);
        static unsigned instance = 0;
        ++instance;
        for (size_t w = 0; w < 2; ++w) {
            handoff[w] = rte_ring_create(("tws_h" + std::to_string(instance) + "_" + std::to_string(w)).c_str(),
                                         kHandoffRingSize, SOCKET_ID_ANY, RING_F_SC_DEQ);
            INFO(rte_strerror(rte_errno));
            REQUIRE(handoff[w] != nullptr);
        }
        denial1 = rte_ring_create_elem(("tws_deny" + std::to_string(instance)).c_str(), sizeof(DenialSample),
                                       kDenialRingSize, SOCKET_ID_ANY, RING_F_SP_ENQ | RING_F_SC_DEQ);
        REQUIRE(denial1 != nullptr);
        WorkerContext& w0 = r.ctx;
        w0.queues = {{sp.id, 0, true}};
        w0.handoff = {handoff[0], handoff[1]};
        w0.rss_seed = kRssSeed;
        w0.quiescence = &quiescence;
        w1.index = 1;
        w1.pipeline = std::make_unique<Pipeline>(node_identity(), ConnTableConfig{}, r.grants->reader(), counters1);
        w1.counters = &counters1;
        w1.denial_ring = denial1;
        w1.handoff = w0.handoff;
        w1.rss_seed = kRssSeed;
        w1.services = &r.services;
        w1.quiescence = &quiescence;
        w1.state_header = &r.header;
        w1.pool = r.p.pool;
        w1.stop = &r.stop;
    }
    ~SpreadRig() {
        free_all(sp.rx);
        for (rte_ring* t : sp.tx) free_all(t);
        for (rte_ring* h : handoff) {
            free_all(h);
            rte_ring_free(h);
        }
        worker_release(w1);
        rte_ring_free(denial1);
    }
    SpreadRig(const SpreadRig&) = delete;
    SpreadRig& operator=(const SpreadRig&) = delete;

    static constexpr unsigned kHandoffRingSize = 256;  // 255 usable
    static constexpr uint64_t kRssSeed = 0x0123'4567'89ab'cdef;

    // The worker software RSS gives a frame (0 or 1), computed here from the hash alone.
    static unsigned worker_of(const Bytes& frame) {
        const std::optional<uint64_t> h = software_rss_hash(frame, kRssSeed);
        return h ? software_rss_worker(*h, 2) : 0;
    }
    void inject(const std::vector<Bytes>& frames) {
        std::vector<rte_mbuf*> ms;
        for (const Bytes& f : frames) ms.push_back(r.mbuf(f));
        REQUIRE(rte_ring_enqueue_burst(sp.rx, reinterpret_cast<void* const*>(ms.data()),
                                       static_cast<unsigned>(ms.size()), nullptr) == ms.size());
    }

    Rig r;
    SpreadPort& sp;
    std::array<rte_ring*, 2> handoff{};
    rte_ring* denial1 = nullptr;
    Quiescence quiescence{2};
    WorkerCounters counters1;
    WorkerContext w1;
};

}  // namespace

TEST_CASE("software RSS: the owner of a port's one rx queue keeps its share, hands the rest to the other worker, and each source's packets leave in order by the worker its addresses pick",
          "[worker][software_rss]") {
    SpreadRig s;
    // 40 granted sources, 3 packets each, interleaved; and an ARP request, which is not hashed.
    std::vector<std::string> sources;
    for (int i = 1; i <= 40; ++i) {
        sources.push_back("198.51.101." + std::to_string(i));
        s.r.grant(kWeb, sources.back().c_str());
    }
    std::vector<Bytes> frames;
    std::map<std::string, unsigned> expected_worker;
    for (uint16_t k = 0; k < 3; ++k)
        for (const std::string& src : sources) {
            frames.push_back(frame4(src.c_str(), kVip, static_cast<uint16_t>(40000 + k), 80));
            expected_worker[src] = SpreadRig::worker_of(frames.back());
        }
    const Bytes asker_mac{0x02, 0xcc, 0, 0, 0, 1};
    frames.push_back(arp_request(asker_mac, "198.51.100.200", kVip));
    unsigned for_1 = 0;
    for (const auto& [src, w] : expected_worker) for_1 += w;
    INFO(for_1 << " of 40 sources on worker 1");
    REQUIRE(for_1 > 5);  // both workers get a real share (a property of the seed, checked)
    REQUIRE(for_1 < 35);
    s.inject(frames);

    // Worker 0 polls until the port is empty; worker 1 then takes its ring.
    unsigned received0 = 0;
    while (rte_ring_count(s.sp.rx) > 0) received0 += worker_poll(s.r.ctx);
    CHECK(received0 == frames.size());
    CHECK(rte_ring_count(s.handoff[1]) == 3 * for_1);
    CHECK(rte_ring_count(s.handoff[0]) == 0);
    CHECK(worker_poll(s.w1) == std::min(3 * for_1, unsigned{kBurst}));  // one burst per poll
    while (rte_ring_count(s.handoff[1]) > 0) worker_poll(s.w1);

    for (unsigned w = 0; w < 2; ++w) {
        Mbufs tx;
        dequeue_all(s.sp.tx[w], tx);
        INFO("tx queue " << w);
        std::map<std::string, uint16_t> next_port;  // per source: 40000, 40001, 40002 in order
        unsigned arp = 0;
        for (size_t k = 0; k < tx.size(); ++k) {
            const Bytes out = bytes_of(tx[k]);
            if (be16(&out[12]) == 0x0806) {
                ++arp;
                continue;
            }
            check_ipip_headers(out, 40);
            char src[INET_ADDRSTRLEN];
            REQUIRE(inet_ntop(AF_INET, &out[34 + 12], src, sizeof src) != nullptr);
            INFO("source " << src);
            REQUIRE(expected_worker.count(src) == 1);
            CHECK(expected_worker[src] == w);
            const uint16_t sport = be16(&out[34 + 20]);
            CHECK(sport == 40000 + next_port[src]++);
        }
        CHECK(arp == (w == 0 ? 1u : 0u));  // the owner answers what it does not hash
        CHECK(next_port.size() == (w == 0 ? 40 - for_1 : for_1));
        for (const auto& [src, n] : next_port) CHECK(n == 3);
    }
    CHECK(s.r.get(Counter::rss_handoffs) == 3 * for_1);
    CHECK(s.r.get(Counter::rx_packets) == 3 * (40 - for_1) + 1);
    CHECK(s.counters1.get(Counter::rx_packets) == 3 * for_1);
    CHECK(s.r.get(Counter::forwarded) + s.counters1.get(Counter::forwarded) == 120);
    CHECK(s.r.get(Counter::drop_rss_handoff_full) == 0);
    check_counters_add_up(s.r.counters);
    check_counters_add_up(s.counters1);
    CHECK(s.counters1.get(Counter::busy_polls) > 0);
}

TEST_CASE("software RSS: a frame handed to another worker is judged with its port's identity there",
          "[worker][software_rss][ports]") {
    const MacAddress port1_mac{0x02, 0xaa, 0x00, 0x00, 0x01, 0x01};
    const MacAddress port1_next_hop{0x02, 0xbb, 0x00, 0x00, 0x01, 0x02};
    SpreadRig s;
    // The spread port is the node's second port (index 1) on both workers.
    NodeIdentity identity = node_identity();
    identity.ports = {{kNodeMac, kNextHopMac, nullptr, 1500}, {port1_mac, port1_next_hop, nullptr, 1500}};
    s.r.ctx.pipeline = std::make_unique<Pipeline>(identity, ConnTableConfig{}, s.r.grants->reader(), s.r.counters);
    s.w1.pipeline = std::make_unique<Pipeline>(identity, ConnTableConfig{}, s.r.grants->reader(), s.counters1);
    s.r.ctx.port_index[s.sp.id] = 1;
    s.w1.port_index[s.sp.id] = 1;
    std::vector<Bytes> frames;
    unsigned for_1 = 0;
    for (int i = 1; i <= 40; ++i) {
        const std::string src = "198.51.101." + std::to_string(i);
        s.r.grant(kWeb, src.c_str());
        frames.push_back(frame4(src.c_str(), kVip, 40000, 80));
        for_1 += SpreadRig::worker_of(frames.back());
    }
    REQUIRE(for_1 > 5);
    REQUIRE(for_1 < 35);
    s.inject(frames);
    while (rte_ring_count(s.sp.rx) > 0) worker_poll(s.r.ctx);
    while (rte_ring_count(s.handoff[1]) > 0) worker_poll(s.w1);
    for (unsigned w = 0; w < 2; ++w) {
        INFO("tx queue " << w);
        Mbufs tx;
        dequeue_all(s.sp.tx[w], tx);
        CHECK(tx.size() == (w == 0 ? 40 - for_1 : for_1));
        for (size_t k = 0; k < tx.size(); ++k) {
            const Bytes out = bytes_of(tx[k]);
            CHECK(Bytes(out.begin(), out.begin() + 6) == mac_bytes(port1_next_hop));
            CHECK(Bytes(out.begin() + 6, out.begin() + 12) == mac_bytes(port1_mac));
        }
    }
    CHECK(s.r.get(Counter::forwarded) + s.counters1.get(Counter::forwarded) == 40);
}

TEST_CASE("software RSS: frames the chosen worker's full ring does not take are received, counted rss_handoff_full on the owner and freed",
          "[worker][software_rss][mempool]") {
    SpreadRig s;
    // One source on worker 1: find it among a few candidates.
    std::string src;
    for (int i = 1; i < 255 && src.empty(); ++i) {
        const std::string a = "198.51.102." + std::to_string(i);
        if (SpreadRig::worker_of(frame4(a.c_str(), kVip, 40000, 80)) == 1) src = a;
    }
    REQUIRE(!src.empty());
    s.r.grant(kWeb, src.c_str());
    const unsigned filler = s.r.fill(s.handoff[1], 3);  // 3 slots left
    const unsigned in_use = s.r.in_use();
    std::vector<Bytes> frames;
    for (uint16_t k = 0; k < 10; ++k) frames.push_back(frame4(src.c_str(), kVip, static_cast<uint16_t>(40000 + k), 80));
    s.inject(frames);
    CHECK(worker_poll(s.r.ctx) == 10);
    CHECK(s.r.get(Counter::rss_handoffs) == 3);
    CHECK(s.r.get(Counter::drop_rss_handoff_full) == 7);
    CHECK(s.r.get(Counter::rx_packets) == 7);  // the refused ones got their verdict here
    CHECK(s.r.get(Counter::rx_bytes) == 7 * 60);
    CHECK(rte_ring_count(s.handoff[1]) == filler + 3);
    CHECK(s.r.in_use() == in_use + 3 + kSpares);  // 7 freed; 3 in the ring; the worker's first spares
    check_counters_add_up(s.r.counters);
}

TEST_CASE("software RSS: worker_drain_handoff runs what a stopped worker's ring still holds through its pipeline",
          "[worker][software_rss]") {
    SpreadRig s;
    std::vector<Bytes> frames;
    for (int i = 1; i <= 40; ++i) {
        const std::string a = "198.51.103." + std::to_string(i);
        if (SpreadRig::worker_of(frame4(a.c_str(), kVip, 40000, 80)) != 1) continue;
        s.r.grant(kWeb, a.c_str());
        frames.push_back(frame4(a.c_str(), kVip, 40000, 80));
        frames.push_back(frame4(a.c_str(), kVip, 40001, 80));
    }
    REQUIRE(frames.size() >= 4);
    s.inject(frames);
    while (rte_ring_count(s.sp.rx) > 0) worker_poll(s.r.ctx);
    REQUIRE(rte_ring_count(s.handoff[1]) == frames.size());
    CHECK(worker_drain_handoff(s.w1) == frames.size());
    CHECK(rte_ring_count(s.handoff[1]) == 0);
    CHECK(s.counters1.get(Counter::forwarded) == frames.size());
    CHECK(rte_ring_count(s.sp.tx[1]) == frames.size());
    CHECK(worker_drain_handoff(s.w1) == 0);
    check_counters_add_up(s.counters1);
}

// --- main: EAL with fixed arguments, then Catch with the real ones ----------------

int main(int argc, char** argv) {
    // No PCI, no hugepages, no shared files: nothing to set up on the machine.
    const std::string prefix = "test_worker" + std::to_string(getpid());
    std::vector<std::string> eal = {"test_worker", "--no-pci", "--no-huge", "-m", "256", "--no-shconf",
                                    "--file-prefix", prefix, "--no-telemetry",
                                    "--log-level", "lib.eal:error", "--log-level", "pmd.net.ring:error"};
    std::vector<char*> eal_argv;
    for (std::string& a : eal) eal_argv.push_back(a.data());
    eal_argv.push_back(nullptr);
    if (rte_eal_init(static_cast<int>(eal.size()), eal_argv.data()) < 0) {
        std::printf("test_worker: skipped: EAL cannot start: %s\n", rte_strerror(rte_errno));
        rmdir(rte_eal_get_runtime_dir());  // if it got as far as making it
        return 77;
    }
    const std::string runtime_dir = rte_eal_get_runtime_dir();
    int result = 0;
    {
        Catch::Session session;
        result = session.run(argc, argv);
    }
    close_ports();
    rte_eal_cleanup();
    rmdir(runtime_dir.c_str());  // EAL leaves it, empty (--no-shconf)
    return result;
}
