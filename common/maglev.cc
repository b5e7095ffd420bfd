// Maglev table construction (see maglev.h): the paper's population loop, with
// weights, and three changes for speed that leave the table the same:
// permutations are generated on the fly instead of stored (N x M entries would
// be 2.6 GB for M = 655373, N = 1000); a bitmap of taken slots keeps the probes
// in cache; and the last sqrt(M) slots are found by a search over the free
// slots instead of a walk that would probe, on average, M / free slots each.
#include "maglev.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace jitlb {
namespace {

std::span<const uint8_t> id_bytes(std::string_view id) noexcept {
    return {reinterpret_cast<const uint8_t*>(id.data()), id.size()};
}

// One backend's walk along its permutation of the slots.
struct Cursor {
    uint64_t pos;     // the next slot of its permutation to try
    uint64_t skip;    // in [1, M - 1]; M prime makes the walk visit every slot
    uint64_t credit;  // weight accumulated since it last took a slot
    uint32_t weight;
    uint32_t index;  // into the caller's backends
};

// Indices into backends, in order of id.
std::vector<uint32_t> indices_by_id(std::span<const MaglevBackend> backends) {
    std::vector<uint32_t> order(backends.size());
    std::iota(order.begin(), order.end(), 0u);
    std::sort(order.begin(), order.end(),
              [&](uint32_t a, uint32_t b) { return backends[a].id < backends[b].id; });
    return order;
}

// The first id that appears twice, given the indices sorted by id.
const MaglevBackend* find_duplicate(std::span<const MaglevBackend> backends,
                                    std::span<const uint32_t> order) {
    for (size_t i = 1; i < order.size(); ++i) {
        if (backends[order[i - 1]].id == backends[order[i]].id) return &backends[order[i]];
    }
    return nullptr;
}

const MaglevBackend* find_zero_weight(std::span<const MaglevBackend> backends) {
    for (const MaglevBackend& backend : backends) {
        if (backend.weight == 0) return &backend;
    }
    return nullptr;
}

// The checks that need only the sizes, in the order maglev_build reports them.
MaglevError check_sizes(size_t backend_count, size_t table_size, MaglevOptions options) {
    if (backend_count == 0) return MaglevError::no_backends;
    if (!is_prime(table_size)) return MaglevError::table_size_not_prime;
    if (backend_count > table_size) return MaglevError::too_many_backends;
    if (table_size / kMaglevMinSlotsPerBackend < backend_count && !options.force) {
        return MaglevError::table_too_small;
    }
    return MaglevError::ok;
}

// A prime table size that satisfies the 100-slots-per-backend rule.
uint64_t suggested_size(size_t backend_count, size_t table_size) {
    const uint64_t wanted =
        std::max<uint64_t>(table_size, kMaglevMinSlotsPerBackend * backend_count);
    return next_prime(std::max<uint64_t>(wanted, 2));
}

// a + b mod m for a, b < m, without a division.
uint64_t add_mod(uint64_t a, uint64_t b, uint64_t m) noexcept {
    const uint64_t sum = a + b;
    return sum >= m ? sum - m : sum;
}

// floor(sqrt(n)) for n < 2^62.
uint64_t isqrt(uint64_t n) noexcept {
    uint64_t r = static_cast<uint64_t>(std::sqrt(static_cast<double>(n)));
    while (r * r > n) --r;
    while ((r + 1) * (r + 1) <= n) ++r;
    return r;
}

// Which slots are taken: M / 8 bytes, so the probes of the walk stay in cache
// where the table itself (4 M bytes) would not.
class SlotBitmap {
  public:
    explicit SlotBitmap(uint64_t size) : words_((size + 63) / 64, 0) {}
    bool test(uint64_t slot) const { return (words_[slot >> 6] >> (slot & 63)) & 1; }
    void set(uint64_t slot) { words_[slot >> 6] |= uint64_t{1} << (slot & 63); }

  private:
    std::vector<uint64_t> words_;
};

// The paper's walk: try the backend's permutation in order until a slot is
// free. The add-and-wrap replaces (offset + j * skip) % M.
uint64_t walk_to_free(const Cursor& cursor, const SlotBitmap& taken, uint64_t m) noexcept {
    uint64_t pos = cursor.pos;
    while (taken.test(pos)) pos = add_mod(pos, cursor.skip, m);
    return pos;
}

// x * y mod m for an odd m < 2^31 without a division (Montgomery, R = 2^32):
// mul(x, factor(y)) = x * y mod m.
class MontgomeryMod {
  public:
    explicit MontgomeryMod(uint32_t m) : m_(m), r_mod_m_((uint64_t{1} << 32) % m) {
        // Newton's iteration for m^-1 mod 2^32: m is its own inverse to 3 bits,
        // and each step doubles the correct bits (3, 6, 12, 24, 48).
        uint32_t inverse = m;
        for (int i = 0; i < 4; ++i) inverse *= 2 - m * inverse;
        neg_inverse_ = 0u - inverse;
    }
    uint32_t factor(uint32_t y) const { return static_cast<uint32_t>(y * r_mod_m_ % m_); }
    // x * y * 2^-32 mod m, for x, y < m.
    uint32_t mul(uint32_t x, uint32_t y) const {
        const uint64_t t = uint64_t{x} * y;
        const uint32_t q = static_cast<uint32_t>(t) * neg_inverse_;
        // t + q m is a multiple of 2^32 below 2^64, since m < 2^31.
        const uint32_t u = static_cast<uint32_t>((t + uint64_t{q} * m_) >> 32);
        return u >= m_ ? u - m_ : u;
    }

  private:
    uint32_t m_;
    uint64_t r_mod_m_;
    uint32_t neg_inverse_ = 0;
};

// x^-1 mod m for a prime m and 0 < x < m (extended Euclid).
uint32_t inverse_mod(uint32_t x, uint32_t m) {
    int64_t r0 = m, r1 = x, t0 = 0, t1 = 1;
    while (r1 != 0) {
        const int64_t q = r0 / r1;
        r0 = std::exchange(r1, r0 - q * r1);
        t0 = std::exchange(t1, t0 - q * t1);
    }
    return static_cast<uint32_t>(t0 < 0 ? t0 + m : t0);
}

// The end of the fill, when few slots are free: instead of walking, measure
// how many steps of the backend's walk each free slot is away, (slot - pos) /
// skip mod M, and take the nearest. That is the slot the walk would reach
// first, so the table is the same as the walk's, only faster to build.
class TailSearch {
  public:
    static bool supports(uint64_t m) { return m % 2 == 1 && m < (uint64_t{1} << 31); }

    TailSearch(const SlotBitmap& taken, std::span<const Cursor> cursors, uint64_t m)
        : m_(static_cast<uint32_t>(m)), mod_(m_) {
        for (uint32_t slot = 0; slot < m_; ++slot) {
            if (!taken.test(slot)) free_slots_.push_back(slot);
        }
        step_factors_.reserve(cursors.size());
        for (const Cursor& cursor : cursors) {
            step_factors_.push_back(
                mod_.factor(inverse_mod(static_cast<uint32_t>(cursor.skip), m_)));
        }
    }

    // Takes the free slot nearest along the walk of cursors[cursor_index].
    uint64_t take_nearest(const Cursor& cursor, size_t cursor_index) {
        const uint32_t pos = static_cast<uint32_t>(cursor.pos);
        const uint32_t factor = step_factors_[cursor_index];
        // (steps << 32 | i): the minimum names the nearest slot's place in the list.
        uint64_t best = UINT64_MAX;
        for (uint32_t i = 0; i < free_slots_.size(); ++i) {
            const uint32_t slot = free_slots_[i];
            const uint32_t distance = slot >= pos ? slot - pos : slot + (m_ - pos);
            const uint64_t key = (uint64_t{mod_.mul(distance, factor)} << 32) | i;
            best = std::min(best, key);
        }
        const uint32_t i = static_cast<uint32_t>(best);
        const uint32_t slot = free_slots_[i];
        free_slots_[i] = free_slots_.back();
        free_slots_.pop_back();
        return slot;
    }

  private:
    uint32_t m_;
    MontgomeryMod mod_;
    std::vector<uint32_t> free_slots_;
    std::vector<uint32_t> step_factors_;  // factor(skip^-1), per cursor
};

uint64_t mul_mod(uint64_t a, uint64_t b, uint64_t m) noexcept {
    return static_cast<uint64_t>(static_cast<Uint128>(a) * b % m);
}

uint64_t pow_mod(uint64_t base, uint64_t exponent, uint64_t m) noexcept {
    uint64_t result = 1;
    base %= m;
    for (; exponent != 0; exponent >>= 1) {
        if (exponent & 1) result = mul_mod(result, base, m);
        base = mul_mod(base, base, m);
    }
    return result;
}

}  // namespace

MaglevError maglev_build(std::span<const MaglevBackend> backends, std::span<uint32_t> table,
                         MaglevOptions options) {
    const uint64_t m = table.size();
    if (const MaglevError e = check_sizes(backends.size(), m, options); e != MaglevError::ok) {
        return e;
    }
    if (find_zero_weight(backends) != nullptr) return MaglevError::zero_weight;
    const std::vector<uint32_t> order = indices_by_id(backends);
    if (find_duplicate(backends, order) != nullptr) return MaglevError::duplicate_id;

    // Visiting backends in id order, with permutations derived from ids alone,
    // makes the table a function of the set: the caller's order cannot matter.
    std::vector<Cursor> cursors;
    cursors.reserve(order.size());
    uint32_t max_weight = 0;
    for (const uint32_t index : order) {
        const MaglevBackend& backend = backends[index];
        cursors.push_back(Cursor{
            .pos = hash_bytes(id_bytes(backend.id), kMaglevOffsetSeed) % m,
            .skip = hash_bytes(id_bytes(backend.id), kMaglevSkipSeed) % (m - 1) + 1,
            .credit = 0,
            .weight = backend.weight,
            .index = index,
        });
        max_weight = std::max(max_weight, backend.weight);
    }

    // Two ways to find a backend's next free slot, for the two ends of the fill.
    // The walk probes about M / free slots, so it is cheap while most slots are
    // free; the tail search costs one multiplication per free slot, so it takes
    // over when about sqrt(M) are left, where the two costs cross.
    SlotBitmap taken(m);
    std::unique_ptr<TailSearch> tail;  // (not std::optional: GCC 12 -Wmaybe-uninitialized under TSan)
    const uint64_t tail_size = TailSearch::supports(m) ? isqrt(m) : 0;
    uint64_t free_count = m;
    // Each round, every backend earns its weight in credit and takes a slot when
    // the credit reaches the largest weight: shares follow the weights, and equal
    // weights take turns exactly as in the paper. The heaviest backend takes a
    // slot every round, so the fill ends within M rounds.
    for (;;) {
        for (size_t c = 0; c < cursors.size(); ++c) {
            Cursor& cursor = cursors[c];
            cursor.credit += cursor.weight;
            if (cursor.credit < max_weight) continue;
            cursor.credit -= max_weight;

            uint64_t slot;
            if (free_count > tail_size) {
                slot = walk_to_free(cursor, taken, m);
                taken.set(slot);
            } else {
                if (!tail) tail = std::make_unique<TailSearch>(taken, cursors, m);
                slot = tail->take_nearest(cursor, c);
            }
            table[slot] = cursor.index;
            cursor.pos = add_mod(slot, cursor.skip, m);
            if (--free_count == 0) return MaglevError::ok;
        }
    }
}

std::string_view maglev_error_name(MaglevError error) noexcept {
    switch (error) {
        case MaglevError::ok:
            return "ok";
        case MaglevError::no_backends:
            return "no_backends";
        case MaglevError::table_size_not_prime:
            return "table_size_not_prime";
        case MaglevError::table_too_small:
            return "table_too_small";
        case MaglevError::zero_weight:
            return "zero_weight";
        case MaglevError::duplicate_id:
            return "duplicate_id";
        case MaglevError::too_many_backends:
            return "too_many_backends";
    }
    return "unknown";
}

std::string maglev_error_message(MaglevError error, std::span<const MaglevBackend> backends,
                                 size_t table_size) {
    const size_t n = backends.size();
    switch (error) {
        case MaglevError::ok:
            return "ok";
        case MaglevError::no_backends:
            return "no backends: a Maglev table needs at least one backend";
        case MaglevError::table_size_not_prime:
            return fmt::format(
                "table size {} is not prime (choose a prime such as {}: each backend's "
                "permutation of the slots needs a prime size)",
                table_size, suggested_size(n, table_size));
        case MaglevError::table_too_small:
            return fmt::format(
                "table size {} is smaller than {} x {} backends = {}; backends' shares would "
                "differ by more than 1% and a change of backends would move more flows "
                "(choose a prime such as {}, or use force to override)",
                table_size, kMaglevMinSlotsPerBackend, n, kMaglevMinSlotsPerBackend * n,
                suggested_size(n, table_size));
        case MaglevError::zero_weight: {
            const MaglevBackend* backend = find_zero_weight(backends);
            return fmt::format(
                "backend \"{}\" has weight 0 (weights start at 1; leave a draining backend "
                "out of the set the table is built from)",
                backend != nullptr ? backend->id : std::string_view{"?"});
        }
        case MaglevError::duplicate_id: {
            const std::vector<uint32_t> order = indices_by_id(backends);
            const MaglevBackend* backend = find_duplicate(backends, order);
            return fmt::format(
                "backend id \"{}\" appears more than once (ids must be unique: each id "
                "decides its backend's place in the table)",
                backend != nullptr ? backend->id : std::string_view{"?"});
        }
        case MaglevError::too_many_backends:
            return fmt::format(
                "{} backends do not fit in a table of {} slots (each backend needs at least "
                "one slot; choose a prime such as {})",
                n, table_size, suggested_size(n, table_size));
    }
    return fmt::format("unknown Maglev error {}", static_cast<int>(error));
}

bool is_prime(uint64_t n) noexcept {
    // Trial division settles small n and removes most composites cheaply.
    constexpr uint64_t kBases[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};
    if (n < 2) return false;
    for (const uint64_t p : kBases) {
        if (n % p == 0) return n == p;
    }
    if (n < 37 * 37) return true;

    // Miller-Rabin: n - 1 = d * 2^s with d odd. The first twelve primes as bases
    // decide every n < 3.3 * 10^24 (Sorenson and Webster, 2015), so all 64-bit n.
    uint64_t d = n - 1;
    int s = 0;
    for (; (d & 1) == 0; d >>= 1) ++s;
    for (const uint64_t a : kBases) {
        uint64_t x = pow_mod(a, d, n);
        if (x == 1 || x == n - 1) continue;
        bool composite = true;
        for (int r = 1; r < s && composite; ++r) {
            x = mul_mod(x, x, n);
            composite = x != n - 1;
        }
        if (composite) return false;
    }
    return true;
}

uint64_t next_prime(uint64_t n) noexcept {
    while (!is_prime(n)) ++n;
    return n;
}

}  // namespace jitlb
