#include "stats_view.h"

#include <chrono>
#include <iostream>
#include <thread>

#include <fmt/format.h>

#include "counters.h"
#include "grant_table.h"
#include "shared_file.h"
#include "shared_layout.h"

namespace jitlb::control {

using nlohmann::ordered_json;
using lb::Counter;
using lb::ServiceCounters;
using lb::WorkerCounters;

namespace {

uid_t owner_uid(const std::string& owner) {
    if (!owner.empty() && owner.find_first_not_of("0123456789") == std::string::npos) {
        return static_cast<uid_t>(std::stoul(owner));
    }
    if (const auto uid = uid_of_user(owner)) return *uid;
    throw std::runtime_error(fmt::format("--owner {}: no such user", owner));
}

}  // namespace

ordered_json read_stats(const std::string& path, const std::string& owner) {
    const SharedFile file = SharedFile::open_peer_readonly(path, owner_uid(owner));
    const StateRegionView view = attach_state_region(file.bytes(), path, GrantTable::format_hash());
    const uint32_t capacity = view.header->service_capacity;
    const lb::StatsBlockShape shape = lb::StatsBlockShape::of(*view.header);
    WorkerCounters total{};
    std::vector<ServiceCounters> services(size_t{capacity} + 1);
    lb::sum_stats_blocks(view.worker_stats, shape, total, services);
    ordered_json j;
    ordered_json counters = ordered_json::object(), drops = ordered_json::object();
    for (size_t i = 0; i < static_cast<size_t>(Counter::count_); ++i) {
        const auto c = static_cast<Counter>(i);
        (lb::is_drop(c) ? drops : counters)[std::string(lb::counter_name(c))] = total.by_counter[i];
    }
    for (size_t i = 1; i < static_cast<size_t>(DropReason::count_); ++i) {
        drops[fmt::format("parse_{}", drop_reason_name(static_cast<DropReason>(i)))] = total.parse_drops[i];
    }
    ordered_json per_service = ordered_json::object();
    std::vector<std::string> names(size_t{capacity} + 1);
    for (const ServiceMapEntry& e : view.services) {
        ServiceInfo info;
        if (service_map_read(e, info) != SeqRead::ok || info.service_id == 0 || info.service_id > capacity) continue;
        names[info.service_id] = std::string(info.name_view());
        per_service[names[info.service_id]] = {{"id", info.service_id},
                                               {"packets", services[info.service_id].packets},
                                               {"bytes", services[info.service_id].bytes}};
    }
    // Per backend, grouped by service name ("" for an id the map no longer names).
    ordered_json per_backend = ordered_json::object();
    for (const lb::BackendReport& r : lb::read_backend_counters(view.backends, view.worker_stats, shape)) {
        const std::string& service = r.info.service_id <= capacity ? names[r.info.service_id] : names[0];
        per_backend[service][std::string(r.info.id_view())] = {{"address", r.address_text()},
                                                               {"weight", r.info.weight},
                                                               {"slot", r.slot},
                                                               {"packets", r.packets},
                                                               {"bytes", r.bytes}};
    }
    j["counters"] = counters;
    j["cycles_per_packet"] = lb::cycles_per_packet(total);
    j["drops"] = drops;
    j["services"] = per_service;
    j["backends"] = per_backend;
    const uint64_t beat = read_heartbeat(*view.header);
    j["heartbeat_age_ms"] = beat ? static_cast<int64_t>(unix_now_ms() - beat) : -1;
    return j;
}

int run_stats(const std::string& path, const std::string& owner, bool watch, int count, bool json) {
    if (!watch) {
        const ordered_json s = read_stats(path, owner);
        if (json) {
            std::cout << s.dump(2) << "\n";
            return 0;
        }
        fmt::print("jitlb heartbeat {} ms ago\n", s["heartbeat_age_ms"].get<int64_t>());
        for (auto& [k, v] : s["counters"].items()) {
            if (v.get<uint64_t>() != 0) fmt::print("  {:24} {}\n", k, v.get<uint64_t>());
        }
        fmt::print("  {:24} {:.1f}\n", "cycles_per_packet", s["cycles_per_packet"].get<double>());
        fmt::print("drops:\n");
        for (auto& [k, v] : s["drops"].items()) {
            if (v.get<uint64_t>() != 0) fmt::print("  {:24} {}\n", k, v.get<uint64_t>());
        }
        fmt::print("services:\n");
        for (auto& [k, v] : s["services"].items()) {
            fmt::print("  {:24} {} packets, {} bytes\n", k, v["packets"].get<uint64_t>(), v["bytes"].get<uint64_t>());
        }
        fmt::print("backends:\n");
        for (auto& [service, backends] : s["backends"].items()) {
            fmt::print("  {}\n", service);
            for (auto& [id, v] : backends.items()) {
                const uint64_t weight = v["weight"].get<uint64_t>();
                fmt::print("    {:22} {:39} {} packets, {} bytes{}\n", id, v["address"].get<std::string>(),
                           v["packets"].get<uint64_t>(), v["bytes"].get<uint64_t>(), weight == 0 ? " (draining)" : "");
            }
        }
        return 0;
    }
    ordered_json prev = read_stats(path, owner);
    for (int i = 0; count == 0 || i < count; ++i) {
        std::this_thread::sleep_for(std::chrono::seconds(1));
        const ordered_json cur = read_stats(path, owner);
        const auto delta = [&](const char* group, const std::string& key) {
            return cur[group][key].get<uint64_t>() - prev[group][key].get<uint64_t>();
        };
        uint64_t dropped = 0;
        std::string top;
        uint64_t top_n = 0;
        for (auto& [k, v] : cur["drops"].items()) {
            const uint64_t d = v.get<uint64_t>() - prev["drops"][k].get<uint64_t>();
            dropped += d;
            if (d > top_n) top_n = d, top = k;
        }
        const uint64_t rx = delta("counters", "rx_packets");
        const double cycles = rx ? static_cast<double>(delta("counters", "busy_cycles")) / static_cast<double>(rx) : 0.0;
        if (json) {
            std::cout << ordered_json{{"rx_pps", rx},
                                      {"tx_pps", delta("counters", "tx_packets")},
                                      {"forwarded_pps", delta("counters", "forwarded")},
                                      {"dropped_pps", dropped},
                                      {"cycles_per_packet", cycles}}
                             .dump()
                      << std::endl;
        } else {
            fmt::print("rx {} pps, tx {} pps, forwarded {} pps, dropped {} pps{}, {:.1f} busy cycles/packet\n", rx,
                       delta("counters", "tx_packets"), delta("counters", "forwarded"), dropped,
                       top_n ? fmt::format(" (mostly {}: {})", top, top_n) : "", cycles);
            std::cout.flush();
        }
        prev = cur;
    }
    return 0;
}

}  // namespace jitlb::control
