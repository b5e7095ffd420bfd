// Loads and stores of the words that processes share through the region files
// (docs/shared-region.md). Every shared word is an aligned u64 accessed through
// std::atomic_ref: lock-free, a plain mov on x86-64, so a load works on a
// PROT_READ mapping. Never a 16-byte atomic on shared memory: cmpxchg16b writes,
// and faults on a read-only mapping.
#pragma once

#include <atomic>
#include <cstdint>

namespace jitlb {

static_assert(std::atomic_ref<uint64_t>::is_always_lock_free,
              "shared words must be lock-free: a lock cannot live in a read-only mapping");
static_assert(std::atomic_ref<uint64_t>::required_alignment == alignof(uint64_t));

// C++20 has no std::atomic_ref<const T>; a load never writes, so casting const
// away is sound even on a read-only mapping.
inline uint64_t shared_load(const uint64_t& word,
                            std::memory_order order = std::memory_order_acquire) noexcept {
    return std::atomic_ref<uint64_t>(const_cast<uint64_t&>(word)).load(order);
}

inline void shared_store(uint64_t& word, uint64_t value,
                         std::memory_order order = std::memory_order_release) noexcept {
    std::atomic_ref<uint64_t>(word).store(value, order);
}

}  // namespace jitlb
