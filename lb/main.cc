// jitlb: the DPDK data plane. A straight line of checked set-up calls (EAL,
// config, state file, ports), then one main lcore that runs the control loop
// on a short tick and sleeps between ticks, and worker lcores that poll their
// rx queues and run the pipeline (lb/pipeline.h) on each burst.
//
//   jitlb [EAL options] -- --config jitlb.toml [--exit-when-idle MS]
//                          [--clock-shift-ms MS] [--stats-json PATH]
#include <arpa/inet.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>
#include <rte_telemetry.h>
#include <rte_ring_elem.h>

#include <CLI/CLI.hpp>
#include <sodium.h>
#include <fmt/format.h>

#include "config.h"
#include "control_loop.h"
#include "counters.h"
#include "next_hop.h"
#include "pipeline.h"
#include "service_table.h"
#include "worker.h"
#include "shared_file.h"
#include "shared_layout.h"

using namespace jitlb;
using namespace jitlb::lb;

namespace {

constexpr uint32_t kMbufsPerPort = 8191;
constexpr uint32_t kMbufCache = 256;
constexpr uint32_t kExceptionRingSize = 1024;
// Software RSS: each worker's ring of frames handed over by a spread queue's
// owner (64 bursts: a receiver that falls behind drops, counted, at the owner).
constexpr uint32_t kHandoffRingSize = 2048;
// The spread hash's seed differs from Maglev's, so that worker choice and
// backend choice are independent.
constexpr uint64_t kSoftwareRssSeedTweak = 0x5f3759df5f3759df;
constexpr uint32_t kResolverRingSize = 256;  // replies to the node, per worker: few
constexpr uint16_t kMaxWorkers = 64;

std::atomic<bool> g_stop{false};
std::atomic<bool> g_reload{false};

void on_signal(int sig) {
    if (sig == SIGHUP) g_reload.store(true, std::memory_order_relaxed);
    else g_stop.store(true, std::memory_order_relaxed);
}

[[noreturn]] void die(const std::string& what) {
    std::fprintf(stderr, "jitlb: %s\n", what.c_str());
    std::exit(1);
}

[[noreturn]] void die_rte(const std::string& what) {
    die(fmt::format("{}: {}", what, rte_strerror(rte_errno)));
}

// The wall clock the control loop uses; --clock-shift-ms moves it for tests.
class TscClock final : public Clock {
  public:
    explicit TscClock(int64_t shift_ms) : shift_ms_(shift_ms) {}
    int64_t unix_ms() override {
        timespec ts{};
        clock_gettime(CLOCK_REALTIME, &ts);
        return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1'000'000 + shift_ms_;
    }
    uint64_t ticks() override { return rte_rdtsc(); }
    // The TSC read on both sides of clock_gettime, paired with its midpoint;
    // refused if more than 10 us passed between them.
    bool sample(int64_t& unix_us, uint64_t& ticks_at) override {
        timespec ts{};
        const uint64_t before = rte_rdtsc();
        clock_gettime(CLOCK_REALTIME, &ts);
        const uint64_t after = rte_rdtsc();
        unix_us = int64_t{ts.tv_sec} * 1'000'000 + ts.tv_nsec / 1'000 + shift_ms_ * 1000;
        ticks_at = before + (after - before) / 2;
        return after - before <= rte_get_tsc_hz() / 100'000;
    }

  private:
    int64_t shift_ms_;
};

struct PortState {
    PortConfig config;
    uint16_t id = 0;
    MacAddress mac{};
    uint16_t rx_queues = 1;
    bool spread = false;  // software RSS: one rx queue, its owner spreads frames over the workers
};

uint16_t probe_port(const std::string& device) {
    const std::string name = device.substr(0, device.find(','));
    uint16_t id = 0;
    if (rte_eth_dev_get_port_by_name(name.c_str(), &id) == 0) return id;
    if (rte_dev_probe(device.c_str()) != 0)
        die(fmt::format("cannot attach device '{}' (is it a PCI address bound to a DPDK driver, "
                        "or a virtual device spec such as net_pcap0,rx_pcap=in.pcap?)",
                        device));
    if (rte_eth_dev_get_port_by_name(name.c_str(), &id) != 0)
        die(fmt::format("device '{}' attached but no ethdev port named '{}'", device, name));
    return id;
}

// Configures a port's queues: rx queues as configured, else one per worker
// when the port has RSS, else one that software RSS spreads (p.spread); one tx
// queue per worker.
void configure_port(PortState& p, uint16_t workers, rte_mempool* pool) {
    const uint16_t port = p.id;
    const PortConfig& pc = p.config;
    const uint16_t tx_queues = workers;
    rte_eth_dev_info info{};
    if (rte_eth_dev_info_get(port, &info) != 0) die_rte(fmt::format("port {}: dev_info", pc.name));
    const bool has_rss = info.flow_type_rss_offloads != 0;
    const uint16_t rx_queues = pc.rx_queues != 0 ? pc.rx_queues : (has_rss ? workers : 1);
    rte_eth_conf conf{};
    if (rx_queues > 1 && has_rss) {
        conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf = (RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP) &
                                           info.flow_type_rss_offloads;
    } else if (rx_queues > 1) {
        die(fmt::format("port {} ({}) has no RSS for rx_queues = {}: leave rx_queues unset (or 1) and jitlb "
                        "spreads the port's frames over the workers in software",
                        pc.name, info.driver_name, rx_queues));
    }
    p.rx_queues = rx_queues;
    p.spread = rx_queues == 1 && workers > 1;
    if (p.spread)
        std::printf("jitlb: port %s (%s): one rx queue, spread over %u workers in software (software RSS)\n",
                    pc.name.c_str(), info.driver_name, workers);
    if (rx_queues > info.max_rx_queues || tx_queues > info.max_tx_queues)
        die(fmt::format("port {} ({}) supports {} rx / {} tx queues, {} / {} needed", pc.name,
                        info.driver_name, info.max_rx_queues, info.max_tx_queues, rx_queues, tx_queues));
    if (const int r = rte_eth_dev_configure(port, rx_queues, tx_queues, &conf); r != 0)
        die(fmt::format("port {}: configure: {}", pc.name, rte_strerror(-r)));
    uint16_t nb_rx = pc.rx_descriptors, nb_tx = pc.tx_descriptors;
    if (rte_eth_dev_adjust_nb_rx_tx_desc(port, &nb_rx, &nb_tx) != 0) die_rte(fmt::format("port {}: descriptors", pc.name));
    const int socket = rte_eth_dev_socket_id(port);
    for (uint16_t q = 0; q < rx_queues; ++q)
        if (const int r = rte_eth_rx_queue_setup(port, q, nb_rx, static_cast<unsigned>(socket), nullptr, pool); r != 0)
            die(fmt::format("port {}: rx queue {}: {}", pc.name, q, rte_strerror(-r)));
    for (uint16_t q = 0; q < tx_queues; ++q)
        if (const int r = rte_eth_tx_queue_setup(port, q, nb_tx, static_cast<unsigned>(socket), nullptr); r != 0)
            die(fmt::format("port {}: tx queue {}: {}", pc.name, q, rte_strerror(-r)));
    if (pc.mtu != 1500) {
        if (const int r = rte_eth_dev_set_mtu(port, static_cast<uint16_t>(pc.mtu)); r != 0 && r != -ENOTSUP)
            die(fmt::format("port {}: MTU {}: {}", pc.name, pc.mtu, rte_strerror(-r)));
    }
}

uint32_t exception_mask(const std::vector<std::string>& names) {
    uint32_t mask = 0;
    for (const std::string& n : names) {
        if (n == "arp") mask |= kExceptionArp;
        else if (n == "nd") mask |= kExceptionNd;
        else if (n == "icmp") mask |= kExceptionIcmp;
        else if (n == "ssh") mask |= kExceptionSsh;
        else if (n == "bgp") mask |= kExceptionBgp;
    }
    return mask;
}

// The main lcore's part of the exception path: what workers handed over goes
// to the kernel (tap I/O is system calls, so workers never touch that port),
// and what the kernel sends goes to worker 0, which sends it out of the first
// data port (the exception port has its MAC) on its own tx queue, marked
// with that port's id. Bounded: a few bursts each way per tick.
void relay_exception(std::vector<std::unique_ptr<WorkerContext>>& workers, uint16_t exception_port,
                     uint16_t first_port, WorkerCounters& counters) {
    rte_mbuf* m[kBurst];
    for (auto& w : workers) {
        const unsigned n = rte_ring_sc_dequeue_burst(w->exception_ring, reinterpret_cast<void**>(m), kBurst, nullptr);
        if (n == 0) continue;
        const uint16_t sent = rte_eth_tx_burst(exception_port, 0, m, static_cast<uint16_t>(n));
        if (sent < n) {
            counters.add(Counter::drop_exception_full, n - sent);
            rte_pktmbuf_free_bulk(m + sent, n - sent);
        }
    }
    for (int round = 0; round < 4; ++round) {
        const uint16_t n = rte_eth_rx_burst(exception_port, 0, m, kBurst);
        if (n == 0) break;
        counters.add(Counter::from_exception, n);
        for (uint16_t i = 0; i < n; ++i) m[i]->port = first_port;  // worker 0 sends by m->port
        const unsigned queued = rte_ring_sp_enqueue_burst(workers[0]->from_kernel_ring, reinterpret_cast<void**>(m), n, nullptr);
        if (queued < n) {
            counters.add(Counter::drop_exception_full, n - queued);
            rte_pktmbuf_free_bulk(m + queued, n - queued);
        }
    }
}

std::string format_ip(const IpAddress& a) {
    char text[INET6_ADDRSTRLEN] = {};
    inet_ntop(a.version == IpVersion::v4 ? AF_INET : AF_INET6, a.bytes.data(), text, sizeof text);
    return text;
}

std::string format_mac(const MacAddress& m) {
    return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]);
}

int64_t steady_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// One port's next hop: its resolvers (none with a static next_hop_mac or
// without a next hop) and the words the workers read for that port.
struct PortNextHop {
    PortNextHop(const std::string& name, uint16_t id, const MacAddress& mac)
        : port_name(name), port_id(id), set(mac) {}
    std::string port_name;
    uint16_t port_id;
    NextHopSet set;
    NextHopMacs macs;  // PortIdentity::next_hop_macs of the port's workers
};

// The main lcore's part of next-hop resolution, once per tick: due requests go
// out through worker 0's return ring, marked with their port (as the kernel's
// frames do: ports have a tx queue per worker only); replies the workers handed
// over go to the resolvers of the port they came in by (m->port), are passed on
// to the exception port when it allows them (the kernel asked too, perhaps),
// and a port's words are stored when one of its MACs changed. Bounded: one
// burst per worker ring per tick, never a wait.
struct NextHopRelay {
    std::vector<std::unique_ptr<PortNextHop>>& ports;  // by port index
    std::array<uint8_t, RTE_MAX_ETHPORTS> port_index;  // by port id (m->port)
    rte_mempool* pool;
    bool has_exception;
    uint16_t exception_port;
    uint32_t exception_allow;  // ExceptionTraffic bits
};

void resolve_next_hops(NextHopRelay& r, std::vector<std::unique_ptr<WorkerContext>>& workers,
                       WorkerCounters& counters) {
    const int64_t now = steady_ms();
    std::vector<std::array<uint64_t, 2>> words_before;
    for (const auto& p : r.ports) words_before.push_back({p->set.word_v4(), p->set.word_v6()});
    rte_mbuf* m[kBurst];
    for (auto& w : workers) {
        const unsigned n = rte_ring_sc_dequeue_burst(w->resolver_ring, reinterpret_cast<void**>(m), kBurst, nullptr);
        for (unsigned i = 0; i < n; ++i) {
            PortNextHop& port = *r.ports[r.port_index[m[i]->port]];  // the worker set m->port
            const auto result = port.set.on_frame({rte_pktmbuf_mtod(m[i], const uint8_t*), m[i]->data_len}, now);
            if (result.resolver != nullptr && result.verdict != NextHopResolver::Verdict::confirmed) {
                const NextHopResolver& nh = *result.resolver;
                std::printf("jitlb: port %s: next hop %s is at %s (%s)%s\n", port.port_name.c_str(),
                            format_ip(nh.next_hop()).c_str(), format_mac(nh.mac()).c_str(),
                            nh.next_hop().version == IpVersion::v4 ? "ARP" : "ND",
                            result.verdict == NextHopResolver::Verdict::changed ? ": its MAC changed" : "");
                std::fflush(stdout);
            }
            uint32_t kind = 0;  // malformed frames are not passed on
            if (result.kind == NeighbourFrame::arp_reply) kind = kExceptionArp;
            else if (result.kind == NeighbourFrame::neighbour_advert) kind = kExceptionNd;
            if (r.has_exception && (r.exception_allow & kind) != 0) {
                counters.add(Counter::to_exception);
                if (rte_eth_tx_burst(r.exception_port, 0, &m[i], 1) == 1) continue;
                counters.add(Counter::drop_exception_full);
            }
            rte_pktmbuf_free(m[i]);
        }
    }
    NextHopStats t;
    uint64_t configured = 0, resolved = 0, malformed = 0;
    for (size_t p = 0; p < r.ports.size(); ++p) {
        PortNextHop& port = *r.ports[p];
        for (NextHopResolver& nh : port.set.resolvers()) {
            if (nh.due(now)) {
                uint8_t frame[kNeighbourSolicitationLen];
                const size_t len = nh.write_request(now, frame);  // the next one is scheduled even if this fails
                rte_mbuf* out = rte_pktmbuf_alloc(r.pool);
                char* data = out != nullptr ? rte_pktmbuf_append(out, static_cast<uint16_t>(len)) : nullptr;
                if (data != nullptr) {
                    std::memcpy(data, frame, len);
                    out->port = port.port_id;  // worker 0 sends by m->port
                }
                if (data == nullptr || rte_ring_sp_enqueue(workers[0]->from_kernel_ring, out) != 0) {
                    counters.add(Counter::next_hop_requests_unsent);
                    rte_pktmbuf_free(out);  // null-safe
                }
            }
            if (nh.check_unanswered(now)) {
                std::fprintf(stderr,
                             "jitlb: warning: port %s: next hop %s has not answered %s for %lld s; %s\n",
                             port.port_name.c_str(), format_ip(nh.next_hop()).c_str(),
                             nh.next_hop().version == IpVersion::v4 ? "ARP" : "neighbour solicitations",
                             static_cast<long long>((now - nh.unanswered_since_ms()) / 1000),
                             nh.resolved() ? fmt::format("still sending to its last MAC {}", format_mac(nh.mac())).c_str()
                                           : "encapsulated packets are dropped (next_hop_unresolved) until it does");
            }
        }
        if (!port.set.empty() &&
            (port.set.word_v4() != words_before[p][0] || port.set.word_v6() != words_before[p][1]))
            port.set.publish(port.macs);
        const NextHopStats s = port.set.totals();
        t.requests_sent += s.requests_sent;
        t.replies_accepted += s.replies_accepted;
        t.replies_ignored += s.replies_ignored;
        t.mac_changes += s.mac_changes;
        t.unanswered += s.unanswered;
        configured += port.set.resolvers().size();
        resolved += port.set.resolved_count();
        malformed += port.set.malformed();
    }
    // Summed over the ports.
    const auto set = [&counters](Counter k, uint64_t v) {
        __atomic_store_n(&counters.by_counter[static_cast<size_t>(k)], v, __ATOMIC_RELAXED);
    };
    set(Counter::next_hops_configured, configured);
    set(Counter::next_hops_resolved, resolved);
    set(Counter::next_hop_requests_sent, t.requests_sent);
    set(Counter::next_hop_replies_accepted, t.replies_accepted);
    set(Counter::next_hop_replies_ignored, t.replies_ignored);
    set(Counter::next_hop_replies_malformed, malformed);
    set(Counter::next_hop_mac_changes, t.mac_changes);
    set(Counter::next_hop_unanswered, t.unanswered);
}

// Every port's resolvers' state for the stats JSON at exit.
std::string next_hops_json(const std::vector<std::unique_ptr<PortNextHop>>& ports) {
    std::string s;
    for (const auto& port : ports)
        for (const NextHopResolver& nh : port->set.resolvers()) {
            const NextHopStats& st = nh.stats();
            s += fmt::format("{}{{\"port\": \"{}\", \"address\": \"{}\", \"resolved\": {}, \"mac\": \"{}\", "
                             "\"requests_sent\": {}, \"replies_accepted\": {}, \"replies_ignored\": {}, "
                             "\"mac_changes\": {}, \"unanswered\": {}}}",
                             s.empty() ? "" : ", ", port->port_name, format_ip(nh.next_hop()),
                             nh.resolved() ? "true" : "false", nh.resolved() ? format_mac(nh.mac()) : "",
                             st.requests_sent, st.replies_accepted, st.replies_ignored, st.mac_changes, st.unanswered);
        }
    return s;
}

// The MAC key file: opened once, without following a symlink, and judged by
// what that descriptor is (no check-then-open race): a regular file of
// jitlb's own user, mode 0600 or tighter, exactly 32 bytes. Missing: made.
GrantTableMacKey read_mac_key(const std::string& path) {
    GrantTableMacKey key{};
    int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        // First start: make one, readable by jitlb only (O_EXCL: never through a symlink).
        fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0) die(fmt::format("cannot create MAC key file {}: {}", path, std::strerror(errno)));
        randombytes_buf(key.data(), key.size());
        const bool ok = write(fd, key.data(), key.size()) == static_cast<ssize_t>(key.size()) && fsync(fd) == 0;
        close(fd);
        if (!ok) die(fmt::format("cannot write MAC key file {}: {}", path, std::strerror(errno)));
        return key;
    }
    if (fd < 0) {
        if (errno == ELOOP)
            die(fmt::format("MAC key file {} is a symbolic link: refused (whoever can point it elsewhere could "
                            "choose jitlb's key); put the key file itself there",
                            path));
        die(fmt::format("cannot open MAC key file {}: {}", path, std::strerror(errno)));
    }
    struct stat st{};
    if (fstat(fd, &st) != 0) die(fmt::format("cannot stat MAC key file {}: {}", path, std::strerror(errno)));
    const auto refuse = [&](const std::string& why) {
        close(fd);
        die(why);
    };
    if (!S_ISREG(st.st_mode)) refuse(fmt::format("MAC key file {} is not a regular file", path));
    if (st.st_uid != geteuid())
        refuse(fmt::format("MAC key file {} belongs to uid {}, not to jitlb's user (uid {}): chown it to the user "
                           "jitlb runs as",
                           path, st.st_uid, geteuid()));
    if ((st.st_mode & 077) != 0)
        refuse(fmt::format("MAC key file {} is open to group or others (mode {:04o}): whoever "
                           "reads it can forge grant-table entries a restarted jitlb keeps; chmod "
                           "600 {}",
                           path, st.st_mode & 07777, path));
    size_t got = 0;
    while (got < key.size()) {
        const ssize_t n = read(fd, key.data() + got, key.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += static_cast<size_t>(n);
    }
    uint8_t extra = 0;
    const bool more = got == key.size() && read(fd, &extra, 1) != 0;
    close(fd);
    if (got != key.size() || more || st.st_size != static_cast<off_t>(key.size()))
        die(fmt::format("MAC key file {} must hold exactly {} bytes, not {} (restore it; or "
                        "remove it for a new key: the table's entries are then dropped at start "
                        "and jitd pushes its grants again)",
                        path, key.size(), st.st_size));
    return key;
}

ControlConfig control_config_from(const NodeConfig& config, const GrantTableMacKey& mac_key, uint64_t tsc_hz) {
    ControlConfig cc;
    cc.instance = config.instance;
    RegionDirs dirs;
    if (config.region_dir.empty() || config.cmd_dir.empty()) {
        dirs = detect_region_dirs();
        if (!dirs.warning.empty()) std::fprintf(stderr, "jitlb: %s\n", dirs.warning.c_str());
    }
    cc.region_dir = config.region_dir.empty() ? dirs.state_dir : config.region_dir;
    cc.cmd_dir = config.cmd_dir.empty() ? dirs.cmd_dir : config.cmd_dir;
    const std::optional<uid_t> owner = uid_of_user(config.cmd_file_owner);
    if (!owner) die(fmt::format("cmd file owner '{}' is not a user on this system (scripts/setup creates jitd)",
                                config.cmd_file_owner));
    cc.cmd_owner_uid = *owner;
    cc.issuer_keys_file = config.issuer_keys_file;
    cc.mac_key = mac_key;
    cc.grant_capacity = config.grant_capacity;
    cc.grant_slots_per_grant = config.grant_slots_per_grant;
    cc.skew_ms = config.skew_ms;
    cc.max_duration_ms = config.max_grant_duration_ms;
    cc.horizon_ms = config.not_before_horizon_ms;
    cc.verify_per_tick = config.verify_per_tick;
    cc.ticks_per_second = tsc_hz;
    cc.service_capacity = config.service_capacity;
    cc.backend_capacity = config.backend_capacity;
    return cc;
}


// What DPDK telemetry reads (/jitlb/stats): every lcore's counter block. Read
// from the telemetry thread with relaxed loads; each counter is one aligned
// word written by one lcore, so it is never torn.
std::vector<const WorkerCounters*> g_counter_blocks;
std::atomic<bool> g_counters_mapped{false};  // false before set-up and once the state file is unmapped

int telemetry_stats(const char*, const char*, rte_tel_data* d) {
    WorkerCounters total{};
    if (g_counters_mapped.load(std::memory_order_acquire))
        for (const WorkerCounters* c : g_counter_blocks) add_counters(total, *c);
    rte_tel_data_start_dict(d);
    for (size_t i = 0; i < static_cast<size_t>(Counter::count_); ++i)
        rte_tel_data_add_dict_u64(d, std::string(counter_name(static_cast<Counter>(i))).c_str(), total.by_counter[i]);
    for (size_t i = 1; i < static_cast<size_t>(DropReason::count_); ++i)
        rte_tel_data_add_dict_u64(d, fmt::format("parse_{}", drop_reason_name(static_cast<DropReason>(i))).c_str(),
                                  total.parse_drops[i]);
    rte_tel_data_add_dict_string(d, "cycles_per_packet", fmt::format("{:.2f}", cycles_per_packet(total)).c_str());
    return 0;
}


// A telemetry dict key: DPDK takes only [A-Za-z0-9_/] (others make the add
// fail), so any other character becomes '_'; the values carry the exact names.
std::string telemetry_key(std::string_view name) {
    std::string key(name);
    for (char& c : key)
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '/'))
            c = '_';
    return key;
}

// /jitlb/services: forwarded packets and bytes per service, summed over the
// workers, named from the state file's service map (read as jitctl reads it:
// the telemetry thread never touches the main lcore's tables).
const StateRegion* g_state = nullptr;  // for /jitlb/services and /jitlb/backends, while g_counters_mapped

int telemetry_services(const char*, const char*, rte_tel_data* d) {
    rte_tel_data_start_dict(d);
    if (!g_counters_mapped.load(std::memory_order_acquire)) return 0;
    const uint32_t capacity = g_state->header->service_capacity;
    WorkerCounters total{};
    std::vector<ServiceCounters> per_service(size_t{capacity} + 1);
    sum_stats_blocks(g_state->worker_stats, StatsBlockShape::of(*g_state->header), total, per_service);
    for (const ServiceMapEntry& e : g_state->services) {
        ServiceInfo info;
        if (service_map_read(e, info) != SeqRead::ok || info.service_id == 0 || info.service_id > capacity) continue;
        const uint64_t packets = per_service[info.service_id].packets, bytes = per_service[info.service_id].bytes;
        rte_tel_data* one = rte_tel_data_alloc();
        if (one == nullptr) return -ENOMEM;
        rte_tel_data_start_dict(one);
        rte_tel_data_add_dict_string(one, "name", std::string(info.name_view()).c_str());
        rte_tel_data_add_dict_u64(one, "id", info.service_id);
        rte_tel_data_add_dict_u64(one, "packets", packets);
        rte_tel_data_add_dict_u64(one, "bytes", bytes);
        if (rte_tel_data_add_dict_container(d, telemetry_key(info.name_view()).c_str(), one, 0) != 0) {
            rte_tel_data_free(one);  // the dict is full (256): what fits is answered
            break;
        }
    }
    return 0;
}

// The service names of the state file's map, by id (readers' view: seqlock).
std::vector<std::string> service_names(std::span<const ServiceMapEntry> map) {
    std::vector<std::string> names(map.size() + 1);
    for (const ServiceMapEntry& e : map) {
        ServiceInfo info;
        if (service_map_read(e, info) == SeqRead::ok && info.service_id != 0 && info.service_id <= map.size())
            names[info.service_id] = std::string(info.name_view());
    }
    return names;
}

// /jitlb/backends[,SERVICE]: forwarded packets and bytes per backend, summed
// over the workers, named from the state file's backend and service maps.
// Telemetry nests one level and a dict holds at most 256 entries, so the
// answer is flat, keyed "service/backend" (telemetry_key); a service name as
// parameter limits it to that service's backends.
int telemetry_backends(const char*, const char* params, rte_tel_data* d) {
    rte_tel_data_start_dict(d);
    if (!g_counters_mapped.load(std::memory_order_acquire)) return 0;
    const std::string_view only = params != nullptr ? params : "";
    const std::span<const ServiceMapEntry> map(g_state->services.data(), g_state->services.size());
    const std::vector<std::string> names = service_names(map);
    const std::span<const BackendMapEntry> backends(g_state->backends.data(), g_state->backends.size());
    for (const BackendReport& r : read_backend_counters(backends, g_state->worker_stats,
                                                         StatsBlockShape::of(*g_state->header))) {
        const std::string& service = r.info.service_id < names.size() ? names[r.info.service_id] : names[0];
        if (!only.empty() && service != only) continue;
        rte_tel_data* one = rte_tel_data_alloc();
        if (one == nullptr) return -ENOMEM;
        rte_tel_data_start_dict(one);
        rte_tel_data_add_dict_string(one, "service", service.c_str());
        rte_tel_data_add_dict_string(one, "backend", std::string(r.info.id_view()).c_str());
        rte_tel_data_add_dict_string(one, "address", r.address_text().c_str());
        rte_tel_data_add_dict_u64(one, "weight", r.info.weight);
        rte_tel_data_add_dict_u64(one, "slot", r.slot);
        rte_tel_data_add_dict_u64(one, "packets", r.packets);
        rte_tel_data_add_dict_u64(one, "bytes", r.bytes);
        const std::string key = telemetry_key(fmt::format("{}/{}", service, r.info.id_view()));
        if (rte_tel_data_add_dict_container(d, key.c_str(), one, 0) != 0) {
            rte_tel_data_free(one);  // the dict is full (256): what fits is answered
            break;
        }
    }
    return 0;
}

// part(1..parts-1) on the worker lcores (idle: before their launch), part(0)
// and any part no lcore took on the main lcore; returns when all have ended.
void run_parts_on_lcores(const std::vector<unsigned>& lcores, unsigned parts,
                         const std::function<void(unsigned)>& part) {
    struct Job {
        const std::function<void(unsigned)>* part;
        unsigned index;
    };
    std::vector<Job> jobs(parts);
    std::vector<unsigned> launched, here;
    launched.reserve(parts);  // no allocation once an lcore runs a job
    here.reserve(parts);
    for (unsigned i = 1; i < parts; ++i) {
        jobs[i] = {&part, i};
        const auto run = [](void* arg) -> int {
            const Job& j = *static_cast<Job*>(arg);
            (*j.part)(j.index);
            return 0;
        };
        if (i - 1 < lcores.size() && rte_eal_remote_launch(run, &jobs[i], lcores[i - 1]) == 0) {
            launched.push_back(lcores[i - 1]);
        } else {
            here.push_back(i);
        }
    }
    part(0);
    for (const unsigned i : here) part(i);
    for (const unsigned lcore : launched) rte_eal_wait_lcore(lcore);
}

// The main lcore shares a core and sleeps between ticks, and a revocation
// waits for its next tick: ask the scheduler to run it soon after it wakes,
// even beside a thread that polls at 100% on the same core. A real-time
// priority (SCHED_FIFO) preempts every normal thread at once on wake-up; a
// negative nice value weighs it up and a short slice (Linux 6.12 and later,
// EEVDF) lets it preempt on wake-up, both within the fair class. What fails
// is said once. Returns whether the main lcore runs at a real-time priority.
bool prioritise_main_lcore(const NodeConfig& config) {
    if (config.main_realtime_priority != 0) {
        sched_param param{};
        param.sched_priority = static_cast<int>(config.main_realtime_priority);
        if (const int e = pthread_setschedparam(pthread_self(), SCHED_FIFO, &param); e != 0) {
            std::fprintf(stderr,
                         "jitlb: warning: [main] realtime_priority = %u: %s; the main lcore runs with the kernel's "
                         "defaults and may wait a scheduler slice behind a busy thread on its core (give jitlb "
                         "CAP_SYS_NICE, and real-time runtime in its cgroup)\n",
                         config.main_realtime_priority, std::strerror(e));
            return false;
        }
        return true;
    }
    struct Attr {  // struct sched_attr (sched_setattr(2)); glibc 2.36 has no wrapper
        uint32_t size, policy;
        uint64_t flags;
        int32_t nice;
        uint32_t priority;
        uint64_t runtime, deadline, period;
    };
    const auto set = [](int32_t n, uint32_t us) {
        Attr a{};
        a.size = sizeof(Attr);
        a.policy = SCHED_OTHER;
        a.nice = n;
        a.runtime = uint64_t{us} * 1000;
        return syscall(SYS_sched_setattr, 0, &a, 0) == 0 ? 0 : errno;
    };
    const int32_t nice = config.main_nice;
    const uint32_t slice_us = config.main_slice_us;
    if (nice == 0 && slice_us == 0) return false;
    if (const int e = set(nice, slice_us); e != 0) {
        const int again = nice < 0 ? set(0, slice_us) : e;
        std::fprintf(stderr,
                     "jitlb: warning: [main] nice = %d, slice_us = %u: %s; the main lcore runs %s and may "
                     "wait a scheduler slice behind a busy thread on its core (give jitlb CAP_SYS_NICE)\n",
                     nice, slice_us, std::strerror(e), again == 0 ? "at nice 0" : "with the kernel's defaults");
    }
    return false;
}

// The main lcore's grant work, into its counter block (stats, telemetry, jitctl).
void publish_control_counters(const ControlLoop& control, WorkerCounters& c) noexcept {
    const ControlStats& s = control.stats();
    uint64_t rejected = 0;
    for (const uint64_t n : s.grants_rejected) rejected += n;
    const auto set = [&c](Counter k, uint64_t v) { __atomic_store_n(&c.by_counter[static_cast<size_t>(k)], v, __ATOMIC_RELAXED); };
    set(Counter::grant_backlog, control.backlog_length());
    set(Counter::grant_backlog_high_water, s.backlog_high_water);
    set(Counter::grants_verified, s.grants_verified);
    set(Counter::grants_activated, s.grants_activated);
    set(Counter::grants_rejected, rejected);
    set(Counter::revocations_applied, s.revocations);
}


// A JSON string's content: backend ids may hold '"' and '\\' (0x21..0x7e).
std::string json_escape(std::string_view text) {
    std::string out;
    for (const char c : text) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    return out;
}

// "backends": {"service": {"backend id": {"address", "weight", "slot", "packets", "bytes"}}}:
// every backend the state file's backend map names, grouped by service.
std::string backends_json(ControlLoop& control) {
    const StateRegion& state = control.state();
    const std::span<const ServiceMapEntry> map(state.services.data(), state.services.size());
    const std::vector<std::string> names = service_names(map);
    const std::span<const BackendMapEntry> backends(state.backends.data(), state.backends.size());
    std::string s = "{";
    uint32_t open_service = 0;
    for (const BackendReport& r : read_backend_counters(backends, state.worker_stats, StatsBlockShape::of(*state.header))) {
        if (r.info.service_id != open_service) {
            const std::string& name = r.info.service_id < names.size() ? names[r.info.service_id] : names[0];
            s += fmt::format("{}\"{}\": {{", open_service != 0 ? "}, " : "", name);
            open_service = r.info.service_id;
        } else {
            s += ", ";
        }
        s += fmt::format("\"{}\": {{\"address\": \"{}\", \"weight\": {}, \"slot\": {}, \"packets\": {}, \"bytes\": {}}}",
                         json_escape(r.info.id_view()), r.address_text(), r.info.weight, r.slot, r.packets, r.bytes);
    }
    return s + (open_service != 0 ? "}}" : "}");
}

std::string counters_json(const WorkerCounters& total, const std::vector<ServiceCounters>& services,
                          ControlLoop& control) {
    std::string s = "{";
    for (size_t i = 0; i < static_cast<size_t>(Counter::count_); ++i)
        s += fmt::format("{}\"{}\": {}", i ? ", " : "", counter_name(static_cast<Counter>(i)), total.by_counter[i]);
    for (size_t i = 1; i < static_cast<size_t>(DropReason::count_); ++i)
        s += fmt::format(", \"parse_{}\": {}", drop_reason_name(static_cast<DropReason>(i)), total.parse_drops[i]);
    s += fmt::format(", \"cycles_per_packet\": {:.2f}", cycles_per_packet(total));
    const ControlStats& c = control.stats();
    s += fmt::format(", \"control\": {{\"ticks\": {}, \"commands\": {}, \"grants_received\": {}, \"grants_verified\": {}, "
                     "\"grants_activated\": {}, \"backlog_high_water\": {}, \"revocations\": {}, \"grants_expired\": {}, "
                     "\"events_posted\": {}, \"events_dropped\": {}, \"cmd_file_faults\": {}}}",
                     c.ticks, c.commands, c.grants_received, c.grants_verified, c.grants_activated, c.backlog_high_water,
                     c.revocations, c.grants_expired, c.events_posted, c.events_dropped, c.cmd_file_faults);
    s += ", \"services\": {";
    bool first = true;
    for (size_t id = 1; id < services.size(); ++id) {
        if (services[id].packets == 0) continue;
        s += fmt::format("{}\"{}\": {{\"id\": {}, \"packets\": {}, \"bytes\": {}}}", first ? "" : ", ",
                         control.service_name(static_cast<uint32_t>(id)), id, services[id].packets, services[id].bytes);
        first = false;
    }
    return s + "}, \"backends\": " + backends_json(control) + "}";
}


}  // namespace

int main(int argc, char** argv) {
    const int eal_args = rte_eal_init(argc, argv);
    if (eal_args < 0) die_rte("EAL init failed (check hugepages, --file-prefix, -l)");
    argc -= eal_args;
    argv += eal_args;

    CLI::App app{"jitlb: the data plane. Usage: jitlb [EAL options] -- --config FILE [options]"};
    std::string config_path, stats_json, start_ports_after;
    uint64_t exit_when_idle_ms = 0;
    int64_t clock_shift_ms = 0;
    app.add_option("--config", config_path, "the node's TOML configuration")->required();
    app.add_option("--exit-when-idle", exit_when_idle_ms,
                   "stop once no packet has arrived for MS milliseconds (pcap tests)");
    app.add_option("--clock-shift-ms", clock_shift_ms, "move jitlb's clock (tests only)");
    app.add_option("--stats-json", stats_json, "write the counters as JSON here at exit");
    app.add_option("--start-ports-after", start_ports_after,
                   "keep the ports stopped, applying commands, until this file exists (a test stages "
                   "services and grants first: jitd can push only once jitlb has attached)");
    argv[0] = const_cast<char*>("jitlb");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }

    auto loaded = load_node_config(config_path);
    if (auto* err = std::get_if<ConfigError>(&loaded)) die(err->to_string());
    const NodeConfig config = std::get<NodeConfig>(std::move(loaded));
    std::printf("jitlb: %s\n", describe(config).c_str());
    // Keys before devices: a bad key file stops jitlb before it touches a port.
    const GrantTableMacKey mac_key = read_mac_key(config.mac_key_file);

    // Lcores: the main one runs the control loop; every other one is a worker.
    std::vector<unsigned> worker_lcores;
    unsigned lcore = 0;
    RTE_LCORE_FOREACH_WORKER(lcore) worker_lcores.push_back(lcore);
    if (worker_lcores.empty()) die("no worker lcore: give EAL at least two lcores, e.g. -l 0,1");
    const auto n_workers = static_cast<uint16_t>(worker_lcores.size());

    // Ports.
    std::vector<PortState> ports;
    for (const PortConfig& pc : config.ports) {
        PortState p;
        p.config = pc;
        p.id = probe_port(pc.device);
        ports.push_back(p);
    }
    rte_mempool* pool = rte_pktmbuf_pool_create(
        "jitlb_mbufs", kMbufsPerPort * static_cast<uint32_t>(ports.size() + 1), kMbufCache, 0,
        RTE_MBUF_DEFAULT_BUF_SIZE, static_cast<int>(rte_socket_id()));
    if (pool == nullptr) die_rte("mbuf pool");
    const bool has_exception = !config.exception_port.empty();
    for (PortState& p : ports) {
        configure_port(p, n_workers, pool);
        if (p.config.mac_set) {
            p.mac = p.config.mac;
        } else {
            rte_ether_addr a{};
            if (rte_eth_macaddr_get(p.id, &a) != 0) die_rte(fmt::format("port {}: MAC", p.config.name));
            std::memcpy(p.mac.data(), a.addr_bytes, 6);
        }
    }

    // The exception port: the kernel's side of the node (a TAP interface, or
    // any PMD), with the first data port's MAC so the kernel answers as the
    // node; what the kernel sends leaves by the first port.
    uint16_t exception_id = 0;
    if (has_exception) {
        exception_id = probe_port(config.exception_port);
        PortState ep;
        ep.id = exception_id;
        ep.config.name = "exception";
        ep.config.device = config.exception_port;
        ep.config.rx_descriptors = ep.config.tx_descriptors = 512;
        ep.config.rx_queues = 1;
        configure_port(ep, 1, pool);
        rte_ether_addr a{};
        std::memcpy(a.addr_bytes, ports[0].mac.data(), 6);
        if (const int r = rte_eth_dev_default_mac_addr_set(exception_id, &a); r != 0 && r != -ENOTSUP)
            die(fmt::format("exception port: cannot set its MAC: {}", rte_strerror(-r)));
    }

    // Each port's next hop, where its encapsulated packets go: static or
    // resolved by ARP / ND from this lcore (asked from the port's MAC and the
    // first node address of each family), published to the workers in the
    // port's NextHopMacs.
    std::vector<std::unique_ptr<PortNextHop>> next_hops;
    std::array<uint8_t, RTE_MAX_ETHPORTS> port_index{};  // by port id
    const auto node_address = [&config](IpVersion v) {
        return *std::find_if(config.addresses.begin(), config.addresses.end(),
                             [v](const IpAddress& a) { return a.version == v; });  // the config checked one exists
    };
    bool resolving = false;
    for (size_t i = 0; i < ports.size(); ++i) {
        const PortConfig& pc = ports[i].config;
        port_index[ports[i].id] = static_cast<uint8_t>(i);
        auto nh = std::make_unique<PortNextHop>(pc.name, ports[i].id, ports[i].mac);
        if (pc.next_hop.version != IpVersion::none) nh->set.add(pc.next_hop, node_address(IpVersion::v4));
        if (pc.next_hop_v6.version != IpVersion::none) nh->set.add(pc.next_hop_v6, node_address(IpVersion::v6));
        resolving = resolving || !nh->set.empty();
        if (pc.next_hop_set) {
            nh->macs.v4.store(next_hop_word(pc.next_hop_mac), std::memory_order_relaxed);
            nh->macs.v6.store(next_hop_word(pc.next_hop_mac), std::memory_order_relaxed);
        } else if (nh->set.empty()) {
            std::fprintf(stderr, "jitlb: warning: port %s has no next hop: encapsulated packets (ipip, gue) it "
                                 "receives are dropped (next_hop_unresolved); set [[port]] next_hop / next_hop_v6 "
                                 "(resolved by ARP / ND) or next_hop_mac\n",
                         pc.name.c_str());
        }
        next_hops.push_back(std::move(nh));
    }

    // The state file, grant table, services and the control loop.
    ServiceTable services(config.backend_capacity);
    TscClock clock(clock_shift_ms);
    ControlConfig cc = control_config_from(config, mac_key, rte_get_tsc_hz());
    // Stats lines: one block per worker and one for the main lcore, each its
    // WorkerCounters, ServiceCounters for ids 0..service_capacity, then
    // BackendCounters for slots 0..backend_capacity-1.
    const StatsBlockShape shape{config.service_capacity, config.backend_capacity};
    const size_t block_bytes = shape.block_bytes();
    // Room for kMaxWorkers whatever -l says today: the state file's layout (and
    // so its grants) must survive a restart with another number of workers.
    if (n_workers > kMaxWorkers) die(fmt::format("{} workers: at most {} are supported", n_workers, kMaxWorkers));
    cc.worker_stats_lines = static_cast<uint32_t>((size_t{kMaxWorkers} + 1) * block_bytes / 64);
    // A reopened grant table's MAC checks on every lcore: the workers are not
    // launched yet, so their cores are free (1M entries: ~0.85 s on 2, ~1.1 s on 1).
    cc.reopen_parts = std::min(static_cast<unsigned>(worker_lcores.size()) + 1, 64u);  // reopen's limit
    cc.reopen_run_parts = [&worker_lcores](unsigned parts, const std::function<void(unsigned)>& part) {
        run_parts_on_lcores(worker_lcores, parts, part);
    };
    std::unique_ptr<ControlLoop> control;
    try {
        control = ControlLoop::open(cc, services, clock);
    } catch (const std::exception& e) {
        die(e.what());
    }
    if (const ControlStart& st = control->start(); st.grant_table_reopened) {
        const ReopenReport& r = st.reopen;
        std::printf("jitlb: grant table reopened in %.0f ms: %llu grants kept (MACs checked in %u parts, on the lcores); "
                    "dropped: %llu bad MAC, %llu revoked, %llu issuer removed, %llu malformed, %llu duplicate\n",
                    st.reopen_ms, static_cast<unsigned long long>(r.entries_kept), cc.reopen_parts,
                    static_cast<unsigned long long>(r.dropped_bad_mac), static_cast<unsigned long long>(r.dropped_revoked),
                    static_cast<unsigned long long>(r.dropped_issuer), static_cast<unsigned long long>(r.dropped_malformed),
                    static_cast<unsigned long long>(r.dropped_duplicates));
        std::fflush(stdout);
    } else if (!st.grant_table_note.empty()) {
        std::printf("jitlb: %s\n", st.grant_table_note.c_str());
        std::fflush(stdout);
    }
    StateRegion& state = control->state();
    const size_t counter_blocks = state.worker_stats.size() / block_bytes;
    if (counter_blocks < size_t{n_workers} + 1) die(fmt::format("state file has stats room for {} workers, {} configured", counter_blocks, n_workers));
    // The main lcore's own counters (its gauges, exception traffic), after the
    // workers' blocks; published while grants are staged too, so a producer
    // can pace itself on grant_backlog (jitlb_stage push --max-in-flight).
    WorkerCounters* main_counters =
        new (state.worker_stats.data() + n_workers * block_bytes) WorkerCounters{};
    // Stage what is waiting (tests push services and grants first).
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    if (!start_ports_after.empty()) {
        std::printf("jitlb: waiting for %s before starting ports\n", start_ports_after.c_str());
        std::fflush(stdout);
        while (access(start_ports_after.c_str(), F_OK) != 0 && !g_stop.load()) {
            control->tick();
            publish_control_counters(*control, *main_counters);
            // Before ports start the main lcore keeps the kernel's scheduling.
            const auto pause = main_lcore_pause(control->backlog_length() != 0, false,
                                                std::chrono::microseconds(config.tick_us), std::chrono::nanoseconds{0});
            if (pause.count() > 0) std::this_thread::sleep_for(pause);
        }
    }
    control->drain_all();
    publish_control_counters(*control, *main_counters);

    // Workers: each owns rx queues w, w + W, ... of every port and tx queue
    // `index`; a spread port's one queue belongs to worker (port index % W),
    // which hands frames to the others through their handoff rings.
    Quiescence quiescence(n_workers);
    std::vector<rte_ring*> handoff;
    if (std::any_of(ports.begin(), ports.end(), [](const PortState& p) { return p.spread; }))
        for (uint16_t w = 0; w < n_workers; ++w) {
            handoff.push_back(rte_ring_create(fmt::format("jitlb_rss{}", w).c_str(), kHandoffRingSize,
                                              static_cast<int>(rte_socket_id()), RING_F_SC_DEQ));
            if (handoff.back() == nullptr) die_rte("software RSS ring");
        }
    std::vector<std::unique_ptr<WorkerContext>> workers;
    for (uint16_t w = 0; w < n_workers; ++w) {
        auto ctx = std::make_unique<WorkerContext>();
        ctx->index = w;
        for (size_t i = 0; i < ports.size(); ++i) {
            const PortState& p = ports[i];
            if (p.spread) {
                if (i % n_workers == w) ctx->queues.push_back({p.id, 0, true});
                continue;
            }
            for (uint16_t q = w; q < p.rx_queues; q = static_cast<uint16_t>(q + n_workers)) ctx->queues.push_back({p.id, q});
        }
        ctx->port_index = port_index;
        ctx->handoff = handoff;
        ctx->rss_seed = config.flow_hash_seed ^ kSoftwareRssSeedTweak;
        uint8_t* block = state.worker_stats.data() + w * block_bytes;
        ctx->counters = new (block) WorkerCounters{};
        ctx->per_service = {new (block + shape.services_offset()) ServiceCounters[config.service_capacity + 1]{},
                            config.service_capacity + 1};
        // Already zero (ControlLoop::open), and no packet has been forwarded:
        // the baselines of slots assigned while staging stay true.
        ctx->per_backend = {new (block + shape.backends_offset()) BackendCounters[config.backend_capacity]{},
                            config.backend_capacity};
        NodeIdentity node;
        for (size_t i = 0; i < ports.size(); ++i)
            node.ports.push_back({ports[i].mac, {}, &next_hops[i]->macs, ports[i].config.mtu});
        node.resolver_takes_replies = resolving;
        node.addresses = config.addresses;
        node.outer_source_v4 = config.outer_source_v4;
        node.outer_source_v6 = config.outer_source_v6;
        node.outer_ttl = config.outer_ttl;
        node.flow_hash_seed = config.flow_hash_seed;
        node.ticks_per_second = rte_get_tsc_hz();
        if (has_exception) node.exception_allow = exception_mask(config.exception_allow);
        ConnTableConfig conn{config.conn_table_capacity, config.conn_idle_timeout_ms, config.conn_closed_timeout_ms};
        ctx->pipeline = std::make_unique<Pipeline>(node, conn, control->grants(), *ctx->counters, ctx->per_service,
                                                   ctx->per_backend);
        ctx->services = &services;
        ctx->quiescence = &quiescence;
        ctx->state_header = state.header;
        ctx->pool = pool;
        ctx->stop = &g_stop;
        static_assert(sizeof(DenialSample) % 4 == 0 && std::is_trivially_copyable_v<DenialSample>);
        ctx->denial_ring = rte_ring_create_elem(fmt::format("jitlb_deny{}", w).c_str(), sizeof(DenialSample), 256,
                                                static_cast<int>(rte_socket_id()), RING_F_SP_ENQ | RING_F_SC_DEQ);
        if (ctx->denial_ring == nullptr) die_rte("denial sample ring");
        if (!config.exception_port.empty()) {
            ctx->exception_ring = rte_ring_create(fmt::format("jitlb_exc{}", w).c_str(), kExceptionRingSize,
                                                  static_cast<int>(rte_socket_id()), RING_F_SP_ENQ | RING_F_SC_DEQ);
            if (ctx->exception_ring == nullptr) die_rte("exception ring");
        }
        if (resolving) {
            ctx->resolver_ring = rte_ring_create(fmt::format("jitlb_nh{}", w).c_str(), kResolverRingSize,
                                                 static_cast<int>(rte_socket_id()), RING_F_SP_ENQ | RING_F_SC_DEQ);
            if (ctx->resolver_ring == nullptr) die_rte("next-hop resolver ring");
        }
        if (w == 0 && (has_exception || resolving)) {
            // Worker 0 sends what the kernel and the resolver send: ports may
            // have one tx queue per worker only.
            ctx->from_kernel_ring = rte_ring_create("jitlb_from_kernel", kExceptionRingSize,
                                                    static_cast<int>(rte_socket_id()), RING_F_SP_ENQ | RING_F_SC_DEQ);
            if (ctx->from_kernel_ring == nullptr) die_rte("exception return ring");
        }
        workers.push_back(std::move(ctx));
    }

    for (PortState& p : ports)
        if (const int r = rte_eth_dev_start(p.id); r != 0)
            die(fmt::format("port {}: start: {}", p.config.name, rte_strerror(-r)));
    if (has_exception)
        if (const int r = rte_eth_dev_start(exception_id); r != 0)
            die(fmt::format("exception port: start: {}", rte_strerror(-r)));
    for (auto& w : workers) g_counter_blocks.push_back(w->counters);
    g_counter_blocks.push_back(main_counters);
    g_state = &state;
    g_counters_mapped.store(true, std::memory_order_release);
    if (rte_telemetry_register_cmd("/jitlb/stats", telemetry_stats,
                                   "jitlb's counters, summed over lcores. No parameters") != 0)
        std::fprintf(stderr, "jitlb: telemetry command /jitlb/stats not registered\n");
    if (rte_telemetry_register_cmd("/jitlb/services", telemetry_services,
                                   "forwarded packets and bytes per service, summed over workers. No parameters") != 0)
        std::fprintf(stderr, "jitlb: telemetry command /jitlb/services not registered\n");
    if (rte_telemetry_register_cmd("/jitlb/backends", telemetry_backends,
                                   "forwarded packets and bytes per backend, summed over workers, keyed "
                                   "service/backend. Parameters: a service name (optional)") != 0)
        std::fprintf(stderr, "jitlb: telemetry command /jitlb/backends not registered\n");

    const uint64_t hz = rte_get_tsc_hz();
    const uint64_t started = rte_rdtsc();
    for (uint16_t w = 0; w < n_workers; ++w) {
        workers[w]->last_rx_tsc.store(started, std::memory_order_relaxed);
        if (rte_eal_remote_launch(worker_main, workers[w].get(), worker_lcores[w]) != 0)
            die(fmt::format("cannot launch worker on lcore {}", worker_lcores[w]));
    }
    std::printf("jitlb: running: %u worker(s), %zu port(s)\n", n_workers, ports.size());
    std::fflush(stdout);

    NextHopRelay next_hop_relay{next_hops, port_index, pool, has_exception, exception_id,
                                has_exception ? exception_mask(config.exception_allow) : 0};
    // The main lcore: tick, reclaim, sleep.
    const bool realtime = prioritise_main_lcore(config);
    const auto tick = std::chrono::microseconds(config.tick_us);
    std::string last_error;
    while (!g_stop.load(std::memory_order_relaxed)) {
        const uint64_t tick_start = rte_rdtsc();
        if (g_reload.exchange(false)) control->reload_keys();
        control->tick();
        publish_control_counters(*control, *main_counters);
        if (control->last_error() != last_error) {
            last_error = control->last_error();
            if (!last_error.empty()) std::fprintf(stderr, "jitlb: %s\n", last_error.c_str());
        }
        services.reclaim(quiescence);
        if (has_exception) relay_exception(workers, exception_id, ports[0].id, *main_counters);
        if (resolving) resolve_next_hops(next_hop_relay, workers, *main_counters);
        for (auto& w : workers) {
            DenialSample samples[16];
            const unsigned n = rte_ring_sc_dequeue_burst_elem(w->denial_ring, samples, sizeof(DenialSample), 16, nullptr);
            for (unsigned i = 0; i < n; ++i) control->post_denial(samples[i]);
        }
        if (exit_when_idle_ms != 0) {
            uint64_t last = 0;
            for (auto& w : workers) last = std::max(last, w->last_rx_tsc.load(std::memory_order_relaxed));
            if (rte_rdtsc() - last > exit_when_idle_ms * hz / 1000) g_stop.store(true);
        }
        // Grants waiting for verification: the next tick at once (each tick
        // verifies at most verify_per_tick, so a revocation still waits at most
        // one tick); otherwise sleep, sharing the core. At a real-time priority
        // nothing else on the core would run while a backlog lasts, so there
        // the main lcore sleeps as long as the tick worked (main_lcore_pause).
        // (cycles to ns in double: a tick of seconds, a large reload, would overflow
        // cycles x 1e9 in 64 bits)
        const auto worked = std::chrono::nanoseconds(
            static_cast<int64_t>(static_cast<double>(rte_rdtsc() - tick_start) * 1e9 / static_cast<double>(hz)));
        const auto pause = main_lcore_pause(control->backlog_length() != 0, realtime, tick, worked);
        if (pause.count() > 0) std::this_thread::sleep_for(pause);
    }

    rte_eal_mp_wait_lcore();
    for (auto& w : workers) worker_drain_handoff(*w);
    for (auto& w : workers) worker_release(*w);
    control->tick();  // last events out
    publish_control_counters(*control, *main_counters);
    // The ports' own counters, before they stop: what the PMD missed or could
    // not allocate for (rx_nombuf) is loss jitlb's counters cannot see.
    std::string ports_json;
    for (const PortState& p : ports) {
        rte_eth_stats st{};
        if (rte_eth_stats_get(p.id, &st) != 0) continue;
        ports_json += fmt::format("{}\"{}\": {{\"ipackets\": {}, \"opackets\": {}, \"imissed\": {}, \"ierrors\": {}, "
                                  "\"oerrors\": {}, \"rx_nombuf\": {}}}",
                                  ports_json.empty() ? "" : ", ", p.config.name, st.ipackets, st.opackets, st.imissed,
                                  st.ierrors, st.oerrors, st.rx_nombuf);
    }
    for (PortState& p : ports) {
        rte_eth_dev_stop(p.id);
        rte_eth_dev_close(p.id);
    }
    if (has_exception) {
        rte_eth_dev_stop(exception_id);
        rte_eth_dev_close(exception_id);
    }
    WorkerCounters total{};
    for (auto& w : workers) add_counters(total, *w->counters);
    add_counters(total, *main_counters);
    std::vector<ServiceCounters> per_service(config.service_capacity + 1);
    for (auto& w : workers)
        for (size_t id = 0; id < per_service.size(); ++id) {
            per_service[id].packets += w->per_service[id].packets;
            per_service[id].bytes += w->per_service[id].bytes;
        }
    std::string json = counters_json(total, per_service, *control);
    json.insert(json.size() - 1, ", \"ports\": {" + ports_json + "}");
    json.insert(json.size() - 1, ", \"next_hops\": [" + next_hops_json(next_hops) + "]");
    std::printf("jitlb: counters %s\n", json.c_str());
    if (!stats_json.empty()) {
        std::ofstream out(stats_json);
        out << json << "\n";
        if (!out) die(fmt::format("cannot write {}", stats_json));
    }
    g_counters_mapped.store(false, std::memory_order_release);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // a telemetry read in flight ends
    control.reset();
    rte_eal_cleanup();
    return 0;
}
