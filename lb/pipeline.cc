// The worker's per-burst pipeline (pipeline.h).
#include "pipeline.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "flow_hash.h"
#include "maglev.h"

namespace jitlb::lb {

namespace {

constexpr uint8_t kTcpFin = 0x01;
constexpr uint8_t kTcpSyn = 0x02;
constexpr uint8_t kTcpRst = 0x04;
constexpr uint8_t kTcpAck = 0x10;
constexpr uint8_t kProtoIcmp = 1;
constexpr uint8_t kProtoIcmpv6 = 58;
constexpr uint32_t kConnProbe = 8;  // slots a flow may sit from its home

inline uint32_t load_be32(const uint8_t* p) noexcept {
    return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
}
inline void store_be32(uint8_t* p, uint32_t v) noexcept {
    p[0] = static_cast<uint8_t>(v >> 24);
    p[1] = static_cast<uint8_t>(v >> 16);
    p[2] = static_cast<uint8_t>(v >> 8);
    p[3] = static_cast<uint8_t>(v);
}

uint16_t icmpv6_checksum(const uint8_t* ip6, const uint8_t* icmp, uint32_t len) noexcept {
    uint32_t sum = 0;
    for (int i = 0; i < 32; i += 2) sum += load_be16(ip6 + 8 + i);  // source and destination
    sum += len >> 16;
    sum += len & 0xffff;
    sum += kProtoIcmpv6;
    const uint16_t folded = ones_complement_sum({icmp, len}, sum);
    const uint16_t c = static_cast<uint16_t>(~folded);
    return c;
}

bool same_address(const IpAddress& a, IpVersion v, const uint8_t* bytes) noexcept {
    return a.version == v && std::memcmp(a.bytes.data(), bytes, v == IpVersion::v4 ? 4 : 16) == 0;
}

inline uint64_t backend_key(const BackendInfo& b) noexcept { return b.id_hash; }

}  // namespace

// --- connection table -------------------------------------------------------

ConnTable::ConnTable(const ConnTableConfig& config, uint64_t ticks_per_second)
    : slots_(std::bit_ceil(std::max<uint32_t>(config.capacity, kConnProbe))),
      mask_(slots_.size() - 1),
      idle_ticks_(config.idle_timeout_ms * ticks_per_second / 1000),
      closed_ticks_(config.closed_timeout_ms * ticks_per_second / 1000) {}

namespace {

// FlowTuple equality as five 8-byte words (the tuple is 40 bytes with zero
// padding): no call to memcmp on the per-packet path.
inline bool same_flow(const FlowTuple& a, const FlowTuple& b) noexcept {
    static_assert(sizeof(FlowTuple) == 40);
    uint64_t x[5], y[5];
    std::memcpy(x, &a, sizeof x);
    std::memcpy(y, &b, sizeof y);
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0;
}

}  // namespace

ConnTable::Entry* ConnTable::find(const FlowTuple& flow, uint64_t hash, uint64_t now) noexcept {
    for (uint32_t d = 0; d < kConnProbe; ++d) {
        Entry& e = slots_[(hash + d) & mask_];
        if (e.expires > now && same_flow(e.flow, flow)) return &e;
    }
    return nullptr;
}

ConnTable::Entry* ConnTable::insert(const FlowTuple& flow, uint64_t hash, uint64_t now) noexcept {
    for (uint32_t d = 0; d < kConnProbe; ++d) {
        Entry& e = slots_[(hash + d) & mask_];
        if (e.expires <= now) {  // empty (0) or expired
            e = Entry{};
            e.flow = flow;
            e.expires = now + idle_ticks_;
            return &e;
        }
    }
    return nullptr;
}

void ConnTable::touch(Entry& e, uint64_t now, bool closing) noexcept {
    e.closing = e.closing || closing;
    e.expires = now + (e.closing ? closed_ticks_ : idle_ticks_);
}

size_t ConnTable::live(uint64_t now) const noexcept {
    return static_cast<size_t>(
        std::count_if(slots_.begin(), slots_.end(), [&](const Entry& e) { return e.expires > now; }));
}

// --- forwarding modes -------------------------------------------------------

namespace {

// Everything a forwarder needs about one packet.
struct ForwardJob {
    PacketBuf& pkt;
    const ParsedPacket& parsed;
    const Service& service;
    const BackendInfo& backend;
    uint64_t hash;
};

struct ForwardContext {
    const PortIdentity& port;  // the burst's
    EncapParams ipip;
    EncapParams gue;
    uint64_t next_hop_v4;  // next_hop_word()s for this burst, by the outer family
    uint64_t next_hop_v6;
    WorkerCounters& counters;
    TokenBucket& too_big_limiter;
    uint64_t now;
};

enum class Outcome : uint8_t { dropped, forwarded, answered };

// Turns a packet that does not fit the port once encapsulated into an ICMP
// fragmentation-needed (IPv4 with DF) / packet-too-big (IPv6) from the VIP to
// the client, in place, advertising the MTU minus the encapsulation's
// overhead, so the client's path MTU discovery works through jitlb.
bool write_too_big(PacketBuf& pkt, const ParsedPacket& p, const MacAddress& node_mac, uint32_t mtu) noexcept {
    const uint32_t l3 = p.l3_offset;
    uint8_t* ip = pkt.data + l3;
    const bool v6 = p.flow.version == IpVersion::v6;
    if (!v6 && (ip[6] & 0x40) == 0) return false;  // no DF: not the client's to fix (dropped, counted)
    const uint32_t hdr = v6 ? 48 : 28;              // IP + ICMP headers in front of the quote
    const uint32_t limit = v6 ? 1280 : 576;         // RFC 4443 2.4 (c) / RFC 1812 4.3.2.3
    const uint32_t quote = std::min<uint32_t>(p.l3_length, limit - hdr);
    if (l3 + hdr + quote > pkt.len + pkt.tailroom) return false;
    std::memmove(ip + hdr, ip, quote);
    const uint8_t* q = ip + hdr;  // the client's packet, quoted
    uint8_t* icmp = ip + (v6 ? 40 : 20);
    if (v6) {
        store_be32(ip, 0x60000000);
        store_be16(ip + 4, static_cast<uint16_t>(8 + quote));
        ip[6] = kProtoIcmpv6;
        ip[7] = 64;
        std::memcpy(ip + 8, q + 24, 16);   // from the VIP
        std::memcpy(ip + 24, q + 8, 16);   // to the client
        icmp[0] = 2;
        icmp[1] = 0;
        store_be16(icmp + 2, 0);
        store_be32(icmp + 4, std::max<uint32_t>(mtu, 1280));
        store_be16(icmp + 2, icmpv6_checksum(ip, icmp, 8 + quote));
    } else {
        ip[0] = 0x45;
        ip[1] = 0;
        store_be16(ip + 2, static_cast<uint16_t>(28 + quote));
        store_be16(ip + 4, 0);
        store_be16(ip + 6, 0);
        ip[8] = 64;
        ip[9] = kProtoIcmp;
        store_be16(ip + 10, 0);
        std::memcpy(ip + 12, q + 16, 4);  // from the VIP
        std::memcpy(ip + 16, q + 12, 4);  // to the client
        store_be16(ip + 10, static_cast<uint16_t>(~ones_complement_sum({ip, 20})));
        icmp[0] = 3;
        icmp[1] = 4;
        store_be16(icmp + 2, 0);
        store_be16(icmp + 4, 0);
        store_be16(icmp + 6, static_cast<uint16_t>(std::max<uint32_t>(mtu, 68)));
        store_be16(icmp + 2, static_cast<uint16_t>(~ones_complement_sum({icmp, 8 + quote})));
    }
    uint8_t client_mac[6];
    std::memcpy(client_mac, pkt.data + 6, 6);
    std::memcpy(pkt.data, client_mac, 6);
    std::memcpy(pkt.data + 6, node_mac.data(), 6);
    pkt.tailroom = pkt.len + pkt.tailroom - (l3 + hdr + quote);
    pkt.len = l3 + hdr + quote;
    return true;
}

// Strips the client's Ethernet (and VLAN) header and writes the outer headers
// in front of the IP packet.
Outcome forward_encap(ForwardContext& ctx, const EncapParams& params, ForwardJob& job) noexcept {
    const uint32_t l3 = job.parsed.l3_offset;
    const uint32_t inner_len = job.parsed.l3_length;
    const uint32_t hdr = static_cast<uint32_t>(encap_header_len(params.kind, job.backend.address.version));
    if (hdr - kEthLen + inner_len > ctx.port.mtu) {
        ctx.counters.add(Counter::drop_too_big);
        // IPv4 without DF is not the client's to fix: dropped, counted, no reply.
        const bool may_answer = job.parsed.flow.version == IpVersion::v6 || (job.pkt.data[l3 + 6] & 0x40) != 0;
        if (job.parsed.icmp_error || !may_answer || !ctx.too_big_limiter.take(ctx.now)) return Outcome::dropped;
        if (!write_too_big(job.pkt, job.parsed, ctx.port.mac, ctx.port.mtu - (hdr - kEthLen))) return Outcome::dropped;
        ctx.counters.add(Counter::too_big_sent);
        return Outcome::answered;
    }
    // Never to 00:00:00:00:00:00: until the next hop's MAC is known, dropped.
    const uint64_t next_hop = job.backend.address.version == IpVersion::v6 ? ctx.next_hop_v6 : ctx.next_hop_v4;
    if (!next_hop_valid(next_hop)) {
        ctx.counters.add(Counter::drop_next_hop_unresolved);
        return Outcome::dropped;
    }
    if (job.pkt.headroom + l3 < hdr) {
        ctx.counters.add(Counter::drop_no_headroom);
        return Outcome::dropped;
    }
    if (job.backend.address.version == IpVersion::v6 && params.source_v6.base.version != IpVersion::v6) {
        // No [encap] outer_source_v6: an IPv6 backend cannot be reached.
        ctx.counters.add(Counter::drop_encap_failed);
        return Outcome::dropped;
    }
    uint8_t* start = job.pkt.data + l3 - hdr;
    if (params.kind == EncapKind::ipip && job.backend.address.version == IpVersion::v4 &&
        (job.pkt.data[l3] >> 4) == 4) {
        // IPv4 in IPv4: the parser checked the inner header, the MTU check above
        // bounds its length.
        write_ipip4_headers(start, job.pkt.data + l3, inner_len, job.backend.address.bytes.data(), next_hop,
                            params, job.hash);
    } else {
        const EncapError err = write_encap_headers({start, hdr}, {job.pkt.data + l3, inner_len},
                                                   job.backend.address, job.hash, params);
        if (err != EncapError::ok) {
            ctx.counters.add(Counter::drop_encap_failed);
            return Outcome::dropped;
        }
        const MacAddress dst = next_hop_mac(next_hop);
        std::memcpy(start, dst.data(), dst.size());
    }
    // The buffer [data - headroom, data + len + tailroom) stays where it is;
    // Ethernet padding after the IP packet goes with the old length.
    const uint32_t capacity = job.pkt.headroom + job.pkt.len + job.pkt.tailroom;
    job.pkt.headroom = job.pkt.headroom + l3 - hdr;
    job.pkt.data = start;
    job.pkt.len = hdr + inner_len;
    job.pkt.tailroom = capacity - job.pkt.headroom - job.pkt.len;
    return Outcome::forwarded;
}

Outcome forward_ipip(ForwardContext& ctx, ForwardJob& job) noexcept { return forward_encap(ctx, ctx.ipip, job); }

Outcome forward_gue(ForwardContext& ctx, ForwardJob& job) noexcept {
    EncapParams params = ctx.gue;
    params.gue_port = job.service.gue_port;
    return forward_encap(ctx, params, job);
}

Outcome forward_l2dsr(ForwardContext& ctx, ForwardJob& job) noexcept {
    rewrite_l2_dsr({job.pkt.data, job.pkt.len}, job.backend.mac, ctx.port.mac);
    return Outcome::forwarded;
}

using Forwarder = Outcome (*)(ForwardContext&, ForwardJob&) noexcept;

// Indexed by ForwardingMode: the mode is chosen when the service is
// installed, and the packet path makes one indirect call, not a mode branch.
constexpr Forwarder kForwarders[4] = {nullptr, forward_ipip, forward_gue, forward_l2dsr};
static_assert(static_cast<size_t>(ForwardingMode::ipip) == 1 && static_cast<size_t>(ForwardingMode::gue) == 2 &&
              static_cast<size_t>(ForwardingMode::l2dsr) == 3);

// --- ARP and neighbour discovery ---------------------------------------------

// Answers an ARP request for `ours` in place; false if it is not one.
bool arp_reply(PacketBuf& pkt, const ParsedPacket& p, const MacAddress& mac,
               const NodeIdentity& node, const ServiceSnapshot& services) noexcept {
    uint8_t* a = pkt.data + p.l3_offset;
    // htype 1, ptype IPv4, hlen 6, plen 4, op 1 (request)
    if (load_be16(a) != 1 || load_be16(a + 2) != 0x0800 || a[4] != 6 || a[5] != 4 || load_be16(a + 6) != 1)
        return false;
    const uint8_t* tpa = a + 24;
    IpAddress target;
    target.version = IpVersion::v4;
    std::memcpy(target.bytes.data(), tpa, 4);
    const bool ours = std::any_of(node.addresses.begin(), node.addresses.end(),
                                  [&](const IpAddress& x) { return x == target; }) ||
                      services.is_vip_address(target);
    if (!ours) return false;
    uint8_t sha[6], spa[4];
    std::memcpy(sha, a + 8, 6);
    std::memcpy(spa, a + 14, 4);
    store_be16(a + 6, 2);                // reply
    std::memcpy(a + 8, mac.data(), 6);   // sender: us
    std::memcpy(a + 14, tpa, 4);         // sender IP: the address asked for
    std::memcpy(a + 18, sha, 6);         // target: the asker
    std::memcpy(a + 24, spa, 4);
    std::memcpy(pkt.data, sha, 6);       // Ethernet dst: the asker
    std::memcpy(pkt.data + 6, mac.data(), 6);
    return true;
}


// Answers a neighbour solicitation for one of our addresses or VIPs in place
// with a solicited, override advertisement carrying our MAC.
bool nd_reply(PacketBuf& pkt, const ParsedPacket& p, const MacAddress& mac, const NodeIdentity& node,
              const ServiceSnapshot& services) noexcept {
    if (p.icmp_type != 135 || p.icmp_code != 0 || !p.l4_present) return false;
    uint8_t* ip6 = pkt.data + p.l3_offset;
    uint8_t* icmp = pkt.data + p.l4_offset;
    if (p.l4_offset + 24u > pkt.len || ip6[7] != 255) return false;  // RFC 4861: hop limit 255
    IpAddress target;
    target.version = IpVersion::v6;
    std::memcpy(target.bytes.data(), icmp + 8, 16);
    const bool ours = std::any_of(node.addresses.begin(), node.addresses.end(),
                                  [&](const IpAddress& x) { return x == target; }) ||
                      services.is_vip_address(target);
    if (!ours) return false;
    constexpr uint32_t kNaLen = 32;  // header, flags, target, target link-layer address option
    const uint32_t need = p.l4_offset + kNaLen;
    if (need > pkt.len + pkt.tailroom) return false;
    static constexpr uint8_t kAllNodes[16] = {0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    static constexpr uint8_t kUnspecified[16] = {};
    const bool from_unspecified = std::memcmp(ip6 + 8, kUnspecified, 16) == 0;
    // IPv6: dst = the solicitor (all-nodes if it had no address yet), src = the target.
    if (from_unspecified) std::memcpy(ip6 + 24, kAllNodes, 16);
    else std::memcpy(ip6 + 24, ip6 + 8, 16);
    std::memcpy(ip6 + 8, target.bytes.data(), 16);
    store_be16(ip6 + 4, static_cast<uint16_t>(p.l4_offset - p.l3_offset - 40 + kNaLen));
    ip6[7] = 255;
    icmp[0] = 136;
    icmp[1] = 0;
    icmp[2] = icmp[3] = 0;
    icmp[4] = from_unspecified ? 0x20 : 0x60;  // S (solicited) unless to all-nodes, O (override)
    icmp[5] = icmp[6] = icmp[7] = 0;
    // icmp + 8: the target, unchanged
    icmp[24] = 2;  // target link-layer address
    icmp[25] = 1;  // 8 bytes
    std::memcpy(icmp + 26, mac.data(), 6);
    const uint16_t c = icmpv6_checksum(ip6, icmp, kNaLen);
    store_be16(icmp + 2, c);
    // Ethernet: back to the solicitor (or the all-nodes group).
    if (from_unspecified) {
        static constexpr uint8_t kAllNodesMac[6] = {0x33, 0x33, 0, 0, 0, 1};
        std::memcpy(pkt.data, kAllNodesMac, 6);
    } else {
        std::memcpy(pkt.data, pkt.data + 6, 6);
    }
    std::memcpy(pkt.data + 6, mac.data(), 6);
    pkt.tailroom = pkt.len + pkt.tailroom - need;
    pkt.len = need;
    return true;
}


// --- resets for flows whose grant ended -----------------------------------------


// Writes IP + TCP headers of a bare RST (no options, no payload) at `ip`,
// from `src` to `dst`; returns the IP packet's length.
uint32_t write_rst(uint8_t* ip, IpVersion v, const uint8_t* src, const uint8_t* dst, uint16_t sport,
                   uint16_t dport, uint32_t seq, uint32_t ack, bool with_ack) noexcept {
    const uint32_t ip_len = v == IpVersion::v4 ? 20 : 40;
    uint8_t* tcp = ip + ip_len;
    uint32_t pseudo = 0;
    if (v == IpVersion::v4) {
        ip[0] = 0x45;
        ip[1] = 0;
        store_be16(ip + 2, 40);
        store_be16(ip + 4, 0);
        store_be16(ip + 6, 0x4000);  // DF
        ip[8] = 64;
        ip[9] = 6;
        store_be16(ip + 10, 0);
        std::memcpy(ip + 12, src, 4);
        std::memcpy(ip + 16, dst, 4);
        store_be16(ip + 10, static_cast<uint16_t>(~ipv4_header_sum(ip)));
        for (int i = 12; i < 20; i += 2) pseudo += load_be16(ip + i);
    } else {
        store_be32(ip, 0x60000000);
        store_be16(ip + 4, 20);
        ip[6] = 6;
        ip[7] = 64;
        std::memcpy(ip + 8, src, 16);
        std::memcpy(ip + 24, dst, 16);
        for (int i = 8; i < 40; i += 2) pseudo += load_be16(ip + i);
    }
    pseudo += 6 + 20;  // protocol, TCP length
    store_be16(tcp, sport);
    store_be16(tcp + 2, dport);
    store_be32(tcp + 4, seq);
    store_be32(tcp + 8, with_ack ? ack : 0);
    tcp[12] = 5 << 4;
    tcp[13] = with_ack ? 0x14 : 0x04;  // RST(+ACK)
    store_be16(tcp + 14, 0);            // window
    store_be16(tcp + 16, 0);
    store_be16(tcp + 18, 0);
    store_be16(tcp + 16, static_cast<uint16_t>(~ones_complement_sum({tcp, 20}, pseudo)));
    return ip_len + 20;
}

// Answers an ICMP / ICMPv6 echo request in place: addresses and MACs swapped,
// type echo reply, TTL / hop limit 64, checksums computed. The payload is
// returned as it came (RFC 792 / RFC 4443 4.2). False if it is not a request.
bool echo_reply(PacketBuf& pkt, const ParsedPacket& p, const MacAddress& mac) noexcept {
    const bool v6 = p.flow.version == IpVersion::v6;
    if (p.icmp_type != (v6 ? 128 : 8) || p.icmp_code != 0 || !p.l4_present) return false;
    uint8_t* ip = pkt.data + p.l3_offset;
    uint8_t* icmp = pkt.data + p.l4_offset;
    const uint32_t icmp_len = p.l3_length - (p.l4_offset - p.l3_offset);
    uint8_t tmp[16];
    if (v6) {
        std::memcpy(tmp, ip + 8, 16);
        std::memcpy(ip + 8, ip + 24, 16);
        std::memcpy(ip + 24, tmp, 16);
        ip[7] = 64;
        icmp[0] = 129;
        store_be16(icmp + 2, 0);
        store_be16(icmp + 2, icmpv6_checksum(ip, icmp, icmp_len));
    } else {
        std::memcpy(tmp, ip + 12, 4);
        std::memcpy(ip + 12, ip + 16, 4);
        std::memcpy(ip + 16, tmp, 4);
        ip[8] = 64;
        store_be16(ip + 10, 0);
        store_be16(ip + 10, static_cast<uint16_t>(~ones_complement_sum({ip, static_cast<size_t>((ip[0] & 0x0f) * 4)})));
        icmp[0] = 0;
        store_be16(icmp + 2, 0);
        store_be16(icmp + 2, static_cast<uint16_t>(~ones_complement_sum({icmp, icmp_len})));
    }
    std::memcpy(pkt.data, pkt.data + 6, 6);
    std::memcpy(pkt.data + 6, mac.data(), 6);
    pkt.tailroom += pkt.len - (p.l3_offset + p.l3_length);  // Ethernet padding goes
    pkt.len = p.l3_offset + p.l3_length;
    return true;
}
}  // namespace

// --- the pipeline -----------------------------------------------------------

Pipeline::Pipeline(const NodeIdentity& node, const ConnTableConfig& conn, GrantTableReader grants,
                   WorkerCounters& counters, std::span<ServiceCounters> per_service,
                   std::span<BackendCounters> per_backend)
    : node_(node),
      ports_(node.ports.empty() ? std::vector<PortIdentity>{{node.mac, node.next_hop_mac, node.next_hop_macs, node.mtu}}
                                : node.ports),
      conns_(conn, node.ticks_per_second),
      grants_(grants),
      counters_(counters),
      per_service_(per_service),
      per_backend_(per_backend),
      reset_shift_(reset_shift_for(node.ticks_per_second)),
      reset_interval_(static_cast<uint32_t>(
          std::max<uint64_t>(1, (kResetIntervalMs * node.ticks_per_second / 1000) >> reset_shift_))),
      too_big_limiter_(kTooBigPerSecond, kTooBigBurst, node.ticks_per_second),
      denial_limiter_(kDenialSamplesPerSecond, kDenialSampleBurst, node.ticks_per_second),
      echo_limiter_(kEchoPerSecond, kEchoBurst, node.ticks_per_second),
      icmp_error_limiter_(kIcmpErrorsPerSecond, kIcmpErrorBurst, node.ticks_per_second) {}

// Every denial counts towards its reason; a few per second are sampled with
// the count since the last sample, so the audit log shows who knocked.
void Pipeline::sample_denial(DenialReason reason, const ParsedPacket& p, uint16_t service_id, uint64_t now) noexcept {
    uint64_t& since = denials_since_sample_[static_cast<size_t>(reason) & 7];
    ++since;
    if (n_samples_ == samples_.size() || !denial_limiter_.take(now)) return;
    DenialSample& d = samples_[n_samples_++];
    d.family = p.flow.version;
    d.protocol = p.flow.proto;
    d.reason = reason;
    d.service_id = service_id;
    d.source = p.flow.src;
    d.vip = p.flow.dst;
    d.vip_port = p.flow.dst_port;
    d.count = since;
    since = 0;
}

bool Pipeline::is_node_address(IpVersion v, const uint8_t* bytes) const noexcept {
    return std::any_of(node_.addresses.begin(), node_.addresses.end(),
                       [&](const IpAddress& a) { return same_address(a, v, bytes); });
}

// Traffic for the node: to the exception port if the allowlist has its kind.
Action Pipeline::to_exception(uint32_t kind) noexcept {
    if ((node_.exception_allow & kind) == 0) {
        counters_.add(Counter::drop_exception_denied);
        return Action::drop;
    }
    counters_.add(Counter::to_exception);
    return Action::exception;
}

// The backend of a tracked flow. When the backend set changed since the entry
// was made, the flow keeps its backend if it is still there (found by its id),
// draining or not, else it is chosen again and counted; kNoBackend when it
// cannot be (every backend left is draining), the entry unchanged.
uint32_t Pipeline::tracked_backend(ConnTable::Entry& e, const Service& svc, uint64_t hash) noexcept {
    if (e.service_generation == static_cast<uint32_t>(svc.generation)) return e.backend;
    const auto it = std::find_if(svc.backends.begin(), svc.backends.end(), [&](const BackendInfo& b) {
        return static_cast<uint32_t>(backend_key(b)) == e.backend_key;
    });
    uint32_t backend;
    if (it != svc.backends.end()) {
        backend = static_cast<uint32_t>(it - svc.backends.begin());
    } else {
        if (svc.maglev.empty()) return kNoBackend;
        backend = maglev_lookup(svc.maglev, hash);
        e.backend_key = static_cast<uint32_t>(backend_key(svc.backends[backend]));
        counters_.add(Counter::conn_rehashed);
    }
    e.backend = backend & 0x3fff;
    e.service_generation = static_cast<uint32_t>(svc.generation);
    return backend;
}

// The reset towards the backend goes out in an extra buffer, built as the
// client's own RST (seq = the client's seq) and forwarded like its packets;
// then the packet itself becomes the reset towards the client (seq = the
// client's ack number, from the VIP). False if not even the client's reset
// could be written.
bool Pipeline::send_resets(PacketBuf& pkt, const ParsedPacket& p, const Service& svc, const BackendInfo& backend,
                           uint64_t hash, ForwardContextRef ctx_ref, ExtraPackets* extra) noexcept {
    auto& ctx = *static_cast<ForwardContext*>(ctx_ref);
    const uint8_t* tcp = pkt.data + p.l4_offset;
    const uint32_t seq = load_be32(tcp + 4);
    const uint32_t ack = load_be32(tcp + 8);
    const bool has_ack = (tcp[13] & 0x10) != 0;
    const FlowTuple& f = p.flow;
    const uint32_t l3 = p.l3_offset;
    if (extra != nullptr && extra->used < extra->available) {
        PacketBuf& out = extra->bufs[extra->used];
        if (out.len + out.tailroom >= l3 + 60) {
            std::memcpy(out.data, pkt.data, l3);  // Ethernet (and VLAN) as the client's
            const uint32_t ip_len = write_rst(out.data + l3, f.version, f.src.data(), f.dst.data(), f.src_port,
                                              f.dst_port, seq, 0, false);
            out.tailroom = out.len + out.tailroom - (l3 + ip_len);
            out.len = l3 + ip_len;
            ParsedPacket rp;
            if (parse_packet({out.data, out.len}, rp) == DropReason::none) {
                ForwardJob job{out, rp, svc, backend, hash};
                if (kForwarders[static_cast<size_t>(svc.mode)](ctx, job) == Outcome::forwarded) {
                    ++extra->used;
                    counters_.add(Counter::resets_sent);
                }
            }
        }
    } else {
        counters_.add(Counter::reset_no_buffer);
    }
    // To the client: from the VIP, in place, back where the packet came from.
    if (pkt.len + pkt.tailroom < l3 + 60) return false;
    uint8_t mac[6];
    std::memcpy(mac, pkt.data + 6, 6);
    std::memcpy(pkt.data + 6, ctx.port.mac.data(), 6);
    std::memcpy(pkt.data, mac, 6);
    const uint32_t payload = p.l3_length - (p.payload_offset - l3);
    const uint32_t syn_fin = (tcp[13] & 0x03) != 0 ? 1 : 0;
    uint8_t src[16], dst[16];
    std::memcpy(src, f.dst.data(), 16);
    std::memcpy(dst, f.src.data(), 16);
    const uint16_t sport = f.dst_port, dport = f.src_port;
    // RFC 793: a segment with ACK gets <SEQ=SEG.ACK><CTL=RST>; without, <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
    const uint32_t ip_len = write_rst(pkt.data + l3, f.version, src, dst, sport, dport, has_ack ? ack : 0,
                                      seq + payload + syn_fin, !has_ack);
    pkt.tailroom = pkt.len + pkt.tailroom - (l3 + ip_len);
    pkt.len = l3 + ip_len;
    counters_.add(Counter::resets_sent);
    return true;
}

void Pipeline::process_burst(std::span<PacketBuf> pkts, const ServiceSnapshot& services, uint64_t now,
                             std::span<Action> actions, ExtraPackets* extra, size_t port_index) noexcept {
    const PortIdentity& port = ports_[port_index < ports_.size() ? port_index : 0];
    const size_t n = std::min({pkts.size(), actions.size(), kBurst});
    ParsedPacket parsed[kBurst];
    const Service* service_of[kBurst];
    LookupKey keys[kBurst];
    LookupResult results[kBurst];
    uint64_t hashes[kBurst];  // flow hashes of the pending packets
    uint8_t pending[kBurst];
    size_t n_pending = 0;
    VipKey last_vip;
    const Service* last_service = nullptr;
    bool last_three_tuple = false;
    bool have_last_vip = false;
    uint32_t three_tuple = 0;  // bit i: packet i's service is a 3-tuple one (ports zeroed in its flow)
    static_assert(kBurst <= 32);

    // The port's next-hop MACs: one load per family per burst, no atomic on the packet path.
    uint64_t next_hop_v4 = 0, next_hop_v6 = 0;
    if (port.next_hop_macs != nullptr) {
        next_hop_v4 = port.next_hop_macs->v4.load(std::memory_order_acquire);
        next_hop_v6 = port.next_hop_macs->v6.load(std::memory_order_acquire);
    } else if (port.next_hop_mac != MacAddress{}) {
        next_hop_v4 = next_hop_v6 = next_hop_word(port.next_hop_mac);
    }
    ForwardContext ctx{port, {}, {}, next_hop_v4, next_hop_v6, counters_, too_big_limiter_, now};
    n_samples_ = 0;
    ctx.ipip.kind = EncapKind::ipip;
    ctx.ipip.src_mac = port.mac;
    ctx.ipip.source_v4 = node_.outer_source_v4;
    ctx.ipip.source_v6 = node_.outer_source_v6;
    ctx.ipip.ttl = node_.outer_ttl;
    ctx.gue = ctx.ipip;
    ctx.gue.kind = EncapKind::gue;

    // Stage 1: parse, answer what the node answers itself, find the service.
    for (size_t i = 0; i < n; ++i) {
        if (i + 3 < n) {
            __builtin_prefetch(pkts[i + 3].data);
            // The line before the frame: the outer headers of an encapsulation go there.
            if (pkts[i + 3].headroom >= 64) __builtin_prefetch(pkts[i + 3].data - 64, 1);
        }
        PacketBuf& pkt = pkts[i];
        actions[i] = Action::drop;
        counters_.add(Counter::rx_packets);
        counters_.add(Counter::rx_bytes, pkt.len);
        ParsedPacket& p = parsed[i];
        const DropReason r = parse_packet({pkt.data, pkt.len}, p);
        if (r != DropReason::none) {
            ++counters_.parse_drops[static_cast<size_t>(r)];
            continue;
        }
        if (p.kind == PacketKind::arp) {
            if (arp_reply(pkt, p, port.mac, node_, services)) {
                counters_.add(Counter::arp_replies);
                actions[i] = Action::transmit;
            } else if (node_.resolver_takes_replies && load_be16(pkt.data + p.l3_offset + 6) == 2 &&
                       is_node_address(IpVersion::v4, pkt.data + p.l3_offset + 24)) {
                // A reply to the node: perhaps the next hop's (the main lcore
                // passes it on to the exception port when that allows arp).
                counters_.add(Counter::to_resolver);
                actions[i] = Action::resolver;
            } else if (is_node_address(IpVersion::v4, pkt.data + p.l3_offset + 24)) {
                actions[i] = to_exception(kExceptionArp);
            } else {
                counters_.add(Counter::drop_not_for_us);
            }
            continue;
        }
        if (p.kind == PacketKind::ndp) {
            const bool to_node = p.flow.dst[0] == 0xff || is_node_address(IpVersion::v6, p.flow.dst.data());
            if (nd_reply(pkt, p, port.mac, node_, services)) {
                counters_.add(Counter::nd_replies);
                actions[i] = Action::transmit;
            } else if (node_.resolver_takes_replies && p.icmp_type == 136 && to_node) {
                counters_.add(Counter::to_resolver);
                actions[i] = Action::resolver;
            } else if (to_node) {
                actions[i] = to_exception(kExceptionNd);
            } else {
                counters_.add(Counter::drop_not_for_us);
            }
            continue;
        }
        // Fragments reach only a VIP without a port (3-tuple mode): a later
        // fragment has no ports, and one that claims them cannot be trusted.
        const bool fragment = p.fragment != FragmentState::none;
        if (fragment && !services.has_any_port_vip()) {
            counters_.add(Counter::drop_ip_fragment);
            continue;
        }
        FlowTuple& f = p.flow;
        VipKey key;
        key.address = f.dst;
        key.family = f.version;
        key.protocol = f.proto;
        key.port = fragment ? 0 : f.dst_port;
        // A burst mostly goes to few VIPs: the previous packet's service is reused.
        const Service* svc = nullptr;
        bool three = false;
        if (p.l4_present || fragment) {
            if (!(have_last_vip && key == last_vip)) {
                last_vip = key;
                last_service = services.match(key, last_three_tuple);
                have_last_vip = true;
            }
            svc = last_service;
            three = last_three_tuple && svc != nullptr;
        }
        if (fragment && !three) {
            counters_.add(Counter::drop_ip_fragment);
            continue;
        }
        if (svc == nullptr) {
            if (is_node_address(f.version, f.dst.data())) {
                uint32_t kind = 0;
                if (f.proto == kProtoIcmp || f.proto == kProtoIcmpv6) kind = kExceptionIcmp;
                else if (f.proto == 6 && f.dst_port == 22) kind = kExceptionSsh;
                else if (f.proto == 6 && (f.dst_port == 179 || f.src_port == 179)) kind = kExceptionBgp;
                actions[i] = to_exception(kind);
            } else if ((f.proto == kProtoIcmp || f.proto == kProtoIcmpv6) && !p.icmp_error) {
                if (!services.answers_echo(f.version, f.dst.data())) {
                    counters_.add(Counter::drop_icmp_not_allowed);
                } else if (!echo_limiter_.take(now)) {
                    counters_.add(Counter::drop_icmp_rate_limited);
                } else if (echo_reply(pkt, p, port.mac)) {
                    counters_.add(Counter::echo_replies);
                    actions[i] = Action::transmit;
                } else {
                    counters_.add(Counter::drop_icmp_not_allowed);  // not an echo request
                }
            } else {
                counters_.add(Counter::drop_unknown_vip);
            }
            continue;
        }
        // Disabled or without backends. One whose backends all drain goes on:
        // its tracked flows still forward (stage 3 drops its new ones).
        if (!svc->forwarding()) {
            counters_.add(Counter::drop_service_down);
            continue;
        }
        // By type, not by a non-zero MTU: a frag-needed advertising 0 (RFC 1191's "old
        // router") would also lower the client's path MTU to the host's floor.
        const bool too_big_msg =
            f.version == IpVersion::v6 ? p.icmp_type == 2 : (p.icmp_type == 3 && p.icmp_code == 4);
        if (p.icmp_error && too_big_msg &&
            p.icmp_mtu < (f.version == IpVersion::v6 ? 1280u : 576u)) {
            counters_.add(Counter::drop_icmp_mtu_too_small);
            continue;
        }
        // An error about a flow of ours is sent to the VIP it quotes as its
        // source; one sent elsewhere is not about that flow: it would carry a
        // packet for an arbitrary address into the backends' network.
        if (p.icmp_error &&
            std::memcmp(pkt.data + p.l3_offset + (f.version == IpVersion::v6 ? 24 : 16), f.dst.data(),
                        f.version == IpVersion::v6 ? 16 : 4) != 0) {
            counters_.add(Counter::drop_icmp_not_allowed);
            continue;
        }
        service_of[i] = svc;
        if (three) {
            // Every packet of (source, VIP, protocol) to one backend: one
            // connection-table entry, one hash, fragments and all.
            f.src_port = 0;
            f.dst_port = 0;
            three_tuple |= uint32_t{1} << i;
        }
        keys[n_pending] = LookupKey::from_flow(f, svc->id);
        // Stage 3 looks the flow up in the connection table: start the load now.
        hashes[n_pending] = flow_hash(f, node_.flow_hash_seed);
        conns_.prefetch(hashes[n_pending]);
        pending[n_pending++] = static_cast<uint8_t>(i);
    }

    // Stage 2: every grant of the burst in one bulk lookup.
    if (n_pending == 0) return;
    grants_.lookup_bulk({keys, n_pending}, now, {results, n_pending});

    // Stage 3: grant verdict, connection table, Maglev, forwarding.
    for (size_t k = 0; k < n_pending; ++k) {
        const size_t i = pending[k];
        const ParsedPacket& p = parsed[i];
        const Service& svc = *service_of[i];
        if (results[k].kind != LookupKind::granted) {
            switch (results[k].kind) {
                case LookupKind::no_grant:
                    counters_.add(Counter::drop_no_grant);
                    sample_denial(DenialReason::no_grant, p, svc.id, now);
                    break;
                case LookupKind::expired:
                    counters_.add(Counter::drop_grant_expired);
                    sample_denial(DenialReason::grant_expired, p, svc.id, now);
                    break;
                case LookupKind::not_yet:
                    counters_.add(Counter::drop_grant_not_yet_valid);
                    sample_denial(DenialReason::grant_not_yet_valid, p, svc.id, now);
                    break;
                default: counters_.add(Counter::drop_grant_busy); break;
            }
            // A tracked TCP flow whose grant ended: reset both ends (not in
            // 3-tuple mode: its entry stands for many connections, ports unknown).
            if (p.flow.proto == 6 && !p.icmp_error && (p.tcp_flags & kTcpRst) == 0 &&
                results[k].kind != LookupKind::busy && ((three_tuple >> i) & 1) == 0) {
                const uint64_t hash = hashes[k];
                ConnTable::Entry* e = conns_.find(p.flow, hash, now);
                if (e != nullptr && e->service_id == svc.id &&
                    (!e->reset_sent || reset_clock(now) - e->last_reset >= reset_interval_)) {
                    const uint32_t backend = tracked_backend(*e, svc, hash);
                    if (backend != kNoBackend) {
                        e->last_reset = reset_clock(now);
                        e->reset_sent = 1;
                        conns_.touch(*e, now, true);
                        if (send_resets(pkts[i], p, svc, svc.backends[backend], hash, &ctx, extra))
                            actions[i] = Action::transmit;
                    }
                }
            }
            continue;
        }
        // ICMP errors about a granted flow, per worker at most kIcmpErrorsPerSecond
        // (after the grant check, so that errors about flows without a grant
        // cannot use up the budget).
        if (p.icmp_error && !icmp_error_limiter_.take(now)) {
            counters_.add(Counter::drop_icmp_rate_limited);
            continue;
        }
        const uint64_t hash = hashes[k];
        // A FIN or RST ends a TCP flow's entry early, not a 3-tuple one's.
        const bool five_tuple = ((three_tuple >> i) & 1) == 0;
        const bool closing = (p.tcp_flags & (kTcpFin | kTcpRst)) != 0 && five_tuple;
        uint32_t backend = 0;
        ConnTable::Entry* e = conns_.find(p.flow, hash, now);
        // A SYN on the tuple of a flow that ended (FIN or RST seen) is a new
        // connection reusing the client's ports: balanced afresh like any new
        // flow, so it avoids a backend drained or weighted down meanwhile.
        bool reopened = false;
        if (e != nullptr && e->closing && five_tuple && p.flow.proto == 6 && !p.icmp_error &&
            (p.tcp_flags & (kTcpSyn | kTcpAck | kTcpRst | kTcpFin)) == kTcpSyn) {
            reopened = true;
            counters_.add(Counter::conn_reopened);
        }
        if (e != nullptr && e->service_id == svc.id && !reopened) {
            counters_.add(Counter::conn_hit);
            backend = tracked_backend(*e, svc, hash);
            if (backend == kNoBackend) {
                counters_.add(Counter::drop_service_down);
                continue;
            }
            conns_.touch(*e, now, closing);
        } else {
            // Every backend draining: tracked flows go on, new ones cannot.
            if (svc.maglev.empty()) {
                counters_.add(Counter::drop_service_down);
                continue;
            }
            backend = maglev_lookup(svc.maglev, hash);
            // ICMP errors follow their inner flow by hash and add no entry.
            if (!p.icmp_error) {
                // The flow's entry belongs to a service that no longer holds
                // this VIP, or to the connection this one reuses the ports of:
                // take it over rather than add a second one.
                if (e != nullptr) {
                    *e = ConnTable::Entry{};
                    e->flow = p.flow;
                }
                else e = conns_.insert(p.flow, hash, now);
                if (e != nullptr) {
                    e->service_id = svc.id;
                    e->service_generation = static_cast<uint32_t>(svc.generation);
                    e->backend = backend & 0x3fff;
                    e->backend_key = static_cast<uint32_t>(backend_key(svc.backends[backend]));
                    conns_.touch(*e, now, closing);
                    counters_.add(Counter::conn_new);
                } else {
                    counters_.add(Counter::conn_table_full);
                }
            }
        }
        ForwardJob job{pkts[i], p, svc, svc.backends[backend], hash};
        const uint32_t received_len = pkts[i].len;
        switch (kForwarders[static_cast<size_t>(svc.mode)](ctx, job)) {
            case Outcome::forwarded:
                counters_.add(Counter::forwarded);
                if (svc.id < per_service_.size()) {
                    ++per_service_[svc.id].packets;
                    per_service_[svc.id].bytes += received_len;
                }
                // The backend's slot rides in its BackendInfo, already loaded
                // for the forwarder: one compare, two adds on our own lines.
                if (const uint32_t slot = job.backend.counter_slot; slot < per_backend_.size()) {
                    ++per_backend_[slot].packets;
                    per_backend_[slot].bytes += received_len;
                }
                actions[i] = Action::transmit;
                break;
            case Outcome::answered: actions[i] = Action::transmit; break;
            case Outcome::dropped: break;
        }
    }
}

}  // namespace jitlb::lb
