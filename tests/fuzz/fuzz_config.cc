// libFuzzer target: the node configuration parser (lb/config.h) on arbitrary
// text. parse_node_config must never crash or throw, must return exactly one
// of NodeConfig and ConfigError, and what it returns must keep the parser's
// promises (checked below, __builtin_trap() on a violation):
//  - a ConfigError has a message, a position that is either 1-based or 0:0,
//    an empty key exactly for TOML syntax errors, and a to_string() that
//    starts with the file name (and its position when it has one);
//  - a NodeConfig satisfies every range, format and uniqueness rule of
//    config.cc: at least one address and one port, unique names and devices,
//    MTU, descriptor, queue and tick limits, absolute paths, host bits of the
//    outer source prefixes zero, closed timeout within the idle timeout, ...;
//  - the result depends on the text only: parsing it again under another file
//    name gives the same config, or the same error with the other file name.
//
// Seeds (tests/fuzz/corpus/fuzz_config/): config/jitlb.example.toml, a minimal
// config, one variant per section and inline-table forms, and a few broken
// files (syntax error, unknown key, wrong type, out of range, duplicates).
#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

#include "config.h"
#include "shared_file.h"

namespace {

using namespace jitlb;
using namespace jitlb::lb;

constexpr std::string_view kFileA = "fuzz.toml";
constexpr std::string_view kFileB = "/etc/jitlb/other name.toml";

constexpr int64_t kSecondMs = 1000;
constexpr int64_t kDayMs = 86'400 * kSecondMs;

[[noreturn]] void violated() {
    __builtin_trap();
}

void check(bool ok) {
    if (!ok) violated();
}

bool no_control_chars(std::string_view text) {
    return std::none_of(text.begin(), text.end(), [](char c) {
        const auto byte = static_cast<unsigned char>(c);
        return byte < 0x20 || byte == 0x7f;
    });
}

bool all_of_chars(std::string_view text, std::string_view extra) {
    return std::all_of(text.begin(), text.end(), [&](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               extra.find(c) != std::string_view::npos;
    });
}

bool is_hex(std::string_view text) {
    return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    });
}

// What config.cc accepts as a device spec: 1..1024 characters without blanks
// or control characters, named by a PCI address or net_<driver><n>.
std::string_view device_name(std::string_view spec) {
    return spec.substr(0, spec.find(','));
}

bool valid_device(std::string_view spec) {
    if (spec.empty() || spec.size() > 1024 || spec.find(' ') != std::string_view::npos ||
        !no_control_chars(spec)) {
        return false;
    }
    std::string_view name = device_name(spec);
    if (name.size() > 4 && name.substr(0, 4) == "net_") return all_of_chars(name, "_");
    if (name.size() == 12) {
        if (!is_hex(name.substr(0, 4)) || name[4] != ':') return false;
        name.remove_prefix(5);
    }
    return name.size() == 7 && is_hex(name.substr(0, 2)) && name[2] == ':' &&
           is_hex(name.substr(3, 2)) && name[5] == '.' && name[6] >= '0' && name[6] <= '7';
}

bool valid_path(std::string_view path) {
    return !path.empty() && path.front() == '/' && path.size() <= 4095 && no_control_chars(path);
}

bool unicast_mac(const MacAddress& mac) {
    return mac != MacAddress{} && (mac[0] & 1) == 0;
}

bool v4_tail_zero(const std::array<uint8_t, 16>& bytes) {
    return std::all_of(bytes.begin() + 4, bytes.end(), [](uint8_t b) { return b == 0; });
}

bool host_bits_zero(const SourcePrefix& p) {
    const unsigned bits = p.base.version == IpVersion::v4 ? 32 : 128;
    if (p.prefix_len > bits) return false;
    for (unsigned i = p.prefix_len; i < 128; ++i) {
        if ((p.base.bytes[i / 8] >> (7 - i % 8)) & 1) return false;
    }
    return true;
}

void check_address(const IpAddress& a) {
    check(a.version == IpVersion::v4 || a.version == IpVersion::v6);
    if (a.version == IpVersion::v4) check(v4_tail_zero(a.bytes));
    check(a.bytes != std::array<uint8_t, 16>{});
    check(a.version == IpVersion::v4 ? (a.bytes[0] & 0xf0) != 0xe0 : a.bytes[0] != 0xff);
}

void check_port(const PortConfig& port) {
    check(!port.name.empty() && port.name.size() <= 16 && all_of_chars(port.name, "_-"));
    check(valid_device(port.device));
    check(port.mac_set ? unicast_mac(port.mac) : port.mac == MacAddress{});
    check(port.next_hop_set ? unicast_mac(port.next_hop_mac) : port.next_hop_mac == MacAddress{});
    // A next hop to resolve: of its key's family, and never beside a static MAC.
    check(port.next_hop.version == IpVersion::none || port.next_hop.version == IpVersion::v4);
    check(port.next_hop_v6.version == IpVersion::none || port.next_hop_v6.version == IpVersion::v6);
    check(!(port.next_hop_set && port.resolves_next_hop()));
    check(port.mtu >= kMinPortMtu && port.mtu <= kMaxPortMtu);
    check(port.rx_queues <= kMaxPortRxQueues);
    for (const uint16_t d : {port.rx_descriptors, port.tx_descriptors}) {
        check(d >= kMinPortDescriptors && d <= kMaxPortDescriptors && std::has_single_bit(d));
    }
}

void check_config(const NodeConfig& c) {
    check(valid_instance_name(c.instance));

    check(!c.addresses.empty());
    for (size_t i = 0; i < c.addresses.size(); ++i) {
        check_address(c.addresses[i]);
        for (size_t j = 0; j < i; ++j) check(!(c.addresses[j] == c.addresses[i]));
    }

    check(!c.ports.empty());
    for (size_t i = 0; i < c.ports.size(); ++i) {
        check_port(c.ports[i]);
        for (size_t j = 0; j < i; ++j) {
            check(c.ports[j].name != c.ports[i].name);
            check(device_name(c.ports[j].device) != device_name(c.ports[i].device));
        }
    }

    if (!c.exception_port.empty()) {
        check(valid_device(c.exception_port));
        for (const PortConfig& port : c.ports) {
            check(device_name(port.device) != device_name(c.exception_port));
        }
    }
    for (size_t i = 0; i < c.exception_allow.size(); ++i) {
        check(std::find(kExceptionTrafficNames.begin(), kExceptionTrafficNames.end(),
                        c.exception_allow[i]) != kExceptionTrafficNames.end());
        for (size_t j = 0; j < i; ++j) check(c.exception_allow[j] != c.exception_allow[i]);
    }

    check(valid_path(c.issuer_keys_file));
    check(valid_path(c.mac_key_file));
    check(c.grant_capacity >= 1 && c.grant_capacity <= kGrantTableMaxCapacity);
    check(c.grant_slots_per_grant == 2 || c.grant_slots_per_grant == 4 ||
          c.grant_slots_per_grant == 8);
    check(c.skew_ms >= 0 && c.skew_ms <= kDayMs);
    check(c.max_grant_duration_ms >= kSecondMs && c.max_grant_duration_ms <= 366 * kDayMs);
    check(c.not_before_horizon_ms >= 0 && c.not_before_horizon_ms <= 366 * kDayMs);
    const VerifyPolicy policy = c.verify_policy();
    check(policy.skew_ms == c.skew_ms && policy.horizon_ms == c.not_before_horizon_ms &&
          policy.max_duration_ms == c.max_grant_duration_ms);
    check(c.verify_per_tick >= 1 && c.verify_per_tick <= 4096);
    check(c.tick_us >= 1 && c.tick_us <= kMaxTickUs);

    check(c.outer_source_v4.base.version == IpVersion::v4);
    check(c.outer_source_v4.prefix_len >= 8 && c.outer_source_v4.prefix_len <= 32);
    check(v4_tail_zero(c.outer_source_v4.base.bytes));
    check(host_bits_zero(c.outer_source_v4));
    if (c.has_outer_source_v6()) {
        check(c.outer_source_v6.prefix_len >= 16 && c.outer_source_v6.prefix_len <= 128);
        check(host_bits_zero(c.outer_source_v6));
    } else {
        check(c.outer_source_v6.base.version == IpVersion::none);
    }
    check(c.outer_ttl >= 1);
    check(c.default_gue_port >= 1);

    check(c.conn_table_capacity >= 1 && c.conn_table_capacity <= (uint32_t{1} << 24));
    check(c.conn_idle_timeout_ms >= kSecondMs && c.conn_idle_timeout_ms <= kDayMs);
    check(c.conn_closed_timeout_ms <= c.conn_idle_timeout_ms);

    check(c.region_dir.empty() || valid_path(c.region_dir));
    check(c.cmd_dir.empty() || valid_path(c.cmd_dir));
    check(!c.cmd_dir.empty() || c.region_dir.empty());  // an unset cmd_dir follows dir
    const std::string& owner = c.cmd_file_owner;
    check(!owner.empty() && owner.size() <= 32 && all_of_chars(owner, "_-.") &&
          !(owner[0] >= '0' && owner[0] <= '9') && owner[0] != '-' && owner[0] != '.');
    check(c.service_capacity >= 1 && c.service_capacity <= kGrantTableMaxServiceId);

    (void)describe(c);
}

void check_error(const ConfigError& e, std::string_view file) {
    check(e.file == file);
    check(!e.message.empty());
    check(e.line >= 0 && e.column >= 0 && (e.line == 0) == (e.column == 0));
    // Only parse errors have no key (parse_node_config reads no file).
    check(e.key.empty() == e.message.starts_with("TOML syntax: "));
    const std::string text = e.to_string();
    check(text.starts_with(file));
    const std::string position =
        e.line > 0 ? ":" + std::to_string(e.line) + ":" + std::to_string(e.column) : "";
    check(std::string_view(text).substr(file.size()).starts_with(position + ": "));
}

bool same_port(const PortConfig& a, const PortConfig& b) {
    return a.name == b.name && a.device == b.device && a.mac == b.mac && a.mac_set == b.mac_set &&
           a.next_hop_mac == b.next_hop_mac && a.next_hop_set == b.next_hop_set && a.next_hop == b.next_hop &&
           a.next_hop_v6 == b.next_hop_v6 && a.mtu == b.mtu &&
           a.rx_queues == b.rx_queues && a.rx_descriptors == b.rx_descriptors &&
           a.tx_descriptors == b.tx_descriptors;
}

bool same_prefix(const SourcePrefix& a, const SourcePrefix& b) {
    return a.base == b.base && a.prefix_len == b.prefix_len;
}

bool same_config(const NodeConfig& a, const NodeConfig& b) {
    return a.instance == b.instance && a.region_dir == b.region_dir && a.cmd_dir == b.cmd_dir &&
           a.cmd_file_owner == b.cmd_file_owner && a.service_capacity == b.service_capacity &&
           a.addresses == b.addresses &&
           std::equal(a.ports.begin(), a.ports.end(), b.ports.begin(), b.ports.end(), same_port) &&
           a.exception_port == b.exception_port && a.exception_allow == b.exception_allow &&
           a.issuer_keys_file == b.issuer_keys_file && a.mac_key_file == b.mac_key_file &&
           a.grant_capacity == b.grant_capacity &&
           a.grant_slots_per_grant == b.grant_slots_per_grant && a.skew_ms == b.skew_ms &&
           a.max_grant_duration_ms == b.max_grant_duration_ms &&
           a.not_before_horizon_ms == b.not_before_horizon_ms &&
           a.verify_per_tick == b.verify_per_tick && a.tick_us == b.tick_us &&
           same_prefix(a.outer_source_v4, b.outer_source_v4) &&
           same_prefix(a.outer_source_v6, b.outer_source_v6) && a.outer_ttl == b.outer_ttl &&
           a.default_gue_port == b.default_gue_port && a.flow_hash_seed == b.flow_hash_seed &&
           a.conn_table_capacity == b.conn_table_capacity &&
           a.conn_idle_timeout_ms == b.conn_idle_timeout_ms &&
           a.conn_closed_timeout_ms == b.conn_closed_timeout_ms && describe(a) == describe(b);
}

std::variant<NodeConfig, ConfigError> parse(std::string_view text, std::string_view file) {
    try {
        return parse_node_config(text, file);
    } catch (...) {
        violated();  // the parser reports every problem as a ConfigError
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    const std::variant<NodeConfig, ConfigError> first = parse(text, kFileA);
    check(!first.valueless_by_exception() && first.index() < 2);
    if (const auto* config = std::get_if<NodeConfig>(&first)) {
        check_config(*config);
    } else {
        check_error(std::get<ConfigError>(first), kFileA);
    }

    // The same text under another name: the same config, or the same error
    // naming the other file.
    const std::variant<NodeConfig, ConfigError> second = parse(text, kFileB);
    check(second.index() == first.index());
    if (const auto* config = std::get_if<NodeConfig>(&first)) {
        check(same_config(*config, std::get<NodeConfig>(second)));
    } else {
        const ConfigError& a = std::get<ConfigError>(first);
        const ConfigError& b = std::get<ConfigError>(second);
        check_error(b, kFileB);
        check(a.key == b.key && a.message == b.message && a.line == b.line && a.column == b.column);
    }
    return 0;
}
