// jitlb-pktgen's traffic model (traffic.h).
#include "traffic.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "toml_keys.h"

namespace jitlb::pktgen {

namespace {

constexpr uint16_t kFirstSourcePort = 10000;

uint8_t fill_byte(size_t i) noexcept { return static_cast<uint8_t>(i * 7 + 13); }

const std::array<uint8_t, 9216>& pattern_bytes() {
    static const std::array<uint8_t, 9216> bytes = [] {
        std::array<uint8_t, 9216> b{};
        for (size_t i = 0; i < b.size(); ++i) b[i] = fill_byte(i + kSlab);
        return b;
    }();
    return bytes;
}

void put_u16(uint8_t* p, uint16_t v) noexcept {
    p[0] = static_cast<uint8_t>(v >> 8);
    p[1] = static_cast<uint8_t>(v);
}
uint16_t get_u16(const uint8_t* p) noexcept { return static_cast<uint16_t>(p[0] << 8 | p[1]); }

// Unfolded 16-bit big-endian word sum.
uint64_t word_sum(const uint8_t* p, size_t n) noexcept {
    uint64_t s = 0;
    for (size_t i = 0; i + 1 < n; i += 2) s += get_u16(p + i);
    if (n & 1) s += uint64_t{p[n - 1]} << 8;
    return s;
}
uint16_t fold(uint64_t s) noexcept {
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return static_cast<uint16_t>(s);
}

IpAddress nth_address(const IpAddress& base, uint32_t n) {
    IpAddress a = base;
    const size_t last = a.version == IpVersion::v4 ? 3 : 15;
    uint64_t carry = n;
    for (size_t i = last + 1; i-- > 0 && carry;) {
        const uint64_t v = a.bytes[i] + (carry & 0xff);
        a.bytes[i] = static_cast<uint8_t>(v);
        carry = (carry >> 8) + (v >> 8);
    }
    return a;
}

size_t addr_len(IpVersion v) { return v == IpVersion::v4 ? 4 : 16; }

}  // namespace

std::optional<Expect> expect_by_name(std::string_view name) {
    if (name == "ipip") return Expect::ipip;
    if (name == "gue") return Expect::gue;
    if (name == "l2dsr") return Expect::l2dsr;
    if (name == "reflect") return Expect::reflect;
    return std::nullopt;
}

std::string_view expect_name(Expect e) {
    switch (e) {
        case Expect::ipip: return "ipip";
        case Expect::gue: return "gue";
        case Expect::l2dsr: return "l2dsr";
        case Expect::reflect: return "reflect";
    }
    return "?";
}

std::string_view verdict_name(RxVerdict v) {
    switch (v) {
        case RxVerdict::ok: return "ok";
        case RxVerdict::leaked: return "leaked";
        case RxVerdict::misforwarded: return "misforwarded";
        case RxVerdict::corrupted: return "corrupted";
        case RxVerdict::duplicate: return "duplicate";
        case RxVerdict::reordered: return "reordered";
        case RxVerdict::foreign: return "foreign";
        case RxVerdict::stale: return "stale";
        case RxVerdict::count_: break;
    }
    return "?";
}

void set_imix(TrafficConfig& c) {
    c.sizes = {64, 594, 1518};
    c.size_pattern = {0, 1, 0, 0, 2, 0, 1, 0, 0, 1, 0, 1};  // 7 x 64, 4 x 594, 1 x 1518, spread out
}

std::string set_sizes(TrafficConfig& c, std::string_view text) {
    if (text == "imix") {
        set_imix(c);
        return "";
    }
    std::vector<uint32_t> sizes;
    size_t pos = 0;
    while (pos <= text.size()) {
        const size_t comma = std::min(text.find(',', pos), text.size());
        const std::string_view item = text.substr(pos, comma - pos);
        uint32_t v = 0;
        if (item.empty() || item.size() > 5 || item.find_first_not_of("0123456789") != std::string_view::npos)
            return fmt::format("frame sizes: '{}' is not a number (give e.g. 64 or 64,128,1518 or imix)", item);
        for (char ch : item) v = v * 10 + static_cast<uint32_t>(ch - '0');
        if (v < 64 || v > 9018) return fmt::format("frame size {} is outside 64..9018", v);
        sizes.push_back(v);
        if (sizes.size() > 16) return "at most 16 frame sizes";
        pos = comma + 1;
    }
    c.sizes = sizes;
    c.size_pattern.resize(sizes.size());
    std::iota(c.size_pattern.begin(), c.size_pattern.end(), uint8_t{0});
    return "";
}

std::optional<IpAddress> parse_address(std::string_view text) {
    const std::string s(text);
    IpAddress a;
    if (inet_pton(AF_INET, s.c_str(), a.bytes.data()) == 1) {
        a.version = IpVersion::v4;
        return a;
    }
    if (inet_pton(AF_INET6, s.c_str(), a.bytes.data()) == 1) {
        a.version = IpVersion::v6;
        return a;
    }
    return std::nullopt;
}

std::optional<Mac> parse_mac(std::string_view text) {
    Mac m{};
    if (text.size() != 17) return std::nullopt;
    for (size_t i = 0; i < 6; ++i) {
        unsigned v = 0;
        for (size_t k = 0; k < 2; ++k) {
            const char ch = text[i * 3 + k];
            v <<= 4;
            if (ch >= '0' && ch <= '9') v |= static_cast<unsigned>(ch - '0');
            else if (ch >= 'a' && ch <= 'f') v |= static_cast<unsigned>(ch - 'a' + 10);
            else if (ch >= 'A' && ch <= 'F') v |= static_cast<unsigned>(ch - 'A' + 10);
            else return std::nullopt;
        }
        if (i < 5 && text[i * 3 + 2] != ':') return std::nullopt;
        m[i] = static_cast<uint8_t>(v);
    }
    return m;
}

std::string format_address(const IpAddress& a) {
    char buf[INET6_ADDRSTRLEN] = {};
    inet_ntop(a.version == IpVersion::v4 ? AF_INET : AF_INET6, a.bytes.data(), buf, sizeof buf);
    return buf;
}

uint32_t min_frame_size(IpVersion v, bool tcp) {
    const uint32_t l3 = v == IpVersion::v4 ? 20 : 40;
    const uint32_t stamp = tcp ? 20 + 4 : 8 + 12;  // TCP carries seq and tsc in its header
    return std::max<uint32_t>(64, 14 + l3 + stamp + 4);
}

std::string check_config(const TrafficConfig& c) {
    if (c.services.empty()) return "no service: give --vip (or a [[service]] in --traffic FILE)";
    if (c.sizes.empty() || c.size_pattern.empty()) return "no frame size";
    uint64_t flows = 0;
    for (const ServiceTraffic& s : c.services) {
        const std::string where = s.name.empty() ? format_address(s.vip) : s.name;
        if (s.vip.version == IpVersion::none) return fmt::format("service {}: no VIP", where);
        for (const SourceRange* r : {&s.granted, &s.ungranted}) {
            if (r->count > 0 && r->base.version != s.vip.version)
                return fmt::format("service {}: sources and VIP must be of one family", where);
            if (r->base.version == IpVersion::v4 && r->count > 0 &&
                uint64_t{get_u32(r->base.bytes.data())} + r->count - 1 > UINT32_MAX)
                return fmt::format("service {}: the source range runs past 255.255.255.255", where);
        }
        if (s.granted.count + uint64_t{s.ungranted.count} == 0)
            return fmt::format("service {}: no sources (granted and ungranted are both 0)", where);
        if (s.flows_per_source == 0 || s.flows_per_source > 50000)
            return fmt::format("service {}: flows per source must be 1..50000", where);
        if ((s.expect == Expect::ipip || s.expect == Expect::gue) && s.backends.empty())
            return fmt::format("service {}: expect {} needs the service's backends", where, expect_name(s.expect));
        if (s.expect == Expect::l2dsr && s.backend_macs.empty())
            return fmt::format("service {}: expect l2dsr needs the backends' MACs", where);
        for (uint32_t size : c.sizes) {
            if (size < min_frame_size(s.vip.version, s.tcp))
                return fmt::format("service {}: a {}-byte frame cannot hold IPv{}/{} and the stamp (at least {})", where,
                                   size, s.vip.version == IpVersion::v4 ? 4 : 6, s.tcp ? "TCP" : "UDP",
                                   min_frame_size(s.vip.version, s.tcp));
        }
        flows += (uint64_t{s.granted.count} + s.ungranted.count) * s.flows_per_source;
    }
    if (flows > (uint64_t{1} << 26)) return fmt::format("{} flows: at most {}", flows, uint64_t{1} << 26);
    for (uint8_t i : c.size_pattern)
        if (i >= c.sizes.size()) return "size pattern names a size that is not there";
    return "";
}

std::vector<Flow> make_flows(const TrafficConfig& c) {
    std::vector<Flow> flows;
    for (uint32_t si = 0; si < c.services.size(); ++si) {
        const ServiceTraffic& s = c.services[si];
        for (const bool granted : {true, false}) {
            const SourceRange& r = granted ? s.granted : s.ungranted;
            for (uint32_t n = 0; n < r.count; ++n) {
                const IpAddress src = nth_address(r.base, n);
                for (uint32_t f = 0; f < s.flows_per_source; ++f)
                    flows.push_back({si, src, static_cast<uint16_t>(kFirstSourcePort + f), granted, n});
            }
        }
    }
    return flows;
}

std::vector<uint32_t> make_tx_order(size_t flows, uint64_t seed) {
    std::vector<uint32_t> order(flows);
    std::iota(order.begin(), order.end(), 0u);
    std::mt19937_64 rng(seed);
    std::shuffle(order.begin(), order.end(), rng);
    return order;
}

std::span<const uint8_t> fill_pattern() { return pattern_bytes(); }

Template build_template(const TrafficConfig& c, const Flow& flow, uint32_t flow_index, uint32_t size) {
    const ServiceTraffic& s = c.services[flow.service];
    const bool v4 = s.vip.version == IpVersion::v4;
    const uint32_t len = size - 4;
    std::vector<uint8_t> f(len);
    for (size_t i = 0; i < len; ++i) f[i] = fill_byte(i);
    std::copy(c.dst_mac.begin(), c.dst_mac.end(), f.begin());
    std::copy(c.src_mac.begin(), c.src_mac.end(), f.begin() + 6);
    put_u16(&f[12], v4 ? 0x0800 : 0x86dd);
    const uint8_t proto = s.tcp ? 6 : 17;
    const size_t l3 = 14, l4 = l3 + (v4 ? 20 : 40);
    const size_t alen = addr_len(s.vip.version);
    if (v4) {
        std::fill(f.begin() + l3, f.begin() + l4, 0);
        f[l3] = 0x45;
        put_u16(&f[l3 + 2], static_cast<uint16_t>(len - l3));
        put_u16(&f[l3 + 6], 0x4000);  // DF
        f[l3 + 8] = 64;
        f[l3 + 9] = proto;
        std::memcpy(&f[l3 + 12], flow.source.bytes.data(), 4);
        std::memcpy(&f[l3 + 16], s.vip.bytes.data(), 4);
        put_u16(&f[l3 + 10], static_cast<uint16_t>(~fold(word_sum(&f[l3], 20)) & 0xffff));
    } else {
        std::fill(f.begin() + l3, f.begin() + l4, 0);
        f[l3] = 0x60;
        put_u16(&f[l3 + 4], static_cast<uint16_t>(len - l4));
        f[l3 + 6] = proto;
        f[l3 + 7] = 64;
        std::memcpy(&f[l3 + 8], flow.source.bytes.data(), 16);
        std::memcpy(&f[l3 + 24], s.vip.bytes.data(), 16);
    }
    Template t;
    t.len = static_cast<uint16_t>(len);
    t.flow = flow_index;
    t.l3_off = static_cast<uint16_t>(l3);
    put_u16(&f[l4], flow.sport);
    put_u16(&f[l4 + 2], s.port);
    size_t payload;
    if (s.tcp) {
        std::fill(f.begin() + l4 + 4, f.begin() + l4 + 20, 0);
        t.seq_off = static_cast<uint16_t>(l4 + 4);
        t.tsc_off = static_cast<uint16_t>(l4 + 8);
        f[l4 + 12] = 5 << 4;
        f[l4 + 13] = 0x10;  // ACK: a flow in progress (the first packet still makes a connection entry)
        put_u16(&f[l4 + 14], 65535);
        t.csum_off = static_cast<uint16_t>(l4 + 16);
        payload = l4 + 20;
        put_u32(&f[payload], flow_index);
    } else {
        put_u16(&f[l4 + 4], static_cast<uint16_t>(len - l4));
        put_u16(&f[l4 + 6], 0);
        payload = l4 + 8;
        put_u32(&f[payload], flow_index);
        t.seq_off = static_cast<uint16_t>(payload + 4);
        t.tsc_off = static_cast<uint16_t>(payload + 8);
        std::fill(f.begin() + static_cast<long>(payload) + 4, f.begin() + static_cast<long>(payload) + 12, 0);
        t.csum_off = v4 ? 0 : static_cast<uint16_t>(l4 + 6);
    }
    if (t.csum_off != 0 || s.tcp) {
        // Pseudo-header + segment with the stamp words and the checksum field zero.
        uint64_t sum = word_sum(&f[l3 + (v4 ? 12 : 8)], 2 * alen);
        sum += proto + (len - l4);
        sum += word_sum(&f[l4], len - l4);
        t.csum_base = fold(sum);
    }
    std::memcpy(t.head.data(), f.data(), std::min<size_t>(len, kSlab));
    return t;
}

namespace {

// Copies len bytes (32..kSlab) in 32-byte moves, the last one overlapping:
// fixed-size copies the compiler turns into vector loads and stores. A memcpy
// of a variable length up to 128 was inlined as `rep movsq`, which took 3/4 of
// the time of write_frame on an Intel VM (docs/pktgen.md, "Sending").
inline void copy_head(uint8_t* out, const uint8_t* in, size_t len) noexcept {
    static_assert(kSlab <= 128, "copy_head moves at most four 32-byte blocks");
    if (len < 32) {
        std::memcpy(out, in, len);
        return;
    }
    std::memcpy(out, in, 32);
    if (len > 64) {
        std::memcpy(out + 32, in + 32, 32);
        if (len > 96) std::memcpy(out + 64, in + 64, 32);
    }
    std::memcpy(out + len - 32, in + len - 32, 32);
}

}  // namespace

void write_frame(const Template& t, uint8_t* out, uint32_t seq, uint32_t tsc) noexcept {
    if (t.len <= kSlab) {
        copy_head(out, t.head.data(), t.len);
    } else {
        std::memcpy(out, t.head.data(), kSlab);
        std::memcpy(out + kSlab, pattern_bytes().data(), t.len - kSlab);
    }
    put_u32(out + t.seq_off, seq);
    put_u32(out + t.tsc_off, tsc);
    if (t.csum_off != 0) put_u16(out + t.csum_off, stamped_checksum(t, seq, tsc));
}

// --- the histogram ---------------------------------------------------------------------------

uint64_t LatencyHistogram::bucket_upper(unsigned b) noexcept {
    if (b < (1u << kSubBits)) return b;
    const unsigned shift = (b >> kSubBits) - 1;
    const uint64_t sub = b & ((1u << kSubBits) - 1);
    const uint64_t lower = ((uint64_t{1} << kSubBits) | sub) << shift;
    return lower + ((uint64_t{1} << shift) - 1);
}

void LatencyHistogram::merge(const LatencyHistogram& o) noexcept {
    for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += o.counts_[i];
    n_ += o.n_;
    sum_ += o.sum_;
    min_ = std::min(min_, o.min_);
    max_ = std::max(max_, o.max_);
}

uint64_t LatencyHistogram::quantile(double q) const noexcept {
    if (n_ == 0) return 0;
    q = std::clamp(q, 0.0, 1.0);
    // The rank of the sample at quantile q, 1-based: ceil(q * n), at least 1.
    uint64_t rank = static_cast<uint64_t>(q * static_cast<double>(n_));
    if (static_cast<double>(rank) < q * static_cast<double>(n_)) ++rank;
    rank = std::max<uint64_t>(rank, 1);
    uint64_t seen = 0;
    for (unsigned b = 0; b < kBuckets; ++b) {
        seen += counts_[b];
        if (seen >= rank) return std::clamp(bucket_upper(b), min(), max_);
    }
    return max_;
}

// --- the RX checks -------------------------------------------------------------------------

RxChecker::RxChecker(const TrafficConfig& c, std::span<const Flow> flows, std::span<const Template> templates)
    : services_(c.services), sizes_(c.sizes), flows_(flows), templates_(templates) {}

const Template* RxChecker::template_for(uint32_t flow, uint32_t frame_len) const noexcept {
    for (size_t i = 0; i < sizes_.size(); ++i)
        if (sizes_[i] - 4 == frame_len) return &templates_[size_t{flow} * sizes_.size() + i];
    return nullptr;
}

// The received L3 bytes against the template's, but for the stamp and the checksum.
bool RxChecker::same_as_sent(const Template& t, const uint8_t* l3, uint32_t l3_len) const noexcept {
    if (l3_len + t.l3_off != t.len) return false;
    std::array<uint16_t, 3> skip{t.seq_off, t.tsc_off, t.csum_off};
    std::array<uint16_t, 3> width{4, 4, 2};
    // Sort the (at most three) holes by offset; a zero csum_off is no hole.
    for (int i = 0; i < 3; ++i)
        for (int j = i + 1; j < 3; ++j)
            if (skip[j] < skip[i]) std::swap(skip[i], skip[j]), std::swap(width[i], width[j]);
    const auto frame_byte_range_equal = [&](uint32_t from, uint32_t to) {
        // Frame offsets [from, to): template head below kSlab, the pattern above.
        if (from >= to) return true;
        const uint8_t* got = l3 + (from - t.l3_off);
        const uint32_t head_end = std::min<uint32_t>(to, kSlab);
        if (from < head_end && std::memcmp(got, t.head.data() + from, head_end - from) != 0) return false;
        if (to > kSlab) {
            const uint32_t p = std::max<uint32_t>(from, kSlab);
            if (std::memcmp(l3 + (p - t.l3_off), pattern_bytes().data() + (p - kSlab), to - p) != 0) return false;
        }
        return true;
    };
    uint32_t at = t.l3_off;
    for (int i = 0; i < 3; ++i) {
        if (skip[i] == 0) continue;
        if (!frame_byte_range_equal(at, skip[i])) return false;
        at = skip[i] + width[i];
    }
    return frame_byte_range_equal(at, t.len);
}

uint32_t RxChecker::backend_index(const ServiceTraffic& s, IpVersion v, const uint8_t* addr) const noexcept {
    for (uint32_t i = 0; i < s.backends.size(); ++i)
        if (s.backends[i].version == v && std::memcmp(s.backends[i].bytes.data(), addr, addr_len(v)) == 0) return i;
    return UINT32_MAX;
}

RxResult RxChecker::check(const uint8_t* frame, uint32_t len, std::span<FlowRx> state,
                          uint64_t rx_tsc) const noexcept {
    RxResult r;
    if (len < 14 + 20) return r;
    const uint16_t ethertype = get_u16(frame + 12);
    // Find the client's packet: behind an outer IP header (IP-in-IP, GUE) or right after Ethernet.
    Expect kind = Expect::reflect;
    uint32_t inner = 14;
    IpVersion outer_v = IpVersion::none;
    const uint8_t* outer_dst = nullptr;
    uint16_t udp_dport = 0;
    if (ethertype == 0x0800 && (frame[14] >> 4) == 4) {
        const uint32_t ihl = (frame[14] & 15u) * 4;
        const uint8_t proto = frame[23];
        if ((proto == 4 || proto == 41) && len >= 14 + ihl) {
            kind = Expect::ipip, inner = 14 + ihl, outer_v = IpVersion::v4, outer_dst = frame + 30;
        } else if (proto == 17 && len >= 14 + ihl + 8 + 20 && (frame[14 + ihl + 8] >> 4 == 4 || frame[14 + ihl + 8] >> 4 == 6)) {
            udp_dport = get_u16(frame + 14 + ihl + 2);
            for (const ServiceTraffic& s : services_)
                if (s.expect == Expect::gue && s.gue_port == udp_dport)
                    kind = Expect::gue, inner = 14 + ihl + 8, outer_v = IpVersion::v4, outer_dst = frame + 30;
        }
    } else if (ethertype == 0x86dd && len >= 14 + 40 + 20 && (frame[14] >> 4) == 6) {
        const uint8_t nh = frame[20];
        if (nh == 4 || nh == 41) {
            kind = Expect::ipip, inner = 54, outer_v = IpVersion::v6, outer_dst = frame + 38;
        } else if (nh == 17 && len >= 14 + 40 + 8 + 20) {
            udp_dport = get_u16(frame + 56);
            for (const ServiceTraffic& s : services_)
                if (s.expect == Expect::gue && s.gue_port == udp_dport)
                    kind = Expect::gue, inner = 62, outer_v = IpVersion::v6, outer_dst = frame + 38;
        }
    } else if (ethertype != 0x0800 && ethertype != 0x86dd) {
        return r;  // ARP, LLDP, ...: not ours
    }
    if (len < inner + 20) return r;
    const uint8_t* l3 = frame + inner;
    const uint32_t room = len - inner;
    // The packet's own length: a NIC may pad a short frame to 60 bytes.
    uint32_t l4, proto, l3_len;
    if ((l3[0] >> 4) == 4) {
        if ((l3[0] & 15) != 5) return r;
        l4 = 20, proto = l3[9], l3_len = get_u16(l3 + 2);
    } else if ((l3[0] >> 4) == 6 && room >= 40) {
        l4 = 40, proto = l3[6], l3_len = 40u + get_u16(l3 + 4);
    } else {
        return r;
    }
    if (l3_len > room) l3_len = room;  // a lying length: the template comparison finds it
    if (proto != 6 && proto != 17) return r;
    const uint32_t flow_off = l4 + (proto == 6 ? 20 : 8);
    if (l3_len < flow_off + 4) return r;
    const uint32_t flow = get_u32(l3 + flow_off);
    if (flow >= flows_.size()) return r;
    const Template* t = template_for(flow, l3_len + 14);
    r.flow = flow;
    if (t == nullptr || !same_as_sent(*t, l3, l3_len)) {
        r.verdict = RxVerdict::corrupted;
        return r;
    }
    const uint32_t seq = get_u32(l3 + (t->seq_off - t->l3_off));
    r.tx_tsc = get_u32(l3 + (t->tsc_off - t->l3_off));
    if (t->csum_off != 0 &&
        get_u16(l3 + (t->csum_off - t->l3_off)) != stamped_checksum(*t, seq, r.tx_tsc)) {
        r.verdict = RxVerdict::corrupted;
        return r;
    }
    const Flow& fl = flows_[flow];
    const ServiceTraffic& s = services_[fl.service];
    if (!fl.granted) {
        r.verdict = RxVerdict::leaked;
        return r;
    }
    FlowRx& st = state[flow];
    // Sent in an earlier trial (sequence numbers go on across trials): judged
    // there, or lost to it; not this trial's duplicate or reordered frame.
    if (seq <= st.floor) {
        r.verdict = RxVerdict::stale;
        return r;
    }
    // Where it went.
    uint32_t backend = 0;
    const bool plain = kind == Expect::reflect;
    if (plain ? (s.expect != Expect::reflect && s.expect != Expect::l2dsr) : s.expect != kind) {
        r.verdict = RxVerdict::misforwarded;
        return r;
    }
    if (s.expect == Expect::ipip || s.expect == Expect::gue) {
        backend = backend_index(s, outer_v, outer_dst);
        if (s.expect == Expect::gue && udp_dport != s.gue_port) backend = UINT32_MAX;
    } else if (s.expect == Expect::l2dsr) {
        backend = UINT32_MAX;
        for (uint32_t i = 0; i < s.backend_macs.size(); ++i)
            if (std::memcmp(s.backend_macs[i].data(), frame, 6) == 0) backend = i;
    }
    if (backend == UINT32_MAX || (st.backend != UINT32_MAX && st.backend != backend)) {
        r.verdict = RxVerdict::misforwarded;
        return r;
    }
    st.backend = backend;
    // The sequence window.
    if (seq > st.highest) {
        const uint32_t d = seq - st.highest;
        st.window = d >= 64 ? 1 : (st.window << d) | 1;
        st.highest = seq;
        r.verdict = RxVerdict::ok;
    } else {
        const uint32_t d = st.highest - seq;
        if (d < 64 && (st.window >> d & 1)) {
            r.verdict = RxVerdict::duplicate;
            return r;
        }
        if (d < 64) st.window |= uint64_t{1} << d;
        r.verdict = RxVerdict::reordered;
    }
    if (st.packets++ == 0) st.first_tsc = rx_tsc;
    st.last_tsc = rx_tsc;
    return r;
}

// --- the traffic file ------------------------------------------------------------------------

namespace {

struct FileError {
    std::string message;
};

std::string str_of(const toml::table& t, std::string_view key, const std::string& where) {
    const toml::node* n = t.get(key);
    if (n == nullptr) throw FileError{fmt::format("{}{}: missing", where, key)};
    if (!n->is_string())
        throw FileError{fmt::format("{}{}: expected a string, got {}", where, key, toml_keys::type_name(*n))};
    return n->as_string()->get();
}

int64_t int_of(const toml::table& t, std::string_view key, const std::string& where, int64_t lo, int64_t hi,
               int64_t fallback) {
    const toml::node* n = t.get(key);
    if (n == nullptr) return fallback;
    if (!n->is_integer())
        throw FileError{fmt::format("{}{}: expected an integer, got {}", where, key, toml_keys::type_name(*n))};
    const int64_t v = n->as_integer()->get();
    if (v < lo || v > hi) throw FileError{fmt::format("{}{}: {} is outside {}..{}", where, key, v, lo, hi)};
    return v;
}

void refuse_unknown(const toml::table& t, std::initializer_list<std::string_view> known, const std::string& where) {
    if (const toml::key* k = toml_keys::first_unknown_key(t, known))
        throw FileError{fmt::format("{}{}: unknown key{}", where, k->str(), toml_keys::did_you_mean(k->str(), known))};
}

SourceRange range_of(const toml::table& t, std::string_view key, const std::string& where) {
    const toml::node* n = t.get(key);
    if (n == nullptr) return {};
    if (!n->is_table()) throw FileError{fmt::format("{}{}: expected a table {{ base = \"...\", count = N }}", where, key)};
    const toml::table& r = *n->as_table();
    const std::string inner = fmt::format("{}{}.", where, key);
    refuse_unknown(r, {"base", "count"}, inner);
    SourceRange out;
    const auto base = parse_address(str_of(r, "base", inner));
    if (!base) throw FileError{fmt::format("{}base: not an IPv4 or IPv6 address", inner)};
    out.base = *base;
    out.count = static_cast<uint32_t>(int_of(r, "count", inner, 0, 1 << 24, 0));
    return out;
}

}  // namespace

std::string load_traffic_file(const std::string& path, TrafficConfig& c) {
    toml::table root;
    try {
        root = toml::parse_file(path);
    } catch (const toml::parse_error& e) {
        return fmt::format("{}: line {}: {}", path, e.source().begin.line, e.description());
    }
    const std::string where = path + ": ";
    try {
        refuse_unknown(root, {"src_mac", "dst_mac", "sizes", "seed", "service"}, where);
        for (const char* key : {"src_mac", "dst_mac"}) {
            if (root.get(key) == nullptr) continue;
            const auto mac = parse_mac(str_of(root, key, where));
            if (!mac) throw FileError{fmt::format("{}{}: not a MAC address (02:00:00:00:00:01)", where, key)};
            (std::string_view(key) == "src_mac" ? c.src_mac : c.dst_mac) = *mac;
        }
        if (const toml::node* n = root.get("sizes")) {
            std::string text;
            if (n->is_string()) {
                text = n->as_string()->get();
            } else if (n->is_integer()) {
                text = std::to_string(n->as_integer()->get());
            } else if (n->is_array()) {
                for (const toml::node& e : *n->as_array()) {
                    if (!e.is_integer()) throw FileError{fmt::format("{}sizes: expected integers", where)};
                    text += (text.empty() ? "" : ",") + std::to_string(e.as_integer()->get());
                }
            } else {
                throw FileError{fmt::format("{}sizes: expected \"imix\", a size or a list of sizes", where)};
            }
            if (const std::string e = set_sizes(c, text); !e.empty()) throw FileError{where + "sizes: " + e};
        }
        c.seed = static_cast<uint64_t>(int_of(root, "seed", where, 0, INT64_MAX, static_cast<int64_t>(c.seed)));
        const toml::array* services = root["service"].as_array();
        if (services == nullptr) throw FileError{where + "service: expected [[service]] tables"};
        c.services.clear();
        for (size_t i = 0; i < services->size(); ++i) {
            const toml::table* t = (*services)[i].as_table();
            const std::string at = fmt::format("{}service[{}].", where, i);
            if (t == nullptr) throw FileError{at + ": expected a table"};
            refuse_unknown(*t,
                           {"name", "vip", "port", "protocol", "expect", "backends", "backend_macs", "gue_port",
                            "granted", "ungranted", "flows_per_source"},
                           at);
            ServiceTraffic s;
            if (t->get("name")) s.name = str_of(*t, "name", at);
            const auto vip = parse_address(str_of(*t, "vip", at));
            if (!vip) throw FileError{at + "vip: not an IPv4 or IPv6 address"};
            s.vip = *vip;
            s.port = static_cast<uint16_t>(int_of(*t, "port", at, 1, 65535, 80));
            if (t->get("protocol")) {
                const std::string p = str_of(*t, "protocol", at);
                if (p != "tcp" && p != "udp") throw FileError{at + "protocol: \"tcp\" or \"udp\""};
                s.tcp = p == "tcp";
            }
            if (t->get("expect")) {
                const auto e = expect_by_name(str_of(*t, "expect", at));
                if (!e) throw FileError{at + "expect: one of \"ipip\", \"gue\", \"l2dsr\", \"reflect\""};
                s.expect = *e;
            }
            for (const char* key : {"backends", "backend_macs"}) {
                const toml::node* n = t->get(key);
                if (n == nullptr) continue;
                if (!n->is_array()) throw FileError{fmt::format("{}{}: expected a list of strings", at, key)};
                for (const toml::node& e : *n->as_array()) {
                    if (!e.is_string()) throw FileError{fmt::format("{}{}: expected a list of strings", at, key)};
                    const std::string v = e.as_string()->get();
                    if (std::string_view(key) == "backends") {
                        const auto a = parse_address(v);
                        if (!a) throw FileError{fmt::format("{}{}: '{}' is not an address", at, key, v)};
                        s.backends.push_back(*a);
                    } else {
                        const auto m = parse_mac(v);
                        if (!m) throw FileError{fmt::format("{}{}: '{}' is not a MAC address", at, key, v)};
                        s.backend_macs.push_back(*m);
                    }
                }
            }
            s.gue_port = static_cast<uint16_t>(int_of(*t, "gue_port", at, 1, 65535, 6080));
            s.granted = range_of(*t, "granted", at);
            s.ungranted = range_of(*t, "ungranted", at);
            s.flows_per_source = static_cast<uint32_t>(int_of(*t, "flows_per_source", at, 1, 50000, 1));
            c.services.push_back(std::move(s));
        }
    } catch (const FileError& e) {
        return e.message;
    }
    return "";
}

}  // namespace jitlb::pktgen
