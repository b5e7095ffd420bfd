// The data plane's grant table: which (service, source) may pass now. One
// writer (jitlb's main lcore) applies verified grants, revocations and expiry;
// many lock-free readers (jitlb's workers, and jitd/jitctl through a read-only
// mapping of the state file) look sources up per packet. The table and the
// revoked-id set live in caller-provided memory (the state file's grant_table
// and revoked_set sections), so that a restarted jitlb finds them again and
// checks them with a keyed MAC instead of re-verifying every signature.
//
// Layout (docs/architecture.md, "Grant table"): a hot array of 64-byte slots
// (key, deadlines in ticks, generation, and the slot's hop word: a lookup
// touches one cache line, two when its key was displaced), linear probing at
// load <= 1/4 by default, backward-shift deletion (no tombstones); a cold
// array of 128-byte details (grant id, Unix times, issuer, record hash, MAC)
// indexed by the slot's entry number; per-service bitmaps of the prefix
// lengths in use; and the revoked-id set, open addressing on the grant id.
//
// Concurrency: every shared word is an aligned u64 accessed through
// std::atomic_ref (shared_atomic.h), never a 16-byte atomic (cmpxchg16b writes,
// and faults on a read-only mapping). Each slot and detail is a seqlock; a
// table-wide relocation sequence guards the probe chains that a deletion moves
// (see GrantTableReader::lookup).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "flow.h"

namespace jitlb {

using GrantId = std::array<uint8_t, 16>;
using IssuerKeyId = std::array<uint8_t, 8>;
using RecordHash = std::array<uint8_t, 32>;
using EntryMac = std::array<uint8_t, 32>;
// The BLAKE2b key of the entries' MACs (crypto_generichash_KEYBYTES): only
// jitlb can read the file it comes from.
using GrantTableMacKey = std::array<uint8_t, 32>;

inline constexpr uint64_t kGrantTableDefaultCapacity = 1'048'576;
inline constexpr uint64_t kGrantTableMaxCapacity = uint64_t{1} << 24;  // 16M
inline constexpr uint32_t kGrantTableDefaultMaxServiceId = 4096;
inline constexpr uint32_t kGrantTableMaxServiceId = 65535;
inline constexpr uint32_t kGrantTableDefaultSlotsPerGrant = 4;
// Readers give up on an entry that stays odd (being written) this many times
// and report busy: the data plane drops and counts rather than spin.
inline constexpr unsigned kGrantTableReadRetries = 64;
// No entry sits further than this from its home slot: the writer refuses an
// insert that would (table_full), so a reader's probe is bounded even over a
// corrupt or hostile mapping. At load 1/2 a random key set never comes near.
inline constexpr unsigned kGrantTableMaxProbe = 128;
inline constexpr size_t kGrantTableMaxBurst = 32;
inline constexpr uint32_t kNoEntry = UINT32_MAX;

// What a grant covers: one service, and one address or prefix of one family.
struct GrantKey {
    uint16_t service_id = 0;
    IpVersion family = IpVersion::none;
    uint8_t prefix_len = 0;  // 0..32 (v4), 0..128 (v6)
    // Network byte order; IPv4 in bytes 0..3, bytes 4..15 zero; host bits
    // (beyond prefix_len) zero. IPv4 and IPv4-mapped IPv6 are different keys.
    std::array<uint8_t, 16> address{};
    friend bool operator==(const GrantKey&, const GrantKey&) = default;
};

// A verified grant as the table stores it.
struct GrantEntry {
    GrantKey key;
    GrantId grant_id{};
    IssuerKeyId issuer_key_id{};
    int64_t not_before_ms = 0;  // Unix time, ms
    int64_t not_after_ms = 0;   // exclusive: valid while not_before <= now < not_after
    RecordHash record_hash{};   // of the signed record: recognises an identical re-push
    friend bool operator==(const GrantEntry&, const GrantEntry&) = default;
};

struct GrantTableConfig {
    uint64_t capacity = kGrantTableDefaultCapacity;  // live grants; also sizes the revoked set
    uint32_t max_service_id = kGrantTableDefaultMaxServiceId;  // service ids 0..max_service_id
    // The data plane's timebase: ticks = Unix ms * ticks_per_second / 1000.
    // jitlb: the TSC's hz (workers compare tsc + the state header's offset);
    // tests: 1000, so that ticks are ms.
    uint64_t ticks_per_second = 1000;
    // Clock skew tolerated on not-before: a grant counts as started once
    // not_before - skew <= now, both when applied and per packet.
    int64_t skew_ms = 0;
    uint64_t hash_seed = 0;  // 0: random (randombytes_buf)
    // Hot slots per grant of capacity (2, 4 or 8): the load factor is at most
    // its inverse. 64 bytes each; fewer means less memory and more probing.
    uint32_t slots_per_grant = kGrantTableDefaultSlotsPerGrant;
};

enum class GrantTableErrc : uint8_t {
    ok,
    bad_config,       // capacity, max_service_id or ticks_per_second out of range
    too_small,        // the memory is smaller than the layout
    misaligned,       // the memory is not 64-byte aligned
    not_initialised,  // magic is zero: the writer has not created the table (yet)
    bad_magic,
    bad_version,
    bad_layout,       // sizes in the header disagree with the layout they imply
};

struct GrantTableError {
    GrantTableErrc code = GrantTableErrc::ok;
    std::string message;  // what was wrong, with the values, and what to do
};

// Where each part goes: the table and the revoked set may be two sections of
// the state file, or one span (bytes_needed) with the set at a 4096 boundary.
struct GrantTableSizes {
    uint64_t table_bytes = 0;
    uint64_t revoked_set_bytes = 0;
};

class GrantTable {
  public:
    static GrantTableSizes sizes(const GrantTableConfig& config) noexcept;
    // Both parts in one span; 0 when the config is invalid.
    static size_t bytes_needed(const GrantTableConfig& config) noexcept;
    // "" when the config is fine, else what is wrong and the allowed range.
    static std::string check_config(const GrantTableConfig& config);
    // Fingerprint of the formats (sizes and offsets of every shared struct),
    // for the state file's layout hash (grant_format_hash).
    static uint64_t format_hash() noexcept;
};

// --- reading -------------------------------------------------------------------

enum class LookupKind : uint8_t {
    granted,   // a grant valid now covers the source
    no_grant,  // no entry for the source under any prefix in use
    not_yet,   // the most specific entry found has not started (and none is valid)
    expired,   // the most specific entry found has ended (and none is valid)
    busy,      // the writer kept an entry or chain in flux for every retry: drop, count
};
std::string_view lookup_kind_name(LookupKind kind) noexcept;

// When lookup_bulk prefetches each key's home slot: right after hashing that
// key (`per_key`), or after hashing the whole burst (`after_hashing`). Which
// is faster depends on the CPU: at 1M grants an Intel Xeon VM gave 44-62 M
// bulk lookups/s per key against 31-36 after hashing (2026-12-07), an AMD
// EPYC (Zen 4) VM about 20% more after hashing (2026-12-06). `automatic`
// picks per_key on Intel and after_hashing elsewhere.
enum class PrefetchSchedule : uint8_t { automatic, per_key, after_hashing };
std::string_view prefetch_schedule_name(PrefetchSchedule s) noexcept;

// The source of a packet (FlowTuple::src) and the service it is for.
struct LookupKey {
    std::array<uint8_t, 16> address{};  // IPv4 in bytes 0..3, as FlowTuple
    uint16_t service_id = 0;
    IpVersion family = IpVersion::none;
    uint8_t pad_ = 0;
    static LookupKey from_flow(const FlowTuple& flow, uint16_t service_id) noexcept {
        return {flow.src, service_id, flow.version, 0};
    }
};
static_assert(sizeof(LookupKey) == 20);

struct LookupResult {
    LookupKind kind = LookupKind::no_grant;
    uint8_t prefix_len = 0;     // of the entry reported
    uint32_t entry = kNoEntry;  // for read_details; kNoEntry with no_grant/busy
    uint64_t generation = 0;    // of the entry: read_details returns the same one or a newer
    uint64_t not_before_tick = 0;
    uint64_t not_after_tick = 0;
};

enum class SnapshotStatus : uint8_t { ok, empty, busy, out_of_range };

// The cold half of an entry, for jitctl and jitd.
struct GrantDetails {
    uint64_t generation = 0;
    GrantId grant_id{};
    IssuerKeyId issuer_key_id{};
    int64_t not_before_ms = 0;
    int64_t not_after_ms = 0;
    RecordHash record_hash{};
    EntryMac mac{};
};

// One hot slot, as jitctl lists the table.
struct SlotSnapshot {
    GrantKey key;
    uint32_t entry = kNoEntry;
    uint64_t generation = 0;
    uint64_t not_before_tick = 0;
    uint64_t not_after_tick = 0;
};

struct GrantTableStats {
    uint64_t live_grants = 0;
    uint64_t revoked_ids = 0;
    uint64_t capacity = 0;
    uint64_t slot_count = 0;
    uint64_t inserted = 0;
    uint64_t replaced = 0;
    uint64_t unchanged = 0;
    uint64_t superseded = 0;
    uint64_t refused_revoked_id = 0;
    uint64_t refused_revoked_set_full = 0;
    uint64_t refused_table_full = 0;
    uint64_t refused_other = 0;  // invalid, duplicate_id, expired
    uint64_t removed_revoked = 0;
    uint64_t removed_expired = 0;
    uint64_t removed_issuer = 0;
    uint64_t revoked_ids_pruned = 0;
    uint64_t revocations_not_recorded = 0;  // the set was full
    int64_t lost_revocations_until_ms = 0;  // activations refused until then
};

struct ProbeStats {
    uint64_t entries = 0;
    double mean_probe = 0;  // slots read by a successful lookup, 1 = at home
    uint32_t max_probe = 0;
};

// A read-only view: works on a PROT_READ mapping; never writes, never blocks
// the writer. Cheap to copy (pointers and sizes).
class GrantTableReader {
  public:
    // Checks both headers (magic, version, sizes against the spans).
    static std::optional<GrantTableReader> attach(std::span<const std::byte> table,
                                                  std::span<const std::byte> revoked_set,
                                                  GrantTableError& error);
    // One span laid out as GrantTable::bytes_needed.
    static std::optional<GrantTableReader> attach(std::span<const std::byte> memory,
                                                  GrantTableError& error);

    // The grant covering `key` at `now_ticks`: the longest prefix in use for
    // the service whose entry is valid now; at most one probe sequence per
    // prefix length in use for that service.
    LookupResult lookup(const LookupKey& key, uint64_t now_ticks) const noexcept;
    // The same for a burst (up to kGrantTableMaxBurst keys; longer spans are
    // done in bursts): hashes every key and prefetches every home slot (in the
    // order prefetch_schedule() says), then reads them, so that the memory
    // accesses of the burst overlap.
    void lookup_bulk(std::span<const LookupKey> keys, uint64_t now_ticks,
                     std::span<LookupResult> out) const noexcept;
    // lookup_bulk's prefetch schedule (attach sets `automatic`'s choice for
    // this CPU; benchmarks set either to compare). Answers never depend on it.
    void set_prefetch_schedule(PrefetchSchedule s) noexcept;
    PrefetchSchedule prefetch_schedule() const noexcept {
        return prefetch_per_key_ ? PrefetchSchedule::per_key : PrefetchSchedule::after_hashing;
    }

    // The slot where `key`'s probe starts (diagnostics, tests).
    uint64_t home_slot(const GrantKey& key) const noexcept;
    SnapshotStatus read_details(uint32_t entry, GrantDetails& out) const noexcept;
    SnapshotStatus read_slot(uint64_t slot, SlotSnapshot& out) const noexcept;
    // true/false, or nullopt when busy.
    std::optional<bool> is_revoked(const GrantId& id) const noexcept;

    GrantTableStats stats() const noexcept;
    // Walks every slot (slow path: tests, jitctl).
    ProbeStats probe_stats() const noexcept;
    uint64_t slot_count() const noexcept { return slot_mask_ + 1; }
    uint64_t capacity() const noexcept { return capacity_; }
    uint64_t entry_count() const noexcept { return detail_count_; }
    uint64_t ticks_per_second() const noexcept;
    uint64_t ms_to_ticks(int64_t unix_ms) const noexcept;

    // The raw words of a slot (8) and an entry (16), word 0 the sequence, and
    // the relocation sequence: for tests that simulate a crash or corruption.
    const uint64_t* slot_words(uint64_t slot) const noexcept { return hot_ + slot * 8; }
    const uint64_t* entry_words(uint32_t entry) const noexcept {
        return details_ + uint64_t{entry} * 16;
    }
    const uint64_t* relocation_word() const noexcept { return relocation_; }

  private:
    friend class GrantTableWriter;
    GrantTableReader() = default;
    LookupResult lookup_once(const LookupKey& key, uint64_t now_ticks, bool& used_miss,
                             bool& busy) const noexcept;
    void lookup_burst(const LookupKey* keys, size_t n, uint64_t now_ticks,
                      LookupResult* out) const noexcept;
    // The keys of a burst that its first stages did not answer.
    uint32_t lookup_general(const LookupKey* keys, const uint8_t* general, size_t n_general,
                            uint32_t found, const uint32_t* meta, const uint64_t* a0,
                            const uint64_t* a1, const uint64_t* home, uint64_t now_ticks,
                            LookupResult* out) const noexcept;

    const std::byte* table_ = nullptr;
    const uint64_t* hot_ = nullptr;      // slot i: words [8i, 8i+8)
    const uint64_t* details_ = nullptr;  // entry i: words [16i, 16i+16)
    const uint64_t* bitmaps_ = nullptr;  // service s: words [4s, 4s+4)
    const uint64_t* relocation_ = nullptr;
    const std::byte* revoked_ = nullptr;
    const uint64_t* revoked_slots_ = nullptr;  // slot i: words [4i, 4i+4)
    const uint64_t* revoked_relocation_ = nullptr;
    uint64_t slot_mask_ = 0;
    uint64_t revoked_mask_ = 0;
    uint64_t capacity_ = 0;
    uint64_t detail_count_ = 0;
    uint64_t seed_ = 0;
    uint32_t max_service_id_ = 0;
    bool prefetch_per_key_ = false;
};

// --- writing -------------------------------------------------------------------

enum class UpsertResult : uint8_t {
    inserted,
    replaced,
    unchanged,         // same grant id and record hash as the live entry: a no-op that succeeds
    superseded,        // not started (not_before > now + skew) or does not end later than the entry
    revoked_id,        // the id is in the revoked set: it never reactivates
    revoked_set_full,  // fail closed: no new activation while revocations cannot be recorded
    table_full,        // capacity reached (never evicts a live grant)
    expired,           // not_after <= now
    duplicate_id,      // the id is live under another key, or with another record
    invalid,           // bad key (family, prefix, host bits, service id) or not_after <= not_before
};
std::string_view upsert_result_name(UpsertResult result) noexcept;
inline bool upsert_succeeded(UpsertResult r) noexcept {
    return r == UpsertResult::inserted || r == UpsertResult::replaced ||
           r == UpsertResult::unchanged;
}

enum class RevokedSetStatus : uint8_t {
    added,
    already_present,  // its not_after raised if the new one is later
    full,             // not recorded: activations are refused until its not_after
};

struct RevokeResult {
    bool entry_removed = false;
    RevokedSetStatus set = RevokedSetStatus::added;
};

struct ExpireResult {
    size_t grants_removed = 0;
    size_t ids_pruned = 0;
    bool cycle_done = false;  // the sweep reached the end of both arrays in this call
};

struct ReopenOptions {
    uint64_t ticks_per_second = 0;  // 0: keep the stored one; else deadlines are recomputed
    std::optional<int64_t> skew_ms;
    // Entries whose issuer this rejects are dropped (a key removed while jitlb was down).
    std::function<bool(const IssuerKeyId&)> keep_issuer;
    // The MAC checks (about 0.45 us each, half of a reopen's time) split into
    // `parts` ranges of slots (at most 64): run_parts(parts, part) should call
    // part(0) .. part(parts - 1), each once, in any threads, and return when
    // all have returned. A part it never ran costs time, not grants: reopen
    // checks those slots' MACs itself. Empty: reopen runs the parts in order.
    // Parts only read the table. jitlb runs them on its idle worker lcores;
    // run_parts_on_threads (below) on std::threads.
    unsigned parts = 1;
    std::function<void(unsigned parts, const std::function<void(unsigned)>& part)> run_parts;
};

// For ReopenOptions::run_parts: part(1..parts-1) on new std::threads, part(0)
// in the caller. A thread that cannot start runs its part in the caller.
void run_parts_on_threads(unsigned parts, const std::function<void(unsigned)>& part);

struct ReopenReport {
    uint64_t entries_kept = 0;
    uint64_t dropped_bad_mac = 0;      // MAC does not verify (corrupt, or another key)
    uint64_t dropped_malformed = 0;    // impossible key or entry number
    uint64_t dropped_duplicates = 0;   // a copy left by a crash in the middle of a move
    uint64_t dropped_revoked = 0;      // its id is in the revoked set
    uint64_t dropped_issuer = 0;       // keep_issuer said no
    uint64_t repaired_sequences = 0;   // seqlocks a crash left odd
    uint64_t revoked_ids_kept = 0;
    uint64_t deadlines_rewritten = 0;  // ticks recomputed from the Unix times
};

// The single writer. Not thread-safe: jitlb's main lcore only. Holds private
// indexes (grant id -> entry, entry -> slot, prefix-length counts) rebuilt by
// reopen.
class GrantTableWriter {
  public:
    static std::optional<GrantTableWriter> create(std::span<std::byte> table,
                                                  std::span<std::byte> revoked_set,
                                                  const GrantTableConfig& config,
                                                  const GrantTableMacKey& mac_key,
                                                  GrantTableError& error);
    static std::optional<GrantTableWriter> create(std::span<std::byte> memory,
                                                  const GrantTableConfig& config,
                                                  const GrantTableMacKey& mac_key,
                                                  GrantTableError& error);
    // After a restart: repairs sequences a crash left odd, verifies every
    // entry's MAC and drops (and counts) what fails, recomputes deadlines,
    // rebuilds the private indexes. About 0.7 us per entry.
    static std::optional<GrantTableWriter> reopen(std::span<std::byte> table,
                                                  std::span<std::byte> revoked_set,
                                                  const GrantTableMacKey& mac_key,
                                                  GrantTableError& error,
                                                  ReopenReport* report = nullptr,
                                                  const ReopenOptions& options = {});
    static std::optional<GrantTableWriter> reopen(std::span<std::byte> memory,
                                                  const GrantTableMacKey& mac_key,
                                                  GrantTableError& error,
                                                  ReopenReport* report = nullptr,
                                                  const ReopenOptions& options = {});

    UpsertResult upsert(const GrantEntry& entry, int64_t now_ms);
    // Records the id as revoked until not_after_ms (kept until the grant would
    // have expired) and removes the entry that holds it, even when the set is full.
    RevokeResult revoke(const GrantId& id, int64_t not_after_ms);
    // Incremental: examines at most `budget` entries and `budget` revoked-set
    // slots from where the last call stopped, removing entries whose
    // not_after <= now and pruning ids whose not_after <= now.
    ExpireResult expire(int64_t now_ms, size_t budget = 4096);
    // Removes every grant signed by `issuer` (a removed key). Walks all entries.
    size_t remove_issuer(const IssuerKeyId& issuer);

    bool is_revoked(const GrantId& id) const noexcept;
    // The entry number holding `id`, if live.
    std::optional<uint32_t> find_grant(const GrantId& id) const noexcept;
    uint64_t live_grants() const noexcept { return live_; }
    uint64_t revoked_ids() const noexcept { return revoked_count_; }
    const GrantTableReader& reader() const noexcept { return reader_; }
    const GrantTableConfig& config() const noexcept { return config_; }
    // The MAC an entry carries (exposed for tests and tools).
    EntryMac entry_mac(const GrantEntry& entry) const noexcept;

  private:
    struct Key3 {
        uint64_t meta;  // service | family << 16 | prefix_len << 24
        uint64_t a0, a1;
    };
    GrantTableWriter() = default;
    void bind(std::span<std::byte> table, std::span<std::byte> revoked_set);
    uint64_t* hot(uint64_t slot) const noexcept { return hot_ + slot * 8; }
    uint64_t* detail(uint64_t entry) const noexcept { return details_ + entry * 16; }
    uint64_t* revoked_slot(uint64_t slot) const noexcept { return revoked_slots_ + slot * 4; }
    uint64_t home_of_slot(uint64_t slot) const noexcept;
    std::optional<uint64_t> find_slot(const Key3& key) const noexcept;
    bool insert_slot(const Key3& key, uint32_t entry, uint64_t nb_tick, uint64_t na_tick,
                     uint64_t generation);
    void remove_slot(uint64_t slot, std::vector<uint8_t>* flags = nullptr);
    void write_entry(uint64_t slot, uint64_t meta_entry, uint64_t a0, uint64_t a1, uint64_t nb,
                     uint64_t na, uint64_t generation);
    void set_hop(uint64_t slot, uint64_t hop);
    void hop_update(uint64_t home, uint64_t from, uint64_t to);
    void recompute_overflow();
    void remove_entry(uint32_t entry);
    uint32_t write_detail(const GrantEntry& entry, uint64_t generation);
    void free_detail(uint32_t entry);
    GrantEntry read_entry(uint64_t slot) const noexcept;
    uint64_t nb_ticks(int64_t not_before_ms) const noexcept;
    uint64_t na_ticks(int64_t not_after_ms) const noexcept;
    void prefix_used(const Key3& key, int delta);
    void publish_counters() noexcept;
    bool revoked_set_full(int64_t now_ms) const noexcept;
    std::optional<uint64_t> find_revoked(const GrantId& id) const noexcept;
    RevokedSetStatus add_revoked(const GrantId& id, int64_t not_after_ms);
    void remove_revoked_slot(uint64_t slot);
    // grant id -> entry (private, open addressing, backward-shift deletion)
    bool id_index_put(const GrantId& id, uint32_t entry);  // false: already there
    void id_index_erase(const GrantId& id);
    std::optional<uint32_t> id_index_find(const GrantId& id) const noexcept;
    uint64_t id_index_hash(const GrantId& id) const noexcept;
    uint64_t id_index_home(uint64_t hash) const noexcept;
    GrantId detail_grant_id(uint32_t entry) const noexcept;
    static Key3 pack(const GrantKey& key) noexcept;
    bool rebuild(const GrantTableMacKey& key, ReopenReport& report, const ReopenOptions& options);
    void prefetch_for_reopen(uint64_t slot, uint64_t slots, bool ids) const noexcept;
    bool entry_mac_verifies(uint64_t slot, const GrantEntry& entry) const noexcept;

    GrantTableReader reader_;
    GrantTableConfig config_;
    GrantTableMacKey mac_key_{};
    std::byte* header_ = nullptr;
    std::byte* revoked_header_ = nullptr;
    uint64_t* hot_ = nullptr;
    uint64_t* details_ = nullptr;
    uint64_t* bitmaps_ = nullptr;
    uint64_t* revoked_slots_ = nullptr;
    uint64_t slot_mask_ = 0;
    uint64_t revoked_mask_ = 0;
    uint64_t detail_count_ = 0;
    uint64_t live_ = 0;
    uint64_t revoked_count_ = 0;
    uint64_t generation_ = 0;
    int64_t lost_revocations_until_ms_ = 0;
    uint64_t expire_cursor_ = 0;
    uint64_t prune_cursor_ = 0;
    bool expire_wrapped_ = false;
    bool prune_wrapped_ = false;
    std::vector<uint32_t> slot_of_entry_;  // kNoEntry: free
    std::vector<uint32_t> free_entries_;
    std::vector<uint64_t> id_index_;  // hash bits | entry + 1, 0 = empty (see id_index_put)
    unsigned id_index_shift_ = 64;    // a hash's position: hash >> shift
    std::vector<uint32_t> prefix_counts_;  // (service, v4 0..32 | v6 0..128)
    std::vector<uint64_t> overflow_check_;  // homes whose overflow bit may be stale
    GrantTableStats counters_;
};

}  // namespace jitlb
