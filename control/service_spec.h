// A service as jitd keeps it and jitctl shows it: VIPs, forwarding mode and
// backends (with a drain flag), in JSON (docs/api.md, "Services"). jitd
// pushes it to jitlb as one ServiceSet and one BackendSet (a drained backend
// goes with weight 0: it keeps its established flows and gets no new ones).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "messages.h"

namespace jitlb::control {

struct BackendSpec {
    std::string id;
    IpAddress address;
    uint32_t weight = 1;  // 1..65535
    std::array<uint8_t, 6> mac{};
    bool draining = false;
    friend bool operator==(const BackendSpec&, const BackendSpec&) = default;
};

struct ServiceSpec {
    std::string name;
    ForwardingMode mode = ForwardingMode::ipip;
    uint16_t gue_port = 0;
    uint32_t table_size = 65537;
    bool answer_echo = false;
    bool disabled = false;
    std::vector<Vip> vips;
    std::vector<BackendSpec> backends;
    friend bool operator==(const ServiceSpec&, const ServiceSpec&) = default;
};

// {"name":"web","mode":"ipip","vips":[{"address":"203.0.113.10","port":443,
// "protocol":"tcp"}],"backends":[{"id":"b1","address":"10.1.0.1"}], ...}.
// Strict: unknown keys and wrong types are errors. nullopt with *error
// naming the field and the value.
std::optional<ServiceSpec> service_from_json(const nlohmann::json& j, std::string* error);
std::optional<BackendSpec> backend_from_json(const nlohmann::json& j, std::string* error);
nlohmann::ordered_json service_to_json(const ServiceSpec& spec);
nlohmann::ordered_json backend_to_json(const BackendSpec& backend);

// The spec's rules beyond its form (ids unique, backend count, L2 DSR needs
// MACs, the message limits): "" when fine.
std::string check_service(const ServiceSpec& spec);

ServiceSet service_set_of(const ServiceSpec& spec);
BackendSet backend_set_of(const ServiceSpec& spec);

std::string format_ip(const IpAddress& address);
std::optional<IpAddress> parse_ip(std::string_view text, std::string* error);
std::string format_mac(const std::array<uint8_t, 6>& mac);
std::optional<std::array<uint8_t, 6>> parse_mac(std::string_view text);
std::string_view mode_name(ForwardingMode mode) noexcept;

}  // namespace jitlb::control
