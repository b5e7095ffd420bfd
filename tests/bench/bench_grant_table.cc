// bench_grant_table: lookups per second on one core for the data plane's grant
// table, single and in bursts of 32, with 1k grants (cache-resident) and 1M
// grants (DRAM), hits and a miss mix; the cost of applying grants; and the
// restart cost (reopen: one MAC verification per entry). The table lives in
// hugepage memory when it can: a file on /dev/hugepages (as the state file),
// else MAP_HUGETLB, else normal pages; the line "memory:" says which.
// Prints one line per figure and, with --json PATH, writes them as a flat JSON
// object like bench_common. Not a test: nothing here fails.
//
//   bench_grant_table [--json PATH] [--quick]
#include <fcntl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "bench_report.h"

#include "grant_table.h"

using namespace jitlb;

namespace {

using namespace jitlb::bench;

constexpr size_t kHugePage = size_t{2} << 20;

// Memory for the table: hugetlbfs file, then MAP_HUGETLB, then normal pages.
class TableMemory {
  public:
    explicit TableMemory(size_t bytes) : size_((bytes + kHugePage - 1) / kHugePage * kHugePage) {
        const std::string path = fmt::format("/dev/hugepages/bench-grant-table-{}", getpid());
        const int fd = open(path.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
        if (fd >= 0) {
            unlink(path.c_str());  // gone when unmapped
            if (ftruncate(fd, static_cast<off_t>(size_)) == 0) {
                void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
                if (p != MAP_FAILED) {
                    data_ = static_cast<std::byte*>(p);
                    kind_ = "hugetlbfs file on /dev/hugepages (2 MiB pages)";
                }
            }
            close(fd);
        }
        if (data_ == nullptr) {
            void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
            if (p != MAP_FAILED) {
                data_ = static_cast<std::byte*>(p);
                kind_ = "MAP_ANONYMOUS | MAP_HUGETLB (2 MiB pages)";
            }
        }
        if (data_ == nullptr) {
            void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
            if (p == MAP_FAILED) {
                std::fprintf(stderr, "bench_grant_table: cannot map %zu bytes: %s\n", size_,
                             std::strerror(errno));
                std::exit(1);
            }
            data_ = static_cast<std::byte*>(p);
            kind_ = "normal 4 KiB pages (no hugepages free: expect TLB misses)";
        }
    }
    ~TableMemory() { munmap(data_, size_); }
    TableMemory(const TableMemory&) = delete;
    TableMemory& operator=(const TableMemory&) = delete;
    std::span<std::byte> span() { return {data_, size_}; }
    const char* kind() const { return kind_; }

  private:
    size_t size_;
    std::byte* data_ = nullptr;
    const char* kind_ = "";
};

GrantEntry make_grant(uint32_t v4_address, uint64_t n) {
    GrantEntry e;
    e.key.service_id = 1;
    e.key.family = IpVersion::v4;
    e.key.prefix_len = 32;
    std::memcpy(e.key.address.data(), &v4_address, 4);
    std::memcpy(e.grant_id.data(), &n, 8);
    e.grant_id[15] = 0x99;
    e.issuer_key_id.fill(7);
    e.not_before_ms = 0;
    e.not_after_ms = 4'000'000'000'000;
    e.record_hash.fill(static_cast<uint8_t>(n));
    return e;
}

LookupKey lookup_key(uint32_t v4_address) {
    LookupKey k;
    std::memcpy(k.address.data(), &v4_address, 4);
    k.service_id = 1;
    k.family = IpVersion::v4;
    return k;
}

struct Case {
    uint64_t grants;
    const char* name;
};

void bench_size(Report& report, uint64_t grants, const char* name, uint32_t slots_per_grant,
                bool quick) {
    GrantTableConfig config;
    config.capacity = grants;
    config.slots_per_grant = slots_per_grant;
    config.ticks_per_second = 1000;
    const size_t bytes = GrantTable::bytes_needed(config);
    TableMemory memory(bytes);
    std::printf("-- %llu grants, %u slots per grant: %.1f MiB, memory: %s\n",
                static_cast<unsigned long long>(grants), slots_per_grant,
                static_cast<double>(bytes) / (1 << 20), memory.kind());
    GrantTableMacKey mac_key{};
    mac_key.fill(0x5a);
    GrantTableError error;
    auto writer = GrantTableWriter::create(memory.span(), config, mac_key, error);
    if (!writer) {
        std::fprintf(stderr, "bench_grant_table: %s\n", error.message.c_str());
        std::exit(1);
    }

    // Distinct random IPv4 sources.
    std::mt19937_64 rng(grants);
    std::vector<uint32_t> inserted;
    inserted.reserve(grants);
    const Clock::time_point start = Clock::now();
    for (uint64_t n = 0; inserted.size() < grants; ++n) {
        const uint32_t a = static_cast<uint32_t>(rng());
        if (writer->upsert(make_grant(a, n), 1) == UpsertResult::inserted) inserted.push_back(a);
    }
    const double insert_s = seconds_since(start);
    report.add(fmt::format("upsert_per_s_{}", name), static_cast<double>(grants) / insert_s,
               fmt::format("{:.0f} k upserts/s ({:.2f} us each, MAC included)",
                           static_cast<double>(grants) / insert_s / 1e3, 1e6 * insert_s / static_cast<double>(grants)));

    GrantTableReader reader = writer->reader();
    const PrefetchSchedule chosen = reader.prefetch_schedule();  // this CPU's (automatic)
    const ProbeStats probes = reader.probe_stats();
    report.add(fmt::format("mean_probe_{}", name), probes.mean_probe,
               fmt::format("{:.3f} slots per hit (max {}), load {:.2f}", probes.mean_probe,
                           probes.max_probe, static_cast<double>(grants) / static_cast<double>(reader.slot_count())));

    // Keys drawn at random from the inserted set, and a mix with misses.
    const size_t n_keys = quick ? (1 << 18) : (1 << 21);
    std::vector<LookupKey> hits(n_keys), mixed(n_keys);
    for (size_t i = 0; i < n_keys; ++i) {
        hits[i] = lookup_key(inserted[rng() % inserted.size()]);
        mixed[i] = rng() % 2 == 0 ? lookup_key(inserted[rng() % inserted.size()])
                                  : lookup_key(static_cast<uint32_t>(rng()) | 0x80);  // mostly absent
    }
    const int runs = quick ? 3 : 5;
    const uint64_t now = 1000;
    double baseline_lines_per_s = 0;

    // The memory's own rate, for scale: one random cache line per key over the
    // whole table memory, in bursts of 32 prefetched first and then read, as a
    // lookup that costs exactly one line and no computation would. Measured in
    // the same run, so the lookup rate can be given as a fraction of it on a
    // machine whose absolute rates vary from run to run.
    {
        const std::span<std::byte> mem = memory.span();
        const size_t lines = mem.size() / 64;
        std::vector<uint32_t> line_of(n_keys);
        for (uint32_t& l : line_of) l = static_cast<uint32_t>(rng() % lines);
        const auto* base = reinterpret_cast<const volatile uint64_t*>(mem.data());
        const double line_s = median_seconds(runs, [&] {
            uint64_t sum = 0;
            for (size_t i = 0; i + kGrantTableMaxBurst <= n_keys; i += kGrantTableMaxBurst) {
                for (size_t j = 0; j < kGrantTableMaxBurst; ++j)
                    __builtin_prefetch(mem.data() + size_t{line_of[i + j]} * 64, 0, 3);
                for (size_t j = 0; j < kGrantTableMaxBurst; ++j) sum += base[size_t{line_of[i + j]} * 8];
            }
            g_sink = sum;
        });
        const double n = static_cast<double>(n_keys);
        report.add(fmt::format("random_lines_per_s_{}_bulk32", name), n / line_s,
                   fmt::format("{:.1f} M/s ({:.1f} ns each; the memory's rate for scale)", n / line_s / 1e6,
                               1e9 * line_s / n));
        baseline_lines_per_s = n / line_s;
    }
    for (int mix = 0; mix < 2; ++mix) {
        const std::vector<LookupKey>& keys = mix == 0 ? hits : mixed;
        const char* what = mix == 0 ? "hit" : "miss50";
        const double single_s = median_seconds(runs, [&] {
            uint64_t granted = 0;
            for (const LookupKey& k : keys) granted += reader.lookup(k, now).kind == LookupKind::granted;
            g_sink = granted;
        });
        uint64_t granted_bulk = 0;
        const auto bulk_seconds = [&] {
            return median_seconds(runs, [&] {
                LookupResult out[kGrantTableMaxBurst];
                uint64_t granted = 0;
                for (size_t i = 0; i + kGrantTableMaxBurst <= keys.size(); i += kGrantTableMaxBurst) {
                    reader.lookup_bulk(std::span(keys).subspan(i, kGrantTableMaxBurst), now, out);
                    for (const LookupResult& r : out) granted += r.kind == LookupKind::granted;
                }
                g_sink = granted;
                granted_bulk = granted;
            });
        };
        const double n = static_cast<double>(keys.size());
        // Both prefetch schedules, alternating (the first runs over a table
        // measure slower whatever the schedule), best of three each; then the
        // one this CPU uses (`chosen`) once more, for the headline and its count.
        const std::array<PrefetchSchedule, 2> schedules{PrefetchSchedule::per_key, PrefetchSchedule::after_hashing};
        std::array<double, 2> best{1e30, 1e30};
        for (int round = 0; round < 3; ++round)
            for (size_t k = 0; k < schedules.size(); ++k) {
                reader.set_prefetch_schedule(schedules[k]);
                best[k] = std::min(best[k], bulk_seconds());
            }
        for (size_t k = 0; k < schedules.size(); ++k)
            report.add(fmt::format("lookups_per_s_{}_{}_bulk32_prefetch_{}", name, what,
                                   prefetch_schedule_name(schedules[k])),
                       n / best[k],
                       fmt::format("{:.1f} M/s, best of 3{}", n / best[k] / 1e6,
                                   schedules[k] == chosen ? " (this CPU's schedule)" : ""));
        reader.set_prefetch_schedule(chosen);
        const double bulk_s = bulk_seconds();
        report.add(fmt::format("lookups_per_s_{}_{}_single", name, what), n / single_s,
                   fmt::format("{:.1f} M/s ({:.1f} ns each)", n / single_s / 1e6, 1e9 * single_s / n));
        report.add(fmt::format("lookups_per_s_{}_{}_bulk32", name, what), n / bulk_s,
                   fmt::format("{:.1f} M/s ({:.1f} ns each; {:.0f}% granted)", n / bulk_s / 1e6,
                               1e9 * bulk_s / n, 100.0 * static_cast<double>(granted_bulk) / n));
        report.add(fmt::format("lookups_vs_random_lines_{}_{}_bulk32", name, what),
                   n / bulk_s / baseline_lines_per_s,
                   fmt::format("{:.2f} of the memory's random-line rate", n / bulk_s / baseline_lines_per_s));
    }

    // Restart: every entry's MAC verified, deadlines recomputed, indexes rebuilt.
    writer.reset();
    ReopenReport reopen_report;
    // As jitlb does before its workers start: the MAC checks on every core.
    ReopenOptions reopen_options;
    reopen_options.parts = std::max(1u, std::thread::hardware_concurrency());
    reopen_options.run_parts = run_parts_on_threads;
    const Clock::time_point reopen_start = Clock::now();
    auto reopened = GrantTableWriter::reopen(memory.span(), mac_key, error, &reopen_report, reopen_options);
    const double reopen_s = seconds_since(reopen_start);
    if (!reopened || reopen_report.entries_kept != grants) {
        std::fprintf(stderr, "bench_grant_table: reopen kept %llu of %llu: %s\n",
                     static_cast<unsigned long long>(reopen_report.entries_kept),
                     static_cast<unsigned long long>(grants), error.message.c_str());
        std::exit(1);
    }
    report.add(fmt::format("reopen_s_{}", name), reopen_s,
               fmt::format("{:.3f} s for {} entries ({:.2f} us per entry, MAC included; MACs in {} parts)",
                           reopen_s, grants, 1e6 * reopen_s / static_cast<double>(grants),
                           reopen_options.parts));
}

void usage(std::FILE* out) {
    std::fprintf(out,
                 "usage: bench_grant_table [--json PATH] [--quick] [--grants N [--slots-per-grant S]]\n"
                 "  Times grant-table lookups (single and bursts of 32) with 1k and 1M grants,\n"
                 "  upserts, and reopen (MAC verification of every entry).\n"
                 "  --json PATH  also write the figures as a JSON object to PATH\n"
                 "  --quick      fewer keys and runs (a smoke test)\n"
                 "  --grants N   only one table, of N grants (for profiling)\n"
                 "  --slots-per-grant S  its layout: 2, 4 (default) or 8\n");
}

}  // namespace

int main(int argc, char** argv) {
    const char* json_path = nullptr;
    bool quick = false;
    uint64_t only = 0;
    uint32_t slots_per_grant = kGrantTableDefaultSlotsPerGrant;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--json" && i + 1 < argc) {
            json_path = argv[++i];
        } else if (arg == "--quick") {
            quick = true;
        } else if (arg == "--grants" && i + 1 < argc) {
            only = std::strtoull(argv[++i], nullptr, 10);
        } else if (arg == "--slots-per-grant" && i + 1 < argc) {
            slots_per_grant = static_cast<uint32_t>(std::strtoul(argv[++i], nullptr, 10));
        } else if (arg == "--help" || arg == "-h") {
            usage(stdout);
            return 0;
        } else {
            std::fprintf(stderr, "bench_grant_table: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    Report report("bench_grant_table");
    if (only != 0) {
        bench_size(report, only, fmt::format("{}", only).c_str(), slots_per_grant, quick);
    } else {
        // The default layout (4 slots per grant, load <= 1/4), then the
        // denser one (2 slots per grant) for comparison.
        bench_size(report, 1024, "1k", kGrantTableDefaultSlotsPerGrant, quick);
        bench_size(report, 1'048'576, "1m", kGrantTableDefaultSlotsPerGrant, quick);
        bench_size(report, 1'048'576, "1m_2slots", 2, quick);
    }
    if (json_path != nullptr && !report.write_json(json_path)) return 1;
    return 0;
}
