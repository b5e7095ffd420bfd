// `jitctl stats`: jitlb's counters read straight from its state file (no call
// to jitd, so it works while jitd is down): totals over every lcore's block,
// drops by reason, per-service and per-backend packets and bytes, and with
// --watch the rates.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace jitlb::control {

// A snapshot of the counters of the state file at `path`, owned by `owner`
// (a user name or a uid): {"counters": {...}, "drops": {...}, "services": {...},
// "backends": {service: {backend id: {...}}}, "heartbeat_age_ms": N}. Throws
// RegionError or std::runtime_error.
nlohmann::ordered_json read_stats(const std::string& path, const std::string& owner);

// Prints one snapshot, or with `watch` one line of rates per second (`count`
// seconds, 0: until interrupted). Returns the exit code.
int run_stats(const std::string& path, const std::string& owner, bool watch, int count, bool json);

}  // namespace jitlb::control
