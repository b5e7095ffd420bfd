// The grant table: layout, the seqlock protocol, lookups and the writer.
// docs/architecture.md ("Grant table") explains the choices.
#include "grant_table.h"

#include <sodium.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <limits>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "flow_hash.h"
#include "shared_atomic.h"

namespace jitlb {

namespace {

constexpr std::memory_order kRelaxed = std::memory_order_relaxed;
constexpr std::memory_order kAcquire = std::memory_order_acquire;
constexpr std::memory_order kRelease = std::memory_order_release;

// "JITLBGT1" and "JITLBRV1" as little-endian u64s: xxd shows the text.
constexpr uint64_t kTableMagic = 0x3154474c42544c4aull;
constexpr uint64_t kRevokedMagic = 0x3156524c42544c4aull;
constexpr uint32_t kFormatVersion = 1;
constexpr uint64_t kHeaderBytes = 4096;
constexpr uint64_t kPage = 4096;

// Words per record. Word 0 of a slot, a detail and a revoked-set slot is its
// sequence: even = stable, odd = being written.
constexpr uint64_t kSlotWords = 8;
constexpr uint64_t kDetailWords = 16;
constexpr uint64_t kRevokedWords = 4;
constexpr uint64_t kBitmapWords = 4;  // per service: v4 /0../32, v6 /0../63, /64../127, /128

// Hot slot (one cache line): 1 not_before_tick, 2 key meta | entry << 32
// (0 = empty), 3-4 address, 5 generation, 6 hop word, 7 not_after_tick. The
// deadlines come first and last in store order, so that a torn read of any
// write would pair a not_before and a not_after of different writes: what the
// torture test checks.
enum : uint64_t { kNb = 1, kMeta = 2, kA0 = 3, kA1 = 4, kGen = 5, kHop = 6, kNa = 7 };
// The hop word belongs to the slot's position, not to the entry in it: bit
// d - 1 says that slot + d holds an entry whose home is this slot (d = 1..48);
// the overflow bit, that one lies further.
constexpr unsigned kHopWindow = 48;
constexpr uint64_t kHopOverflow = uint64_t{1} << 63;
constexpr uint64_t kSlotPayload = kSlotWords - 1;
// The payload as a reader copies it: word w at index w - 1.
constexpr size_t at(uint64_t word) { return static_cast<size_t>(word - 1); }
// Detail (two lines): 1 generation (0 = free), 2-3 grant id, 4 issuer key
// id, 5 not_before_ms, 6 not_after_ms, 7-10 record hash, 11-14 MAC.
enum : uint64_t { kDGen = 1, kDId = 2, kDIssuer = 4, kDNb = 5, kDNa = 6, kDHash = 7, kDMac = 11 };
// Revoked-set slot: 1-2 grant id, 3 used bit 63 | not_after_ms (0 = empty).
constexpr uint64_t kRevokedUsed = uint64_t{1} << 63;

// Counters in the table header, written by the writer (relaxed), read by
// anyone (relaxed): statistics, not synchronisation.
enum Counter : size_t {
    c_live,
    c_revoked,
    c_inserted,
    c_replaced,
    c_unchanged,
    c_superseded,
    c_refused_revoked_id,
    c_refused_revoked_set_full,
    c_refused_table_full,
    c_refused_other,
    c_removed_revoked,
    c_removed_expired,
    c_removed_issuer,
    c_ids_pruned,
    c_not_recorded,
    c_lost_until,
    c_generation,
    c_count
};

struct alignas(64) TableHeader {
    // Written at create before the release store of magic; never changed while
    // magic is non-zero, except ticks_per_second and skew_ms by reopen
    // (relaxed: the writer's own conversion, readers only display them).
    uint64_t magic;
    uint64_t version;
    uint64_t header_bytes;
    uint64_t table_bytes;
    uint64_t capacity;
    uint64_t slot_count;
    uint64_t detail_count;
    uint64_t max_service_id;
    uint64_t hash_seed;
    uint64_t bitmaps_offset;
    uint64_t hot_offset;
    uint64_t details_offset;
    uint64_t ticks_per_second;
    uint64_t skew_ms;  // i64
    uint64_t slots_per_grant;
    uint64_t reserved0;
    // The relocation sequence (own line: readers load it per lookup). Odd
    // while a deletion moves entries along a probe chain; see lookup().
    alignas(64) uint64_t relocation_seq;
    uint64_t reserved1[7];
    alignas(64) uint64_t counters[24];
};
static_assert(sizeof(TableHeader) == 384);
static_assert(offsetof(TableHeader, table_bytes) == 24);
static_assert(offsetof(TableHeader, hash_seed) == 64);
static_assert(offsetof(TableHeader, ticks_per_second) == 96);
static_assert(offsetof(TableHeader, relocation_seq) == 128);
static_assert(offsetof(TableHeader, counters) == 192);
static_assert(c_count <= 24);

struct alignas(64) RevokedHeader {
    uint64_t magic;  // release, last at create
    uint64_t version;
    uint64_t header_bytes;
    uint64_t set_bytes;
    uint64_t capacity;
    uint64_t slot_count;
    uint64_t hash_seed;
    uint64_t reserved0;
    alignas(64) uint64_t relocation_seq;  // as TableHeader::relocation_seq
    uint64_t reserved1[7];
};
static_assert(sizeof(RevokedHeader) == 128);
static_assert(offsetof(RevokedHeader, relocation_seq) == 64);

struct Layout {
    uint64_t slot_count = 0;
    uint64_t detail_count = 0;
    uint64_t bitmaps_offset = 0;
    uint64_t hot_offset = 0;
    uint64_t details_offset = 0;
    uint64_t table_bytes = 0;
    uint64_t revoked_slot_count = 0;
    uint64_t revoked_bytes = 0;
};

constexpr uint64_t align_up(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

// The hot array has slots_per_grant slots per grant of capacity (load <= 1/4
// by default: 1.17 slots per hit; 1/2 would save 128 MiB per million grants
// for ~15% fewer bulk lookups per second); the revoked set, written and read
// off the packet path, runs at load <= 1/2.
Layout compute_layout(uint64_t capacity, uint32_t max_service_id, uint64_t slots_per_grant) {
    Layout l;
    l.slot_count = std::bit_ceil(std::max<uint64_t>(64, slots_per_grant * capacity));
    // One spare: a replacement writes its new detail before it frees the old.
    l.detail_count = capacity + 1;
    l.bitmaps_offset = kHeaderBytes;
    l.hot_offset =
        align_up(l.bitmaps_offset + (uint64_t{max_service_id} + 1) * kBitmapWords * 8, kPage);
    l.details_offset = align_up(l.hot_offset + l.slot_count * kSlotWords * 8, kPage);
    l.table_bytes = align_up(l.details_offset + l.detail_count * kDetailWords * 8, kPage);
    l.revoked_slot_count = std::bit_ceil(std::max<uint64_t>(64, 2 * capacity));
    l.revoked_bytes = align_up(kHeaderBytes + l.revoked_slot_count * kRevokedWords * 8, kPage);
    return l;
}

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// --- the seqlock ------------------------------------------------------------
//
// Per record, word 0 is the sequence and words 1..N the payload, every word an
// atomic (Boehm, "Can seqlocks get along with programming language memory
// models?", MSPC 2012; the variant with atomic payload and no fences):
//   writer: seq.store(s + 1, relaxed); payload.store(v, release) each;
//           seq.store(s + 2, release).
//   reader: s1 = seq.load(acquire); odd -> retry; payload.load(acquire) each;
//           s2 = seq.load(relaxed); s1 != s2 -> retry.
// Why it is enough: if a payload load reads a value from write k's release
// store, the odd store of write k (sequenced before it) happens-before every
// load that follows the acquire payload load, s2 included, so s2 != s1. If
// s1 was read from write j's final release store, write j's payload
// happens-before our payload loads, so none reads an older value. Hence
// s1 == s2 even means every payload word comes from write j. No standalone
// fence is used: ThreadSanitizer in clang 14 / gcc 12 ignores them. On x86 all
// of this compiles to plain movs (the orderings only constrain the compiler).
template <size_t N, size_t... I>
[[gnu::always_inline]] inline void load_payload(const uint64_t* rec, uint64_t* out,
                                                std::index_sequence<I...>) noexcept {
    ((out[I] = shared_load(rec[1 + I], kAcquire)), ...);
}

template <size_t N>
[[gnu::always_inline]] inline bool seq_read(const uint64_t* rec, uint64_t* out) noexcept {
    for (unsigned attempt = 0; attempt < kGrantTableReadRetries; ++attempt) {
        const uint64_t s1 = shared_load(rec[0], kAcquire);
        if ((s1 & 1) == 0) [[likely]] {
            load_payload<N>(rec, out, std::make_index_sequence<N>());
            if (shared_load(rec[0], kRelaxed) == s1) [[likely]] return true;
        }
        cpu_relax();
    }
    return false;
}

// The writer's side; `rec`'s sequence must be even (reopen repairs odd ones).
template <size_t N>
inline void seq_write(uint64_t* rec, const uint64_t* in) noexcept {
    const uint64_t s = shared_load(rec[0], kRelaxed);
    shared_store(rec[0], s + 1, kRelaxed);
    for (size_t i = 0; i < N; ++i) shared_store(rec[1 + i], in[i], kRelease);
    shared_store(rec[0], s + 2, kRelease);
}

// A slot's payload (words 1..7) in its store order.
inline std::array<uint64_t, kSlotPayload> slot_payload(uint64_t meta_entry, uint64_t a0,
                                                       uint64_t a1, uint64_t nb, uint64_t na,
                                                       uint64_t generation, uint64_t hop) noexcept {
    std::array<uint64_t, kSlotPayload> v{};
    v[at(kHop)] = hop;
    v[at(kNb)] = nb;
    v[at(kMeta)] = meta_entry;
    v[at(kA0)] = a0;
    v[at(kA1)] = a1;
    v[at(kGen)] = generation;
    v[at(kNa)] = na;
    return v;
}

// After a crash: an odd sequence becomes the next even one. Returns whether
// it was odd.
inline bool seq_repair(uint64_t& seq) noexcept {
    const uint64_t s = shared_load(seq, kRelaxed);
    if ((s & 1) == 0) return false;
    shared_store(seq, s + 1, kRelease);
    return true;
}

// The writer reads its own words without a seqlock (nobody else writes them);
// relaxed atomic loads keep the accesses atomic for ThreadSanitizer.
inline uint64_t own(const uint64_t& word) noexcept { return shared_load(word, kRelaxed); }

// --- keys and hashes -------------------------------------------------------------

inline uint64_t load_le64(const uint8_t* p) noexcept {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}
inline uint64_t load_le32(const uint8_t* p) noexcept {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// The first p bits (network order) of a word loaded little-endian from memory.
inline uint64_t prefix_mask64(unsigned p) noexcept {
    if (p >= 64) return ~uint64_t{0};
    return p == 0 ? 0 : __builtin_bswap64(~uint64_t{0} << (64 - p));
}

constexpr uint64_t kFamilyV4 = static_cast<uint64_t>(IpVersion::v4);
constexpr uint64_t kFamilyV6 = static_cast<uint64_t>(IpVersion::v6);

inline uint64_t make_meta(uint64_t service, uint64_t family, uint64_t prefix_len) noexcept {
    return service | family << 16 | prefix_len << 24;
}

// The compact key is hashed as bytes with the project's hash: an IPv4 key is
// one word (meta and address), an IPv6 key 20 bytes (address, then meta).
// hash_bytes written out for those two lengths, so that a burst's hashing is
// two or three multiplies and no byte buffer; a unit test pins them to
// hash_bytes (the home slots are part of the stored format).
[[gnu::always_inline]] inline uint64_t key_hash_v4_seed(uint64_t seed) noexcept {
    using namespace flow_hash_detail;
    return seed ^ kPhi ^ kSqrt3;
}

[[gnu::always_inline]] inline uint64_t key_hash_v4_seeded(uint64_t word, uint64_t seeded) noexcept {
    using namespace flow_hash_detail;
    return finish(mix(word ^ seeded, kSqrt5) ^ 8);
}

[[gnu::always_inline]] inline uint64_t key_hash_v4(uint64_t word, uint64_t seed) noexcept {
    return key_hash_v4_seeded(word, key_hash_v4_seed(seed));
}

[[gnu::always_inline]] inline uint64_t key_hash_v6(uint64_t meta, uint64_t a0, uint64_t a1,
                                                   uint64_t seed) noexcept {
    using namespace flow_hash_detail;
    const uint64_t h = mix(a0 ^ seed ^ kPhi ^ kPi, a1 ^ kE);
    return finish(mix((meta & 0xffffffff) ^ h ^ kSqrt3, kSqrt5) ^ 20);
}

[[gnu::always_inline]] inline uint64_t key_hash(uint64_t meta, uint64_t a0, uint64_t a1,
                                                uint64_t seed) noexcept {
    if (((meta >> 16) & 0xff) == kFamilyV4)
        return key_hash_v4((meta & 0xffffffff) | a0 << 32, seed);
    return key_hash_v6(meta, a0, a1, seed);
}

constexpr uint64_t kRevokedSalt = 0x7265766f6b656421;  // "revoked!"
constexpr uint64_t kIdIndexSalt = 0x69642d696e646578;  // "id-index"

inline uint64_t id_hash(uint64_t lo, uint64_t hi, uint64_t seed) noexcept {
    uint8_t bytes[16];
    std::memcpy(bytes, &lo, 8);
    std::memcpy(bytes + 8, &hi, 8);
    return hash_bytes(bytes, seed);
}

inline void id_words(const GrantId& id, uint64_t& lo, uint64_t& hi) noexcept {
    lo = load_le64(id.data());
    hi = load_le64(id.data() + 8);
}

bool valid_key(const GrantKey& k, uint32_t max_service_id) noexcept {
    if (k.service_id > max_service_id) return false;
    unsigned bits = 0;
    if (k.family == IpVersion::v4) {
        bits = 32;
        for (size_t i = 4; i < 16; ++i)
            if (k.address[i] != 0) return false;
    } else if (k.family == IpVersion::v6) {
        bits = 128;
    } else {
        return false;
    }
    if (k.prefix_len > bits) return false;
    const uint64_t a0 = load_le64(k.address.data());
    const uint64_t a1 = load_le64(k.address.data() + 8);
    const unsigned p = k.prefix_len;
    const uint64_t m0 = prefix_mask64(std::min(p, 64u));
    const uint64_t m1 = prefix_mask64(p > 64 ? p - 64 : 0);
    if (k.family == IpVersion::v4) return (a0 & ~m0 & 0xffffffff) == 0;
    return (a0 & ~m0) == 0 && (a1 & ~m1) == 0;
}

// The MAC input: a domain-separation prefix and every field of the entry in
// a fixed little-endian layout. Ticks are not covered: reopen recomputes them
// from the Unix times.
constexpr char kMacDomain[] = "jitlb-grant-table-entry-v1";

EntryMac compute_mac(const GrantTableMacKey& key, const GrantEntry& e) noexcept {
    uint8_t buf[sizeof kMacDomain + 20 + 16 + 8 + 8 + 8 + 32];
    size_t n = 0;
    auto put = [&](const void* p, size_t len) {
        std::memcpy(buf + n, p, len);
        n += len;
    };
    put(kMacDomain, sizeof kMacDomain);
    put(&e.key.service_id, 2);
    put(&e.key.family, 1);
    put(&e.key.prefix_len, 1);
    put(e.key.address.data(), 16);
    put(e.grant_id.data(), 16);
    put(e.issuer_key_id.data(), 8);
    put(&e.not_before_ms, 8);
    put(&e.not_after_ms, 8);
    put(e.record_hash.data(), 32);
    EntryMac mac;
    crypto_generichash(mac.data(), mac.size(), buf, n, key.data(), key.size());
    return mac;
}

uint64_t saturating_ticks(int64_t ms, uint64_t ticks_per_second) noexcept {
    if (ms <= 0) return 0;
    const Uint128 t = static_cast<Uint128>(static_cast<uint64_t>(ms)) * ticks_per_second / 1000;
    return t > UINT64_MAX ? UINT64_MAX : static_cast<uint64_t>(t);
}

int64_t saturating_add(int64_t a, int64_t b) noexcept {
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
    return r;
}

const TableHeader& table_header(const std::byte* p) { return *reinterpret_cast<const TableHeader*>(p); }
TableHeader& table_header(std::byte* p) { return *reinterpret_cast<TableHeader*>(p); }
const RevokedHeader& revoked_header(const std::byte* p) {
    return *reinterpret_cast<const RevokedHeader*>(p);
}
RevokedHeader& revoked_header(std::byte* p) { return *reinterpret_cast<RevokedHeader*>(p); }

bool fail(GrantTableError& error, GrantTableErrc code, std::string message) {
    error.code = code;
    error.message = std::move(message);
    return false;
}

bool check_alignment(const void* p, const char* what, GrantTableError& error) {
    if (reinterpret_cast<uintptr_t>(p) % 64 != 0)
        return fail(error, GrantTableErrc::misaligned,
                    fmt::format("grant table: {} memory at {} is not 64-byte aligned (map it, or "
                                "allocate with 64-byte alignment)",
                                what, p));
    return true;
}

// Checks both headers against each other and against the spans.
bool validate(std::span<const std::byte> table, std::span<const std::byte> revoked,
              GrantTableError& error) {
    if (!check_alignment(table.data(), "table", error) ||
        !check_alignment(revoked.data(), "revoked-set", error))
        return false;
    if (table.size() < kHeaderBytes || revoked.size() < kHeaderBytes)
        return fail(error, GrantTableErrc::too_small,
                    fmt::format("grant table: {} / {} bytes is smaller than the headers ({} each)",
                                table.size(), revoked.size(), kHeaderBytes));
    const TableHeader& h = table_header(table.data());
    const RevokedHeader& r = revoked_header(revoked.data());
    const uint64_t magic = shared_load(h.magic, kAcquire);
    const uint64_t rmagic = shared_load(r.magic, kAcquire);
    if (magic == 0 || rmagic == 0)
        return fail(error, GrantTableErrc::not_initialised,
                    "grant table: not initialised yet (jitlb creates it at start; retry)");
    if (magic != kTableMagic || rmagic != kRevokedMagic)
        return fail(error, GrantTableErrc::bad_magic,
                    fmt::format("grant table: bad magic {:016x} / {:016x} (expected {:016x} / "
                                "{:016x}): this memory holds something else",
                                magic, rmagic, kTableMagic, kRevokedMagic));
    const uint64_t version = shared_load(h.version, kRelaxed);
    const uint64_t rversion = shared_load(r.version, kRelaxed);
    if (version != kFormatVersion || rversion != kFormatVersion)
        return fail(error, GrantTableErrc::bad_version,
                    fmt::format("grant table: format version {} / {}, this build reads {} "
                                "(run the same jitlb/jitd/jitctl version)",
                                version, rversion, kFormatVersion));
    const uint64_t capacity = shared_load(h.capacity, kRelaxed);
    const uint64_t max_service_id = shared_load(h.max_service_id, kRelaxed);
    if (capacity == 0 || capacity > kGrantTableMaxCapacity || max_service_id > kGrantTableMaxServiceId)
        return fail(error, GrantTableErrc::bad_layout,
                    fmt::format("grant table: header says capacity {} and max service id {}: "
                                "corrupt",
                                capacity, max_service_id));
    const uint64_t slots_per_grant = shared_load(h.slots_per_grant, kRelaxed);
    if (slots_per_grant != 2 && slots_per_grant != 4 && slots_per_grant != 8)
        return fail(error, GrantTableErrc::bad_layout,
                    fmt::format("grant table: header says {} slots per grant: corrupt",
                                slots_per_grant));
    const Layout l = compute_layout(capacity, static_cast<uint32_t>(max_service_id), slots_per_grant);
    const bool header_ok = shared_load(h.table_bytes, kRelaxed) == l.table_bytes &&
                           shared_load(h.slot_count, kRelaxed) == l.slot_count &&
                           shared_load(h.detail_count, kRelaxed) == l.detail_count &&
                           shared_load(h.bitmaps_offset, kRelaxed) == l.bitmaps_offset &&
                           shared_load(h.hot_offset, kRelaxed) == l.hot_offset &&
                           shared_load(h.details_offset, kRelaxed) == l.details_offset &&
                           shared_load(r.capacity, kRelaxed) == capacity &&
                           shared_load(r.slot_count, kRelaxed) == l.revoked_slot_count &&
                           shared_load(r.set_bytes, kRelaxed) == l.revoked_bytes &&
                           shared_load(r.hash_seed, kRelaxed) == shared_load(h.hash_seed, kRelaxed);
    if (!header_ok)
        return fail(error, GrantTableErrc::bad_layout,
                    fmt::format("grant table: header sizes disagree with the layout of capacity "
                                "{} (corrupt, or another build)",
                                capacity));
    if (table.size() < l.table_bytes || revoked.size() < l.revoked_bytes)
        return fail(error, GrantTableErrc::too_small,
                    fmt::format("grant table: the mapping has {} + {} bytes, the table needs {} "
                                "+ {}",
                                table.size(), revoked.size(), l.table_bytes, l.revoked_bytes));
    return true;
}

uint64_t split_offset(uint64_t table_bytes) { return align_up(table_bytes, kPage); }

}  // namespace

// --- GrantTable -------------------------------------------------------------------

std::string GrantTable::check_config(const GrantTableConfig& c) {
    if (c.capacity == 0 || c.capacity > kGrantTableMaxCapacity)
        return fmt::format("grant table capacity {} is outside 1..{}", c.capacity,
                           kGrantTableMaxCapacity);
    if (c.max_service_id > kGrantTableMaxServiceId)
        return fmt::format("grant table max service id {} is above {}", c.max_service_id,
                           kGrantTableMaxServiceId);
    if (c.ticks_per_second == 0 || c.ticks_per_second > (uint64_t{1} << 40))
        return fmt::format("grant table ticks per second {} is outside 1..2^40 (give the TSC's hz)",
                           c.ticks_per_second);
    if (c.slots_per_grant != 2 && c.slots_per_grant != 4 && c.slots_per_grant != 8)
        return fmt::format("grant table slots per grant {} is not 2, 4 or 8", c.slots_per_grant);
    if (c.skew_ms < 0 || c.skew_ms > 24 * 3600 * 1000)
        return fmt::format("grant table skew {} ms is outside 0..1 day", c.skew_ms);
    return "";
}

GrantTableSizes GrantTable::sizes(const GrantTableConfig& config) noexcept {
    const Layout l = compute_layout(std::clamp<uint64_t>(config.capacity, 1, kGrantTableMaxCapacity),
                                    std::min(config.max_service_id, kGrantTableMaxServiceId),
                                    std::clamp<uint64_t>(config.slots_per_grant, 2, 8));
    return {l.table_bytes, l.revoked_bytes};
}

size_t GrantTable::bytes_needed(const GrantTableConfig& config) noexcept {
    if (!check_config(config).empty()) return 0;
    const GrantTableSizes s = sizes(config);
    return split_offset(s.table_bytes) + s.revoked_set_bytes;
}

uint64_t GrantTable::format_hash() noexcept {
    const uint64_t facts[] = {
        kTableMagic, kRevokedMagic, kFormatVersion, kHeaderBytes, kSlotWords, kDetailWords,
        kRevokedWords, kBitmapWords, sizeof(TableHeader), offsetof(TableHeader, relocation_seq),
        offsetof(TableHeader, counters), sizeof(RevokedHeader),
        offsetof(RevokedHeader, relocation_seq), kMeta, kA0, kA1, kNb, kNa, kGen, kHop, kHopWindow, kHopOverflow, kDGen, kDId,
        kDIssuer, kDNb, kDNa, kDHash, kDMac, kGrantTableMaxProbe, c_count,
    };
    uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64 over the facts' bytes
    for (const uint64_t f : facts) {
        for (int i = 0; i < 8; ++i) {
            h ^= (f >> (8 * i)) & 0xff;
            h *= 0x100000001b3ull;
        }
    }
    return h;
}

// --- GrantTableReader --------------------------------------------------------------

std::string_view lookup_kind_name(LookupKind kind) noexcept {
    switch (kind) {
        case LookupKind::granted: return "granted";
        case LookupKind::no_grant: return "no_grant";
        case LookupKind::not_yet: return "grant_not_yet_valid";
        case LookupKind::expired: return "grant_expired";
        case LookupKind::busy: return "grant_table_busy";
    }
    return "unknown";
}

std::optional<GrantTableReader> GrantTableReader::attach(std::span<const std::byte> table,
                                                         std::span<const std::byte> revoked,
                                                         GrantTableError& error) {
    if (!validate(table, revoked, error)) return std::nullopt;
    const TableHeader& h = table_header(table.data());
    GrantTableReader r;
    r.table_ = table.data();
    const auto words = [&](uint64_t offset) {
        return reinterpret_cast<const uint64_t*>(table.data() + offset);
    };
    r.bitmaps_ = words(shared_load(h.bitmaps_offset, kRelaxed));
    r.hot_ = words(shared_load(h.hot_offset, kRelaxed));
    r.details_ = words(shared_load(h.details_offset, kRelaxed));
    r.relocation_ = &h.relocation_seq;
    r.revoked_ = revoked.data();
    r.revoked_slots_ = reinterpret_cast<const uint64_t*>(revoked.data() + kHeaderBytes);
    r.revoked_relocation_ = &revoked_header(revoked.data()).relocation_seq;
    r.slot_mask_ = shared_load(h.slot_count, kRelaxed) - 1;
    r.revoked_mask_ = shared_load(revoked_header(revoked.data()).slot_count, kRelaxed) - 1;
    r.capacity_ = shared_load(h.capacity, kRelaxed);
    r.detail_count_ = shared_load(h.detail_count, kRelaxed);
    r.seed_ = shared_load(h.hash_seed, kRelaxed);
    r.max_service_id_ = static_cast<uint32_t>(shared_load(h.max_service_id, kRelaxed));
    r.set_prefetch_schedule(PrefetchSchedule::automatic);
    return r;
}

std::string_view prefetch_schedule_name(PrefetchSchedule s) noexcept {
    switch (s) {
        case PrefetchSchedule::automatic: return "automatic";
        case PrefetchSchedule::per_key: return "per_key";
        case PrefetchSchedule::after_hashing: return "after_hashing";
    }
    return "unknown";
}

void GrantTableReader::set_prefetch_schedule(PrefetchSchedule s) noexcept {
    if (s == PrefetchSchedule::automatic) {
        __builtin_cpu_init();
        s = __builtin_cpu_is("intel") ? PrefetchSchedule::per_key : PrefetchSchedule::after_hashing;
    }
    prefetch_per_key_ = s == PrefetchSchedule::per_key;
}

std::optional<GrantTableReader> GrantTableReader::attach(std::span<const std::byte> memory,
                                                         GrantTableError& error) {
    if (memory.size() < kHeaderBytes) {
        fail(error, GrantTableErrc::too_small,
             fmt::format("grant table: {} bytes is smaller than the header", memory.size()));
        return std::nullopt;
    }
    if (!check_alignment(memory.data(), "table", error)) return std::nullopt;
    if (shared_load(table_header(memory.data()).magic, kAcquire) == 0) {
        fail(error, GrantTableErrc::not_initialised,
             "grant table: not initialised yet (jitlb creates it at start; retry)");
        return std::nullopt;
    }
    const uint64_t split =
        split_offset(shared_load(table_header(memory.data()).table_bytes, kRelaxed));
    if (split == 0 || split > memory.size() - kHeaderBytes) {
        fail(error, GrantTableErrc::too_small,
             fmt::format("grant table: {} bytes cannot hold a table of {} bytes and the revoked "
                         "set (not initialised, or mapped too short)",
                         memory.size(), split));
        return std::nullopt;
    }
    return attach(memory.first(split), memory.subspan(split), error);
}

uint64_t GrantTableReader::ticks_per_second() const noexcept {
    return shared_load(table_header(table_).ticks_per_second, kRelaxed);
}

uint64_t GrantTableReader::ms_to_ticks(int64_t unix_ms) const noexcept {
    return saturating_ticks(unix_ms, ticks_per_second());
}

namespace {

// One key's progress through the prefix lengths in use for its service,
// longest first.
// Left uninitialised until start_cursor: bursts keep 32 of them on the stack.
struct PrefixCursor {
    uint64_t bits[3];  // v4: bits[0] = /0../32; v6: /0../63, /64../127, /128
    uint64_t base0, base1;
    uint64_t family;
    uint64_t service;

    // The next shorter prefix length in use, or -1.
    int next() noexcept {
        for (int w = 2; w >= 0; --w) {
            if (bits[w] != 0) {
                const uint64_t top = std::bit_floor(bits[w]);  // the longest length left in this word
                bits[w] ^= top;
                return w * 64 + std::countr_zero(top);
            }
        }
        return -1;
    }
    // Drops p and every longer length.
    void drop_from(unsigned p) noexcept {
        const unsigned w = p / 64;
        bits[w] &= (uint64_t{1} << (p % 64)) - 1;
        for (unsigned x = w + 1; x < 3; ++x) bits[x] = 0;
    }
    void key_for(unsigned p, uint64_t& meta, uint64_t& a0, uint64_t& a1) const noexcept {
        meta = make_meta(service, family, p);
        a0 = base0 & prefix_mask64(std::min(p, 64u));
        a1 = base1 & prefix_mask64(p > 64 ? p - 64 : 0);
    }
};

// False when the service has no grants of the key's family.
inline bool start_cursor(const LookupKey& k, const uint64_t* bitmaps, uint32_t max_service_id,
                         PrefixCursor& c) noexcept {
    if (k.service_id > max_service_id) return false;
    const uint64_t* bm = bitmaps + uint64_t{k.service_id} * kBitmapWords;
    c.service = k.service_id;
    if (k.family == IpVersion::v4) {
        // Bitmaps are release-published by the writer after the entry they announce.
        c.bits[0] = shared_load(bm[0], kAcquire) & ((uint64_t{1} << 33) - 1);
        c.bits[1] = c.bits[2] = 0;
        c.family = kFamilyV4;
        c.base0 = load_le32(k.address.data());
        c.base1 = 0;
        return c.bits[0] != 0;
    }
    if (k.family == IpVersion::v6) {
        c.bits[0] = shared_load(bm[1], kAcquire);
        c.bits[1] = shared_load(bm[2], kAcquire);
        c.bits[2] = shared_load(bm[3], kAcquire) & 1;
        c.family = kFamilyV6;
        c.base0 = load_le64(k.address.data());
        c.base1 = load_le64(k.address.data() + 8);
        return (c.bits[0] | c.bits[1] | c.bits[2]) != 0;
    }
    return false;
}

inline LookupKind classify(uint64_t nb, uint64_t na, uint64_t now) noexcept {
    if (now < nb) return LookupKind::not_yet;
    return now < na ? LookupKind::granted : LookupKind::expired;
}

}  // namespace

namespace {

// One key's lookup in progress: the prefix length being probed and which slot
// to read next. A probe reads the key's home slot; if the key is not there,
// the home slot's hop word names the slots (home + d, d = 1..48) that hold
// keys of this home, so a probe takes at most two rounds of reads, and a
// miss usually one. An overflow bit (a key further than 48) falls back to a
// linear walk, bounded by kGrantTableMaxProbe.
// Set up by start_cursor and next_prefix (and `used_miss`, `found` by the
// caller); not initialised otherwise, since bursts keep 32 on the stack.
struct Probe {
    PrefixCursor cursor;
    uint64_t meta, a0, a1;
    uint64_t home;
    uint64_t slot;  // the slot to read next
    uint64_t hop;   // candidates left: bit d - 1 = home + d
    uint32_t walked;
    int prefix;
    enum Phase : uint8_t { at_home, candidates, walking } phase;
    bool used_miss;  // a negative step: the answer needs the relocation check
    bool found;
};

struct Table {
    const uint64_t* hot;
    uint64_t mask;
    uint64_t seed;
};

// Moves to the next shorter prefix length in use: hash, prefetch the home
// slot. False when none is left.
[[gnu::always_inline]] inline bool next_prefix(const Table& t, Probe& b) noexcept {
    b.prefix = b.cursor.next();
    if (b.prefix < 0) return false;
    b.cursor.key_for(static_cast<unsigned>(b.prefix), b.meta, b.a0, b.a1);
    b.home = b.slot = key_hash(b.meta, b.a0, b.a1, t.seed) & t.mask;
    b.phase = Probe::at_home;
    b.walked = 0;
    __builtin_prefetch(t.hot + b.slot * kSlotWords, 0, 3);
    return true;
}

// Takes in `v`, a consistent copy of the payload of slot b.slot. Returns
// true when the key needs another slot (b.slot, prefetched), false when its
// lookup is done and `out` holds the answer.
[[gnu::always_inline]] inline bool advance(const Table& t, Probe& b, const uint64_t* v,
                                           uint64_t now, LookupResult& out) noexcept {
    const uint64_t m = v[at(kMeta)];
    if ((m & 0xffffffff) == b.meta && v[at(kA0)] == b.a0 && v[at(kA1)] == b.a1) {
        const LookupKind kind = classify(v[at(kNb)], v[at(kNa)], now);
        if (kind == LookupKind::granted || !b.found) {
            out = {kind, static_cast<uint8_t>(b.prefix), static_cast<uint32_t>(m >> 32),
                   v[at(kGen)], v[at(kNb)], v[at(kNa)]};
            b.found = true;
        }
        // Not valid now: a shorter prefix may be (an expired /32 never hides a /24).
        return kind != LookupKind::granted && next_prefix(t, b);
    }
    if (b.phase == Probe::at_home) {
        b.hop = v[at(kHop)];
        if ((b.hop & kHopOverflow) != 0) {
            b.phase = Probe::walking;
            b.walked = 0;
            b.hop = 0;
        } else {
            b.phase = Probe::candidates;
        }
    }
    if (b.phase == Probe::walking) {
        if ((b.walked != 0 && m == 0) || ++b.walked >= kGrantTableMaxProbe) {
            b.used_miss = true;
            return next_prefix(t, b);
        }
        b.slot = (b.home + b.walked) & t.mask;
    } else {
        if (b.hop == 0) {
            b.used_miss = true;
            return next_prefix(t, b);
        }
        b.slot = (b.home + static_cast<uint64_t>(std::countr_zero(b.hop)) + 1) & t.mask;
        b.hop &= b.hop - 1;
    }
    __builtin_prefetch(t.hot + b.slot * kSlotWords, 0, 3);
    return true;
}

}  // namespace

// A lookup that may have been misled by a deletion moving entries: a probe
// that ends without the key (or at the probe bound) sets used_miss, and the
// caller then checks the relocation sequence (below). A hit needs no check:
// each slot is read under its own seqlock, so a key found was really there.
LookupResult GrantTableReader::lookup_once(const LookupKey& key, uint64_t now, bool& used_miss,
                                           bool& busy) const noexcept {
    const Table t{hot_, slot_mask_, seed_};
    LookupResult out;
    Probe b{};  // single lookups only: GCC cannot see every field is set before use
    b.used_miss = b.found = false;
    if (!start_cursor(key, bitmaps_, max_service_id_, b.cursor) || !next_prefix(t, b)) return out;
    for (;;) {
        uint64_t v[kSlotPayload];
        if (!seq_read<kSlotPayload>(hot_ + b.slot * kSlotWords, v)) {
            busy = true;
            return LookupResult{.kind = LookupKind::busy};
        }
        if (!advance(t, b, v, now, out)) break;
    }
    used_miss = b.used_miss;
    return out;
}

// The relocation sequence: a deletion moves later entries of the probe chain
// back into the hole (backward shift), slot by slot, each move under the
// slots' seqlocks. A reader between two moves can miss a key that is present
// (it read the old slot before the key arrived and the new one after it
// left), so the writer makes the table's relocation_seq odd around the moves
// (same protocol as a slot: odd relaxed, slot stores release, even release),
// and a negative answer counts only if relocation_seq was even and unchanged
// across the lookup: g1 = load(acquire) first, g2 = load(relaxed) after the
// slot loads (acquire, so g2 cannot move before them).
LookupResult GrantTableReader::lookup(const LookupKey& key, uint64_t now_ticks) const noexcept {
    for (unsigned attempt = 0; attempt < kGrantTableReadRetries; ++attempt) {
        const uint64_t g1 = shared_load(*relocation_, kAcquire);
        bool used_miss = false, busy = false;
        const LookupResult r = lookup_once(key, now_ticks, used_miss, busy);
        if (busy || !used_miss) return r;
        if ((g1 & 1) == 0 && shared_load(*relocation_, kRelaxed) == g1) return r;
        cpu_relax();
    }
    return LookupResult{.kind = LookupKind::busy};
}

namespace {

constexpr uint64_t kV4Lengths = (uint64_t{1} << 33) - 1;  // bitmap word 0: /0../32
constexpr uint64_t kV4Exact = uint64_t{1} << 32;          // /32 alone
static_assert(kGrantTableMaxBurst <= 32, "a burst's per-key flags are bits of a u32");

// The first p bits (network order) of an IPv4 address loaded little-endian, p = 0..32.
inline uint64_t v4_prefix_mask(unsigned p) noexcept {
    return __builtin_bswap32(static_cast<uint32_t>(0xffffffff00000000ull >> p));
}

}  // namespace

// A burst's lookups in stages, so that the cache misses of the burst overlap:
//  1. hash every key (its longest prefix in use, from the service's bitmap
//     words), then prefetch every home slot in a loop of its own;
//  2. read the home slots in the same order: most keys are answered there; a
//     displaced key with no shorter prefix in use prefetches its one candidate,
//     read in 2b;
//  3. whatever is left (shorter prefixes, more candidates, a walk past the hop
//     window, a slot being written) goes through the general rounds.
// Why the separate prefetch loop: with each prefetch issued right after its
// key's hash (~40 instructions apart), 1M grants ran 20-30% slower; a
// prefetch that misses the TLB seems to hold the reorder buffer until its page
// walk ends, so that few lines were in flight at once.
void GrantTableReader::lookup_burst(const LookupKey* keys, size_t n, uint64_t now,
                                    LookupResult* out) const noexcept {
    // Locals, not members: stores through `out` could alias *this and would
    // make the compiler reload every member per key.
    const uint64_t* const hot = hot_;
    const uint64_t* const bitmaps = bitmaps_;
    const uint64_t mask = slot_mask_;
    const uint64_t seed = seed_;
    const uint64_t max_service_id = max_service_id_;
    const bool prefetch_per_key = prefetch_per_key_;
    // The first probe of each key (its longest prefix in use) in compact form;
    // its home slot is recorded only for the keys that go on past stage 2.
    uint32_t meta[kGrantTableMaxBurst];
    uint64_t a0[kGrantTableMaxBurst], a1[kGrantTableMaxBurst], home[kGrantTableMaxBurst];
    // The keys that stage 1 did not answer, and their home slots' lines.
    uint8_t first[kGrantTableMaxBurst];
    const uint64_t* line[kGrantTableMaxBurst];
    size_t n_first = 0;
    uint32_t multi = 0;      // keys whose service uses more than one prefix length
    uint32_t found = 0;      // keys handed to the general path with an entry found
    uint32_t used_miss = 0;  // keys whose answer rests on a negative step
    // Keys whose home slot named one candidate or more: the first is read in 2b.
    uint64_t cand_slot[kGrantTableMaxBurst], cand_hop[kGrantTableMaxBurst];
    uint8_t second[kGrantTableMaxBurst];
    size_t n_second = 0;
    uint8_t general[kGrantTableMaxBurst];
    size_t n_general = 0;
    const uint64_t g1 = shared_load(*relocation_, kAcquire);

    // Stage 1: the hashes and the prefetches (after each hash or after all of
    // them: PrefetchSchedule). A service whose only length in
    // use is /32 (IPv4) or /128 (IPv6) needs no prefix arithmetic.
    const uint64_t seed_v4 = key_hash_v4_seed(seed);
    for (size_t i = 0; i < n; ++i) {
        const LookupKey& k = keys[i];
        const uint64_t service = k.service_id;
        if (service > max_service_id) [[unlikely]] {
            out[i] = LookupResult{};
            continue;
        }
        // Bitmaps are release-published by the writer after the entry they announce.
        const uint64_t* bm = bitmaps + service * kBitmapWords;
        uint64_t hash;
        if (k.family == IpVersion::v4) {
            const uint64_t bits = shared_load(bm[0], kAcquire) & kV4Lengths;
            uint32_t m;
            uint64_t a = load_le32(k.address.data());
            if (bits == kV4Exact) [[likely]] {
                m = static_cast<uint32_t>(make_meta(service, kFamilyV4, 32));
            } else {
                if (bits == 0) {
                    out[i] = LookupResult{};
                    continue;
                }
                const unsigned p = 63u - static_cast<unsigned>(std::countl_zero(bits));
                multi |= static_cast<uint32_t>((bits & (bits - 1)) != 0) << i;
                m = static_cast<uint32_t>(make_meta(service, kFamilyV4, p));
                a &= v4_prefix_mask(p);
            }
            meta[i] = m;
            a0[i] = a;
            a1[i] = 0;
            hash = key_hash_v4_seeded(m | a << 32, seed_v4);
        } else if (k.family == IpVersion::v6) {
            const uint64_t w0 = shared_load(bm[1], kAcquire), w1 = shared_load(bm[2], kAcquire),
                           w2 = shared_load(bm[3], kAcquire) & 1;
            uint32_t m;
            uint64_t x0 = load_le64(k.address.data()), x1 = load_le64(k.address.data() + 8);
            if (w2 != 0 && (w0 | w1) == 0) [[likely]] {
                m = static_cast<uint32_t>(make_meta(service, kFamilyV6, 128));
            } else {
                if ((w0 | w1 | w2) == 0) {
                    out[i] = LookupResult{};
                    continue;
                }
                // The longest length in use; the /128 alone was the case above.
                unsigned p;
                bool one;
                if (w2 != 0) {
                    p = 128;
                    one = false;
                } else if (w1 != 0) {
                    p = 127u - static_cast<unsigned>(std::countl_zero(w1));
                    one = w0 == 0 && (w1 & (w1 - 1)) == 0;
                } else {
                    p = 63u - static_cast<unsigned>(std::countl_zero(w0));
                    one = (w0 & (w0 - 1)) == 0;
                }
                multi |= static_cast<uint32_t>(!one) << i;
                m = static_cast<uint32_t>(make_meta(service, kFamilyV6, p));
                x0 &= prefix_mask64(std::min(p, 64u));
                x1 &= prefix_mask64(p > 64 ? p - 64 : 0);
            }
            meta[i] = m;
            a0[i] = x0;
            a1[i] = x1;
            hash = key_hash_v6(m, x0, x1, seed);
        } else {
            out[i] = LookupResult{};
            continue;
        }
        line[n_first] = hot + (hash & mask) * kSlotWords;
        if (prefetch_per_key) __builtin_prefetch(line[n_first], 0, 3);
        first[n_first++] = static_cast<uint8_t>(i);
    }
    if (!prefetch_per_key)
        for (size_t f = 0; f < n_first; ++f) __builtin_prefetch(line[f], 0, 3);

    // Stage 2: the home slots. A key found there (valid, or with no shorter
    // prefix in use), or absent with no hop bits and no shorter prefix, is
    // answered now; a key with candidates and no shorter prefix goes to 2b;
    // any other to the general path. The seqlock as in seq_read, over only the
    // words needed: the key first, then the deadlines (a hit) or the hop word
    // (a miss); nothing read is used before the sequence is found unchanged.
    const auto slot_of = [hot](const uint64_t* s) {
        return static_cast<uint64_t>(s - hot) / kSlotWords;
    };
    for (size_t f = 0; f < n_first; ++f) {
        const size_t i = first[f];
        const uint64_t* s = line[f];
        const uint64_t s1 = shared_load(s[0], kAcquire);
        const uint64_t m = shared_load(s[kMeta], kAcquire);
        const uint64_t x0 = shared_load(s[kA0], kAcquire);
        const uint64_t x1 = shared_load(s[kA1], kAcquire);
        if (((static_cast<uint32_t>(m) ^ meta[i]) | (x0 ^ a0[i]) | (x1 ^ a1[i])) == 0) {
            const uint64_t nb = shared_load(s[kNb], kAcquire);
            const uint64_t na = shared_load(s[kNa], kAcquire);
            const uint64_t gen = shared_load(s[kGen], kAcquire);
            if (((s1 & 1) | (s1 ^ shared_load(s[0], kRelaxed))) != 0) [[unlikely]] {
                home[i] = slot_of(s);
                general[n_general++] = static_cast<uint8_t>(i);
                continue;
            }
            const LookupKind kind = classify(nb, na, now);
            out[i] = {
                kind, static_cast<uint8_t>(meta[i] >> 24), static_cast<uint32_t>(m >> 32), gen, nb,
                na};
            // Not valid now: a shorter prefix may be (an expired /32 never hides a /24).
            if (kind != LookupKind::granted && ((multi >> i) & 1) != 0) [[unlikely]] {
                home[i] = slot_of(s);
                found |= uint32_t{1} << i;
                general[n_general++] = static_cast<uint8_t>(i);
            }
            continue;
        }
        const uint64_t hop = shared_load(s[kHop], kAcquire);
        home[i] = slot_of(s);
        if (((s1 & 1) | (s1 ^ shared_load(s[0], kRelaxed))) != 0 || ((multi >> i) & 1) != 0 ||
            (hop & kHopOverflow) != 0) [[unlikely]] {
            general[n_general++] = static_cast<uint8_t>(i);
            continue;
        }
        if (hop == 0) {
            out[i] = LookupResult{};
            used_miss |= uint32_t{1} << i;
            continue;
        }
        cand_slot[i] = (home[i] + static_cast<uint64_t>(std::countr_zero(hop)) + 1) & mask;
        cand_hop[i] = hop & (hop - 1);
        __builtin_prefetch(hot + cand_slot[i] * kSlotWords, 0, 3);
        second[n_second++] = static_cast<uint8_t>(i);
    }
    // Stage 2b: the first candidate of each key that has one.
    for (size_t f = 0; f < n_second; ++f) {
        const size_t i = second[f];
        const uint64_t* s = hot + cand_slot[i] * kSlotWords;
        const uint64_t s1 = shared_load(s[0], kAcquire);
        const uint64_t m = shared_load(s[kMeta], kAcquire);
        const uint64_t x0 = shared_load(s[kA0], kAcquire);
        const uint64_t x1 = shared_load(s[kA1], kAcquire);
        if (((static_cast<uint32_t>(m) ^ meta[i]) | (x0 ^ a0[i]) | (x1 ^ a1[i])) == 0) {
            const uint64_t nb = shared_load(s[kNb], kAcquire);
            const uint64_t na = shared_load(s[kNa], kAcquire);
            const uint64_t gen = shared_load(s[kGen], kAcquire);
            if (((s1 & 1) | (s1 ^ shared_load(s[0], kRelaxed))) != 0) [[unlikely]] {
                general[n_general++] = static_cast<uint8_t>(i);
                continue;
            }
            out[i] = {classify(nb, na, now),
                      static_cast<uint8_t>(meta[i] >> 24),
                      static_cast<uint32_t>(m >> 32),
                      gen,
                      nb,
                      na};
            continue;
        }
        if (((s1 & 1) | (s1 ^ shared_load(s[0], kRelaxed))) != 0 || cand_hop[i] != 0) [[unlikely]] {
            general[n_general++] = static_cast<uint8_t>(i);  // more candidates: rare
            continue;
        }
        out[i] = LookupResult{};
        used_miss |= uint32_t{1} << i;
    }
    if (n_general != 0) [[unlikely]]
        used_miss |= lookup_general(keys, general, n_general, found, meta, a0, a1, home, now, out);
    // A negative step needs the relocation check (see lookup); the few keys
    // that fail it are looked up again one by one.
    if (used_miss == 0) return;
    if ((g1 & 1) == 0 && shared_load(*relocation_, kRelaxed) == g1) return;
    for (size_t i = 0; i < n; ++i)
        if ((used_miss >> i) & 1) out[i] = lookup(keys[i], now);
}

// The general path of a burst, for the keys stage 2 and 2b did not answer:
// from the key's home slot (re-read, now cached), with an entry found there
// (`found`) or not, through the shorter prefixes in rounds. Returns the keys
// whose answer rests on a negative step. Out of line: it needs 32 Probes of
// stack, and the common case never comes here.
[[gnu::noinline]] uint32_t GrantTableReader::lookup_general(
    const LookupKey* keys, const uint8_t* general, size_t n_general, uint32_t found,
    const uint32_t* meta, const uint64_t* a0, const uint64_t* a1, const uint64_t* home,
    uint64_t now, LookupResult* out) const noexcept {
    const Table t{hot_, slot_mask_, seed_};
    Probe probes[kGrantTableMaxBurst];
    uint8_t active[kGrantTableMaxBurst];
    size_t n_active = 0;
    uint32_t used_miss = 0;
    for (size_t g = 0; g < n_general; ++g) {
        const size_t i = general[g];
        const bool was_found = ((found >> i) & 1) != 0;
        if (!was_found) out[i] = LookupResult{};
        Probe& b = probes[i];
        // The bitmaps are read again: go on from the length stage 1 chose,
        // even if the longest in use has changed since.
        start_cursor(keys[i], bitmaps_, max_service_id_, b.cursor);
        b.prefix = static_cast<int>(meta[i] >> 24);
        b.cursor.drop_from(static_cast<unsigned>(b.prefix));
        b.meta = meta[i];
        b.a0 = a0[i];
        b.a1 = a1[i];
        b.home = b.slot = home[i];
        b.phase = Probe::at_home;
        b.walked = 0;
        b.used_miss = false;
        b.found = was_found;
        if (was_found ? next_prefix(t, b) : true) active[n_active++] = static_cast<uint8_t>(i);
    }
    // Rounds: each reads the slot every active key prefetched in the round
    // before and prefetches what each needs next.
    while (n_active > 0) {
        size_t still = 0;
        for (size_t a = 0; a < n_active; ++a) {
            const size_t i = active[a];
            Probe& b = probes[i];
            uint64_t v[kSlotPayload];
            if (!seq_read<kSlotPayload>(hot_ + b.slot * kSlotWords, v)) {
                out[i] = LookupResult{.kind = LookupKind::busy};
                continue;
            }
            if (advance(t, b, v, now, out[i])) active[still++] = static_cast<uint8_t>(i);
            else if (b.used_miss) used_miss |= uint32_t{1} << i;
        }
        n_active = still;
    }
    return used_miss;
}

void GrantTableReader::lookup_bulk(std::span<const LookupKey> keys, uint64_t now_ticks,
                                   std::span<LookupResult> out) const noexcept {
    const size_t n = std::min(keys.size(), out.size());
    for (size_t done = 0; done < n; done += kGrantTableMaxBurst)
        lookup_burst(keys.data() + done, std::min(kGrantTableMaxBurst, n - done), now_ticks,
                     out.data() + done);
}

uint64_t GrantTableReader::home_slot(const GrantKey& key) const noexcept {
    const uint64_t meta = make_meta(key.service_id, static_cast<uint64_t>(key.family), key.prefix_len);
    return key_hash(meta, load_le64(key.address.data()), load_le64(key.address.data() + 8), seed_) &
           slot_mask_;
}

SnapshotStatus GrantTableReader::read_details(uint32_t entry, GrantDetails& out) const noexcept {
    if (entry >= detail_count_) return SnapshotStatus::out_of_range;
    uint64_t v[kDetailWords - 1];
    if (!seq_read<kDetailWords - 1>(details_ + uint64_t{entry} * kDetailWords, v))
        return SnapshotStatus::busy;
    const auto word = [&](uint64_t index) { return v[index - 1]; };
    out.generation = word(kDGen);
    std::memcpy(out.grant_id.data(), &v[kDId - 1], 16);
    std::memcpy(out.issuer_key_id.data(), &v[kDIssuer - 1], 8);
    out.not_before_ms = static_cast<int64_t>(word(kDNb));
    out.not_after_ms = static_cast<int64_t>(word(kDNa));
    std::memcpy(out.record_hash.data(), &v[kDHash - 1], 32);
    std::memcpy(out.mac.data(), &v[kDMac - 1], 32);
    return out.generation == 0 ? SnapshotStatus::empty : SnapshotStatus::ok;
}

SnapshotStatus GrantTableReader::read_slot(uint64_t slot, SlotSnapshot& out) const noexcept {
    if (slot > slot_mask_) return SnapshotStatus::out_of_range;
    uint64_t v[kSlotPayload];
    if (!seq_read<kSlotPayload>(hot_ + slot * kSlotWords, v)) return SnapshotStatus::busy;
    const uint64_t m = v[at(kMeta)];
    if (m == 0) return SnapshotStatus::empty;
    out.key.service_id = static_cast<uint16_t>(m);
    out.key.family = static_cast<IpVersion>((m >> 16) & 0xff);
    out.key.prefix_len = static_cast<uint8_t>(m >> 24);
    std::memcpy(out.key.address.data(), &v[at(kA0)], 8);
    std::memcpy(out.key.address.data() + 8, &v[at(kA1)], 8);
    out.entry = static_cast<uint32_t>(m >> 32);
    out.not_before_tick = v[at(kNb)];
    out.not_after_tick = v[at(kNa)];
    out.generation = v[at(kGen)];
    return SnapshotStatus::ok;
}

std::optional<bool> GrantTableReader::is_revoked(const GrantId& id) const noexcept {
    uint64_t lo, hi;
    id_words(id, lo, hi);
    for (unsigned attempt = 0; attempt < kGrantTableReadRetries; ++attempt) {
        const uint64_t g1 = shared_load(*revoked_relocation_, kAcquire);
        uint64_t slot = id_hash(lo, hi, seed_ ^ kRevokedSalt) & revoked_mask_;
        for (unsigned d = 0; d < kGrantTableMaxProbe; ++d, slot = (slot + 1) & revoked_mask_) {
            uint64_t v[3];
            if (!seq_read<3>(revoked_slots_ + slot * kRevokedWords, v)) return std::nullopt;
            if (v[2] == 0) break;
            if (v[0] == lo && v[1] == hi) return true;
        }
        if ((g1 & 1) == 0 && shared_load(*revoked_relocation_, kRelaxed) == g1) return false;
        cpu_relax();
    }
    return std::nullopt;
}

GrantTableStats GrantTableReader::stats() const noexcept {
    const TableHeader& h = table_header(table_);
    const auto c = [&](Counter i) { return shared_load(h.counters[i], kRelaxed); };
    GrantTableStats s;
    s.live_grants = c(c_live);
    s.revoked_ids = c(c_revoked);
    s.capacity = capacity_;
    s.slot_count = slot_mask_ + 1;
    s.inserted = c(c_inserted);
    s.replaced = c(c_replaced);
    s.unchanged = c(c_unchanged);
    s.superseded = c(c_superseded);
    s.refused_revoked_id = c(c_refused_revoked_id);
    s.refused_revoked_set_full = c(c_refused_revoked_set_full);
    s.refused_table_full = c(c_refused_table_full);
    s.refused_other = c(c_refused_other);
    s.removed_revoked = c(c_removed_revoked);
    s.removed_expired = c(c_removed_expired);
    s.removed_issuer = c(c_removed_issuer);
    s.revoked_ids_pruned = c(c_ids_pruned);
    s.revocations_not_recorded = c(c_not_recorded);
    s.lost_revocations_until_ms = static_cast<int64_t>(c(c_lost_until));
    return s;
}

ProbeStats GrantTableReader::probe_stats() const noexcept {
    ProbeStats s;
    uint64_t total = 0;
    for (uint64_t slot = 0; slot <= slot_mask_; ++slot) {
        SlotSnapshot snap;
        if (read_slot(slot, snap) != SnapshotStatus::ok) continue;
        const uint64_t a0 = load_le64(snap.key.address.data());
        const uint64_t a1 = load_le64(snap.key.address.data() + 8);
        const uint64_t meta = make_meta(snap.key.service_id, static_cast<uint64_t>(snap.key.family),
                                        snap.key.prefix_len);
        const uint64_t home = key_hash(meta, a0, a1, seed_) & slot_mask_;
        const uint32_t probe = static_cast<uint32_t>(((slot - home) & slot_mask_) + 1);
        total += probe;
        s.max_probe = std::max(s.max_probe, probe);
        ++s.entries;
    }
    s.mean_probe = s.entries == 0 ? 0 : static_cast<double>(total) / static_cast<double>(s.entries);
    return s;
}

// --- GrantTableWriter ----------------------------------------------------------------

std::string_view upsert_result_name(UpsertResult result) noexcept {
    switch (result) {
        case UpsertResult::inserted: return "inserted";
        case UpsertResult::replaced: return "replaced";
        case UpsertResult::unchanged: return "unchanged";
        case UpsertResult::superseded: return "superseded";
        case UpsertResult::revoked_id: return "revoked";
        case UpsertResult::revoked_set_full: return "revoked_set_full";
        case UpsertResult::table_full: return "table_full";
        case UpsertResult::expired: return "expired";
        case UpsertResult::duplicate_id: return "duplicate_id";
        case UpsertResult::invalid: return "invalid";
    }
    return "unknown";
}

void GrantTableWriter::bind(std::span<std::byte> table, std::span<std::byte> revoked) {
    TableHeader& h = table_header(table.data());
    header_ = table.data();
    revoked_header_ = revoked.data();
    const auto words = [&](uint64_t offset) {
        return reinterpret_cast<uint64_t*>(table.data() + offset);
    };
    bitmaps_ = words(own(h.bitmaps_offset));
    hot_ = words(own(h.hot_offset));
    details_ = words(own(h.details_offset));
    revoked_slots_ = reinterpret_cast<uint64_t*>(revoked.data() + kHeaderBytes);
    slot_mask_ = own(h.slot_count) - 1;
    revoked_mask_ = own(revoked_header(revoked.data()).slot_count) - 1;
    detail_count_ = own(h.detail_count);
    config_.capacity = own(h.capacity);
    config_.max_service_id = static_cast<uint32_t>(own(h.max_service_id));
    config_.ticks_per_second = own(h.ticks_per_second);
    config_.skew_ms = static_cast<int64_t>(own(h.skew_ms));
    config_.hash_seed = own(h.hash_seed);
    config_.slots_per_grant = static_cast<uint32_t>(own(h.slots_per_grant));
    GrantTableError ignored;
    reader_ = *GrantTableReader::attach(table, revoked, ignored);
    slot_of_entry_.assign(detail_count_, kNoEntry);
    free_entries_.clear();
    // At most half full: 2 x capacity words (16 MiB at 1M grants).
    id_index_.assign(std::bit_ceil(std::max<uint64_t>(64, 2 * (detail_count_ - 1))), 0);
    id_index_shift_ = 64 - static_cast<unsigned>(std::countr_zero(id_index_.size()));
    prefix_counts_.assign((uint64_t{config_.max_service_id} + 1) * 162, 0);
}

std::optional<GrantTableWriter> GrantTableWriter::create(std::span<std::byte> table,
                                                         std::span<std::byte> revoked,
                                                         const GrantTableConfig& config,
                                                         const GrantTableMacKey& mac_key,
                                                         GrantTableError& error) {
    if (const std::string problem = GrantTable::check_config(config); !problem.empty()) {
        fail(error, GrantTableErrc::bad_config, problem + " (fix the configuration)");
        return std::nullopt;
    }
    if (!check_alignment(table.data(), "table", error) ||
        !check_alignment(revoked.data(), "revoked-set", error))
        return std::nullopt;
    const Layout l = compute_layout(config.capacity, config.max_service_id, config.slots_per_grant);
    if (table.size() < l.table_bytes || revoked.size() < l.revoked_bytes) {
        fail(error, GrantTableErrc::too_small,
             fmt::format("grant table: capacity {} needs {} + {} bytes, given {} + {} (size the "
                         "sections with GrantTable::sizes)",
                         config.capacity, l.table_bytes, l.revoked_bytes, table.size(),
                         revoked.size()));
        return std::nullopt;
    }
    if (sodium_init() < 0) {
        fail(error, GrantTableErrc::bad_config, "grant table: sodium_init failed");
        return std::nullopt;
    }
    TableHeader& h = table_header(table.data());
    RevokedHeader& r = revoked_header(revoked.data());
    // Unpublish first: a reader that attaches meanwhile sees not_initialised.
    shared_store(h.magic, 0, kRelease);
    shared_store(r.magic, 0, kRelease);
    std::memset(table.data() + 8, 0, l.table_bytes - 8);
    std::memset(revoked.data() + 8, 0, l.revoked_bytes - 8);
    uint64_t seed = config.hash_seed;
    while (seed == 0) randombytes_buf(&seed, sizeof seed);
    h.version = kFormatVersion;
    h.header_bytes = kHeaderBytes;
    h.table_bytes = l.table_bytes;
    h.capacity = config.capacity;
    h.slot_count = l.slot_count;
    h.detail_count = l.detail_count;
    h.max_service_id = config.max_service_id;
    h.hash_seed = seed;
    h.bitmaps_offset = l.bitmaps_offset;
    h.hot_offset = l.hot_offset;
    h.details_offset = l.details_offset;
    h.ticks_per_second = config.ticks_per_second;
    h.skew_ms = static_cast<uint64_t>(config.skew_ms);
    h.slots_per_grant = config.slots_per_grant;
    r.version = kFormatVersion;
    r.header_bytes = kHeaderBytes;
    r.set_bytes = l.revoked_bytes;
    r.capacity = config.capacity;
    r.slot_count = l.revoked_slot_count;
    r.hash_seed = seed;
    shared_store(r.magic, kRevokedMagic, kRelease);
    shared_store(h.magic, kTableMagic, kRelease);

    GrantTableWriter w;
    w.mac_key_ = mac_key;
    w.bind(table, revoked);
    for (uint64_t e = w.detail_count_; e-- > 0;) w.free_entries_.push_back(static_cast<uint32_t>(e));
    return w;
}

std::optional<GrantTableWriter> GrantTableWriter::create(std::span<std::byte> memory,
                                                         const GrantTableConfig& config,
                                                         const GrantTableMacKey& mac_key,
                                                         GrantTableError& error) {
    const size_t need = GrantTable::bytes_needed(config);
    if (need == 0) {
        fail(error, GrantTableErrc::bad_config,
             GrantTable::check_config(config) + " (fix the configuration)");
        return std::nullopt;
    }
    if (memory.size() < need) {
        fail(error, GrantTableErrc::too_small,
             fmt::format("grant table: capacity {} needs {} bytes, given {} (size it with "
                         "GrantTable::bytes_needed)",
                         config.capacity, need, memory.size()));
        return std::nullopt;
    }
    const uint64_t split = split_offset(GrantTable::sizes(config).table_bytes);
    return create(memory.first(split), memory.subspan(split), config, mac_key, error);
}

std::optional<GrantTableWriter> GrantTableWriter::reopen(std::span<std::byte> table,
                                                         std::span<std::byte> revoked,
                                                         const GrantTableMacKey& mac_key,
                                                         GrantTableError& error,
                                                         ReopenReport* report,
                                                         const ReopenOptions& options) {
    if (!validate(table, revoked, error)) return std::nullopt;
    if (sodium_init() < 0) {
        fail(error, GrantTableErrc::bad_config, "grant table: sodium_init failed");
        return std::nullopt;
    }
    GrantTableWriter w;
    w.mac_key_ = mac_key;
    w.bind(table, revoked);
    GrantTableConfig changed = w.config_;
    if (options.ticks_per_second != 0) changed.ticks_per_second = options.ticks_per_second;
    if (options.skew_ms) changed.skew_ms = *options.skew_ms;
    if (const std::string problem = GrantTable::check_config(changed); !problem.empty()) {
        fail(error, GrantTableErrc::bad_config, problem + " (fix the reopen options)");
        return std::nullopt;
    }
    ReopenReport local;
    w.rebuild(mac_key, report != nullptr ? *report : local, options);
    return w;
}

std::optional<GrantTableWriter> GrantTableWriter::reopen(std::span<std::byte> memory,
                                                         const GrantTableMacKey& mac_key,
                                                         GrantTableError& error,
                                                         ReopenReport* report,
                                                         const ReopenOptions& options) {
    if (memory.size() < kHeaderBytes) {
        fail(error, GrantTableErrc::too_small,
             fmt::format("grant table: {} bytes is smaller than the header", memory.size()));
        return std::nullopt;
    }
    if (!check_alignment(memory.data(), "table", error)) return std::nullopt;
    const uint64_t split = split_offset(own(table_header(memory.data()).table_bytes));
    if (split == 0 || split > memory.size() - kHeaderBytes) {
        fail(error, GrantTableErrc::too_small,
             fmt::format("grant table: {} bytes cannot hold a table of {} bytes and the revoked "
                         "set (not initialised, or mapped too short)",
                         memory.size(), split));
        return std::nullopt;
    }
    return reopen(memory.first(split), memory.subspan(split), mac_key, error, report, options);
}

GrantTableWriter::Key3 GrantTableWriter::pack(const GrantKey& k) noexcept {
    return {make_meta(k.service_id, static_cast<uint64_t>(k.family), k.prefix_len),
            load_le64(k.address.data()), load_le64(k.address.data() + 8)};
}

uint64_t GrantTableWriter::home_of_slot(uint64_t slot) const noexcept {
    const uint64_t* s = hot(slot);
    return key_hash(own(s[kMeta]) & 0xffffffff, own(s[kA0]), own(s[kA1]), config_.hash_seed) &
           slot_mask_;
}

std::optional<uint64_t> GrantTableWriter::find_slot(const Key3& k) const noexcept {
    uint64_t slot = key_hash(k.meta, k.a0, k.a1, config_.hash_seed) & slot_mask_;
    for (unsigned d = 0; d < kGrantTableMaxProbe; ++d, slot = (slot + 1) & slot_mask_) {
        const uint64_t* s = hot(slot);
        const uint64_t meta = own(s[kMeta]);
        if (meta == 0) return std::nullopt;
        if ((meta & 0xffffffff) == k.meta && own(s[kA0]) == k.a0 && own(s[kA1]) == k.a1)
            return slot;
    }
    return std::nullopt;
}

// The entry words of `slot` replaced, its position's hop word kept.
void GrantTableWriter::write_entry(uint64_t slot, uint64_t meta_entry, uint64_t a0, uint64_t a1,
                                   uint64_t nb, uint64_t na, uint64_t generation) {
    seq_write<kSlotPayload>(
        hot(slot),
        slot_payload(meta_entry, a0, a1, nb, na, generation, own(hot(slot)[kHop])).data());
}

void GrantTableWriter::set_hop(uint64_t slot, uint64_t hop) {
    uint64_t v[kSlotPayload];
    for (uint64_t i = 0; i < kSlotPayload; ++i) v[i] = own(hot(slot)[1 + i]);
    v[at(kHop)] = hop;
    seq_write<kSlotPayload>(hot(slot), v);
}

// An entry of `home` leaves distance `from` and/or arrives at distance `to`
// (0: not applicable; at the home itself no bit is kept).
void GrantTableWriter::hop_update(uint64_t home, uint64_t from, uint64_t to) {
    const uint64_t old = own(hot(home)[kHop]);
    uint64_t hop = old;
    if (from > kHopWindow) overflow_check_.push_back(home);
    else if (from > 0) hop &= ~(uint64_t{1} << (from - 1));
    if (to > kHopWindow) hop |= kHopOverflow;
    else if (to > 0) hop |= uint64_t{1} << (to - 1);
    if (hop != old) set_hop(home, hop);
}

// Clears the overflow bit of homes that no longer have an entry beyond the window.
void GrantTableWriter::recompute_overflow() {
    for (const uint64_t home : overflow_check_) {
        const uint64_t hop = own(hot(home)[kHop]);
        if ((hop & kHopOverflow) == 0) continue;
        bool still = false;
        for (uint64_t d = kHopWindow + 1; d < kGrantTableMaxProbe && !still; ++d) {
            const uint64_t p = (home + d) & slot_mask_;
            if (own(hot(p)[kMeta]) == 0) break;  // a home's entries never lie past a hole
            still = home_of_slot(p) == home;
        }
        if (!still) set_hop(home, hop & ~kHopOverflow);
    }
    overflow_check_.clear();
}

bool GrantTableWriter::insert_slot(const Key3& k, uint32_t entry, uint64_t nb, uint64_t na,
                                   uint64_t generation) {
    const uint64_t home = key_hash(k.meta, k.a0, k.a1, config_.hash_seed) & slot_mask_;
    for (uint64_t d = 0; d < kGrantTableMaxProbe; ++d) {
        const uint64_t slot = (home + d) & slot_mask_;
        if (own(hot(slot)[kMeta]) != 0) continue;
        // The entry first, then the hop bit: a reader that sees the bit finds it.
        write_entry(slot, k.meta | uint64_t{entry} << 32, k.a0, k.a1, nb, na, generation);
        hop_update(home, 0, d);
        slot_of_entry_[entry] = static_cast<uint32_t>(slot);
        return true;
    }
    return false;
}

// Backward-shift deletion: later entries of the chain that may live at the
// hole move back into it, so that no tombstone is left and probe lengths only
// ever depend on the live load. Readers are protected by the relocation
// sequence around the moves (see GrantTableReader::lookup). Hop words stay
// with their positions and follow the moves. `flags` (reopen's drop marks)
// move along with their entries.
void GrantTableWriter::remove_slot(uint64_t hole, std::vector<uint8_t>* flags) {
    TableHeader& h = table_header(header_);
    const uint64_t g = own(h.relocation_seq);
    const bool outer_window = (g & 1) != 0;  // reopen holds it odd throughout
    bool window = false;
    const uint64_t home0 = home_of_slot(hole);
    hop_update(home0, (hole - home0) & slot_mask_, 0);
    uint64_t j = (hole + 1) & slot_mask_;
    for (uint64_t steps = 0; steps < slot_mask_; ++steps, j = (j + 1) & slot_mask_) {
        const uint64_t meta = own(hot(j)[kMeta]);
        if (meta == 0) break;
        const uint64_t home = home_of_slot(j);
        // The entry at j may move to the hole unless its home lies in (hole, j].
        if (((j - home) & slot_mask_) < ((j - hole) & slot_mask_)) continue;
        if (!window && !outer_window) {
            // No chain passes the hole until an entry has to move over it: only
            // then can a reader be misled, so only then open the window.
            shared_store(h.relocation_seq, g + 1, kRelaxed);
            window = true;
        }
        const uint64_t* from = hot(j);
        write_entry(hole, meta, own(from[kA0]), own(from[kA1]), own(from[kNb]), own(from[kNa]),
                    own(from[kGen]));
        hop_update(home, (j - home) & slot_mask_, (hole - home) & slot_mask_);
        const uint64_t entry = meta >> 32;
        if (entry < detail_count_ && slot_of_entry_[entry] == j)
            slot_of_entry_[entry] = static_cast<uint32_t>(hole);
        if (flags != nullptr) (*flags)[hole] = (*flags)[j];
        hole = j;
    }
    write_entry(hole, 0, 0, 0, 0, 0, 0);
    if (flags != nullptr) (*flags)[hole] = 0;
    recompute_overflow();
    if (window) shared_store(h.relocation_seq, g + 2, kRelease);
}

uint32_t GrantTableWriter::write_detail(const GrantEntry& e, uint64_t generation) {
    const uint32_t entry = free_entries_.back();
    free_entries_.pop_back();
    uint64_t v[kDetailWords - 1] = {};
    const auto at = [&](uint64_t index) { return &v[index - 1]; };
    *at(kDGen) = generation;
    std::memcpy(at(kDId), e.grant_id.data(), 16);
    std::memcpy(at(kDIssuer), e.issuer_key_id.data(), 8);
    *at(kDNb) = static_cast<uint64_t>(e.not_before_ms);
    *at(kDNa) = static_cast<uint64_t>(e.not_after_ms);
    std::memcpy(at(kDHash), e.record_hash.data(), 32);
    const EntryMac mac = compute_mac(mac_key_, e);
    std::memcpy(at(kDMac), mac.data(), 32);
    seq_write<kDetailWords - 1>(detail(entry), v);
    return entry;
}

void GrantTableWriter::free_detail(uint32_t entry) {
    const uint64_t zero[kDetailWords - 1] = {};
    seq_write<kDetailWords - 1>(detail(entry), zero);
    slot_of_entry_[entry] = kNoEntry;
    free_entries_.push_back(entry);
}

// The entry in `slot` as the writer stored it (its own words, no seqlock).
GrantEntry GrantTableWriter::read_entry(uint64_t slot) const noexcept {
    const uint64_t* s = hot(slot);
    const uint64_t meta = own(s[kMeta]);
    GrantEntry e;
    e.key.service_id = static_cast<uint16_t>(meta);
    e.key.family = static_cast<IpVersion>((meta >> 16) & 0xff);
    e.key.prefix_len = static_cast<uint8_t>(meta >> 24);
    const uint64_t a[2] = {own(s[kA0]), own(s[kA1])};
    std::memcpy(e.key.address.data(), a, 16);
    const uint64_t entry = meta >> 32;
    if (entry >= detail_count_) return e;
    const uint64_t* d = detail(entry);
    uint64_t w[kDetailWords];
    for (uint64_t i = 0; i < kDetailWords; ++i) w[i] = own(d[i]);
    std::memcpy(e.grant_id.data(), &w[kDId], 16);
    std::memcpy(e.issuer_key_id.data(), &w[kDIssuer], 8);
    e.not_before_ms = static_cast<int64_t>(w[kDNb]);
    e.not_after_ms = static_cast<int64_t>(w[kDNa]);
    std::memcpy(e.record_hash.data(), &w[kDHash], 32);
    return e;
}

GrantId GrantTableWriter::detail_grant_id(uint32_t entry) const noexcept {
    const uint64_t w[2] = {own(detail(entry)[kDId]), own(detail(entry)[kDId + 1])};
    GrantId id;
    std::memcpy(id.data(), w, 16);
    return id;
}

uint64_t GrantTableWriter::nb_ticks(int64_t not_before_ms) const noexcept {
    return saturating_ticks(saturating_add(not_before_ms, -config_.skew_ms),
                            config_.ticks_per_second);
}

uint64_t GrantTableWriter::na_ticks(int64_t not_after_ms) const noexcept {
    return saturating_ticks(not_after_ms, config_.ticks_per_second);
}

// Per-service prefix-length bitmaps: a bit is set (release) after the first
// entry of that length is published and cleared after the last one is
// removed. A reader that sees a stale bitmap probes one length too many, or
// misses an entry being inserted or removed at that moment; never a wrong hit.
void GrantTableWriter::prefix_used(const Key3& k, int delta) {
    const uint64_t service = k.meta & 0xffff;
    const bool v4 = ((k.meta >> 16) & 0xff) == kFamilyV4;
    const uint64_t p = (k.meta >> 24) & 0xff;
    uint32_t& count = prefix_counts_[service * 162 + (v4 ? p : 33 + p)];
    const bool was = count != 0;
    count = static_cast<uint32_t>(static_cast<int64_t>(count) + delta);
    if (was == (count != 0)) return;
    uint64_t& word = bitmaps_[service * kBitmapWords + (v4 ? 0 : 1 + p / 64)];
    const uint64_t bit = uint64_t{1} << (v4 ? p : p % 64);
    shared_store(word, count != 0 ? own(word) | bit : own(word) & ~bit, kRelease);
}

void GrantTableWriter::publish_counters() noexcept {
    TableHeader& h = table_header(header_);
    const GrantTableStats& s = counters_;
    const uint64_t values[c_count] = {
        live_, revoked_count_, s.inserted, s.replaced, s.unchanged, s.superseded,
        s.refused_revoked_id, s.refused_revoked_set_full, s.refused_table_full, s.refused_other,
        s.removed_revoked, s.removed_expired, s.removed_issuer, s.revoked_ids_pruned,
        s.revocations_not_recorded, static_cast<uint64_t>(lost_revocations_until_ms_), generation_,
    };
    for (size_t i = 0; i < c_count; ++i)
        if (own(h.counters[i]) != values[i]) shared_store(h.counters[i], values[i], kRelaxed);
}

bool GrantTableWriter::revoked_set_full(int64_t now_ms) const noexcept {
    return revoked_count_ >= config_.capacity || now_ms < lost_revocations_until_ms_;
}

UpsertResult GrantTableWriter::upsert(const GrantEntry& e, int64_t now_ms) {
    const UpsertResult result = [&] {
        if (!valid_key(e.key, config_.max_service_id) || e.not_after_ms <= e.not_before_ms)
            return UpsertResult::invalid;
        if (is_revoked(e.grant_id)) return UpsertResult::revoked_id;
        const Key3 k = pack(e.key);
        const std::optional<uint64_t> slot = find_slot(k);
        const std::optional<uint32_t> by_id = id_index_find(e.grant_id);
        uint32_t old_entry = kNoEntry;
        if (slot) old_entry = static_cast<uint32_t>(own(hot(*slot)[kMeta]) >> 32);
        if (by_id) {
            // A grant id names one record: the same one again is a no-op.
            if (*by_id != old_entry) return UpsertResult::duplicate_id;
            const uint64_t* d = detail(old_entry);
            uint64_t stored[4];
            for (int i = 0; i < 4; ++i) stored[i] = own(d[kDHash + i]);
            if (std::memcmp(stored, e.record_hash.data(), 32) != 0) return UpsertResult::duplicate_id;
            return UpsertResult::unchanged;
        }
        if (e.not_after_ms <= now_ms) return UpsertResult::expired;
        if (e.not_before_ms > saturating_add(now_ms, config_.skew_ms)) return UpsertResult::superseded;
        if (slot && e.not_after_ms <= static_cast<int64_t>(own(detail(old_entry)[kDNa])))
            return UpsertResult::superseded;
        if (revoked_set_full(now_ms)) return UpsertResult::revoked_set_full;
        if (!slot && live_ >= config_.capacity) return UpsertResult::table_full;

        const uint64_t generation = ++generation_;
        const uint32_t entry = write_detail(e, generation);
        if (slot) {
            // In place, one seqlocked write of the slot: readers see the old
            // grant or the new one. The old detail is freed after the switch.
            const GrantId old_id = detail_grant_id(old_entry);
            write_entry(*slot, k.meta | uint64_t{entry} << 32, k.a0, k.a1,
                        nb_ticks(e.not_before_ms), na_ticks(e.not_after_ms), generation);
            slot_of_entry_[entry] = static_cast<uint32_t>(*slot);
            id_index_erase(old_id);
            free_detail(old_entry);
            id_index_put(e.grant_id, entry);
            return UpsertResult::replaced;
        }
        if (!insert_slot(k, entry, nb_ticks(e.not_before_ms), na_ticks(e.not_after_ms), generation)) {
            free_detail(entry);
            return UpsertResult::table_full;  // the probe bound: practically never
        }
        prefix_used(k, +1);
        ++live_;
        id_index_put(e.grant_id, entry);
        return UpsertResult::inserted;
    }();
    switch (result) {
        case UpsertResult::inserted: ++counters_.inserted; break;
        case UpsertResult::replaced: ++counters_.replaced; break;
        case UpsertResult::unchanged: ++counters_.unchanged; break;
        case UpsertResult::superseded: ++counters_.superseded; break;
        case UpsertResult::revoked_id: ++counters_.refused_revoked_id; break;
        case UpsertResult::revoked_set_full: ++counters_.refused_revoked_set_full; break;
        case UpsertResult::table_full: ++counters_.refused_table_full; break;
        default: ++counters_.refused_other; break;
    }
    publish_counters();
    return result;
}

void GrantTableWriter::remove_entry(uint32_t entry) {
    const uint64_t slot = slot_of_entry_[entry];
    const uint64_t meta = own(hot(slot)[kMeta]);
    const Key3 k{meta & 0xffffffff, own(hot(slot)[kA0]), own(hot(slot)[kA1])};
    const GrantId id = detail_grant_id(entry);
    remove_slot(slot);
    prefix_used(k, -1);
    id_index_erase(id);
    free_detail(entry);
    --live_;
}

RevokeResult GrantTableWriter::revoke(const GrantId& id, int64_t not_after_ms) {
    RevokeResult result;
    const std::optional<uint32_t> entry = id_index_find(id);
    if (entry) not_after_ms = std::max(not_after_ms, static_cast<int64_t>(own(detail(*entry)[kDNa])));
    // Recorded before the entry goes: a crash in between leaves an entry that
    // reopen drops because its id is revoked, never a live revoked grant.
    result.set = add_revoked(id, not_after_ms);
    if (result.set == RevokedSetStatus::full) {
        // Fail closed: the id could come back once the set has room, so no
        // grant activates until it would have expired anyway.
        lost_revocations_until_ms_ = std::max(lost_revocations_until_ms_, not_after_ms);
        ++counters_.revocations_not_recorded;
    }
    if (entry) {
        remove_entry(*entry);
        result.entry_removed = true;
        ++counters_.removed_revoked;
    }
    publish_counters();
    return result;
}

ExpireResult GrantTableWriter::expire(int64_t now_ms, size_t budget) {
    ExpireResult result;
    for (size_t i = 0; i < std::min<uint64_t>(budget, detail_count_); ++i) {
        const uint32_t entry = static_cast<uint32_t>(expire_cursor_);
        if (slot_of_entry_[entry] != kNoEntry &&
            static_cast<int64_t>(own(detail(entry)[kDNa])) <= now_ms) {
            remove_entry(entry);
            ++result.grants_removed;
        }
        if (++expire_cursor_ == detail_count_) {
            expire_cursor_ = 0;
            expire_wrapped_ = true;
        }
    }
    for (size_t i = 0; i < budget; ++i) {
        const uint64_t meta = own(revoked_slot(prune_cursor_)[3]);
        if (meta != 0 && static_cast<int64_t>(meta & ~kRevokedUsed) <= now_ms) {
            // Re-examines the same slot next: an entry may have moved into it.
            remove_revoked_slot(prune_cursor_);
            ++result.ids_pruned;
            continue;
        }
        if (++prune_cursor_ > revoked_mask_) {
            prune_cursor_ = 0;
            prune_wrapped_ = true;
        }
    }
    if (now_ms >= lost_revocations_until_ms_) lost_revocations_until_ms_ = 0;
    if (expire_wrapped_ && prune_wrapped_) {
        result.cycle_done = true;
        expire_wrapped_ = prune_wrapped_ = false;
    }
    counters_.removed_expired += result.grants_removed;
    counters_.revoked_ids_pruned += result.ids_pruned;
    publish_counters();
    return result;
}

size_t GrantTableWriter::remove_issuer(const IssuerKeyId& issuer) {
    const uint64_t wanted = load_le64(issuer.data());
    size_t removed = 0;
    for (uint32_t entry = 0; entry < detail_count_; ++entry) {
        if (slot_of_entry_[entry] == kNoEntry || own(detail(entry)[kDIssuer]) != wanted) continue;
        remove_entry(entry);
        ++removed;
    }
    counters_.removed_issuer += removed;
    publish_counters();
    return removed;
}

EntryMac GrantTableWriter::entry_mac(const GrantEntry& entry) const noexcept {
    return compute_mac(mac_key_, entry);
}

std::optional<uint32_t> GrantTableWriter::find_grant(const GrantId& id) const noexcept {
    return id_index_find(id);
}

// --- the revoked set ------------------------------------------------------------------

std::optional<uint64_t> GrantTableWriter::find_revoked(const GrantId& id) const noexcept {
    if (revoked_count_ == 0) return std::nullopt;
    uint64_t lo, hi;
    id_words(id, lo, hi);
    uint64_t slot = id_hash(lo, hi, config_.hash_seed ^ kRevokedSalt) & revoked_mask_;
    for (unsigned d = 0; d < kGrantTableMaxProbe; ++d, slot = (slot + 1) & revoked_mask_) {
        const uint64_t* s = revoked_slot(slot);
        if (own(s[3]) == 0) return std::nullopt;
        if (own(s[1]) == lo && own(s[2]) == hi) return slot;
    }
    return std::nullopt;
}

bool GrantTableWriter::is_revoked(const GrantId& id) const noexcept {
    return find_revoked(id).has_value();
}

RevokedSetStatus GrantTableWriter::add_revoked(const GrantId& id, int64_t not_after_ms) {
    uint64_t lo, hi;
    id_words(id, lo, hi);
    const uint64_t meta =
        kRevokedUsed | static_cast<uint64_t>(std::clamp<int64_t>(not_after_ms, 0, INT64_MAX >> 1));
    if (const std::optional<uint64_t> slot = find_revoked(id)) {
        if (meta > own(revoked_slot(*slot)[3])) {
            const uint64_t v[3] = {lo, hi, meta};
            seq_write<3>(revoked_slot(*slot), v);
        }
        return RevokedSetStatus::already_present;
    }
    if (revoked_count_ >= config_.capacity) return RevokedSetStatus::full;
    uint64_t slot = id_hash(lo, hi, config_.hash_seed ^ kRevokedSalt) & revoked_mask_;
    for (unsigned d = 0; d < kGrantTableMaxProbe; ++d, slot = (slot + 1) & revoked_mask_) {
        if (own(revoked_slot(slot)[3]) != 0) continue;
        const uint64_t v[3] = {lo, hi, meta};
        seq_write<3>(revoked_slot(slot), v);
        ++revoked_count_;
        return RevokedSetStatus::added;
    }
    return RevokedSetStatus::full;
}

// Backward shift, as remove_slot, under the set's own relocation sequence.
void GrantTableWriter::remove_revoked_slot(uint64_t hole) {
    RevokedHeader& h = revoked_header(revoked_header_);
    const uint64_t g = own(h.relocation_seq);
    bool window = false;
    uint64_t j = (hole + 1) & revoked_mask_;
    for (uint64_t steps = 0; steps < revoked_mask_; ++steps, j = (j + 1) & revoked_mask_) {
        const uint64_t* s = revoked_slot(j);
        if (own(s[3]) == 0) break;
        const uint64_t home = id_hash(own(s[1]), own(s[2]), config_.hash_seed ^ kRevokedSalt) &
                              revoked_mask_;
        if (((j - home) & revoked_mask_) < ((j - hole) & revoked_mask_)) continue;
        if (!window) {
            shared_store(h.relocation_seq, g + 1, kRelaxed);
            window = true;
        }
        const uint64_t v[3] = {own(s[1]), own(s[2]), own(s[3])};
        seq_write<3>(revoked_slot(hole), v);
        hole = j;
    }
    const uint64_t zero[3] = {};
    seq_write<3>(revoked_slot(hole), zero);
    if (window) shared_store(h.relocation_seq, g + 2, kRelease);
    --revoked_count_;
}

// --- the private grant id -> entry index ---------------------------------------------

// Each word: the id's hash with its low kIdEntryBits replaced by entry + 1 (0 =
// empty). The position is the hash's top bits, so the word keeps its home; and
// the other 39 bits screen a probe before it reads a detail to compare ids (a
// detail is a cache miss: reopen of 1M entries spent ~0.1 s on them).
namespace {
constexpr unsigned kIdEntryBits = 25;
constexpr uint64_t kIdEntryMask = (uint64_t{1} << kIdEntryBits) - 1;
static_assert(kGrantTableMaxCapacity + 2 <= kIdEntryMask, "entry + 1 fits below the hash bits");
static_assert(std::bit_width(2 * kGrantTableMaxCapacity) - 1 <= 64 - kIdEntryBits,
              "a position (the hash's top bits) lies within the hash bits a word keeps");
}  // namespace

uint64_t GrantTableWriter::id_index_hash(const GrantId& id) const noexcept {
    uint64_t lo, hi;
    id_words(id, lo, hi);
    return id_hash(lo, hi, config_.hash_seed ^ kIdIndexSalt);
}

uint64_t GrantTableWriter::id_index_home(uint64_t hash) const noexcept {
    return hash >> id_index_shift_;
}

std::optional<uint32_t> GrantTableWriter::id_index_find(const GrantId& id) const noexcept {
    const uint64_t h = id_index_hash(id);
    const uint64_t mask = id_index_.size() - 1;
    for (uint64_t i = id_index_home(h);; i = (i + 1) & mask) {
        const uint64_t v = id_index_[i];
        if (v == 0) return std::nullopt;
        const uint32_t entry = static_cast<uint32_t>((v & kIdEntryMask) - 1);
        if (((v ^ h) & ~kIdEntryMask) == 0 && detail_grant_id(entry) == id) return entry;
    }
}

bool GrantTableWriter::id_index_put(const GrantId& id, uint32_t entry) {
    const uint64_t h = id_index_hash(id);
    const uint64_t mask = id_index_.size() - 1;
    uint64_t i = id_index_home(h);
    for (; id_index_[i] != 0; i = (i + 1) & mask) {
        const uint64_t v = id_index_[i];
        if (((v ^ h) & ~kIdEntryMask) == 0 && detail_grant_id(static_cast<uint32_t>((v & kIdEntryMask) - 1)) == id)
            return false;
    }
    id_index_[i] = (h & ~kIdEntryMask) | (uint64_t{entry} + 1);
    return true;
}

void GrantTableWriter::id_index_erase(const GrantId& id) {
    const uint64_t h = id_index_hash(id);
    const uint64_t mask = id_index_.size() - 1;
    uint64_t hole = id_index_home(h);
    for (;; hole = (hole + 1) & mask) {
        const uint64_t v = id_index_[hole];
        if (v == 0) return;
        if (((v ^ h) & ~kIdEntryMask) == 0 && detail_grant_id(static_cast<uint32_t>((v & kIdEntryMask) - 1)) == id)
            break;
    }
    for (uint64_t j = (hole + 1) & mask; id_index_[j] != 0; j = (j + 1) & mask) {
        const uint64_t home = id_index_home(id_index_[j]);
        if (((j - home) & mask) < ((j - hole) & mask)) continue;
        id_index_[hole] = id_index_[j];
        hole = j;
    }
    id_index_[hole] = 0;
}

// Slot s holds entry e (read_entry(s), its entry number in range): does the
// MAC stored in its detail verify? Read only: reopen's parts call it too.
bool GrantTableWriter::entry_mac_verifies(uint64_t s, const GrantEntry& e) const noexcept {
    const uint64_t* d = detail(own(hot(s)[kMeta]) >> 32);
    const uint64_t m[4] = {own(d[kDMac]), own(d[kDMac + 1]), own(d[kDMac + 2]), own(d[kDMac + 3])};
    EntryMac stored;
    std::memcpy(stored.data(), m, 32);
    const EntryMac expected = compute_mac(mac_key_, e);
    return sodium_memcmp(stored.data(), expected.data(), 32) == 0;
}

void run_parts_on_threads(unsigned parts, const std::function<void(unsigned)>& part) {
    std::vector<std::thread> threads;
    std::vector<unsigned> here;  // parts no thread could take
    threads.reserve(parts);      // no allocation between starting a thread and keeping it
    here.reserve(parts);
    for (unsigned i = 1; i < parts; ++i) {
        try {
            threads.emplace_back(part, i);
        } catch (const std::exception&) {  // system_error (no thread), bad_alloc (copying part)
            here.push_back(i);
        }
    }
    part(0);
    for (const unsigned i : here) part(i);
    for (std::thread& t : threads) t.join();
}

// --- reopen ----------------------------------------------------------------------------

// Reopen sweeps the slots in order, and each entry sends it to random lines:
// its detail (two lines), then, keyed by the grant id read there, its homes in
// the id index and the revoked set. Without prefetching, each is a cache miss
// in turn (1M entries took 1.2-1.5 s). So, at slot s: the details of the
// entry kFar slots on, and the id-keyed lines of the entry kNear slots on,
// whose detail was prefetched kFar - kNear slots ago. `ids`: also the id
// index and the revoked set (pass 1; pass 3 reads details only).
void GrantTableWriter::prefetch_for_reopen(uint64_t s, uint64_t slots, bool ids) const noexcept {
    constexpr uint64_t kFar = 48, kNear = 16;
    if (s + kFar < slots) {
        const uint64_t meta = own(hot(s + kFar)[kMeta]);
        if (meta != 0 && (meta >> 32) < detail_count_) {
            __builtin_prefetch(detail(meta >> 32), 0, 3);
            __builtin_prefetch(detail(meta >> 32) + 8, 0, 3);
        }
    }
    if (!ids || s + kNear >= slots) return;
    const uint64_t meta = own(hot(s + kNear)[kMeta]);
    const uint64_t entry = meta >> 32;
    if (meta == 0 || entry >= detail_count_) return;
    const GrantId id = detail_grant_id(static_cast<uint32_t>(entry));
    __builtin_prefetch(&id_index_[id_index_home(id_index_hash(id))], 1, 3);
    __builtin_prefetch(&slot_of_entry_[entry], 1, 3);
    if (revoked_count_ != 0) {
        uint64_t lo, hi;
        id_words(id, lo, hi);
        __builtin_prefetch(revoked_slot(id_hash(lo, hi, config_.hash_seed ^ kRevokedSalt) & revoked_mask_), 0, 3);
    }
}

bool GrantTableWriter::rebuild(const GrantTableMacKey& key, ReopenReport& report,
                               const ReopenOptions& options) {
    TableHeader& h = table_header(header_);
    RevokedHeader& rh = revoked_header(revoked_header_);
    mac_key_ = key;
    if (options.ticks_per_second != 0) {
        config_.ticks_per_second = options.ticks_per_second;
        shared_store(h.ticks_per_second, config_.ticks_per_second, kRelaxed);
    }
    if (options.skew_ms) {
        config_.skew_ms = *options.skew_ms;
        shared_store(h.skew_ms, static_cast<uint64_t>(config_.skew_ms), kRelaxed);
    }
    // Hold the relocation sequence odd for the whole repair: a reader's
    // negative answer meanwhile is retried (or busy), never trusted.
    report.repaired_sequences += seq_repair(h.relocation_seq);
    report.repaired_sequences += seq_repair(rh.relocation_seq);
    const uint64_t g = own(h.relocation_seq);
    shared_store(h.relocation_seq, g + 1, kRelaxed);

    // The revoked set: keep every entry, even one a crash tore (an unknown id
    // can only refuse; dropping one could let a revoked id back).
    revoked_count_ = 0;
    for (uint64_t s = 0; s <= revoked_mask_; ++s) {
        report.repaired_sequences += seq_repair(revoked_slot(s)[0]);
        if (own(revoked_slot(s)[3]) != 0) ++revoked_count_;
    }
    report.revoked_ids_kept = revoked_count_;

    // Pass 1, read only: which slots to drop. An entry survives if its key is
    // possible, its entry number is in range and not claimed by an earlier
    // slot (a crash in the middle of a move leaves two copies), its MAC
    // verifies, its id is not revoked and its issuer is kept.
    const uint64_t slots = slot_mask_ + 1;
    std::vector<uint8_t> drop(slots, 0);
    // The MACs first, in parts (read only; each part its own range of
    // mac_ok): kMacOk or kMacBad. A slot no part examined (empty, an entry
    // number out of range, or a part run_parts never ran) stays kMacUnchecked
    // and pass 1 checks it itself.
    enum : uint8_t { kMacUnchecked = 0, kMacOk = 1, kMacBad = 2 };
    std::vector<uint8_t> mac_ok(slots, kMacUnchecked);
    {
        const unsigned parts = std::clamp(options.parts, 1u, 64u);
        const uint64_t per = (slots + parts - 1) / parts;
        const auto part = [&](unsigned i) {
            const uint64_t end = std::min(slots, (i + 1) * per);
            for (uint64_t s = i * per; s < end; ++s) {
                prefetch_for_reopen(s, end, false);
                const uint64_t meta = own(hot(s)[kMeta]);
                if (meta == 0 || (meta >> 32) >= detail_count_) continue;
                mac_ok[s] = entry_mac_verifies(s, read_entry(s)) ? kMacOk : kMacBad;
            }
        };
        if (options.run_parts && parts > 1) options.run_parts(parts, part);
        else for (unsigned i = 0; i < parts; ++i) part(i);
    }
    for (uint64_t s = 0; s < slots; ++s) {
        prefetch_for_reopen(s, slots, true);
        uint64_t* w = hot(s);
        report.repaired_sequences += seq_repair(w[0]);
        const uint64_t meta = own(w[kMeta]);
        if (meta == 0) continue;
        const GrantEntry e = read_entry(s);
        const uint64_t entry = meta >> 32;
        if (!valid_key(e.key, config_.max_service_id) || entry >= detail_count_) {
            drop[s] = 1;
            ++report.dropped_malformed;
        } else if (slot_of_entry_[entry] != kNoEntry) {
            drop[s] = 1;
            ++report.dropped_duplicates;
        } else {
            if (mac_ok[s] == kMacUnchecked) mac_ok[s] = entry_mac_verifies(s, e) ? kMacOk : kMacBad;
            if (mac_ok[s] != kMacOk) {
                drop[s] = 1;
                ++report.dropped_bad_mac;
            } else if (((s - home_of_slot(s)) & slot_mask_) >= kGrantTableMaxProbe) {
                drop[s] = 1;  // beyond any probe: unreachable
                ++report.dropped_malformed;
            } else if (is_revoked(e.grant_id)) {
                drop[s] = 1;
                ++report.dropped_revoked;
            } else if (options.keep_issuer && !options.keep_issuer(e.issuer_key_id)) {
                drop[s] = 1;
                ++report.dropped_issuer;
            } else if (!id_index_put(e.grant_id, static_cast<uint32_t>(entry))) {
                drop[s] = 1;  // the same id under two keys: keep the first
                ++report.dropped_duplicates;
            } else {
                slot_of_entry_[entry] = static_cast<uint32_t>(s);
            }
        }
    }
    // Pass 2: delete the dropped slots. Backward shift moves entries only
    // towards the hole, and `drop` moves with them, so one sweep that
    // re-examines the current slot removes them all.
    for (uint64_t s = 0; s < slots; ++s) {
        for (uint64_t guard = 0; drop[s] != 0 && guard < slots; ++guard) remove_slot(s, &drop);
    }
    // Pass 3: the survivors. Deadlines are recomputed from the MAC-covered
    // Unix times (ticks are not trusted); details get their sequence repaired
    // and the slot's generation; unused details are cleared and freed.
    // Hop words are recomputed from the entries, not trusted either.
    live_ = 0;
    generation_ = 0;
    std::vector<uint64_t> hops(slots, 0);
    for (uint64_t s = 0; s < slots; ++s) {
        if (own(hot(s)[kMeta]) == 0) continue;
        const uint64_t home = home_of_slot(s);
        const uint64_t d = (s - home) & slot_mask_;
        if (d > kHopWindow) hops[home] |= kHopOverflow;
        else if (d > 0) hops[home] |= uint64_t{1} << (d - 1);
    }
    for (uint64_t s = 0; s < slots; ++s) {
        prefetch_for_reopen(s, slots, false);
        uint64_t* w = hot(s);
        const uint64_t meta = own(w[kMeta]);
        if (meta == 0) {
            if (own(w[kHop]) != hops[s]) set_hop(s, hops[s]);
            continue;
        }
        const uint32_t entry = static_cast<uint32_t>(meta >> 32);
        slot_of_entry_[entry] = static_cast<uint32_t>(s);
        const GrantEntry e = read_entry(s);
        const uint64_t nb = nb_ticks(e.not_before_ms), na = na_ticks(e.not_after_ms);
        const uint64_t generation = own(w[kGen]);
        if (own(w[kNb]) != nb || own(w[kNa]) != na || own(w[kHop]) != hops[s]) {
            if (own(w[kNb]) != nb || own(w[kNa]) != na) ++report.deadlines_rewritten;
            seq_write<kSlotPayload>(w, slot_payload(meta, own(w[kA0]), own(w[kA1]), nb, na,
                                                    generation, hops[s])
                                           .data());
        }
        uint64_t* d = detail(entry);
        report.repaired_sequences += seq_repair(d[0]);
        if (own(d[kDGen]) != generation) {
            uint64_t v[kDetailWords - 1];
            for (uint64_t i = 0; i < kDetailWords - 1; ++i) v[i] = own(d[1 + i]);
            v[kDGen - 1] = generation;
            seq_write<kDetailWords - 1>(d, v);
        }
        generation_ = std::max(generation_, generation);
        const Key3 k{meta & 0xffffffff, own(w[kA0]), own(w[kA1])};
        const uint64_t service = k.meta & 0xffff;
        const bool v4 = ((k.meta >> 16) & 0xff) == kFamilyV4;
        const uint64_t p = (k.meta >> 24) & 0xff;
        ++prefix_counts_[service * 162 + (v4 ? p : 33 + p)];
        ++live_;
    }
    for (uint64_t entry = detail_count_; entry-- > 0;) {
        if (slot_of_entry_[entry] != kNoEntry) continue;
        uint64_t* d = detail(entry);
        report.repaired_sequences += seq_repair(d[0]);
        bool dirty = false;
        for (uint64_t i = 1; i < kDetailWords; ++i) dirty |= own(d[i]) != 0;
        if (dirty) {
            const uint64_t zero[kDetailWords - 1] = {};
            seq_write<kDetailWords - 1>(d, zero);
        }
        free_entries_.push_back(static_cast<uint32_t>(entry));
    }
    // The bitmaps, from the counts.
    for (uint64_t service = 0; service <= config_.max_service_id; ++service) {
        uint64_t words[kBitmapWords] = {};
        for (uint64_t p = 0; p <= 32; ++p)
            if (prefix_counts_[service * 162 + p] != 0) words[0] |= uint64_t{1} << p;
        for (uint64_t p = 0; p <= 128; ++p)
            if (prefix_counts_[service * 162 + 33 + p] != 0) words[1 + p / 64] |= uint64_t{1} << (p % 64);
        for (uint64_t i = 0; i < kBitmapWords; ++i) {
            uint64_t& word = bitmaps_[service * kBitmapWords + i];
            if (own(word) != words[i]) shared_store(word, words[i], kRelease);
        }
    }
    report.entries_kept = live_;
    // Counters survive restarts, except what was just recounted.
    const auto c = [&](Counter i) { return own(h.counters[i]); };
    counters_.inserted = c(c_inserted);
    counters_.replaced = c(c_replaced);
    counters_.unchanged = c(c_unchanged);
    counters_.superseded = c(c_superseded);
    counters_.refused_revoked_id = c(c_refused_revoked_id);
    counters_.refused_revoked_set_full = c(c_refused_revoked_set_full);
    counters_.refused_table_full = c(c_refused_table_full);
    counters_.refused_other = c(c_refused_other);
    counters_.removed_revoked = c(c_removed_revoked);
    counters_.removed_expired = c(c_removed_expired);
    counters_.removed_issuer = c(c_removed_issuer);
    counters_.revoked_ids_pruned = c(c_ids_pruned);
    counters_.revocations_not_recorded = c(c_not_recorded);
    lost_revocations_until_ms_ = static_cast<int64_t>(c(c_lost_until));
    generation_ = std::max(generation_, c(c_generation));
    publish_counters();
    shared_store(h.relocation_seq, g + 2, kRelease);
    return true;
}

}  // namespace jitlb
