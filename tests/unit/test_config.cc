// lb/config.h: the node configuration parser. Valid files give every field;
// each kind of mistake gives one error naming the key, the position and what
// was wrong; the example file users copy parses.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "config.h"

namespace {

using jitlb::IpAddress;
using jitlb::IpVersion;
using jitlb::MacAddress;
using jitlb::lb::ConfigError;
using jitlb::lb::NodeConfig;

// The smallest valid file: every required key, nothing else. Line numbers
// matter to the error table below.
constexpr std::string_view kMinimal = R"(instance = "edge1"
addresses = ["192.0.2.10"]

[[port]]
name = "wan"
device = "0000:01:00.0"

[grants]
issuer_keys = "/etc/jitlb/issuers.pub"

[encap]
outer_source_v4 = "10.255.0.0/16"
)";

NodeConfig parse_ok(std::string_view text) {
    auto result = jitlb::lb::parse_node_config(text, "test.toml");
    if (const auto* error = std::get_if<ConfigError>(&result)) FAIL(error->to_string());
    return std::get<NodeConfig>(std::move(result));
}

ConfigError parse_error(std::string_view text) {
    auto result = jitlb::lb::parse_node_config(text, "test.toml");
    REQUIRE(std::holds_alternative<ConfigError>(result));
    return std::get<ConfigError>(std::move(result));
}

IpAddress v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
    IpAddress address;
    address.version = IpVersion::v4;
    address.bytes[0] = a;
    address.bytes[1] = b;
    address.bytes[2] = c;
    address.bytes[3] = d;
    return address;
}

IpAddress v6(std::initializer_list<uint8_t> bytes) {
    IpAddress address;
    address.version = IpVersion::v6;
    std::copy(bytes.begin(), bytes.end(), address.bytes.begin());
    return address;
}

// kMinimal with `find` replaced by `replace` (find "" appends).
std::string edited(std::string_view find, std::string_view replace) {
    std::string text(kMinimal);
    if (find.empty()) return text + std::string(replace);
    const size_t at = text.find(find);
    REQUIRE(at != std::string::npos);
    text.replace(at, find.size(), replace);
    return text;
}

// A private temporary file, removed at the end of the test.
class TempFile {
  public:
    explicit TempFile(std::string_view content) {
        std::string pattern =
            (std::filesystem::temp_directory_path() / "jitlb-config-XXXXXX").string();
        const int fd = ::mkstemp(pattern.data());
        REQUIRE(fd >= 0);
        ::close(fd);
        path_ = pattern;
        std::ofstream out(path_, std::ios::binary);
        out << content;
        out.close();
        REQUIRE(out.good());
        chmod(0644);
    }
    ~TempFile() { std::filesystem::remove(path_); }
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;

    void chmod(mode_t mode) const { REQUIRE(::chmod(path_.c_str(), mode) == 0); }
    const std::string& path() const { return path_; }

  private:
    std::string path_;
};

// config/jitlb.example.toml. __FILE__ is relative to the build directory under
// meson ("../../tests/unit/test_config.cc"), so it is tried from the current
// directory (meson test) and from the build directory the binary sits in
// (<build>/tests/unit/test_config) when run by hand; JITLB_SOURCE_ROOT overrides.
std::filesystem::path example_config_path() {
    namespace fs = std::filesystem;
    const fs::path relative = fs::path(__FILE__).parent_path() / "../../config/jitlb.example.toml";
    std::vector<fs::path> candidates;
    if (const char* root = std::getenv("JITLB_SOURCE_ROOT")) {
        candidates.push_back(fs::path(root) / "config/jitlb.example.toml");
    }
    if (relative.is_absolute()) {
        candidates.push_back(relative);
    } else {
        candidates.push_back(fs::current_path() / relative);
        std::error_code error;
        const fs::path exe = fs::read_symlink("/proc/self/exe", error);
        if (!error) candidates.push_back(exe.parent_path().parent_path().parent_path() / relative);
    }
    for (const fs::path& candidate : candidates) {
        if (fs::exists(candidate)) return candidate;
    }
    std::string tried;
    for (const fs::path& candidate : candidates) tried += " " + candidate.string();
    FAIL("config/jitlb.example.toml not found (set JITLB_SOURCE_ROOT); tried" << tried);
    return {};
}

}  // namespace

TEST_CASE("a config with every key set fills every field", "[config]") {
    const NodeConfig c = parse_ok(R"(
instance = "edge-2_b"
addresses = ["198.51.100.7", "2001:db8::7"]

[[port]]
name = "wan"
device = "net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap"
mac = "02:00:00:00:00:01"
next_hop_mac = "02:AB:cd:00:00:FE"
mtu = 9000
rx_queues = 4
rx_descriptors = 4096
tx_descriptors = 512

[[port]]
name = "lan"
device = "0000:01:00.1"

[exception]
port = "net_tap0,iface=jitlb0"
allow = ["ssh", "arp", "bgp"]

[grants]
issuer_keys = "/etc/jitlb/issuers.pub"
mac_key = "/var/lib/jitlb/edge.mackey"
capacity = 2000
slots_per_grant = 8
skew_ms = 500
max_duration_s = 3600
horizon_s = 600
verify_per_tick = 16

[encap]
outer_source_v4 = "10.1.0.0/24"
outer_source_v6 = "fd00:1::/48"
ttl = 32
gue_port = 7000

[flows]
hash_seed = "0xFEDCBA9876543210"
conn_capacity = 1000
idle_timeout_s = 120
closed_timeout_s = 5

[region]
dir = "/tmp/jitlb-test/state"
cmd_dir = "/tmp/jitlb-test/cmd"
cmd_owner = "jitd-test"
service_capacity = 64
backend_capacity = 256

[main]
tick_us = 50
nice = -5
slice_us = 250
)");
    CHECK(c.instance == "edge-2_b");
    CHECK(c.addresses ==
          std::vector<IpAddress>{v4(198, 51, 100, 7),
                                 v6({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7})});

    REQUIRE(c.ports.size() == 2);
    const auto& wan = c.ports[0];
    CHECK(wan.name == "wan");
    CHECK(wan.device == "net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap");
    CHECK(wan.mac_set);
    CHECK(wan.mac == MacAddress{0x02, 0, 0, 0, 0, 0x01});
    CHECK(wan.next_hop_set);
    CHECK(wan.next_hop_mac == MacAddress{0x02, 0xab, 0xcd, 0, 0, 0xfe});
    CHECK(wan.mtu == 9000);
    CHECK(wan.rx_queues == 4);
    CHECK(wan.rx_descriptors == 4096);
    CHECK(wan.tx_descriptors == 512);
    CHECK(c.ports[1].name == "lan");
    CHECK(c.ports[1].device == "0000:01:00.1");

    CHECK(c.exception_port == "net_tap0,iface=jitlb0");
    CHECK(c.exception_allow == std::vector<std::string>{"ssh", "arp", "bgp"});

    CHECK(c.issuer_keys_file == "/etc/jitlb/issuers.pub");
    CHECK(c.mac_key_file == "/var/lib/jitlb/edge.mackey");
    CHECK(c.grant_capacity == 2000);
    CHECK(c.grant_slots_per_grant == 8);
    CHECK(c.skew_ms == 500);
    CHECK(c.max_grant_duration_ms == 3'600'000);
    CHECK(c.not_before_horizon_ms == 600'000);
    CHECK(c.verify_per_tick == 16);
    const jitlb::VerifyPolicy policy = c.verify_policy();
    CHECK(policy.skew_ms == 500);
    CHECK(policy.max_duration_ms == 3'600'000);
    CHECK(policy.horizon_ms == 600'000);

    CHECK(c.outer_source_v4.base == v4(10, 1, 0, 0));
    CHECK(c.outer_source_v4.prefix_len == 24);
    REQUIRE(c.has_outer_source_v6());
    CHECK(c.outer_source_v6.base == v6({0xfd, 0x00, 0x00, 0x01}));
    CHECK(c.outer_source_v6.prefix_len == 48);
    CHECK(c.outer_ttl == 32);
    CHECK(c.default_gue_port == 7000);

    CHECK(c.flow_hash_seed == 0xFEDCBA9876543210ULL);
    CHECK(c.conn_table_capacity == 1000);
    CHECK(c.conn_idle_timeout_ms == 120'000);
    CHECK(c.conn_closed_timeout_ms == 5'000);

    CHECK(c.region_dir == "/tmp/jitlb-test/state");
    CHECK(c.cmd_dir == "/tmp/jitlb-test/cmd");
    CHECK(c.cmd_file_owner == "jitd-test");
    CHECK(c.service_capacity == 64);
    CHECK(c.backend_capacity == 256);
    CHECK(c.tick_us == 50);
    CHECK(c.main_nice == -5);
    CHECK(c.main_slice_us == 250);
}

TEST_CASE("a real-time priority for the main lcore is read, and nice and slice_us may be left at 0 beside it", "[config]") {
    const NodeConfig c = parse_ok(std::string(kMinimal) + "\n[main]\nrealtime_priority = 1\nnice = 0\nslice_us = 0\n");
    CHECK(c.main_realtime_priority == 1);
    CHECK(c.main_nice == 0);
    CHECK(c.main_slice_us == 0);
    CHECK(parse_ok(std::string(kMinimal) + "\n[main]\nrealtime_priority = 99\n").main_realtime_priority == 99);
}

TEST_CASE("optional keys take their documented defaults", "[config]") {
    const NodeConfig c = parse_ok(kMinimal);
    const NodeConfig defaults;
    CHECK(c.instance == "edge1");
    CHECK(c.addresses == std::vector<IpAddress>{v4(192, 0, 2, 10)});
    REQUIRE(c.ports.size() == 1);
    const auto& port = c.ports[0];
    CHECK_FALSE(port.mac_set);
    CHECK_FALSE(port.next_hop_set);
    CHECK(port.mtu == 1500);
    CHECK(port.rx_queues == 0);
    CHECK(port.rx_descriptors == 1024);
    CHECK(port.tx_descriptors == 1024);

    CHECK(c.exception_port.empty());
    CHECK(c.exception_allow == std::vector<std::string>{"arp", "nd", "icmp"});
    CHECK(c.mac_key_file == "/etc/jitlb/edge1.mackey");
    CHECK(c.grant_capacity == 1'048'576);
    CHECK(c.grant_slots_per_grant == 4);
    // The grant policy's defaults are grant.h's VerifyPolicy's.
    CHECK(c.skew_ms == jitlb::VerifyPolicy{}.skew_ms);
    CHECK(c.max_grant_duration_ms == jitlb::VerifyPolicy{}.max_duration_ms);
    CHECK(c.not_before_horizon_ms == jitlb::VerifyPolicy{}.horizon_ms);
    CHECK(c.skew_ms == 2'000);
    CHECK(c.max_grant_duration_ms == 86'400'000);
    CHECK(c.verify_per_tick == 2);
    CHECK(c.tick_us == 100);
    CHECK(c.main_nice == 0);
    CHECK(c.main_slice_us == 0);
    CHECK(c.main_realtime_priority == 0);

    CHECK_FALSE(c.has_outer_source_v6());
    CHECK(c.outer_ttl == 64);
    CHECK(c.default_gue_port == 6080);
    CHECK(c.flow_hash_seed == 0);
    CHECK(c.conn_table_capacity == 65536);
    CHECK(c.conn_idle_timeout_ms == 300'000);
    CHECK(c.conn_closed_timeout_ms == 10'000);
    CHECK(c.region_dir.empty());
    CHECK(c.cmd_dir.empty());
    CHECK(c.cmd_file_owner == "jitd");
    CHECK(c.service_capacity == 1024);
    CHECK(c.service_capacity == defaults.service_capacity);
    CHECK(c.backend_capacity == 4096);
}

TEST_CASE("empty strings mean 'none' or 'detect' where the example file writes them", "[config]") {
    const NodeConfig c = parse_ok(edited("", R"(
[exception]
port = ""
allow = []

[region]
dir = ""
cmd_dir = ""
)"));
    CHECK_FALSE(parse_ok(edited("", "outer_source_v6 = \"\"\n")).has_outer_source_v6());
    CHECK(c.exception_port.empty());
    CHECK(c.exception_allow.empty());
    CHECK(c.region_dir.empty());
    CHECK(c.cmd_dir.empty());
}

TEST_CASE("with only the region dir set, the cmd file is looked for there too", "[config]") {
    const NodeConfig c = parse_ok(edited("", "\n[region]\ndir = \"/tmp/jitlb-test\"\n"));
    CHECK(c.region_dir == "/tmp/jitlb-test");
    CHECK(c.cmd_dir == "/tmp/jitlb-test");
    const NodeConfig only_cmd = parse_ok(edited("", "\n[region]\ncmd_dir = \"/tmp/jitd\"\n"));
    CHECK(only_cmd.region_dir.empty());
    CHECK(only_cmd.cmd_dir == "/tmp/jitd");
}

TEST_CASE("the hash seed takes the whole 64-bit range", "[config]") {
    const auto seed = [](std::string_view value) {
        return parse_ok(edited("", "\n[flows]\nhash_seed = " + std::string(value) + "\n"))
            .flow_hash_seed;
    };
    CHECK(seed("0") == 0);
    CHECK(seed("0x7fffffffffffffff") == 0x7fffffffffffffffULL);
    CHECK(seed("\"0xffffffffffffffff\"") == ~0ULL);
    CHECK(seed("\"0x1\"") == 1);
}

TEST_CASE("the example config file parses", "[config]") {
    const std::filesystem::path path = example_config_path();
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in);
    std::ostringstream text;
    text << in.rdbuf();
    // parse_node_config rather than load_node_config: a checkout made with
    // umask 002 leaves the file group-writable, which load refuses.
    const NodeConfig c = parse_ok(text.str());
    CHECK(c.instance == "edge1");
    CHECK(c.addresses.size() == 2);
    REQUIRE(c.ports.size() == 1);
    CHECK(c.ports[0].name == "wan");
    CHECK(c.ports[0].next_hop_set);
    CHECK(c.exception_port == "net_tap0,iface=jitlb0");
    CHECK(c.issuer_keys_file == "/etc/jitlb/issuers.pub");
    CHECK(c.has_outer_source_v6());
    // The example shows the defaults: it must not change them.
    const NodeConfig minimal = parse_ok(kMinimal);
    CHECK(c.grant_capacity == minimal.grant_capacity);
    CHECK(c.skew_ms == minimal.skew_ms);
    CHECK(c.max_grant_duration_ms == minimal.max_grant_duration_ms);
    CHECK(c.not_before_horizon_ms == minimal.not_before_horizon_ms);
    CHECK(c.conn_idle_timeout_ms == minimal.conn_idle_timeout_ms);
    CHECK(c.tick_us == minimal.tick_us);
    CHECK(c.ports[0].mtu == minimal.ports[0].mtu);
}

TEST_CASE("each kind of mistake is one error naming the key and what was wrong", "[config]") {
    struct Row {
        const char* what;
        std::string text;
        std::string key;
        std::string fragment;  // of the message
        int line = 0;          // checked when non-zero
    };
    const std::vector<Row> rows = {
        {"unknown top-level key", edited("addresses", "listen = 1\naddresses"), "listen",
         "unknown key", 2},
        {"of two unknown keys, the first in the file",
         edited("addresses", "zeta = 1\nalpha = 2\naddresses"), "zeta", "unknown key", 2},
        {"misspelt key gets a suggestion", edited("issuer_keys", "skew = 5\nissuer_keys"),
         "grants.skew", "did you mean 'skew_ms'?", 9},
        {"unknown key in a port", edited("name = \"wan\"", "name = \"wan\"\nspeed = 10"),
         "port[0].speed", "unknown key", 6},
        {"unknown table", edited("", "[mian]\ntick_us = 5\n"), "mian", "did you mean 'main'?"},
        {"string where an integer belongs",
         edited("",
                "[[port]]\nname = \"b\"\ndevice = "
                "\"0000:02:00.0\"\nmtu = \"1500\"\n"),
         "port[1].mtu", "expected an integer, found a string"},
        {"float where an integer belongs", edited("issuer_keys", "capacity = 1.5\nissuer_keys"),
         "grants.capacity", "expected an integer, found a float"},
        {"integer where a string belongs", edited("\"edge1\"", "1"), "instance",
         "expected a string, found an integer"},
        {"mtu out of range",
         edited("device = \"0000:01:00.0\"", "device = \"0000:01:00.0\"\nmtu = 99999"),
         "port[0].mtu", "99999 is out of range (576..9216)", 7},
        {"malformed MAC", edited("name = \"wan\"", "name = \"wan\"\nmac = \"02:00:00:00:00\""),
         "port[0].mac", "is not a MAC address"},
        {"multicast next-hop MAC",
         edited("name = \"wan\"", "name = \"wan\"\nnext_hop_mac = \"01:00:5e:00:00:01\""),
         "port[0].next_hop_mac", "multicast"},
        {"IPv6 address as the IPv4 next hop",
         edited("name = \"wan\"", "name = \"wan\"\nnext_hop = \"2001:db8::1\""), "port[0].next_hop",
         "an IPv6 one goes in next_hop_v6"},
        {"IPv4 address as the IPv6 next hop",
         edited("name = \"wan\"", "name = \"wan\"\nnext_hop_v6 = \"192.0.2.1\""), "port[0].next_hop_v6",
         "an IPv4 one goes in next_hop"},
        {"next hop with a prefix length",
         edited("name = \"wan\"", "name = \"wan\"\nnext_hop = \"192.0.2.1/24\""), "port[0].next_hop",
         "without a prefix length"},
        {"next hop that is not an address",
         edited("name = \"wan\"", "name = \"wan\"\nnext_hop = \"router1\""), "port[0].next_hop", "router1"},
        {"multicast next hop", edited("name = \"wan\"", "name = \"wan\"\nnext_hop = \"224.0.0.1\""),
         "port[0].next_hop", "not a unicast address"},
        {"broadcast next hop", edited("name = \"wan\"", "name = \"wan\"\nnext_hop = \"255.255.255.255\""),
         "port[0].next_hop", "not a unicast address"},
        {"unspecified IPv6 next hop", edited("name = \"wan\"", "name = \"wan\"\nnext_hop_v6 = \"::\""),
         "port[0].next_hop_v6", "not a unicast address"},
        {"the node's own address as next hop",
         edited("name = \"wan\"", "name = \"wan\"\nnext_hop = \"192.0.2.10\""), "port[0].next_hop",
         "one of the node's own addresses"},
        {"an IPv6 next hop without an IPv6 node address to ask from",
         edited("name = \"wan\"", "name = \"wan\"\nnext_hop_v6 = \"2001:db8::1\""), "port[0].next_hop_v6",
         "needs an IPv6 node address"},
        {"a static next-hop MAC and a next hop to resolve",
         edited("name = \"wan\"",
                "name = \"wan\"\nnext_hop_mac = \"02:00:00:00:00:fe\"\nnext_hop = \"192.0.2.1\""),
         "port[0].next_hop", "not both"},
        {"all-zero MAC", edited("name = \"wan\"", "name = \"wan\"\nmac = \"00:00:00:00:00:00\""),
         "port[0].mac", "not a usable address"},
        {"host bits set in the outer source prefix", edited("10.255.0.0/16", "10.255.0.1/16"),
         "encap.outer_source_v4", "bits set beyond the prefix length", 12},
        {"IPv6 prefix for the IPv4 outer source", edited("10.255.0.0/16", "fd00::/64"),
         "encap.outer_source_v4", "is an IPv6 prefix"},
        {"outer source prefix too short", edited("10.255.0.0/16", "0.0.0.0/0"),
         "encap.outer_source_v4", "shorter than /8"},
        {"duplicate port names",
         edited("", "[[port]]\nname = \"wan\"\ndevice = \"0000:01:00.1\"\n"), "port[1].name",
         "'wan' is already the name of port[0]"},
        {"two ports on one device",
         edited("",
                "[[port]]\nname = \"lan\"\ndevice = "
                "\"0000:01:00.0,foo=1\"\n"),
         "port[1].device", "already port[0]"},
        {"no ports", edited("[[port]]\nname = \"wan\"\ndevice = \"0000:01:00.0\"\n", ""), "port",
         "missing"},
        {"port as a plain table", edited("[[port]]", "[port]"), "port",
         "expected an array of tables"},
        {"device that is neither PCI nor a vdev", edited("0000:01:00.0", "eth0"), "port[0].device",
         "neither a PCI address"},
        {"descriptors not a power of two",
         edited("name = \"wan\"", "name = \"wan\"\nrx_descriptors = 1000"),
         "port[0].rx_descriptors", "not a power of two"},
        {"bad instance name", edited("\"edge1\"", "\"edge/1\""), "instance",
         "is not an instance name"},
        {"missing instance", edited("instance = \"edge1\"\n", ""), "instance", "missing"},
        {"bad address", edited("192.0.2.10", "192.0.2.300"), "addresses[0]", "not an IPv4 address",
         2},
        {"address with a prefix length", edited("192.0.2.10", "192.0.2.0/24"), "addresses[0]",
         "without a prefix length"},
        {"address listed twice", edited("\"192.0.2.10\"", "\"192.0.2.10\", \"192.0.2.10\""),
         "addresses[1]", "listed twice"},
        {"no addresses", edited("[\"192.0.2.10\"]", "[]"), "addresses", "is empty"},
        {"negative skew", edited("issuer_keys", "skew_ms = -1\nissuer_keys"), "grants.skew_ms",
         "-1 is out of range"},
        {"tick_us above 100", edited("", "[main]\ntick_us = 101\n"), "main.tick_us",
         "101 is out of range (1..100 us)"},
        {"nice below -20", edited("", "[main]\nnice = -21\n"), "main.nice", "-21 is out of range (-20..19)"},
        {"backend_capacity above 65536", edited("", "[region]\nbackend_capacity = 65537\n"),
         "region.backend_capacity", "65537 is out of range (0..65536 backends)"},
        {"slice_us between 0 and 100", edited("", "[main]\nslice_us = 50\n"), "main.slice_us",
         "50 us: 0 (the kernel's default) or 100..100000"},
        {"realtime_priority above 99", edited("", "[main]\nrealtime_priority = 100\n"), "main.realtime_priority",
         "100 is out of range (0..99)"},
        {"realtime_priority with nice", edited("", "[main]\nnice = -5\nrealtime_priority = 1\n"),
         "main.realtime_priority", "a real-time (SCHED_FIFO) thread has neither"},
        {"realtime_priority with slice_us", edited("", "[main]\nslice_us = 100\nrealtime_priority = 1\n"),
         "main.realtime_priority", "a real-time (SCHED_FIFO) thread has neither"},
        {"slots per grant not 2, 4 or 8", edited("issuer_keys", "slots_per_grant = 3\nissuer_keys"),
         "grants.slots_per_grant", "is not 2, 4 or 8"},
        {"missing issuer keys", edited("issuer_keys = \"/etc/jitlb/issuers.pub\"\n", ""),
         "grants.issuer_keys", "missing", 8},
        {"relative issuer keys path", edited("/etc/jitlb/issuers.pub", "issuers.pub"),
         "grants.issuer_keys", "not an absolute path"},
        {"missing outer source", edited("outer_source_v4 = \"10.255.0.0/16\"\n", ""),
         "encap.outer_source_v4", "missing"},
        {"unknown exception traffic", edited("", "[exception]\nallow = [\"arp\", \"http\"]\n"),
         "exception.allow[1]", "not a kind of exception traffic"},
        {"exception port on a data port's device",
         edited("", "[exception]\nport = \"0000:01:00.0\"\n"), "exception.port", "already port[0]"},
        {"closed timeout longer than idle",
         edited("", "[flows]\nidle_timeout_s = 5\nclosed_timeout_s = 10\n"),
         "flows.closed_timeout_s", "longer than idle_timeout_s"},
        {"hash seed string that is not hex", edited("", "[flows]\nhash_seed = \"0xZZ\"\n"),
         "flows.hash_seed", "not \"0x\" and 1 to 16 hex digits"},
        {"control character in a string", edited("\"wan\"", "\"w\\u0001n\""), "port[0].name",
         "control character 0x01"},
        {"bad cmd owner", edited("", "[region]\ncmd_owner = \"1root\"\n"), "region.cmd_owner",
         "not a user name"},
        {"relative region dir", edited("", "[region]\ndir = \"state\"\n"), "region.dir",
         "not an absolute path"},
        {"section that is not a table", edited("addresses", "main = 5\naddresses"), "main",
         "expected a table"},
        {"TOML syntax error", edited("name = \"wan\"", "name = \"wan"), "", "TOML syntax", 5},
        {"key defined twice", edited("device", "name = \"x\"\ndevice"), "", "TOML syntax", 6},
    };
    REQUIRE(rows.size() >= 20);
    for (const Row& row : rows) {
        INFO(row.what << "\n--- text:\n" << row.text);
        const ConfigError error = parse_error(row.text);
        INFO("error: " << error.to_string());
        CHECK(error.file == "test.toml");
        CHECK(error.key == row.key);
        CHECK(error.message.find(row.fragment) != std::string::npos);
        if (row.line != 0) CHECK(error.line == row.line);
        if (!row.key.empty() && row.fragment != "missing") CHECK(error.line > 0);
    }
}

TEST_CASE("an error prints as FILE:LINE:COLUMN: KEY: MESSAGE", "[config]") {
    const ConfigError error = parse_error(
        edited("device = \"0000:01:00.0\"", "device = \"0000:01:00.0\"\nmtu    = 99999"));
    CHECK(error.line == 7);
    CHECK(error.column == 10);
    CHECK(error.to_string() == "test.toml:7:10: port[0].mtu: 99999 is out of range (576..9216)");

    ConfigError no_position;
    no_position.file = "jitlb.toml";
    no_position.message = "not a regular file";
    CHECK(no_position.to_string() == "jitlb.toml: not a regular file");
}

TEST_CASE("load_node_config reads a file and refuses unsafe or unreadable ones", "[config]") {
    TempFile file(kMinimal);
    {
        auto result = jitlb::lb::load_node_config(file.path());
        if (const auto* error = std::get_if<ConfigError>(&result)) FAIL(error->to_string());
        CHECK(std::get<NodeConfig>(result).instance == "edge1");
    }
    // Whoever can write the config chooses the issuer keys.
    file.chmod(0664);
    {
        auto result = jitlb::lb::load_node_config(file.path());
        REQUIRE(std::holds_alternative<ConfigError>(result));
        const ConfigError& error = std::get<ConfigError>(result);
        CHECK(error.file == file.path());
        CHECK(error.message.find("chmod go-w") != std::string::npos);
    }
    {
        auto result = jitlb::lb::load_node_config(file.path() + ".absent");
        REQUIRE(std::holds_alternative<ConfigError>(result));
        CHECK(std::get<ConfigError>(result).message.find("No such file") != std::string::npos);
    }
    {
        auto result = jitlb::lb::load_node_config(std::filesystem::temp_directory_path());
        REQUIRE(std::holds_alternative<ConfigError>(result));
        CHECK(std::get<ConfigError>(result).message == "not a regular file");
    }
    {
        TempFile big(std::string(jitlb::lb::kMaxConfigFileBytes + 1, '#'));
        auto result = jitlb::lb::load_node_config(big.path());
        REQUIRE(std::holds_alternative<ConfigError>(result));
        CHECK(std::get<ConfigError>(result).message.find("more than") != std::string::npos);
    }
    {
        // Errors in a loaded file carry its path and positions.
        TempFile bad(edited("192.0.2.10", "192.0.2.300"));
        auto result = jitlb::lb::load_node_config(bad.path());
        REQUIRE(std::holds_alternative<ConfigError>(result));
        CHECK(std::get<ConfigError>(result).to_string().rfind(bad.path() + ":2:", 0) == 0);
    }
}

TEST_CASE("a port's next hop may be given by address, IPv4 for ARP and IPv6 for neighbour discovery",
          "[config][next_hop]") {
    const NodeConfig c = parse_ok(edited("addresses = [\"192.0.2.10\"]", "addresses = [\"192.0.2.10\", \"2001:db8::10\"]") +
                                  R"(
[[port]]
name = "lan"
device = "0000:01:00.1"
next_hop = "192.0.2.1"
next_hop_v6 = "fe80::1"
)");
    REQUIRE(c.ports.size() == 2);
    CHECK_FALSE(c.ports[0].resolves_next_hop());
    const jitlb::lb::PortConfig& lan = c.ports[1];
    CHECK(lan.resolves_next_hop());
    CHECK_FALSE(lan.next_hop_set);
    CHECK(lan.next_hop.version == IpVersion::v4);
    CHECK(lan.next_hop.bytes[0] == 192);
    CHECK(lan.next_hop.bytes[3] == 1);
    CHECK(lan.next_hop_v6.version == IpVersion::v6);
    CHECK(lan.next_hop_v6.bytes[0] == 0xfe);
    CHECK(lan.next_hop_v6.bytes[15] == 1);
    const std::string text = jitlb::lb::describe(c);
    INFO(text);
    CHECK(text.find("next hop 192.0.2.1 by ARP, fe80::1 by ND") != std::string::npos);

    // One family alone is enough.
    const NodeConfig v4 = parse_ok(edited("name = \"wan\"", "name = \"wan\"\nnext_hop = \"192.0.2.1\""));
    CHECK(v4.ports[0].resolves_next_hop());
    CHECK(v4.ports[0].next_hop_v6.version == IpVersion::none);
}

TEST_CASE("describe names the settings that matter at start", "[config]") {
    const NodeConfig c = parse_ok(edited("", R"(
[exception]
port = "net_tap0,iface=jitlb0"

[flows]
hash_seed = 0x2a
)"));
    const std::string text = jitlb::lb::describe(c);
    INFO(text);
    CHECK(text.find("instance edge1") != std::string::npos);
    CHECK(text.find("addresses 192.0.2.10") != std::string::npos);
    CHECK(text.find("port wan: 0000:01:00.0") != std::string::npos);
    CHECK(text.find("exception port net_tap0,iface=jitlb0: allows arp, nd, icmp") !=
          std::string::npos);
    CHECK(text.find("outer source 10.255.0.0/16, no IPv6") != std::string::npos);
    CHECK(text.find("hash seed 0x2a") != std::string::npos);
    CHECK(text.find("/etc/jitlb/edge1.mackey") != std::string::npos);
    CHECK(text.back() != '\n');  // the caller ends the last line
}

TEST_CASE("an empty key (`\"\" = 1`, valid TOML) is an unknown key that the error names as \"\"", "[config]") {
    // Found by fuzz_config (corpus regression_empty_key.toml): the error had an
    // empty key and read like a syntax error.
    const ConfigError top = parse_error("\"\" = \"\"\n");
    CHECK(top.key == "\"\"");
    CHECK_THAT(top.to_string(), Catch::Contains("\"\": unknown key"));
}
