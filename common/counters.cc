// Counter names (counters.h): stable, used by stats, telemetry and docs/counters.md.
#include "counters.h"

#include <algorithm>

namespace jitlb::lb {

std::string_view counter_name(Counter c) noexcept {
    switch (c) {
        case Counter::rx_packets: return "rx_packets";
        case Counter::rx_bytes: return "rx_bytes";
        case Counter::tx_packets: return "tx_packets";
        case Counter::tx_bytes: return "tx_bytes";
        case Counter::forwarded: return "forwarded";
        case Counter::arp_replies: return "arp_replies";
        case Counter::nd_replies: return "nd_replies";
        case Counter::echo_replies: return "echo_replies";
        case Counter::to_exception: return "to_exception";
        case Counter::from_exception: return "from_exception";
        case Counter::to_resolver: return "to_resolver";
        case Counter::conn_new: return "conn_new";
        case Counter::conn_hit: return "conn_hit";
        case Counter::conn_table_full: return "conn_table_full";
        case Counter::conn_rehashed: return "conn_rehashed";
        case Counter::resets_sent: return "resets_sent";
        case Counter::reset_no_buffer: return "reset_no_buffer";
        case Counter::too_big_sent: return "too_big_sent";
        case Counter::busy_cycles: return "busy_cycles";
        case Counter::busy_polls: return "busy_polls";
        case Counter::rss_handoffs: return "rss_handoffs";
        case Counter::grant_backlog: return "grant_backlog";
        case Counter::grant_backlog_high_water: return "grant_backlog_high_water";
        case Counter::grants_verified: return "grants_verified";
        case Counter::grants_activated: return "grants_activated";
        case Counter::grants_rejected: return "grants_rejected";
        case Counter::revocations_applied: return "revocations_applied";
        case Counter::next_hops_configured: return "next_hops_configured";
        case Counter::next_hops_resolved: return "next_hops_resolved";
        case Counter::next_hop_requests_sent: return "next_hop_requests_sent";
        case Counter::next_hop_requests_unsent: return "next_hop_requests_unsent";
        case Counter::next_hop_replies_accepted: return "next_hop_replies_accepted";
        case Counter::next_hop_replies_ignored: return "next_hop_replies_ignored";
        case Counter::next_hop_replies_malformed: return "next_hop_replies_malformed";
        case Counter::next_hop_mac_changes: return "next_hop_mac_changes";
        case Counter::next_hop_unanswered: return "next_hop_unanswered";
        case Counter::denial_samples_lost: return "denial_samples_lost";
        case Counter::drop_unknown_vip: return "unknown_vip";
        case Counter::drop_no_grant: return "no_grant";
        case Counter::drop_grant_expired: return "grant_expired";
        case Counter::drop_grant_not_yet_valid: return "grant_not_yet_valid";
        case Counter::drop_grant_busy: return "grant_busy";
        case Counter::drop_ip_fragment: return "ip_fragment";
        case Counter::drop_service_down: return "service_down";
        case Counter::drop_not_for_us: return "not_for_us";
        case Counter::drop_icmp_not_allowed: return "icmp_not_allowed";
        case Counter::drop_icmp_rate_limited: return "icmp_rate_limited";
        case Counter::drop_icmp_mtu_too_small: return "icmp_mtu_too_small";
        case Counter::drop_too_big: return "too_big";
        case Counter::drop_encap_failed: return "encap_failed";
        case Counter::drop_no_headroom: return "no_headroom";
        case Counter::drop_multi_segment: return "multi_segment";
        case Counter::drop_exception_denied: return "exception_denied";
        case Counter::drop_exception_full: return "exception_full";
        case Counter::drop_tx_full: return "tx_full";
        case Counter::drop_rss_handoff_full: return "rss_handoff_full";
        case Counter::drop_next_hop_unresolved: return "next_hop_unresolved";
        case Counter::drop_resolver_full: return "resolver_full";
        case Counter::count_: break;
    }
    return "unknown";
}

bool is_drop(Counter c) noexcept { return c >= Counter::drop_unknown_vip && c < Counter::count_; }

uint64_t WorkerCounters::total_drops() const noexcept {
    uint64_t n = 0;
    for (size_t i = static_cast<size_t>(Counter::drop_unknown_vip); i < by_counter.size(); ++i) n += by_counter[i];
    for (size_t i = 1; i < parse_drops.size(); ++i) n += parse_drops[i];
    return n;
}

double cycles_per_packet(const WorkerCounters& c) noexcept {
    const uint64_t packets = c.get(Counter::rx_packets);
    return packets == 0 ? 0.0 : static_cast<double>(c.get(Counter::busy_cycles)) / static_cast<double>(packets);
}

void add_counters(WorkerCounters& total, const WorkerCounters& w) noexcept {
    for (size_t i = 0; i < total.by_counter.size(); ++i)
        total.by_counter[i] += __atomic_load_n(&w.by_counter[i], __ATOMIC_RELAXED);
    for (size_t i = 0; i < total.parse_drops.size(); ++i)
        total.parse_drops[i] += __atomic_load_n(&w.parse_drops[i], __ATOMIC_RELAXED);
}

void sum_stats_blocks(std::span<const uint8_t> stats, uint32_t service_capacity, WorkerCounters& total,
                      std::span<ServiceCounters> per_service) noexcept {
    const size_t block = stats_block_bytes(service_capacity);
    const size_t ids = std::min(per_service.size(), size_t{service_capacity} + 1);
    for (size_t b = 0; b + block <= stats.size(); b += block) {
        add_counters(total, *reinterpret_cast<const WorkerCounters*>(stats.data() + b));
        const auto* per = reinterpret_cast<const ServiceCounters*>(stats.data() + b + sizeof(WorkerCounters));
        for (size_t id = 0; id < ids; ++id) {
            per_service[id].packets += __atomic_load_n(&per[id].packets, __ATOMIC_RELAXED);
            per_service[id].bytes += __atomic_load_n(&per[id].bytes, __ATOMIC_RELAXED);
        }
    }
}

}  // namespace jitlb::lb
