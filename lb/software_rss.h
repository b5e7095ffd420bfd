// Software RSS: when a port has no hardware RSS and jitlb runs several
// workers, the worker that owns the port's only rx queue spreads its frames
// over all workers by a hash of the IP source and destination addresses, and
// hands the others' share to them through rings (lb/worker.cc).
//
// Why addresses only, not the 5-tuple: every fragment of a packet, the first
// (with ports) and the later ones (without), must reach the same worker, whose
// connection table and 3-tuple hashing see them all; a flow's packets then
// stay on one worker too, since its addresses never change. The price is that
// one client talking to one VIP over many connections lands on one worker,
// which hardware RSS over ports would have spread.
//
// Frames that are not IPv4 or IPv6 (ARP, a truncated header, a third VLAN
// tag) are not hashed: the owning worker keeps them, and its pipeline gives
// them their answer or their counted drop. Nothing here trusts the frame
// beyond the bytes it checks are there. DPDK-free, so unit tests run it.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>

#include "flow_hash.h"
#include "packet.h"

namespace jitlb::lb {

// The hash of the frame's IP source and destination under `seed`, or nothing
// when the frame is not IPv4/IPv6 with both addresses present (after at most
// kMaxVlanTags tags, 802.1Q or 802.1ad).
inline std::optional<uint64_t> software_rss_hash(std::span<const uint8_t> frame, uint64_t seed) noexcept {
    using namespace flow_hash_detail;
    size_t off = 12;  // the EtherType, after the destination and source MACs
    for (unsigned tags = 0;; ++tags) {
        if (frame.size() < off + 2) return std::nullopt;
        const uint16_t type = static_cast<uint16_t>(frame[off] << 8 | frame[off + 1]);
        if (type == 0x8100 || type == 0x88a8) {
            if (tags == kMaxVlanTags) return std::nullopt;
            off += 4;
            continue;
        }
        off += 2;
        if (type == 0x0800) {
            // IPv4: source at 12, destination at 16.
            if (frame.size() < off + 20 || (frame[off] >> 4) != 4) return std::nullopt;
            const uint64_t addresses = load32(&frame[off + 12]) | static_cast<uint64_t>(load32(&frame[off + 16])) << 32;
            return finish(mix(addresses ^ seed ^ kPi, kE));
        }
        if (type == 0x86dd) {
            // IPv6: source at 8, destination at 24.
            if (frame.size() < off + 40 || (frame[off] >> 4) != 6) return std::nullopt;
            const uint8_t* a = &frame[off + 8];
            const uint64_t src = mix(load64(a) ^ seed ^ kPi, load64(a + 8) ^ kE);
            const uint64_t dst = mix(load64(a + 16) ^ seed ^ kPhi, load64(a + 24) ^ kSqrt3);
            return finish(mix(src ^ kSqrt5, dst ^ kPi));
        }
        return std::nullopt;
    }
}

// The worker, of `workers`, that a hash picks: the high 32 bits scaled to the
// range (no modulo, no bias worth naming for a handful of workers).
inline unsigned software_rss_worker(uint64_t hash, unsigned workers) noexcept {
    return static_cast<unsigned>(((hash >> 32) * workers) >> 32);
}

}  // namespace jitlb::lb
