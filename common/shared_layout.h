// The layout of the two region files (docs/shared-region.md): their headers,
// where each section lies, the layout hash that keeps builds apart, the
// service name -> id map and the backend counter-slot map. Writers lay their own file out (or re-use it after a
// restart) with start_*_region; readers check a peer's header and recompute
// its layout with attach_*_region before reading anything else.
//
// Every struct here has one writer, a fixed layout (static_asserts below) and
// is read by other processes through a read-only mapping; each field says who
// writes it and how it is read.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "flow.h"
#include "shared_atomic.h"
#include "spsc_ring.h"

namespace jitlb {

inline constexpr uint32_t kRegionAbiVersion = 1;
// "JITLBCMD" and "JITLBSTA" as little-endian u64s: xxd shows the text.
inline constexpr uint64_t kCmdMagic = 0x444d43424c54494aull;
inline constexpr uint64_t kStateMagic = 0x415453424c54494aull;
inline constexpr uint32_t kRegionHeaderBytes = 512;
inline constexpr uint32_t kMaxRegionSections = 12;
inline constexpr uint64_t kSectionAlign = 64;        // every section: a cache line
inline constexpr uint64_t kPageSectionAlign = 4096;  // grant table, revoked set, service tables

// Service names: 1..31 bytes of [A-Za-z0-9._-], so the map's 32-byte field
// always ends in a NUL. A grant's service name must obey the same rule.
inline constexpr size_t kMaxServiceNameLen = 31;
inline constexpr uint32_t kMaxServiceCapacity = 65535;  // ids 1..65535 fit a u16

inline constexpr uint32_t kDefaultCmdRingSlots = 4096;    // x 256 B = 1 MiB
inline constexpr uint32_t kDefaultEventRingSlots = 4096;  // x 256 B = 1 MiB
inline constexpr uint32_t kDefaultWorkerStatsLines = 512;
inline constexpr uint32_t kDefaultServiceCapacity = 1024;
// Per-backend counter slots (docs/counters.md): one per backend of any service.
inline constexpr uint32_t kDefaultBackendCapacity = 4096;
inline constexpr uint32_t kMaxBackendCapacity = 65536;
inline constexpr size_t kMaxBackendIdBytes = 63;  // messages.h kMaxBackendIdLen
// Bounds that keep every sum far from overflow; headers beyond them are corrupt.
inline constexpr uint64_t kMaxGrantTableBytes = uint64_t{64} << 30;
inline constexpr uint64_t kMaxRevokedSetBytes = uint64_t{64} << 30;
inline constexpr uint64_t kMaxServiceTablesBytes = uint64_t{16} << 30;
inline constexpr uint32_t kMaxWorkerStatsLines = 1u << 21;

bool valid_service_name(std::string_view name) noexcept;

// --- headers --------------------------------------------------------------------

struct RegionSection {
    uint64_t offset;
    uint64_t bytes;
    friend bool operator==(const RegionSection&, const RegionSection&) = default;
};
static_assert(sizeof(RegionSection) == 16);

// Both files start with this. "init" fields are plain stores made before the
// release store of `magic` and never change while magic is non-zero; readers
// load magic (acquire) first.
struct RegionHeader {
    uint64_t magic;            // writer: last at init, release (0 first on re-init)
    uint32_t abi_version;      // init: kRegionAbiVersion
    uint32_t header_bytes;     // init: kRegionHeaderBytes
    uint64_t layout_hash;      // init: cmd_layout_hash() / state_layout_hash()
    uint64_t total_bytes;      // init: the layout's total (the file may be longer)
    uint64_t epoch;            // every writer start: random, never 0, release; readers acquire
    uint64_t started_unix_ms;  // every start, before epoch (relaxed atomic)
    uint32_t writer_pid;       // every start, before epoch
    uint32_t section_count;    // init
    uint64_t reserved;         // 0
    RegionSection sections[kMaxRegionSections];  // init: offsets and sizes, by section enum
};
static_assert(sizeof(RegionHeader) == 256);
static_assert(offsetof(RegionHeader, abi_version) == 8);
static_assert(offsetof(RegionHeader, layout_hash) == 16);
static_assert(offsetof(RegionHeader, total_bytes) == 24);
static_assert(offsetof(RegionHeader, epoch) == 32);
static_assert(offsetof(RegionHeader, started_unix_ms) == 40);
static_assert(offsetof(RegionHeader, writer_pid) == 48);
static_assert(offsetof(RegionHeader, section_count) == 52);
static_assert(offsetof(RegionHeader, sections) == 64);

enum class CmdSection : uint32_t { cmd_producer = 0, event_consumer, cmd_slots, count_ };
enum class StateSection : uint32_t {
    service_map = 0,
    cmd_consumer,
    event_producer,
    event_slots,
    worker_stats,
    grant_table,
    revoked_set,
    service_tables,
    backend_map,
    count_
};
static_assert(static_cast<uint32_t>(StateSection::count_) <= kMaxRegionSections);

// The cmd file's header; written by jitd.
struct alignas(64) CmdHeader {
    RegionHeader region;      // magic kCmdMagic
    uint32_t cmd_ring_slots;  // init
    uint32_t slot_bytes;      // init: kRingSlotBytes
    uint8_t reserved[248];
};
static_assert(sizeof(CmdHeader) == kRegionHeaderBytes);
static_assert(offsetof(CmdHeader, cmd_ring_slots) == 256);
static_assert(offsetof(CmdHeader, slot_bytes) == 260);

// The state file's header; written by jitlb's main lcore.
struct alignas(64) StateHeader {
    RegionHeader region;            // magic kStateMagic
    uint64_t grant_table_bytes;     // init (the grant-table module's size)
    uint64_t revoked_set_bytes;     // init
    uint64_t service_tables_bytes;  // init
    uint64_t grant_format_hash;     // init: mixed into layout_hash
    uint32_t event_ring_slots;      // init
    uint32_t slot_bytes;            // init: kRingSlotBytes
    uint32_t worker_stats_lines;    // init
    uint32_t service_capacity;      // init
    uint64_t tsc_hz;                // every start, before epoch: TSC ticks per second
    uint32_t backend_capacity;      // init: backend counter slots (0: none)
    uint32_t reserved0;
    // Own cache line: written every tick; workers never read it.
    alignas(64) uint64_t heartbeat_unix_ms;  // main lcore, release; readers acquire
    uint64_t service_map_generation;         // main lcore, release after each map change
    uint64_t backend_map_generation;         // main lcore, release after each backend map change
    uint64_t reserved1[5];
    // Own cache line: workers read it every burst, the main lcore writes it rarely.
    alignas(64) uint64_t clock_offset_ticks;  // i64 as u64; release; workers acquire
    uint64_t reserved2[15];
};
static_assert(sizeof(StateHeader) == kRegionHeaderBytes);
static_assert(offsetof(StateHeader, grant_table_bytes) == 256);
static_assert(offsetof(StateHeader, revoked_set_bytes) == 264);
static_assert(offsetof(StateHeader, service_tables_bytes) == 272);
static_assert(offsetof(StateHeader, grant_format_hash) == 280);
static_assert(offsetof(StateHeader, event_ring_slots) == 288);
static_assert(offsetof(StateHeader, slot_bytes) == 292);
static_assert(offsetof(StateHeader, worker_stats_lines) == 296);
static_assert(offsetof(StateHeader, service_capacity) == 300);
static_assert(offsetof(StateHeader, tsc_hz) == 304);
static_assert(offsetof(StateHeader, backend_capacity) == 312);
static_assert(offsetof(StateHeader, heartbeat_unix_ms) == 320);
static_assert(offsetof(StateHeader, service_map_generation) == 328);
static_assert(offsetof(StateHeader, backend_map_generation) == 336);
static_assert(offsetof(StateHeader, clock_offset_ticks) == 384);
static_assert(kRegionHeaderBytes <= 512, "shared_file.h: kMinRegionFileBytes");

// One service of the name -> id map; service id = index + 1. Published by a
// per-entry seqlock (one entry changes at a time, rarely, and readers are jitd
// and jitctl, so a double-buffered map would buy nothing). Every word is a
// u64 so that it can be accessed as an atomic: writer stores the payload with
// release between an odd and an even seq; readers load seq (acquire), payload
// (acquire), seq (relaxed). See docs/shared-region.md for why that is enough.
struct alignas(64) ServiceMapEntry {
    uint64_t seq;           // even: stable; odd: being written
    uint64_t id_and_flags;  // service id (low 32 bits, 0 = free), flags (high 32, 0)
    uint64_t name[4];       // 32 bytes in memory order, NUL-padded
    uint64_t generation;    // bumped each time the service's configuration is applied
    uint64_t reserved;
};
static_assert(sizeof(ServiceMapEntry) == 64);
static_assert(offsetof(ServiceMapEntry, id_and_flags) == 8);
static_assert(offsetof(ServiceMapEntry, name) == 16);
static_assert(offsetof(ServiceMapEntry, generation) == 48);

// One per-backend counter slot: which backend of which service the slot's
// counters (in every worker's stats block) count now. The main lcore assigns a
// slot when a backend_set brings a backend, keeps it while the backend stays
// (by id), frees it when the backend or its service goes, and hands it out
// again only once no worker can still count into it (service snapshot
// quiescence). The counters of a slot are never reset (each worker's block has
// one writer, the worker): a slot records the sum of its counters when it was
// assigned, and readers subtract that baseline. Same seqlock as ServiceMapEntry.
struct alignas(64) BackendMapEntry {
    uint64_t seq;                 // even: stable; odd: being written
    uint64_t service_and_family;  // service id (low 32 bits, 0 = free slot), IpVersion (bits 32..39)
    uint64_t baseline_packets;    // the slot's packets, summed over the blocks, when assigned
    uint64_t baseline_bytes;
    uint64_t address[2];          // 16 bytes in memory order (IPv4: the first 4)
    uint64_t weight;              // the backend's weight (0: draining)
    uint64_t reserved;
    uint64_t id[8];               // the backend id, 64 bytes NUL-padded (1..63 bytes)
};
static_assert(sizeof(BackendMapEntry) == 128);
static_assert(offsetof(BackendMapEntry, service_and_family) == 8);
static_assert(offsetof(BackendMapEntry, baseline_packets) == 16);
static_assert(offsetof(BackendMapEntry, baseline_bytes) == 24);
static_assert(offsetof(BackendMapEntry, address) == 32);
static_assert(offsetof(BackendMapEntry, weight) == 48);
static_assert(offsetof(BackendMapEntry, id) == 64);

// --- sizes and layouts ------------------------------------------------------

struct CmdSizes {
    uint32_t cmd_ring_slots = kDefaultCmdRingSlots;
    friend bool operator==(const CmdSizes&, const CmdSizes&) = default;
};

struct StateSizes {
    uint64_t grant_table_bytes = 0;     // given by the grant-table module
    uint64_t revoked_set_bytes = 0;     // given by the grant-table module
    uint64_t service_tables_bytes = 0;  // the data plane's double-buffered tables
    uint64_t grant_format_hash = 0;     // fingerprint of the grant table's format
    uint32_t event_ring_slots = kDefaultEventRingSlots;
    uint32_t worker_stats_lines = kDefaultWorkerStatsLines;
    uint32_t service_capacity = kDefaultServiceCapacity;
    uint32_t backend_capacity = kDefaultBackendCapacity;
    friend bool operator==(const StateSizes&, const StateSizes&) = default;
};

struct CmdLayout {
    CmdSizes sizes;
    RegionSection header;
    RegionSection cmd_producer;    // RingProducerControl
    RegionSection event_consumer;  // RingConsumerControl
    RegionSection cmd_slots;
    uint64_t total_bytes = 0;  // a multiple of 4096
    uint64_t layout_hash = 0;
    friend bool operator==(const CmdLayout&, const CmdLayout&) = default;
};

struct StateLayout {
    StateSizes sizes;
    RegionSection header;
    RegionSection service_map;     // service_capacity x ServiceMapEntry
    RegionSection cmd_consumer;    // RingConsumerControl
    RegionSection event_producer;  // RingProducerControl
    RegionSection event_slots;
    RegionSection worker_stats;    // 64-byte lines, one writer each
    RegionSection grant_table;     // 4096-aligned
    RegionSection revoked_set;     // 4096-aligned
    RegionSection service_tables;  // 4096-aligned
    RegionSection backend_map;     // backend_capacity x BackendMapEntry
    uint64_t total_bytes = 0;      // a multiple of 4096
    uint64_t layout_hash = 0;
    friend bool operator==(const StateLayout&, const StateLayout&) = default;
};

// What is wrong with the sizes ("event_ring_slots 1000 is not a power of two
// in [64, 1048576]"), or "" when they are fine.
std::string check_cmd_sizes(const CmdSizes& sizes);
std::string check_state_sizes(const StateSizes& sizes);
// The one definition of each file's layout. RegionError(bad_argument) when
// the sizes fail the checks above.
CmdLayout compute_cmd_layout(const CmdSizes& sizes);
StateLayout compute_state_layout(const StateSizes& sizes);

// The layout hash: FNV-1a 64 with a splitmix64 finish over `facts`.
uint64_t hash_layout_facts(std::span<const uint64_t> facts) noexcept;
// This build's facts: ABI, magics, sizeof and offsetof of every shared struct,
// ring and service limits, and the message catalogue (types, versions, limits).
std::span<const uint64_t> region_layout_facts();
uint64_t cmd_layout_hash();
uint64_t state_layout_hash(uint64_t grant_format_hash);

// --- views ---------------------------------------------------------------------

template <class Byte, class T>
using SharedPtr = std::conditional_t<std::is_const_v<Byte>, const T*, T*>;

// A mapped cmd file: writable (CmdRegion, jitd) or read-only (CmdRegionView, jitlb).
template <class Byte>
struct BasicCmdRegion {
    CmdLayout layout;
    SharedPtr<Byte, CmdHeader> header = nullptr;
    SharedPtr<Byte, RingProducerControl> cmd_producer = nullptr;
    SharedPtr<Byte, RingConsumerControl> event_consumer = nullptr;
    std::span<Byte> cmd_slots;
};
using CmdRegion = BasicCmdRegion<uint8_t>;
using CmdRegionView = BasicCmdRegion<const uint8_t>;

// A mapped state file: writable (StateRegion, jitlb) or read-only (StateRegionView).
template <class Byte>
struct BasicStateRegion {
    StateLayout layout;
    SharedPtr<Byte, StateHeader> header = nullptr;
    std::span<std::conditional_t<std::is_const_v<Byte>, const ServiceMapEntry, ServiceMapEntry>>
        services;
    SharedPtr<Byte, RingConsumerControl> cmd_consumer = nullptr;
    SharedPtr<Byte, RingProducerControl> event_producer = nullptr;
    std::span<Byte> event_slots;
    std::span<Byte> worker_stats;
    std::span<Byte> grant_table;
    std::span<Byte> revoked_set;
    std::span<Byte> service_tables;
    std::span<std::conditional_t<std::is_const_v<Byte>, const BackendMapEntry, BackendMapEntry>>
        backends;
};
using StateRegion = BasicStateRegion<uint8_t>;
using StateRegionView = BasicStateRegion<const uint8_t>;

// --- writers: start on one's own file -----------------------------------------

enum class RegionStart : uint8_t {
    fresh,   // laid out anew (new file, or its header did not match): all zero
    reused,  // same build and sizes: sections kept, new epoch
};

// A random non-zero epoch (getrandom).
uint64_t new_region_epoch();

// jitd on its cmd file (`file` is the whole writable mapping, at least the
// layout's total). Fresh: zeroes it, writes the header, publishes magic last.
// Both: a new epoch, and the command ring reset to it (RingProducer::reset);
// the event consumer index is kept. RegionError(bad_argument) if too small.
RegionStart start_cmd_region(std::span<uint8_t> file, const CmdSizes& sizes, uint64_t epoch,
                             CmdRegion& region);
// jitlb on its state file. Re-used: grant table, revoked set, service map
// (entries left odd by a crash repaired) and command consumer index kept;
// the event ring reset to the new epoch. Writes tsc_hz and a first heartbeat.
RegionStart start_state_region(std::span<uint8_t> file, const StateSizes& sizes, uint64_t epoch,
                               uint64_t tsc_hz, StateRegion& region);

// --- readers: attach to a peer's file --------------------------------------------

// Check the header (magic, ABI, layout hash, sizes, sections, size of the
// mapping) and describe the file. RegionError (not_initialised, bad_magic,
// bad_abi, bad_layout_hash, bad_header) naming `path` and what to do.
CmdRegionView attach_cmd_region(std::span<const uint8_t> file, const std::string& path);
StateRegionView attach_state_region(std::span<const uint8_t> file, const std::string& path,
                                    uint64_t grant_format_hash);

// --- header words ---------------------------------------------------------------

inline uint64_t read_epoch(const RegionHeader& header) noexcept {
    return shared_load(header.epoch);
}
inline void publish_heartbeat(StateHeader& header, uint64_t unix_ms) noexcept {
    shared_store(header.heartbeat_unix_ms, unix_ms);
}
inline uint64_t read_heartbeat(const StateHeader& header) noexcept {
    return shared_load(header.heartbeat_unix_ms);
}
inline void publish_clock_offset(StateHeader& header, int64_t ticks) noexcept {
    shared_store(header.clock_offset_ticks, static_cast<uint64_t>(ticks));
}
inline int64_t read_clock_offset(const StateHeader& header) noexcept {
    return static_cast<int64_t>(shared_load(header.clock_offset_ticks));
}
inline uint64_t read_service_map_generation(const StateHeader& header) noexcept {
    return shared_load(header.service_map_generation);
}
inline uint64_t read_backend_map_generation(const StateHeader& header) noexcept {
    return shared_load(header.backend_map_generation);
}
uint64_t unix_now_ms() noexcept;

// --- the service name -> id map ---------------------------------------------------

struct ServiceInfo {
    uint32_t service_id = 0;  // 0: the entry is free
    uint64_t generation = 0;
    std::array<char, 32> name{};  // NUL-padded
    std::string_view name_view() const noexcept;
};

enum class SeqRead : uint8_t { ok, busy };  // busy: the writer kept it odd for 64 tries

// Reader: one consistent copy of an entry, or busy.
SeqRead service_map_read(const ServiceMapEntry& entry, ServiceInfo& info) noexcept;
// Reader: the id of `name`, 0 if absent; busy if an entry stayed busy.
SeqRead service_map_find(std::span<const ServiceMapEntry> map, std::string_view name,
                         uint32_t& service_id) noexcept;

// Writer (the main lcore only). Publishes `info` into entry `index` (its id
// becomes index + 1; info.service_id 0 frees the entry) and bumps the header's
// service_map_generation.
void service_map_write(StateRegion& region, uint32_t index, const ServiceInfo& info) noexcept;
// Writer: the id of `name`, assigning the first free entry to it (generation
// 0) if it has none; 0 when the map is full or the name is invalid.
uint32_t service_map_assign(StateRegion& region, std::string_view name) noexcept;
// Writer: after a restart, entries a crash left odd are cleared and made even.
// Returns how many.
size_t service_map_repair(std::span<ServiceMapEntry> map) noexcept;

// --- the backend counter-slot map --------------------------------------------------

struct BackendSlotInfo {
    uint32_t service_id = 0;  // 0: the slot is free
    IpAddress address;
    uint32_t weight = 0;
    uint64_t baseline_packets = 0;
    uint64_t baseline_bytes = 0;
    std::array<char, 64> id{};  // NUL-padded
    std::string_view id_view() const noexcept;
};

// Reader: one consistent copy of a slot's entry, or busy.
SeqRead backend_map_read(const BackendMapEntry& entry, BackendSlotInfo& info) noexcept;
// Writer (the main lcore only): publishes `info` into slot `slot` (service_id
// 0 frees it) and bumps the header's backend_map_generation.
void backend_map_write(StateRegion& region, uint32_t slot, const BackendSlotInfo& info) noexcept;
// Writer, at start: every slot free (no backend is applied yet).
void backend_map_clear(StateRegion& region) noexcept;

}  // namespace jitlb
