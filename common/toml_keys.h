// Helpers shared by the TOML readers (lb/config.cc for jitlb.toml,
// control/policy.cc for the policy): type names for errors, and the
// unknown-key check with a "did you mean". Header-only, because common/'s
// library does not link toml++; only its users (lb_core, control_core) do.
#pragma once

#include <algorithm>
#include <climits>
#include <cstddef>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <toml++/toml.h>

namespace jitlb::toml_keys {

// "a string", "an integer", ... for "expected X, got Y" messages.
inline std::string_view type_name(const toml::node& node) {
    switch (node.type()) {
        case toml::node_type::string: return "a string";
        case toml::node_type::integer: return "an integer";
        case toml::node_type::floating_point: return "a float";
        case toml::node_type::boolean: return "a boolean";
        case toml::node_type::table: return "a table";
        case toml::node_type::array: return "an array";
        case toml::node_type::date: return "a date";
        case toml::node_type::time: return "a time";
        case toml::node_type::date_time: return "a date-time";
        case toml::node_type::none: break;
    }
    return "nothing";
}

// Levenshtein distance, for "did you mean" on an unknown key.
inline size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            const size_t above = row[j];
            row[j] = std::min({above + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
            diagonal = above;
        }
    }
    return row[b.size()];
}

inline std::string join(const auto& names, std::string_view separator = ", ") {
    std::string out;
    for (const auto& name : names) {
        if (!out.empty()) out += separator;
        out += name;
    }
    return out;
}

// The key of `table` not in `known` that comes first in the file (a table
// iterates in key order), or null.
inline const toml::key* first_unknown_key(const toml::table& table,
                                          std::initializer_list<std::string_view> known) {
    const auto place = [](const toml::key& key) {
        return std::pair(key.source().begin.line, key.source().begin.column);
    };
    const toml::key* first = nullptr;
    for (auto&& [key, value] : table) {
        if (std::find(known.begin(), known.end(), key.str()) != known.end()) continue;
        if (!first || place(key) < place(*first)) first = &key;
    }
    return first;
}

// " (did you mean 'skew_ms'?)" when a known key is close in spelling, or
// starts with the name (the name without its unit); "" otherwise.
inline std::string did_you_mean(std::string_view name, std::initializer_list<std::string_view> known) {
    std::string hint;
    size_t best = SIZE_MAX;
    for (const std::string_view candidate : known) {
        const size_t distance = edit_distance(name, candidate);
        const bool close = distance <= 2 || (name.size() >= 3 && candidate.starts_with(name));
        if (close && distance < best) {
            best = distance;
            hint = fmt::format(" (did you mean '{}'?)", candidate);
        }
    }
    return hint;
}

// "at the top level", "in [grants]", or "in port[0]" (an entry of an array of tables).
inline std::string table_place(const std::string& path) {
    return path.empty() ? "at the top level" : path.back() == ']' ? "in " + path : "in [" + path + "]";
}

}  // namespace jitlb::toml_keys
