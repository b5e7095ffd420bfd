// Grant table torture test: one writer inserts, replaces, revokes and expires
// grants while two readers look them up, for JITLB_TORTURE_SECONDS (default
// 5). Every value the writer stores is derived from its key and a per-write
// counter, so a reader can check that each entry it sees is self-consistent:
// a torn read (payload words from two different writes, or a key from one
// entry and deadlines from another) fails the check. Run under
// ThreadSanitizer by scripts/test, which also catches any non-atomic access
// to the shared words.
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "env_seconds.h"
#include "flow_hash.h"
#include "grant_table.h"

using namespace jitlb;

namespace {

// A torn read needs a reader running while the writer is between two stores.
// Left alone, the scheduler may time-slice all three threads on one core while
// something else keeps the other busy, and then no reader ever sees one. So,
// when there are two CPUs, one reader shares the writer's CPU (it runs when
// the writer is preempted, possibly mid-write) and one has the other CPU (it
// runs alongside the writer).
std::vector<int> allowed_cpus() {
    cpu_set_t set;
    std::vector<int> cpus;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        for (int c = 0; c < CPU_SETSIZE; ++c)
            if (CPU_ISSET(c, &set)) cpus.push_back(c);
    return cpus;
}

void pin(pthread_t thread, int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(thread, sizeof set, &set);
}

double torture_seconds() {
    return std::max(0.1, env_seconds("JITLB_TORTURE_SECONDS", 5.0));
}

// The keys: 3 services x (IPv4 /32, IPv4 /24, IPv6 /128, IPv6 /64) x 16
// addresses from small pools, so that prefixes cover one another and lookups
// fall through; except that service 3 has exact addresses only (its /24 and
// /64 become more /32 and /128), so that bursts also take their path for
// services with one length in use. The table is small (512 slots) on purpose:
// readers sweep all of it, so they keep reading the very lines being written,
// which a torn read needs (on x86 the window between two stores is a few cycles).
constexpr size_t kKeys = 192;

GrantKey universe_key(size_t i) {
    GrantKey k;
    k.service_id = static_cast<uint16_t>(1 + i % 3);
    const size_t n = i / 3 % 64;
    const uint8_t m = static_cast<uint8_t>(n / 4);  // 0..15
    if (k.service_id == 3 && n % 2 == 1) {
        k.family = n % 4 == 1 ? IpVersion::v4 : IpVersion::v6;
        k.prefix_len = n % 4 == 1 ? 32 : 128;
        k.address = {10, static_cast<uint8_t>(m % 4), 1, static_cast<uint8_t>(m / 4)};
        if (k.family == IpVersion::v6)
            k.address = {0x20, 0x01, 0x0d, 0xb8, 1, static_cast<uint8_t>(m)};
        return k;
    }
    switch (n % 4) {
        case 0:
            k.family = IpVersion::v4;
            k.prefix_len = 32;
            k.address = {10, static_cast<uint8_t>(m % 4), 0, static_cast<uint8_t>(m / 4)};
            break;
        case 1:
            k.family = IpVersion::v4;
            k.prefix_len = 24;
            k.address = {10, static_cast<uint8_t>(m % 4), static_cast<uint8_t>(m / 4 % 2), 0};
            break;
        case 2:
            k.family = IpVersion::v6;
            k.prefix_len = 128;
            k.address = {0x20, 0x01, 0x0d, 0xb8, 0, static_cast<uint8_t>(m % 4)};
            k.address[15] = static_cast<uint8_t>(m / 4);
            break;
        default:
            k.family = IpVersion::v6;
            k.prefix_len = 64;
            k.address = {0x20, 0x01, 0x0d, 0xb8, 0, static_cast<uint8_t>(m % 4), 0,
                         static_cast<uint8_t>(m / 4 % 2)};
            break;
    }
    return k;
}

// What the writer derives from a key: a tag, and the grant's length in ms.
uint64_t key_tag(const GrantKey& k) {
    uint8_t bytes[20];
    std::memcpy(bytes, k.address.data(), 16);
    bytes[16] = static_cast<uint8_t>(k.service_id);
    bytes[17] = static_cast<uint8_t>(k.service_id >> 8);
    bytes[18] = static_cast<uint8_t>(k.family);
    bytes[19] = k.prefix_len;
    return hash_bytes(bytes, 0x7a6) & 0xffff;
}
// Short (the clock is the writer's operation count), so that revoked ids are
// pruned soon and the revoked set never fills.
int64_t span_ms(uint64_t tag) { return 100 + static_cast<int64_t>(tag % 256); }

// A write with counter c: not_before = c, not_after = c + span(key); the id
// holds c and the key's tag, the record hash the id.
GrantEntry make_grant(const GrantKey& k, uint64_t c) {
    GrantEntry e;
    e.key = k;
    const uint64_t tag = key_tag(k);
    std::memcpy(e.grant_id.data(), &c, 8);
    std::memcpy(e.grant_id.data() + 8, &tag, 8);
    e.issuer_key_id.fill(static_cast<uint8_t>(tag));
    e.not_before_ms = static_cast<int64_t>(c);
    e.not_after_ms = static_cast<int64_t>(c) + span_ms(tag);
    for (size_t i = 0; i < 32; ++i) e.record_hash[i] = static_cast<uint8_t>(c * 13 + tag + i);
    return e;
}

GrantKey masked(IpVersion family, uint16_t service, const std::array<uint8_t, 16>& address,
                unsigned prefix_len) {
    GrantKey k{service, family, static_cast<uint8_t>(prefix_len), address};
    for (unsigned b = prefix_len; b < 128; ++b)
        k.address[b / 8] &= static_cast<uint8_t>(~(0x80 >> (b % 8)));
    return k;
}

struct ReaderStats {
    uint64_t lookups = 0;
    uint64_t entries_checked = 0;
    uint64_t details_checked = 0;
    uint64_t busy = 0;
    uint64_t failures = 0;
    std::string first_failure;
};

struct Shared {
    GrantTableReader reader;
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> writer_clock{0};
    // The key the writer is about to write (harness only, not the table):
    // readers chase it, so that their loads overlap the writer's stores.
    std::atomic<size_t> writing_key{0};
};

void fail(ReaderStats& s, const std::string& what) {
    if (s.failures++ == 0) s.first_failure = what;
}

// A slot's or a lookup's hot values must satisfy not_after - not_before == span(key).
void check_hot(ReaderStats& s, const GrantKey& k, uint64_t nb, uint64_t na, const char* where) {
    ++s.entries_checked;
    const uint64_t tag = key_tag(k);
    if (na - nb != static_cast<uint64_t>(span_ms(tag)))
        fail(s, std::string(where) + ": torn entry: not_after - not_before = " +
                    std::to_string(na - nb) + ", expected " + std::to_string(span_ms(tag)));
}

void check_details(ReaderStats& s, const GrantTableReader& r, const GrantKey& k,
                   const LookupResult& res) {
    GrantDetails d;
    if (r.read_details(res.entry, d) != SnapshotStatus::ok || d.generation != res.generation)
        return;  // the entry changed since the lookup: nothing to compare
    ++s.details_checked;
    const GrantEntry expected = make_grant(k, static_cast<uint64_t>(d.not_before_ms));
    if (d.grant_id != expected.grant_id || d.not_after_ms != expected.not_after_ms ||
        d.record_hash != expected.record_hash || d.issuer_key_id != expected.issuer_key_id ||
        static_cast<uint64_t>(d.not_before_ms) != res.not_before_tick ||
        static_cast<uint64_t>(d.not_after_ms) != res.not_after_tick)
        fail(s, "details: torn or mismatched detail for generation " + std::to_string(d.generation));
}

void check_result(ReaderStats& s, const GrantTableReader& r, const LookupKey& key,
                  const LookupResult& res, bool details) {
    ++s.lookups;
    if (res.kind == LookupKind::busy) {
        ++s.busy;
        return;
    }
    if (res.kind == LookupKind::no_grant) return;
    const GrantKey k = masked(key.family, key.service_id, key.address, res.prefix_len);
    check_hot(s, k, res.not_before_tick, res.not_after_tick, "lookup");
    if (details) check_details(s, r, k, res);
}

void reader_loop(Shared& shared, ReaderStats& s, uint64_t seed) {
    std::mt19937_64 rng(seed);
    const GrantTableReader& r = shared.reader;
    std::vector<LookupKey> burst(kGrantTableMaxBurst);
    std::vector<LookupResult> out(kGrantTableMaxBurst);
    const auto random_source = [&] {
        const GrantKey k = universe_key(rng() % kKeys);
        LookupKey lk{k.address, k.service_id, k.family, 0};
        // Host bits: sometimes the exact address, sometimes another in the prefix.
        if (rng() % 2 == 0) lk.address[k.family == IpVersion::v4 ? 3 : 15] = static_cast<uint8_t>(rng() % 64);
        return lk;
    };
    while (!shared.stop.load(std::memory_order_relaxed)) {
        const uint64_t now = shared.writer_clock.load(std::memory_order_relaxed) + rng() % 512 - 256;
        switch (rng() % 5) {
            case 4: {  // chase the key being written
                for (int i = 0; i < 256; ++i) {
                    const GrantKey g = universe_key(shared.writing_key.load(std::memory_order_relaxed));
                    const LookupKey k{g.address, g.service_id, g.family, 0};
                    check_result(s, r, k, r.lookup(k, now), true);
                }
                break;
            }
            case 0: {  // single lookups, with details
                for (int i = 0; i < 64; ++i) {
                    const LookupKey k = random_source();
                    check_result(s, r, k, r.lookup(k, now), true);
                }
                break;
            }
            case 1: {  // a burst
                for (LookupKey& k : burst) k = random_source();
                r.lookup_bulk(burst, now, out);
                for (size_t i = 0; i < burst.size(); ++i) check_result(s, r, burst[i], out[i], i % 8 == 0);
                break;
            }
            default: {  // a sweep of the raw slots, as jitctl lists them (key included)
                for (uint64_t slot = 0; slot < r.slot_count(); ++slot) {
                    SlotSnapshot snap;
                    const SnapshotStatus st = r.read_slot(slot, snap);
                    if (st == SnapshotStatus::busy) ++s.busy;
                    if (st == SnapshotStatus::ok)
                        check_hot(s, snap.key, snap.not_before_tick, snap.not_after_tick, "slot");
                }
                break;
            }
        }
    }
}

struct WriterStats {
    uint64_t writes = 0, inserted = 0, replaced = 0, revoked = 0, expired = 0, refused = 0;
};

void writer_loop(GrantTableWriter& w, Shared& shared, WriterStats& s, double seconds) {
    std::mt19937_64 rng(99);
    std::vector<uint64_t> current(kKeys, 0);  // counter of the key's live grant, 0: none
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    uint64_t c = 1;
    while (std::chrono::steady_clock::now() < deadline) {
        for (int batch = 0; batch < 256; ++batch, ++c) {
            const int64_t now = static_cast<int64_t>(c);
            const size_t i = rng() % kKeys;
            shared.writing_key.store(i, std::memory_order_relaxed);
            const unsigned action = static_cast<unsigned>(rng() % 10);
            if (action < 6) {  // insert or replace (ends later: c grows)
                const UpsertResult r = w.upsert(make_grant(universe_key(i), c), now);
                if (r == UpsertResult::inserted) ++s.inserted;
                else if (r == UpsertResult::replaced) ++s.replaced;
                else ++s.refused;
                if (upsert_succeeded(r)) current[i] = c;
            } else if (action < 8) {  // revoke the key's grant
                if (current[i] != 0) {
                    const GrantEntry g = make_grant(universe_key(i), current[i]);
                    if (w.revoke(g.grant_id, g.not_after_ms).entry_removed) ++s.revoked;
                    current[i] = 0;
                }
            } else {
                s.expired += w.expire(now, 32).grants_removed;
            }
            ++s.writes;
        }
        shared.writer_clock.store(c, std::memory_order_relaxed);
    }
}

}  // namespace

TEST_CASE("grant table torture: readers never see a torn entry while one writer churns") {
    const double seconds = torture_seconds();
    GrantTableConfig config;
    config.capacity = 256;
    config.slots_per_grant = 2;  // 512 slots: dense, so deletions move entries often
    config.max_service_id = 8;
    config.ticks_per_second = 1000;
    config.hash_seed = 0x70;
    const size_t bytes = GrantTable::bytes_needed(config);
    std::byte* memory = static_cast<std::byte*>(std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096));
    REQUIRE(memory != nullptr);
    std::unique_ptr<std::byte, decltype(&std::free)> owner(memory, &std::free);
    GrantTableMacKey mac_key{};
    mac_key[0] = 1;
    GrantTableError error;
    auto writer = GrantTableWriter::create({memory, bytes}, config, mac_key, error);
    REQUIRE(writer);

    Shared shared{writer->reader()};
    ReaderStats readers[2];
    WriterStats ws;
    std::thread r1(reader_loop, std::ref(shared), std::ref(readers[0]), 1);
    std::thread r2(reader_loop, std::ref(shared), std::ref(readers[1]), 2);
    const std::vector<int> cpus = allowed_cpus();
    cpu_set_t saved;
    const bool pinned = cpus.size() >= 2 && sched_getaffinity(0, sizeof saved, &saved) == 0;
    if (pinned) {
        pin(pthread_self(), cpus[0]);
        pin(r1.native_handle(), cpus[1]);
        pin(r2.native_handle(), cpus[0]);
    }
    writer_loop(*writer, shared, ws, seconds);
    if (pinned) sched_setaffinity(0, sizeof saved, &saved);
    shared.stop.store(true);
    r1.join();
    r2.join();

    const GrantTableStats st = writer->reader().stats();
    INFO("writer: " << ws.writes << " writes, " << ws.inserted << " inserted, " << ws.replaced
                    << " replaced, " << ws.revoked << " revoked, " << ws.expired << " expired, "
                    << ws.refused << " refused; live " << st.live_grants << ", revoked ids "
                    << st.revoked_ids);
    for (const ReaderStats& s : readers) {
        INFO("reader: " << s.lookups << " lookups, " << s.entries_checked << " entries and "
                        << s.details_checked << " details checked, " << s.busy << " busy, "
                        << s.failures << " failures; first: " << s.first_failure);
        CHECK(s.failures == 0);
        CHECK(s.entries_checked > 1000);
        CHECK(s.details_checked > 100);
    }
    CHECK(ws.inserted > 1000);
    CHECK(ws.replaced > 1000);
    CHECK(ws.revoked > 1000);
    CHECK(ws.expired > 100);
    // The table is still consistent afterwards: every live entry reachable.
    CHECK(writer->reader().probe_stats().entries == st.live_grants);
}
