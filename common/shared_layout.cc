// Layouts, the layout hash, header checks and the seqlocks of the service
// map and the backend map (docs/shared-region.md).
#include "shared_layout.h"

#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <vector>

#include <fmt/format.h>

#include "messages.h"
#include "shared_file.h"

namespace jitlb {
namespace {

constexpr uint64_t align_up(uint64_t value, uint64_t unit) noexcept {
    return (value + unit - 1) / unit * unit;
}

bool power_of_two(uint64_t v) noexcept {
    return v != 0 && (v & (v - 1)) == 0;
}

// Appends sections one after the other, each aligned.
class SectionCursor {
  public:
    explicit SectionCursor(uint64_t start) : next_(start) {}
    RegionSection take(uint64_t bytes, uint64_t align) {
        const RegionSection section{align_up(next_, align), bytes};
        next_ = section.offset + bytes;
        return section;
    }
    uint64_t end() const { return next_; }

  private:
    uint64_t next_;
};

std::string check_ring_slots(const char* name, uint64_t slots) {
    if (!power_of_two(slots) || slots < kRingMinSlots || slots > kRingMaxSlots) {
        return fmt::format("{} {} is not a power of two in [{}, {}]", name, slots, kRingMinSlots,
                           kRingMaxSlots);
    }
    return "";
}

std::string hex16(uint64_t v) {
    return fmt::format("{:016x}", v);
}

// The offset and size of every field, in one number each, for the hash.
#define JITLB_FACT(T, field) (uint64_t{offsetof(T, field)} << 32 | sizeof(T::field))

std::vector<uint64_t> build_layout_facts() {
    std::vector<uint64_t> facts = {
        kRegionAbiVersion, kCmdMagic, kStateMagic, kRegionHeaderBytes, kMaxRegionSections,
        kSectionAlign, kPageSectionAlign,
        // RegionHeader
        sizeof(RegionHeader), JITLB_FACT(RegionHeader, magic),
        JITLB_FACT(RegionHeader, abi_version), JITLB_FACT(RegionHeader, header_bytes),
        JITLB_FACT(RegionHeader, layout_hash), JITLB_FACT(RegionHeader, total_bytes),
        JITLB_FACT(RegionHeader, epoch), JITLB_FACT(RegionHeader, started_unix_ms),
        JITLB_FACT(RegionHeader, writer_pid), JITLB_FACT(RegionHeader, section_count),
        JITLB_FACT(RegionHeader, sections), sizeof(RegionSection),
        // CmdHeader
        sizeof(CmdHeader), JITLB_FACT(CmdHeader, cmd_ring_slots), JITLB_FACT(CmdHeader, slot_bytes),
        static_cast<uint64_t>(CmdSection::count_),
        // StateHeader
        sizeof(StateHeader), JITLB_FACT(StateHeader, grant_table_bytes),
        JITLB_FACT(StateHeader, revoked_set_bytes), JITLB_FACT(StateHeader, service_tables_bytes),
        JITLB_FACT(StateHeader, grant_format_hash), JITLB_FACT(StateHeader, event_ring_slots),
        JITLB_FACT(StateHeader, slot_bytes), JITLB_FACT(StateHeader, worker_stats_lines),
        JITLB_FACT(StateHeader, service_capacity), JITLB_FACT(StateHeader, tsc_hz),
        JITLB_FACT(StateHeader, backend_capacity), JITLB_FACT(StateHeader, backend_map_generation),
        JITLB_FACT(StateHeader, heartbeat_unix_ms), JITLB_FACT(StateHeader, service_map_generation),
        JITLB_FACT(StateHeader, clock_offset_ticks), static_cast<uint64_t>(StateSection::count_),
        // ServiceMapEntry
        sizeof(ServiceMapEntry), JITLB_FACT(ServiceMapEntry, seq),
        JITLB_FACT(ServiceMapEntry, id_and_flags), JITLB_FACT(ServiceMapEntry, name),
        JITLB_FACT(ServiceMapEntry, generation), kMaxServiceNameLen, kMaxServiceCapacity,
        // BackendMapEntry
        sizeof(BackendMapEntry), JITLB_FACT(BackendMapEntry, seq),
        JITLB_FACT(BackendMapEntry, service_and_family), JITLB_FACT(BackendMapEntry, baseline_packets),
        JITLB_FACT(BackendMapEntry, baseline_bytes), JITLB_FACT(BackendMapEntry, address),
        JITLB_FACT(BackendMapEntry, weight), JITLB_FACT(BackendMapEntry, id), kMaxBackendIdBytes,
        kMaxBackendCapacity,
        // Rings
        sizeof(RingProducerControl), JITLB_FACT(RingProducerControl, index),
        JITLB_FACT(RingProducerControl, epoch), JITLB_FACT(RingProducerControl, slot_count),
        JITLB_FACT(RingProducerControl, slot_bytes), sizeof(RingConsumerControl),
        JITLB_FACT(RingConsumerControl, index), JITLB_FACT(RingConsumerControl, epoch),
        sizeof(RecordHeader), JITLB_FACT(RecordHeader, type), JITLB_FACT(RecordHeader, version),
        JITLB_FACT(RecordHeader, length), JITLB_FACT(RecordHeader, sequence), kRingSlotBytes,
        kRingMinSlots, kRingMaxSlots, kRecordTypePad,
        // Bounds on sizes
        kMaxGrantTableBytes, kMaxRevokedSetBytes, kMaxServiceTablesBytes, kMaxWorkerStatsLines};
    const std::span<const uint64_t> catalogue = message_catalogue_facts();
    facts.insert(facts.end(), catalogue.begin(), catalogue.end());
    return facts;
}

#undef JITLB_FACT

// A header of one's own file can be re-used when it is exactly what we would write.
template <class View, class Attach>
bool header_matches(Attach attach, const auto& want_layout) {
    try {
        const View view = attach();
        return view.layout == want_layout;
    } catch (const RegionError&) {
        return false;
    }
}

void check_file_size(std::span<const uint8_t> file, uint64_t total, const std::string& what) {
    // Sections are cache-line and page aligned relative to the file, and the
    // compiler may use aligned vector stores on them: the mapping must be
    // page aligned, as mmap's always is.
    if (reinterpret_cast<uintptr_t>(file.data()) % 4096 != 0) {
        throw RegionError(RegionErrc::bad_argument,
                          fmt::format("{}: mapping at {} is not 4096-byte aligned", what,
                                      static_cast<const void*>(file.data())));
    }
    if (file.size() < total) {
        throw RegionError(RegionErrc::bad_argument,
                          fmt::format("{}: mapping of {} bytes is smaller than the layout's {}",
                                      what, file.size(), total));
    }
}

void write_region_header(RegionHeader& h, uint64_t layout_hash, uint64_t total,
                         std::span<const RegionSection> sections) {
    h.abi_version = kRegionAbiVersion;
    h.header_bytes = kRegionHeaderBytes;
    h.layout_hash = layout_hash;
    h.total_bytes = total;
    h.section_count = static_cast<uint32_t>(sections.size());
    for (size_t i = 0; i < sections.size(); ++i) h.sections[i] = sections[i];
}

void write_start_fields(RegionHeader& h, uint64_t epoch) {
    shared_store(h.started_unix_ms, unix_now_ms(), std::memory_order_relaxed);
    h.writer_pid = static_cast<uint32_t>(getpid());
    shared_store(h.epoch, epoch);  // release: after the start fields
}

// Checks the common header of a peer's file; returns its magic-checked header.
const RegionHeader& check_region_header(std::span<const uint8_t> file, const std::string& path,
                                        uint64_t want_magic, uint64_t other_magic,
                                        uint64_t want_hash, std::string_view kind,
                                        std::string_view writer) {
    if (reinterpret_cast<uintptr_t>(file.data()) % 4096 != 0) {
        throw RegionError(RegionErrc::bad_argument,
                          fmt::format("{}: mapping at {} is not 4096-byte aligned", path,
                                      static_cast<const void*>(file.data())));
    }
    if (file.size() < kRegionHeaderBytes) {
        throw RegionError(RegionErrc::too_small,
                          fmt::format("{}: {} bytes, shorter than a header ({}): {} is still "
                                      "creating it (retry in a moment)",
                                      path, file.size(), kRegionHeaderBytes, writer));
    }
    const auto& h = *reinterpret_cast<const RegionHeader*>(file.data());
    const uint64_t magic = shared_load(h.magic);
    if (magic == 0) {
        throw RegionError(RegionErrc::not_initialised,
                          fmt::format("{}: not initialised yet ({} is starting): retry in a "
                                      "moment",
                                      path, writer));
    }
    if (magic == other_magic) {
        throw RegionError(RegionErrc::bad_magic,
                          fmt::format("{}: is the other file of the pair, not a {} file (check "
                                      "the configured paths)",
                                      path, kind));
    }
    if (magic != want_magic) {
        throw RegionError(RegionErrc::bad_magic,
                          fmt::format("{}: magic {} is not a jitlb {} file's ({}): is the path "
                                      "right?",
                                      path, hex16(magic), kind, hex16(want_magic)));
    }
    if (h.abi_version != kRegionAbiVersion) {
        throw RegionError(RegionErrc::bad_abi,
                          fmt::format("{}: {} file ABI version {} differs from this build's {}: "
                                      "rebuild jitctl/jitd with the same jitlb version",
                                      path, kind, h.abi_version, kRegionAbiVersion));
    }
    if (h.layout_hash != want_hash) {
        throw RegionError(RegionErrc::bad_layout_hash,
                          fmt::format("{}: {} file layout {} differs from this build's {}: "
                                      "rebuild jitctl/jitd with the same jitlb version",
                                      path, kind, hex16(h.layout_hash), hex16(want_hash)));
    }
    if (h.header_bytes != kRegionHeaderBytes) {
        throw RegionError(RegionErrc::bad_header,
                          fmt::format("{}: header of {} bytes, expected {}: the file is corrupt "
                                      "(restart {})",
                                      path, h.header_bytes, kRegionHeaderBytes, writer));
    }
    return h;
}

// The header's sections and total against the layout recomputed from its sizes.
void check_sections(const RegionHeader& h, std::span<const RegionSection> want, uint64_t total,
                    std::span<const uint8_t> file, const std::string& path,
                    std::string_view writer) {
    bool same = h.section_count == want.size() && h.total_bytes == total;
    for (size_t i = 0; same && i < want.size(); ++i) same = h.sections[i] == want[i];
    if (!same) {
        throw RegionError(RegionErrc::bad_header,
                          fmt::format("{}: sections or total ({} bytes) differ from the layout "
                                      "its sizes give ({} bytes): the file is corrupt (restart "
                                      "{})",
                                      path, h.total_bytes, total, writer));
    }
    if (file.size() < total) {
        throw RegionError(RegionErrc::bad_header,
                          fmt::format("{}: {} bytes mapped, the layout needs {}: the file was "
                                      "truncated (restart {})",
                                      path, file.size(), total, writer));
    }
}

template <class Byte>
BasicCmdRegion<Byte> cmd_view(std::span<Byte> file, const CmdLayout& layout) {
    BasicCmdRegion<Byte> r;
    r.layout = layout;
    Byte* base = file.data();
    r.header = reinterpret_cast<decltype(r.header)>(base);
    r.cmd_producer = reinterpret_cast<decltype(r.cmd_producer)>(base + layout.cmd_producer.offset);
    r.event_consumer =
        reinterpret_cast<decltype(r.event_consumer)>(base + layout.event_consumer.offset);
    r.cmd_slots = file.subspan(layout.cmd_slots.offset, layout.cmd_slots.bytes);
    return r;
}

template <class Byte>
BasicStateRegion<Byte> state_view(std::span<Byte> file, const StateLayout& layout) {
    BasicStateRegion<Byte> r;
    r.layout = layout;
    Byte* base = file.data();
    r.header = reinterpret_cast<decltype(r.header)>(base);
    using Entry = typename decltype(r.services)::element_type;
    r.services = {reinterpret_cast<Entry*>(base + layout.service_map.offset),
                  layout.sizes.service_capacity};
    r.cmd_consumer = reinterpret_cast<decltype(r.cmd_consumer)>(base + layout.cmd_consumer.offset);
    r.event_producer =
        reinterpret_cast<decltype(r.event_producer)>(base + layout.event_producer.offset);
    r.event_slots = file.subspan(layout.event_slots.offset, layout.event_slots.bytes);
    r.worker_stats = file.subspan(layout.worker_stats.offset, layout.worker_stats.bytes);
    r.grant_table = file.subspan(layout.grant_table.offset, layout.grant_table.bytes);
    r.revoked_set = file.subspan(layout.revoked_set.offset, layout.revoked_set.bytes);
    r.service_tables = file.subspan(layout.service_tables.offset, layout.service_tables.bytes);
    using BackendEntry = typename decltype(r.backends)::element_type;
    r.backends = {reinterpret_cast<BackendEntry*>(base + layout.backend_map.offset),
                  layout.sizes.backend_capacity};
    return r;
}

std::array<RegionSection, 3> cmd_sections(const CmdLayout& l) {
    return {l.cmd_producer, l.event_consumer, l.cmd_slots};
}

std::array<RegionSection, 9> state_sections(const StateLayout& l) {
    return {l.service_map,  l.cmd_consumer, l.event_producer, l.event_slots,   l.worker_stats,
            l.grant_table,  l.revoked_set,  l.service_tables, l.backend_map};
}
static_assert(std::tuple_size_v<decltype(cmd_sections(CmdLayout{}))> ==
              static_cast<size_t>(CmdSection::count_));
static_assert(std::tuple_size_v<decltype(state_sections(StateLayout{}))> ==
              static_cast<size_t>(StateSection::count_));

}  // namespace

bool valid_service_name(std::string_view name) noexcept {
    if (name.empty() || name.size() > kMaxServiceNameLen) return false;
    for (const char c : name) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
        if (!ok) return false;
    }
    return true;
}

uint64_t unix_now_ms() noexcept {
    struct timespec ts {};
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1000000;
}

// --- layouts -----------------------------------------------------------------------

std::string check_cmd_sizes(const CmdSizes& sizes) {
    return check_ring_slots("cmd_ring_slots", sizes.cmd_ring_slots);
}

std::string check_state_sizes(const StateSizes& s) {
    if (std::string why = check_ring_slots("event_ring_slots", s.event_ring_slots); !why.empty()) {
        return why;
    }
    if (s.service_capacity == 0 || s.service_capacity > kMaxServiceCapacity) {
        return fmt::format("service_capacity {} is not in [1, {}]", s.service_capacity,
                           kMaxServiceCapacity);
    }
    if (s.backend_capacity > kMaxBackendCapacity) {
        return fmt::format("backend_capacity {} is not in [0, {}]", s.backend_capacity,
                           kMaxBackendCapacity);
    }
    if (s.worker_stats_lines > kMaxWorkerStatsLines) {
        return fmt::format("worker_stats_lines {} exceeds {}", s.worker_stats_lines,
                           kMaxWorkerStatsLines);
    }
    if (s.grant_table_bytes > kMaxGrantTableBytes) {
        return fmt::format("grant_table_bytes {} exceeds {}", s.grant_table_bytes,
                           kMaxGrantTableBytes);
    }
    if (s.revoked_set_bytes > kMaxRevokedSetBytes) {
        return fmt::format("revoked_set_bytes {} exceeds {}", s.revoked_set_bytes,
                           kMaxRevokedSetBytes);
    }
    if (s.service_tables_bytes > kMaxServiceTablesBytes) {
        return fmt::format("service_tables_bytes {} exceeds {}", s.service_tables_bytes,
                           kMaxServiceTablesBytes);
    }
    return "";
}

CmdLayout compute_cmd_layout(const CmdSizes& sizes) {
    if (std::string why = check_cmd_sizes(sizes); !why.empty()) {
        throw RegionError(RegionErrc::bad_argument, "cmd file: " + why);
    }
    CmdLayout l;
    l.sizes = sizes;
    l.header = {0, kRegionHeaderBytes};
    SectionCursor cursor(kRegionHeaderBytes);
    l.cmd_producer = cursor.take(sizeof(RingProducerControl), kSectionAlign);
    l.event_consumer = cursor.take(sizeof(RingConsumerControl), kSectionAlign);
    l.cmd_slots = cursor.take(uint64_t{sizes.cmd_ring_slots} * kRingSlotBytes, kSectionAlign);
    l.total_bytes = align_up(cursor.end(), kPageSectionAlign);
    l.layout_hash = cmd_layout_hash();
    return l;
}

StateLayout compute_state_layout(const StateSizes& sizes) {
    if (std::string why = check_state_sizes(sizes); !why.empty()) {
        throw RegionError(RegionErrc::bad_argument, "state file: " + why);
    }
    StateLayout l;
    l.sizes = sizes;
    l.header = {0, kRegionHeaderBytes};
    SectionCursor cursor(kRegionHeaderBytes);
    l.service_map =
        cursor.take(uint64_t{sizes.service_capacity} * sizeof(ServiceMapEntry), kSectionAlign);
    l.cmd_consumer = cursor.take(sizeof(RingConsumerControl), kSectionAlign);
    l.event_producer = cursor.take(sizeof(RingProducerControl), kSectionAlign);
    l.event_slots = cursor.take(uint64_t{sizes.event_ring_slots} * kRingSlotBytes, kSectionAlign);
    l.worker_stats = cursor.take(uint64_t{sizes.worker_stats_lines} * 64, kSectionAlign);
    l.grant_table = cursor.take(sizes.grant_table_bytes, kPageSectionAlign);
    l.revoked_set = cursor.take(sizes.revoked_set_bytes, kPageSectionAlign);
    l.service_tables = cursor.take(sizes.service_tables_bytes, kPageSectionAlign);
    // Last, so that adding it moved no other section.
    l.backend_map =
        cursor.take(uint64_t{sizes.backend_capacity} * sizeof(BackendMapEntry), kSectionAlign);
    l.total_bytes = align_up(cursor.end(), kPageSectionAlign);
    l.layout_hash = state_layout_hash(sizes.grant_format_hash);
    return l;
}

// --- the layout hash -----------------------------------------------------------------

uint64_t hash_layout_facts(std::span<const uint64_t> facts) noexcept {
    uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64
    for (const uint64_t fact : facts) {
        for (int byte = 0; byte < 8; ++byte) {
            h ^= (fact >> (8 * byte)) & 0xff;
            h *= 0x100000001b3ull;
        }
    }
    // splitmix64's finaliser, so that close fact lists give unrelated hashes
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

std::span<const uint64_t> region_layout_facts() {
    static const std::vector<uint64_t> facts = build_layout_facts();
    return facts;
}

uint64_t cmd_layout_hash() {
    static const uint64_t hash = [] {
        const uint64_t facts[] = {hash_layout_facts(region_layout_facts()), kCmdMagic};
        return hash_layout_facts(facts);
    }();
    return hash;
}

uint64_t state_layout_hash(uint64_t grant_format_hash) {
    const uint64_t facts[] = {hash_layout_facts(region_layout_facts()), kStateMagic,
                              grant_format_hash};
    return hash_layout_facts(facts);
}

// --- writers -----------------------------------------------------------------------------

uint64_t new_region_epoch() {
    uint64_t epoch = 0;
    while (epoch == 0) {
        if (getrandom(&epoch, sizeof epoch, 0) != static_cast<ssize_t>(sizeof epoch)) {
            throw RegionError(RegionErrc::io, fmt::format("getrandom: {}", std::strerror(errno)));
        }
    }
    return epoch;
}

RegionStart start_cmd_region(std::span<uint8_t> file, const CmdSizes& sizes, uint64_t epoch,
                             CmdRegion& region) {
    const CmdLayout layout = compute_cmd_layout(sizes);
    check_file_size(file, layout.total_bytes, "cmd file");
    const bool reuse = header_matches<CmdRegionView>(
        [&] { return attach_cmd_region(file, "own cmd file"); }, layout);
    region = cmd_view(file, layout);
    if (!reuse) {
        shared_store(region.header->region.magic, 0);  // readers: "initialising"
        std::memset(file.data() + 8, 0, layout.total_bytes - 8);
        const auto sections = cmd_sections(layout);
        write_region_header(region.header->region, layout.layout_hash, layout.total_bytes,
                            sections);
        region.header->cmd_ring_slots = sizes.cmd_ring_slots;
        region.header->slot_bytes = kRingSlotBytes;
    }
    write_start_fields(region.header->region, epoch);
    RingProducer(region.cmd_slots, kRingSlotBytes, region.cmd_producer, nullptr).reset(epoch);
    if (!reuse) shared_store(region.header->region.magic, kCmdMagic);  // release, last
    return reuse ? RegionStart::reused : RegionStart::fresh;
}

RegionStart start_state_region(std::span<uint8_t> file, const StateSizes& sizes, uint64_t epoch,
                               uint64_t tsc_hz, StateRegion& region) {
    const StateLayout layout = compute_state_layout(sizes);
    check_file_size(file, layout.total_bytes, "state file");
    const bool reuse = header_matches<StateRegionView>(
        [&] { return attach_state_region(file, "own state file", sizes.grant_format_hash); },
        layout);
    region = state_view(file, layout);
    StateHeader& h = *region.header;
    if (!reuse) {
        shared_store(h.region.magic, 0);
        std::memset(file.data() + 8, 0, layout.total_bytes - 8);
        const auto sections = state_sections(layout);
        write_region_header(h.region, layout.layout_hash, layout.total_bytes, sections);
        h.grant_table_bytes = sizes.grant_table_bytes;
        h.revoked_set_bytes = sizes.revoked_set_bytes;
        h.service_tables_bytes = sizes.service_tables_bytes;
        h.grant_format_hash = sizes.grant_format_hash;
        h.event_ring_slots = sizes.event_ring_slots;
        h.slot_bytes = kRingSlotBytes;
        h.worker_stats_lines = sizes.worker_stats_lines;
        h.service_capacity = sizes.service_capacity;
        h.backend_capacity = sizes.backend_capacity;
    } else if (service_map_repair(region.services) != 0) {
        shared_store(h.service_map_generation, shared_load(h.service_map_generation) + 1);
    }
    shared_store(h.tsc_hz, tsc_hz, std::memory_order_relaxed);
    write_start_fields(h.region, epoch);
    publish_heartbeat(h, unix_now_ms());
    RingProducer(region.event_slots, kRingSlotBytes, region.event_producer, nullptr).reset(epoch);
    if (!reuse) shared_store(h.region.magic, kStateMagic);  // release, last
    return reuse ? RegionStart::reused : RegionStart::fresh;
}

// --- readers ----------------------------------------------------------------------------

CmdRegionView attach_cmd_region(std::span<const uint8_t> file, const std::string& path) {
    const RegionHeader& rh =
        check_region_header(file, path, kCmdMagic, kStateMagic, cmd_layout_hash(), "cmd", "jitd");
    const auto& h = *reinterpret_cast<const CmdHeader*>(file.data());
    const CmdSizes sizes{h.cmd_ring_slots};
    if (std::string why = check_cmd_sizes(sizes); !why.empty() || h.slot_bytes != kRingSlotBytes) {
        throw RegionError(RegionErrc::bad_header,
                          fmt::format("{}: impossible sizes ({}slot_bytes {}): the file is "
                                      "corrupt (restart jitd)",
                                      path, why.empty() ? "" : why + ", ", h.slot_bytes));
    }
    const CmdLayout layout = compute_cmd_layout(sizes);
    check_sections(rh, cmd_sections(layout), layout.total_bytes, file, path, "jitd");
    return cmd_view(file, layout);
}

StateRegionView attach_state_region(std::span<const uint8_t> file, const std::string& path,
                                    uint64_t grant_format_hash) {
    const RegionHeader& rh = check_region_header(
        file, path, kStateMagic, kCmdMagic, state_layout_hash(grant_format_hash), "state", "jitlb");
    const auto& h = *reinterpret_cast<const StateHeader*>(file.data());
    StateSizes sizes;
    sizes.grant_table_bytes = h.grant_table_bytes;
    sizes.revoked_set_bytes = h.revoked_set_bytes;
    sizes.service_tables_bytes = h.service_tables_bytes;
    sizes.grant_format_hash = h.grant_format_hash;
    sizes.event_ring_slots = h.event_ring_slots;
    sizes.worker_stats_lines = h.worker_stats_lines;
    sizes.service_capacity = h.service_capacity;
    sizes.backend_capacity = h.backend_capacity;
    std::string why = check_state_sizes(sizes);
    if (why.empty() && h.slot_bytes != kRingSlotBytes) {
        why = fmt::format("slot_bytes {}", h.slot_bytes);
    }
    if (why.empty() && sizes.grant_format_hash != grant_format_hash) {
        why = "grant_format_hash differs from the layout hash's";
    }
    if (!why.empty()) {
        throw RegionError(RegionErrc::bad_header,
                          fmt::format("{}: impossible header ({}): the file is corrupt (restart "
                                      "jitlb)",
                                      path, why));
    }
    const StateLayout layout = compute_state_layout(sizes);
    check_sections(rh, state_sections(layout), layout.total_bytes, file, path, "jitlb");
    return state_view(file, layout);
}

// --- the seqlock of both maps ---------------------------------------------------------------

namespace {

constexpr int kSeqReadTries = 64;

// One consistent copy of the N payload words after `seq`, or busy.
template <size_t N>
SeqRead seqlock_read(const uint64_t& seq, const uint64_t* payload, uint64_t (&words)[N]) noexcept {
    for (int attempt = 0; attempt < kSeqReadTries; ++attempt) {
        const uint64_t s1 = shared_load(seq);
        if (s1 & 1) continue;
        // acquire: a word of a newer write makes the writer's odd seq visible
        // to the check below, and keeps that check after these loads.
        for (size_t i = 0; i < N; ++i) words[i] = shared_load(payload[i]);
        if (shared_load(seq, std::memory_order_relaxed) == s1) return SeqRead::ok;
    }
    return SeqRead::busy;
}

template <size_t N>
void seqlock_write(uint64_t& seq, uint64_t* payload, const uint64_t (&words)[N]) noexcept {
    const uint64_t s = shared_load(seq, std::memory_order_relaxed);
    shared_store(seq, s + 1, std::memory_order_relaxed);
    for (size_t i = 0; i < N; ++i) shared_store(payload[i], words[i]);  // release
    shared_store(seq, s + 2);
}

// The payload words of an entry (after seq), as the seqlock moves them.
constexpr size_t kEntryWords = sizeof(ServiceMapEntry) / 8 - 1;
constexpr size_t kBackendEntryWords = sizeof(BackendMapEntry) / 8 - 1;

void entry_to_words(const ServiceInfo& info, uint64_t (&words)[kEntryWords]) noexcept {
    ServiceMapEntry e{};
    e.id_and_flags = info.service_id;
    std::memcpy(e.name, info.name.data(), sizeof e.name);
    e.generation = info.generation;
    std::memcpy(words, reinterpret_cast<const uint8_t*>(&e) + 8, sizeof words);
}

void bump(uint64_t& generation) noexcept {
    shared_store(generation, shared_load(generation, std::memory_order_relaxed) + 1);
}

}  // namespace

// --- the service map ----------------------------------------------------------------------

std::string_view ServiceInfo::name_view() const noexcept {
    size_t n = 0;
    while (n < name.size() && name[n] != '\0') ++n;
    return {name.data(), n};
}

SeqRead service_map_read(const ServiceMapEntry& entry, ServiceInfo& info) noexcept {
    uint64_t words[kEntryWords];
    if (seqlock_read(entry.seq, &entry.id_and_flags, words) != SeqRead::ok) return SeqRead::busy;
    info.service_id = static_cast<uint32_t>(words[0]);
    std::memcpy(info.name.data(), &words[1], info.name.size());
    info.name.back() = '\0';
    info.generation = words[5];
    return SeqRead::ok;
}

SeqRead service_map_find(std::span<const ServiceMapEntry> map, std::string_view name,
                         uint32_t& service_id) noexcept {
    service_id = 0;
    bool busy = false;
    for (const ServiceMapEntry& entry : map) {
        ServiceInfo info;
        if (service_map_read(entry, info) == SeqRead::busy) {
            busy = true;
            continue;
        }
        if (info.service_id != 0 && info.name_view() == name) {
            service_id = info.service_id;
            return SeqRead::ok;
        }
    }
    return busy ? SeqRead::busy : SeqRead::ok;
}

void service_map_write(StateRegion& region, uint32_t index, const ServiceInfo& info) noexcept {
    if (index >= region.services.size()) return;
    ServiceMapEntry& entry = region.services[index];
    ServiceInfo published = info;
    if (published.service_id != 0) published.service_id = index + 1;  // id = index + 1
    published.name.back() = '\0';
    uint64_t words[kEntryWords];
    entry_to_words(published, words);
    seqlock_write(entry.seq, &entry.id_and_flags, words);
    bump(region.header->service_map_generation);
}

uint32_t service_map_assign(StateRegion& region, std::string_view name) noexcept {
    if (!valid_service_name(name)) return 0;
    int64_t free_index = -1;
    for (size_t i = 0; i < region.services.size(); ++i) {
        ServiceInfo info;
        service_map_read(region.services[i], info);  // we are the writer: never busy
        if (info.service_id == 0) {
            if (free_index < 0) free_index = static_cast<int64_t>(i);
        } else if (info.name_view() == name) {
            return info.service_id;
        }
    }
    if (free_index < 0) return 0;
    ServiceInfo info;
    info.service_id = static_cast<uint32_t>(free_index) + 1;
    std::memcpy(info.name.data(), name.data(), name.size());
    service_map_write(region, static_cast<uint32_t>(free_index), info);
    return info.service_id;
}

size_t service_map_repair(std::span<ServiceMapEntry> map) noexcept {
    size_t repaired = 0;
    for (ServiceMapEntry& entry : map) {
        const uint64_t s = shared_load(entry.seq, std::memory_order_relaxed);
        if ((s & 1) == 0) continue;
        uint64_t* payload = &entry.id_and_flags;
        for (size_t i = 0; i < kEntryWords; ++i) shared_store(payload[i], 0);
        shared_store(entry.seq, s + 1);
        ++repaired;
    }
    return repaired;
}

// --- the backend counter-slot map ---------------------------------------------------------

std::string_view BackendSlotInfo::id_view() const noexcept {
    size_t n = 0;
    while (n < id.size() && id[n] != '\0') ++n;
    return {id.data(), n};
}

SeqRead backend_map_read(const BackendMapEntry& entry, BackendSlotInfo& info) noexcept {
    uint64_t words[kBackendEntryWords];
    if (seqlock_read(entry.seq, &entry.service_and_family, words) != SeqRead::ok) return SeqRead::busy;
    BackendMapEntry e{};
    std::memcpy(reinterpret_cast<uint8_t*>(&e) + 8, words, sizeof words);
    info.service_id = static_cast<uint32_t>(e.service_and_family);
    const auto family = static_cast<uint8_t>(e.service_and_family >> 32);
    info.address.version = family == 4 ? IpVersion::v4 : family == 6 ? IpVersion::v6 : IpVersion::none;
    std::memcpy(info.address.bytes.data(), e.address, 16);
    info.weight = static_cast<uint32_t>(e.weight);
    info.baseline_packets = e.baseline_packets;
    info.baseline_bytes = e.baseline_bytes;
    std::memcpy(info.id.data(), e.id, info.id.size());
    info.id.back() = '\0';
    return SeqRead::ok;
}

void backend_map_write(StateRegion& region, uint32_t slot, const BackendSlotInfo& info) noexcept {
    if (slot >= region.backends.size()) return;
    BackendMapEntry e{};
    if (info.service_id != 0) {
        e.service_and_family = uint64_t{info.service_id} | uint64_t{static_cast<uint8_t>(info.address.version)} << 32;
        e.baseline_packets = info.baseline_packets;
        e.baseline_bytes = info.baseline_bytes;
        std::memcpy(e.address, info.address.bytes.data(), 16);
        e.weight = info.weight;
        std::memcpy(e.id, info.id.data(), sizeof e.id);
        reinterpret_cast<char*>(e.id)[sizeof e.id - 1] = '\0';
    }
    uint64_t words[kBackendEntryWords];
    std::memcpy(words, reinterpret_cast<const uint8_t*>(&e) + 8, sizeof words);
    BackendMapEntry& entry = region.backends[slot];
    seqlock_write(entry.seq, &entry.service_and_family, words);
    bump(region.header->backend_map_generation);
}

void backend_map_clear(StateRegion& region) noexcept {
    const uint64_t zero[kBackendEntryWords] = {};
    for (BackendMapEntry& entry : region.backends) {
        // A crash may have left seq odd: make it even again.
        const uint64_t seq = shared_load(entry.seq, std::memory_order_relaxed);
        if (seq & 1) shared_store(entry.seq, seq + 1, std::memory_order_relaxed);
        seqlock_write(entry.seq, &entry.service_and_family, zero);
    }
    bump(region.header->backend_map_generation);
}

}  // namespace jitlb
