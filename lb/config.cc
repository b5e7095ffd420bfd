// Node configuration from TOML (see config.h). Values are read with a
// Section per table, which knows the key path for errors; the first error
// throws ConfigFailure, caught at the top.
#include "config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <initializer_list>
#include <optional>
#include <system_error>
#include <utility>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "shared_file.h"
#include "shared_layout.h"
#include "toml_keys.h"

namespace jitlb::lb {
namespace {

using toml_keys::join;
using toml_keys::type_name;

constexpr int64_t kSecondMs = 1000;
constexpr int64_t kDayS = 86'400;
constexpr size_t kMaxPathBytes = 4095;
constexpr size_t kMaxDeviceBytes = 1024;

ConfigError make_error(std::string_view file, std::string key, const toml::source_position& at,
                       std::string message) {
    ConfigError error;
    error.file = std::string(file);
    error.key = std::move(key);
    error.message = std::move(message);
    error.line = static_cast<int>(at.line);
    error.column = static_cast<int>(at.column);
    return error;
}

// Thrown inside the parser and caught by parse_node_config: the first error
// ends the parse, so no caller ever sees a half-filled NodeConfig.
struct ConfigFailure {
    ConfigError error;
};

[[noreturn]] void fail(std::string_view file, std::string key, const toml::source_position& at,
                       std::string message) {
    throw ConfigFailure{make_error(file, std::move(key), at, std::move(message))};
}


// One table of the document and its key path ("grants", "port[1]"). An
// absent table reads as empty, so that its required keys are reported as
// missing by their full path.
class Section {
  public:
    Section(std::string_view file, const toml::table* table, std::string path,
            toml::source_position where)
        : file_(file), table_(table), path_(std::move(path)), where_(where) {}

    // An empty key (TOML allows `"" = 1`) is shown as TOML writes it.
    std::string key_path(std::string_view key) const {
        const std::string shown = key.empty() ? std::string("\"\"") : std::string(key);
        return path_.empty() ? shown : fmt::format("{}.{}", path_, shown);
    }
    std::string_view file() const { return file_; }

    // Every key of the table must be one of `known`: a misspelt key would
    // otherwise leave its setting at the default without a word. The table
    // iterates in key order; the error names the unknown key first in the file.
    void allow_only(std::initializer_list<std::string_view> known) const {
        if (!table_) return;
        const toml::key* first = toml_keys::first_unknown_key(*table_, known);
        if (!first) return;
        const std::string_view name = first->str();
        fail(file_, key_path(name), first->source().begin,
             fmt::format("unknown key{}; the keys {} are: {}", toml_keys::did_you_mean(name, known),
                         toml_keys::table_place(path_), join(known)));
    }

    const toml::node* find(std::string_view key) const {
        return table_ ? table_->get(key) : nullptr;
    }

    // At the key's value when it is present, else at the table.
    [[noreturn]] void fail_at(std::string_view key, std::string message) const {
        const toml::node* node = find(key);
        fail(file_, key_path(key), node ? node->source().begin : where_, std::move(message));
    }

    [[noreturn]] void missing(std::string_view key, std::string_view what) const {
        fail(file_, key_path(key), where_, fmt::format("missing: {}", what));
    }

    Section table(std::string_view key) const {
        const toml::node* node = find(key);
        if (!node) return Section(file_, nullptr, key_path(key), where_);
        const toml::table* sub = node->as_table();
        if (!sub) {
            fail_at(key, fmt::format("expected a table ([{}]), found {}", key_path(key),
                                     type_name(*node)));
        }
        return Section(file_, sub, key_path(key), sub->source().begin);
    }

    std::optional<std::string> string(std::string_view key) const {
        const toml::node* node = find(key);
        if (!node) return std::nullopt;
        return string_value(*node, key_path(key));
    }

    std::string required_string(std::string_view key, std::string_view what) const {
        std::optional<std::string> value = string(key);
        if (!value) missing(key, what);
        return *value;
    }

    // A string, without control characters (no setting needs one, and
    // messages quote values).
    std::string string_value(const toml::node& node, const std::string& path) const {
        const auto* value = node.as_string();
        if (!value) {
            fail(file_, path, node.source().begin,
                 fmt::format("expected a string, found {}", type_name(node)));
        }
        const std::string& text = value->get();
        for (const char c : text) {
            const auto byte = static_cast<unsigned char>(c);
            if (byte < 0x20 || byte == 0x7f) {
                fail(file_, path, node.source().begin,
                     fmt::format("contains the control character 0x{:02x}", byte));
            }
        }
        return text;
    }

    // An integer in lo..hi, or nothing when absent. `unit` follows the
    // bounds in the message ("1..100 us").
    std::optional<int64_t> integer(std::string_view key, int64_t lo, int64_t hi,
                                   std::string_view unit = "") const {
        const toml::node* node = find(key);
        if (!node) return std::nullopt;
        const auto* value = node->as_integer();
        if (!value) {
            fail_at(key, fmt::format("expected an integer, found {}", type_name(*node)));
        }
        const int64_t v = value->get();
        if (v < lo || v > hi) {
            fail_at(key, fmt::format("{} is out of range ({}..{}{}{})", v, lo, hi,
                                     unit.empty() ? "" : " ", unit));
        }
        return v;
    }

    const toml::array* array(std::string_view key) const {
        const toml::node* node = find(key);
        if (!node) return nullptr;
        const toml::array* items = node->as_array();
        if (!items) {
            fail_at(key, fmt::format("expected an array, found {}", type_name(*node)));
        }
        return items;
    }

    struct Item {
        std::string value;
        std::string path;  // "addresses[1]"
        toml::source_position at;
    };

    std::optional<std::vector<Item>> string_array(std::string_view key) const {
        const toml::array* items = array(key);
        if (!items) return std::nullopt;
        std::vector<Item> out;
        for (size_t i = 0; i < items->size(); ++i) {
            const toml::node& node = *items->get(i);
            std::string path = fmt::format("{}[{}]", key_path(key), i);
            std::string value = string_value(node, path);
            out.push_back({std::move(value), std::move(path), node.source().begin});
        }
        return out;
    }

  private:
    std::string_view file_;
    const toml::table* table_;
    std::string path_;
    toml::source_position where_;
};

// --- value syntax -------------------------------------------------------------------

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

bool all_hex(std::string_view text) {
    return !text.empty() &&
           std::all_of(text.begin(), text.end(), [](char c) { return hex_digit(c) >= 0; });
}

std::string format_mac(const MacAddress& mac) {
    return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", mac[0], mac[1], mac[2], mac[3],
                       mac[4], mac[5]);
}

// "02:00:00:00:00:01": six pairs of hex digits and colons, nothing else.
std::optional<MacAddress> parse_mac(std::string_view text) {
    if (text.size() != 17) return std::nullopt;
    MacAddress mac{};
    for (size_t i = 0; i < mac.size(); ++i) {
        if (i > 0 && text[i * 3 - 1] != ':') return std::nullopt;
        const int high = hex_digit(text[i * 3]);
        const int low = hex_digit(text[i * 3 + 1]);
        if (high < 0 || low < 0) return std::nullopt;
        mac[i] = static_cast<uint8_t>(high * 16 + low);
    }
    return mac;
}

// A unicast MAC address, or nothing when absent.
std::optional<MacAddress> read_mac(const Section& section, std::string_view key) {
    const std::optional<std::string> text = section.string(key);
    if (!text) return std::nullopt;
    const std::optional<MacAddress> mac = parse_mac(*text);
    if (!mac) {
        section.fail_at(key, fmt::format("'{}' is not a MAC address (six pairs of hex digits "
                                         "separated by colons, e.g. 02:00:00:00:00:01)",
                                         *text));
    }
    if (*mac == MacAddress{}) section.fail_at(key, "00:00:00:00:00:00 is not a usable address");
    if (((*mac)[0] & 1) != 0) {
        section.fail_at(key, fmt::format("{} is a multicast address; a port and a next hop need "
                                         "a unicast one (lowest bit of the first byte clear)",
                                         *text));
    }
    return mac;
}

std::string format_address(const IpAddress& address) {
    IpPrefix prefix;
    prefix.family = address.version;
    prefix.addr = address.bytes;
    prefix.prefix_len = address.version == IpVersion::v6 ? 128 : 32;
    std::string text = format_ip_prefix(prefix);
    return text.substr(0, text.find('/'));
}

std::string format_source_prefix(const SourcePrefix& prefix) {
    return fmt::format("{}/{}", format_address(prefix.base), prefix.prefix_len);
}

// "0000:01:00.0" or "01:00.0" (DPDK also takes the short form).
bool is_pci_address(std::string_view name) {
    if (name.size() == 12) {
        if (!all_hex(name.substr(0, 4)) || name[4] != ':') return false;
        name.remove_prefix(5);
    }
    return name.size() == 7 && all_hex(name.substr(0, 2)) && name[2] == ':' &&
           all_hex(name.substr(3, 2)) && name[5] == '.' && name[6] >= '0' && name[6] <= '7';
}

// net_<driver><n>: net_pcap0, net_af_packet1, net_tap0, net_ring0.
bool is_vdev_name(std::string_view name) {
    constexpr std::string_view kPrefix = "net_";
    if (name.size() <= kPrefix.size() || name.substr(0, kPrefix.size()) != kPrefix) return false;
    return std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '_';
    });
}

// The device's name: what precedes its arguments ("net_pcap0" of "net_pcap0,rx_pcap=a").
std::string_view device_name(std::string_view spec) {
    return spec.substr(0, spec.find(','));
}

std::string read_device(const Section& section, std::string_view key, std::string_view what) {
    std::string spec = section.required_string(key, what);
    if (spec.empty() || spec.size() > kMaxDeviceBytes) {
        section.fail_at(key, fmt::format("a device spec has 1 to {} characters", kMaxDeviceBytes));
    }
    if (spec.find(' ') != std::string::npos) {
        section.fail_at(key, fmt::format("'{}' contains a blank: DPDK device arguments are "
                                         "separated by commas",
                                         spec));
    }
    const std::string_view name = device_name(spec);
    if (!is_pci_address(name) && !is_vdev_name(name)) {
        section.fail_at(key,
                        fmt::format("'{}' is neither a PCI address (0000:01:00.0) nor a virtual "
                                    "device (net_<driver><n>[,arguments], e.g. "
                                    "net_af_packet0,iface=veth1 or net_tap0,iface=jitlb0)",
                                    name));
    }
    return spec;
}

// An absolute path, or nothing when absent.
std::optional<std::string> read_path(const Section& section, std::string_view key) {
    std::optional<std::string> path = section.string(key);
    if (!path) return std::nullopt;
    if (path->empty() || path->front() != '/') {
        section.fail_at(key, fmt::format("'{}' is not an absolute path (jitlb may start from any "
                                         "directory: write the full path)",
                                         *path));
    }
    if (path->size() > kMaxPathBytes) {
        section.fail_at(key, fmt::format("the path is longer than {} bytes", kMaxPathBytes));
    }
    return path;
}

bool valid_port_name(std::string_view name) {
    return !name.empty() && name.size() <= 16 && std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '_' || c == '-';
    });
}

// A user name as useradd takes it: a letter or '_', then letters, digits, '_', '-', '.'.
bool valid_user_name(std::string_view name) {
    const auto lead = [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    };
    return !name.empty() && name.size() <= 32 && lead(name[0]) &&
           std::all_of(name.begin(), name.end(), [&](char c) {
               return lead(c) || (c >= '0' && c <= '9') || c == '-' || c == '.';
           });
}

bool is_multicast(const IpAddress& address) {
    return address.version == IpVersion::v4 ? (address.bytes[0] & 0xf0) == 0xe0
                                            : address.bytes[0] == 0xff;
}

// --- the sections ---------------------------------------------------------------------

void read_addresses(const Section& root, NodeConfig& config) {
    const std::optional<std::vector<Section::Item>> items = root.string_array("addresses");
    if (!items) {
        root.missing("addresses",
                     "the node's own IPv4 and IPv6 addresses, e.g. "
                     "addresses = [\"192.0.2.10\", \"2001:db8::10\"]");
    }
    if (items->empty()) {
        root.fail_at("addresses", "is empty: give at least one of the node's own addresses");
    }
    for (const Section::Item& item : *items) {
        if (item.value.find('/') != std::string::npos) {
            fail(root.file(), item.path, item.at,
                 fmt::format("'{}': write the address without a prefix length", item.value));
        }
        std::string why;
        const std::optional<IpPrefix> prefix = parse_ip_prefix(item.value, &why);
        if (!prefix) fail(root.file(), item.path, item.at, why);
        IpAddress address;
        address.version = prefix->family;
        address.bytes = prefix->addr;
        if (address.bytes == std::array<uint8_t, 16>{} || is_multicast(address)) {
            fail(root.file(), item.path, item.at,
                 fmt::format("'{}' is not a unicast address", item.value));
        }
        if (std::find(config.addresses.begin(), config.addresses.end(), address) !=
            config.addresses.end()) {
            fail(root.file(), item.path, item.at, fmt::format("'{}' is listed twice", item.value));
        }
        config.addresses.push_back(address);
    }
}

// A next hop's address (`next_hop` IPv4, `next_hop_v6` IPv6) resolved by ARP
// or ND: unicast, not one of the node's own, asked from a node address of
// its family.
std::optional<IpAddress> read_next_hop(const Section& section, std::string_view key, IpVersion family,
                                       const NodeConfig& config) {
    const std::optional<std::string> text = section.string(key);
    if (!text) return std::nullopt;
    const bool v4 = family == IpVersion::v4;
    if (text->find('/') != std::string::npos)
        section.fail_at(key, fmt::format("'{}': write the address without a prefix length", *text));
    std::string why;
    const std::optional<IpPrefix> prefix = parse_ip_prefix(*text, &why);
    if (!prefix) section.fail_at(key, why);
    IpAddress address;
    address.version = prefix->family;
    address.bytes = prefix->addr;
    if (address.version != family) {
        section.fail_at(key, fmt::format("'{}' is an {} address; {} takes the router's {} address ({})", *text,
                                         v4 ? "IPv6" : "IPv4", key, v4 ? "IPv4" : "IPv6",
                                         v4 ? "an IPv6 one goes in next_hop_v6" : "an IPv4 one goes in next_hop"));
    }
    const bool broadcast = v4 && address.bytes[0] == 255 && address.bytes[1] == 255 && address.bytes[2] == 255 &&
                           address.bytes[3] == 255;
    if (address.bytes == std::array<uint8_t, 16>{} || is_multicast(address) || broadcast)
        section.fail_at(key, fmt::format("'{}' is not a unicast address", *text));
    if (std::find(config.addresses.begin(), config.addresses.end(), address) != config.addresses.end())
        section.fail_at(key, fmt::format("'{}' is one of the node's own addresses, not a router", *text));
    if (std::none_of(config.addresses.begin(), config.addresses.end(),
                     [&](const IpAddress& a) { return a.version == family; })) {
        section.fail_at(key, fmt::format("{} needs an {} node address to ask from ({} requests carry the "
                                         "node's address): add one to addresses",
                                         v4 ? "ARP" : "neighbour discovery", v4 ? "IPv4" : "IPv6",
                                         v4 ? "ARP" : "solicitations"));
    }
    return address;
}

PortConfig read_port(const Section& section, const NodeConfig& config) {
    section.allow_only({"name", "device", "mac", "next_hop_mac", "next_hop", "next_hop_v6", "mtu",
                        "rx_queues", "rx_descriptors", "tx_descriptors"});
    PortConfig port;
    port.name = section.required_string("name", "the port's name, e.g. name = \"wan\"");
    if (!valid_port_name(port.name)) {
        section.fail_at("name", fmt::format("'{}' is not a port name: 1 to 16 characters of "
                                            "A-Z a-z 0-9 _ -",
                                            port.name));
    }
    port.device = read_device(section, "device",
                              "the DPDK device: a PCI address (\"0000:01:00.0\") or a virtual "
                              "device (\"net_af_packet0,iface=veth1\")");
    if (const std::optional<MacAddress> mac = read_mac(section, "mac")) {
        port.mac = *mac;
        port.mac_set = true;
    }
    if (const std::optional<MacAddress> mac = read_mac(section, "next_hop_mac")) {
        port.next_hop_mac = *mac;
        port.next_hop_set = true;
    }
    if (const auto a = read_next_hop(section, "next_hop", IpVersion::v4, config)) port.next_hop = *a;
    if (const auto a = read_next_hop(section, "next_hop_v6", IpVersion::v6, config)) port.next_hop_v6 = *a;
    if (port.next_hop_set && port.resolves_next_hop()) {
        const std::string_view key = port.next_hop.version != IpVersion::none ? "next_hop" : "next_hop_v6";
        section.fail_at(key, fmt::format("{} and next_hop_mac are both set: give the router's MAC "
                                         "(next_hop_mac, nothing resolved) or its address (resolved by "
                                         "ARP / ND), not both",
                                         key));
    }
    if (const auto v = section.integer("mtu", kMinPortMtu, kMaxPortMtu)) {
        port.mtu = static_cast<uint32_t>(*v);
    }
    if (const auto v = section.integer("rx_queues", 0, kMaxPortRxQueues)) {
        port.rx_queues = static_cast<uint16_t>(*v);
    }
    for (const std::string_view key : {"rx_descriptors", "tx_descriptors"}) {
        const auto v = section.integer(key, kMinPortDescriptors, kMaxPortDescriptors);
        if (!v) continue;
        if (!std::has_single_bit(static_cast<uint64_t>(*v))) {
            section.fail_at(key, fmt::format("{} is not a power of two (e.g. {})", *v,
                                             std::bit_floor(static_cast<uint64_t>(*v))));
        }
        (key == "rx_descriptors" ? port.rx_descriptors : port.tx_descriptors) =
            static_cast<uint16_t>(*v);
    }
    return port;
}

void read_ports(const Section& root, NodeConfig& config) {
    const toml::node* node = root.find("port");
    if (!node) {
        root.missing("port", "at least one [[port]] table with a name and a device");
    }
    const toml::array* tables = node->as_array();
    if (!tables) {
        root.fail_at("port", fmt::format("expected an array of tables ([[port]]), found {}",
                                         type_name(*node)));
    }
    if (tables->empty()) root.fail_at("port", "no ports: add at least one [[port]] table");
    for (size_t i = 0; i < tables->size(); ++i) {
        const toml::node& entry = *tables->get(i);
        const std::string path = fmt::format("port[{}]", i);
        const toml::table* table = entry.as_table();
        if (!table) {
            fail(root.file(), path, entry.source().begin,
                 fmt::format("expected a table ([[port]]), found {}", type_name(entry)));
        }
        const Section section(root.file(), table, path, table->source().begin);
        PortConfig port = read_port(section, config);
        for (size_t j = 0; j < config.ports.size(); ++j) {
            if (config.ports[j].name == port.name) {
                section.fail_at("name",
                                fmt::format("'{}' is already the name of port[{}]", port.name, j));
            }
            if (device_name(config.ports[j].device) == device_name(port.device)) {
                section.fail_at("device",
                                fmt::format("device {} is already port[{}] ('{}')",
                                            device_name(port.device), j, config.ports[j].name));
            }
        }
        config.ports.push_back(std::move(port));
    }
}

void read_exception(const Section& section, NodeConfig& config) {
    section.allow_only({"port", "allow"});
    if (const std::optional<std::string> port = section.string("port"); port && !port->empty()) {
        config.exception_port = read_device(section, "port", "");
        for (size_t j = 0; j < config.ports.size(); ++j) {
            if (device_name(config.ports[j].device) == device_name(config.exception_port)) {
                section.fail_at("port", fmt::format("device {} is already port[{}] ('{}')",
                                                    device_name(config.exception_port), j,
                                                    config.ports[j].name));
            }
        }
    }
    const std::optional<std::vector<Section::Item>> items = section.string_array("allow");
    if (!items) return;
    config.exception_allow.clear();
    for (const Section::Item& item : *items) {
        if (std::find(kExceptionTrafficNames.begin(), kExceptionTrafficNames.end(), item.value) ==
            kExceptionTrafficNames.end()) {
            fail(section.file(), item.path, item.at,
                 fmt::format("'{}' is not a kind of exception traffic; the kinds are: {}",
                             item.value, join(kExceptionTrafficNames)));
        }
        if (std::find(config.exception_allow.begin(), config.exception_allow.end(), item.value) !=
            config.exception_allow.end()) {
            fail(section.file(), item.path, item.at,
                 fmt::format("'{}' is listed twice", item.value));
        }
        config.exception_allow.push_back(item.value);
    }
}

void read_grants(const Section& section, NodeConfig& config) {
    section.allow_only({"issuer_keys", "mac_key", "capacity", "slots_per_grant", "skew_ms",
                        "max_duration_s", "horizon_s", "verify_per_tick"});
    const std::optional<std::string> issuer_keys = read_path(section, "issuer_keys");
    if (!issuer_keys) {
        section.missing("issuer_keys",
                        "the file of the issuers' public keys whose grants this "
                        "node accepts, e.g. issuer_keys = \"/etc/jitlb/issuers.pub\"");
    }
    config.issuer_keys_file = *issuer_keys;
    config.mac_key_file = read_path(section, "mac_key")
                              .value_or(fmt::format("/etc/jitlb/{}.mackey", config.instance));
    if (const auto v = section.integer("capacity", 1, int64_t{kGrantTableMaxCapacity}, "grants")) {
        config.grant_capacity = static_cast<uint64_t>(*v);
    }
    if (const auto v = section.integer("slots_per_grant", 2, 8)) {
        if (*v != 2 && *v != 4 && *v != 8) {
            section.fail_at("slots_per_grant", fmt::format("{} is not 2, 4 or 8", *v));
        }
        config.grant_slots_per_grant = static_cast<uint32_t>(*v);
    }
    if (const auto v = section.integer("skew_ms", 0, kDayS * kSecondMs, "ms")) {
        config.skew_ms = *v;
    }
    if (const auto v = section.integer("max_duration_s", 1, 366 * kDayS, "s")) {
        config.max_grant_duration_ms = *v * kSecondMs;
    }
    if (const auto v = section.integer("horizon_s", 0, 366 * kDayS, "s")) {
        config.not_before_horizon_ms = *v * kSecondMs;
    }
    if (const auto v = section.integer("verify_per_tick", 1, 4096)) {
        config.verify_per_tick = static_cast<uint32_t>(*v);
    }
}

SourcePrefix read_source_prefix(const Section& section, std::string_view key, IpVersion family,
                                uint8_t min_len) {
    const std::string text = *section.string(key);
    std::string why;
    const std::optional<IpPrefix> prefix = parse_ip_prefix(text, &why);
    if (!prefix) section.fail_at(key, why);
    const bool v4 = family == IpVersion::v4;
    if (prefix->family != family) {
        section.fail_at(key, fmt::format("'{}' is an {} prefix; {} takes an {} one", text,
                                         v4 ? "IPv6" : "IPv4", key, v4 ? "IPv4" : "IPv6"));
    }
    if (prefix->prefix_len < min_len) {
        section.fail_at(key, fmt::format("'{}' is shorter than /{}: outer sources would come from "
                                         "other networks' addresses",
                                         text, min_len));
    }
    SourcePrefix out;
    out.base.version = family;
    out.base.bytes = prefix->addr;
    out.prefix_len = prefix->prefix_len;
    return out;
}

void read_encap(const Section& section, NodeConfig& config) {
    section.allow_only({"outer_source_v4", "outer_source_v6", "ttl", "gue_port"});
    if (!section.string("outer_source_v4")) {
        section.missing("outer_source_v4",
                        "the IPv4 prefix outer source addresses are taken "
                        "from, e.g. outer_source_v4 = \"10.255.0.0/16\"");
    }
    config.outer_source_v4 = read_source_prefix(section, "outer_source_v4", IpVersion::v4, 8);
    // "" (as absent): no IPv6 outer source.
    if (const std::optional<std::string> v6 = section.string("outer_source_v6");
        v6 && !v6->empty()) {
        config.outer_source_v6 = read_source_prefix(section, "outer_source_v6", IpVersion::v6, 16);
    }
    if (const auto v = section.integer("ttl", 1, 255)) config.outer_ttl = static_cast<uint8_t>(*v);
    if (const auto v = section.integer("gue_port", 1, 65535)) {
        config.default_gue_port = static_cast<uint16_t>(*v);
    }
}

// An integer of 0..2^63-1, or "0x" and 1 to 16 hex digits for the whole
// 64-bit range (TOML integers are signed).
uint64_t read_hash_seed(const Section& section) {
    constexpr std::string_view kKey = "hash_seed";
    const toml::node* node = section.find(kKey);
    if (!node) return 0;
    if (node->is_string()) {
        const std::string text = *section.string(kKey);
        const std::string_view digits =
            std::string_view(text).substr(std::min<size_t>(2, text.size()));
        if (text.size() < 3 || text.size() > 18 || (text[0] != '0') ||
            (text[1] != 'x' && text[1] != 'X') || !all_hex(digits)) {
            section.fail_at(kKey, fmt::format("'{}' is not \"0x\" and 1 to 16 hex digits", text));
        }
        uint64_t seed = 0;
        for (const char c : digits) seed = seed * 16 + static_cast<uint64_t>(hex_digit(c));
        return seed;
    }
    if (!node->is_integer()) {
        section.fail_at(kKey, fmt::format("expected an integer or a \"0x...\" string, found {}",
                                          type_name(*node)));
    }
    return static_cast<uint64_t>(*section.integer(kKey, 0, INT64_MAX));
}

void read_flows(const Section& section, NodeConfig& config) {
    section.allow_only({"hash_seed", "conn_capacity", "idle_timeout_s", "closed_timeout_s"});
    config.flow_hash_seed = read_hash_seed(section);
    if (const auto v = section.integer("conn_capacity", 1, int64_t{1} << 24, "connections")) {
        config.conn_table_capacity = static_cast<uint32_t>(*v);
    }
    if (const auto v = section.integer("idle_timeout_s", 1, kDayS, "s")) {
        config.conn_idle_timeout_ms = static_cast<uint32_t>(*v * kSecondMs);
    }
    if (const auto v = section.integer("closed_timeout_s", 0, kDayS, "s")) {
        config.conn_closed_timeout_ms = static_cast<uint32_t>(*v * kSecondMs);
    }
    if (config.conn_closed_timeout_ms > config.conn_idle_timeout_ms) {
        section.fail_at(section.find("closed_timeout_s") ? "closed_timeout_s" : "idle_timeout_s",
                        fmt::format("closed_timeout_s ({} s) is longer than idle_timeout_s ({} s)",
                                    config.conn_closed_timeout_ms / kSecondMs,
                                    config.conn_idle_timeout_ms / kSecondMs));
    }
}

void read_region(const Section& section, NodeConfig& config) {
    section.allow_only({"dir", "cmd_dir", "cmd_owner", "service_capacity", "backend_capacity"});
    // "" (as absent): detect.
    for (const std::string_view key : {"dir", "cmd_dir"}) {
        const std::optional<std::string> dir = section.string(key);
        if (!dir || dir->empty()) continue;
        (key == "dir" ? config.region_dir : config.cmd_dir) = *read_path(section, key);
    }
    if (config.cmd_dir.empty()) config.cmd_dir = config.region_dir;
    if (std::optional<std::string> owner = section.string("cmd_owner")) {
        if (!valid_user_name(*owner)) {
            section.fail_at("cmd_owner", fmt::format("'{}' is not a user name", *owner));
        }
        config.cmd_file_owner = std::move(*owner);
    }
    if (const auto v =
            section.integer("service_capacity", 1, kGrantTableMaxServiceId, "services")) {
        config.service_capacity = static_cast<uint32_t>(*v);
    }
    if (const auto v = section.integer("backend_capacity", 0, kMaxBackendCapacity, "backends")) {
        config.backend_capacity = static_cast<uint32_t>(*v);
    }
}

void read_main(const Section& section, NodeConfig& config) {
    section.allow_only({"tick_us", "nice", "slice_us", "realtime_priority"});
    if (const auto v = section.integer("tick_us", 1, kMaxTickUs, "us")) {
        config.tick_us = static_cast<uint32_t>(*v);
    }
    if (const auto v = section.integer("nice", -20, 19)) config.main_nice = static_cast<int32_t>(*v);
    if (const auto v = section.integer("slice_us", 0, 100000, "us")) {
        if (*v != 0 && *v < 100) section.fail_at("slice_us", fmt::format("{} us: 0 (the kernel's default) or 100..100000", *v));
        config.main_slice_us = static_cast<uint32_t>(*v);
    }
    if (const auto v = section.integer("realtime_priority", 0, 99)) {
        if (*v != 0 && (config.main_nice != 0 || config.main_slice_us != 0))
            section.fail_at("realtime_priority",
                            fmt::format("{} with nice or slice_us: a real-time (SCHED_FIFO) thread has neither; "
                                        "set realtime_priority, or nice and slice_us",
                                        *v));
        config.main_realtime_priority = static_cast<uint32_t>(*v);
    }
}

NodeConfig read_node_config(const Section& root) {
    root.allow_only({"instance", "addresses", "port", "exception", "grants", "encap", "flows",
                     "region", "main"});
    NodeConfig config;
    config.instance = root.required_string("instance",
                                           "the instance name, e.g. instance = \"edge1\" "
                                           "(it names the shared region files)");
    if (!valid_instance_name(config.instance)) {
        root.fail_at("instance", fmt::format("'{}' is not an instance name: 1 to 32 characters of "
                                             "A-Z a-z 0-9 _ -",
                                             config.instance));
    }
    read_addresses(root, config);
    read_ports(root, config);
    read_exception(root.table("exception"), config);
    read_grants(root.table("grants"), config);
    read_encap(root.table("encap"), config);
    read_flows(root.table("flows"), config);
    read_region(root.table("region"), config);
    read_main(root.table("main"), config);
    return config;
}

// Closes a descriptor on every path out of load_node_config.
struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
};

}  // namespace

std::string ConfigError::to_string() const {
    std::string out = file;
    if (line > 0) out += fmt::format(":{}:{}", line, column);
    out += ": ";
    if (!key.empty()) out += key + ": ";
    out += message;
    return out;
}

std::variant<NodeConfig, ConfigError> parse_node_config(std::string_view text,
                                                        std::string_view file_name) {
    toml::table document;
    try {
        document = toml::parse(text, file_name);
    } catch (const toml::parse_error& error) {
        return make_error(file_name, "", error.source().begin,
                          fmt::format("TOML syntax: {}", error.description()));
    }
    try {
        // No position for a missing top-level key: line 1 would point at
        // whatever happens to be there.
        return read_node_config(Section(file_name, &document, "", toml::source_position{0, 0}));
    } catch (ConfigFailure& failure) {
        return std::move(failure.error);
    }
}

std::variant<NodeConfig, ConfigError> load_node_config(const std::string& path) {
    const auto file_error = [&](std::string message) {
        return make_error(path, "", toml::source_position{0, 0}, std::move(message));
    };
    const auto errno_text = [] { return std::system_category().message(errno); };
    // O_NONBLOCK: a FIFO in the path must not hang the start.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return file_error(fmt::format("cannot open the config file: {}", errno_text()));
    const FdCloser closer{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0) return file_error(fmt::format("cannot stat: {}", errno_text()));
    if (!S_ISREG(st.st_mode)) return file_error("not a regular file");
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        return file_error(
            fmt::format("group or others may write the config file, and whoever "
                        "writes it chooses whose grants open access: "
                        "chmod go-w {}",
                        path));
    }
    if (static_cast<uint64_t>(st.st_size) > kMaxConfigFileBytes) {
        return file_error(fmt::format("{} bytes is more than a config file may have ({})",
                                      st.st_size, kMaxConfigFileBytes));
    }
    std::string text(kMaxConfigFileBytes + 1, '\0');
    size_t size = 0;
    while (size < text.size()) {
        const ssize_t n = ::read(fd, text.data() + size, text.size() - size);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return file_error(fmt::format("cannot read: {}", errno_text()));
        if (n == 0) break;
        size += static_cast<size_t>(n);
    }
    if (size > kMaxConfigFileBytes) {
        return file_error(
            fmt::format("more than {} bytes: too large for a config file", kMaxConfigFileBytes));
    }
    text.resize(size);
    return parse_node_config(text, path);
}

std::string describe(const NodeConfig& config) {
    std::string out;
    const auto or_detect = [](const std::string& dir) {
        return dir.empty() ? std::string("detected") : dir;
    };
    out +=
        fmt::format("instance {}: state dir {}, cmd dir {} (cmd file owned by {}), {} services, "
                    "{} backend counter slots\n",
                    config.instance, or_detect(config.region_dir), or_detect(config.cmd_dir),
                    config.cmd_file_owner, config.service_capacity, config.backend_capacity);
    std::vector<std::string> addresses;
    for (const IpAddress& address : config.addresses) addresses.push_back(format_address(address));
    out += fmt::format("addresses {}\n", join(addresses));
    for (const PortConfig& port : config.ports) {
        std::string next_hop = port.next_hop_set ? format_mac(port.next_hop_mac) : "not set";
        if (port.resolves_next_hop()) {
            std::vector<std::string> resolved;
            if (port.next_hop.version != IpVersion::none)
                resolved.push_back(format_address(port.next_hop) + " by ARP");
            if (port.next_hop_v6.version != IpVersion::none)
                resolved.push_back(format_address(port.next_hop_v6) + " by ND");
            next_hop = join(resolved);
        }
        out += fmt::format(
            "port {}: {}, mac {}, next hop {}, mtu {}, rx queues {}, descriptors rx {} tx {}\n",
            port.name, port.device, port.mac_set ? format_mac(port.mac) : "the port's", next_hop, port.mtu,
            port.rx_queues == 0 ? std::string("one per worker (RSS), or one spread in software") : std::to_string(port.rx_queues),
            port.rx_descriptors, port.tx_descriptors);
    }
    if (config.exception_port.empty()) {
        out += "exception port: none\n";
    } else {
        out +=
            fmt::format("exception port {}: allows {}\n", config.exception_port,
                        config.exception_allow.empty() ? "nothing" : join(config.exception_allow));
    }
    out += fmt::format(
        "grants: capacity {} ({} slots each), issuers {}, mac key {}, skew {} ms, max duration "
        "{} s, horizon {} s, {} verifications per {} us tick\n",
        config.grant_capacity, config.grant_slots_per_grant, config.issuer_keys_file,
        config.mac_key_file, config.skew_ms, config.max_grant_duration_ms / kSecondMs,
        config.not_before_horizon_ms / kSecondMs, config.verify_per_tick, config.tick_us);
    out += fmt::format("encap: outer source {}, {}, ttl {}, gue port {}\n",
                       format_source_prefix(config.outer_source_v4),
                       config.has_outer_source_v6() ? format_source_prefix(config.outer_source_v6)
                                                    : std::string("no IPv6 (no IPv6 backends)"),
                       config.outer_ttl, config.default_gue_port);
    out += fmt::format("flows: hash seed {:#x}, {} connections, idle {} s, closed {} s\n",
                       config.flow_hash_seed, config.conn_table_capacity,
                       config.conn_idle_timeout_ms / kSecondMs,
                       config.conn_closed_timeout_ms / kSecondMs);
    out.pop_back();  // the caller ends the last line
    return out;
}

}  // namespace jitlb::lb
