// HugeArray (common/huge_array.h): the connection table's memory.
#include <catch2/catch.hpp>

#include <cstdint>
#include <utility>

#include "huge_array.h"

using namespace jitlb;

namespace {
struct alignas(64) Line {
    uint64_t a = 7;
    uint32_t b = 0;
};
}  // namespace

TEST_CASE("a HugeArray holds default-constructed elements from a 2 MiB boundary", "[huge_array]") {
    HugeArray<Line> lines(100'000);  // 6.1 MiB: rounded up to 4 huge pages
    REQUIRE(lines.size() == 100'000);
    CHECK(reinterpret_cast<uintptr_t>(lines.begin()) % HugeArray<Line>::kHugePage == 0);
    size_t wrong = 0;
    for (const Line& l : lines) wrong += l.a != 7 || l.b != 0;
    CHECK(wrong == 0);
    lines[99'999].b = 5;  // the last element is writable memory
    CHECK(lines[99'999].b == 5);
}

TEST_CASE("a HugeArray moves its memory and an empty one holds nothing", "[huge_array]") {
    HugeArray<Line> a(10);
    a[3].a = 42;
    const Line* before = a.begin();
    HugeArray<Line> b(std::move(a));
    CHECK(b.begin() == before);
    CHECK(b[3].a == 42);
    CHECK(a.size() == 0);  // NOLINT(bugprone-use-after-move): moved-from is empty by contract
    HugeArray<Line> c;
    c = std::move(b);
    CHECK(c.size() == 10);
    CHECK(c[3].a == 42);
    HugeArray<Line> none(0);
    CHECK(none.size() == 0);
    CHECK(none.begin() == none.end());
}
