// bench_common: micro-benchmarks of common/, the code that jitlb's workers run
// per packet (flow_hash, maglev_lookup) and the control plane's table build.
// Prints one line per figure and, with --json PATH, writes the same figures as
// a flat JSON object for scripts and docs/bench. Not a test: nothing here fails.
//
//   bench_common [--json PATH]
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "bench_report.h"

#include "flow.h"
#include "flow_hash.h"
#include "maglev.h"
#include "packet.h"
#include "packet_builder.h"

using namespace jitlb;

namespace {

using namespace jitlb::bench;

std::vector<std::string> backend_ids(size_t n) {
    std::vector<std::string> ids;
    for (size_t i = 0; i < n; ++i)
        ids.push_back(fmt::format("10.{}.{}.{}:8080", 1 + i / 65536, i / 256 % 256, i % 256));
    return ids;
}

std::vector<MaglevBackend> as_backends(const std::vector<std::string>& ids) {
    std::vector<MaglevBackend> backends;
    for (const std::string& id : ids) backends.push_back({id, 1});
    return backends;
}

void bench_maglev_build(Report& report) {
    struct Case {
        size_t m, n;
        int runs;
        double paper_ms;  // NSDI 2016, section 5.3
    };
    for (const Case& c : {Case{65537, 100, 21, 1.8}, Case{655373, 1000, 9, 22.9}}) {
        const std::vector<std::string> ids = backend_ids(c.n);
        const std::vector<MaglevBackend> backends = as_backends(ids);
        std::vector<uint32_t> table(c.m);
        MaglevError error = MaglevError::ok;
        const double ms =
            1e3 * median_seconds(c.runs, [&] { error = maglev_build(backends, table); });
        if (error != MaglevError::ok) {
            std::fprintf(stderr, "bench_common: %s\n",
                         maglev_error_message(error, backends, c.m).c_str());
            continue;
        }
        report.add(fmt::format("maglev_build_ms_m{}_n{}", c.m, c.n), ms,
                   fmt::format("{:.3f} ms (median of {}; paper: {} ms)", ms, c.runs, c.paper_ms));
    }
}

void bench_maglev_lookup(Report& report) {
    const size_t m = 65537;
    const std::vector<std::string> ids = backend_ids(100);
    std::vector<uint32_t> table(m);
    maglev_build(as_backends(ids), table);

    // Precomputed hashes: this measures the lookup alone, not the hash.
    std::mt19937_64 rng(1);
    std::vector<uint64_t> hashes(1 << 20);
    for (uint64_t& h : hashes) h = rng();
    const int passes = 16;
    const double s = median_seconds(5, [&] {
        uint64_t sum = 0;
        for (int pass = 0; pass < passes; ++pass) {
            for (const uint64_t h : hashes) sum += maglev_lookup(table, h);
        }
        g_sink = sum;
    });
    const double lookups = static_cast<double>(hashes.size()) * passes;
    report.add("maglev_lookups_per_s_m65537", lookups / s,
               fmt::format("{:.1f} M lookups/s ({:.2f} ns each, random hashes, table {})",
                           lookups / s / 1e6, 1e9 * s / lookups, m));
}

std::vector<FlowTuple> random_tuples(IpVersion version, size_t count) {
    std::mt19937_64 rng(2);
    std::vector<FlowTuple> tuples(count);
    for (FlowTuple& t : tuples) {
        const size_t address_size = version == IpVersion::v4 ? 4 : 16;
        for (size_t i = 0; i < address_size; ++i) {
            t.src[i] = static_cast<uint8_t>(rng());
            t.dst[i] = static_cast<uint8_t>(rng());
        }
        t.src_port = static_cast<uint16_t>(rng());
        t.dst_port = 443;
        t.proto = 6;
        t.version = version;
    }
    return tuples;
}

void bench_flow_hash(Report& report) {
    const int passes = 4096;
    for (const IpVersion version : {IpVersion::v4, IpVersion::v6}) {
        const std::string_view name = version == IpVersion::v4 ? "ipv4" : "ipv6";
        // 4096 tuples (160 KiB) stay in the L2 cache: this is the hash, not memory.
        const std::vector<FlowTuple> tuples = random_tuples(version, 4096);
        const double hashes = static_cast<double>(tuples.size()) * passes;

        // Throughput: independent hashes overlap in the pipeline, as they do
        // across a burst of packets.
        const double s = median_seconds(5, [&] {
            uint64_t x = 0;
            for (int pass = 0; pass < passes; ++pass) {
                for (const FlowTuple& t : tuples) x ^= flow_hash(t, 0x5eed);
            }
            g_sink = x;
        });
        report.add(fmt::format("flow_hash_ns_{}", name), 1e9 * s / hashes,
                   fmt::format("{:.2f} ns per tuple (throughput)", 1e9 * s / hashes));

        // Latency: each hash seeds the next, so none can start early.
        const double latency_s = median_seconds(5, [&] {
            uint64_t h = 0;
            for (int pass = 0; pass < passes; ++pass) {
                for (const FlowTuple& t : tuples) h = flow_hash(t, h);
            }
            g_sink = h;
        });
        report.add(fmt::format("flow_hash_latency_ns_{}", name), 1e9 * latency_s / hashes,
                   fmt::format("{:.2f} ns per tuple (latency, one after another)",
                               1e9 * latency_s / hashes));
    }
}

void bench_packet_parse(Report& report) {
    using namespace jitlb::test;
    // The shapes a worker sees most: IPv4 TCP, IPv4 UDP in a VLAN, IPv6 TCP,
    // and IPv6 TCP behind two extension headers.
    const std::vector<Bytes> frames = {
        eth4(ipv4({}, tcp(40000, 443, 0x10, 32))),
        eth4(ipv4({.proto = 17}, udp(5353, 53, 32)), {100}),
        eth6(ipv6({}, tcp(40000, 443, 0x10, 32))),
        eth6(ipv6({.ext = {ext_opts(0), ext_opts(60)}}, tcp(40000, 443, 0x10, 32))),
    };
    const int passes = 1 << 20;
    for (size_t f = 0; f < frames.size(); ++f) {
        static constexpr std::string_view kNames[] = {"ipv4_tcp", "ipv4_vlan_udp", "ipv6_tcp",
                                                      "ipv6_ext_tcp"};
        const double s = median_seconds(5, [&] {
            uint64_t x = 0;
            ParsedPacket p;
            for (int i = 0; i < passes; ++i) {
                x += static_cast<uint64_t>(parse_packet(frames[f], p)) + p.flow.src_port;
            }
            g_sink = x;
        });
        report.add(fmt::format("parse_ns_{}", kNames[f]), 1e9 * s / passes,
                   fmt::format("{:.2f} ns per frame", 1e9 * s / passes));
    }
}

void usage(std::FILE* out) {
    std::fprintf(out,
                 "usage: bench_common [--json PATH]\n"
                 "  Times Maglev table builds and lookups, the flow hash and the packet parser.\n"
                 "  --json PATH  also write the figures as a JSON object to PATH\n");
}

}  // namespace

int main(int argc, char** argv) {
    const char* json_path = nullptr;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--json" && i + 1 < argc) {
            json_path = argv[++i];
        } else if (arg == "--help" || arg == "-h") {
            usage(stdout);
            return 0;
        } else {
            std::fprintf(stderr, "bench_common: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }

    // Each section measures one module and adds its figures to the report. A
    // new module's benchmark (the packet parser, say) is one more function of
    // this shape and one more line in this list.
    using Section = void (*)(Report&);
    const Section sections[] = {
        bench_maglev_build,
        bench_maglev_lookup,
        bench_flow_hash,
        bench_packet_parse,
    };
    Report report("bench_common");
    for (const Section section : sections) section(report);

    if (json_path != nullptr && !report.write_json(json_path)) return 1;
    return 0;
}
