// Maglev table: the properties the paper promises (every slot filled, even or
// weight-proportional shares, little disruption when the backend set changes),
// independence from the caller's order, agreement with a literal model of the
// paper's pseudo-code, and every error with its message.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include "maglev.h"

using namespace jitlb;

namespace {

// Backends with owned id strings, so that the MaglevBackend views stay valid.
struct BackendSet {
    std::vector<std::string> ids;
    std::vector<uint32_t> weights;

    std::vector<MaglevBackend> view() const {
        std::vector<MaglevBackend> backends;
        for (size_t i = 0; i < ids.size(); ++i) backends.push_back({ids[i], weights[i]});
        return backends;
    }
    void add(std::string id, uint32_t weight = 1) {
        ids.push_back(std::move(id));
        weights.push_back(weight);
    }
    void remove(size_t i) {
        ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(i));
        weights.erase(weights.begin() + static_cast<std::ptrdiff_t>(i));
    }
};

std::string address_id(size_t i) {
    return fmt::format("10.{}.{}.{}:8080", 1 + i / 65536, i / 256 % 256, i % 256);
}

BackendSet make_backends(size_t n) {
    BackendSet set;
    for (size_t i = 0; i < n; ++i) set.add(address_id(i));
    return set;
}

std::vector<uint32_t> build(const BackendSet& set, size_t table_size, MaglevOptions options = {}) {
    std::vector<uint32_t> table(table_size);
    const std::vector<MaglevBackend> backends = set.view();
    const MaglevError error = maglev_build(backends, table, options);
    INFO(maglev_error_message(error, backends, table_size));
    REQUIRE(error == MaglevError::ok);
    return table;
}

// The table as backend ids, so that tables over different sets (or the same set
// in another order) compare by who owns each slot.
std::vector<std::string_view> owners(const std::vector<uint32_t>& table, const BackendSet& set) {
    std::vector<std::string_view> result;
    result.reserve(table.size());
    for (const uint32_t index : table) result.push_back(set.ids.at(index));
    return result;
}

std::vector<size_t> slot_counts(const std::vector<uint32_t>& table, size_t backend_count) {
    std::vector<size_t> counts(backend_count, 0);
    for (const uint32_t index : table) ++counts.at(index);
    return counts;
}

// The paper's pseudo-code taken literally: permutation[i][j] = (offset + j *
// skip) % M and a next[] index per backend, plus the weighted turn rule from
// maglev.h. Written separately so that the optimised build is checked against
// something that shares none of its tricks.
std::vector<uint32_t> reference_build(const BackendSet& set, size_t m) {
    std::vector<size_t> order(set.ids.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return set.ids[a] < set.ids[b]; });
    const uint32_t max_weight = *std::max_element(set.weights.begin(), set.weights.end());

    std::vector<uint64_t> offset(order.size()), skip(order.size()), next(order.size(), 0);
    std::vector<uint64_t> credit(order.size(), 0);
    for (size_t i = 0; i < order.size(); ++i) {
        const std::string& id = set.ids[order[i]];
        const std::span<const uint8_t> bytes{reinterpret_cast<const uint8_t*>(id.data()),
                                             id.size()};
        offset[i] = hash_bytes(bytes, kMaglevOffsetSeed) % m;
        skip[i] = hash_bytes(bytes, kMaglevSkipSeed) % (m - 1) + 1;
    }
    auto permutation = [&](size_t i, uint64_t j) { return (offset[i] + j * skip[i]) % m; };

    std::vector<int64_t> entry(m, -1);
    size_t n = 0;
    while (true) {
        for (size_t i = 0; i < order.size(); ++i) {
            credit[i] += set.weights[order[i]];
            if (credit[i] < max_weight) continue;
            credit[i] -= max_weight;
            uint64_t c = permutation(i, next[i]);
            while (entry[c] >= 0) {
                ++next[i];
                c = permutation(i, next[i]);
            }
            entry[c] = static_cast<int64_t>(order[i]);
            ++next[i];
            if (++n == m) {
                return std::vector<uint32_t>(entry.begin(), entry.end());
            }
        }
    }
}

}  // namespace

TEST_CASE("every slot holds a valid backend index", "[maglev]") {
    for (const auto& [n, m] : {std::pair<size_t, size_t>{1, 101}, {3, 307}, {10, 65537}}) {
        const BackendSet set = make_backends(n);
        // Fill with an impossible index first: a skipped slot would keep it.
        std::vector<uint32_t> table(m, UINT32_MAX);
        REQUIRE(maglev_build(set.view(), table) == MaglevError::ok);
        for (const uint32_t index : table) REQUIRE(index < n);
    }
}

TEST_CASE("equal weights give every backend floor(M/N) or ceil(M/N) slots", "[maglev]") {
    for (const auto& [n, m] :
         {std::pair<size_t, size_t>{10, 65537}, {100, 65537}, {500, 65537}, {1000, 655373}}) {
        const BackendSet set = make_backends(n);
        const std::vector<size_t> counts = slot_counts(build(set, m), n);
        const auto [min, max] = std::minmax_element(counts.begin(), counts.end());
        INFO("N=" << n << " M=" << m << " min=" << *min << " max=" << *max);
        CHECK(*min >= m / n);
        CHECK(*max <= (m + n - 1) / n);
    }
}

TEST_CASE("weights give proportional shares within 1%", "[maglev]") {
    const std::vector<std::vector<uint32_t>> weight_sets = {
        {1, 2, 3, 4}, {1, 10}, {5, 5, 1}, {1, 1000}, {7, 3, 3, 1, 100, 42}};
    const size_t m = 65537;
    for (const std::vector<uint32_t>& weights : weight_sets) {
        BackendSet set;
        for (size_t i = 0; i < weights.size(); ++i) set.add(address_id(i), weights[i]);
        const std::vector<size_t> counts = slot_counts(build(set, m), set.ids.size());
        uint64_t total_weight = 0;
        for (const uint32_t w : weights) total_weight += w;
        for (size_t i = 0; i < weights.size(); ++i) {
            const double expected = static_cast<double>(m) * weights[i] / total_weight;
            INFO("weight " << weights[i] << " of " << total_weight << ": " << counts[i]
                           << " slots, expected " << expected);
            CHECK(std::abs(static_cast<double>(counts[i]) - expected) <= 0.01 * expected);
        }
    }

    SECTION("many backends with mixed weights") {
        BackendSet set;
        for (size_t i = 0; i < 100; ++i) set.add(address_id(i), static_cast<uint32_t>(1 + i % 4));
        const std::vector<size_t> counts = slot_counts(build(set, m), set.ids.size());
        for (size_t i = 0; i < set.ids.size(); ++i) {
            const double expected = static_cast<double>(m) * set.weights[i] / 250.0;
            INFO(set.ids[i] << " weight " << set.weights[i] << ": " << counts[i] << " slots");
            CHECK(std::abs(static_cast<double>(counts[i]) - expected) <= 0.01 * expected);
        }
    }
}

TEST_CASE("a change of one backend moves few slots", "[maglev]") {
    for (const auto& [n, m] :
         {std::pair<size_t, size_t>{10, 65537}, {100, 65537}, {500, 65537}, {1000, 655373}}) {
        const BackendSet base = make_backends(n);
        const std::vector<std::string_view> before = owners(build(base, m), base);

        // Removal: the removed backend's slots all move (it is gone), and of the
        // other slots fewer than 1% of M. Try the first, a middle and the last.
        double worst_remove = 0;
        for (const size_t removed : {size_t{0}, n / 2, n - 1}) {
            BackendSet smaller = base;
            smaller.remove(removed);
            const std::vector<std::string_view> after = owners(build(smaller, m), smaller);
            size_t owned = 0, moved_owned = 0, moved_other = 0;
            for (size_t slot = 0; slot < m; ++slot) {
                if (before[slot] == base.ids[removed]) {
                    ++owned;
                    moved_owned += after[slot] != before[slot];
                } else {
                    moved_other += after[slot] != before[slot];
                }
            }
            INFO("N=" << n << " M=" << m << " removed " << base.ids[removed]);
            CHECK(moved_owned == owned);
            const double fraction = static_cast<double>(moved_other) / static_cast<double>(m);
            CHECK(fraction < 0.01);
            worst_remove = std::max(worst_remove, fraction);
        }

        // Addition: the new backend takes about M / (N + 1) slots; a few more
        // change hands between the others.
        BackendSet larger = base;
        larger.add("192.0.2.200:8080");
        const std::vector<std::string_view> after = owners(build(larger, m), larger);
        size_t moved = 0;
        for (size_t slot = 0; slot < m; ++slot) moved += after[slot] != before[slot];
        const double add_fraction = static_cast<double>(moved) / static_cast<double>(m);
        INFO("N=" << n << " M=" << m << " add moved " << moved);
        CHECK(add_fraction < 1.0 / static_cast<double>(n + 1) + 0.01);

        std::cout << fmt::format(
            "maglev disruption N={} M={}: remove moved {:.3f}% (non-owned, worst of 3), "
            "add moved {:.3f}% (new backend's fair share {:.3f}%)\n",
            n, m, 100 * worst_remove, 100 * add_fraction, 100.0 / static_cast<double>(n + 1));
    }
}

TEST_CASE("the caller's order of backends does not change the table", "[maglev]") {
    BackendSet set;
    for (size_t i = 0; i < 50; ++i) set.add(address_id(i), static_cast<uint32_t>(1 + i % 3));
    const size_t m = 5003;
    const std::vector<std::string_view> expected = owners(build(set, m), set);

    std::mt19937 rng(12345);
    for (int round = 0; round < 5; ++round) {
        // Shuffle ids and weights together: the pairs stay the same.
        std::vector<size_t> order(set.ids.size());
        for (size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::shuffle(order.begin(), order.end(), rng);
        BackendSet shuffled;
        for (const size_t i : order) shuffled.add(set.ids[i], set.weights[i]);
        CHECK(owners(build(shuffled, m), shuffled) == expected);
    }

    SECTION("reversed") {
        BackendSet reversed;
        for (size_t i = set.ids.size(); i-- > 0;) reversed.add(set.ids[i], set.weights[i]);
        CHECK(owners(build(reversed, m), reversed) == expected);
    }
}

TEST_CASE("the same input builds the same table", "[maglev]") {
    const BackendSet set = make_backends(100);
    CHECK(build(set, 65537) == build(set, 65537));

    SECTION("pinned: every node and every version must build this table") {
        BackendSet small;
        small.add("10.0.0.1:80");
        small.add("10.0.0.2:80");
        small.add("10.0.0.3:80", 2);
        const std::vector<uint32_t> table = build(small, 307);
        const std::vector<uint32_t> first(table.begin(), table.begin() + 16);
        CHECK(first == std::vector<uint32_t>{1, 2, 0, 1, 2, 0, 0, 2, 2, 1, 1, 2, 0, 2, 2, 2});
        const std::span<const uint8_t> bytes{reinterpret_cast<const uint8_t*>(table.data()),
                                             table.size() * sizeof(uint32_t)};
        CHECK(hash_bytes(bytes, 0) == 0xb688e8d6430ec906ull);
    }
}

TEST_CASE("the build agrees with a literal model of the paper's pseudo-code", "[maglev]") {
    std::mt19937 rng(777);
    for (const auto& [n, m] : {std::pair<size_t, size_t>{1, 101},
                               {2, 211},
                               {7, 701},
                               {13, 1301},
                               {40, 4001},
                               {100, 65537}}) {
        BackendSet equal = make_backends(n);
        CHECK(build(equal, m) == reference_build(equal, m));

        BackendSet weighted;
        for (size_t i = 0; i < n; ++i)
            weighted.add(address_id(i), static_cast<uint32_t>(1 + rng() % 5));
        CHECK(build(weighted, m) == reference_build(weighted, m));
    }
    SECTION("force: fewer than 100 slots per backend") {
        const BackendSet set = make_backends(10);
        CHECK(build(set, 11, {.force = true}) == reference_build(set, 11));
        CHECK(build(set, 97, {.force = true}) == reference_build(set, 97));
    }
    SECTION("the smallest tables") {
        const BackendSet one = make_backends(1), two = make_backends(2);
        CHECK(build(one, 2, {.force = true}) == reference_build(one, 2));
        CHECK(build(two, 2, {.force = true}) == reference_build(two, 2));
        CHECK(build(two, 3, {.force = true}) == reference_build(two, 3));
    }
}

TEST_CASE("maglev_lookup maps the hash range evenly onto the slots", "[maglev]") {
    const size_t m = 65537;
    std::vector<uint32_t> identity(m);
    for (size_t i = 0; i < m; ++i) identity[i] = static_cast<uint32_t>(i);

    CHECK(maglev_lookup(identity, 0) == 0);
    CHECK(maglev_lookup(identity, UINT64_MAX) == m - 1);
    // Slot i starts at ceil(i * 2^64 / M): the hash just below belongs to i - 1.
    for (const uint64_t i : {uint64_t{1}, uint64_t{2}, uint64_t{m / 2}, uint64_t{m - 1}}) {
        const Uint128 start = ((static_cast<Uint128>(i) << 64) + m - 1) / m;
        CHECK(maglev_lookup(identity, static_cast<uint64_t>(start)) == i);
        CHECK(maglev_lookup(identity, static_cast<uint64_t>(start) - 1) == i - 1);
    }

    // Random hashes through a built table: each backend's share of lookups
    // follows its share of slots.
    const BackendSet set = make_backends(10);
    const std::vector<uint32_t> table = build(set, m);
    std::vector<size_t> hits(10, 0);
    std::mt19937_64 rng(99);
    const size_t lookups = 200000;
    for (size_t i = 0; i < lookups; ++i) ++hits.at(maglev_lookup(table, rng()));
    for (const size_t h : hits) CHECK(std::abs(static_cast<double>(h) / lookups - 0.1) < 0.005);
}

TEST_CASE("maglev_build rejects bad input with the matching error", "[maglev]") {
    std::vector<uint32_t> table(65537, UINT32_MAX);
    const std::vector<uint32_t> untouched = table;

    SECTION("no backends") {
        CHECK(maglev_build({}, table) == MaglevError::no_backends);
        CHECK(maglev_error_message(MaglevError::no_backends, {}, 65537) ==
              "no backends: a Maglev table needs at least one backend");
    }
    SECTION("table size not prime, even with force") {
        const BackendSet set = make_backends(10);
        std::vector<uint32_t> even(65536);
        CHECK(maglev_build(set.view(), even) == MaglevError::table_size_not_prime);
        CHECK(maglev_build(set.view(), even, {.force = true}) == MaglevError::table_size_not_prime);
        std::vector<uint32_t> empty;
        CHECK(maglev_build(set.view(), empty, {.force = true}) ==
              MaglevError::table_size_not_prime);
        const std::string message =
            maglev_error_message(MaglevError::table_size_not_prime, set.view(), 65536);
        CHECK_THAT(message, Catch::StartsWith(
                                "table size 65536 is not prime (choose a prime such as 65537"));
        // The suggestion also satisfies the size rule.
        const BackendSet many = make_backends(1000);
        CHECK_THAT(maglev_error_message(MaglevError::table_size_not_prime, many.view(), 65536),
                   Catch::Contains("such as 100003"));
    }
    SECTION("table too small unless forced") {
        const BackendSet set = make_backends(20);
        std::vector<uint32_t> small(1009);
        CHECK(maglev_build(set.view(), small) == MaglevError::table_too_small);
        CHECK(maglev_build(set.view(), small, {.force = true}) == MaglevError::ok);
        CHECK_THAT(maglev_error_message(MaglevError::table_too_small, set.view(), 1009),
                   Catch::StartsWith("table size 1009 is smaller than 100 x 20 backends = 2000") &&
                       Catch::Contains("such as 2003") && Catch::Contains("use force"));
        std::vector<uint32_t> exact(2003);
        CHECK(maglev_build(set.view(), exact) == MaglevError::ok);
    }
    SECTION("more backends than slots, even with force") {
        const BackendSet set = make_backends(20);
        std::vector<uint32_t> tiny(7);
        CHECK(maglev_build(set.view(), tiny, {.force = true}) == MaglevError::too_many_backends);
        CHECK_THAT(maglev_error_message(MaglevError::too_many_backends, set.view(), 7),
                   Catch::StartsWith("20 backends do not fit in a table of 7 slots"));
    }
    SECTION("zero weight") {
        BackendSet set = make_backends(3);
        set.weights[1] = 0;
        CHECK(maglev_build(set.view(), table) == MaglevError::zero_weight);
        CHECK_THAT(maglev_error_message(MaglevError::zero_weight, set.view(), table.size()),
                   Catch::StartsWith("backend \"10.1.0.1:8080\" has weight 0"));
    }
    SECTION("duplicate id") {
        BackendSet set = make_backends(3);
        set.add("10.1.0.1:8080");
        CHECK(maglev_build(set.view(), table) == MaglevError::duplicate_id);
        CHECK_THAT(maglev_error_message(MaglevError::duplicate_id, set.view(), table.size()),
                   Catch::StartsWith("backend id \"10.1.0.1:8080\" appears more than once"));
    }
    // A failed build leaves the caller's table as it was.
    CHECK(table == untouched);
}

TEST_CASE("maglev_error_name names every error", "[maglev]") {
    const std::map<MaglevError, std::string_view> names = {
        {MaglevError::ok, "ok"},
        {MaglevError::no_backends, "no_backends"},
        {MaglevError::table_size_not_prime, "table_size_not_prime"},
        {MaglevError::table_too_small, "table_too_small"},
        {MaglevError::zero_weight, "zero_weight"},
        {MaglevError::duplicate_id, "duplicate_id"},
        {MaglevError::too_many_backends, "too_many_backends"},
    };
    for (const auto& [error, name] : names) CHECK(maglev_error_name(error) == name);
}

TEST_CASE("is_prime decides primality for every 64-bit value", "[maglev]") {
    // Against trial division for all small n.
    for (uint64_t n = 0; n < 20000; ++n) {
        bool prime = n >= 2;
        for (uint64_t d = 2; d * d <= n && prime; ++d) prime = n % d != 0;
        INFO(n);
        REQUIRE(is_prime(n) == prime);
    }
    // Table sizes, Mersenne primes and the largest 64-bit prime.
    for (const uint64_t p :
         {65537ull, 655373ull, 2147483647ull, 2305843009213693951ull, 18446744073709551557ull}) {
        CHECK(is_prime(p));
    }
    // Carmichael numbers, strong pseudoprimes to several bases, squares of
    // primes, and the largest 64-bit values.
    for (const uint64_t c :
         {561ull, 1105ull, 2047ull, 1373653ull, 25326001ull, 3215031751ull, 2152302898747ull,
          3474749660383ull, 341550071728321ull, 3825123056546413051ull, 4294967297ull,
          65537ull * 65537ull, 4294967291ull * 4294967291ull, 18446744073709551615ull,
          18446744073709551559ull}) {
        INFO(c);
        CHECK_FALSE(is_prime(c));
    }
    CHECK(next_prime(65536) == 65537);
    CHECK(next_prime(655360) == 655373);
    CHECK(next_prime(0) == 2);
}
