// The data plane's counters (docs/counters.md): one cache-line-aligned block
// per lcore, placed in the state file's stats lines, one writer each, plain
// increments on the lcore's own block. Readers (telemetry, the exit report,
// jitctl) sum the blocks with relaxed loads: an aligned u64 is never torn.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "packet.h"
#include "shared_layout.h"

namespace jitlb::lb {

// Order is not part of any format: readers use the names.
enum class Counter : uint16_t {
    rx_packets,
    rx_bytes,
    tx_packets,
    tx_bytes,
    forwarded,            // sent towards a backend
    arp_replies,          // ARP requests for our addresses / VIPs answered
    nd_replies,           // neighbour solicitations answered
    echo_replies,         // ICMP / ICMPv6 echo to a VIP answered
    to_exception,         // handed to the main lcore for the exception port
    from_exception,       // sent by the kernel through the exception port, relayed out
    to_resolver,          // ARP replies / neighbour advertisements handed to the next-hop resolver
    conn_new,             // flows added to the connection table
    conn_hit,             // packets whose flow was in the connection table
    conn_table_full,      // new flow not tracked: table full (Maglev only)
    conn_rehashed,        // tracked flow whose backend is gone: chosen again
    conn_reopened,        // SYN on a closed flow's tuple (ports reused): chosen afresh
    resets_sent,          // TCP resets for flows whose grant ended
    reset_no_buffer,      // the reset towards the backend had no spare buffer
    denial_samples_lost,  // sampled denials the ring to the main lcore did not take
    too_big_sent,         // ICMP frag-needed / packet-too-big sent to a client (see too_big)
    busy_cycles,          // TSC cycles of worker polls that received packets (rx to tx, all queues)
    busy_polls,           // worker polls that received packets
    rss_handoffs,         // software RSS: frames handed to another worker
    // The main lcore's grant work (written by it alone, in its own block;
    // gauges are current values, the others totals since start).
    grant_backlog,             // gauge: grants waiting for signature verification
    grant_backlog_high_water,  // gauge: the most that ever waited
    grants_verified,           // Ed25519 verifications done
    grants_activated,
    grants_rejected,           // refused with a GrantRejected event, any reason
    revocations_applied,
    // The main lcore's next-hop resolution (ARP / ND, lb/next_hop.h).
    next_hops_configured,        // gauge: next hops resolved by ARP / ND (0: static or none)
    next_hops_resolved,          // gauge: of those, the ones whose MAC is known now
    next_hop_requests_sent,      // ARP requests and neighbour solicitations sent
    next_hop_requests_unsent,    // due but not sent: no mbuf, or worker 0's ring full
    next_hop_replies_accepted,   // replies from a configured next hop
    next_hop_replies_ignored,    // replies from any other address: not learned from
    next_hop_replies_malformed,  // refused by parse_neighbour_reply
    next_hop_mac_changes,        // an accepted reply with a new MAC
    next_hop_unanswered,         // 5 s without a reply while asking (once per silence)
    // Drops, by reason (beyond the parser's, counted in parse_drops).
    drop_unknown_vip,
    drop_no_grant,
    drop_grant_expired,
    drop_grant_not_yet_valid,
    drop_grant_busy,      // the grant table entry was being written all retries long
    drop_ip_fragment,
    drop_service_down,    // service disabled or without backends
    drop_not_for_us,      // ARP / ND / ICMP for an address that is not ours
    drop_icmp_not_allowed,
    drop_icmp_rate_limited,  // echo to a VIP that answers echo, above the per-worker rate
    drop_icmp_mtu_too_small,  // packet-too-big below 576 (v4) / 1280 (v6)
    drop_too_big,         // encapsulated packet above the port MTU (too_big_sent if answered)
    drop_encap_failed,
    drop_no_headroom,
    drop_multi_segment,     // a frame in more than one mbuf (larger than the mbuf data room)
    drop_exception_denied,  // not on the exception allowlist
    drop_exception_full,    // exception ring full
    drop_tx_full,           // tx ring did not take it
    drop_rss_handoff_full,  // software RSS: the chosen worker's ring did not take it
    drop_next_hop_unresolved,  // encapsulated packet while the next hop's MAC is unknown
    drop_resolver_full,        // the ring to the next-hop resolver was full
    count_
};

// Forwarded packets and bytes (as received from the client), per worker: of
// one service (ServiceCounters, indexed by service id, the state file's
// service map) or of one backend (BackendCounters, indexed by counter slot,
// the state file's backend map).
struct ForwardCounters {
    uint64_t packets = 0;
    uint64_t bytes = 0;
};
static_assert(sizeof(ForwardCounters) == 16);
using ServiceCounters = ForwardCounters;
using BackendCounters = ForwardCounters;

std::string_view counter_name(Counter c) noexcept;
bool is_drop(Counter c) noexcept;

// Per service (packets, bytes forwarded) lives in the worker's service
// counters; this block is fixed-size.
struct alignas(64) WorkerCounters {
    std::array<uint64_t, static_cast<size_t>(Counter::count_)> by_counter{};
    std::array<uint64_t, static_cast<size_t>(DropReason::count_)> parse_drops{};

    void add(Counter c, uint64_t n = 1) noexcept { by_counter[static_cast<size_t>(c)] += n; }
    uint64_t get(Counter c) const noexcept { return by_counter[static_cast<size_t>(c)]; }
    uint64_t total_drops() const noexcept;
};

// Busy cycles per received packet (what `dpdk-testpmd --record-core-cycles`
// prints for a forwarding engine): 0 before the first packet.
double cycles_per_packet(const WorkerCounters& c) noexcept;

// Adds `w` into `total` with relaxed loads (w's lcore may be writing it).
void add_counters(WorkerCounters& total, const WorkerCounters& w) noexcept;

// The shape of one lcore's block in the state file's stats lines: its
// WorkerCounters, then ServiceCounters for ids 0..service_capacity, then
// BackendCounters for slots 0..backend_capacity-1, rounded up to 64 bytes.
struct StatsBlockShape {
    uint32_t service_capacity = 0;
    uint32_t backend_capacity = 0;
    size_t services_offset() const noexcept { return sizeof(WorkerCounters); }
    size_t backends_offset() const noexcept {
        return services_offset() + (size_t{service_capacity} + 1) * sizeof(ServiceCounters);
    }
    size_t block_bytes() const noexcept {
        return (backends_offset() + size_t{backend_capacity} * sizeof(BackendCounters) + 63) / 64 * 64;
    }
    // As a state file's header declares it.
    static StatsBlockShape of(const StateHeader& h) noexcept { return {h.service_capacity, h.backend_capacity}; }
};

// Sums every lcore's block of the stats lines `stats` (a state file's, as
// jitctl, jitlb_stage and jitlb's telemetry read them; relaxed loads, the
// lcores may be writing): counters into `total`, per service id into
// `per_service` and per backend slot into `per_backend` when they are not
// empty (ids and slots beyond their sizes are left out).
void sum_stats_blocks(std::span<const uint8_t> stats, StatsBlockShape shape, WorkerCounters& total,
                      std::span<ServiceCounters> per_service = {},
                      std::span<BackendCounters> per_backend = {}) noexcept;

// One backend slot's counters summed over every block (relaxed loads): the
// baseline the main lcore records when it assigns the slot.
BackendCounters sum_backend_slot(std::span<const uint8_t> stats, StatsBlockShape shape, uint32_t slot) noexcept;

// One backend as the readers report it: named from the backend map, its
// counters summed over the workers less the slot's baseline.
struct BackendReport {
    uint32_t slot = 0;
    BackendSlotInfo info;
    uint64_t packets = 0;
    uint64_t bytes = 0;
    std::string address_text() const;  // "10.0.0.1", "2001:db8::1"; "" without a family
};

// Every backend the map `backends` names (busy entries left out), by service
// id then slot, with its counters from `stats`; `backends` is read before the
// counters, so a slot just reassigned never reports its previous backend's.
std::vector<BackendReport> read_backend_counters(std::span<const BackendMapEntry> backends,
                                                 std::span<const uint8_t> stats, StatsBlockShape shape);

}  // namespace jitlb::lb
