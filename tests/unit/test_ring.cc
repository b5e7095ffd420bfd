// The SPSC ring protocol (common/spsc_ring.h, docs/shared-region.md "Rings"):
// multi-slot records, wrap by PAD, full and too-large refusals, attach and
// restart by epoch, corruption reported without reading outside the slots,
// and a producer and a consumer thread passing a million records.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <random>
#include <span>
#include <thread>
#include <vector>

#include "env_seconds.h"
#include "shared_atomic.h"
#include "spsc_ring.h"

using namespace jitlb;

namespace {

// Both sides of one ring in one process: slots exactly as large as the ring
// (heap, so ASan catches a read past them), and the two control lines.
struct Ring {
    Ring(uint32_t slots, uint32_t slot_bytes, uint64_t epoch = 7)
        : bytes(size_t{slots} * slot_bytes),
          storage(new uint8_t[bytes]()),
          producer({storage.get(), bytes}, slot_bytes, &prod, &cons),
          consumer({storage.get(), bytes}, slot_bytes, &prod, &cons) {
        producer.reset(epoch);
    }

    std::vector<uint8_t> snapshot() const {
        std::vector<uint8_t> all(storage.get(), storage.get() + bytes);
        const auto* p = reinterpret_cast<const uint8_t*>(&prod);
        const auto* c = reinterpret_cast<const uint8_t*>(&cons);
        all.insert(all.end(), p, p + sizeof prod);
        all.insert(all.end(), c, c + sizeof cons);
        return all;
    }

    size_t bytes;
    std::unique_ptr<uint8_t[]> storage;
    RingProducerControl prod{};
    RingConsumerControl cons{};
    RingProducer producer;
    RingConsumer consumer;
};

std::vector<uint8_t> pattern(size_t n, uint64_t seed) {
    std::vector<uint8_t> out(n);
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (auto& b : out) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b = static_cast<uint8_t>(x);
    }
    return out;
}

// Attaches the consumer (its first peek) so that the producer may push.
void attach(Ring& r) {
    std::vector<uint8_t> buf(r.consumer.max_record_bytes());
    RingRecord rec;
    REQUIRE(r.consumer.peek(buf, rec) == RingError::empty);
    REQUIRE(r.producer.attached());
}

double torture_seconds() {
    return env_seconds("JITLB_RING_TORTURE_SECONDS", 5.0);
}

}  // namespace

TEST_CASE("a pushed record is popped with its type, version, sequence and payload") {
    Ring r(64, 64);
    attach(r);
    const auto payload = pattern(100, 1);  // 116 bytes with the header: 2 slots
    const PushResult pushed = r.producer.push(0x0102, 3, payload);
    REQUIRE(pushed.error == RingError::ok);
    CHECK(pushed.sequence == 0);
    CHECK(r.producer.index() == 2);

    std::vector<uint8_t> buf(r.consumer.max_record_bytes());
    RingRecord rec;
    REQUIRE(r.consumer.pop(buf, rec) == RingError::ok);
    CHECK(rec.type == 0x0102);
    CHECK(rec.version == 3);
    CHECK(rec.sequence == 0);
    CHECK(rec.slots == 2);
    CHECK(std::vector<uint8_t>(rec.payload().begin(), rec.payload().end()) == payload);
    CHECK(r.consumer.index() == 2);
    CHECK(shared_load(r.cons.index) == 2);
    CHECK(r.consumer.pop(buf, rec) == RingError::empty);
}

TEST_CASE("records of random sizes wrap around the ring intact, skipping to slot 0 by PAD") {
    Ring r(64, 64);
    attach(r);
    std::mt19937_64 rng(42);
    std::deque<std::pair<uint64_t, std::vector<uint8_t>>> expected;  // (sequence, payload)
    std::vector<uint8_t> buf(r.consumer.max_record_bytes());
    uint64_t pushed = 0, popped = 0, pads = 0, next_id = 0;
    for (int step = 0; step < 200000; ++step) {
        if (rng() % 2 == 0) {
            // 0 .. max payload (half the ring), weighted to small records.
            const size_t max = r.producer.max_payload_bytes();
            const size_t n = rng() % 4 == 0 ? rng() % (max + 1) : rng() % 200;
            const auto payload = pattern(n, next_id);
            const uint64_t before = r.producer.index();
            const PushResult res = r.producer.push(1, 1, payload);
            if (res.error == RingError::full) {
                CHECK(res.free_bytes < res.needed_bytes);
                continue;
            }
            REQUIRE(res.error == RingError::ok);
            if (res.sequence != before) ++pads;
            CHECK(res.sequence % 64 + ring_record_slots(n, 64) <= 64);  // never split
            expected.emplace_back(res.sequence, payload);
            ++next_id;
            ++pushed;
        } else {
            RingRecord rec;
            const RingError e = r.consumer.pop(buf, rec);
            if (expected.empty()) {
                REQUIRE(e == RingError::empty);
                continue;
            }
            REQUIRE(e == RingError::ok);
            REQUIRE(rec.sequence == expected.front().first);
            REQUIRE(std::equal(rec.payload().begin(), rec.payload().end(),
                               expected.front().second.begin(), expected.front().second.end()));
            expected.pop_front();
            ++popped;
        }
    }
    CHECK(pushed > 10000);
    CHECK(pads > 100);
    CHECK(r.producer.index() > 50 * 64);  // many laps
}

TEST_CASE("a full ring returns full with the free space and writes nothing") {
    Ring r(64, 64);
    attach(r);
    const auto payload = pattern(100, 9);  // 2 slots each
    for (int i = 0; i < 32; ++i) REQUIRE(r.producer.push(1, 1, payload).error == RingError::ok);
    const auto before = r.snapshot();
    const PushResult full = r.producer.push(1, 1, payload);
    CHECK(full.error == RingError::full);
    CHECK(full.free_bytes == 0);
    CHECK(full.needed_bytes == 128);
    CHECK(r.snapshot() == before);
    CHECK(describe_push_result(full, "command ring")
              .find("command ring full: 128 bytes "
                    "needed, 0 free") == 0);

    // One record consumed frees exactly its two slots.
    std::vector<uint8_t> buf(r.consumer.max_record_bytes());
    RingRecord rec;
    REQUIRE(r.consumer.pop(buf, rec) == RingError::ok);
    CHECK(r.producer.free_bytes() == 128);
    const auto big = pattern(200, 9);  // 4 slots: does not fit in 2
    const auto before_big = r.snapshot();
    const PushResult too_big = r.producer.push(1, 1, big);
    CHECK(too_big.error == RingError::full);
    CHECK(too_big.free_bytes == 128);
    CHECK(r.snapshot() == before_big);
    CHECK(r.producer.push(1, 1, payload).error == RingError::ok);
}

TEST_CASE("a record needing the slots before the end and a PAD counts the PAD as used") {
    Ring r(64, 64);
    attach(r);
    std::vector<uint8_t> buf(r.consumer.max_record_bytes());
    RingRecord rec;
    // Move both indices to slot 60: 4 slots left before the end.
    for (int i = 0; i < 30; ++i) {
        REQUIRE(r.producer.push(1, 1, pattern(100, i)).error == RingError::ok);
        REQUIRE(r.consumer.pop(buf, rec) == RingError::ok);
    }
    REQUIRE(r.producer.index() == 60);
    const auto payload = pattern(5 * 64 - 16, 1);  // exactly 5 slots
    const PushResult res = r.producer.push(1, 1, payload);
    REQUIRE(res.error == RingError::ok);
    CHECK(res.sequence == 64);  // after a PAD of 4 slots
    CHECK(r.producer.index() == 69);
    REQUIRE(r.consumer.pop(buf, rec) == RingError::ok);
    CHECK(rec.sequence == 64);
    CHECK(std::equal(rec.payload().begin(), rec.payload().end(), payload.begin(), payload.end()));
    CHECK(r.consumer.index() == 69);
}

TEST_CASE("a record larger than half the ring is refused as too_large; half always fits") {
    Ring r(64, 64);
    attach(r);
    const uint64_t max = r.producer.max_payload_bytes();
    CHECK(max == 32 * 64 - 16);
    const auto before = r.snapshot();
    const PushResult res = r.producer.push(1, 1, pattern(max + 1, 1));
    CHECK(res.error == RingError::too_large);
    CHECK(r.snapshot() == before);
    // An empty ring takes a record of half its size wherever the indices stand.
    std::vector<uint8_t> buf(r.consumer.max_record_bytes());
    RingRecord rec;
    for (int start = 0; start < 64; ++start) {
        REQUIRE(r.producer.push(1, 1, pattern(max, start)).error == RingError::ok);
        REQUIRE(r.consumer.pop(buf, rec) == RingError::ok);
        CHECK(rec.length == max);
        REQUIRE(r.producer.push(1, 1, {}).error == RingError::ok);  // shift by one slot
        REQUIRE(r.consumer.pop(buf, rec) == RingError::ok);
    }
}

TEST_CASE("the producer pushes nothing until the consumer attaches to its epoch") {
    Ring r(64, 64);
    CHECK_FALSE(r.producer.attached());
    const auto before = r.snapshot();
    CHECK(r.producer.push(1, 1, pattern(10, 1)).error == RingError::not_attached);
    CHECK(r.snapshot() == before);
    attach(r);
    CHECK(r.consumer.attach_count() == 1);
    CHECK(shared_load(r.cons.epoch) == 7);
    CHECK(r.producer.push(1, 1, pattern(10, 1)).error == RingError::ok);
}

TEST_CASE("a producer restart drops its old records and the consumer re-attaches") {
    Ring r(64, 64);
    attach(r);
    std::vector<uint8_t> buf(r.consumer.max_record_bytes());
    RingRecord rec;
    for (int i = 0; i < 10; ++i)
        REQUIRE(r.producer.push(1, 1, pattern(150, i)).error == RingError::ok);
    REQUIRE(r.consumer.pop(buf, rec) == RingError::ok);  // the consumer is at 3, producer at 30

    // A new run of the producer: index 0, epoch 8. Not attached until the consumer sees it.
    r.producer.reset(8);
    CHECK_FALSE(r.producer.attached());
    CHECK(r.producer.push(2, 1, pattern(10, 1)).error == RingError::not_attached);
    // The consumer reads none of the old records, re-attaches at 0 and sees the ring empty.
    CHECK(r.consumer.pop(buf, rec) == RingError::empty);
    CHECK(r.consumer.attach_count() == 2);
    CHECK(r.consumer.index() == 0);
    REQUIRE(r.producer.attached());
    const PushResult res = r.producer.push(2, 1, pattern(10, 77));
    REQUIRE(res.error == RingError::ok);
    CHECK(res.sequence == 0);
    REQUIRE(r.consumer.pop(buf, rec) == RingError::ok);
    CHECK(rec.type == 2);
    CHECK(rec.sequence == 0);
    CHECK(r.consumer.pop(buf, rec) == RingError::empty);
}

TEST_CASE("a consumer that sees a reset half done reads nothing from the old run") {
    Ring r(64, 64);
    attach(r);
    for (int i = 0; i < 4; ++i)
        REQUIRE(r.producer.push(1, 1, pattern(150, i)).error == RingError::ok);
    // The reset's first two stores only: epoch 0, index 0.
    shared_store(r.prod.epoch, 0);
    shared_store(r.prod.index, 0);
    std::vector<uint8_t> buf(r.consumer.max_record_bytes());
    RingRecord rec;
    CHECK(r.consumer.peek(buf, rec) == RingError::empty);
    CHECK(r.consumer.index() == 0);
    CHECK(r.consumer.attach_count() == 1);
}

TEST_CASE("a consumer restarted on its own control line carries on where it was") {
    Ring r(64, 64);
    attach(r);
    for (int i = 0; i < 5; ++i)
        REQUIRE(r.producer.push(1, 1, pattern(100, i)).error == RingError::ok);
    std::vector<uint8_t> buf(r.consumer.max_record_bytes());
    RingRecord rec;
    REQUIRE(r.consumer.pop(buf, rec) == RingError::ok);
    REQUIRE(r.consumer.pop(buf, rec) == RingError::ok);

    RingConsumer restarted({r.storage.get(), r.bytes}, 64, &r.prod, &r.cons);
    CHECK(restarted.index() == 4);
    REQUIRE(restarted.pop(buf, rec) == RingError::ok);
    CHECK(rec.sequence == 4);
    CHECK(restarted.attach_count() == 0);
    CHECK(std::equal(rec.payload().begin(), rec.payload().end(), pattern(100, 2).begin()));
}

TEST_CASE("a record larger than the consumer's buffer is reported and can be skipped") {
    Ring r(64, 64);
    attach(r);
    REQUIRE(r.producer.push(1, 1, pattern(500, 1)).error == RingError::ok);
    REQUIRE(r.producer.push(2, 1, pattern(10, 2)).error == RingError::ok);
    std::vector<uint8_t> small(100);
    RingRecord rec;
    REQUIRE(r.consumer.peek(small, rec) == RingError::buffer_too_small);
    CHECK(rec.type == 1);
    CHECK(rec.length == 500);
    CHECK(rec.bytes.empty());
    r.consumer.consume();
    REQUIRE(r.consumer.pop(small, rec) == RingError::ok);
    CHECK(rec.type == 2);
}

TEST_CASE("an impossible producer index or record header is corrupt and consumes nothing") {
    Ring r(64, 64);
    attach(r);
    REQUIRE(r.producer.push(1, 1, pattern(100, 1)).error == RingError::ok);  // slots 0-1
    std::vector<uint8_t> buf(r.consumer.max_record_bytes());
    RingRecord rec;
    auto header_at = [&](uint64_t slot) {
        return reinterpret_cast<RecordHeader*>(r.storage.get() + slot * 64);
    };
    // Corrupt, and nothing consumed: the index stays, twice over.
    auto corrupt = [&] {
        const uint64_t before = r.consumer.index();
        const bool is_corrupt = r.consumer.peek(buf, rec) == RingError::corrupt &&
                                r.consumer.pop(buf, rec) == RingError::corrupt;
        return is_corrupt && r.consumer.index() == before && shared_load(r.cons.index) == before;
    };

    SECTION("producer index more than a ring ahead") {
        shared_store(r.prod.index, 65);
        CHECK(corrupt());
        CHECK(describe_ring_fault(r.consumer.fault()).find("more than a ring ahead") !=
              std::string::npos);
    }
    SECTION("producer index behind the consumer's") {
        REQUIRE(r.consumer.pop(buf, rec) == RingError::ok);
        shared_store(r.prod.index, 1);
        CHECK(corrupt());
    }
    SECTION("a sequence that is not the record's index") {
        header_at(0)->sequence = 64;
        CHECK(corrupt());
        CHECK(std::string(r.consumer.fault().what).find("sequence") != std::string::npos);
    }
    SECTION("a length past the producer index") {
        header_at(0)->length = 300;
        CHECK(corrupt());
    }
    SECTION("a length past the end of the slots") {
        shared_store(r.prod.index, 64);
        header_at(0)->length = 0xffffffff;
        CHECK(corrupt());
    }
    SECTION("type 0") {
        header_at(0)->type = 0;
        CHECK(corrupt());
    }
    SECTION("a PAD at slot 0") {
        header_at(0)->type = kRecordTypePad;
        header_at(0)->length = 0;
        CHECK(corrupt());
    }
    SECTION("a PAD with a length") {
        header_at(0)->type = kRecordTypePad;
        CHECK(corrupt());
    }
}

TEST_CASE("the producer reports an impossible consumer index as corrupt and writes nothing") {
    Ring r(64, 64);
    attach(r);
    shared_store(r.cons.index, 5);  // ahead of the producer
    const auto before = r.snapshot();
    CHECK(r.producer.push(1, 1, pattern(10, 1)).error == RingError::corrupt);
    CHECK(r.snapshot() == before);
}

TEST_CASE("garbage slots and indices never make the consumer read outside the slots") {
    // The slots are a heap block of exactly the ring's size: ASan fails the
    // test on any read past it. The fuzz target does the same with coverage.
    std::mt19937_64 rng(7);
    for (int round = 0; round < 2000; ++round) {
        const uint32_t slots = 2u << (rng() % 6);
        const uint32_t slot_bytes = 32u << (rng() % 3);
        Ring r(slots, slot_bytes);
        for (size_t i = 0; i < r.bytes; ++i) r.storage[i] = static_cast<uint8_t>(rng());
        // Plausible headers now and then, so that the deeper checks run.
        for (uint32_t s = 0; s < slots; ++s) {
            if (rng() % 2 == 0) {
                RecordHeader h{static_cast<uint16_t>(rng() % 3 == 0 ? kRecordTypePad : rng() % 4),
                               0, static_cast<uint32_t>(rng() % (slot_bytes * slots)), s + 0};
                std::memcpy(r.storage.get() + size_t{s} * slot_bytes, &h, sizeof h);
            }
        }
        shared_store(r.prod.index, rng() % 4 == 0 ? rng() : rng() % (3 * slots));
        shared_store(r.cons.index, rng() % 4 == 0 ? rng() : rng() % (2 * slots));
        shared_store(r.cons.epoch, 7);
        RingConsumer consumer({r.storage.get(), r.bytes}, slot_bytes, &r.prod, &r.cons);
        std::vector<uint8_t> buf(rng() % 2 == 0 ? consumer.max_record_bytes() : 48);
        for (int i = 0; i < 8; ++i) {
            RingRecord rec;
            const RingError e = consumer.peek(buf, rec);
            if (e == RingError::ok || e == RingError::buffer_too_small) {
                CHECK(rec.slots <= slots / 2);
                consumer.consume();
            } else {
                break;
            }
        }
    }
}

// A record for the thread test: n, words derived from n, a checksum; 16 to
// 1000 bytes. Built from 8-byte words so that the sanitizers' per-access cost
// stays small.
size_t torture_words(uint64_t n) {
    return 2 + (n * 2654435761u) % 124;
}

void fill_torture_record(uint64_t n, std::vector<uint64_t>& words) {
    words.resize(torture_words(n));
    words[0] = n;
    uint64_t sum = n;
    for (size_t i = 1; i + 1 < words.size(); ++i) {
        words[i] = n * 0x9e3779b97f4a7c15ull + i;
        sum = sum * 131 + words[i];
    }
    words.back() = sum;
}

// n when the record is whole, else ~0.
uint64_t check_torture_record(std::span<const uint8_t> payload) {
    const size_t count = payload.size() / 8;
    if (payload.size() % 8 != 0 || count < 2) return ~uint64_t{0};
    std::vector<uint64_t> words(count);
    std::memcpy(words.data(), payload.data(), payload.size());
    const uint64_t n = words[0];
    uint64_t sum = n;
    for (size_t i = 1; i + 1 < count; ++i) {
        if (words[i] != n * 0x9e3779b97f4a7c15ull + i) return ~uint64_t{0};
        sum = sum * 131 + words[i];
    }
    return sum == words.back() && count == torture_words(n) ? n : ~uint64_t{0};
}

TEST_CASE("a producer thread and a consumer thread pass 1M records with checksums") {
    // Two threads on one ring, as jitd and jitlb are on the command ring. Under
    // ThreadSanitizer this proves the release/acquire pairs; everywhere it
    // proves that no record is lost, torn, duplicated or reordered (publishing
    // the index before the header: TSan reports the race, and release builds
    // often lose records). Bounded by
    // JITLB_RING_TORTURE_SECONDS (default 5 s) or 1M records, whichever first.
    constexpr uint64_t kRecords = 1'000'000;
    Ring r(256, 64);
    attach(r);
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(torture_seconds());
    std::atomic<bool> stop{false};
    std::atomic<bool> done{false};
    std::atomic<uint64_t> produced{0};

    std::thread producer([&] {
        std::vector<uint64_t> words;
        uint64_t n = 0;
        while (n < kRecords && !stop.load(std::memory_order_relaxed)) {
            fill_torture_record(n, words);
            const PushResult res = r.producer.push(
                1, 1, {reinterpret_cast<const uint8_t*>(words.data()), words.size() * 8});
            if (res.error == RingError::full) {
                std::this_thread::yield();
                continue;
            }
            if (res.error != RingError::ok) break;
            ++n;
        }
        produced.store(n);
        done.store(true);
    });

    uint64_t received = 0;
    uint64_t bad = 0;
    std::vector<uint8_t> buf(r.consumer.max_record_bytes());
    while (received < kRecords) {
        RingRecord rec;
        RingError e = r.consumer.pop(buf, rec);
        if (e == RingError::empty) {
            if (std::chrono::steady_clock::now() > deadline) stop.store(true);
            if (!done.load()) {
                std::this_thread::yield();
                continue;
            }
            // done is stored after the last push: a pop after seeing it finds
            // every record left.
            e = r.consumer.pop(buf, rec);
            if (e == RingError::empty) break;
        }
        if (e != RingError::ok) {
            ++bad;
            break;
        }
        if (check_torture_record(rec.payload()) != received) ++bad;
        ++received;
    }
    stop.store(true);
    producer.join();
    CHECK(bad == 0);
    CHECK(received == produced.load());
    CHECK(received >= std::min<uint64_t>(kRecords, 10000));
    WARN("ring torture: " << received << " records passed");
}
