// Durations and times as people type them: "90s", "15m", "1h30m", "2d"; and
// start times as "now", "+10m" or an RFC 3339 UTC time ("2026-12-06T14:00:00Z").
// Used by the policy file, jitd's config and jitctl's options alike.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace jitlb::control {

// One or more <digits><unit> groups, units d h m s ms, each unit at most once
// and in that order; no blanks, no sign; the total must be positive and at
// most 10 years. nullopt with the reason in *error.
std::optional<int64_t> parse_duration_ms(std::string_view text, std::string* error = nullptr);

// The shortest exact form: 5400000 -> "1h30m", 1500 -> "1s500ms", 0 -> "0s".
std::string format_duration_ms(int64_t ms);

// "now" (now_ms), "+<duration>" (now_ms + duration), or
// "YYYY-MM-DDTHH:MM:SSZ" (UTC only: a time with an offset is refused).
std::optional<int64_t> parse_start_time_ms(std::string_view text, int64_t now_ms,
                                           std::string* error = nullptr);

// "2026-12-06T14:00:00.250Z" (milliseconds only when not zero).
std::string format_unix_ms(int64_t unix_ms);

}  // namespace jitlb::control
