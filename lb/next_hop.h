// Next-hop MAC resolution: the MAC of the router that encapsulated packets
// (IP-in-IP, GUE) go to, learned by ARP (an IPv4 next hop) or IPv6 neighbour
// discovery (an IPv6 one) from the main lcore, and published to workers in
// one 64-bit word per family that they read once per burst.
//
// NextHopResolver is the state machine, with time passed in: what to send
// and when (every retry_ms until a reply, then a refresh every refresh_ms,
// the first refresh unicast to the known MAC as Linux's NUD probe, the next
// ones broadcast), and what to accept (a reply whose sender is the next hop,
// nothing else). While a refresh is unanswered the last MAC stays in use; a
// silence of unanswered_after_ms is counted and reported once. No DPDK: the
// main lcore sends the frames it writes, tests drive it with a fake clock.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "encap.h"
#include "flow.h"
#include "neighbour.h"

namespace jitlb::lb {

// A next hop's MAC as workers read it: the MAC in bits 0..47 (first byte
// lowest), kNextHopValid when known. 0 = unresolved.
inline constexpr uint64_t kNextHopValid = uint64_t{1} << 48;

constexpr uint64_t next_hop_word(const MacAddress& mac) noexcept {
    uint64_t w = kNextHopValid;
    for (size_t i = 0; i < 6; ++i) w |= uint64_t{mac[i]} << (8 * i);
    return w;
}
constexpr bool next_hop_valid(uint64_t word) noexcept { return (word & kNextHopValid) != 0; }
constexpr MacAddress next_hop_mac(uint64_t word) noexcept {
    MacAddress m{};
    for (size_t i = 0; i < 6; ++i) m[i] = static_cast<uint8_t>(word >> (8 * i));
    return m;
}

// The words workers read: by the outer packet's family (the backend's).
// One writer, the main lcore (store release); workers load acquire once per
// burst. A word is self-contained, so no seqlock is needed.
struct alignas(64) NextHopMacs {
    std::atomic<uint64_t> v4{0};  // outer IPv4 (IPv4 backends)
    std::atomic<uint64_t> v6{0};  // outer IPv6 (IPv6 backends)
};

struct NextHopTiming {
    int64_t retry_ms = 1'000;             // between requests while there is no answer
    int64_t refresh_ms = 30'000;          // after a reply, until the next request
    int64_t unanswered_after_ms = 5'000;  // silence counted and reported (once per episode)
};

struct NextHopStats {
    uint64_t requests_sent = 0;
    uint64_t replies_accepted = 0;
    uint64_t replies_ignored = 0;  // not from the next hop (or an NA without a MAC before any)
    uint64_t mac_changes = 0;      // an accepted reply with another MAC than the known one
    uint64_t unanswered = 0;       // episodes of unanswered_after_ms without a reply
};

class NextHopResolver {
  public:
    // `next_hop` and `source` of one family (ARP for IPv4, ND for IPv6);
    // `own_mac` is the port's.
    NextHopResolver(const IpAddress& next_hop, const IpAddress& source, const MacAddress& own_mac,
                    NextHopTiming timing = {}) noexcept;

    // A request is due at `now_ms` (the first at once).
    bool due(int64_t now_ms) const noexcept { return now_ms >= next_request_ms_; }
    // Writes the due request into `out` (kNeighbourSolicitationLen bytes
    // suffice), counts it and schedules the next; returns its length (0 if
    // `out` is too short: nothing changes). The caller sends it, or calls
    // again at the next tick.
    size_t write_request(int64_t now_ms, std::span<uint8_t> out) noexcept;

    enum class Verdict : uint8_t {
        learned,    // the first MAC
        changed,    // another MAC than the known one
        confirmed,  // the same MAC (or an NA without one, once resolved)
        ignored,    // not from the next hop, or says nothing usable
    };
    // An ARP reply or neighbour advertisement (parse_neighbour_reply's).
    Verdict on_reply(const NeighbourReply& reply, int64_t now_ms) noexcept;
    // True once, when no reply has come for unanswered_after_ms since the
    // first unanswered request (the MAC, if any, stays in use).
    bool check_unanswered(int64_t now_ms) noexcept;

    bool resolved() const noexcept { return next_hop_valid(word_); }
    uint64_t word() const noexcept { return word_; }
    MacAddress mac() const noexcept { return next_hop_mac(word_); }
    const IpAddress& next_hop() const noexcept { return next_hop_; }
    const IpAddress& source() const noexcept { return source_; }
    // Since when requests went unanswered (-1: the last one was answered).
    int64_t unanswered_since_ms() const noexcept { return outstanding_since_ms_; }
    const NextHopStats& stats() const noexcept { return stats_; }

  private:
    IpAddress next_hop_;
    IpAddress source_;
    MacAddress own_mac_;
    NextHopTiming timing_;
    uint64_t word_ = 0;
    int64_t next_request_ms_ = std::numeric_limits<int64_t>::min();
    int64_t outstanding_since_ms_ = -1;
    bool unanswered_reported_ = false;
    NextHopStats stats_;
};

// A port's next hops, at most one per family, and the words they publish:
// outer IPv4 packets go to the IPv4 next hop's MAC and outer IPv6 packets to
// the IPv6 one's; when only one is configured it serves both families (one
// router for both, the common case).
class NextHopSet {
  public:
    explicit NextHopSet(const MacAddress& own_mac, NextHopTiming timing = {}) noexcept
        : own_mac_(own_mac), timing_(timing) {}
    // One next hop and the node address to ask from, of the same family;
    // false (nothing added) for a family already present or mixed families.
    bool add(const IpAddress& next_hop, const IpAddress& source);
    bool empty() const noexcept { return resolvers_.empty(); }

    std::span<NextHopResolver> resolvers() noexcept { return resolvers_; }
    std::span<const NextHopResolver> resolvers() const noexcept { return resolvers_; }

    // What a received frame did.
    struct FrameResult {
        NeighbourFrame kind = NeighbourFrame::other;
        NextHopResolver* resolver = nullptr;  // the one it was for, if accepted
        NextHopResolver::Verdict verdict = NextHopResolver::Verdict::ignored;
    };
    // Parses a frame a worker handed over and gives a reply to the resolver
    // of its family (malformed and ignored ones are counted).
    FrameResult on_frame(std::span<const uint8_t> frame, int64_t now_ms) noexcept;

    // The words for the outer IPv4 and IPv6 families, as publish() writes them.
    uint64_t word_v4() const noexcept;
    uint64_t word_v6() const noexcept;
    // Stores both words (release) where workers read them.
    void publish(NextHopMacs& macs) const noexcept {
        macs.v4.store(word_v4(), std::memory_order_release);
        macs.v6.store(word_v6(), std::memory_order_release);
    }

    size_t resolved_count() const noexcept;
    NextHopStats totals() const noexcept;  // over the resolvers
    uint64_t malformed() const noexcept { return malformed_; }
    uint64_t ignored_other_family() const noexcept { return ignored_; }

  private:
    const NextHopResolver* of(IpVersion v) const noexcept;
    MacAddress own_mac_;
    NextHopTiming timing_;
    std::vector<NextHopResolver> resolvers_;
    uint64_t malformed_ = 0;
    uint64_t ignored_ = 0;  // a reply of a family without a next hop
};

}  // namespace jitlb::lb
