// HugeArray<T>: a fixed-size array of T in anonymous memory the kernel is asked to
// back with transparent huge pages (madvise MADV_HUGEPAGE, which works when
// /sys/kernel/mm/transparent_hugepage/enabled is "madvise" or "always"). For the
// data plane's large per-worker tables (the connection table): reached at random
// once per packet, in 4 KiB pages they cost a TLB miss per packet. Without huge
// pages it is an ordinary zeroed mapping. No DPDK: tests use it as it is.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>
#include <utility>

namespace jitlb {

template <typename T>
class HugeArray {
    static_assert(std::is_trivially_destructible_v<T>);

  public:
    static constexpr size_t kHugePage = size_t{2} << 20;

    HugeArray() = default;
    explicit HugeArray(size_t count) : count_(count) {
        if (count == 0) return;
        bytes_ = (count * sizeof(T) + kHugePage - 1) / kHugePage * kHugePage;
        // Over-allocate by one huge page to align the start: the kernel gives huge
        // pages only to aligned 2 MiB ranges.
        void* raw = ::mmap(nullptr, bytes_ + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED) throw std::bad_alloc();
        auto* base = static_cast<char*>(raw);
        const size_t lead = (kHugePage - reinterpret_cast<uintptr_t>(base) % kHugePage) % kHugePage;
        if (lead > 0) ::munmap(base, lead);
        if (kHugePage - lead > 0) ::munmap(base + lead + bytes_, kHugePage - lead);
        data_ = reinterpret_cast<T*>(base + lead);
        ::madvise(data_, bytes_, MADV_HUGEPAGE);  // a hint: refused or not, the memory works
        for (size_t i = 0; i < count_; ++i) new (&data_[i]) T();
    }
    ~HugeArray() { release(); }
    HugeArray(const HugeArray&) = delete;
    HugeArray& operator=(const HugeArray&) = delete;
    HugeArray(HugeArray&& o) noexcept
        : data_(std::exchange(o.data_, nullptr)), count_(std::exchange(o.count_, 0)), bytes_(std::exchange(o.bytes_, 0)) {}
    HugeArray& operator=(HugeArray&& o) noexcept {
        if (this != &o) {
            release();
            data_ = std::exchange(o.data_, nullptr);
            count_ = std::exchange(o.count_, 0);
            bytes_ = std::exchange(o.bytes_, 0);
        }
        return *this;
    }

    T& operator[](size_t i) noexcept { return data_[i]; }
    const T& operator[](size_t i) const noexcept { return data_[i]; }
    size_t size() const noexcept { return count_; }
    T* begin() noexcept { return data_; }
    T* end() noexcept { return data_ + count_; }
    const T* begin() const noexcept { return data_; }
    const T* end() const noexcept { return data_ + count_; }

  private:
    void release() noexcept {
        if (data_ != nullptr) ::munmap(data_, bytes_);
        data_ = nullptr;
    }
    T* data_ = nullptr;
    size_t count_ = 0;
    size_t bytes_ = 0;
};

}  // namespace jitlb
