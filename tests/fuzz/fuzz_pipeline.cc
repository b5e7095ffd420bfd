// libFuzzer target: the worker's whole per-packet pipeline (lb/pipeline.h) on
// arbitrary Ethernet frames, against a node built once: two services, three
// backends each, and a grant table holding grants of every state. Each input
// is one frame (at most 2048 bytes, in a buffer shaped like an mbuf: 128 bytes
// of headroom, 2048 of data room) run as a burst of one, with the clock one
// tick (ms) later than for the previous input, so grants start and end and
// connection entries age during a run. Spare buffers are lent for resets.
//
// Besides memory safety (ASan/UBSan), it checks, std::abort() on a violation:
//  - THE RULE: a packet forwarded to a backend comes from a source that one of
//    the grants this harness installed (its own list, not the table) covers,
//    valid now, for the service that owns the packet's VIP (this harness's own
//    VIP list). The source and VIP are read from the IP header by hand and
//    compared with the parser's flow; for an ICMP error, the flow is the quoted
//    packet's, turned round (docs/dataplane.md, "ICMP errors").
//  - the grant verdicts agree with that list: no_grant only with no covering
//    grant, expired / not_yet only when the most specific one is in that state,
//    no denial while a covering grant is valid, never busy (one thread);
//  - a forwarded packet is the client's IP packet, unchanged, behind the
//    service's encapsulation to one of the service's backends; a reset sent to
//    a backend is a bare RST (no client data reaches a backend without a grant);
//  - the counters add up: every input counts once in rx_packets / rx_bytes and
//    lands in exactly one of forwarded, a reply (ARP, ND, echo), the exception
//    path, or one drop reason (parser's or pipeline's); packet-too-big and
//    resets only ride on their drop; the action agrees with the counters; the
//    per-service counter moves with forwarded;
//  - the buffer geometry stays within the buffer the packet came in.
//
// The node keeps state across inputs (connection table, token buckets, the
// clock), as a worker does; a crash reproduces from its input alone in most
// cases, else with the inputs before it.
#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "counters.h"
#include "encap.h"
#include "grant_table.h"
#include "packet.h"
#include "pipeline.h"
#include "service_table.h"

namespace {

using namespace jitlb;
using namespace jitlb::lb;

constexpr uint64_t kStart = 1'700'000'000'000;  // ticks = Unix ms (ticks_per_second 1000)
constexpr uint32_t kMaxFrame = 2048;              // the mbuf's data room
constexpr uint32_t kHeadroom = 128;
constexpr uint64_t kRollingCycle = 4096;  // the rolling grants are renewed every so many inputs...
constexpr uint64_t kRollingLife = 2048;   // ...and live this long (then expired until renewed)

constexpr uint16_t kSvc4 = 1;  // IPv4 VIP, IP-in-IP
constexpr uint16_t kSvc6 = 2;  // IPv6 VIP, GUE
constexpr uint16_t kGuePort = 5555;

const MacAddress kNodeMac{0x02, 0xaa, 0, 0, 0, 0x01};
const MacAddress kNextHopMac{0x02, 0xbb, 0, 0, 0, 0x02};

[[noreturn]] void violated(const char* what) {
    std::fprintf(stderr, "fuzz_pipeline: invariant broken: %s\n", what);
    std::abort();
}
void check(bool ok, const char* what) {
    if (!ok) violated(what);
}

IpAddress ip(const char* text) {
    IpAddress a;
    if (std::strchr(text, ':') != nullptr) {
        a.version = IpVersion::v6;
        if (inet_pton(AF_INET6, text, a.bytes.data()) != 1) violated("bad address in harness");
    } else {
        a.version = IpVersion::v4;
        if (inet_pton(AF_INET, text, a.bytes.data()) != 1) violated("bad address in harness");
    }
    return a;
}

size_t addr_len(IpVersion v) { return v == IpVersion::v4 ? 4 : 16; }

// --- the harness's own model: VIPs and grants ----------------------------------

struct ModelVip {
    IpAddress address;
    uint8_t protocol;
    uint16_t port;
    uint16_t service;
};

struct ModelGrant {
    uint16_t service;
    IpAddress prefix;
    uint8_t len;
    int64_t not_before;  // ms = ticks
    int64_t not_after;   // exclusive
    bool covers(IpVersion v, const uint8_t* src) const {
        if (prefix.version != v) return false;
        for (unsigned bit = 0; bit < len; ++bit) {
            const unsigned byte = bit / 8;
            const uint8_t mask = static_cast<uint8_t>(0x80u >> (bit % 8));
            if ((prefix.bytes[byte] & mask) != (src[byte] & mask)) return false;
        }
        return true;
    }
    bool valid(int64_t now) const { return not_before <= now && now < not_after; }
};

struct ModelBackend {
    uint16_t service;
    IpAddress address;
};

// Memory as the state file gives it: page aligned.
struct AlignedMemory {
    explicit AlignedMemory(size_t n) : size((n + 4095) / 4096 * 4096) {
        data = static_cast<std::byte*>(std::aligned_alloc(4096, size));
        std::memset(data, 0xa5, size);
    }
    std::byte* data;
    size_t size;
};

GrantTableConfig grant_config() {
    GrantTableConfig c;
    c.capacity = 256;
    c.max_service_id = 16;
    c.ticks_per_second = 1000;
    c.skew_ms = 0;
    c.hash_seed = 0x5eed;
    return c;
}

struct Node {
    AlignedMemory memory{GrantTable::bytes_needed(grant_config())};
    std::optional<GrantTableWriter> writer;
    ServiceTable services;
    WorkerCounters counters;
    std::array<ServiceCounters, 4> per_service{};
    std::unique_ptr<Pipeline> pipeline;
    std::vector<ModelVip> vips;
    std::vector<ModelGrant> grants;
    std::vector<ModelBackend> backends;
    uint64_t now = kStart;
    uint64_t inputs = 0;
    uint64_t grant_serial = 0;
    // Spare buffers for resets towards backends (the mbufs a worker lends).
    std::array<std::vector<uint8_t>, 8> spare;

    // Installs (or replaces, same key) a grant, applied at `apply_at` ms, and
    // mirrors it in the model.
    void grant(uint16_t service, const char* prefix, uint8_t len, int64_t not_before, int64_t not_after,
               int64_t apply_at) {
        const IpAddress a = ip(prefix);
        GrantEntry e;
        e.key = {service, a.version, len, a.bytes};
        ++grant_serial;
        std::memcpy(e.grant_id.data(), &grant_serial, sizeof grant_serial);
        e.issuer_key_id.fill(1);
        e.not_before_ms = not_before;
        e.not_after_ms = not_after;
        e.record_hash.fill(static_cast<uint8_t>(grant_serial));
        e.record_hash[31] = static_cast<uint8_t>(grant_serial >> 8);
        if (!upsert_succeeded(writer->upsert(e, apply_at))) violated("harness: grant not taken");
        ModelGrant m{service, a, len, not_before, not_after};
        const auto same_key = [&](const ModelGrant& g) {
            return g.service == service && g.prefix == a && g.len == len;
        };
        const auto it = std::find_if(grants.begin(), grants.end(), same_key);
        if (it != grants.end()) *it = m;
        else grants.push_back(m);
    }

    void add_service(uint16_t id, const char* name, ForwardingMode mode, uint16_t gue_port, uint32_t flags,
                     std::vector<Vip> vs, std::vector<const char*> backend_addresses) {
        ServiceSet s;
        s.name = name;
        s.mode = mode;
        s.gue_port = gue_port;
        s.flags = flags;
        s.maglev_table_size = 307;
        s.vips = vs;
        if (const ServiceApplyResult r = services.apply(id, s); !r.ok) {
            std::fprintf(stderr, "%s\n", r.error.c_str());
            violated("harness: service not applied");
        }
        BackendSet b;
        b.service = name;
        int n = 0;
        for (const char* addr : backend_addresses) {
            Backend be;
            be.id = std::string(name) + "-b" + std::to_string(++n);
            be.address = ip(addr);
            b.backends.push_back(be);
            backends.push_back({id, be.address});
        }
        if (const ServiceApplyResult r = services.apply(b); !r.ok) {
            std::fprintf(stderr, "%s\n", r.error.c_str());
            violated("harness: backends not applied");
        }
        for (const Vip& v : vs) vips.push_back({v.address, static_cast<uint8_t>(v.protocol), v.port, id});
    }

    Node() {
        GrantTableError error;
        auto w = GrantTableWriter::create({memory.data, memory.size}, grant_config(), {}, error);
        if (!w) violated("harness: grant table not created");
        writer.emplace(std::move(*w));

        add_service(kSvc4, "web4", ForwardingMode::ipip, 0, kServiceFlagAnswerEcho,
                    {{ip("203.0.113.10"), 80, L4Protocol::tcp}, {ip("203.0.113.10"), 53, L4Protocol::udp}},
                    {"172.16.0.1", "172.16.0.2", "172.16.0.3"});
        add_service(kSvc6, "web6", ForwardingMode::gue, kGuePort, 0,
                    {{ip("2001:db8::64"), 443, L4Protocol::tcp}, {ip("2001:db8::64"), 443, L4Protocol::udp}},
                    {"2001:db8:b::1", "2001:db8:b::2", "2001:db8:b::3"});

        const int64_t t = static_cast<int64_t>(kStart);
        const int64_t forever = t + 1'000'000'000'000;
        grant(kSvc4, "198.51.100.7", 32, t - 1000, forever, t - 1000);  // one /32
        grant(kSvc4, "10.1.2.0", 24, t - 1000, forever, t - 1000);      // one /24
        grant(kSvc6, "2001:db8:7::", 64, t - 1000, forever, t - 1000);  // one IPv6 /64
        grant(kSvc4, "198.51.100.8", 32, t - 9000, t - 5000, t - 9000);  // expired
        grant(kSvc6, "2001:db8:9::1", 128, forever - 1000, forever, forever - 1000);  // not yet valid
        // Inside the /24: an expired /32 and a not-yet /32 must not hide it.
        grant(kSvc4, "10.1.2.8", 32, t - 9000, t - 5000, t - 9000);
        grant(kSvc4, "10.1.2.9", 32, forever - 1000, forever, forever - 1000);
        // Starts after 100k inputs, ends after 200k.
        grant(kSvc4, "198.51.100.10", 32, t + 100'000, t + 200'000, t + 100'000);
        // Grants of one service are not the other's.
        grant(kSvc6, "198.51.100.11", 32, t - 1000, forever, t - 1000);
        grant(kSvc4, "2001:db8:8::", 64, t - 1000, forever, t - 1000);

        NodeIdentity node;
        node.mac = kNodeMac;
        node.next_hop_mac = kNextHopMac;
        node.addresses = {ip("192.0.2.10"), ip("2001:db8::10")};
        node.outer_source_v4 = {ip("10.255.0.0"), 16};
        node.outer_source_v6 = {ip("fd00:ff::"), 64};
        node.outer_ttl = 64;
        node.mtu = 1500;
        node.flow_hash_seed = 0x5eedf10e00000001;
        node.ticks_per_second = 1000;
        node.exception_allow = kExceptionArp | kExceptionIcmp | kExceptionSsh;
        node.resolver_takes_replies = true;  // ARP replies and NAs to the node: Action::resolver
        ConnTableConfig conn;
        conn.capacity = 256;  // small: fills up, entries age out within a run
        conn.idle_timeout_ms = 20'000;
        conn.closed_timeout_ms = 2'000;
        pipeline = std::make_unique<Pipeline>(node, conn, writer->reader(), counters,
                                              std::span<ServiceCounters>(per_service));
        for (auto& s : spare) s.resize(kHeadroom + kMaxFrame);
    }

    // Every kRollingCycle inputs: fresh grants that live kRollingLife ticks, so
    // flows are tracked while granted and then meet an expired grant.
    void roll_grants() {
        if ((inputs - 1) % kRollingCycle != 0) return;
        const auto n = static_cast<int64_t>(now);
        const auto end = n + static_cast<int64_t>(kRollingLife);
        grant(kSvc4, "198.51.100.9", 32, n, end, n);
        grant(kSvc6, "2001:db8:5::9", 128, n, end, n);
    }

    const ModelVip* vip_of(const FlowTuple& f) const {
        for (const ModelVip& v : vips)
            if (v.address.version == f.version &&
                std::memcmp(v.address.bytes.data(), f.dst.data(), addr_len(f.version)) == 0 &&
                v.protocol == f.proto && v.port == f.dst_port)
                return &v;
        return nullptr;
    }

    // The most specific covering grant, and whether any covering one is valid.
    struct Verdict {
        const ModelGrant* most_specific = nullptr;
        bool valid = false;
    };
    Verdict verdict(uint16_t service, IpVersion v, const uint8_t* src) const {
        Verdict r;
        for (const ModelGrant& g : grants) {
            if (g.service != service || !g.covers(v, src)) continue;
            if (g.valid(static_cast<int64_t>(now))) r.valid = true;
            if (r.most_specific == nullptr || g.len > r.most_specific->len) r.most_specific = &g;
        }
        return r;
    }

    bool is_backend(uint16_t service, IpVersion v, const uint8_t* address) const {
        return std::any_of(backends.begin(), backends.end(), [&](const ModelBackend& b) {
            return b.service == service && b.address.version == v &&
                   std::memcmp(b.address.bytes.data(), address, addr_len(v)) == 0;
        });
    }
};

Node& node() {
    static Node* n = new Node();  // never destroyed: libFuzzer may exit from any thread
    return *n;
}

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }

// The flow the parser reports, read again from the bytes by hand: the source
// and destination of the IP header, or of the quoted packet (turned round) for
// an ICMP error. Returns the source address bytes the grant must cover.
const uint8_t* checked_source(const std::vector<uint8_t>& frame, const ParsedPacket& p) {
    const FlowTuple& f = p.flow;
    const size_t size = frame.size();
    const size_t alen = addr_len(f.version);
    const uint32_t l3 = p.l3_offset;
    const bool v4 = f.version == IpVersion::v4;
    check(f.version == IpVersion::v4 || f.version == IpVersion::v6, "forwarded: flow has no IP version");
    check(l3 + (v4 ? 20u : 40u) <= size, "forwarded: IP header beyond the frame");
    check((frame[l3] >> 4) == (v4 ? 4 : 6), "forwarded: IP version field disagrees with the flow");
    const uint8_t* src;
    const uint8_t* dst;
    if (!p.icmp_error) {
        src = frame.data() + l3 + (v4 ? 12 : 8);
        dst = frame.data() + l3 + (v4 ? 16 : 24);
        if (v4) check(frame[l3 + 9] == f.proto, "forwarded: IPv4 protocol disagrees with the flow");
    } else {
        // ICMP header (8 bytes), then the quoted packet, which went VIP -> client.
        const size_t q = size_t{p.l4_offset} + 8;
        check(p.l4_present && q + (v4 ? 20u : 40u) <= size, "forwarded ICMP error: quote beyond the frame");
        check((frame[q] >> 4) == (v4 ? 4 : 6), "forwarded ICMP error: quoted version disagrees");
        dst = frame.data() + q + (v4 ? 12 : 8);  // the quote's source: the VIP
        src = frame.data() + q + (v4 ? 16 : 24);  // the quote's destination: the client
        const uint8_t icmp_type = frame[p.l4_offset];
        if (v4) check(icmp_type == 3 || icmp_type == 11, "forwarded ICMP error: not an error type (v4)");
        else check(icmp_type >= 1 && icmp_type <= 3, "forwarded ICMP error: not an error type (v6)");
    }
    check(std::memcmp(src, f.src.data(), alen) == 0, "forwarded: flow source is not the packet's");
    check(std::memcmp(dst, f.dst.data(), alen) == 0, "forwarded: flow destination is not the packet's");
    return src;
}

// A packet the pipeline sent to a backend: the client's IP packet `inner`,
// unchanged, behind Ethernet to the next hop and an outer IP header to one of
// the service's backends (and UDP to the GUE port).
void check_encapsulated(const PacketBuf& out, const uint8_t* inner, uint32_t inner_len, uint16_t service,
                        ForwardingMode mode) {
    check(out.len >= kEthLen + kIpv4Len, "encapsulated: too short");
    const uint16_t ethertype = be16(out.data + 12);
    check(ethertype == 0x0800 || ethertype == 0x86dd, "encapsulated: outer ethertype");
    const IpVersion outer = ethertype == 0x0800 ? IpVersion::v4 : IpVersion::v6;
    const auto kind = mode == ForwardingMode::gue ? EncapKind::gue : EncapKind::ipip;
    const uint32_t hdr = static_cast<uint32_t>(encap_header_len(kind, outer));
    check(out.len == hdr + inner_len, "encapsulated: length is not headers + the client's packet");
    check(std::memcmp(out.data, kNextHopMac.data(), 6) == 0, "encapsulated: not to the next hop");
    check(std::memcmp(out.data + 6, kNodeMac.data(), 6) == 0, "encapsulated: not from the port");
    const uint8_t* dst = out.data + kEthLen + (outer == IpVersion::v4 ? 16 : 24);
    check(node().is_backend(service, outer, dst), "encapsulated: outer destination is not a backend of the service");
    if (kind == EncapKind::gue) {
        const uint8_t* udp = out.data + kEthLen + (outer == IpVersion::v4 ? kIpv4Len : kIpv6Len);
        check(be16(udp + 2) == kGuePort, "encapsulated: GUE to another port");
    }
    check(std::memcmp(out.data + hdr, inner, inner_len) == 0, "encapsulated: the client's packet changed");
}

// A reset the pipeline made towards a backend: the service's encapsulation
// around a bare RST (no payload) of the flow.
void check_backend_reset(const PacketBuf& out, uint16_t service, ForwardingMode mode, const ParsedPacket& p) {
    check(out.len >= kEthLen + kIpv4Len, "backend reset: too short");
    const IpVersion outer = be16(out.data + 12) == 0x0800 ? IpVersion::v4 : IpVersion::v6;
    const auto kind = mode == ForwardingMode::gue ? EncapKind::gue : EncapKind::ipip;
    const uint32_t hdr = static_cast<uint32_t>(encap_header_len(kind, outer));
    const bool v4 = p.flow.version == IpVersion::v4;
    const uint32_t ip_len = v4 ? 20 : 40;
    check(out.len == hdr + ip_len + 20, "backend reset: not a bare RST");
    const uint8_t* ip = out.data + hdr;
    const uint8_t* tcp = ip + ip_len;
    check((v4 ? ip[9] : ip[6]) == 6, "backend reset: not TCP");
    check((tcp[13] & 0x04) != 0, "backend reset: no RST flag");
    check(std::memcmp(ip + (v4 ? 12 : 8), p.flow.src.data(), addr_len(p.flow.version)) == 0,
          "backend reset: not from the flow's client");
    const uint8_t* dst = out.data + kEthLen + (outer == IpVersion::v4 ? 16 : 24);
    check(node().is_backend(service, outer, dst), "backend reset: not to a backend of the service");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > kMaxFrame) size = kMaxFrame;
    Node& n = node();
    ++n.inputs;
    ++n.now;
    n.roll_grants();

    // The frame in a buffer of exactly the mbuf's shape (ASan sees its ends).
    const uint32_t len = static_cast<uint32_t>(size);
    const uint32_t tailroom = kMaxFrame - len;
    std::vector<uint8_t> storage(kHeadroom + kMaxFrame);
    if (size > 0) std::memcpy(storage.data() + kHeadroom, data, size);
    const std::vector<uint8_t> frame(data, data + size);
    PacketBuf pkt{storage.data() + kHeadroom, len, kHeadroom, tailroom};

    ExtraPackets extra;
    for (size_t i = 0; i < extra.bufs.size(); ++i) {
        extra.bufs[i] = {n.spare[i].data() + kHeadroom, 0, kHeadroom, kMaxFrame};
        extra.handles[i] = &n.spare[i];
    }
    extra.available = extra.bufs.size();

    const WorkerCounters before = n.counters;
    const auto per_service_before = n.per_service;
    const ServiceSnapshot& snapshot = *n.services.current();
    Action action = Action::transmit;  // the pipeline must set it
    n.pipeline->process_burst({&pkt, 1}, snapshot, n.now, {&action, 1}, &extra);

    const auto delta = [&](Counter c) { return n.counters.get(c) - before.get(c); };

    // Geometry: the packet stays in its buffer.
    check(pkt.data >= storage.data() && pkt.data - storage.data() == static_cast<ptrdiff_t>(pkt.headroom),
          "buffer: data and headroom disagree");
    check(uint64_t{pkt.headroom} + pkt.len + pkt.tailroom == storage.size(), "buffer: capacity changed");
    check(extra.used <= extra.available, "extra: used beyond available");

    // Accounting.
    check(delta(Counter::rx_packets) == 1, "counters: rx_packets did not move by one");
    check(delta(Counter::rx_bytes) == len, "counters: rx_bytes is not the frame's length");
    uint64_t parse_drops = 0;
    for (size_t i = 0; i < before.parse_drops.size(); ++i) {
        const uint64_t d = n.counters.parse_drops[i] - before.parse_drops[i];
        check(i != 0 || d == 0, "counters: parse drop under reason none");
        parse_drops += d;
    }
    uint64_t drops = parse_drops;
    for (size_t i = static_cast<size_t>(Counter::drop_unknown_vip); i < static_cast<size_t>(Counter::count_); ++i)
        drops += delta(static_cast<Counter>(i));
    check(drops == n.counters.total_drops() - before.total_drops(), "counters: total_drops disagrees");
    const uint64_t forwarded = delta(Counter::forwarded);
    const uint64_t replies = delta(Counter::arp_replies) + delta(Counter::nd_replies) + delta(Counter::echo_replies);
    const uint64_t exception = delta(Counter::to_exception) + delta(Counter::to_resolver);
    if (forwarded + replies + exception + drops != 1) {
        std::fprintf(stderr, "forwarded %llu replies %llu exception %llu drops %llu\n",
                     static_cast<unsigned long long>(forwarded), static_cast<unsigned long long>(replies),
                     static_cast<unsigned long long>(exception), static_cast<unsigned long long>(drops));
        violated("counters: the input is not accounted exactly once");
    }
    const uint64_t too_big = delta(Counter::too_big_sent);
    check(too_big <= delta(Counter::drop_too_big), "counters: too_big_sent without drop_too_big");
    const uint64_t grant_denials = delta(Counter::drop_no_grant) + delta(Counter::drop_grant_expired) +
                                   delta(Counter::drop_grant_not_yet_valid);
    const uint64_t resets = delta(Counter::resets_sent);
    check(resets >= extra.used, "counters: backend resets not counted");
    const uint64_t client_reset = resets - extra.used;
    check(client_reset <= 1, "counters: more than one reset to the client");
    check(resets == 0 || grant_denials == 1, "counters: resets without a grant denial");
    check(delta(Counter::drop_grant_busy) == 0, "grant lookup busy with no writer running");
    check(delta(Counter::from_exception) == 0 && delta(Counter::tx_packets) == 0,
          "counters: worker-loop counters moved in the pipeline");

    // The action agrees with the counters.
    const uint64_t sent = forwarded + replies + too_big + client_reset;
    check(sent <= 1, "action: more than one reason to transmit");
    switch (action) {
        case Action::transmit: check(sent == 1, "action: transmit without a counted reason"); break;
        case Action::exception: check(exception == 1, "action: exception not counted"); break;
        case Action::resolver: check(delta(Counter::to_resolver) == 1, "action: resolver not counted"); break;
        case Action::drop: check(sent == 0 && exception == 0, "action: drop of a packet counted as sent"); break;
        default: violated("action: not an Action");
    }

    // The rest needs the parsed input.
    ParsedPacket p;
    const bool parsed = parse_packet({frame.data(), frame.size()}, p) == DropReason::none;
    check(parsed || parse_drops == 1, "parser: refused frame not counted as a parse drop");
    check(!parsed || parse_drops == 0, "parser: accepted frame counted as a parse drop");
    if (!parsed) return 0;

    // Per service: forwarded packets count under the VIP's service.
    for (size_t s = 0; s < n.per_service.size(); ++s) {
        const uint64_t d = n.per_service[s].packets - per_service_before[s].packets;
        check(d <= forwarded, "per service: packets counted that were not forwarded");
    }

    // THE RULE, and the grant verdicts against the harness's own grant list.
    if (forwarded == 1 || grant_denials == 1) {
        check(p.kind == PacketKind::ip && p.l4_present && p.fragment == FragmentState::none,
              "grant stage reached by a packet that is not a whole IP packet with L4");
        const uint8_t* src = checked_source(frame, p);
        const ModelVip* vip = n.vip_of(p.flow);
        check(vip != nullptr, "grant stage reached for a destination that is no VIP of ours");
        const Node::Verdict v = n.verdict(vip->service, p.flow.version, src);
        if (forwarded == 1) {
            check(v.valid, "THE RULE: forwarded without a valid grant for the source and the VIP's service");
            check(n.per_service[vip->service].packets - per_service_before[vip->service].packets == 1,
                  "per service: forwarded packet not counted under its service");
            const ForwardingMode mode = vip->service == kSvc4 ? ForwardingMode::ipip : ForwardingMode::gue;
            check_encapsulated(pkt, frame.data() + p.l3_offset, p.l3_length, vip->service, mode);
            check(action == Action::transmit, "forwarded but not transmitted");
        } else {
            check(!v.valid, "denied although a valid grant covers the source");
            const int64_t now = static_cast<int64_t>(n.now);
            if (delta(Counter::drop_no_grant) == 1) {
                check(v.most_specific == nullptr, "no_grant although a grant covers the source");
            } else if (delta(Counter::drop_grant_expired) == 1) {
                check(v.most_specific != nullptr && v.most_specific->not_after <= now,
                      "expired, but the most specific covering grant has not ended");
            } else {
                check(v.most_specific != nullptr && v.most_specific->not_before > now,
                      "not_yet_valid, but the most specific covering grant has started");
            }
            // Resets only for TCP, never for an ICMP error.
            check(resets == 0 || (p.flow.proto == 6 && !p.icmp_error), "reset for a packet that is not TCP");
            const ForwardingMode mode = vip->service == kSvc4 ? ForwardingMode::ipip : ForwardingMode::gue;
            for (size_t i = 0; i < extra.used; ++i) check_backend_reset(extra.bufs[i], vip->service, mode, p);
        }
    } else {
        check(extra.used == 0 && resets == 0, "reset without a grant denial");
    }
    for (const DenialSample& d : n.pipeline->denial_samples()) {
        check(d.service_id == kSvc4 || d.service_id == kSvc6, "denial sample: not one of our services");
        check(d.source == p.flow.src, "denial sample: not this packet's source");
    }
    return 0;
}
