// Flow hash: determinism, seed sensitivity, avalanche (each input bit flips
// each output bit half the time), even spread of look-alike flows, and pinned
// known answers, because every node must compute the same function.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iostream>
#include <random>
#include <set>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include "flow_hash.h"

using namespace jitlb;

namespace {

constexpr uint8_t kTcp = 6;
constexpr uint8_t kUdp = 17;

FlowTuple v4_tuple(std::array<uint8_t, 4> src, std::array<uint8_t, 4> dst, uint16_t src_port,
                   uint16_t dst_port, uint8_t proto) {
    FlowTuple t;
    std::copy(src.begin(), src.end(), t.src.begin());
    std::copy(dst.begin(), dst.end(), t.dst.begin());
    t.src_port = src_port;
    t.dst_port = dst_port;
    t.proto = proto;
    t.version = IpVersion::v4;
    return t;
}

FlowTuple v6_tuple(std::array<uint8_t, 16> src, std::array<uint8_t, 16> dst, uint16_t src_port,
                   uint16_t dst_port, uint8_t proto) {
    FlowTuple t;
    t.src = src;
    t.dst = dst;
    t.src_port = src_port;
    t.dst_port = dst_port;
    t.proto = proto;
    t.version = IpVersion::v6;
    return t;
}

// A tuple from the bytes of its fields that can vary: addresses (4 or 16 bytes
// each), ports and protocol. Version and padding are not free bits.
FlowTuple tuple_from_bytes(IpVersion version, std::span<const uint8_t> bytes) {
    const size_t address_size = version == IpVersion::v4 ? 4 : 16;
    FlowTuple t;
    std::memcpy(t.src.data(), bytes.data(), address_size);
    std::memcpy(t.dst.data(), bytes.data() + address_size, address_size);
    std::memcpy(&t.src_port, bytes.data() + 2 * address_size, 2);
    std::memcpy(&t.dst_port, bytes.data() + 2 * address_size + 2, 2);
    t.proto = bytes[2 * address_size + 4];
    t.version = version;
    return t;
}

size_t free_bytes(IpVersion version) {
    return version == IpVersion::v4 ? 13 : 37;
}

std::vector<uint8_t> random_bytes(std::mt19937_64& rng, size_t n) {
    std::vector<uint8_t> bytes(n);
    for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
    return bytes;
}

// Strict avalanche: over `samples` random inputs of `input_bytes` bytes, the
// probability that flipping input bit i flips output bit j, for every (i, j).
// Returns the largest distance from 0.5.
template <class Hash>
double worst_avalanche_bias(size_t input_bytes, size_t samples, uint64_t rng_seed, Hash hash) {
    std::mt19937_64 rng(rng_seed);
    const size_t input_bits = input_bytes * 8;
    std::vector<uint32_t> flips(input_bits * 64, 0);
    for (size_t s = 0; s < samples; ++s) {
        std::vector<uint8_t> input = random_bytes(rng, input_bytes);
        const uint64_t base = hash(std::span<const uint8_t>(input));
        for (size_t bit = 0; bit < input_bits; ++bit) {
            input[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
            uint64_t changed = base ^ hash(std::span<const uint8_t>(input));
            input[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
            uint32_t* row = &flips[bit * 64];
            for (int out = 0; out < 64; ++out, changed >>= 1) row[out] += changed & 1;
        }
    }
    double worst = 0;
    for (const uint32_t count : flips) {
        worst = std::max(worst, std::abs(static_cast<double>(count) / samples - 0.5));
    }
    return worst;
}

// With 10000 samples a fair bit's estimate has a standard deviation of 0.005,
// so 0.05 is ten of them: a pass is not luck, and a fail is a real bias.
constexpr size_t kAvalancheSamples = 10000;
constexpr double kAvalancheTolerance = 0.05;

}  // namespace

TEST_CASE("the same tuple and seed always give the same hash", "[flow_hash]") {
    std::mt19937_64 rng(1);
    for (int i = 0; i < 1000; ++i) {
        const IpVersion version = i % 2 ? IpVersion::v4 : IpVersion::v6;
        const FlowTuple a = tuple_from_bytes(version, random_bytes(rng, free_bytes(version)));
        const FlowTuple b = a;
        const uint64_t seed = rng();
        CHECK(flow_hash(a, seed) == flow_hash(b, seed));
        CHECK(flow_hash(a, seed) == flow_hash(a, seed));
    }
}

TEST_CASE("different seeds give different hashes", "[flow_hash]") {
    std::mt19937_64 rng(2);
    for (int i = 0; i < 1000; ++i) {
        const IpVersion version = i % 2 ? IpVersion::v4 : IpVersion::v6;
        const FlowTuple t = tuple_from_bytes(version, random_bytes(rng, free_bytes(version)));
        const uint64_t seed = rng();
        CHECK(flow_hash(t, seed) != flow_hash(t, seed + 1));
        CHECK(flow_hash(t, seed) != flow_hash(t, seed ^ (uint64_t{1} << 63)));
        const std::vector<uint8_t> bytes = random_bytes(rng, static_cast<size_t>(i % 40));
        CHECK(hash_bytes(bytes, seed) != hash_bytes(bytes, seed + 1));
    }
}

TEST_CASE("flipping any input bit flips each output bit with probability 0.5", "[flow_hash]") {
    struct Case {
        std::string_view name;
        size_t input_bytes;
        std::function<uint64_t(std::span<const uint8_t>)> hash;
    };
    const std::vector<Case> cases = {
        {"flow_hash IPv4 (addresses, ports, protocol)", free_bytes(IpVersion::v4),
         [](std::span<const uint8_t> in) {
             return flow_hash(tuple_from_bytes(IpVersion::v4, in), 0x1234);
         }},
        {"flow_hash IPv6 (addresses, ports, protocol)", free_bytes(IpVersion::v6),
         [](std::span<const uint8_t> in) {
             return flow_hash(tuple_from_bytes(IpVersion::v6, in), 0x1234);
         }},
        {"flow_hash IPv4, seed bits", 8,
         [](std::span<const uint8_t> in) {
             uint64_t seed;
             std::memcpy(&seed, in.data(), 8);
             return flow_hash(v4_tuple({10, 0, 0, 1}, {192, 0, 2, 1}, 40000, 443, kTcp), seed);
         }},
        {"flow_hash IPv6, seed bits", 8,
         [](std::span<const uint8_t> in) {
             uint64_t seed;
             std::memcpy(&seed, in.data(), 8);
             return flow_hash(v6_tuple({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},
                                       {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2},
                                       40000, 443, kTcp),
                              seed);
         }},
        {"hash_bytes 5 bytes", 5, [](std::span<const uint8_t> in) { return hash_bytes(in, 7); }},
        {"hash_bytes 16 bytes", 16, [](std::span<const uint8_t> in) { return hash_bytes(in, 7); }},
        {"hash_bytes 21 bytes", 21, [](std::span<const uint8_t> in) { return hash_bytes(in, 7); }},
        {"hash_bytes 40 bytes", 40, [](std::span<const uint8_t> in) { return hash_bytes(in, 7); }},
    };
    uint64_t rng_seed = 100;
    for (const Case& c : cases) {
        const double bias =
            worst_avalanche_bias(c.input_bytes, kAvalancheSamples, rng_seed++, c.hash);
        std::cout << fmt::format("avalanche {}: {} input bits, worst |p - 0.5| = {:.4f}\n", c.name,
                                 c.input_bytes * 8, bias);
        INFO(c.name << ": worst bias " << bias);
        CHECK(bias < kAvalancheTolerance);
    }
}

TEST_CASE("look-alike flows spread evenly over the hash range", "[flow_hash]") {
    // One client, one VIP, every source port: the least random traffic there
    // is. Maglev uses the high bits; a connection table may use the low ones.
    std::array<uint32_t, 256> high{}, low{};
    for (uint32_t port = 0; port < 65536; ++port) {
        const uint64_t h = flow_hash(
            v4_tuple({198, 51, 100, 7}, {192, 0, 2, 10}, static_cast<uint16_t>(port), 443, kTcp),
            0x5eed);
        ++high[h >> 56];
        ++low[h & 0xff];
    }
    // Chi-square with 255 degrees of freedom: mean 255, standard deviation 22.6.
    auto chi_square = [](const std::array<uint32_t, 256>& buckets) {
        double sum = 0;
        for (const uint32_t b : buckets) sum += (b - 256.0) * (b - 256.0) / 256.0;
        return sum;
    };
    INFO("high byte chi-square " << chi_square(high) << ", low byte " << chi_square(low));
    CHECK(chi_square(high) < 400);
    CHECK(chi_square(low) < 400);
}

TEST_CASE("tuples that differ in one field hash differently", "[flow_hash]") {
    const FlowTuple base = v4_tuple({10, 0, 0, 1}, {192, 0, 2, 1}, 40000, 443, kTcp);
    std::vector<FlowTuple> variants(7, base);
    variants[1].src[3] = 2;
    variants[2].dst[3] = 2;
    variants[3].src_port = 40001;
    variants[4].dst_port = 80;
    variants[5].proto = kUdp;
    // The same leading bytes as an IPv6 tuple: the version byte separates them.
    variants[6].version = IpVersion::v6;
    std::set<uint64_t> hashes;
    for (const FlowTuple& t : variants) hashes.insert(flow_hash(t, 0));
    CHECK(hashes.size() == variants.size());

    // Swapping source and destination is a different flow (the reply direction).
    const FlowTuple reversed = v4_tuple({192, 0, 2, 1}, {10, 0, 0, 1}, 443, 40000, kTcp);
    CHECK(flow_hash(reversed, 0) != flow_hash(base, 0));
}

TEST_CASE("hash_bytes tells apart inputs that differ only in length", "[flow_hash]") {
    // 0 to 40 zero bytes: the padding of the last block must not hide the length.
    const std::vector<uint8_t> zeros(40, 0);
    std::set<uint64_t> hashes;
    for (size_t n = 0; n <= zeros.size(); ++n) {
        hashes.insert(hash_bytes(std::span<const uint8_t>(zeros).first(n), 0));
    }
    CHECK(hashes.size() == zeros.size() + 1);
}

TEST_CASE("known answers: the function every node must agree on", "[flow_hash]") {
    // If one of these fails, the hash changed: every node of a deployment must
    // be upgraded together, or flows will move between backends.
    CHECK(flow_hash(v4_tuple({10, 0, 0, 1}, {192, 0, 2, 1}, 40000, 443, kTcp), 0) ==
          0xc4e60b5b37ad015eull);
    CHECK(flow_hash(v4_tuple({10, 0, 0, 1}, {192, 0, 2, 1}, 40000, 443, kTcp),
                    0x0123456789abcdef) == 0x54a8c2f7c298c452ull);
    CHECK(flow_hash(v4_tuple({198, 51, 100, 7}, {203, 0, 113, 9}, 53, 53, kUdp),
                    0x0123456789abcdef) == 0x81b7c051709b7f29ull);
    CHECK(flow_hash(v6_tuple({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},
                             {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}, 40000,
                             443, kTcp),
                    0x0123456789abcdef) == 0x96862e95ccaf0670ull);
    CHECK(flow_hash(FlowTuple{}, 0) == 0x3e9ffdbb6a031c12ull);

    auto text = [](std::string_view s) {
        return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
    };
    CHECK(hash_bytes({}, 0) == 0xa45c9dd4a9c23a6bull);
    CHECK(hash_bytes(text("10.0.0.1:80"), 0) == 0xe02a2115097a504cull);
    CHECK(hash_bytes(text("backend-0042.pool-a.example.net:8443"), 0x6d61676c65760001) ==
          0x6f0c400efd2a8d68ull);
}
