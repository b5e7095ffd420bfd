#include "duration.h"

#include <array>
#include <ctime>

#include <fmt/format.h>

namespace jitlb::control {

namespace {

constexpr int64_t kMaxDurationMs = 10LL * 366 * 86'400'000;

struct Unit {
    std::string_view name;
    int64_t ms;
};
// Longest names first where one is a prefix of another ("ms" before "m").
constexpr std::array<Unit, 5> kUnits{{{"d", 86'400'000}, {"h", 3'600'000}, {"m", 60'000},
                                      {"s", 1'000}, {"ms", 1}}};

bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }

void set(std::string* error, std::string message) {
    if (error) *error = std::move(message);
}

}  // namespace

std::optional<int64_t> parse_duration_ms(std::string_view text, std::string* error) {
    if (text.empty()) {
        set(error, "empty duration (write e.g. 15m, 1h30m, 90s)");
        return std::nullopt;
    }
    int64_t total = 0;
    size_t next_unit = 0;  // units must come in kUnits order, each once
    size_t i = 0;
    while (i < text.size()) {
        const size_t digits_start = i;
        int64_t value = 0;
        while (i < text.size() && is_digit(text[i])) {
            if (i - digits_start >= 12) {
                set(error, fmt::format("duration '{}' is too large (at most 10 years)", text));
                return std::nullopt;
            }
            value = value * 10 + (text[i] - '0');
            ++i;
        }
        if (i == digits_start) {
            set(error, fmt::format("duration '{}': expected a number at '{}' (write e.g. 15m, "
                                   "1h30m, 90s)",
                                   text, text.substr(i)));
            return std::nullopt;
        }
        size_t unit_end = i;
        while (unit_end < text.size() && !is_digit(text[unit_end])) ++unit_end;
        const std::string_view unit = text.substr(i, unit_end - i);
        size_t found = kUnits.size();
        for (size_t u = 0; u < kUnits.size(); ++u) {
            if (kUnits[u].name == unit) found = u;
        }
        if (unit.empty() || found == kUnits.size()) {
            set(error, fmt::format("duration '{}': unknown unit '{}' (units: d, h, m, s, ms)", text,
                                   unit));
            return std::nullopt;
        }
        if (found < next_unit) {
            set(error, fmt::format("duration '{}': units repeated or out of order (write them "
                                   "largest first: 1h30m)",
                                   text));
            return std::nullopt;
        }
        next_unit = found + 1;
        total += value * kUnits[found].ms;
        if (total > kMaxDurationMs) {
            set(error, fmt::format("duration '{}' is too large (at most 10 years)", text));
            return std::nullopt;
        }
        i = unit_end;
    }
    if (total <= 0) {
        set(error, fmt::format("duration '{}' must be longer than zero", text));
        return std::nullopt;
    }
    return total;
}

std::string format_duration_ms(int64_t ms) {
    if (ms <= 0) return "0s";
    std::string out;
    for (const Unit& unit : kUnits) {
        if (ms >= unit.ms) {
            out += fmt::format("{}{}", ms / unit.ms, unit.name);
            ms %= unit.ms;
        }
    }
    return out;
}

std::optional<int64_t> parse_start_time_ms(std::string_view text, int64_t now_ms,
                                           std::string* error) {
    if (text == "now") return now_ms;
    if (!text.empty() && text.front() == '+') {
        const auto d = parse_duration_ms(text.substr(1), error);
        if (!d) return std::nullopt;
        return now_ms + *d;
    }
    // YYYY-MM-DDTHH:MM:SSZ, exactly.
    const std::string_view shape = "dddd-dd-ddTdd:dd:ddZ";
    bool shaped = text.size() == shape.size();
    for (size_t i = 0; shaped && i < shape.size(); ++i) {
        shaped = shape[i] == 'd' ? is_digit(text[i]) : text[i] == shape[i];
    }
    if (!shaped) {
        set(error, fmt::format("start time '{}': write now, +DURATION (e.g. +10m) or a UTC time "
                               "like 2026-12-06T14:00:00Z",
                               text));
        return std::nullopt;
    }
    const auto num = [&](size_t at, size_t n) {
        int v = 0;
        for (size_t i = 0; i < n; ++i) v = v * 10 + (text[at + i] - '0');
        return v;
    };
    std::tm tm{};
    tm.tm_year = num(0, 4) - 1900;
    tm.tm_mon = num(5, 2) - 1;
    tm.tm_mday = num(8, 2);
    tm.tm_hour = num(11, 2);
    tm.tm_min = num(14, 2);
    tm.tm_sec = num(17, 2);
    const int mon = tm.tm_mon, mday = tm.tm_mday;
    const time_t t = timegm(&tm);
    if (tm.tm_mon != mon || tm.tm_mday != mday || tm.tm_hour != num(11, 2) ||
        tm.tm_min != num(14, 2) || tm.tm_sec != num(17, 2) || t < 0) {
        set(error, fmt::format("start time '{}' is not a valid date and time", text));
        return std::nullopt;
    }
    return static_cast<int64_t>(t) * 1000;
}

std::string format_unix_ms(int64_t unix_ms) {
    const time_t secs = static_cast<time_t>(unix_ms / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    std::string out = fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", tm.tm_year + 1900,
                                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    if (unix_ms % 1000 != 0) out += fmt::format(".{:03}", unix_ms % 1000);
    return out + "Z";
}

}  // namespace jitlb::control
