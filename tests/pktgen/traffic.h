// jitlb-pktgen's traffic model, without DPDK: the flow mix, the frame
// templates, what the TX path writes into a template (a sequence number and a
// timestamp, and the L4 checksum they change), the checks on what comes back,
// and the latency histogram. pktgen.cc moves these bytes through DPDK ports;
// the unit tests (tests/pktgen/test_traffic.cc) drive them directly.
//
// A frame size counts the 4-byte FCS, as RFC 2544 does: a 64-byte frame is 60
// bytes in the mbuf. Every frame carries a stamp in its L4 part:
//   flow index  u32, constant per template (first 4 bytes of the L4 payload)
//   sequence    u32, per flow           TCP: the sequence number field
//   timestamp   u32, low bits of the TSC TCP: the acknowledgement field
// (UDP: the three words after each other at the start of the payload.) So a
// 64-byte IPv4 frame carries TCP or UDP; IPv6 needs 78 bytes (UDP) or 82 (TCP).
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "flow.h"

namespace jitlb::pktgen {

using Mac = std::array<uint8_t, 6>;

// What a service does to the frames that pass, which the RX side checks.
enum class Expect : uint8_t {
    ipip,     // IP-in-IP (any family mix) towards one of the backends
    gue,      // GUE variant 1 (outer UDP to gue_port) towards one of the backends
    l2dsr,    // the frame unchanged but for the MACs: destination = a backend's MAC
    reflect,  // the frame comes back as sent (dpdk-testpmd io / macswap): a baseline
};
std::optional<Expect> expect_by_name(std::string_view name);
std::string_view expect_name(Expect e);

struct SourceRange {
    IpAddress base;      // first address; the next ones count up
    uint32_t count = 0;
};

struct ServiceTraffic {
    std::string name;  // for reports
    IpAddress vip;
    uint16_t port = 80;
    bool tcp = true;   // false: UDP
    Expect expect = Expect::ipip;
    std::vector<IpAddress> backends;  // ipip, gue
    std::vector<Mac> backend_macs;    // l2dsr
    uint16_t gue_port = 6080;
    SourceRange granted;    // sources that hold a grant: their packets must come back
    SourceRange ungranted;  // sources without one: nothing of theirs may come back
    uint32_t flows_per_source = 1;  // source ports 10000, 10001, ...
};

struct TrafficConfig {
    Mac src_mac{0x02, 0, 0, 0, 0x0a, 0x01};  // the generator's
    Mac dst_mac{0x02, 0, 0, 0, 0x0b, 0x01};  // the device under test's
    std::vector<ServiceTraffic> services;
    std::vector<uint32_t> sizes{64};      // frame sizes with FCS, 64..9018 (the port's MTU is not raised: >1518 untested)
    std::vector<uint8_t> size_pattern{0};  // indices into sizes, one per packet in turn (IMIX)
    uint64_t seed = 1;                    // the order flows take turns in
};

// The classic simple IMIX: 64, 594 and 1518 bytes in the ratio 7:4:1.
void set_imix(TrafficConfig& c);
// "64", "64,128,1518" or "imix". Returns an error message, or "" when set.
std::string set_sizes(TrafficConfig& c, std::string_view text);

// Address and MAC text, strict. nullopt when malformed.
std::optional<IpAddress> parse_address(std::string_view text);
std::optional<Mac> parse_mac(std::string_view text);
std::string format_address(const IpAddress& a);

// Reads a traffic TOML file (docs/pktgen.md) into `c`; returns "" or
// "FILE: KEY: what is wrong".
std::string load_traffic_file(const std::string& path, TrafficConfig& c);
// Checks a config: families match, sizes hold the stamp, counts fit. "" or the problem.
std::string check_config(const TrafficConfig& c);

// The smallest frame (with FCS) that holds the headers and the stamp.
uint32_t min_frame_size(IpVersion v, bool tcp);

struct Flow {
    uint32_t service = 0;
    IpAddress source;
    uint16_t sport = 0;
    bool granted = false;
    uint32_t source_index = 0;  // in the service's granted (or ungranted) range
};

// Every flow of the config: per service, granted sources then ungranted, each
// with flows_per_source source ports. The flow index is the position here.
std::vector<Flow> make_flows(const TrafficConfig& c);
// The order TX takes flows in: a fixed pseudo-random permutation of all flow
// indices (consecutive packets come from different sources, as on a real link).
std::vector<uint32_t> make_tx_order(size_t flows, uint64_t seed);

inline constexpr size_t kSlab = 128;  // template bytes kept per (flow, size); the rest is the fill pattern

// One frame, ready but for the stamp: the first min(len, kSlab) bytes; bytes
// beyond come from fill_pattern().
struct alignas(64) Template {
    std::array<uint8_t, kSlab> head{};
    uint16_t len = 0;        // frame bytes without FCS
    uint16_t seq_off = 0;    // where the sequence number goes
    uint16_t tsc_off = 0;    // where the timestamp goes
    uint16_t csum_off = 0;   // the L4 checksum; 0: none to update (IPv4 UDP sends 0)
    uint16_t l3_off = 14;
    uint16_t csum_base = 0;  // ones' complement sum of the pseudo-header and segment, stamp words zero
    uint32_t flow = 0;
};

// The bytes after kSlab: frame byte i (i >= kSlab) is fill_pattern()[i - kSlab].
std::span<const uint8_t> fill_pattern();

// Builds the template of flow `flow` at frame size `size` (with FCS).
Template build_template(const TrafficConfig& c, const Flow& flow, uint32_t flow_index, uint32_t size);

// Writes the template into `out` (len bytes) and stamps it. The TX path.
inline void put_u32(uint8_t* p, uint32_t v) noexcept {
    p[0] = static_cast<uint8_t>(v >> 24);
    p[1] = static_cast<uint8_t>(v >> 16);
    p[2] = static_cast<uint8_t>(v >> 8);
    p[3] = static_cast<uint8_t>(v);
}
inline uint32_t get_u32(const uint8_t* p) noexcept {
    return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
}
// The L4 checksum of a template stamped with (seq, tsc).
inline uint16_t stamped_checksum(const Template& t, uint32_t seq, uint32_t tsc) noexcept {
    uint32_t s = t.csum_base;
    s += (seq >> 16) + (seq & 0xffff) + (tsc >> 16) + (tsc & 0xffff);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    const uint16_t c = static_cast<uint16_t>(~s & 0xffff);
    return c == 0 ? 0xffff : c;  // UDP sends 0xffff for a computed 0 (TCP accepts either)
}
void write_frame(const Template& t, uint8_t* out, uint32_t seq, uint32_t tsc) noexcept;

// The TX schedule at a target rate: a burst of n is due once the TSC reaches
// the schedule's next time, which then moves on by n packets' worth. A TX core
// that was away (preempted, the hypervisor running something else) for up to
// max_lag cycles catches up, so its stalls do not lower the average rate; but
// no faster than (1 + catch_up) times the rate, so that the device under test
// sees a bounded excess for a while rather than a flood at the generator's
// full speed. Behind by more than max_lag, the schedule starts again from now
// and the skipped part is counted (lost_packets, stalls); the catch-ups are
// counted too (catch_ups: times the pacer was behind by more than 4 bursts).
// So a report can tell the pacer's own error from the time its core was taken.
class Pacer {
  public:
    Pacer() = default;
    // cycles_per_packet <= 0: no pacing (every call is due). catch_up <= 0:
    // no limit on the catch-up rate.
    Pacer(double cycles_per_packet, double max_lag_cycles, uint64_t start, double catch_up = 0) noexcept
        : cpp_(cycles_per_packet),
          max_lag_(max_lag_cycles),
          catch_up_cpp_(catch_up > 0 ? cycles_per_packet / (1 + catch_up) : 0),
          start_(static_cast<double>(start)),
          next_(start_),
          floor_(start_) {}
    bool due(uint64_t now, uint16_t n) noexcept {
        if (cpp_ <= 0) return true;
        const double t = static_cast<double>(now);
        if (t < next_ || t < floor_) return false;
        double behind = t - next_;
        if (behind > longest_) {
            longest_ = behind;
            longest_at_ = next_ - start_;
        }
        if (behind > max_lag_) {
            lost_ += behind / cpp_;
            ++stalls_;
            next_ = t;
            behind = 0;
        }
        const bool now_behind = behind > 4 * n * cpp_;
        if (now_behind && !behind_) ++catch_ups_;
        behind_ = now_behind;
        next_ += n * cpp_;
        // The earliest time of the next burst at the highest catch-up rate;
        // on schedule, next_ comes later and decides.
        floor_ = std::max(floor_, t - n * catch_up_cpp_) + n * catch_up_cpp_;
        return true;
    }
    double lost_packets() const noexcept { return lost_; }
    uint64_t stalls() const noexcept { return stalls_; }
    uint64_t catch_ups() const noexcept { return catch_ups_; }
    // The longest the pacer was behind (cycles), and when, from the start,
    // that stall began: where a trial lost its core, for the report.
    double longest_behind() const noexcept { return longest_; }
    double longest_behind_at() const noexcept { return longest_at_; }

  private:
    double cpp_ = 0, max_lag_ = 0, catch_up_cpp_ = 0, start_ = 0, next_ = 0, floor_ = 0, lost_ = 0;
    double longest_ = 0, longest_at_ = 0;
    uint64_t stalls_ = 0, catch_ups_ = 0;
    bool behind_ = false;
};

// Latency histogram over TSC cycles: log-linear buckets (64 per power of two:
// at most 1/64 = 1.6% relative error), no per-sample storage, no sort.
class LatencyHistogram {
  public:
    static constexpr unsigned kSubBits = 6;
    static constexpr unsigned kBuckets = (64 - kSubBits + 1) << kSubBits;
    void add(uint64_t cycles) noexcept {
        ++counts_[bucket_of(cycles)];
        ++n_;
        sum_ += cycles;
        if (cycles < min_) min_ = cycles;
        if (cycles > max_) max_ = cycles;
    }
    void merge(const LatencyHistogram& o) noexcept;
    void clear() noexcept { *this = LatencyHistogram{}; }
    uint64_t count() const noexcept { return n_; }
    uint64_t min() const noexcept { return n_ ? min_ : 0; }
    uint64_t max() const noexcept { return max_; }
    double mean() const noexcept { return n_ ? static_cast<double>(sum_) / static_cast<double>(n_) : 0.0; }
    // The value at quantile q (0..1): the upper edge of its bucket, clamped to max.
    uint64_t quantile(double q) const noexcept;
    static unsigned bucket_of(uint64_t v) noexcept {
        if (v < (uint64_t{1} << kSubBits)) return static_cast<unsigned>(v);
        const unsigned msb = 63u - static_cast<unsigned>(__builtin_clzll(v));
        const unsigned shift = msb - kSubBits;
        return ((shift + 1) << kSubBits) + static_cast<unsigned>((v >> shift) & ((1u << kSubBits) - 1));
    }
    static uint64_t bucket_upper(unsigned b) noexcept;  // largest value in bucket b

  private:
    std::array<uint64_t, kBuckets> counts_{};
    uint64_t n_ = 0;
    uint64_t sum_ = 0;
    uint64_t min_ = UINT64_MAX;
    uint64_t max_ = 0;
};

// What the RX side found in one frame.
enum class RxVerdict : uint8_t {
    ok,            // a granted flow's frame, through the right backend, inner unchanged
    leaked,        // a frame of a source without a grant came back: must never happen
    misforwarded,  // wrong encapsulation, a destination that is not one of the service's
                   // backends, or a flow that moved to another backend mid-trial
    corrupted,     // the inner packet differs from what was sent
    duplicate,     // this flow's sequence number was seen already
    reordered,     // older than a sequence number already seen in this flow
    foreign,       // not a frame of ours (ARP, a frame of another generator, ...)
    stale,         // a frame of an earlier trial, still in flight when this one began
    count_
};
std::string_view verdict_name(RxVerdict v);

// Per-flow receive state (reset every trial).
struct FlowRx {
    uint32_t floor = 0;      // the last sequence number sent before this trial: at or below is stale
    uint32_t highest = 0;    // highest sequence number seen (0: none yet)
    uint64_t window = 0;     // bit i: highest - i seen
    uint32_t backend = UINT32_MAX;  // index of the backend it went to
    uint32_t packets = 0;
    uint64_t first_tsc = 0;  // TSC of its first and last frame back
    uint64_t last_tsc = 0;
};

struct RxResult {
    RxVerdict verdict = RxVerdict::foreign;
    uint32_t flow = UINT32_MAX;
    uint32_t tx_tsc = 0;  // the stamp (for latency), valid unless foreign/corrupted
};

// Checks received frames against the templates. Immutable after construction
// but for the FlowRx array, which the caller owns (one writer).
class RxChecker {
  public:
    // templates[flow * sizes + size index]
    RxChecker(const TrafficConfig& c, std::span<const Flow> flows, std::span<const Template> templates);
    RxResult check(const uint8_t* frame, uint32_t len, std::span<FlowRx> state, uint64_t rx_tsc) const noexcept;

  private:
    const Template* template_for(uint32_t flow, uint32_t frame_len) const noexcept;
    bool same_as_sent(const Template& t, const uint8_t* l3, uint32_t l3_len) const noexcept;
    uint32_t backend_index(const ServiceTraffic& s, IpVersion v, const uint8_t* addr) const noexcept;

    std::vector<ServiceTraffic> services_;
    std::vector<uint32_t> sizes_;
    std::span<const Flow> flows_;
    std::span<const Template> templates_;
};

}  // namespace jitlb::pktgen
