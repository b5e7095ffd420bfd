// Counter names (counters.h): stable, used by stats, telemetry and docs/counters.md.
#include "counters.h"

#include <arpa/inet.h>

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
        case Counter::conn_reopened: return "conn_reopened";
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

void sum_stats_blocks(std::span<const uint8_t> stats, StatsBlockShape shape, WorkerCounters& total,
                      std::span<ServiceCounters> per_service, std::span<BackendCounters> per_backend) noexcept {
    const size_t block = shape.block_bytes();
    const size_t ids = std::min(per_service.size(), size_t{shape.service_capacity} + 1);
    const size_t slots = std::min(per_backend.size(), size_t{shape.backend_capacity});
    const auto add = [](ForwardCounters& to, const ForwardCounters& from) {
        to.packets += __atomic_load_n(&from.packets, __ATOMIC_RELAXED);
        to.bytes += __atomic_load_n(&from.bytes, __ATOMIC_RELAXED);
    };
    for (size_t b = 0; b + block <= stats.size(); b += block) {
        add_counters(total, *reinterpret_cast<const WorkerCounters*>(stats.data() + b));
        const auto* svc = reinterpret_cast<const ServiceCounters*>(stats.data() + b + shape.services_offset());
        for (size_t id = 0; id < ids; ++id) add(per_service[id], svc[id]);
        const auto* be = reinterpret_cast<const BackendCounters*>(stats.data() + b + shape.backends_offset());
        for (size_t slot = 0; slot < slots; ++slot) add(per_backend[slot], be[slot]);
    }
}

BackendCounters sum_backend_slot(std::span<const uint8_t> stats, StatsBlockShape shape, uint32_t slot) noexcept {
    BackendCounters sum;
    if (slot >= shape.backend_capacity) return sum;
    const size_t block = shape.block_bytes();
    const size_t at = shape.backends_offset() + size_t{slot} * sizeof(BackendCounters);
    for (size_t b = 0; b + block <= stats.size(); b += block) {
        const auto* c = reinterpret_cast<const BackendCounters*>(stats.data() + b + at);
        sum.packets += __atomic_load_n(&c->packets, __ATOMIC_RELAXED);
        sum.bytes += __atomic_load_n(&c->bytes, __ATOMIC_RELAXED);
    }
    return sum;
}

std::string BackendReport::address_text() const {
    char text[INET6_ADDRSTRLEN] = "";
    if (info.address.version == IpVersion::none) return {};
    inet_ntop(info.address.version == IpVersion::v4 ? AF_INET : AF_INET6, info.address.bytes.data(), text,
              sizeof text);
    return text;
}

std::vector<BackendReport> read_backend_counters(std::span<const BackendMapEntry> backends,
                                                 std::span<const uint8_t> stats, StatsBlockShape shape) {
    const auto same = [](const BackendSlotInfo& a, const BackendSlotInfo& b) {
        return a.service_id == b.service_id && a.baseline_packets == b.baseline_packets &&
               a.baseline_bytes == b.baseline_bytes && a.id == b.id;
    };
    std::vector<BackendReport> reports;
    for (uint32_t slot = 0; slot < backends.size() && slot < shape.backend_capacity; ++slot) {
        // The counters after the entry (relaxed loads after its acquire
        // loads), so they hold at least its baseline; the entry again after
        // them, so a slot reassigned meanwhile is read anew.
        for (int attempt = 0; attempt < 4; ++attempt) {
            BackendReport r;
            if (backend_map_read(backends[slot], r.info) != SeqRead::ok || r.info.service_id == 0) break;
            const BackendCounters sum = sum_backend_slot(stats, shape, slot);
            BackendSlotInfo again;
            if (backend_map_read(backends[slot], again) != SeqRead::ok || !same(again, r.info)) continue;
            r.slot = slot;
            r.packets = sum.packets > r.info.baseline_packets ? sum.packets - r.info.baseline_packets : 0;
            r.bytes = sum.bytes > r.info.baseline_bytes ? sum.bytes - r.info.baseline_bytes : 0;
            reports.push_back(r);
            break;
        }
    }
    std::stable_sort(reports.begin(), reports.end(), [](const BackendReport& a, const BackendReport& b) {
        return a.info.service_id < b.info.service_id;
    });
    return reports;
}

}  // namespace jitlb::lb
