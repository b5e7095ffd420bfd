// The ring protocol of docs/shared-region.md. Slot bytes are plain memcpy:
// published by the producer's release store of its index, read only after the
// consumer's acquire load of it; indices and epochs go through shared_atomic.h.
#include "spsc_ring.h"

#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "shared_atomic.h"

namespace jitlb {
namespace {

bool power_of_two(uint64_t v) noexcept {
    return v != 0 && (v & (v - 1)) == 0;
}

void write_header(uint8_t* at, uint16_t type, uint16_t version, uint32_t length,
                  uint64_t sequence) noexcept {
    const RecordHeader header{type, version, length, sequence};
    std::memcpy(at, &header, sizeof header);
}

uint64_t check_geometry(size_t bytes, uint32_t slot_bytes) {
    const uint64_t count = slot_bytes == 0 ? 0 : bytes / slot_bytes;
    if (slot_bytes == 0 || bytes % slot_bytes != 0 || !ring_geometry_ok(count, slot_bytes)) {
        throw std::invalid_argument(fmt::format(
            "ring of {} bytes in slots of {} bytes: slot count and slot size must be powers "
            "of two (at least {} slots of {} to {} bytes)",
            bytes, slot_bytes, kRingMinGeometrySlots, kRingMinGeometrySlotBytes,
            kRingMaxGeometrySlotBytes));
    }
    return count;
}

}  // namespace

std::string_view ring_error_name(RingError error) noexcept {
    switch (error) {
        case RingError::ok:
            return "ok";
        case RingError::empty:
            return "empty";
        case RingError::full:
            return "full";
        case RingError::too_large:
            return "too_large";
        case RingError::not_attached:
            return "not_attached";
        case RingError::corrupt:
            return "corrupt";
        case RingError::buffer_too_small:
            return "buffer_too_small";
        case RingError::invalid_type:
            return "invalid_type";
    }
    return "unknown";
}

std::string describe_ring_fault(const RingFault& fault) {
    return fmt::format("ring corrupt at index {}: {} (value {})", fault.index, fault.what,
                       fault.value);
}

bool ring_geometry_ok(uint64_t slot_count, uint64_t slot_bytes) noexcept {
    return power_of_two(slot_count) && power_of_two(slot_bytes) &&
           slot_count >= kRingMinGeometrySlots && slot_bytes >= kRingMinGeometrySlotBytes &&
           slot_bytes <= kRingMaxGeometrySlotBytes && slot_count <= (uint64_t{1} << 32);
}

std::string describe_push_result(const PushResult& result, std::string_view ring_name) {
    switch (result.error) {
        case RingError::ok:
            return fmt::format("{}: pushed record {}", ring_name, result.sequence);
        case RingError::full:
            return fmt::format(
                "{} full: {} bytes needed, {} free (the consumer is behind; push it again "
                "later)",
                ring_name, result.needed_bytes, result.free_bytes);
        case RingError::too_large:
            return fmt::format(
                "{}: a record of {} bytes exceeds half the ring (split the message or give "
                "the ring more slots)",
                ring_name, result.needed_bytes);
        case RingError::not_attached:
            return fmt::format(
                "{}: the consumer has not attached to this run yet (is it running? push "
                "the full state when it attaches)",
                ring_name);
        default:
            return fmt::format("{}: {}", ring_name, ring_error_name(result.error));
    }
}

// --- producer -------------------------------------------------------------

RingProducer::RingProducer(std::span<uint8_t> slots, uint32_t slot_bytes, RingProducerControl* own,
                           const RingConsumerControl* peer)
    : slots_(slots.data()),
      slot_count_(check_geometry(slots.size(), slot_bytes)),
      mask_(slot_count_ - 1),
      max_record_slots_(slot_count_ / 2),
      slot_bytes_(slot_bytes),
      own_(own),
      peer_(peer),
      prod_(shared_load(own->index, std::memory_order_relaxed)),
      epoch_(shared_load(own->epoch, std::memory_order_relaxed)) {}

void RingProducer::reset(uint64_t epoch) noexcept {
    // epoch 0 first: a consumer that sees the new index 0 then sees a changed
    // epoch and re-attaches instead of reading our old slots as new ones.
    shared_store(own_->epoch, 0);
    shared_store(own_->index, 0);
    own_->slot_count = static_cast<uint32_t>(slot_count_);
    own_->slot_bytes = slot_bytes_;
    shared_store(own_->epoch, epoch);
    prod_ = 0;
    epoch_ = epoch;
    reserved_ = false;
}

bool RingProducer::attached() const noexcept {
    return peer_ != nullptr && epoch_ != 0 && shared_load(peer_->epoch) == epoch_;
}

uint64_t RingProducer::free_bytes() const noexcept {
    if (!attached()) return 0;
    const uint64_t used = prod_ - shared_load(peer_->index);
    return used > slot_count_ ? 0 : (slot_count_ - used) * slot_bytes_;
}

PushResult RingProducer::reserve(uint32_t payload_bytes, std::span<uint8_t>& payload) noexcept {
    reserved_ = false;
    PushResult result;
    const uint64_t slots = ring_record_slots(payload_bytes, slot_bytes_);
    result.needed_bytes = slots * slot_bytes_;
    if (slots > max_record_slots_) {
        result.error = RingError::too_large;
        return result;
    }
    // epoch before index: the consumer stores its index before its epoch.
    if (!attached()) {
        result.error = RingError::not_attached;
        return result;
    }
    const uint64_t cons = shared_load(peer_->index);
    const uint64_t used = prod_ - cons;
    if (used > slot_count_) {
        fault_ = {"consumer index is ahead of the producer's or more than a ring behind", prod_,
                  cons};
        result.error = RingError::corrupt;
        return result;
    }
    const uint64_t free = slot_count_ - used;
    const uint64_t to_end = slot_count_ - (prod_ & mask_);
    const uint64_t pad = to_end < slots ? to_end : 0;
    result.free_bytes = free * slot_bytes_;
    result.needed_bytes = (pad + slots) * slot_bytes_;
    if (pad + slots > free) {
        result.error = RingError::full;
        return result;
    }
    reserved_ = true;
    reserved_pad_ = pad;
    reserved_slots_ = slots;
    reserved_length_ = payload_bytes;
    payload = {slot_ptr(prod_ + pad) + sizeof(RecordHeader), payload_bytes};
    return result;
}

PushResult RingProducer::commit(uint16_t type, uint16_t version) noexcept {
    PushResult result;
    if (type == kRecordTypeInvalid || type == kRecordTypePad || !reserved_) {
        result.error = RingError::invalid_type;
        reserved_ = false;
        return result;
    }
    if (reserved_pad_ != 0) write_header(slot_ptr(prod_), kRecordTypePad, 0, 0, prod_);
    const uint64_t sequence = prod_ + reserved_pad_;
    write_header(slot_ptr(sequence), type, version, reserved_length_, sequence);
    prod_ = sequence + reserved_slots_;
    reserved_ = false;
    shared_store(own_->index, prod_);  // release: publishes header and payload
    result.sequence = sequence;
    return result;
}

PushResult RingProducer::push(uint16_t type, uint16_t version,
                              std::span<const uint8_t> payload) noexcept {
    if (type == kRecordTypeInvalid || type == kRecordTypePad) {
        return {.error = RingError::invalid_type};
    }
    if (payload.size() > UINT32_MAX) {
        return {.error = RingError::too_large, .needed_bytes = payload.size()};
    }
    std::span<uint8_t> room;
    const PushResult reserved = reserve(static_cast<uint32_t>(payload.size()), room);
    if (reserved.error != RingError::ok) return reserved;
    if (!payload.empty()) std::memcpy(room.data(), payload.data(), payload.size());
    return commit(type, version);
}

// --- consumer -------------------------------------------------------------

RingConsumer::RingConsumer(std::span<const uint8_t> slots, uint32_t slot_bytes,
                           const RingProducerControl* peer, RingConsumerControl* own)
    : slots_(slots.data()),
      slot_count_(check_geometry(slots.size(), slot_bytes)),
      mask_(slot_count_ - 1),
      max_record_slots_(slot_count_ / 2),
      slot_bytes_(slot_bytes),
      peer_(peer),
      own_(own),
      cons_(shared_load(own->index, std::memory_order_relaxed)),
      epoch_(shared_load(own->epoch, std::memory_order_relaxed)) {}

bool RingConsumer::attached() const noexcept {
    return peer_ != nullptr && epoch_ != 0 && shared_load(peer_->epoch) == epoch_;
}

bool RingConsumer::attach(uint64_t epoch) noexcept {
    const uint64_t prod = shared_load(peer_->index);
    // The producer zeroes its epoch before its index: an index from another
    // run shows up here as a changed epoch.
    if (shared_load(peer_->epoch) != epoch) return false;
    cons_ = prod;
    epoch_ = epoch;
    shared_store(own_->index, prod, std::memory_order_relaxed);
    shared_store(own_->epoch, epoch);  // release: the producer loads epoch, then index
    ++attach_count_;
    return true;
}

RingError RingConsumer::fail(const char* what, uint64_t value) noexcept {
    fault_ = {what, cons_, value};
    return RingError::corrupt;
}

RingError RingConsumer::peek(std::span<uint8_t> buffer, RingRecord& record) noexcept {
    peeked_slots_ = 0;
    record = {};
    if (peer_ == nullptr) return RingError::empty;
    // At most a PAD and then a record.
    for (int step = 0; step < 2; ++step) {
        const uint64_t epoch = shared_load(peer_->epoch);
        if (epoch == 0) return RingError::empty;  // the producer is resetting
        if (epoch != epoch_ && !attach(epoch)) return RingError::empty;
        const uint64_t prod = shared_load(peer_->index);
        if (shared_load(peer_->epoch) != epoch) return RingError::empty;  // reset under way
        const uint64_t avail = prod - cons_;
        pending_seen_ = avail;
        if (avail == 0) return RingError::empty;
        if (avail > slot_count_) {
            return fail("producer index is behind the consumer's or more than a ring ahead", prod);
        }
        const uint64_t to_end = slot_count_ - (cons_ & mask_);
        RecordHeader header;
        std::memcpy(&header, slot_ptr(cons_), sizeof header);  // once: the copy is checked
        if (header.sequence != cons_) {
            return fail("record sequence is not its index (stale or foreign bytes)",
                        header.sequence);
        }
        if (header.type == kRecordTypePad) {
            if (header.length != 0 || header.version != 0) {
                return fail("PAD record with a length or version", header.length);
            }
            if (to_end == slot_count_) return fail("PAD record at slot 0", 0);
            if (to_end > avail) return fail("PAD record runs past the producer index", to_end);
            cons_ += to_end;
            shared_store(own_->index, cons_);
            continue;
        }
        if (header.type == kRecordTypeInvalid) return fail("record type 0", 0);
        const uint64_t bytes = sizeof header + uint64_t{header.length};
        const uint64_t slots = (bytes + slot_bytes_ - 1) / slot_bytes_;
        if (slots > max_record_slots_) {
            return fail("record longer than half the ring", header.length);
        }
        if (slots > to_end) return fail("record runs past the end of the slots", slots);
        if (slots > avail) return fail("record runs past the producer index", slots);
        record.type = header.type;
        record.version = header.version;
        record.length = header.length;
        record.sequence = header.sequence;
        record.slots = slots;
        peeked_slots_ = slots;
        if (bytes > buffer.size()) return RingError::buffer_too_small;
        // No epoch check after the copy is needed: a producer that restarts
        // writes no slot before we attach to its new epoch, in a later call.
        std::memcpy(buffer.data(), slot_ptr(cons_), bytes);
        // The header as checked, not as re-read: the producer may have changed it.
        std::memcpy(buffer.data(), &header, sizeof header);
        record.bytes = buffer.first(bytes);
        return RingError::ok;
    }
    return fail("PAD record follows a PAD record", 0);
}

void RingConsumer::consume() noexcept {
    if (peeked_slots_ == 0) return;
    cons_ += peeked_slots_;
    peeked_slots_ = 0;
    shared_store(own_->index, cons_);  // release: our copy happens before the slots' reuse
}

RingError RingConsumer::pop(std::span<uint8_t> buffer, RingRecord& record) noexcept {
    const RingError error = peek(buffer, record);
    if (error == RingError::ok) consume();
    return error;
}

}  // namespace jitlb
