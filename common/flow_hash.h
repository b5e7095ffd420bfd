// Flow hash: the seeded hash of a 5-tuple that picks a flow's backend through
// Maglev, and the general byte hash that places backends in the Maglev table.
//
// Why this function:
//  - Speed. It runs once per packet, so it is a multiply-fold mixer (a 64x64 ->
//    128-bit multiply whose halves are xored) over 64-bit words: an IPv4 tuple
//    costs two multiplies, an IPv6 tuple four, a few ns either way.
//  - Agreement. Every node uses the same seed and the same function, so a
//    restarted node, or another node behind the same ECMP group, sends a flow to
//    the same backend. The known-answer tests pin the function: changing it is a
//    flag day for the whole fleet, not a refactor.
//  - It is not a PRF. Someone who knows the seed can choose ports that all land
//    on one backend. That is bounded by design: only sources holding a grant
//    reach Maglev at all, so the attack needs a grant, and what it can aim is
//    that source's own traffic.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "flow.h"

namespace jitlb {

// The known answers assume little-endian word loads.
static_assert(std::endian::native == std::endian::little);

// __extension__ keeps -Wpedantic quiet about the GCC/Clang 128-bit type.
__extension__ typedef unsigned __int128 Uint128;

namespace flow_hash_detail {

// Odd constants with about half of their bits set, taken from the fractional
// digits of pi, e, the golden ratio and sqrt(3) and sqrt(5): any such
// "nothing up my sleeve" values would do, but they must never change.
inline constexpr uint64_t kPi = 0x243f6a8885a308d3;
inline constexpr uint64_t kE = 0xb7e151628aed2a6b;
inline constexpr uint64_t kPhi = 0x9e3779b97f4a7c15;
inline constexpr uint64_t kSqrt3 = 0xbb67ae8584caa73b;
inline constexpr uint64_t kSqrt5 = 0x3c6ef372fe94f82b;

// The full 128-bit product folded to 64 bits: every input bit reaches the high
// half, and the xor brings the low half's bits back in.
inline uint64_t mix(uint64_t a, uint64_t b) noexcept {
    const Uint128 product = static_cast<Uint128>(a) * b;
    return static_cast<uint64_t>(product) ^ static_cast<uint64_t>(product >> 64);
}

// One mix moves a single flipped input bit into many, but not yet all, output
// bits; a second one with a fixed multiplier finishes the avalanche.
inline uint64_t finish(uint64_t h) noexcept {
    return mix(h ^ kSqrt3, kSqrt5);
}

inline uint64_t load64(const uint8_t* p) noexcept {
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline uint32_t load32(const uint8_t* p) noexcept {
    uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

}  // namespace flow_hash_detail

// The hash of a flow's 5-tuple under `seed`. An IPv4 tuple hashes only the
// bytes that can be non-zero (both addresses share one word; address bytes
// 4..15 are zero by FlowTuple's contract and are not read); anything else,
// IPv6 included, hashes all 40 bytes. The tuple's version byte is hashed, so an
// IPv4 tuple never equals an IPv6 tuple with the same leading bytes.
inline uint64_t flow_hash(const FlowTuple& tuple, uint64_t seed) noexcept {
    using namespace flow_hash_detail;
    // Ports, protocol, version and the zero padding: the tuple's last word.
    const uint64_t tail = load64(reinterpret_cast<const uint8_t*>(&tuple) + 32);
    if (tuple.version == IpVersion::v4) {
        const uint64_t addresses =
            load32(tuple.src.data()) | static_cast<uint64_t>(load32(tuple.dst.data())) << 32;
        return finish(mix(addresses ^ seed ^ kPi, tail ^ seed ^ kE));
    }
    const uint64_t src_mixed =
        mix(load64(tuple.src.data()) ^ seed ^ kPi, load64(tuple.src.data() + 8) ^ kE);
    const uint64_t dst_mixed =
        mix(load64(tuple.dst.data()) ^ seed ^ kPhi, load64(tuple.dst.data() + 8) ^ kSqrt3);
    return finish(mix(src_mixed ^ tail ^ kSqrt5, dst_mixed ^ kPi));
}

// The hash of any bytes under `seed` (backend ids, keys of other tables). The
// length is hashed, so inputs that differ only by trailing zeros differ.
inline uint64_t hash_bytes(std::span<const uint8_t> bytes, uint64_t seed) noexcept {
    using namespace flow_hash_detail;
    const uint8_t* p = bytes.data();
    size_t left = bytes.size();
    uint64_t h = seed ^ kPhi;
    for (; left >= 16; p += 16, left -= 16) {
        h = mix(load64(p) ^ h ^ kPi, load64(p + 8) ^ kE);
    }
    // The last 0..15 bytes, zero-padded. The length joins only after they are
    // mixed, so that no choice of bytes can cancel it.
    uint8_t last[16] = {};
    if (left != 0) std::memcpy(last, p, left);
    h = mix(load64(last) ^ h ^ kSqrt3, load64(last + 8) ^ kSqrt5);
    return finish(h ^ bytes.size());
}

}  // namespace jitlb
