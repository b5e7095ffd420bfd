// Per-backend counter slots (docs/counters.md): the index of a backend's
// BackendCounters in every worker's stats block. The main lcore's ServiceTable
// takes a slot for each backend a backend_set brings, keeps it while the
// backend stays (same id), and retires it when the backend or its service
// goes; a retired slot is handed out again only once every worker has moved
// past the last snapshot that named it (Quiescence), so no worker still counts
// into it for its previous backend. No DPDK: unit tests and TSan build it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace jitlb::lb {

// A backend that has no counter slot (the slots ran out): forwarded, not counted.
inline constexpr uint32_t kNoCounterSlot = UINT32_MAX;

class BackendSlots {
  public:
    explicit BackendSlots(uint32_t capacity);
    uint32_t capacity() const noexcept { return capacity_; }
    // A free slot, or kNoCounterSlot when every slot is taken or retiring.
    uint32_t take();
    // Snapshots from `generation` on no longer name `slot`.
    void retire(uint32_t slot, uint64_t generation);
    // Frees the retired slots that no snapshot a worker may hold names: those
    // retired at a generation <= `oldest_in_use` (Quiescence::oldest_in_use).
    size_t recycle(uint64_t oldest_in_use);
    size_t free_count() const noexcept { return free_.size(); }
    size_t retiring_count() const noexcept { return retiring_.size(); }

  private:
    uint32_t capacity_;
    std::vector<uint32_t> free_;                          // a stack: slot 0 on top at first
    std::vector<std::pair<uint64_t, uint32_t>> retiring_;  // (generation, slot)
};

}  // namespace jitlb::lb
