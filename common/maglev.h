// Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
// Software Network Load Balancer", NSDI 2016, section 3.4). A table of M slots,
// M prime, each naming a backend: every backend owns a share of the slots
// proportional to its weight, and a change of the backend set moves few slots,
// so few established flows change backend. The control plane builds tables
// (slow path); the data plane only looks a flow's hash up.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "flow_hash.h"

namespace jitlb {

struct MaglevBackend {
    // A stable name or address. It alone decides where the backend goes in the
    // table, so the same id must mean the same backend on every node.
    std::string_view id;
    uint32_t weight = 1;
};

enum class MaglevError : uint8_t {
    ok,
    no_backends,
    table_size_not_prime,  // the permutations need a prime M; never overridable
    table_too_small,       // M < 100 x backends; allowed with MaglevOptions::force
    zero_weight,
    duplicate_id,
    too_many_backends,  // more backends than slots; never overridable
};

struct MaglevOptions {
    // Accept a table with fewer than kMaglevMinSlotsPerBackend slots per
    // backend. Shares then differ by up to one slot in M/N, and a change of
    // backends moves more slots than the paper's figures.
    bool force = false;
};

// The paper's advice: with M >= 100 N, shares differ by at most 1%.
inline constexpr size_t kMaglevMinSlotsPerBackend = 100;

// The fixed seeds that derive a backend's place in the table from its id:
// offset = hash(id, offset seed) % M, skip = hash(id, skip seed) % (M - 1) + 1.
// Changing them reshuffles every table, so they are part of the format.
inline constexpr uint64_t kMaglevOffsetSeed = 0x6d61676c65760001;  // "maglev" 1
inline constexpr uint64_t kMaglevSkipSeed = 0x6d61676c65760002;    // "maglev" 2

// Fills `table` (its size is M) with indices into `backends`. The result
// depends on the set of (id, weight) pairs, not on their order in `backends`:
// the same set builds the same table on every node. A backend whose weighted
// share is below one slot may own none. Allocates scratch of about M / 8 + 40 N
// bytes and takes about 1 ms for M = 65537, N = 100: meant for the slow path.
// On error, `table` is left unchanged.
MaglevError maglev_build(std::span<const MaglevBackend> backends, std::span<uint32_t> table,
                         MaglevOptions options = {});

// The backend index for a flow's hash. Maps the hash's full 64-bit range onto
// the table with a multiply-shift (the high word of hash x M), which is cheaper
// than a division and uses the hash's high bits. `table` must be non-empty.
inline uint32_t maglev_lookup(std::span<const uint32_t> table, uint64_t hash) noexcept {
    const Uint128 scaled = static_cast<Uint128>(hash) * table.size();
    return table[static_cast<size_t>(scaled >> 64)];
}

// "table_size_not_prime", ...: a stable name for counters, logs and JSON.
std::string_view maglev_error_name(MaglevError error) noexcept;

// What was wrong, with the values, and what to do, e.g. "table size 65536 is
// not prime (choose a prime such as 65537)". Takes the same backends and table
// size that maglev_build was given, so that it can name the offending backend.
std::string maglev_error_message(MaglevError error, std::span<const MaglevBackend> backends,
                                 size_t table_size);

// Deterministic for every 64-bit value (Miller-Rabin with a proven base set).
bool is_prime(uint64_t n) noexcept;

// The smallest prime >= n, for suggesting a table size. n must be at most the
// largest 64-bit prime, 2^64 - 59.
uint64_t next_prime(uint64_t n) noexcept;

}  // namespace jitlb
