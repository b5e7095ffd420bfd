// Per-backend counters (docs/counters.md): counter slots handed out by the
// service table (kept while a backend stays, retired when it leaves, reused
// only after every worker has moved past the snapshots that named them), the
// state file's backend map that names them, and the baseline that keeps a
// reused slot's old counts away from its new backend.
#include <arpa/inet.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "ip_text.h"
#include "backend_slots.h"
#include "control_loop.h"
#include "counters.h"
#include "service_table.h"
#include "shared_layout.h"

using namespace jitlb;
using jitlb::test::ip;
using namespace jitlb::lb;

namespace {

ServiceSet service(const char* name, const char* vip) {
    ServiceSet s;
    s.name = name;
    s.mode = ForwardingMode::ipip;
    s.maglev_table_size = 65537;
    s.vips = {{ip(vip), 80, L4Protocol::tcp}};
    return s;
}

BackendSet backends(const char* service, std::vector<std::string> ids, uint32_t weight = 1) {
    BackendSet set;
    set.service = service;
    for (size_t i = 0; i < ids.size(); ++i) {
        Backend b;
        b.id = ids[i];
        b.address = ip(("172.16.0." + std::to_string(i + 1)).c_str());
        b.weight = weight;
        set.backends.push_back(b);
    }
    return set;
}

void require_ok(const ServiceApplyResult& r) {
    INFO(r.error);
    REQUIRE(r.ok);
}

// The slot of backend `id` of service `name` in the current snapshot.
uint32_t slot_of(const ServiceTable& table, const char* name, std::string_view id) {
    const Service* s = table.find_by_name(name);
    REQUIRE(s != nullptr);
    for (const BackendInfo& b : s->backends)
        if (b.id == id) return b.counter_slot;
    FAIL("no backend " << id);
    return kNoCounterSlot;
}

// What a sink was told, slot by slot.
struct RecordingSink final : BackendSlotSink {
    void slot_assigned(uint32_t slot, uint16_t service_id, const BackendInfo& b, bool fresh) override {
        named[slot] = {service_id, b.id};
        if (fresh) ++fresh_count;
        else ++update_count;
    }
    void slot_freed(uint32_t slot) override { named.erase(slot); }
    std::map<uint32_t, std::pair<uint16_t, std::string>> named;
    int fresh_count = 0;
    int update_count = 0;
};

// A state file in memory, laid out as jitlb lays it out.
struct StateInMemory {
    explicit StateInMemory(StatsBlockShape shape_, uint32_t blocks = 2) : shape(shape_) {
        sizes.service_capacity = shape.service_capacity;
        sizes.backend_capacity = shape.backend_capacity;
        sizes.worker_stats_lines = static_cast<uint32_t>(blocks * shape.block_bytes() / 64);
        bytes = compute_state_layout(sizes).total_bytes;
        memory = static_cast<uint8_t*>(std::aligned_alloc(4096, bytes));
        std::memset(memory, 0, bytes);
        start_state_region({memory, bytes}, sizes, new_region_epoch(), 1000, region);
    }
    ~StateInMemory() { std::free(memory); }
    StateInMemory(const StateInMemory&) = delete;
    StateInMemory& operator=(const StateInMemory&) = delete;

    // Worker `block` forwards `packets` of `bytes_each` to slot `slot`.
    void count(uint32_t block, uint32_t slot, uint64_t packets, uint64_t bytes_each) {
        auto* c = reinterpret_cast<BackendCounters*>(region.worker_stats.data() + block * shape.block_bytes() +
                                                     shape.backends_offset());
        c[slot].packets += packets;
        c[slot].bytes += packets * bytes_each;
    }
    std::map<std::string, BackendReport> report() const {
        std::map<std::string, BackendReport> by_id;
        const std::span<const BackendMapEntry> map(region.backends.data(), region.backends.size());
        for (const BackendReport& r : read_backend_counters(map, region.worker_stats, shape))
            by_id[std::string(r.info.id_view())] = r;
        return by_id;
    }

    StatsBlockShape shape;
    StateSizes sizes;
    size_t bytes = 0;
    uint8_t* memory = nullptr;
    StateRegion region;
};

}  // namespace

TEST_CASE("backend slots are taken until none is left, and a retired slot is free only once quiescent",
          "[backend_counters]") {
    BackendSlots slots(3);
    CHECK(slots.take() == 0);
    CHECK(slots.take() == 1);
    CHECK(slots.take() == 2);
    CHECK(slots.take() == kNoCounterSlot);
    slots.retire(1, 7);
    CHECK(slots.recycle(6) == 0);  // a worker may still hold snapshot 6, which names it
    CHECK(slots.take() == kNoCounterSlot);
    CHECK(slots.recycle(7) == 1);
    CHECK(slots.take() == 1);
    slots.retire(99, 1);  // not a slot: ignored
    CHECK(slots.retiring_count() == 0);
}

TEST_CASE("a backend_set gives each backend its own slot and a backend that stays keeps it", "[backend_counters]") {
    ServiceTable table(16);
    require_ok(table.apply(1, service("web", "203.0.113.10")));
    require_ok(table.apply(2, service("api", "203.0.113.11")));
    require_ok(table.apply(backends("web", {"a", "b", "c"})));
    require_ok(table.apply(backends("api", {"a", "x"})));  // same id, another service: its own slot
    std::vector<uint32_t> all = {slot_of(table, "web", "a"), slot_of(table, "web", "b"), slot_of(table, "web", "c"),
                                 slot_of(table, "api", "a"), slot_of(table, "api", "x")};
    std::sort(all.begin(), all.end());
    CHECK(std::adjacent_find(all.begin(), all.end()) == all.end());
    CHECK(all.back() < 16);

    const uint32_t a = slot_of(table, "web", "a"), c = slot_of(table, "web", "c");
    // b leaves, d arrives, a drains, c stays: a and c keep their slots.
    BackendSet next = backends("web", {"a", "c", "d"});
    next.backends[0].weight = 0;
    require_ok(table.apply(next));
    CHECK(slot_of(table, "web", "a") == a);
    CHECK(slot_of(table, "web", "c") == c);
    // A service_set keeps the backends and their slots.
    require_ok(table.apply(1, service("web", "203.0.113.10")));
    CHECK(slot_of(table, "web", "a") == a);
}

TEST_CASE("a slot that left is not handed out while a worker may still count into it", "[backend_counters]") {
    ServiceTable table(2);
    require_ok(table.apply(1, service("web", "203.0.113.10")));
    require_ok(table.apply(backends("web", {"a", "b"})));
    const uint32_t b = slot_of(table, "web", "b");
    Quiescence workers(1);
    workers.announce(0, table.current()->generation());  // the worker holds the snapshot naming b
    require_ok(table.apply(backends("web", {"a"})));
    CHECK(table.backend_slots().retiring_count() == 1);
    table.reclaim(workers);
    require_ok(table.apply(backends("web", {"a", "c"})));
    // Both slots taken (b's still retiring): c forwards, uncounted.
    CHECK(slot_of(table, "web", "c") == kNoCounterSlot);
    CHECK(table.uncounted_backends() == 1);
    CHECK(table.find_by_name("web")->maglev.size() == 65537);
    // The worker moves on: b's slot is free, and a backend_set that keeps c gives it that slot.
    workers.announce(0, table.current()->generation());
    table.reclaim(workers);
    CHECK(table.backend_slots().free_count() == 1);
    require_ok(table.apply(backends("web", {"a", "c"})));
    CHECK(slot_of(table, "web", "c") == b);
}

TEST_CASE("deleting a service retires its backends' slots", "[backend_counters]") {
    ServiceTable table(4);
    auto sink = std::make_shared<RecordingSink>();
    table.set_backend_sink(sink);
    require_ok(table.apply(1, service("web", "203.0.113.10")));
    require_ok(table.apply(backends("web", {"a", "b"})));
    CHECK(sink->named.size() == 2);
    require_ok(table.remove("web"));
    CHECK(sink->named.empty());
    CHECK(table.backend_slots().retiring_count() == 2);
    table.reclaim(Quiescence(0));
    CHECK(table.backend_slots().free_count() == 4);
}

TEST_CASE("the sink hears of each slot before it is used, of updates and of frees, and of slots assigned before it",
          "[backend_counters]") {
    ServiceTable table(8);
    require_ok(table.apply(1, service("web", "203.0.113.10")));
    require_ok(table.apply(backends("web", {"a", "b"})));
    auto sink = std::make_shared<RecordingSink>();
    table.set_backend_sink(sink);
    CHECK(sink->fresh_count == 2);  // the slots assigned before it came
    CHECK(sink->named.at(slot_of(table, "web", "a")) == std::pair<uint16_t, std::string>{1, "a"});
    require_ok(table.apply(backends("web", {"a", "b"}, 0)));  // both drain: same backends, updated
    CHECK(sink->update_count == 2);
    CHECK(sink->fresh_count == 2);
    require_ok(table.apply(backends("web", {"b", "c"})));
    CHECK(sink->named.size() == 2);
    CHECK(sink->named.at(slot_of(table, "web", "c")).second == "c");
    // The sink's owner went (the state file was unmapped): nothing is told, nothing breaks.
    sink.reset();
    require_ok(table.apply(backends("web", {"d"})));
}

TEST_CASE("the backend map names each slot, and a reused slot reports only its new backend's counts",
          "[backend_counters]") {
    StateInMemory state({4, 8});
    ServiceTable table(8);
    auto writer = std::make_shared<BackendMapWriter>(state.region, state.shape);
    table.set_backend_sink(writer);
    require_ok(table.apply(3, service("web", "203.0.113.10")));
    require_ok(table.apply(backends("web", {"a", "b"})));
    const uint32_t a = slot_of(table, "web", "a");
    state.count(0, a, 10, 100);  // two workers forward to a
    state.count(1, a, 5, 100);
    auto r = state.report();
    REQUIRE(r.size() == 2);
    CHECK(r["a"].packets == 15);
    CHECK(r["a"].bytes == 1500);
    CHECK(r["a"].info.service_id == 3);
    CHECK(r["a"].address_text() == "172.16.0.1");
    CHECK(r["a"].info.weight == 1);
    CHECK(r["b"].packets == 0);
    const uint64_t generation = read_backend_map_generation(*state.region.header);

    // a leaves: the map no longer names its slot.
    require_ok(table.apply(backends("web", {"b"})));
    CHECK(read_backend_map_generation(*state.region.header) > generation);
    r = state.report();
    CHECK(r.size() == 1);
    CHECK(r.count("a") == 0);

    // Once quiescent, c takes a's slot: it starts from a's 15 packets as its baseline.
    table.reclaim(Quiescence(0));
    require_ok(table.apply(backends("web", {"b", "c"})));
    REQUIRE(slot_of(table, "web", "c") == a);
    r = state.report();
    CHECK(r["c"].packets == 0);
    CHECK(r["c"].bytes == 0);
    CHECK(r["c"].info.baseline_packets == 15);
    state.count(1, a, 2, 60);
    r = state.report();
    CHECK(r["c"].packets == 2);
    CHECK(r["c"].bytes == 120);
    CHECK(r["c"].address_text() == "172.16.0.2");

    // An update of a backend that stays (drain) keeps its baseline and counts.
    BackendSet drain = backends("web", {"b", "c"});
    drain.backends[1].weight = 0;
    require_ok(table.apply(drain));
    r = state.report();
    CHECK(r["c"].packets == 2);
    CHECK(r["c"].info.weight == 0);
}

TEST_CASE("stats blocks sum per service and per backend slot, and the shape matches the header's",
          "[backend_counters]") {
    StateInMemory state({4, 8}, 3);
    CHECK(StatsBlockShape::of(*state.region.header).block_bytes() == state.shape.block_bytes());
    CHECK(state.shape.block_bytes() % 64 == 0);
    CHECK(state.shape.backends_offset() == sizeof(WorkerCounters) + 5 * sizeof(ServiceCounters));
    for (uint32_t block = 0; block < 3; ++block) state.count(block, 7, block + 1, 10);
    WorkerCounters total{};
    std::vector<ServiceCounters> per_service(5);
    std::vector<BackendCounters> per_backend(8);
    sum_stats_blocks(state.region.worker_stats, state.shape, total, per_service, per_backend);
    CHECK(per_backend[7].packets == 6);
    CHECK(per_backend[7].bytes == 60);
    CHECK(sum_backend_slot(state.region.worker_stats, state.shape, 7).packets == 6);
    CHECK(sum_backend_slot(state.region.worker_stats, state.shape, 8).packets == 0);  // beyond: nothing
    for (uint32_t s = 0; s < 7; ++s) CHECK(per_backend[s].packets == 0);
}
