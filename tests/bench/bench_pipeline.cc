// The worker pipeline's cycle budget per packet, stage by stage, without DPDK
// (a micro-benchmark that prints figures; never a timed test).
//
// The traffic is scripts/bench's headline case: 64-byte IPv4/TCP frames of
// FLOWS flows from GRANTS granted sources to one IP-in-IP service with 8
// backends, in a fixed random order, 32 per burst. Each stage is measured as
// the difference between two loops over the same bursts, one doing a stage
// more than the other (all loops first restore the frames, which the pipeline
// rewrites in place):
//   restore            copy the 60-byte frames back (not part of jitlb's cost)
//   parse              parse_packet
//   service + grant    the VIP lookup and one bulk grant lookup per burst
//   connection table   flow hash and the connection table's find (a hit)
//   maglev             maglev_lookup (what a new flow costs on top)
//   pipeline           Pipeline::process_burst whole (parse .. IP-in-IP, counters)
// rx and tx (the PMD's cost) are what jitlb's busy cycles per packet
// (scripts/bench) add on top of "pipeline".
//
// usage: bench_pipeline [--grants N] [--flows N] [--bursts N] [--json FILE]
//                       [--pipeline-only] (only the whole pipeline, for perf record)
#include <x86intrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "grant_table.h"
#include "maglev.h"
#include "packet.h"
#include "pipeline.h"
#include "service_table.h"

using namespace jitlb;
using namespace jitlb::lb;

namespace {

constexpr uint16_t kService = 1;
constexpr size_t kFrame = 60;
constexpr size_t kHeadroom = 128;
constexpr size_t kBufSize = 256;

IpAddress v4(uint32_t host_order) {
    IpAddress a;
    a.version = IpVersion::v4;
    a.bytes[0] = static_cast<uint8_t>(host_order >> 24);
    a.bytes[1] = static_cast<uint8_t>(host_order >> 16);
    a.bytes[2] = static_cast<uint8_t>(host_order >> 8);
    a.bytes[3] = static_cast<uint8_t>(host_order);
    return a;
}

void put16(uint8_t* p, uint16_t v) {
    p[0] = static_cast<uint8_t>(v >> 8);
    p[1] = static_cast<uint8_t>(v);
}

// A 64-byte (60 without FCS) IPv4/TCP ACK from `src`:`sport` to 192.0.2.100:80.
std::array<uint8_t, kFrame> frame(const IpAddress& src, uint16_t sport) {
    std::array<uint8_t, kFrame> f{};
    const uint8_t dst_mac[6] = {2, 0, 0, 0, 0x0b, 1}, src_mac[6] = {2, 0, 0, 0, 0x0a, 1};
    std::memcpy(&f[0], dst_mac, 6);
    std::memcpy(&f[6], src_mac, 6);
    put16(&f[12], 0x0800);
    uint8_t* ip = &f[14];
    ip[0] = 0x45;
    put16(ip + 2, 46);
    put16(ip + 6, 0x4000);
    ip[8] = 64;
    ip[9] = 6;
    std::memcpy(ip + 12, src.bytes.data(), 4);
    const uint8_t vip[4] = {192, 0, 2, 100};
    std::memcpy(ip + 16, vip, 4);
    uint32_t sum = 0;
    for (int i = 0; i < 20; i += 2) sum += static_cast<uint32_t>(ip[i] << 8 | ip[i + 1]);
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    put16(ip + 10, static_cast<uint16_t>(~sum));
    uint8_t* tcp = ip + 20;
    put16(tcp, sport);
    put16(tcp + 2, 80);
    tcp[12] = 5 << 4;
    tcp[13] = 0x10;
    put16(tcp + 14, 65535);
    return f;
}

struct Args {
    uint64_t grants = 1000;
    uint64_t flows = 10000;
    uint64_t bursts = 0;  // per measurement; 0: enough for a stable figure
    bool pipeline_only = false;  // for a profiler: only the whole pipeline, long
    std::string json;
};

}  // namespace

int main(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        const std::string k = argv[i];
        if (k == "--pipeline-only") {
            a.pipeline_only = true;
            continue;
        }
        if (i + 1 >= argc) {
            std::fprintf(stderr, "usage: bench_pipeline [--grants N] [--flows N] [--bursts N] [--json FILE] [--pipeline-only]\n");
            return 2;
        }
        if (k == "--grants") a.grants = std::strtoull(argv[++i], nullptr, 10);
        else if (k == "--flows") a.flows = std::strtoull(argv[++i], nullptr, 10);
        else if (k == "--json") a.json = argv[++i];
        else if (k == "--bursts") a.bursts = std::strtoull(argv[++i], nullptr, 10);
        else {
            std::fprintf(stderr, "bench_pipeline: unknown option %s\n", k.c_str());
            return 2;
        }
    }
    if (a.grants == 0 || a.flows < a.grants || a.flows % a.grants != 0) {
        std::fprintf(stderr, "bench_pipeline: flows must be a multiple of grants\n");
        return 2;
    }
    const uint64_t per_source = a.flows / a.grants;
    constexpr uint64_t kTicksPerSecond = 1000;  // ms
    constexpr uint64_t kNow = 1'000'000'000;

    // Grants: one /32 per source.
    GrantTableConfig gc;
    gc.capacity = std::max<uint64_t>(a.grants, 1024);
    gc.max_service_id = 4;
    gc.ticks_per_second = kTicksPerSecond;
    gc.hash_seed = 0x5eed;
    const size_t bytes = GrantTable::bytes_needed(gc);
    const size_t rounded = (bytes + (2u << 20) - 1) / (2u << 20) * (2u << 20);
    void* memory = std::aligned_alloc(2u << 20, rounded);
    std::memset(memory, 0, rounded);
    GrantTableError error;
    auto writer = GrantTableWriter::create({static_cast<std::byte*>(memory), rounded}, gc, {}, error);
    if (!writer) {
        std::fprintf(stderr, "bench_pipeline: grant table: %s\n", error.message.c_str());
        return 1;
    }
    const uint32_t first = 100u << 24 | 64u << 16 | 1;  // 100.64.0.1
    for (uint64_t g = 0; g < a.grants; ++g) {
        GrantEntry e;
        e.key = {kService, IpVersion::v4, 32, v4(static_cast<uint32_t>(first + g)).bytes};
        std::memcpy(e.grant_id.data(), &g, sizeof g);
        e.grant_id[15] = 1;
        e.issuer_key_id.fill(1);
        e.not_before_ms = static_cast<int64_t>(kNow) - 1000;
        e.not_after_ms = static_cast<int64_t>(kNow) + 3'600'000;
        e.record_hash.fill(static_cast<uint8_t>(g));
        if (!upsert_succeeded(writer->upsert(e, static_cast<int64_t>(kNow)))) {
            std::fprintf(stderr, "bench_pipeline: grant %llu refused\n", static_cast<unsigned long long>(g));
            return 1;
        }
    }
    // The service: 8 backends, Maglev 65537.
    ServiceTable services;
    ServiceSet set;
    set.name = "web";
    set.mode = ForwardingMode::ipip;
    set.maglev_table_size = 65537;
    set.vips = {{v4(192u << 24 | 2u << 8 | 100), 80, L4Protocol::tcp}};
    if (!services.apply(kService, set).ok) return 1;
    BackendSet bs;
    bs.service = "web";
    for (uint32_t i = 1; i <= 8; ++i) {
        Backend b;
        b.id = "b" + std::to_string(i);
        b.address = v4(10u << 24 | 1u << 16 | i);
        bs.backends.push_back(b);
    }
    if (!services.apply(bs).ok) return 1;
    const ServiceSnapshot& snap = *services.current();

    NodeIdentity node;
    node.mac = {2, 0, 0, 0, 0x0b, 1};
    node.next_hop_mac = {2, 0, 0, 0, 0x0f, 1};
    node.addresses = {v4(192u << 24 | 2u << 8 | 10)};
    node.outer_source_v4 = {v4(10u << 24 | 255u << 16), 16};
    node.ticks_per_second = kTicksPerSecond;
    ConnTableConfig cc;
    cc.capacity = static_cast<uint32_t>(std::max<uint64_t>(65536, 2 * a.flows));
    // Counters as jitlb lays them out: per service and per backend (default capacities).
    WorkerCounters counters;
    std::vector<ServiceCounters> per_service(kDefaultServiceCapacity + 1);
    std::vector<BackendCounters> per_backend(kDefaultBackendCapacity);
    Pipeline pipeline(node, cc, writer->reader(), counters, per_service, per_backend);

    // Frames in the order a random-order generator sends them; buffers in a ring
    // of 64 bursts (as mbufs cycle through a mempool).
    std::vector<std::array<uint8_t, kFrame>> frames(a.flows);
    for (uint64_t f = 0; f < a.flows; ++f)
        frames[f] = frame(v4(static_cast<uint32_t>(first + f / per_source)), static_cast<uint16_t>(10000 + f % per_source));
    std::vector<uint32_t> order(a.flows);
    std::iota(order.begin(), order.end(), 0u);
    std::shuffle(order.begin(), order.end(), std::mt19937_64(1));
    constexpr size_t kRing = 64 * kBurst;
    std::vector<uint8_t> bufs(kRing * kBufSize);
    PacketBuf pkts[kBurst];
    Action actions[kBurst];
    size_t cursor = 0, slot = 0;
    const auto restore = [&] {
        for (size_t i = 0; i < kBurst; ++i) {
            uint8_t* b = &bufs[(slot + i) * kBufSize];
            std::memcpy(b + kHeadroom, frames[order[cursor]].data(), kFrame);
            pkts[i] = {b + kHeadroom, kFrame, kHeadroom, kBufSize - kHeadroom - kFrame};
            if (++cursor == order.size()) cursor = 0;
        }
        slot = (slot + kBurst) % kRing;
    };

    ParsedPacket parsed[kBurst];
    LookupKey keys[kBurst];
    LookupResult results[kBurst];
    uint64_t hashes[kBurst];
    uint64_t sink = 0;
    ConnTable conns(cc, kTicksPerSecond);
    const auto parse = [&] {
        for (size_t i = 0; i < kBurst; ++i) sink += static_cast<uint64_t>(parse_packet({pkts[i].data, pkts[i].len}, parsed[i]));
    };
    const auto grant = [&] {
        for (size_t i = 0; i < kBurst; ++i) {
            const FlowTuple& f = parsed[i].flow;
            VipKey key;
            key.address = f.dst;
            key.family = f.version;
            key.protocol = f.proto;
            key.port = f.dst_port;
            const Service* svc = snap.find(key);
            keys[i] = LookupKey::from_flow(f, svc ? svc->id : 0);
        }
        writer->reader().lookup_bulk({keys, kBurst}, kNow, {results, kBurst});
        for (size_t i = 0; i < kBurst; ++i) sink += static_cast<uint64_t>(results[i].kind);
    };
    const auto conn = [&] {
        for (size_t i = 0; i < kBurst; ++i) {
            hashes[i] = flow_hash(parsed[i].flow, 0);
            ConnTable::Entry* e = conns.find(parsed[i].flow, hashes[i], kNow);
            if (e == nullptr) e = conns.insert(parsed[i].flow, hashes[i], kNow);
            sink += e != nullptr;
        }
    };
    const Service* web = snap.by_id(kService);
    const auto maglev = [&] {
        for (size_t i = 0; i < kBurst; ++i) sink += maglev_lookup(web->maglev, hashes[i]);
    };
    const auto full = [&] { pipeline.process_burst({pkts, kBurst}, snap, kNow, {actions, kBurst}); };

    // Warm up: every flow into both connection tables.
    for (uint64_t i = 0; i < a.flows / kBurst + 2; ++i) {
        restore();
        full();
        restore();
        parse();
        conn();
    }
    const uint64_t bursts = a.bursts ? a.bursts : std::max<uint64_t>(200'000, 4 * a.flows / kBurst);
    const auto measure = [&](auto&& body) {
        double best = 1e300;
        for (int rep = 0; rep < 5; ++rep) {
            const uint64_t t0 = __rdtsc();
            for (uint64_t b = 0; b < bursts; ++b) body();
            const uint64_t t1 = __rdtsc();
            best = std::min(best, static_cast<double>(t1 - t0) / static_cast<double>(bursts * kBurst));
        }
        return best;
    };
    if (a.pipeline_only) {
        const double c = measure([&] { restore(); full(); });
        std::printf("bench_pipeline: restore + pipeline %.1f TSC cycles per packet\n", c);
        return 0;
    }
    const double c_restore = measure([&] { restore(); });
    const double c_parse = measure([&] { restore(); parse(); });
    const double c_grant = measure([&] { restore(); parse(); grant(); });
    const double c_conn = measure([&] { restore(); parse(); grant(); conn(); });
    const double c_maglev = measure([&] { restore(); parse(); grant(); conn(); maglev(); });
    const double c_full = measure([&] { restore(); full(); });
    const uint64_t forwarded = counters.get(Counter::forwarded);

    struct Row {
        const char* stage;
        double cycles;
    };
    const Row rows[] = {{"parse", c_parse - c_restore},
                        {"service + grant lookup", c_grant - c_parse},
                        {"connection table (hash, find)", c_conn - c_grant},
                        {"maglev (new flows only)", c_maglev - c_conn},
                        {"rest: verdicts, IP-in-IP, counters", c_full - c_conn},
                        {"pipeline total", c_full - c_restore}};
    std::printf("bench_pipeline: %llu grants, %llu flows, 64-byte IPv4/TCP, IP-in-IP, bursts of %zu; TSC cycles per packet\n",
                static_cast<unsigned long long>(a.grants), static_cast<unsigned long long>(a.flows), kBurst);
    std::printf("  %-36s %8.1f   (not jitlb's: the benchmark's copy of the frame)\n", "restore", c_restore);
    for (const Row& r : rows) std::printf("  %-36s %8.1f\n", r.stage, r.cycles);
    std::printf("  (forwarded %llu; sink %llu)\n", static_cast<unsigned long long>(forwarded),
                static_cast<unsigned long long>(sink & 1));
    if (forwarded == 0) {
        std::fprintf(stderr, "bench_pipeline: nothing was forwarded: the set-up is wrong\n");
        return 1;
    }
    if (!a.json.empty()) {
        std::ofstream out(a.json);
        out << "{\"grants\": " << a.grants << ", \"flows\": " << a.flows << ", \"cycles_per_packet\": {";
        out << "\"restore\": " << c_restore;
        for (const Row& r : rows) out << ", \"" << r.stage << "\": " << r.cycles;
        out << "}}\n";
    }
    std::free(memory);
    return 0;
}
