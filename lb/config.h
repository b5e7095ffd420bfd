// The data plane's node configuration: what jitlb reads from its TOML file at
// start (instance, own addresses, ports, exception path, grant policy,
// encapsulation, flow table and shared-region settings). Parsing is strict so
// that a mistake stops jitlb at start instead of changing what it forwards:
// every value is type- and range-checked, an unknown key is an error (a typo
// must not fall back to a default), and the result is either a complete
// NodeConfig or one ConfigError naming the file, line, column and key.
// config/jitlb.example.toml documents every key. No DPDK: unit tests build it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "encap.h"
#include "flow.h"
#include "grant.h"
#include "grant_table.h"

namespace jitlb::lb {

// Traffic a port may hand to the exception port (the kernel's TAP interface):
// arp, nd (ICMPv6 neighbour discovery), icmp (v4 and v6 echo and errors
// addressed to the node), ssh (22/tcp) and bgp (179/tcp) to the node's addresses.
inline constexpr std::array<std::string_view, 5> kExceptionTrafficNames = {"arp", "nd", "icmp",
                                                                           "ssh", "bgp"};

// Limits the parser enforces; the example file states them too.
inline constexpr uint32_t kMinPortMtu = 576;
inline constexpr uint32_t kMaxPortMtu = 9216;
inline constexpr uint16_t kMinPortDescriptors = 64;
inline constexpr uint16_t kMaxPortDescriptors = 32768;  // a power of two, as DPDK's rings
inline constexpr uint16_t kMaxPortRxQueues = 128;
inline constexpr uint32_t kMaxTickUs = 100;
inline constexpr size_t kMaxConfigFileBytes = 1 << 20;

// One DPDK port that carries client and backend traffic ([[port]]).
struct PortConfig {
    std::string name;  // unique; 1..16 of [A-Za-z0-9_-]: "wan", "lan"
    // A PCI address ("0000:01:00.0") or a virtual device with its arguments
    // ("net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap", "net_af_packet0,iface=veth1").
    std::string device;
    MacAddress mac{};  // when mac_set, overrides the port's own MAC
    bool mac_set = false;
    MacAddress next_hop_mac{};  // when next_hop_set, the router encapsulated packets go to
    bool next_hop_set = false;
    // Or the router's addresses, its MAC resolved by ARP (next_hop, IPv4) and
    // neighbour discovery (next_hop_v6) from the main lcore; version none when
    // absent. Either or both, never with next_hop_mac. With one, it serves
    // both outer families; with both, each its own.
    IpAddress next_hop{};
    IpAddress next_hop_v6{};
    bool resolves_next_hop() const noexcept {
        return next_hop.version != IpVersion::none || next_hop_v6.version != IpVersion::none;
    }
    uint32_t mtu = 1500;             // kMinPortMtu..kMaxPortMtu
    uint16_t rx_queues = 0;          // 0: one per worker
    uint16_t rx_descriptors = 1024;  // powers of two, kMinPortDescriptors..kMaxPortDescriptors
    uint16_t tx_descriptors = 1024;
};

struct NodeConfig {
    // Names the shared region files (jitlb-<instance>.state, .cmd):
    // valid_instance_name() of shared_file.h.
    std::string instance;
    // Where the region files live (absolute when set). Both "" = detect_region_dirs():
    // hugetlbfs' /dev/hugepages/jitlb and /dev/hugepages/jitd, else /dev/shm.
    // With region_dir set and cmd_dir not, cmd_dir is region_dir (tests use one
    // temporary directory).
    std::string region_dir;               // where jitlb creates its state file
    std::string cmd_dir;                  // where jitd creates the command file jitlb reads
    std::string cmd_file_owner = "jitd";  // the user that must own the cmd file
    uint32_t service_capacity = 1024;     // services in the state file, 1..65535
    uint32_t backend_capacity = 4096;     // per-backend counter slots, 0..65536 (0: none)

    std::vector<IpAddress> addresses;  // the node's own addresses, at least one, unique
    std::vector<PortConfig> ports;     // at least one
    // "" = no exception port; else a device spec such as "net_tap0,iface=jitlb0".
    std::string exception_port;
    // Names from kExceptionTrafficNames, each at most once, in the file's order.
    std::vector<std::string> exception_allow = {"arp", "nd", "icmp"};

    // Grants. Paths are absolute (jitlb may start from any directory).
    std::string issuer_keys_file;  // required: public key file (issuer_keys.h format)
    // The grant table's MAC key (32 bytes, readable by jitlb only); default
    // /etc/jitlb/<instance>.mackey.
    std::string mac_key_file;
    uint64_t grant_capacity = kGrantTableDefaultCapacity;              // 1..kGrantTableMaxCapacity
    uint32_t grant_slots_per_grant = kGrantTableDefaultSlotsPerGrant;  // 2, 4 or 8
    // The grant policy (grant.h VerifyPolicy; defaults are its defaults).
    int64_t skew_ms = VerifyPolicy{}.skew_ms;                        // 0..1 day
    int64_t max_grant_duration_ms = VerifyPolicy{}.max_duration_ms;  // 1 s..366 days
    int64_t not_before_horizon_ms = VerifyPolicy{}.horizon_ms;       // 0..366 days
    uint32_t verify_per_tick = 2;  // Ed25519 verifications per main-lcore tick (~50 us each), 1..4096
    uint32_t tick_us = 100;         // main-lcore tick, 1..kMaxTickUs
    // The main lcore's scheduling (it shares a core and sleeps between ticks):
    // a nice value and a slice, or a real-time priority (SCHED_FIFO), so that
    // it can run soon after it wakes even beside a busy thread; off by default
    // (docs/dataplane.md, "Threads"). A real-time priority excludes the other two.
    int32_t main_nice = 0;                // -20..19
    uint32_t main_slice_us = 0;           // 0 (the kernel's default) or 100..100000
    uint32_t main_realtime_priority = 0;  // 0 (off) or 1..99: SCHED_FIFO at that priority

    // Encapsulation towards backends (encap.h).
    SourcePrefix outer_source_v4;  // required; /8../32, host bits zero
    // Optional (/16../128): base.version == IpVersion::none when absent, and
    // then IPv6 backends cannot be reached.
    SourcePrefix outer_source_v6{.base = {}, .prefix_len = 0};
    uint8_t outer_ttl = 64;            // 1..255
    uint16_t default_gue_port = 6080;  // 1..65535

    // Flows.
    uint64_t flow_hash_seed = 0;               // the same on every node behind one ECMP group
    uint32_t conn_table_capacity = 65536;      // 1..16M
    uint32_t conn_idle_timeout_ms = 300'000;   // 1 s..1 day
    uint32_t conn_closed_timeout_ms = 10'000;  // 0..idle timeout

    VerifyPolicy verify_policy() const noexcept {
        return {.skew_ms = skew_ms,
                .horizon_ms = not_before_horizon_ms,
                .max_duration_ms = max_grant_duration_ms};
    }
    bool has_outer_source_v6() const noexcept {
        return outer_source_v6.base.version == IpVersion::v6;
    }
};

struct ConfigError {
    std::string file;     // as given to parse_node_config / load_node_config
    std::string key;      // "port[0].mtu"; "" for a syntax or file error
    std::string message;  // what was wrong, with the value, and what to do
    // 1-based, of the value (or of its table when the key is missing); 0 when
    // there is no position (a missing top-level key, a file error).
    int line = 0;
    int column = 0;
    // "jitlb.toml:12:5: port[0].mtu: 99999 is out of range (576..9216)".
    std::string to_string() const;
};

// Parses TOML text; `file_name` only names the text in errors. Pure: reads
// no file, and paths in the config are not opened.
std::variant<NodeConfig, ConfigError> parse_node_config(std::string_view text,
                                                        std::string_view file_name);
// Reads and parses `path`: a regular file of at most kMaxConfigFileBytes that
// group and others cannot write (whoever can write it chooses the issuer keys).
std::variant<NodeConfig, ConfigError> load_node_config(const std::string& path);

// A few lines for the start-up log, one setting group per line.
std::string describe(const NodeConfig& config);

}  // namespace jitlb::lb
