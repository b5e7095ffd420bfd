// Single-producer single-consumer rings between two processes: the command
// ring (jitd -> jitlb) and the event ring (jitlb -> jitd). The producer's index
// and the slots live in the producer's file, the consumer's index in the
// consumer's file, so every word has one writer and the other side maps it
// read-only; the classes therefore take the pieces separately.
//
// A record is a 16-byte RecordHeader and a payload, starting at a slot and
// filling ceil((16 + length) / slot_bytes) consecutive slots; it never wraps (a
// PAD record skips to slot 0). The consumer copies each record out once and
// checks every header against the slots first, so garbage from the other
// process is an error, never a read outside the slots. The full protocol, with
// start and restart (epochs), is in docs/shared-region.md, "Rings".
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace jitlb {

// The slot size of both rings in the region files (part of the layout hash).
inline constexpr uint32_t kRingSlotBytes = 256;
// Slot counts the region files accept (powers of two). The classes accept any
// power-of-two geometry from kRingMinGeometry* so that tests and the fuzz
// target can use tiny rings.
inline constexpr uint32_t kRingMinSlots = 64;
inline constexpr uint32_t kRingMaxSlots = 1u << 20;
inline constexpr uint32_t kRingMinGeometrySlots = 2;
inline constexpr uint32_t kRingMinGeometrySlotBytes = 32;
inline constexpr uint32_t kRingMaxGeometrySlotBytes = 65536;
// Type 0 is never a record; 0xFFFF marks the PAD that skips to slot 0.
inline constexpr uint16_t kRecordTypeInvalid = 0;
inline constexpr uint16_t kRecordTypePad = 0xFFFF;

// At the start of a record's first slot. Host byte order (the files never
// leave the host).
struct RecordHeader {
    uint16_t type;
    uint16_t version;
    uint32_t length;    // payload bytes after this header
    uint64_t sequence;  // ring index of the record's first slot: unique per epoch
};
static_assert(sizeof(RecordHeader) == 16);
static_assert(offsetof(RecordHeader, version) == 2);
static_assert(offsetof(RecordHeader, length) == 4);
static_assert(offsetof(RecordHeader, sequence) == 8);

// In the producer's file; written only by the producer.
struct alignas(64) RingProducerControl {
    uint64_t index;       // slots published; release store after the slots are written
    uint64_t epoch;       // the producer's run; 0 while it resets; release store
    uint32_t slot_count;  // informational: consumers use the layout they validated
    uint32_t slot_bytes;
    uint8_t reserved[40];
};
static_assert(sizeof(RingProducerControl) == 64);
static_assert(offsetof(RingProducerControl, epoch) == 8);
static_assert(offsetof(RingProducerControl, slot_count) == 16);
static_assert(offsetof(RingProducerControl, slot_bytes) == 20);

// In the consumer's file; written only by the consumer.
struct alignas(64) RingConsumerControl {
    uint64_t index;  // slots consumed; release store after the consumer copied them out
    uint64_t epoch;  // the producer epoch `index` counts in; release store after index
    uint8_t reserved[48];
};
static_assert(sizeof(RingConsumerControl) == 64);
static_assert(offsetof(RingConsumerControl, epoch) == 8);

enum class RingError : uint8_t {
    ok = 0,
    empty,             // consumer: nothing to read (or the producer is restarting)
    full,              // producer: not enough free slots; nothing was written
    too_large,         // producer: the record would take more than half the ring
    not_attached,      // producer: the consumer has not attached to this epoch yet
    corrupt,           // the other side's index or bytes are impossible; see fault()
    buffer_too_small,  // consumer: the record is sound but larger than the buffer
    invalid_type,      // producer: type 0 or the PAD type
};

std::string_view ring_error_name(RingError error) noexcept;

// What made a ring corrupt: a fixed description, the index it was found at and
// the offending value.
struct RingFault {
    const char* what = "";
    uint64_t index = 0;
    uint64_t value = 0;
};

// "ring corrupt at index 4100: record runs past the producer index (value 7)".
std::string describe_ring_fault(const RingFault& fault);

// True when `slot_count` and `slot_bytes` are powers of two within the limits above.
bool ring_geometry_ok(uint64_t slot_count, uint64_t slot_bytes) noexcept;

// Slots a record of `payload_bytes` takes.
inline uint64_t ring_record_slots(uint64_t payload_bytes, uint32_t slot_bytes) noexcept {
    return (sizeof(RecordHeader) + payload_bytes + slot_bytes - 1) / slot_bytes;
}

struct PushResult {
    RingError error = RingError::ok;
    uint64_t sequence = 0;      // when ok: the record's sequence (its index)
    uint64_t free_bytes = 0;    // when full: free bytes as the producer saw them
    uint64_t needed_bytes = 0;  // when full or too_large: slots needed (with PAD) x slot size
};

// "command ring full: 4096 bytes needed, 512 free (is jitlb draining it?)".
std::string describe_push_result(const PushResult& result, std::string_view ring_name);

class RingProducer {
  public:
    RingProducer() = default;
    // `slots` is slot_count x slot_bytes (both powers of two, see
    // ring_geometry_ok, else std::invalid_argument). `peer` may be null until
    // the consumer's file exists (set_peer). Picks up index and epoch from
    // `own`; a starting writer calls reset().
    RingProducer(std::span<uint8_t> slots, uint32_t slot_bytes, RingProducerControl* own,
                 const RingConsumerControl* peer);

    void set_peer(const RingConsumerControl* peer) noexcept { peer_ = peer; }

    // A new run of the producer (epoch != 0): drops what the ring held and
    // waits for the consumer to attach to `epoch`.
    void reset(uint64_t epoch) noexcept;

    // The consumer counts its index in our epoch: pushes may go.
    bool attached() const noexcept;

    // Makes room for a record of `payload_bytes` and points `payload` at it,
    // inside the slots (contiguous). Nothing is visible until commit().
    PushResult reserve(uint32_t payload_bytes, std::span<uint8_t>& payload) noexcept;
    // Writes the header (and a PAD before it if the record goes to slot 0) and
    // publishes the record with a release store of the index.
    PushResult commit(uint16_t type, uint16_t version) noexcept;
    // Forgets a reservation; nothing was published.
    void cancel() noexcept { reserved_ = false; }

    // reserve + copy + commit.
    PushResult push(uint16_t type, uint16_t version, std::span<const uint8_t> payload) noexcept;

    uint64_t slot_count() const noexcept { return slot_count_; }
    uint32_t slot_bytes() const noexcept { return slot_bytes_; }
    // The largest payload a record may carry: half the ring, less the header.
    uint64_t max_payload_bytes() const noexcept {
        return max_record_slots_ * slot_bytes_ - sizeof(RecordHeader);
    }
    uint64_t index() const noexcept { return prod_; }
    uint64_t epoch() const noexcept { return epoch_; }
    // Free bytes now (0 when not attached or corrupt).
    uint64_t free_bytes() const noexcept;
    const RingFault& fault() const noexcept { return fault_; }

  private:
    uint8_t* slot_ptr(uint64_t index) const noexcept {
        return slots_ + (index & mask_) * slot_bytes_;
    }

    uint8_t* slots_ = nullptr;
    uint64_t slot_count_ = 0;
    uint64_t mask_ = 0;
    uint64_t max_record_slots_ = 0;
    uint32_t slot_bytes_ = 0;
    RingProducerControl* own_ = nullptr;
    const RingConsumerControl* peer_ = nullptr;
    uint64_t prod_ = 0;  // our index: we are its only writer, so no need to load it
    uint64_t epoch_ = 0;
    RingFault fault_{};
    // The reservation between reserve() and commit().
    bool reserved_ = false;
    uint64_t reserved_pad_ = 0;
    uint64_t reserved_slots_ = 0;
    uint32_t reserved_length_ = 0;
};

// A record copied out of the ring into the caller's buffer.
struct RingRecord {
    uint16_t type = 0;
    uint16_t version = 0;
    uint32_t length = 0;             // payload bytes
    uint64_t sequence = 0;           // the record's index
    uint64_t slots = 0;              // slots it occupies
    std::span<const uint8_t> bytes;  // header + payload in the caller's buffer (ok only)

    std::span<const uint8_t> payload() const noexcept {
        return bytes.size() < sizeof(RecordHeader) ? std::span<const uint8_t>{}
                                                   : bytes.subspan(sizeof(RecordHeader));
    }
};

class RingConsumer {
  public:
    RingConsumer() = default;
    // `peer` may be null until the producer's file exists (set_peer). Picks up
    // index and epoch from `own`, so a consumer restarted on its own file
    // carries on where it was.
    RingConsumer(std::span<const uint8_t> slots, uint32_t slot_bytes,
                 const RingProducerControl* peer, RingConsumerControl* own);

    void set_peer(const RingProducerControl* peer) noexcept { peer_ = peer; }

    // Copies the next record (header + payload) into `buffer` and describes it
    // in `record`, without consuming it. Returns ok, empty, corrupt (see
    // fault(); nothing consumed) or buffer_too_small (record has its type,
    // sequence and length; consume() skips it).
    RingError peek(std::span<uint8_t> buffer, RingRecord& record) noexcept;
    // Consumes the record the last peek() returned (ok or buffer_too_small),
    // handing its slots back to the producer (release store of our index).
    void consume() noexcept;
    // peek + consume on ok.
    RingError pop(std::span<uint8_t> buffer, RingRecord& record) noexcept;

    // Attached to the producer's current epoch.
    bool attached() const noexcept;
    uint64_t index() const noexcept { return cons_; }
    uint64_t epoch() const noexcept { return epoch_; }
    // Slots between our index and the producer's, as last seen by peek().
    uint64_t pending_slots() const noexcept { return pending_seen_; }
    // How often this consumer attached to a new producer epoch.
    uint64_t attach_count() const noexcept { return attach_count_; }
    uint64_t slot_count() const noexcept { return slot_count_; }
    uint32_t slot_bytes() const noexcept { return slot_bytes_; }
    // A buffer this large holds any record the ring can carry.
    uint64_t max_record_bytes() const noexcept { return max_record_slots_ * slot_bytes_; }
    const RingFault& fault() const noexcept { return fault_; }

  private:
    const uint8_t* slot_ptr(uint64_t index) const noexcept {
        return slots_ + (index & mask_) * slot_bytes_;
    }
    bool attach(uint64_t epoch) noexcept;
    RingError fail(const char* what, uint64_t value) noexcept;

    const uint8_t* slots_ = nullptr;
    uint64_t slot_count_ = 0;
    uint64_t mask_ = 0;
    uint64_t max_record_slots_ = 0;
    uint32_t slot_bytes_ = 0;
    const RingProducerControl* peer_ = nullptr;
    RingConsumerControl* own_ = nullptr;
    uint64_t cons_ = 0;  // our index: we are its only writer
    uint64_t epoch_ = 0;
    uint64_t peeked_slots_ = 0;  // what consume() hands back
    uint64_t pending_seen_ = 0;
    uint64_t attach_count_ = 0;
    RingFault fault_{};
};

}  // namespace jitlb
