// The worker's per-burst pipeline over plain bytes (no DPDK): parse, answer
// ARP / ND for our addresses and VIPs, find the service by VIP, look the
// burst's grants up in one bulk call, keep flows on their backend in a
// per-worker connection table, choose new flows' backends by Maglev, and
// rewrite each packet for its service's forwarding mode. The DPDK worker
// (lb/worker.cc) maps mbufs to PacketBuf and back; tests feed plain buffers.
//
// Nothing here allocates, locks, logs or makes a system call once built.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "counters.h"
#include "encap.h"
#include "flow.h"
#include "grant_table.h"
#include "huge_array.h"
#include "messages.h"
#include "next_hop.h"
#include "packet.h"
#include "service_table.h"

namespace jitlb::lb {

inline constexpr size_t kBurst = 32;
inline constexpr uint32_t kResetIntervalMs = 50;  // per flow, between pairs of resets

// A packet in a buffer that may grow at the front (headroom) for
// encapsulation; the pipeline moves `data` back and updates `len`.
struct PacketBuf {
    uint8_t* data = nullptr;
    uint32_t len = 0;
    uint32_t headroom = 0;  // bytes before data that may be used
    uint32_t tailroom = 0;  // bytes after data + len that may be used
};

// Spare buffers the caller lends the pipeline for packets it makes beyond the
// burst (the reset towards the backend). The pipeline takes them from the
// front; after the burst the caller transmits bufs[0..used) with their handles
// and refills.
struct ExtraPackets {
    std::array<PacketBuf, 8> bufs{};
    std::array<void*, 8> handles{};  // the caller's (e.g. rte_mbuf*)
    size_t available = 0;
    size_t used = 0;
};

enum class Action : uint8_t {
    drop = 0,   // counted with its reason
    transmit,   // send on the port it came from
    exception,  // hand to the main lcore (exception port), allowlisted
    resolver,   // an ARP reply / neighbour advertisement for the main lcore's next-hop resolver
};

// Traffic for the node itself that may go to the kernel through the
// exception port (config: [exception] allow); bits of NodeIdentity::exception_allow.
enum ExceptionTraffic : uint32_t {
    kExceptionArp = 1u << 0,   // ARP not answered here (replies to the kernel's requests)
    kExceptionNd = 1u << 1,    // neighbour discovery not answered here
    kExceptionIcmp = 1u << 2,  // ICMP / ICMPv6 to a node address
    kExceptionSsh = 1u << 3,   // TCP to port 22 of a node address
    kExceptionBgp = 1u << 4,   // TCP from or to port 179 of a node address
};

// What one [[port]] is: the MAC it answers and sends from, where its
// encapsulated packets go, and its MTU. A burst is judged with the identity
// of the port it came in by (process_burst's `port`).
struct PortIdentity {
    MacAddress mac{};  // the port's own MAC
    // Where encapsulated packets go. With next_hop_macs set, the words there
    // (the port's resolver's, read once per burst) decide, by the outer
    // family; else next_hop_mac for both families, unless it is all zeros. A
    // family without a MAC drops its packets as next_hop_unresolved.
    MacAddress next_hop_mac{};
    const NextHopMacs* next_hop_macs = nullptr;
    uint32_t mtu = 1500;  // IP MTU of the port
};

// What the node is, as workers need it (from the config).
struct NodeIdentity {
    // Port 0's identity when `ports` is empty (one port: most tests).
    MacAddress mac{};
    MacAddress next_hop_mac{};
    const NextHopMacs* next_hop_macs = nullptr;
    uint32_t mtu = 1500;
    // Every port's identity, by port index (WorkerContext::port_index); when
    // set, it replaces the four fields above.
    std::vector<PortIdentity> ports;
    // ARP replies and neighbour advertisements to the node go to the
    // resolver (Action::resolver) rather than the exception path.
    bool resolver_takes_replies = false;
    std::vector<IpAddress> addresses;  // the node's own addresses
    SourcePrefix outer_source_v4;      // outer source for IPv4 backends
    SourcePrefix outer_source_v6;
    uint8_t outer_ttl = 64;
    uint64_t flow_hash_seed = 0;
    uint64_t ticks_per_second = 1000;  // timebase of now_ticks (grant table's)
    uint32_t exception_allow = 0;      // ExceptionTraffic bits; 0: no exception port
};

struct ConnTableConfig {
    uint32_t capacity = 1u << 16;  // flows per worker; rounded up to a power of two
    uint32_t idle_timeout_ms = 300'000;
    uint32_t closed_timeout_ms = 10'000;  // after FIN or RST
};

// The connection table: 5-tuple -> (service, backend id hash) with aging.
// Open addressing, bounded probe; full -> the caller falls back to Maglev.
class ConnTable {
  public:
    explicit ConnTable(const ConnTableConfig& config, uint64_t ticks_per_second);
    // One cache line per flow: a lookup touches one line.
    struct alignas(64) Entry {
        FlowTuple flow{};
        uint64_t expires = 0;             // ticks; 0 = an empty slot
        uint32_t service_generation = 0;  // the service's generation, low 32 bits
        uint32_t backend_key = 0;         // the backend's id hash, low 32 bits: survives re-indexing
        uint32_t last_reset = 0;          // reset_clock() of the last reset pair, if reset_sent
        uint16_t service_id = 0;
        uint16_t backend : 14 = 0;        // index into the service's backends at that generation
        uint16_t closing : 1 = 0;         // FIN or RST seen
        uint16_t reset_sent : 1 = 0;      // resets are rate-limited per flow
    };
    static_assert(sizeof(Entry) == 64);
    static_assert(kMaxBackends <= (1u << 14));
    // The live entry for `flow`, or nullptr.
    Entry* find(const FlowTuple& flow, uint64_t hash, uint64_t now) noexcept;
    // A new entry (or nullptr when the probe window is full of live entries).
    Entry* insert(const FlowTuple& flow, uint64_t hash, uint64_t now) noexcept;
    void touch(Entry& e, uint64_t now, bool closing) noexcept;
    // Starts loading the slot where `hash`'s probe begins (one cache line), so
    // that a find later in the burst does not wait for memory.
    void prefetch(uint64_t hash) const noexcept { __builtin_prefetch(&slots_[hash & mask_]); }
    size_t live(uint64_t now) const noexcept;  // slow: for tests and stats

  private:
    HugeArray<Entry> slots_;  // in 2 MiB pages where the kernel allows: one TLB entry covers 32k flows
    uint64_t mask_ = 0;
    uint64_t idle_ticks_ = 0;
    uint64_t closed_ticks_ = 0;
};

// A token bucket (the ICMP errors a worker sends, RFC 4443 2.4 (f); the
// denials it samples): `rate` per second, bursts of up to `burst`.
class TokenBucket {
  public:
    TokenBucket(uint32_t rate, uint32_t burst, uint64_t ticks_per_second) noexcept
        : interval_(std::max<uint64_t>(1, ticks_per_second / std::max<uint32_t>(rate, 1))),
          burst_ticks_(interval_ * burst) {}
    bool take(uint64_t now) noexcept {
        // `next_` is when the next token is due; tokens in hand are
        // (now - next_) / interval + 1, at most `burst`.
        if (next_ + burst_ticks_ < now + interval_) next_ = now + interval_ - burst_ticks_;
        if (next_ > now) return false;
        next_ += interval_;
        return true;
    }

  private:
    uint64_t interval_;
    uint64_t burst_ticks_;
    uint64_t next_ = 0;
};

inline constexpr uint32_t kTooBigPerSecond = 1000;  // per worker
inline constexpr uint32_t kTooBigBurst = 50;
inline constexpr uint32_t kEchoPerSecond = 1000;  // echo replies per worker
inline constexpr uint32_t kEchoBurst = 100;
inline constexpr uint32_t kIcmpErrorsPerSecond = 1000;  // ICMP errors forwarded, per worker
inline constexpr uint32_t kIcmpErrorBurst = 100;
inline constexpr uint32_t kDenialSamplesPerSecond = 100;  // per worker
inline constexpr uint32_t kDenialSampleBurst = 8;
inline constexpr size_t kMaxDenialSamplesPerBurst = 8;

class Pipeline {
  public:
    // `per_service`: this worker's ServiceCounters by service id (ids beyond
    // its size are not counted per service); `per_backend`: its
    // BackendCounters by counter slot (BackendInfo::counter_slot; slots beyond
    // its size, kNoCounterSlot included, are not counted per backend).
    Pipeline(const NodeIdentity& node, const ConnTableConfig& conn, GrantTableReader grants,
             WorkerCounters& counters, std::span<ServiceCounters> per_service = {},
             std::span<BackendCounters> per_backend = {});

    // Processes up to kBurst packets with one service snapshot and one clock
    // reading. actions[i] says what to do with pkts[i] (rewritten in place).
    //
    // A packet of a tracked TCP flow whose grant is no longer valid (expired,
    // revoked, gone) is turned into a reset towards the client (seq = the
    // client's ack), and a reset towards the backend (seq = the client's seq,
    // through the service's forwarding mode) goes out in an extra buffer; the
    // flow stays tracked, closing, so later packets (a challenge ACK) get fresh
    // resets, at most one pair per kResetInterval per flow.
    //
    // `port`: the index of the port the burst came in by (its PortIdentity:
    // MAC, next hop, MTU); one beyond the ports is port 0.
    void process_burst(std::span<PacketBuf> pkts, const ServiceSnapshot& services,
                       uint64_t now_ticks, std::span<Action> actions,
                       ExtraPackets* extra = nullptr, size_t port = 0) noexcept;

    const ConnTable& connections() const noexcept { return conns_; }
    // The denials sampled during the last burst (at most kMaxDenialSamplesPerBurst;
    // `count` says how many of that reason happened since the previous sample).
    std::span<const DenialSample> denial_samples() const noexcept { return {samples_.data(), n_samples_}; }
    const NodeIdentity& node() const noexcept { return node_; }
    std::span<const PortIdentity> ports() const noexcept { return ports_; }

  private:
    using ForwardContextRef = void*;  // pipeline.cc's ForwardContext
    bool is_node_address(IpVersion v, const uint8_t* bytes) const noexcept;
    Action to_exception(uint32_t kind) noexcept;
    // tracked_backend's answer when the flow's backend left and no backend
    // takes new flows (all draining): nowhere to send it.
    static constexpr uint32_t kNoBackend = UINT32_MAX;
    uint32_t tracked_backend(ConnTable::Entry& e, const Service& svc, uint64_t hash) noexcept;
    bool send_resets(PacketBuf& pkt, const ParsedPacket& p, const Service& svc, const BackendInfo& backend,
                     uint64_t hash, ForwardContextRef ctx, ExtraPackets* extra) noexcept;

    NodeIdentity node_;
    std::vector<PortIdentity> ports_;  // node_.ports, or the one port of node_'s own fields
    ConnTable conns_;
    GrantTableReader grants_;
    WorkerCounters& counters_;
    std::span<ServiceCounters> per_service_;
    std::span<BackendCounters> per_backend_;
    void sample_denial(DenialReason reason, const ParsedPacket& p, uint16_t service_id, uint64_t now) noexcept;

    // Per-flow reset times are kept in 32 bits of about a millisecond (ticks >>
    // reset_shift_): they wrap after ~49 days, and are compared by difference.
    static unsigned reset_shift_for(uint64_t ticks_per_second) noexcept {
        unsigned shift = 0;
        while (shift < 40 && (ticks_per_second >> (shift + 1)) >= 1000) ++shift;
        return shift;
    }
    uint32_t reset_clock(uint64_t now) const noexcept { return static_cast<uint32_t>(now >> reset_shift_); }
    unsigned reset_shift_;
    uint32_t reset_interval_;  // in reset_clock units
    TokenBucket too_big_limiter_;
    TokenBucket denial_limiter_;
    TokenBucket echo_limiter_;
    TokenBucket icmp_error_limiter_;  // ICMP errors forwarded to backends
    std::array<uint64_t, 8> denials_since_sample_{};  // by DenialReason
    std::array<DenialSample, kMaxDenialSamplesPerBurst> samples_{};
    size_t n_samples_ = 0;
};

}  // namespace jitlb::lb
