// libFuzzer target for the bytes another process controls (docs/shared-region.md):
//   first byte even: the message decoder on the rest; whatever it accepts must
//     re-encode to exactly the same bytes.
//   first byte odd: a ring consumer over slots and indices taken from the rest,
//     popping and decoding records, and a producer pushing against a garbage
//     consumer index. The slots are a heap block of exactly the ring's size, so
//     ASan stops any read or write outside them.
// Seeds: tests/fuzz/corpus/fuzz_messages/ (one encoded message of every type,
// and ring images).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "messages.h"
#include "spsc_ring.h"

using namespace jitlb;

namespace {

void fuzz_decoder(const uint8_t* data, size_t size) {
    DecodedMessage decoded;
    if (!decode_message({data, size}, decoded).ok()) return;
    std::vector<uint8_t> again;
    if (!encode_message(decoded.message, decoded.sequence, again).ok()) abort();
    if (again.size() != size || std::memcmp(again.data(), data, size) != 0) abort();
}

uint64_t take_u64(const uint8_t*& data, size_t& size) {
    uint64_t v = 0;
    const size_t n = size < 8 ? size : 8;
    std::memcpy(&v, data, n);
    data += n;
    size -= n;
    return v;
}

// Indices near the interesting values most of the time, anything otherwise.
uint64_t shape_index(uint64_t raw, uint64_t slots) {
    switch (raw & 3) {
        case 0:
            return raw;
        default:
            return (raw >> 2) % (4 * slots);
    }
}

void fuzz_ring(const uint8_t* data, size_t size) {
    if (size < 1) return;
    const uint8_t geometry = data[0];
    ++data;
    --size;
    const uint32_t slots = 2u << (geometry & 3);               // 2..16
    const uint32_t slot_bytes = 32u << ((geometry >> 2) & 3);  // 32..256
    const bool small_buffer = (geometry & 0x40) != 0;
    const uint64_t prod_raw = take_u64(data, size);
    const uint64_t cons_raw = take_u64(data, size);

    const size_t bytes = size_t{slots} * slot_bytes;
    std::unique_ptr<uint8_t[]> ring(new uint8_t[bytes]);
    std::memset(ring.get(), 0, bytes);
    std::memcpy(ring.get(), data, size < bytes ? size : bytes);

    RingProducerControl prod{};
    RingConsumerControl cons{};
    prod.index = shape_index(prod_raw, slots);
    prod.epoch = 1;
    cons.index = shape_index(cons_raw, slots);
    cons.epoch = (geometry & 0x80) != 0 ? 1 : 0;  // attached, or attaching first

    RingConsumer consumer({ring.get(), bytes}, slot_bytes, &prod, &cons);
    std::vector<uint8_t> buffer(small_buffer ? 40 : consumer.max_record_bytes());
    for (int i = 0; i < 16; ++i) {
        DecodedMessage decoded;
        const ReceiveResult got = pop_message(consumer, Direction::command, buffer, decoded);
        if (got.status == ReceiveStatus::empty || got.status == ReceiveStatus::ring_corrupt) break;
        if (got.status == ReceiveStatus::ok) {
            std::vector<uint8_t> again;
            if (!encode_message(decoded.message, decoded.sequence, again).ok()) abort();
        }
    }
    if (cons.index - consumer.index() != 0) abort();  // its control line says what it did

    // A producer against a consumer index it cannot trust.
    RingProducer producer({ring.get(), bytes}, slot_bytes, &prod, &cons);
    producer.reset(2);
    shared_store(cons.epoch, 2);
    shared_store(cons.index, shape_index(cons_raw >> 3, slots));
    for (int i = 0; i < 4; ++i) {
        const SendResult sent = push_message(producer, KeyReload{});
        if (!sent.ok()) break;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    if ((data[0] & 1) == 0) {
        fuzz_decoder(data + 1, size - 1);
    } else {
        fuzz_ring(data + 1, size - 1);
    }
    return 0;
}
