#include "service_spec.h"

#include <arpa/inet.h>

#include <set>

#include <fmt/format.h>

#include "grant.h"
#include "maglev.h"

namespace jitlb::control {

using nlohmann::json;
using nlohmann::ordered_json;

namespace {

void set(std::string* error, std::string message) {
    if (error) *error = std::move(message);
}

int hex_digit(char c) noexcept {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Only the listed keys; each present one of the given JSON type.
bool known_keys(const json& j, std::initializer_list<const char*> keys, std::string_view what,
                std::string* error) {
    if (!j.is_object()) {
        set(error, fmt::format("{}: expected a JSON object, got {}", what, j.type_name()));
        return false;
    }
    for (const auto& [key, value] : j.items()) {
        bool found = false;
        for (const char* k : keys) found = found || key == k;
        if (!found) {
            std::string list;
            for (const char* k : keys) list += list.empty() ? k : std::string(", ") + k;
            set(error, fmt::format("{}: unknown key '{}' (known: {})", what, key, list));
            return false;
        }
    }
    return true;
}

template <class T>
bool get_uint(const json& j, const char* key, T max, T& out, std::string_view what,
              std::string* error) {
    if (!j.contains(key)) return true;
    const json& v = j.at(key);
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<uint64_t>() > max) {
        set(error, fmt::format("{}.{}: expected an integer 0..{}, got {}", what, key, max,
                               v.dump()));
        return false;
    }
    out = static_cast<T>(v.get<uint64_t>());
    return true;
}

bool get_string(const json& j, const char* key, std::string& out, std::string_view what,
                std::string* error, bool required) {
    if (!j.contains(key)) {
        if (required) set(error, fmt::format("{}: '{}' is required", what, key));
        return !required;
    }
    if (!j.at(key).is_string()) {
        set(error, fmt::format("{}.{}: expected a string, got {}", what, key, j.at(key).dump()));
        return false;
    }
    out = j.at(key).get<std::string>();
    return true;
}

bool get_bool(const json& j, const char* key, bool& out, std::string_view what, std::string* error) {
    if (!j.contains(key)) return true;
    if (!j.at(key).is_boolean()) {
        set(error, fmt::format("{}.{}: expected true or false, got {}", what, key, j.at(key).dump()));
        return false;
    }
    out = j.at(key).get<bool>();
    return true;
}

}  // namespace

std::string_view mode_name(ForwardingMode mode) noexcept {
    switch (mode) {
        case ForwardingMode::ipip: return "ipip";
        case ForwardingMode::gue: return "gue";
        case ForwardingMode::l2dsr: return "l2dsr";
    }
    return "unknown";
}

std::string format_ip(const IpAddress& address) {
    char text[INET6_ADDRSTRLEN] = {};
    const int af = address.version == IpVersion::v4 ? AF_INET : AF_INET6;
    if (inet_ntop(af, address.bytes.data(), text, sizeof text) == nullptr) return "(none)";
    return text;
}

std::optional<IpAddress> parse_ip(std::string_view text, std::string* error) {
    if (text.find('/') != std::string_view::npos) {
        set(error, fmt::format("'{}' is a prefix: give one address, without '/'", text));
        return std::nullopt;
    }
    std::string why;
    const auto prefix = parse_ip_prefix(text, &why);
    if (!prefix) {
        set(error, why);
        return std::nullopt;
    }
    IpAddress a;
    a.version = prefix->family;
    a.bytes = prefix->addr;
    return a;
}

std::string format_mac(const std::array<uint8_t, 6>& mac) {
    return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", mac[0], mac[1], mac[2], mac[3],
                       mac[4], mac[5]);
}

std::optional<std::array<uint8_t, 6>> parse_mac(std::string_view text) {
    std::array<uint8_t, 6> mac{};
    if (text.size() != 17) return std::nullopt;
    for (size_t i = 0; i < mac.size(); ++i) {
        const int hi = hex_digit(text[3 * i]);
        const int lo = hex_digit(text[3 * i + 1]);
        if (hi < 0 || lo < 0 || (i < 5 && text[3 * i + 2] != ':')) return std::nullopt;
        mac[i] = static_cast<uint8_t>(hi * 16 + lo);
    }
    return mac;
}

std::optional<BackendSpec> backend_from_json(const json& j, std::string* error) {
    const std::string what = "backend";
    if (!known_keys(j, {"id", "address", "weight", "mac", "draining"}, what, error)) return {};
    BackendSpec b;
    std::string address, mac;
    if (!get_string(j, "id", b.id, what, error, true)) return {};
    if (!get_string(j, "address", address, what, error, true)) return {};
    if (!get_uint<uint32_t>(j, "weight", 65535, b.weight, what, error)) return {};
    if (!get_string(j, "mac", mac, what, error, false)) return {};
    if (!get_bool(j, "draining", b.draining, what, error)) return {};
    std::string why;
    const auto ip = parse_ip(address, &why);
    if (!ip) {
        set(error, fmt::format("backend {}: address: {}", b.id, why));
        return {};
    }
    b.address = *ip;
    if (!mac.empty()) {
        const auto m = parse_mac(mac);
        if (!m) {
            set(error, fmt::format("backend {}: mac '{}' is not like 02:00:00:00:00:01", b.id, mac));
            return {};
        }
        b.mac = *m;
    }
    if (b.weight == 0) {
        set(error, fmt::format("backend {}: weight 0 (to stop new flows, drain it instead)", b.id));
        return {};
    }
    return b;
}

std::optional<ServiceSpec> service_from_json(const json& j, std::string* error) {
    std::string what = "service";
    if (!known_keys(j, {"name", "mode", "gue_port", "table_size", "answer_echo", "disabled", "vips",
                        "backends"},
                    what, error))
        return {};
    ServiceSpec s;
    if (!get_string(j, "name", s.name, what, error, true)) return {};
    what = fmt::format("service {}", s.name);
    std::string mode = "ipip";
    if (!get_string(j, "mode", mode, what, error, false)) return {};
    if (mode == "ipip") s.mode = ForwardingMode::ipip;
    else if (mode == "gue") s.mode = ForwardingMode::gue;
    else if (mode == "l2dsr") s.mode = ForwardingMode::l2dsr;
    else {
        set(error, fmt::format("{}: mode '{}' (known: ipip, gue, l2dsr)", what, mode));
        return {};
    }
    if (!get_uint<uint16_t>(j, "gue_port", 65535, s.gue_port, what, error)) return {};
    if (s.mode == ForwardingMode::gue && s.gue_port == 0) s.gue_port = 6080;
    if (!get_uint<uint32_t>(j, "table_size", kMaxMaglevTableSize, s.table_size, what, error)) return {};
    if (!get_bool(j, "answer_echo", s.answer_echo, what, error)) return {};
    if (!get_bool(j, "disabled", s.disabled, what, error)) return {};
    if (!j.contains("vips") || !j.at("vips").is_array()) {
        set(error, fmt::format("{}: 'vips' is required: a list of {{address, port, protocol}}", what));
        return {};
    }
    for (const json& v : j.at("vips")) {
        if (!known_keys(v, {"address", "port", "protocol"}, what + " vip", error)) return {};
        Vip vip;
        std::string address, protocol = "tcp";
        if (!get_string(v, "address", address, what + " vip", error, true)) return {};
        if (!get_uint<uint16_t>(v, "port", 65535, vip.port, what + " vip", error)) return {};
        if (!get_string(v, "protocol", protocol, what + " vip", error, false)) return {};
        std::string why;
        const auto ip = parse_ip(address, &why);
        if (!ip) {
            set(error, fmt::format("{}: vip address: {}", what, why));
            return {};
        }
        vip.address = *ip;
        if (protocol == "tcp") vip.protocol = L4Protocol::tcp;
        else if (protocol == "udp") vip.protocol = L4Protocol::udp;
        else {
            set(error, fmt::format("{}: vip protocol '{}' (known: tcp, udp)", what, protocol));
            return {};
        }
        s.vips.push_back(vip);
    }
    if (j.contains("backends")) {
        if (!j.at("backends").is_array()) {
            set(error, fmt::format("{}: 'backends' must be a list", what));
            return {};
        }
        for (const json& b : j.at("backends")) {
            auto backend = backend_from_json(b, error);
            if (!backend) return {};
            s.backends.push_back(*backend);
        }
    }
    if (std::string why = check_service(s); !why.empty()) {
        set(error, why);
        return {};
    }
    return s;
}

std::string check_service(const ServiceSpec& spec) {
    if (const MessageFault f = check_message(service_set_of(spec)); !f.ok()) {
        return fmt::format("service {}: {}", spec.name, describe_message_fault(f));
    }
    if (!is_prime(spec.table_size)) {
        return fmt::format("service {}: table_size {} is not prime (Maglev needs a prime; 65537 is "
                           "the default)",
                           spec.name, spec.table_size);
    }
    std::set<std::string> ids;
    for (const BackendSpec& b : spec.backends) {
        if (!ids.insert(b.id).second) {
            return fmt::format("service {}: backend id '{}' listed twice", spec.name, b.id);
        }
        if (spec.mode == ForwardingMode::l2dsr && b.mac == std::array<uint8_t, 6>{}) {
            return fmt::format("service {}: backend {} needs a mac: the service forwards by L2 "
                               "DSR",
                               spec.name, b.id);
        }
    }
    if (const MessageFault f = check_message(backend_set_of(spec)); !f.ok()) {
        return fmt::format("service {} backends: {}", spec.name, describe_message_fault(f));
    }
    return "";
}

ordered_json backend_to_json(const BackendSpec& b) {
    ordered_json j;
    j["id"] = b.id;
    j["address"] = format_ip(b.address);
    j["weight"] = b.weight;
    if (b.mac != std::array<uint8_t, 6>{}) j["mac"] = format_mac(b.mac);
    j["draining"] = b.draining;
    return j;
}

ordered_json service_to_json(const ServiceSpec& s) {
    ordered_json j;
    j["name"] = s.name;
    j["mode"] = mode_name(s.mode);
    if (s.mode == ForwardingMode::gue) j["gue_port"] = s.gue_port;
    j["table_size"] = s.table_size;
    j["answer_echo"] = s.answer_echo;
    j["disabled"] = s.disabled;
    j["vips"] = ordered_json::array();
    for (const Vip& v : s.vips) {
        j["vips"].push_back({{"address", format_ip(v.address)},
                             {"port", v.port},
                             {"protocol", v.protocol == L4Protocol::tcp ? "tcp" : "udp"}});
    }
    j["backends"] = ordered_json::array();
    for (const BackendSpec& b : s.backends) j["backends"].push_back(backend_to_json(b));
    return j;
}

ServiceSet service_set_of(const ServiceSpec& spec) {
    ServiceSet set;
    set.name = spec.name;
    set.mode = spec.mode;
    set.gue_port = spec.mode == ForwardingMode::gue ? spec.gue_port : 0;
    set.maglev_table_size = spec.table_size;
    set.flags = (spec.disabled ? kServiceFlagDisabled : 0) |
                (spec.answer_echo ? kServiceFlagAnswerEcho : 0);
    set.vips = spec.vips;
    return set;
}

BackendSet backend_set_of(const ServiceSpec& spec) {
    BackendSet set;
    set.service = spec.name;
    for (const BackendSpec& b : spec.backends) {
        set.backends.push_back({b.id, b.address, b.draining ? 0u : b.weight, b.mac});
    }
    return set;
}

}  // namespace jitlb::control
