// Grant table: the grant semantics of the design (insert, identical re-push,
// superseded, revocation, expiry, issuer removal), prefix fall-through, full
// table and full revoked set, restart with MAC verification and crash repair,
// churn, bulk lookups agreeing with single ones, and the home slot's hash.
#include <arpa/inet.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <sodium.h>

#include "flow_hash.h"
#include "grant_table.h"

using namespace jitlb;

namespace {

// Memory as the state file gives it: page-aligned, caller-owned.
struct Memory {
    explicit Memory(size_t n) : size((n + 4095) / 4096 * 4096) {
        data = static_cast<std::byte*>(std::aligned_alloc(4096, size));
        std::memset(data, 0xa5, size);  // create must not rely on zeroed memory
    }
    ~Memory() { std::free(data); }
    Memory(const Memory&) = delete;
    Memory& operator=(const Memory&) = delete;
    std::span<std::byte> span() { return {data, size}; }
    std::byte* data;
    size_t size;
};

const GrantTableMacKey kKey = [] {
    GrantTableMacKey k{};
    for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(i * 7 + 1);
    return k;
}();

GrantTableConfig small_config(uint64_t capacity = 256) {
    GrantTableConfig c;
    c.capacity = capacity;
    c.max_service_id = 16;
    c.ticks_per_second = 1000;  // ticks are ms
    c.hash_seed = 0x5eed;
    return c;
}

struct Table {
    explicit Table(GrantTableConfig c = small_config()) : config(c), memory(GrantTable::bytes_needed(c)) {
        GrantTableError error;
        auto w = GrantTableWriter::create(memory.span(), config, kKey, error);
        INFO(error.message);
        REQUIRE(w);
        writer.emplace(std::move(*w));
    }
    GrantTableWriter& w() { return *writer; }
    const GrantTableReader& r() { return writer->reader(); }
    GrantTableConfig config;
    Memory memory;
    std::optional<GrantTableWriter> writer;
};

std::array<uint8_t, 16> address(const char* text) {
    std::array<uint8_t, 16> a{};
    if (std::strchr(text, ':') != nullptr) {
        REQUIRE(inet_pton(AF_INET6, text, a.data()) == 1);
    } else {
        REQUIRE(inet_pton(AF_INET, text, a.data()) == 1);
    }
    return a;
}

GrantKey key(uint16_t service, const char* text, int prefix_len = -1) {
    const bool v6 = std::strchr(text, ':') != nullptr;
    return {service, v6 ? IpVersion::v6 : IpVersion::v4,
            static_cast<uint8_t>(prefix_len >= 0 ? prefix_len : (v6 ? 128 : 32)), address(text)};
}

LookupKey source(uint16_t service, const char* text) {
    const bool v6 = std::strchr(text, ':') != nullptr;
    return {address(text), service, v6 ? IpVersion::v6 : IpVersion::v4, 0};
}

GrantId id_of(uint64_t n) {
    GrantId id{};
    std::memcpy(id.data(), &n, 8);
    id[15] = 0x42;
    return id;
}

GrantEntry grant(const GrantKey& k, uint64_t id, int64_t not_before, int64_t not_after,
                 uint8_t issuer = 1) {
    GrantEntry e;
    e.key = k;
    e.grant_id = id_of(id);
    e.issuer_key_id.fill(issuer);
    e.not_before_ms = not_before;
    e.not_after_ms = not_after;
    e.record_hash.fill(static_cast<uint8_t>(id * 31 + 3));
    std::memcpy(e.record_hash.data(), &id, 8);
    return e;
}

LookupKind kind(Table& t, const LookupKey& k, uint64_t now) { return t.r().lookup(k, now).kind; }

uint64_t* writable(const uint64_t* p) { return const_cast<uint64_t*>(p); }

}  // namespace

TEST_CASE("grant table: the entry MAC is keyed BLAKE2b-256 of the domain and the entry's fields, "
          "as earlier builds wrote it") {
    // Written out independently of compute_mac, so that a faster MAC that
    // changed the result (and so refused every entry of an existing state
    // file at reopen) fails here.
    Table t;
    GrantEntry e = grant(key(3, "2001:db8::7", 64), 77, -5, 1'700'000'000'000);
    std::vector<uint8_t> in;
    const auto put = [&](const void* p, size_t n) {
        const auto* b = static_cast<const uint8_t*>(p);
        in.insert(in.end(), b, b + n);
    };
    put("jitlb-grant-table-entry-v1", 27);  // the NUL included
    const uint8_t k[4] = {3, 0, static_cast<uint8_t>(IpVersion::v6), 64};
    put(k, 4);
    put(e.key.address.data(), 16);
    put(e.grant_id.data(), 16);
    put(e.issuer_key_id.data(), 8);
    put(&e.not_before_ms, 8);  // little-endian on every target jitlb builds for
    put(&e.not_after_ms, 8);
    put(e.record_hash.data(), 32);
    REQUIRE(in.size() == 119);
    EntryMac expected;
    crypto_generichash(expected.data(), expected.size(), in.data(), in.size(), kKey.data(), kKey.size());
    CHECK(t.w().entry_mac(e) == expected);
    // Many entries, each its own MAC under the one key.
    for (uint64_t id = 0; id < 100; ++id) {
        e.grant_id = id_of(id);
        std::memcpy(in.data() + 27 + 20, e.grant_id.data(), 16);
        crypto_generichash(expected.data(), expected.size(), in.data(), in.size(), kKey.data(),
                           kKey.size());
        REQUIRE(t.w().entry_mac(e) == expected);
    }
}

TEST_CASE("grant table: a grant covers its source and service only while it is valid") {
    Table t;
    REQUIRE(t.w().upsert(grant(key(3, "192.0.2.10"), 1, 1000, 2000), 1000) == UpsertResult::inserted);
    const LookupKey src = source(3, "192.0.2.10");
    CHECK(kind(t, src, 999) == LookupKind::not_yet);
    CHECK(kind(t, src, 1000) == LookupKind::granted);
    CHECK(kind(t, src, 1999) == LookupKind::granted);
    CHECK(kind(t, src, 2000) == LookupKind::expired);
    CHECK(kind(t, source(4, "192.0.2.10"), 1500) == LookupKind::no_grant);
    CHECK(kind(t, source(3, "192.0.2.11"), 1500) == LookupKind::no_grant);
    CHECK(kind(t, source(60000, "192.0.2.10"), 1500) == LookupKind::no_grant);

    const LookupResult r = t.r().lookup(src, 1500);
    CHECK(r.prefix_len == 32);
    CHECK(r.not_before_tick == 1000);
    CHECK(r.not_after_tick == 2000);
    GrantDetails d;
    REQUIRE(t.r().read_details(r.entry, d) == SnapshotStatus::ok);
    CHECK(d.grant_id == id_of(1));
    CHECK(d.generation == r.generation);
    CHECK(d.not_before_ms == 1000);
    CHECK(d.not_after_ms == 2000);
    CHECK(d.mac == t.w().entry_mac(grant(key(3, "192.0.2.10"), 1, 1000, 2000)));
    CHECK(t.r().stats().live_grants == 1);
    CHECK(t.w().find_grant(id_of(1)) == r.entry);
}

TEST_CASE("grant table: deadlines are converted to the data plane's ticks, skew applies to not-before") {
    GrantTableConfig c = small_config();
    c.ticks_per_second = 2'600'000'000;  // a 2.6 GHz TSC
    c.skew_ms = 500;
    Table t(c);
    const int64_t now = 1'764'000'000'000;  // 2025, Unix ms
    REQUIRE(t.w().upsert(grant(key(1, "10.0.0.1"), 1, now + 400, now + 60'000), now) ==
            UpsertResult::inserted);
    const LookupResult r = t.r().lookup(source(1, "10.0.0.1"), t.r().ms_to_ticks(now));
    CHECK(r.kind == LookupKind::granted);  // starts 400 ms ahead, within the 500 ms skew
    CHECK(r.not_before_tick == t.r().ms_to_ticks(now + 400 - 500));
    CHECK(r.not_after_tick == t.r().ms_to_ticks(now + 60'000));
    CHECK(r.not_after_tick == static_cast<uint64_t>(now + 60'000) * 2'600'000);
    // Beyond the skew, a grant has not started: refused, jitd pushes it again later.
    CHECK(t.w().upsert(grant(key(1, "10.0.0.2"), 2, now + 501, now + 60'000), now) ==
          UpsertResult::superseded);
}

TEST_CASE("grant table: an identical re-push is unchanged; the same id with another record is refused") {
    Table t;
    const GrantEntry g = grant(key(1, "198.51.100.7"), 7, 0, 10'000);
    REQUIRE(t.w().upsert(g, 100) == UpsertResult::inserted);
    const LookupResult before = t.r().lookup(source(1, "198.51.100.7"), 200);
    CHECK(t.w().upsert(g, 5000) == UpsertResult::unchanged);
    const LookupResult after = t.r().lookup(source(1, "198.51.100.7"), 200);
    CHECK(after.generation == before.generation);
    CHECK(after.entry == before.entry);

    GrantEntry other_record = g;
    other_record.record_hash[0] ^= 1;
    other_record.not_after_ms = 20'000;
    CHECK(t.w().upsert(other_record, 100) == UpsertResult::duplicate_id);
    GrantEntry other_key = g;
    other_key.key = key(1, "198.51.100.8");
    CHECK(t.w().upsert(other_key, 100) == UpsertResult::duplicate_id);
    CHECK(t.r().stats().unchanged == 1);
    CHECK(t.r().stats().live_grants == 1);
}

TEST_CASE("grant table: a new grant replaces the entry only if it has started and ends later") {
    GrantTableConfig c = small_config();
    c.skew_ms = 100;
    Table t(c);
    const GrantKey k = key(2, "2001:db8::1");
    const LookupKey src = source(2, "2001:db8::1");
    REQUIRE(t.w().upsert(grant(k, 1, 0, 10'000), 1000) == UpsertResult::inserted);

    SECTION("ending earlier or at the same time: superseded, the entry stays") {
        CHECK(t.w().upsert(grant(k, 2, 500, 9'000), 1000) == UpsertResult::superseded);
        CHECK(t.w().upsert(grant(k, 3, 500, 10'000), 1000) == UpsertResult::superseded);
        CHECK(t.r().lookup(src, 5000).not_after_tick == 10'000);
        CHECK(t.r().stats().superseded == 2);
    }
    SECTION("not started yet (beyond the skew): superseded, even though it ends later") {
        CHECK(t.w().upsert(grant(k, 2, 1101, 50'000), 1000) == UpsertResult::superseded);
        CHECK(t.r().lookup(src, 5000).not_after_tick == 10'000);
    }
    SECTION("started (within the skew) and ending later: replaced, the old id is gone") {
        CHECK(t.w().upsert(grant(k, 2, 1100, 50'000), 1000) == UpsertResult::replaced);
        const LookupResult r = t.r().lookup(src, 20'000);
        CHECK(r.kind == LookupKind::granted);
        CHECK(r.not_after_tick == 50'000);
        GrantDetails d;
        REQUIRE(t.r().read_details(r.entry, d) == SnapshotStatus::ok);
        CHECK(d.grant_id == id_of(2));
        CHECK_FALSE(t.w().find_grant(id_of(1)));
        CHECK(t.r().stats().live_grants == 1);
        // The old grant's id no longer names an entry: revoking it removes nothing.
        CHECK_FALSE(t.w().revoke(id_of(1), 10'000).entry_removed);
        CHECK(kind(t, src, 20'000) == LookupKind::granted);
    }
    SECTION("a grant that has already ended is refused") {
        CHECK(t.w().upsert(grant(key(2, "2001:db8::2"), 9, 0, 1000), 1000) == UpsertResult::expired);
    }
}

TEST_CASE("grant table: malformed keys and times are refused as invalid") {
    Table t;
    GrantKey host_bits = key(1, "10.1.2.3", 24);
    CHECK(t.w().upsert(grant(host_bits, 1, 0, 10), 0) == UpsertResult::invalid);
    GrantKey long_prefix = key(1, "10.1.2.3");
    long_prefix.prefix_len = 33;
    CHECK(t.w().upsert(grant(long_prefix, 2, 0, 10), 0) == UpsertResult::invalid);
    GrantKey v4_tail = key(1, "10.1.2.3");
    v4_tail.address[4] = 1;
    CHECK(t.w().upsert(grant(v4_tail, 3, 0, 10), 0) == UpsertResult::invalid);
    GrantKey no_family = key(1, "10.1.2.3");
    no_family.family = IpVersion::none;
    CHECK(t.w().upsert(grant(no_family, 4, 0, 10), 0) == UpsertResult::invalid);
    CHECK(t.w().upsert(grant(key(17, "10.1.2.3"), 5, 0, 10), 0) == UpsertResult::invalid);
    CHECK(t.w().upsert(grant(key(1, "10.1.2.3"), 6, 10, 10), 0) == UpsertResult::invalid);
    CHECK(t.w().upsert(grant(key(1, "2001:db8::1", 64), 7, 0, 10), 0) == UpsertResult::invalid);
    CHECK(t.r().stats().live_grants == 0);
    CHECK(t.r().stats().refused_other == 7);
}

TEST_CASE("grant table: lookup falls through to the longest prefix that is valid now") {
    Table t;
    REQUIRE(t.w().upsert(grant(key(1, "203.0.113.0", 24), 1, 0, 10'000), 0) == UpsertResult::inserted);
    REQUIRE(t.w().upsert(grant(key(1, "203.0.113.5"), 2, 0, 1'000), 0) == UpsertResult::inserted);
    REQUIRE(t.w().upsert(grant(key(1, "203.0.0.0", 16), 3, 0, 20'000), 0) == UpsertResult::inserted);

    SECTION("a valid /32 wins over the /24") {
        const LookupResult r = t.r().lookup(source(1, "203.0.113.5"), 500);
        CHECK(r.kind == LookupKind::granted);
        CHECK(r.prefix_len == 32);
    }
    SECTION("an expired /32 never hides a valid /24") {
        const LookupResult r = t.r().lookup(source(1, "203.0.113.5"), 5'000);
        CHECK(r.kind == LookupKind::granted);
        CHECK(r.prefix_len == 24);
        CHECK(r.not_after_tick == 10'000);
    }
    SECTION("and the /24 expired falls to the /16") {
        const LookupResult r = t.r().lookup(source(1, "203.0.113.5"), 15'000);
        CHECK(r.kind == LookupKind::granted);
        CHECK(r.prefix_len == 16);
    }
    SECTION("nothing valid: the most specific entry's state is reported") {
        const LookupResult r = t.r().lookup(source(1, "203.0.113.5"), 25'000);
        CHECK(r.kind == LookupKind::expired);
        CHECK(r.prefix_len == 32);
        CHECK(kind(t, source(1, "203.0.113.9"), 25'000) == LookupKind::expired);
    }
    SECTION("other addresses of the prefix, and outside it") {
        CHECK(t.r().lookup(source(1, "203.0.113.200"), 500).prefix_len == 24);
        CHECK(t.r().lookup(source(1, "203.0.7.1"), 500).prefix_len == 16);
        CHECK(kind(t, source(1, "203.1.0.1"), 500) == LookupKind::no_grant);
        CHECK(kind(t, source(2, "203.0.113.5"), 500) == LookupKind::no_grant);
    }
    SECTION("removing the last grant of a length stops probing it") {
        REQUIRE(t.w().revoke(id_of(3), 20'000).entry_removed);
        CHECK(kind(t, source(1, "203.0.7.1"), 500) == LookupKind::no_grant);
        CHECK(t.r().lookup(source(1, "203.0.113.9"), 500).prefix_len == 24);
    }
}

TEST_CASE("grant table: IPv6 prefixes, /0 and /128") {
    Table t;
    REQUIRE(t.w().upsert(grant(key(5, "2001:db8:1:2::", 64), 1, 0, 100), 0) == UpsertResult::inserted);
    REQUIRE(t.w().upsert(grant(key(5, "2001:db8:1:2::77"), 2, 0, 100), 0) == UpsertResult::inserted);
    REQUIRE(t.w().upsert(grant(key(5, "2001:db8:1:2:8000::", 65), 3, 0, 100), 0) ==
            UpsertResult::inserted);
    REQUIRE(t.w().upsert(grant(key(6, "::", 0), 4, 0, 100), 0) == UpsertResult::inserted);
    CHECK(t.r().lookup(source(5, "2001:db8:1:2::77"), 10).prefix_len == 128);
    CHECK(t.r().lookup(source(5, "2001:db8:1:2::78"), 10).prefix_len == 64);
    CHECK(t.r().lookup(source(5, "2001:db8:1:2:8000::1"), 10).prefix_len == 65);
    CHECK(kind(t, source(5, "2001:db8:1:3::1"), 10) == LookupKind::no_grant);
    CHECK(t.r().lookup(source(6, "2001:db8:ffff::1"), 10).prefix_len == 0);
    CHECK(kind(t, source(6, "192.0.2.1"), 10) == LookupKind::no_grant);  // /0 is IPv6 only
}

TEST_CASE("grant table: IPv4, IPv6 and IPv4-mapped IPv6 are different keys") {
    Table t;
    REQUIRE(t.w().upsert(grant(key(1, "192.0.2.1"), 1, 0, 100), 0) == UpsertResult::inserted);
    CHECK(kind(t, source(1, "::ffff:192.0.2.1"), 10) == LookupKind::no_grant);
    CHECK(kind(t, source(1, "c000:201::"), 10) == LookupKind::no_grant);  // same leading bytes
    REQUIRE(t.w().upsert(grant(key(1, "::ffff:192.0.2.1"), 2, 0, 200), 0) == UpsertResult::inserted);
    CHECK(t.r().lookup(source(1, "::ffff:192.0.2.1"), 10).not_after_tick == 200);
    CHECK(t.r().lookup(source(1, "192.0.2.1"), 10).not_after_tick == 100);
    CHECK(t.r().stats().live_grants == 2);
}

TEST_CASE("grant table: a full table refuses with table_full and evicts no live grant") {
    Table t(small_config(64));
    for (uint64_t i = 0; i < 64; ++i) {
        const std::string a = "10.0." + std::to_string(i / 256) + "." + std::to_string(i % 256);
        REQUIRE(t.w().upsert(grant(key(1, a.c_str()), i + 1, 0, 1000), 0) == UpsertResult::inserted);
    }
    CHECK(t.w().upsert(grant(key(1, "10.9.9.9"), 1000, 0, 1000), 0) == UpsertResult::table_full);
    CHECK(t.w().upsert(grant(key(1, "10.9.9.9"), 1000, 0, 1000), 0) == UpsertResult::table_full);
    CHECK(t.r().stats().refused_table_full == 2);
    CHECK(t.r().stats().live_grants == 64);
    for (uint64_t i = 0; i < 64; ++i) {
        const std::string a = "10.0." + std::to_string(i / 256) + "." + std::to_string(i % 256);
        CHECK(kind(t, source(1, a.c_str()), 10) == LookupKind::granted);
    }
    // A replacement of a live key needs no new slot: still possible when full.
    CHECK(t.w().upsert(grant(key(1, "10.0.0.0"), 2000, 0, 5000), 0) == UpsertResult::replaced);
    // One removal makes room.
    REQUIRE(t.w().revoke(id_of(5), 1000).entry_removed);
    CHECK(t.w().upsert(grant(key(1, "10.9.9.9"), 1000, 0, 1000), 0) == UpsertResult::inserted);
}

TEST_CASE("grant table: a revoked id never reactivates and is pruned after its not-after") {
    Table t;
    const GrantEntry g = grant(key(1, "192.0.2.50"), 77, 0, 10'000);
    REQUIRE(t.w().upsert(g, 0) == UpsertResult::inserted);
    const RevokeResult r = t.w().revoke(g.grant_id, 5'000);  // raised to the entry's 10'000
    CHECK(r.entry_removed);
    CHECK(r.set == RevokedSetStatus::added);
    CHECK(kind(t, source(1, "192.0.2.50"), 100) == LookupKind::no_grant);
    CHECK(t.w().is_revoked(g.grant_id));
    CHECK(t.r().is_revoked(g.grant_id) == std::optional<bool>(true));
    CHECK(t.r().is_revoked(id_of(78)) == std::optional<bool>(false));
    CHECK(t.w().upsert(g, 100) == UpsertResult::revoked_id);
    CHECK(t.w().revoke(g.grant_id, 1).set == RevokedSetStatus::already_present);

    // An id revoked before jitlb ever saw it is refused too.
    CHECK_FALSE(t.w().revoke(id_of(90), 3'000).entry_removed);
    CHECK(t.w().upsert(grant(key(1, "192.0.2.51"), 90, 0, 3'000), 100) == UpsertResult::revoked_id);

    // Pruned once it would have expired: 90 at 3'000, 77 at 10'000 (not 5'000).
    t.w().expire(2'999, 1 << 20);
    CHECK(t.w().is_revoked(id_of(90)));
    t.w().expire(3'000, 1 << 20);
    CHECK_FALSE(t.w().is_revoked(id_of(90)));
    t.w().expire(9'999, 1 << 20);
    CHECK(t.w().is_revoked(g.grant_id));
    t.w().expire(10'000, 1 << 20);
    CHECK_FALSE(t.w().is_revoked(g.grant_id));
    CHECK(t.r().stats().revoked_ids_pruned == 2);
    CHECK(t.r().stats().revoked_ids == 0);
    // By then the grant itself has expired: refused for that reason.
    CHECK(t.w().upsert(g, 10'000) == UpsertResult::expired);
}

TEST_CASE("grant table: a full revoked set refuses new activations but revocations still remove") {
    Table t(small_config(8));
    REQUIRE(t.w().upsert(grant(key(1, "10.0.0.1"), 1, 0, 50'000), 0) == UpsertResult::inserted);
    REQUIRE(t.w().upsert(grant(key(1, "10.0.0.2"), 2, 0, 50'000), 0) == UpsertResult::inserted);
    for (uint64_t i = 0; i < 8; ++i) REQUIRE(t.w().revoke(id_of(100 + i), 1000 + 100 * i).set == RevokedSetStatus::added);
    CHECK(t.w().revoked_ids() == 8);

    CHECK(t.w().upsert(grant(key(1, "10.0.0.3"), 3, 0, 50'000), 0) == UpsertResult::revoked_set_full);
    CHECK(t.w().upsert(grant(key(1, "10.0.0.1"), 4, 0, 60'000), 0) == UpsertResult::revoked_set_full);
    CHECK(t.r().stats().refused_revoked_set_full == 2);
    // An identical re-push is no activation.
    CHECK(t.w().upsert(grant(key(1, "10.0.0.1"), 1, 0, 50'000), 0) == UpsertResult::unchanged);

    // The revocation that cannot be recorded still removes its entry...
    const RevokeResult r = t.w().revoke(id_of(2), 40'000);
    CHECK(r.entry_removed);
    CHECK(r.set == RevokedSetStatus::full);
    CHECK(kind(t, source(1, "10.0.0.2"), 10) == LookupKind::no_grant);
    CHECK(t.r().stats().revocations_not_recorded == 1);

    // ...and since id 2 is not in the set, nothing activates until it would
    // have expired (50'000: the entry's not-after, later than the one given),
    // even after pruning makes room.
    t.w().expire(2'000, 1 << 20);
    CHECK(t.w().revoked_ids() == 0);
    CHECK(t.r().stats().lost_revocations_until_ms == 50'000);
    CHECK(t.w().upsert(grant(key(1, "10.0.0.2"), 2, 0, 50'000), 2'000) == UpsertResult::revoked_set_full);
    CHECK(t.w().upsert(grant(key(1, "10.0.0.3"), 3, 0, 60'000), 49'999) == UpsertResult::revoked_set_full);
    t.w().expire(50'000, 1 << 20);
    CHECK(t.w().upsert(grant(key(1, "10.0.0.3"), 3, 0, 60'000), 50'000) == UpsertResult::inserted);
}

TEST_CASE("grant table: expire removes ended grants incrementally, within its budget") {
    Table t(small_config(256));
    for (uint64_t i = 0; i < 200; ++i) {
        const std::string a = "10.1." + std::to_string(i / 256) + "." + std::to_string(i % 256);
        REQUIRE(t.w().upsert(grant(key(1, a.c_str()), i + 1, 0, i % 2 == 0 ? 1'000 : 9'000), 0) ==
                UpsertResult::inserted);
    }
    size_t removed = 0, calls = 0;
    for (;; ++calls) {
        const ExpireResult r = t.w().expire(1'000, 16);
        CHECK(r.grants_removed <= 16);
        removed += r.grants_removed;
        if (r.cycle_done) break;
        REQUIRE(calls < 1000);
    }
    CHECK(calls > 1);  // it took several bounded calls
    CHECK(removed == 100);
    CHECK(t.r().stats().live_grants == 100);
    CHECK(t.r().stats().removed_expired == 100);
    CHECK(kind(t, source(1, "10.1.0.0"), 500) == LookupKind::no_grant);
    CHECK(kind(t, source(1, "10.1.0.1"), 500) == LookupKind::granted);
    CHECK(t.r().probe_stats().entries == 100);
}

TEST_CASE("grant table: removing an issuer removes all of its grants and no other") {
    Table t;
    for (uint64_t i = 0; i < 40; ++i) {
        const std::string a = "10.2.0." + std::to_string(i);
        REQUIRE(t.w().upsert(grant(key(1, a.c_str()), i + 1, 0, 1000, i % 3 == 0 ? 9 : 1), 0) ==
                UpsertResult::inserted);
    }
    IssuerKeyId nine;
    nine.fill(9);
    CHECK(t.w().remove_issuer(nine) == 14);
    for (uint64_t i = 0; i < 40; ++i) {
        const std::string a = "10.2.0." + std::to_string(i);
        CHECK(kind(t, source(1, a.c_str()), 10) == (i % 3 == 0 ? LookupKind::no_grant : LookupKind::granted));
    }
    CHECK(t.r().stats().removed_issuer == 14);
    CHECK(t.w().remove_issuer(nine) == 0);
}

TEST_CASE("grant table: reopen keeps every verified entry and the revoked set") {
    Table t;
    for (uint64_t i = 0; i < 100; ++i) {
        const std::string a = "10.3.0." + std::to_string(i);
        REQUIRE(t.w().upsert(grant(key(1, a.c_str(), 32), i + 1, 0, 5000), 0) == UpsertResult::inserted);
    }
    REQUIRE(t.w().upsert(grant(key(2, "2001:db8::", 48), 500, 0, 5000), 0) == UpsertResult::inserted);
    t.w().revoke(id_of(1), 5000);
    t.w().revoke(id_of(999), 7000);
    const LookupResult before = t.r().lookup(source(1, "10.3.0.50"), 10);
    t.writer.reset();  // jitlb exits

    GrantTableError error;
    ReopenReport report;
    auto w = GrantTableWriter::reopen(t.memory.span(), kKey, error, &report);
    INFO(error.message);
    REQUIRE(w);
    CHECK(report.entries_kept == 100);
    CHECK(report.dropped_bad_mac == 0);
    CHECK(report.repaired_sequences == 0);
    CHECK(report.revoked_ids_kept == 2);
    const LookupResult after = w->reader().lookup(source(1, "10.3.0.50"), 10);
    CHECK(after.kind == LookupKind::granted);
    CHECK(after.entry == before.entry);
    CHECK(after.generation == before.generation);
    CHECK(w->reader().lookup(source(2, "2001:db8:0:1::1"), 10).prefix_len == 48);
    CHECK(w->is_revoked(id_of(999)));
    CHECK(w->upsert(grant(key(1, "10.3.0.0"), 1, 0, 5000), 0) == UpsertResult::revoked_id);
    // The private indexes are back: revoke by id, upsert, expire work.
    CHECK(w->revoke(id_of(2), 5000).entry_removed);
    CHECK(w->upsert(grant(key(1, "10.3.0.1"), 3000, 0, 5000), 0) == UpsertResult::inserted);
    CHECK(w->upsert(grant(key(1, "10.3.0.50"), 51, 0, 5000), 0) == UpsertResult::unchanged);
    CHECK(w->live_grants() == 100);
    CHECK(w->reader().stats().inserted == 102);  // counters survive the restart

    // Another reader, as jitd would attach.
    GrantTableError attach_error;
    auto r = GrantTableReader::attach(std::span<const std::byte>(t.memory.span()), attach_error);
    REQUIRE(r);
    CHECK(r->lookup(source(1, "10.3.0.50"), 10).kind == LookupKind::granted);
}

TEST_CASE("grant table: a crash between recording a revocation and removing its entry leaves nothing active after reopen") {
    // Table a: two grants, then one's revocation, whole. Table b: the two
    // grants only. b's table with a's revoked set is the state revoke()
    // leaves when jitlb dies after recording the id and before removing the
    // entry (GrantTableWriter::revoke records first).
    Table a, b;
    for (Table* t : {&a, &b}) {
        REQUIRE(t->w().upsert(grant(key(1, "10.9.0.7", 32), 7, 0, 5000), 0) == UpsertResult::inserted);
        REQUIRE(t->w().upsert(grant(key(1, "10.9.0.8", 32), 8, 0, 5000), 0) == UpsertResult::inserted);
    }
    REQUIRE(a.w().revoke(id_of(7), 5000).entry_removed);
    REQUIRE(b.r().lookup(source(1, "10.9.0.7"), 10).kind == LookupKind::granted);
    a.writer.reset();
    b.writer.reset();  // jitlb dies
    const size_t revoked_at = GrantTable::bytes_needed(a.config) - GrantTable::sizes(a.config).revoked_set_bytes;
    REQUIRE(revoked_at % 4096 == 0);
    std::memcpy(b.memory.data + revoked_at, a.memory.data + revoked_at, b.memory.size - revoked_at);

    GrantTableError error;
    ReopenReport report;
    auto w = GrantTableWriter::reopen(b.memory.span(), kKey, error, &report);
    INFO(error.message);
    REQUIRE(w);
    CHECK(report.dropped_revoked == 1);
    CHECK(report.entries_kept == 1);
    CHECK(report.revoked_ids_kept == 1);
    CHECK(w->reader().lookup(source(1, "10.9.0.7"), 10).kind == LookupKind::no_grant);
    CHECK(w->reader().lookup(source(1, "10.9.0.8"), 10).kind == LookupKind::granted);
    CHECK(w->is_revoked(id_of(7)));
    CHECK(w->upsert(grant(key(1, "10.9.0.7", 32), 7, 0, 5000), 0) == UpsertResult::revoked_id);
    CHECK(w->live_grants() == 1);
}

TEST_CASE("grant table: reopen drops and counts entries whose MAC does not verify") {
    Table t;
    for (uint64_t i = 0; i < 50; ++i) {
        const std::string a = "10.4.0." + std::to_string(i);
        REQUIRE(t.w().upsert(grant(key(1, a.c_str()), i + 1, 0, 5000), 0) == UpsertResult::inserted);
    }
    const LookupResult victim = t.r().lookup(source(1, "10.4.0.7"), 10);
    const LookupResult victim2 = t.r().lookup(source(1, "10.4.0.8"), 10);
    REQUIRE(victim.kind == LookupKind::granted);

    SECTION("one byte of an entry's record hash flipped: that entry alone is dropped") {
        auto* bytes = reinterpret_cast<uint8_t*>(writable(t.r().entry_words(victim.entry)));
        bytes[7 * 8 + 3] ^= 0x10;  // inside the record hash
        // One byte of another entry's key (an address byte) in its hot slot.
        for (uint64_t s = 0; s < t.r().slot_count(); ++s) {
            SlotSnapshot snap;
            if (t.r().read_slot(s, snap) == SnapshotStatus::ok && snap.entry == victim2.entry)
                reinterpret_cast<uint8_t*>(writable(t.r().slot_words(s)))[3 * 8 + 3] ^= 0x01;  // address
        }
        t.writer.reset();
        GrantTableError error;
        ReopenReport report;
        auto w = GrantTableWriter::reopen(t.memory.span(), kKey, error, &report);
        REQUIRE(w);
        CHECK(report.dropped_bad_mac == 2);
        CHECK(report.entries_kept == 48);
        CHECK(w->reader().lookup(source(1, "10.4.0.7"), 10).kind == LookupKind::no_grant);
        CHECK(w->reader().lookup(source(1, "10.4.0.8"), 10).kind == LookupKind::no_grant);
        CHECK(w->reader().lookup(source(1, "10.4.0.6"), 10).kind == LookupKind::granted);
        CHECK(w->reader().probe_stats().entries == 48);
        // The dropped grants can be pushed again.
        CHECK(w->upsert(grant(key(1, "10.4.0.7"), 8, 0, 5000), 0) == UpsertResult::inserted);
        GrantDetails d;
        CHECK(w->reader().read_details(victim.entry, d) != SnapshotStatus::busy);
    }
    SECTION("a tampered deadline is not trusted: recomputed from the MAC'd Unix time") {
        for (uint64_t s = 0; s < t.r().slot_count(); ++s) {
            SlotSnapshot snap;
            if (t.r().read_slot(s, snap) == SnapshotStatus::ok && snap.entry == victim.entry)
                writable(t.r().slot_words(s))[7] = UINT64_MAX;  // not_after_tick
        }
        CHECK(t.r().lookup(source(1, "10.4.0.7"), 6000).kind == LookupKind::granted);
        t.writer.reset();
        GrantTableError error;
        ReopenReport report;
        auto w = GrantTableWriter::reopen(t.memory.span(), kKey, error, &report);
        REQUIRE(w);
        CHECK(report.deadlines_rewritten == 1);
        CHECK(w->reader().lookup(source(1, "10.4.0.7"), 6000).kind == LookupKind::expired);
    }
    SECTION("the wrong MAC key drops every entry") {
        t.writer.reset();
        GrantTableMacKey wrong = kKey;
        wrong[0] ^= 1;
        GrantTableError error;
        ReopenReport report;
        auto w = GrantTableWriter::reopen(t.memory.span(), wrong, error, &report);
        REQUIRE(w);
        CHECK(report.dropped_bad_mac == 50);
        CHECK(report.entries_kept == 0);
        CHECK(w->reader().lookup(source(1, "10.4.0.6"), 10).kind == LookupKind::no_grant);
        CHECK(w->reader().probe_stats().entries == 0);
        CHECK(w->reader().stats().live_grants == 0);
    }
    SECTION("an issuer removed while jitlb was down ends its grants") {
        t.writer.reset();
        GrantTableError error;
        ReopenReport report;
        ReopenOptions options;
        options.keep_issuer = [](const IssuerKeyId& id) { return id[0] != 1; };
        auto w = GrantTableWriter::reopen(t.memory.span(), kKey, error, &report, options);
        REQUIRE(w);
        CHECK(report.dropped_issuer == 50);
    }
}

TEST_CASE("grant table: reopen checks the MACs in parts on other threads and drops exactly what "
          "one part drops") {
    Table t(small_config(4096));
    std::vector<LookupKey> sources;
    for (uint64_t i = 0; i < 2000; ++i) {
        const std::string a = "10." + std::to_string(5 + i / 250) + "." + std::to_string(i % 250) + ".1";
        REQUIRE(t.w().upsert(grant(key(1, a.c_str()), i + 1, 0, 5000), 0) == UpsertResult::inserted);
        sources.push_back(source(1, a.c_str()));
    }
    // Every 97th entry's record hash flipped: spread over every part's range.
    std::set<uint64_t> tampered;
    for (size_t i = 0; i < sources.size(); i += 97) {
        const LookupResult r = t.r().lookup(sources[i], 10);
        REQUIRE(r.kind == LookupKind::granted);
        reinterpret_cast<uint8_t*>(writable(t.r().entry_words(r.entry)))[7 * 8 + 1] ^= 0x40;
        tampered.insert(i);
    }
    REQUIRE(tampered.size() == 21);
    t.writer.reset();
    // Two more copies of the same memory, reopened differently.
    Memory threads_copy(t.memory.size), reversed_copy(t.memory.size);
    std::memcpy(threads_copy.data, t.memory.data, t.memory.size);
    std::memcpy(reversed_copy.data, t.memory.data, t.memory.size);

    const auto check_reopened = [&](std::span<std::byte> memory, const ReopenOptions& options) {
        GrantTableError error;
        ReopenReport report;
        auto w = GrantTableWriter::reopen(memory, kKey, error, &report, options);
        REQUIRE(w);
        CHECK(report.dropped_bad_mac == 21);
        CHECK(report.entries_kept == 2000 - 21);
        for (size_t i = 0; i < sources.size(); ++i) {
            INFO("source " << i);
            CHECK((w->reader().lookup(sources[i], 10).kind == LookupKind::granted) == (tampered.count(i) == 0));
        }
    };
    check_reopened(t.memory.span(), {});  // one part, in reopen's own thread

    ReopenOptions on_threads;
    on_threads.parts = 5;
    on_threads.run_parts = run_parts_on_threads;
    check_reopened(threads_copy.span(), on_threads);

    // Parts in any order; each is called once.
    std::vector<unsigned> called;
    ReopenOptions reversed;
    reversed.parts = 7;
    reversed.run_parts = [&](unsigned parts, const std::function<void(unsigned)>& part) {
        for (unsigned i = parts; i-- > 0;) {
            called.push_back(i);
            part(i);
        }
    };
    check_reopened(reversed_copy.span(), reversed);
    CHECK(called == std::vector<unsigned>{6, 5, 4, 3, 2, 1, 0});

    // A runner that loses parts costs time, not grants: reopen checks what
    // no part examined itself (else every entry of parts 1..63 would be
    // dropped as a bad MAC).
    Memory lossy_copy(t.memory.size);
    std::memcpy(lossy_copy.data, reversed_copy.data, t.memory.size);  // reopened already: 1979 entries
    ReopenOptions lossy;
    lossy.parts = 64;
    lossy.run_parts = [](unsigned, const std::function<void(unsigned)>& part) { part(0); };
    GrantTableError error;
    ReopenReport report;
    auto w = GrantTableWriter::reopen(lossy_copy.span(), kKey, error, &report, lossy);
    REQUIRE(w);
    CHECK(report.dropped_bad_mac == 0);
    CHECK(report.entries_kept == 2000 - 21);
}

TEST_CASE("grant table: reopen repairs what a crash left: odd sequences and a half-done move") {
    Table t;
    for (uint64_t i = 0; i < 100; ++i) {
        const std::string a = "10.5.0." + std::to_string(i);
        REQUIRE(t.w().upsert(grant(key(1, a.c_str()), i + 1, 0, 5000), 0) == UpsertResult::inserted);
    }
    const LookupResult victim = t.r().lookup(source(1, "10.5.0.9"), 10);
    uint64_t victim_slot = 0;
    for (uint64_t s = 0; s < t.r().slot_count(); ++s) {
        SlotSnapshot snap;
        if (t.r().read_slot(s, snap) == SnapshotStatus::ok && snap.entry == victim.entry) victim_slot = s;
    }
    // A crash in the middle of writing the slot: its sequence stays odd.
    uint64_t* seq = writable(t.r().slot_words(victim_slot));
    *seq += 1;
    CHECK(t.r().lookup(source(1, "10.5.0.9"), 10).kind == LookupKind::busy);
    // A crash in the middle of a backward shift: the moved entry is also in
    // the next free slot after it (both copies reachable), relocation odd.
    uint64_t dup_from = 0, dup_to = 0;
    for (uint64_t s = 0; s < t.r().slot_count(); ++s) {
        SlotSnapshot a, b;
        const uint64_t next = (s + 1) % t.r().slot_count();
        if (s != victim_slot && t.r().read_slot(s, a) == SnapshotStatus::ok &&
            t.r().read_slot(next, b) == SnapshotStatus::empty) {
            dup_from = s;
            dup_to = next;
            break;
        }
    }
    for (int i = 1; i < 8; ++i) writable(t.r().slot_words(dup_to))[i] = t.r().slot_words(dup_from)[i];
    *writable(t.r().relocation_word()) += 1;
    t.writer.reset();

    GrantTableError error;
    ReopenReport report;
    auto w = GrantTableWriter::reopen(t.memory.span(), kKey, error, &report);
    REQUIRE(w);
    CHECK(report.repaired_sequences == 2);
    CHECK(report.dropped_duplicates == 1);
    CHECK(report.entries_kept == 100);
    CHECK(w->reader().lookup(source(1, "10.5.0.9"), 10).kind == LookupKind::granted);
    CHECK(w->reader().probe_stats().entries == 100);
    CHECK((*w->reader().relocation_word() & 1) == 0);
    // Everything still removable through the rebuilt indexes.
    for (uint64_t i = 0; i < 100; ++i) CHECK(w->revoke(id_of(i + 1), 5000).entry_removed);
    CHECK(w->reader().probe_stats().entries == 0);
}

TEST_CASE("grant table: churn of 10x capacity inserts and deletions keeps probe lengths bounded") {
    const uint64_t capacity = 4096;
    GrantTableConfig c = small_config(capacity);
    c.slots_per_grant = 2;  // the denser layout: more displacement to churn
    Table t(c);
    std::mt19937_64 rng(7);
    std::vector<std::pair<uint64_t, GrantKey>> live;  // (id, key)
    uint64_t next_id = 1;
    int64_t now = 0;
    const auto random_key = [&] {
        GrantKey k;
        k.service_id = static_cast<uint16_t>(rng() % 4);
        if (rng() % 2 == 0) {
            k.family = IpVersion::v4;
            k.prefix_len = 32;
            const uint32_t a = static_cast<uint32_t>(rng());
            std::memcpy(k.address.data(), &a, 4);
        } else {
            k.family = IpVersion::v6;
            k.prefix_len = 128;
            const uint64_t a = rng(), b = rng();
            std::memcpy(k.address.data(), &a, 8);
            std::memcpy(k.address.data() + 8, &b, 8);
        }
        return k;
    };
    // Fill to 90% of capacity (load 0.45 of the slots).
    const uint64_t target = capacity * 9 / 10;
    while (live.size() < target) {
        const GrantKey k = random_key();
        if (t.w().upsert(grant(k, next_id, 0, 3000), now) == UpsertResult::inserted)
            live.push_back({next_id, k});
        ++next_id;
    }
    const ProbeStats start = t.r().probe_stats();
    // 10x capacity cycles, by revocation and by expiry (revoked ids are kept
    // until the grants' not-after, so those are short enough to be pruned).
    for (uint64_t cycle = 0; cycle < 10 * capacity; ++cycle) {
        ++now;
        if (cycle % 2 == 0 && !live.empty()) {
            // Entries may have expired meanwhile: then the revocation removes nothing.
            const size_t victim = rng() % live.size();
            t.w().revoke(id_of(live[victim].first), now);
            live[victim] = live.back();
            live.pop_back();
        }
        t.w().expire(now, 8);
        while (t.r().stats().live_grants < target) {
            const GrantKey k = random_key();
            const bool short_grant = rng() % 2 == 0;
            const UpsertResult r =
                t.w().upsert(grant(k, next_id, 0, now + (short_grant ? 50 : 3000)), now);
            REQUIRE(upsert_succeeded(r));
            if (!short_grant) live.push_back({next_id, k});
            ++next_id;
        }
    }
    // Every entry still present is found (hop words kept right through the
    // churn), and fresh keys are not.
    size_t checked = 0;
    for (const auto& [id, k] : live) {
        if (!t.w().find_grant(id_of(id))) continue;
        ++checked;
        CHECK(t.r().lookup(LookupKey{k.address, k.service_id, k.family, 0}, 0).kind ==
              LookupKind::granted);
    }
    CHECK(checked > capacity / 4);
    for (int i = 0; i < 1000; ++i) {
        const GrantKey k = random_key();
        CHECK(t.r().lookup(LookupKey{k.address, k.service_id, k.family, 0}, 0).kind ==
              LookupKind::no_grant);
    }
    const ProbeStats end = t.r().probe_stats();
    INFO("start mean " << start.mean_probe << " max " << start.max_probe << "; end mean "
                       << end.mean_probe << " max " << end.max_probe);
    CHECK(end.entries == t.r().stats().live_grants);
    // Linear probing at load 0.45 expects (1 + 1/(1-a))/2 = 1.41 slots per hit.
    CHECK(end.mean_probe < 1.7);
    CHECK(end.mean_probe < start.mean_probe * 1.2 + 0.05);
    CHECK(end.max_probe < 64);
    CHECK(t.r().stats().refused_revoked_set_full == 0);
}

TEST_CASE("grant table: bulk lookup agrees with single lookups on random keys") {
    GrantTableConfig c = small_config(2048);
    c.slots_per_grant = GENERATE(2u, 4u);
    // Either prefetch schedule, and this CPU's: the answers are the same.
    const PrefetchSchedule schedule = GENERATE(PrefetchSchedule::automatic, PrefetchSchedule::per_key,
                                               PrefetchSchedule::after_hashing);
    Table t(c);
    std::mt19937_64 rng(11);
    // Addresses from small pools so that prefixes overlap and lookups hit.
    std::vector<LookupKey> sources;
    for (int i = 0; i < 300; ++i) {
        LookupKey k;
        k.service_id = static_cast<uint16_t>(rng() % 3);
        if (rng() % 2 == 0) {
            k.family = IpVersion::v4;
            k.address = {10, static_cast<uint8_t>(rng() % 2), static_cast<uint8_t>(rng() % 4),
                         static_cast<uint8_t>(rng() % 64)};
        } else {
            k.family = IpVersion::v6;
            k.address = {0x20, 0x01, 0x0d, 0xb8, 0, static_cast<uint8_t>(rng() % 2)};
            k.address[8] = static_cast<uint8_t>(rng() % 4);
            k.address[15] = static_cast<uint8_t>(rng() % 64);
        }
        sources.push_back(k);
    }
    const uint8_t v4_prefixes[] = {32, 30, 24, 16, 8};
    const uint8_t v6_prefixes[] = {128, 120, 64, 48, 0};
    uint64_t id = 1;
    for (int i = 0; i < 1200; ++i) {
        const LookupKey& s = sources[rng() % sources.size()];
        GrantKey k{s.service_id, s.family, 0, s.address};
        k.prefix_len = s.family == IpVersion::v4 ? v4_prefixes[rng() % 5] : v6_prefixes[rng() % 5];
        // Mask host bits.
        for (unsigned b = k.prefix_len; b < 128; ++b) k.address[b / 8] &= static_cast<uint8_t>(~(0x80 >> (b % 8)));
        const int64_t nb = static_cast<int64_t>(rng() % 1000);
        const int64_t na = nb + 1 + static_cast<int64_t>(rng() % 2000);
        t.w().upsert(grant(k, id++, nb, na), 1000);
    }
    // Some deletions, so that entries have moved.
    for (uint64_t g = 1; g < id; g += 7) t.w().revoke(id_of(g), 0);
    size_t granted = 0, expired = 0, none = 0;
    for (int round = 0; round < 200; ++round) {
        std::vector<LookupKey> keys(1 + rng() % 70);
        for (LookupKey& k : keys) k = sources[rng() % sources.size()];
        if (rng() % 4 == 0) keys[0].family = IpVersion::none;
        const uint64_t now = rng() % 3200;
        std::vector<LookupResult> bulk(keys.size());
        GrantTableReader reader = t.r();
        reader.set_prefetch_schedule(schedule);
        if (schedule != PrefetchSchedule::automatic) REQUIRE(reader.prefetch_schedule() == schedule);
        reader.lookup_bulk(keys, now, bulk);
        for (size_t i = 0; i < keys.size(); ++i) {
            const LookupResult single = t.r().lookup(keys[i], now);
            REQUIRE(bulk[i].kind == single.kind);
            REQUIRE(bulk[i].prefix_len == single.prefix_len);
            REQUIRE(bulk[i].entry == single.entry);
            REQUIRE(bulk[i].generation == single.generation);
            REQUIRE(bulk[i].not_after_tick == single.not_after_tick);
            granted += single.kind == LookupKind::granted;
            expired += single.kind == LookupKind::expired;
            none += single.kind == LookupKind::no_grant;
        }
    }
    // The mix exercised every path.
    CHECK(granted > 100);
    CHECK(expired > 100);
    CHECK(none > 20);
}

TEST_CASE("grant table: bulk lookup agrees with single lookups for services of exact addresses") {
    // Service 0 has IPv4 /32 grants only and service 1 IPv6 /128 only: bursts
    // answer them without prefix arithmetic. Service 2 has both and one IPv4
    // /24, so that its IPv4 keys take the general path and its IPv6 keys not.
    GrantTableConfig c = small_config(2048);
    c.slots_per_grant = GENERATE(2u, 4u);
    // Either prefetch schedule, and this CPU's: the answers are the same.
    const PrefetchSchedule schedule = GENERATE(PrefetchSchedule::automatic, PrefetchSchedule::per_key,
                                               PrefetchSchedule::after_hashing);
    Table t(c);
    std::mt19937_64 rng(12);
    std::vector<LookupKey> sources;
    for (int i = 0; i < 2400; ++i) {
        LookupKey k;
        k.service_id = static_cast<uint16_t>(i % 3);
        k.family = k.service_id == 0   ? IpVersion::v4
                   : k.service_id == 1 ? IpVersion::v6
                                       : (rng() % 2 == 0 ? IpVersion::v4 : IpVersion::v6);
        if (k.family == IpVersion::v4) {
            const uint32_t a = static_cast<uint32_t>(rng());
            std::memcpy(k.address.data(), &a, 4);
            if (k.service_id == 2 && rng() % 2 == 0)
                k.address = {10, 1, 2, static_cast<uint8_t>(rng())};
        } else {
            const uint64_t a = rng(), b = rng();
            std::memcpy(k.address.data(), &a, 8);
            std::memcpy(k.address.data() + 8, &b, 8);
        }
        sources.push_back(k);
    }
    // Grants for the first 1800 sources (the table's load is 0.44 with 2
    // slots per grant: many keys are displaced), none for the rest.
    uint64_t id = 1;
    for (size_t i = 0; i < 1800; ++i) {
        const LookupKey& s = sources[i];
        const GrantKey k{s.service_id, s.family,
                         static_cast<uint8_t>(s.family == IpVersion::v4 ? 32 : 128), s.address};
        const int64_t nb = static_cast<int64_t>(rng() % 1000);
        t.w().upsert(grant(k, id++, nb, nb + 1 + static_cast<int64_t>(rng() % 2000)), 1000);
    }
    REQUIRE(t.w().upsert(grant(key(2, "10.1.2.0", 24), id++, 0, 2500), 1000) ==
            UpsertResult::inserted);
    // Some deletions, so that entries have moved back along their chains.
    for (uint64_t g = 1; g < id; g += 5) t.w().revoke(id_of(g), 0);
    size_t granted = 0, expired = 0, not_yet = 0, none = 0;
    for (int round = 0; round < 300; ++round) {
        std::vector<LookupKey> keys(1 + rng() % 70);
        for (LookupKey& k : keys) k = sources[rng() % sources.size()];
        if (rng() % 4 == 0) keys[rng() % keys.size()].family = IpVersion::none;
        if (rng() % 4 == 0) keys[rng() % keys.size()].service_id = 40;  // beyond max_service_id
        const uint64_t now = rng() % 3200;
        std::vector<LookupResult> bulk(keys.size());
        GrantTableReader reader = t.r();
        reader.set_prefetch_schedule(schedule);
        if (schedule != PrefetchSchedule::automatic) REQUIRE(reader.prefetch_schedule() == schedule);
        reader.lookup_bulk(keys, now, bulk);
        for (size_t i = 0; i < keys.size(); ++i) {
            const LookupResult single = t.r().lookup(keys[i], now);
            REQUIRE(bulk[i].kind == single.kind);
            REQUIRE(bulk[i].prefix_len == single.prefix_len);
            REQUIRE(bulk[i].entry == single.entry);
            REQUIRE(bulk[i].generation == single.generation);
            REQUIRE(bulk[i].not_before_tick == single.not_before_tick);
            REQUIRE(bulk[i].not_after_tick == single.not_after_tick);
            granted += single.kind == LookupKind::granted;
            expired += single.kind == LookupKind::expired;
            not_yet += single.kind == LookupKind::not_yet;
            none += single.kind == LookupKind::no_grant;
        }
    }
    CHECK(granted > 1000);
    CHECK(expired > 1000);
    CHECK(not_yet > 100);
    CHECK(none > 1000);
}

TEST_CASE("grant table: a key's home slot is the byte hash of its compact form") {
    // The home slots are part of the stored format (reopen finds entries by
    // them): the hash written out for 8- and 20-byte keys must stay hash_bytes.
    Table t;
    const uint64_t mask = t.r().slot_count() - 1;
    for (const GrantKey& k :
         {key(0, "192.0.2.1"), key(7, "10.1.2.0", 24), key(16, "0.0.0.0", 0), key(3, "2001:db8::1"),
          key(9, "2001:db8:1:2::", 64), key(1, "::", 0), key(2, "::ffff:192.0.2.1"),
          key(300, "198.51.100.7"), key(65535, "2001:db8::2")}) {
        const uint8_t meta[4] = {static_cast<uint8_t>(k.service_id),
                                 static_cast<uint8_t>(k.service_id >> 8),
                                 static_cast<uint8_t>(k.family), k.prefix_len};
        std::vector<uint8_t> bytes;
        if (k.family == IpVersion::v4) {
            bytes.assign(meta, meta + 4);
            bytes.insert(bytes.end(), k.address.begin(), k.address.begin() + 4);
        } else {
            bytes.assign(k.address.begin(), k.address.end());
            bytes.insert(bytes.end(), meta, meta + 4);
        }
        CHECK(t.r().home_slot(k) == (hash_bytes(bytes, t.config.hash_seed) & mask));
    }
}

TEST_CASE("grant table: keys displaced beyond the hop window are found, moved and removed") {
    GrantTableConfig c = small_config(64);
    c.slots_per_grant = 2;  // 128 slots
    Table t(c);
    // 60 keys with the same home slot: the last 11 lie beyond the 48-slot hop
    // window, so their home's overflow bit sends readers on a linear walk.
    std::vector<GrantKey> same_home;
    const uint64_t target = t.r().home_slot(key(1, "10.0.0.0"));
    for (uint32_t n = 0; same_home.size() < 60; ++n) {
        GrantKey k = key(1, "10.0.0.0");
        std::memcpy(k.address.data(), &n, 4);
        if (t.r().home_slot(k) == target) same_home.push_back(k);
    }
    const auto src = [](const GrantKey& k) { return LookupKey{k.address, k.service_id, k.family, 0}; };
    for (size_t i = 0; i < same_home.size(); ++i)
        REQUIRE(t.w().upsert(grant(same_home[i], i + 1, 0, 100), 0) == UpsertResult::inserted);
    CHECK(t.r().probe_stats().max_probe == 60);
    std::vector<LookupKey> keys;
    for (const GrantKey& k : same_home) keys.push_back(src(k));
    std::vector<LookupResult> out(keys.size());
    t.r().lookup_bulk(keys, 10, out);
    for (size_t i = 0; i < keys.size(); ++i) {
        CHECK(t.r().lookup(keys[i], 10).kind == LookupKind::granted);
        CHECK(out[i].kind == LookupKind::granted);
    }
    CHECK(kind(t, source(1, "10.9.9.9"), 10) == LookupKind::no_grant);
    // Removing every other key moves the rest back, across the window's edge.
    for (size_t i = 0; i < same_home.size(); i += 2) REQUIRE(t.w().revoke(id_of(i + 1), 100).entry_removed);
    t.r().lookup_bulk(keys, 10, out);
    for (size_t i = 0; i < keys.size(); ++i) {
        const LookupKind expected = i % 2 == 0 ? LookupKind::no_grant : LookupKind::granted;
        CHECK(t.r().lookup(keys[i], 10).kind == expected);
        CHECK(out[i].kind == expected);
    }
    CHECK(t.r().probe_stats().max_probe == 30);
    // And the rest, so that the overflow bit is cleared and the home is empty.
    for (size_t i = 1; i < same_home.size(); i += 2) REQUIRE(t.w().revoke(id_of(i + 1), 100).entry_removed);
    CHECK(t.r().probe_stats().entries == 0);
    SlotSnapshot snap;
    CHECK(t.r().read_slot(target, snap) == SnapshotStatus::empty);
    CHECK(t.r().slot_words(target)[6] == 0);  // the hop word: no bit, no overflow
}

TEST_CASE("grant table: a reader works on a read-only mapping") {
    const GrantTableConfig c = small_config(512);
    const size_t bytes = GrantTable::bytes_needed(c);
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    std::span<std::byte> mem(static_cast<std::byte*>(p), bytes);
    GrantTableError error;
    {
        auto w = GrantTableWriter::create(mem, c, kKey, error);
        REQUIRE(w);
        REQUIRE(w->upsert(grant(key(1, "192.0.2.1"), 1, 0, 100), 0) == UpsertResult::inserted);
        REQUIRE(w->upsert(grant(key(1, "192.0.2.0", 24), 2, 0, 100), 0) == UpsertResult::inserted);
        w->revoke(id_of(3), 100);
    }
    REQUIRE(mprotect(p, bytes, PROT_READ) == 0);
    auto r = GrantTableReader::attach(std::span<const std::byte>(mem), error);
    REQUIRE(r);
    CHECK(r->lookup(source(1, "192.0.2.1"), 10).kind == LookupKind::granted);
    CHECK(r->lookup(source(1, "192.0.2.9"), 10).prefix_len == 24);
    CHECK(r->lookup(source(1, "192.0.3.9"), 10).kind == LookupKind::no_grant);
    std::vector<LookupKey> keys(40, source(1, "192.0.2.7"));
    std::vector<LookupResult> out(keys.size());
    r->lookup_bulk(keys, 10, out);
    CHECK(out[39].kind == LookupKind::granted);
    CHECK(r->is_revoked(id_of(3)) == std::optional<bool>(true));
    CHECK(r->stats().live_grants == 2);
    GrantDetails d;
    CHECK(r->read_details(out[0].entry, d) == SnapshotStatus::ok);
    munmap(p, bytes);
}

TEST_CASE("grant table: bad configurations and foreign memory are refused with a reason") {
    GrantTableError error;
    SECTION("capacity beyond 16M") {
        GrantTableConfig c = small_config();
        c.capacity = kGrantTableMaxCapacity + 1;
        CHECK(GrantTable::bytes_needed(c) == 0);
        Memory m(1 << 20);
        CHECK_FALSE(GrantTableWriter::create(m.span(), c, kKey, error));
        CHECK(error.code == GrantTableErrc::bad_config);
        CHECK_THAT(error.message, Catch::Contains("16777217"));
    }
    SECTION("memory too small") {
        const GrantTableConfig c = small_config();
        Memory m(GrantTable::bytes_needed(c) - 4096);
        CHECK_FALSE(GrantTableWriter::create(m.span(), c, kKey, error));
        CHECK(error.code == GrantTableErrc::too_small);
    }
    SECTION("misaligned memory") {
        const GrantTableConfig c = small_config();
        Memory m(GrantTable::bytes_needed(c) + 4096);
        CHECK_FALSE(GrantTableWriter::create(m.span().subspan(8), c, kKey, error));
        CHECK(error.code == GrantTableErrc::misaligned);
    }
    SECTION("not initialised, or something else") {
        const GrantTableConfig c = small_config();
        Memory m(GrantTable::bytes_needed(c));
        std::memset(m.data, 0, m.size);
        CHECK_FALSE(GrantTableReader::attach(std::span<const std::byte>(m.span()), error));
        CHECK(error.code == GrantTableErrc::not_initialised);
        std::memset(m.data, 0x11, m.size);
        CHECK_FALSE(GrantTableWriter::reopen(m.span(), kKey, error));
        CHECK(error.code != GrantTableErrc::ok);
    }
    SECTION("the default capacity is a million grants in a few hundred MiB") {
        // 4M hot slots (256 MiB) + 1M details (128 MiB) + bitmaps; 2M revoked slots (64 MiB).
        const GrantTableSizes s = GrantTable::sizes(GrantTableConfig{});
        // header 4096 + bitmaps 4097 x 32 -> 139,264; + hot 268,435,456; + details
        // (2^20 + 1) x 128, rounded up to 4096.
        CHECK(s.table_bytes == 402'796'544);
        CHECK(s.revoked_set_bytes == 4096 + (uint64_t{2} << 20) * 32);
        GrantTableConfig dense;
        dense.slots_per_grant = 2;
        CHECK(GrantTable::sizes(dense).table_bytes == s.table_bytes - (uint64_t{2} << 20) * 64);
        dense.slots_per_grant = 3;
        CHECK(GrantTable::bytes_needed(dense) == 0);
        CHECK(GrantTable::format_hash() != 0);
    }
}
