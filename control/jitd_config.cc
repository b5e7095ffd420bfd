#include "jitd_config.h"

#include <sys/stat.h>

#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "duration.h"
#include "shared_file.h"

namespace jitlb::control {

namespace {

const std::set<std::string> kKeys = {
    "instance", "state_dir", "socket", "socket_mode", "socket_group", "issuer_key", "audit_log",
    "audit_key", "audit_public_keys", "audit_sink", "audit_checkpoint_lines", "audit_checkpoint_interval", "cmd_file",
    "state_file", "jitlb_user", "cmd_ring_slots", "skew", "max_grant", "request_rate",
    "request_burst", "denial_samples_per_s", "admin_users", "admin_groups", "policy_file",
    "policy", "service"};

[[noreturn]] void fail(const std::string& source, std::string_view key, const std::string& why) {
    throw ConfigError(fmt::format("{}: {}: {}", source, key, why));
}

std::string get_string(const toml::table& t, const std::string& source, const char* key,
                       std::string fallback) {
    const toml::node* n = t.get(key);
    if (!n) return fallback;
    const auto v = n->value<std::string>();
    if (!n->is_string() || !v) fail(source, key, "expected a string");
    if (v->empty()) fail(source, key, "must not be empty (leave the key out for the default)");
    return *v;
}

int64_t get_duration(const toml::table& t, const std::string& source, const char* key,
                     int64_t fallback) {
    const toml::node* n = t.get(key);
    if (!n) return fallback;
    if (!n->is_string()) fail(source, key, "expected a duration string such as \"2s\"");
    std::string why;
    const auto d = parse_duration_ms(*n->value<std::string>(), &why);
    if (!d) fail(source, key, why);
    return *d;
}

int64_t get_int(const toml::table& t, const std::string& source, const char* key, int64_t fallback,
                int64_t lo, int64_t hi) {
    const toml::node* n = t.get(key);
    if (!n) return fallback;
    if (!n->is_integer()) fail(source, key, fmt::format("expected an integer in {}..{}", lo, hi));
    const int64_t v = *n->value<int64_t>();
    if (v < lo || v > hi) fail(source, key, fmt::format("{} is outside {}..{}", v, lo, hi));
    return v;
}

std::vector<std::string> get_strings(const toml::table& t, const std::string& source,
                                     const char* key, std::vector<std::string> fallback) {
    const toml::node* n = t.get(key);
    if (!n) return fallback;
    const toml::array* a = n->as_array();
    if (!a) fail(source, key, "expected a list of strings");
    std::vector<std::string> out;
    for (const toml::node& e : *a) {
        if (!e.is_string()) fail(source, key, "expected a list of strings");
        out.push_back(*e.value<std::string>());
    }
    return out;
}

// TOML -> JSON for the service tables (service_from_json checks them).
nlohmann::json to_json(const toml::node& n) {
    if (const auto* t = n.as_table()) {
        nlohmann::json j = nlohmann::json::object();
        for (const auto& [k, v] : *t) j[std::string(k.str())] = to_json(v);
        return j;
    }
    if (const auto* a = n.as_array()) {
        nlohmann::json j = nlohmann::json::array();
        for (const auto& v : *a) j.push_back(to_json(v));
        return j;
    }
    if (n.is_string()) return *n.value<std::string>();
    if (n.is_boolean()) return *n.value<bool>();
    if (n.is_integer()) {
        const int64_t v = *n.value<int64_t>();
        if (v >= 0) return static_cast<uint64_t>(v);
        return v;
    }
    return nullptr;  // floats, dates: refused by the strict reader
}

}  // namespace

JitdConfig parse_jitd_config(std::string_view text, const std::string& source) {
    toml::table root;
    try {
        root = toml::parse(text, source);
    } catch (const toml::parse_error& e) {
        throw ConfigError(fmt::format("{}:{}:{}: {}", source, e.source().begin.line,
                                      e.source().begin.column, e.description()));
    }
    for (const auto& [k, v] : root) {
        if (!kKeys.count(std::string(k.str()))) {
            fail(source, k.str(),
                 "unknown key (see config/jitd.example.toml for every key)");
        }
    }
    JitdConfig c;
    c.source = source;
    c.instance = get_string(root, source, "instance", "");
    if (c.instance.empty()) fail(source, "instance", "required (the jitlb instance to drive, e.g. \"edge1\")");
    if (!valid_instance_name(c.instance)) {
        fail(source, "instance", fmt::format("'{}' must be 1..32 characters of [A-Za-z0-9_-]", c.instance));
    }
    c.state_dir = get_string(root, source, "state_dir", "");
    if (c.state_dir.empty()) fail(source, "state_dir", "required (where jitd keeps its database and audit log)");
    c.socket_path = get_string(root, source, "socket", c.state_dir + "/jitd.sock");
    const std::string mode = get_string(root, source, "socket_mode", "0660");
    if (mode.size() != 4 || mode[0] != '0' || mode.find_first_not_of("01234567") != std::string::npos) {
        fail(source, "socket_mode", fmt::format("'{}': write four octal digits such as \"0660\"", mode));
    }
    c.socket_mode = static_cast<mode_t>(std::stoul(mode, nullptr, 8));
    c.socket_group = get_string(root, source, "socket_group", "");
    c.issuer_key = get_string(root, source, "issuer_key", "");
    c.audit_log = get_string(root, source, "audit_log", c.state_dir + "/audit.log");
    c.audit_key = get_string(root, source, "audit_key", "");
    c.audit_public_keys = get_string(root, source, "audit_public_keys", "");
    c.audit_sink = get_string(root, source, "audit_sink", "");
    c.audit_checkpoint_lines =
        static_cast<uint64_t>(get_int(root, source, "audit_checkpoint_lines", 100, 1, 1'000'000));
    c.audit_checkpoint_ms = get_duration(root, source, "audit_checkpoint_interval", 60'000);
    const RegionDirs dirs = detect_region_dirs();
    c.cmd_path = get_string(root, source, "cmd_file", cmd_file_path(dirs.cmd_dir, c.instance));
    c.state_path = get_string(root, source, "state_file", state_file_path(dirs.state_dir, c.instance));
    c.jitlb_user = get_string(root, source, "jitlb_user", "jitlb");
    c.cmd_ring_slots = static_cast<uint32_t>(get_int(root, source, "cmd_ring_slots", 4096, 64, 1 << 20));
    if (const std::string why = check_cmd_sizes(CmdSizes{c.cmd_ring_slots}); !why.empty()) {
        fail(source, "cmd_ring_slots", why);
    }
    c.skew_ms = get_duration(root, source, "skew", 2'000);
    c.max_grant_ms = get_duration(root, source, "max_grant", 24 * 3'600'000LL);
    c.request_rate = static_cast<double>(get_int(root, source, "request_rate", 5, 1, 100'000));
    c.request_burst = static_cast<double>(get_int(root, source, "request_burst", 20, 1, 1'000'000));
    c.denial_samples_per_s = static_cast<uint32_t>(get_int(root, source, "denial_samples_per_s", 10, 0, 100'000));
    c.admin_users = get_strings(root, source, "admin_users", {"root"});
    c.admin_groups = get_strings(root, source, "admin_groups", {});
    c.policy_file = get_string(root, source, "policy_file", "");
    const toml::node* inline_policy = root.get("policy");
    if (!c.policy_file.empty() && inline_policy) {
        fail(source, "policy", "give either policy_file or a [policy] table, not both");
    }
    if (!c.policy_file.empty()) {
        c.policy = load_policy_file(c.policy_file);
    } else if (inline_policy) {
        if (!inline_policy->is_table()) fail(source, "policy", "expected a table ([policy])");
        c.policy = parse_policy(*inline_policy->as_table(), source, "policy");
    } else {
        fail(source, "policy", "required: a [policy] table or policy_file = \"PATH\" (without one, jitd would refuse every request)");
    }
    if (const toml::node* services = root.get("service")) {
        const toml::array* a = services->as_array();
        if (!a) fail(source, "service", "expected [[service]] tables");
        std::set<std::string> names;
        for (size_t i = 0; i < a->size(); ++i) {
            std::string why;
            auto spec = service_from_json(to_json(*a->get(i)), &why);
            if (!spec) fail(source, fmt::format("service[{}]", i), why);
            if (!names.insert(spec->name).second) {
                fail(source, fmt::format("service[{}]", i), fmt::format("service {} defined twice", spec->name));
            }
            c.services.push_back(std::move(*spec));
        }
    }
    return c;
}

JitdConfig load_jitd_config(const std::string& path) {
    // Whoever may write this file decides who is an administrator and (with an
    // inline [policy]) who gets access: as strict as the policy file.
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 022) != 0) {
        throw ConfigError(fmt::format("{}: group or others may write it (mode {:04o}); it decides "
                                      "who administers and who gets access: chmod go-w {}",
                                      path, st.st_mode & 07777, path));
    }
    std::ifstream in(path);
    if (!in) throw ConfigError(fmt::format("{}: cannot read the config file", path));
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_jitd_config(ss.str(), path);
}

}  // namespace jitlb::control
