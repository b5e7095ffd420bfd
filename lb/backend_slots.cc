// Per-backend counter slots (backend_slots.h).
#include "backend_slots.h"

#include <algorithm>

namespace jitlb::lb {

BackendSlots::BackendSlots(uint32_t capacity) : capacity_(capacity) {
    free_.reserve(capacity);
    for (uint32_t slot = capacity; slot > 0; --slot) free_.push_back(slot - 1);
}

uint32_t BackendSlots::take() {
    if (free_.empty()) return kNoCounterSlot;
    const uint32_t slot = free_.back();
    free_.pop_back();
    return slot;
}

void BackendSlots::retire(uint32_t slot, uint64_t generation) {
    if (slot < capacity_) retiring_.emplace_back(generation, slot);
}

size_t BackendSlots::recycle(uint64_t oldest_in_use) {
    const size_t before = retiring_.size();
    std::erase_if(retiring_, [&](const std::pair<uint64_t, uint32_t>& r) {
        if (r.first > oldest_in_use) return false;
        free_.push_back(r.second);
        return true;
    });
    return before - retiring_.size();
}

}  // namespace jitlb::lb
