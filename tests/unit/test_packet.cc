// The packet parser, proven on a table of crafted frames (good and malformed,
// IPv4 and IPv6): each row names the frame, the verdict and, when accepted,
// what the data plane will rely on (5-tuple, fragment state, L4 presence).
#include <catch2/catch.hpp>

#include <cstring>
#include <string>
#include <vector>

#include "packet.h"
#include "packet_builder.h"

using namespace jitlb;
using namespace jitlb::test;

namespace {

struct Expect {
    DropReason reason = DropReason::none;
    PacketKind kind = PacketKind::ip;
    IpVersion version = IpVersion::none;
    uint8_t proto = 0;
    uint16_t sport = 0;
    uint16_t dport = 0;
    FragmentState fragment = FragmentState::none;
    bool l4 = false;
    bool icmp_error = false;
};

struct Row {
    std::string what;
    Bytes frame;
    Expect expect;
};

Expect drop(DropReason r) { return Expect{.reason = r}; }
Expect tcp4(uint16_t s, uint16_t d, FragmentState f = FragmentState::none) {
    return {.version = IpVersion::v4, .proto = 6, .sport = s, .dport = d, .fragment = f, .l4 = true};
}
Expect udp4(uint16_t s, uint16_t d, FragmentState f = FragmentState::none) {
    return {.version = IpVersion::v4, .proto = 17, .sport = s, .dport = d, .fragment = f, .l4 = true};
}
Expect tcp6(uint16_t s, uint16_t d, FragmentState f = FragmentState::none) {
    return {.version = IpVersion::v6, .proto = 6, .sport = s, .dport = d, .fragment = f, .l4 = true};
}
Expect udp6(uint16_t s, uint16_t d, FragmentState f = FragmentState::none) {
    return {.version = IpVersion::v6, .proto = 17, .sport = s, .dport = d, .fragment = f, .l4 = true};
}
Expect no_l4(IpVersion v, uint8_t proto, FragmentState f = FragmentState::none) {
    return {.version = v, .proto = proto, .fragment = f};
}
Expect icmp_err(IpVersion v, uint8_t inner_proto, uint16_t client_port, uint16_t vip_port) {
    return {.version = v, .proto = inner_proto, .sport = client_port, .dport = vip_port,
            .l4 = true, .icmp_error = true};
}

Bytes with_byte(Bytes b, size_t at, uint8_t v) {
    b.at(at) = v;
    return b;
}
Bytes truncated_to(Bytes b, size_t n) {
    b.resize(n);
    return b;
}

// The packet a backend sent to the client (VIP:80 -> client:40000), as a
// router quotes it in an ICMP error: the IP header and the first 8 L4 bytes.
Bytes quoted_reply_v4(uint8_t proto = 6) {
    Ipv4Opts o;
    o.src = v4(203, 0, 113, 10);
    o.dst = v4(198, 51, 100, 7);
    o.proto = proto;
    return truncated_to(ipv4(o, proto == 6 ? tcp(80, 40000, 0x12, 100) : udp(80, 40000, 100)), 28);
}
Bytes quoted_reply_v6() {
    Ipv6Opts o;
    o.src = v6(10);
    o.dst = v6(7);
    return truncated_to(ipv6(o, tcp(443, 50000, 0x12, 1400)), 48);
}

std::vector<Row> rows() {
    const Bytes t = tcp(40000, 80);
    std::vector<Row> r;
    // --- IPv4, well formed
    r.push_back({"ipv4 tcp syn", eth4(ipv4({}, t)), tcp4(40000, 80)});
    r.push_back({"ipv4 udp", eth4(ipv4({.proto = 17}, udp(5353, 53, 20))), udp4(5353, 53)});
    r.push_back({"ipv4 tcp with options (ihl 7)", eth4(ipv4({.ihl_words = 7}, t)), tcp4(40000, 80)});
    r.push_back({"ipv4 tcp data offset 15", eth4(ipv4({}, tcp(1, 2, 0x10, 0, 15))), tcp4(1, 2)});
    r.push_back({"ipv4 trailing ethernet padding ignored",
                 [&] { Bytes b = eth4(ipv4({}, t)); b.resize(b.size() + 6, 0); return b; }(),
                 tcp4(40000, 80)});
    r.push_back({"ipv4 single 802.1Q tag", eth4(ipv4({}, t), {100}), tcp4(40000, 80)});
    r.push_back({"ipv4 QinQ 802.1ad + 802.1Q", eth(0x0800, ipv4({}, t), {10, 20}, 0x88a8),
                 tcp4(40000, 80)});
    r.push_back({"ipv4 first fragment keeps ports", eth4(ipv4({.frag = 0x2000}, tcp(7, 8, 0x02, 64))),
                 tcp4(7, 8, FragmentState::first)});
    r.push_back({"ipv4 first fragment of udp may have a longer udp length",
                 eth4(ipv4({.proto = 17, .frag = 0x2000},
                           [] { Bytes u = udp(9, 10, 16); put16(u, 4, 3000); return u; }())),
                 udp4(9, 10, FragmentState::first)});
    r.push_back({"ipv4 non-first fragment has no ports",
                 eth4(ipv4({.frag = 0x0010}, Bytes(32, 0x55))), no_l4(IpVersion::v4, 6, FragmentState::non_first)});
    r.push_back({"ipv4 last fragment (offset, no MF) is non-first",
                 eth4(ipv4({.frag = 0x00ff}, Bytes(8, 0x55))), no_l4(IpVersion::v4, 6, FragmentState::non_first)});
    r.push_back({"ipv4 GRE: ip without known L4", eth4(ipv4({.proto = 47}, Bytes(8, 0))), no_l4(IpVersion::v4, 47)});
    r.push_back({"ipv4 icmp echo", eth4(ipv4({.proto = 1}, icmp(8, 0, 0x00010001))),
                 Expect{.version = IpVersion::v4, .proto = 1, .l4 = true}});
    r.push_back({"ipv4 icmp frag-needed quoting a tcp reply",
                 eth4(ipv4({.proto = 1}, icmp(3, 4, 1400, quoted_reply_v4()))),
                 icmp_err(IpVersion::v4, 6, 40000, 80)});
    r.push_back({"ipv4 icmp time exceeded quoting udp",
                 eth4(ipv4({.proto = 1}, icmp(11, 0, 0, quoted_reply_v4(17)))),
                 icmp_err(IpVersion::v4, 17, 40000, 80)});
    r.push_back({"arp request", eth(0x0806, Bytes(28, 1)), Expect{.kind = PacketKind::arp}});

    // --- IPv4, malformed
    r.push_back({"empty frame", {}, drop(DropReason::truncated)});
    r.push_back({"ethernet header cut", truncated_to(eth4(ipv4({}, t)), 13), drop(DropReason::truncated)});
    r.push_back({"ipv4 header cut at 19 bytes", truncated_to(eth4(ipv4({}, t)), 14 + 19), drop(DropReason::truncated)});
    r.push_back({"ipv4 total length beyond frame", eth4(ipv4({.total_length_delta = 1}, t)), drop(DropReason::truncated)});
    r.push_back({"ipv4 total length below header", eth4(ipv4({.total_length_delta = -21}, t)),
                 drop(DropReason::ipv4_bad_total_length)});
    r.push_back({"ipv4 ihl 4", eth4(ipv4({.ihl_words = 4}, t)), drop(DropReason::ipv4_bad_ihl)});
    r.push_back({"ipv4 ihl beyond frame", truncated_to(eth4(ipv4({.ihl_words = 15}, {})), 14 + 40),
                 drop(DropReason::truncated)});
    r.push_back({"ipv4 bad header checksum", with_byte(eth4(ipv4({}, t)), 14 + 8, 63),
                 drop(DropReason::ipv4_bad_checksum)});
    r.push_back({"ipv4 version 6 under ethertype ipv4", with_byte(eth4(ipv4({}, t)), 14, 0x65),
                 drop(DropReason::ip_bad_version)});
    r.push_back({"ipv4 tcp header cut", eth4(ipv4({}, truncated_to(t, 19))), drop(DropReason::truncated)});
    r.push_back({"ipv4 tcp data offset 4", eth4(ipv4({}, tcp(1, 2, 0x02, 0, 4))), drop(DropReason::tcp_bad_offset)});
    r.push_back({"ipv4 tcp data offset beyond packet", eth4(ipv4({}, with_byte(t, 12, 0x60))),
                 drop(DropReason::tcp_bad_offset)});
    r.push_back({"ipv4 tiny first fragment hides the tcp header",
                 eth4(ipv4({.frag = 0x2000}, truncated_to(t, 8))), drop(DropReason::truncated)});
    r.push_back({"ipv4 udp length beyond packet",
                 eth4(ipv4({.proto = 17}, [] { Bytes u = udp(1, 2, 4); put16(u, 4, 13); return u; }())),
                 drop(DropReason::udp_bad_length)});
    r.push_back({"ipv4 udp length below 8",
                 eth4(ipv4({.proto = 17}, [] { Bytes u = udp(1, 2, 4); put16(u, 4, 7); return u; }())),
                 drop(DropReason::udp_bad_length)});
    r.push_back({"ipv4 icmp header cut", eth4(ipv4({.proto = 1}, Bytes{3, 4, 0, 0})), drop(DropReason::truncated)});
    r.push_back({"ipv4 icmp error quoting icmp", eth4(ipv4({.proto = 1}, icmp(3, 1, 0, [] {
                     Ipv4Opts o; o.proto = 1; return ipv4(o, icmp(8, 0, 0)); }()))),
                 drop(DropReason::icmp_bad_inner)});
    r.push_back({"ipv4 icmp error quote too short for ports",
                 eth4(ipv4({.proto = 1}, icmp(3, 4, 1400, truncated_to(quoted_reply_v4(), 24)))),
                 drop(DropReason::icmp_bad_inner)});
    r.push_back({"ipv4 icmp error quoting a non-first fragment",
                 eth4(ipv4({.proto = 1}, icmp(3, 4, 1400, [] {
                     Bytes q = quoted_reply_v4(); q[6] = 0; q[7] = 5; return q; }()))),
                 drop(DropReason::icmp_bad_inner)});
    r.push_back({"ipv4 icmp error quoting ipv6", eth4(ipv4({.proto = 1}, icmp(3, 4, 1400, quoted_reply_v6()))),
                 drop(DropReason::icmp_bad_inner)});
    r.push_back({"three vlan tags", eth4(ipv4({}, t), {1, 2, 3}), drop(DropReason::vlan_too_deep)});
    r.push_back({"vlan tag cut", truncated_to(eth4(ipv4({}, t), {1}), 16), drop(DropReason::truncated)});
    r.push_back({"unsupported ethertype (LLDP)", eth(0x88cc, Bytes(40, 0)), drop(DropReason::l2_unsupported)});
    r.push_back({"arp body cut", eth(0x0806, Bytes(27, 1)), drop(DropReason::truncated)});

    // --- IPv6, well formed
    r.push_back({"ipv6 tcp", eth6(ipv6({}, tcp(40000, 443))), tcp6(40000, 443)});
    r.push_back({"ipv6 udp", eth6(ipv6({.proto = 17}, udp(1000, 53, 12))), udp6(1000, 53)});
    r.push_back({"ipv6 tcp behind hop-by-hop, dest-opts and routing",
                 eth6(ipv6({.ext = {ext_opts(0), ext_opts(60, 1), ext_opts(43)}}, tcp(1, 2))), tcp6(1, 2)});
    r.push_back({"ipv6 tcp behind AH (length in 4-byte units minus 2)",
                 eth6(ipv6({.ext = {{51, [] { Bytes b(16, 0); b[1] = 2; return b; }()}}}, tcp(5, 6))),
                 tcp6(5, 6)});
    r.push_back({"ipv6 atomic fragment is a whole packet",
                 eth6(ipv6({.ext = {ext_frag(0, false)}}, tcp(3, 4))), tcp6(3, 4)});
    r.push_back({"ipv6 first fragment keeps ports",
                 eth6(ipv6({.ext = {ext_frag(0, true)}}, tcp(3, 4, 0x02, 64))), tcp6(3, 4, FragmentState::first)});
    r.push_back({"ipv6 non-first fragment has no ports",
                 eth6(ipv6({.ext = {ext_frag(8, true)}}, Bytes(16, 0x77))),
                 no_l4(IpVersion::v6, 6, FragmentState::non_first)});
    r.push_back({"ipv6 esp has no readable L4", eth6(ipv6({.proto = 50}, Bytes(24, 0))), no_l4(IpVersion::v6, 50)});
    r.push_back({"ipv6 no next header", eth6(ipv6({.proto = 59}, {})), no_l4(IpVersion::v6, 59)});
    r.push_back({"ipv6 chain of 8 extension headers is walked",
                 eth6(ipv6({.ext = {ext_opts(0), ext_opts(60), ext_opts(60), ext_opts(60), ext_opts(60),
                                    ext_opts(60), ext_opts(60), ext_opts(60)}}, tcp(11, 12))), tcp6(11, 12)});
    r.push_back({"ipv6 neighbour solicitation", eth6(ipv6({.proto = 58}, icmp(135, 0, 0, v6(10)))),
                 Expect{.kind = PacketKind::ndp, .version = IpVersion::v6, .proto = 58, .l4 = true}});
    r.push_back({"ipv6 packet too big quoting a tcp reply",
                 eth6(ipv6({.proto = 58}, icmp(2, 0, 1280, quoted_reply_v6()))),
                 icmp_err(IpVersion::v6, 6, 50000, 443)});
    r.push_back({"ipv6 tcp in vlan", eth6(ipv6({}, tcp(1, 2)), {7}), tcp6(1, 2)});

    // --- IPv6, malformed
    r.push_back({"ipv6 header cut", truncated_to(eth6(ipv6({}, tcp(1, 2))), 14 + 39), drop(DropReason::truncated)});
    r.push_back({"ipv6 payload length beyond frame", eth6(ipv6({.payload_length_delta = 1}, tcp(1, 2))),
                 drop(DropReason::truncated)});
    r.push_back({"ipv6 payload length hides the tcp header",
                 eth6(ipv6({.payload_length_delta = -1}, tcp(1, 2))), drop(DropReason::truncated)});
    r.push_back({"ipv6 version 4 under ethertype ipv6", with_byte(eth6(ipv6({}, tcp(1, 2))), 14, 0x45),
                 drop(DropReason::ip_bad_version)});
    r.push_back({"ipv6 chain of 9 extension headers",
                 eth6(ipv6({.ext = {ext_opts(0), ext_opts(60), ext_opts(60), ext_opts(60), ext_opts(60),
                                    ext_opts(60), ext_opts(60), ext_opts(60), ext_opts(60)}}, tcp(1, 2))),
                 drop(DropReason::ipv6_ext_chain_too_long)});
    r.push_back({"ipv6 chain longer than 256 bytes", eth6(ipv6({.ext = {ext_opts(60, 40)}}, tcp(1, 2))),
                 drop(DropReason::ipv6_ext_chain_too_long)});
    r.push_back({"ipv6 hop-by-hop not first", eth6(ipv6({.ext = {ext_opts(60), ext_opts(0)}}, tcp(1, 2))),
                 drop(DropReason::ipv6_bad_ext_header)});
    r.push_back({"ipv6 two fragment headers",
                 eth6(ipv6({.ext = {ext_frag(0, true), ext_frag(0, true)}}, tcp(1, 2))),
                 drop(DropReason::ipv6_bad_ext_header)});
    r.push_back({"ipv6 extension header length runs past the payload",
                 eth6(ipv6({.ext = {ext_opts(60, 3)}, .payload_length_delta = -20}, tcp(1, 2))),
                 drop(DropReason::truncated)});
    r.push_back({"ipv6 first fragment too small for tcp header",
                 eth6(ipv6({.ext = {ext_frag(0, true)}}, truncated_to(tcp(1, 2), 12))), drop(DropReason::truncated)});
    r.push_back({"ipv6 udp length zero (jumbogram form) refused",
                 eth6(ipv6({.proto = 17}, [] { Bytes u = udp(1, 2, 4); put16(u, 4, 0); return u; }())),
                 drop(DropReason::udp_bad_length)});
    r.push_back({"ipv6 packet too big quoting too little",
                 eth6(ipv6({.proto = 58}, icmp(2, 0, 1280, truncated_to(quoted_reply_v6(), 44)))),
                 drop(DropReason::icmp_bad_inner)});
    r.push_back({"ipv6 packet too big quoting ipv4", eth6(ipv6({.proto = 58}, icmp(2, 0, 1280, quoted_reply_v4()))),
                 drop(DropReason::icmp_bad_inner)});
    return r;
}

}  // namespace

TEST_CASE("parser gives the expected verdict for every crafted frame", "[packet]") {
    const auto table = rows();
    REQUIRE(table.size() >= 40);
    for (const Row& row : table) {
        INFO(row.what);
        ParsedPacket p;
        const DropReason got = parse_packet(row.frame, p);
        CHECK(drop_reason_name(got) == drop_reason_name(row.expect.reason));
        if (got != DropReason::none || row.expect.reason != DropReason::none) continue;
        CHECK(static_cast<int>(p.kind) == static_cast<int>(row.expect.kind));
        if (p.kind != PacketKind::ip && row.expect.kind == PacketKind::arp) continue;
        CHECK(static_cast<int>(p.flow.version) == static_cast<int>(row.expect.version));
        CHECK(int(p.flow.proto) == int(row.expect.proto));
        CHECK(p.flow.src_port == row.expect.sport);
        CHECK(p.flow.dst_port == row.expect.dport);
        CHECK(static_cast<int>(p.fragment) == static_cast<int>(row.expect.fragment));
        CHECK(p.l4_present == row.expect.l4);
        CHECK(p.icmp_error == row.expect.icmp_error);
    }
}

TEST_CASE("parser reports offsets, addresses and tcp flags of a vlan-tagged ipv4 frame", "[packet]") {
    const Bytes f = eth4(ipv4({}, tcp(40000, 80, 0x12, 10)), {42});
    ParsedPacket p;
    REQUIRE(parse_packet(f, p) == DropReason::none);
    CHECK(p.vlan_count == 1);
    CHECK(p.vlan_ids[0] == 42);
    CHECK(p.l3_offset == 18);
    CHECK(p.l4_offset == 38);
    CHECK(p.payload_offset == 58);
    CHECK(p.l3_length == 20 + 20 + 10);
    CHECK(p.tcp_flags == 0x12);
    const uint8_t src[16] = {198, 51, 100, 7};
    const uint8_t dst[16] = {203, 0, 113, 10};
    CHECK(std::memcmp(p.flow.src.data(), src, 16) == 0);
    CHECK(std::memcmp(p.flow.dst.data(), dst, 16) == 0);
}

TEST_CASE("parser finds tcp behind an ipv6 chain and reports its offset", "[packet]") {
    const Bytes f = eth6(ipv6({.ext = {ext_opts(0), ext_opts(60, 2)}}, tcp(1, 2, 0x18, 5)));
    ParsedPacket p;
    REQUIRE(parse_packet(f, p) == DropReason::none);
    CHECK(p.l3_offset == 14);
    CHECK(p.l4_offset == 14 + 40 + 8 + 24);
    CHECK(p.tcp_flags == 0x18);
    CHECK(p.flow.dst == std::array<uint8_t, 16>{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10});
}

TEST_CASE("icmp error flow is turned round to client->VIP and carries the MTU", "[packet]") {
    ParsedPacket p;
    REQUIRE(parse_packet(eth4(ipv4({.proto = 1}, icmp(3, 4, 1400, quoted_reply_v4()))), p) ==
            DropReason::none);
    CHECK(p.icmp_error);
    CHECK(p.icmp_mtu == 1400);
    CHECK(p.flow.src == std::array<uint8_t, 16>{198, 51, 100, 7});  // the client
    CHECK(p.flow.dst == std::array<uint8_t, 16>{203, 0, 113, 10});  // the VIP
    REQUIRE(parse_packet(eth6(ipv6({.proto = 58}, icmp(2, 0, 1280, quoted_reply_v6()))), p) ==
            DropReason::none);
    CHECK(p.icmp_mtu == 1280);
    CHECK(p.flow.src[15] == 7);
    CHECK(p.flow.dst[15] == 10);
}

TEST_CASE("every truncation of a good frame is refused or parsed without reading past it", "[packet]") {
    // For each prefix of a good frame the parser must either refuse it or, if
    // the cut falls in ignorable trailing bytes, accept it: never crash (ASan
    // checks the reads) and never accept a frame cut inside a header.
    const std::vector<Bytes> goods = {
        eth4(ipv4({}, tcp(1, 2, 0x02, 4)), {5}),
        eth6(ipv6({.proto = 17, .ext = {ext_opts(0), ext_frag(0, true)}}, udp(3, 4, 4))),
        eth4(ipv4({.proto = 1}, icmp(3, 4, 1400, quoted_reply_v4()))),
    };
    for (const Bytes& good : goods) {
        ParsedPacket p;
        REQUIRE(parse_packet(good, p) == DropReason::none);
        const size_t needed = p.payload_offset;
        for (size_t n = 0; n < good.size(); ++n) {
            INFO("cut at " << n);
            // Copy into an exact-size heap buffer so ASan sees any over-read.
            std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<long>(n));
            const DropReason r = parse_packet(cut, p);
            if (n < needed) CHECK(r != DropReason::none);
        }
    }
}

TEST_CASE("every drop reason has a distinct stable name", "[packet]") {
    std::vector<std::string_view> names;
    for (int i = 0; i < static_cast<int>(DropReason::count_); ++i) {
        const auto name = drop_reason_name(static_cast<DropReason>(i));
        CHECK(name != "unknown");
        CHECK(std::find(names.begin(), names.end(), name) == names.end());
        names.push_back(name);
    }
    CHECK(drop_reason_name(DropReason::count_) == "unknown");
    CHECK(drop_reason_name(DropReason::ipv6_ext_chain_too_long) == "ipv6_ext_chain_too_long");
}

TEST_CASE("parse_ip_packet parses an IP packet without ethernet", "[packet]") {
    ParsedPacket p;
    REQUIRE(parse_ip_packet(ipv4({}, tcp(9, 10)), p) == DropReason::none);
    CHECK(p.l3_offset == 0);
    CHECK(p.flow.dst_port == 10);
    CHECK(parse_ip_packet(Bytes{0x50, 0}, p) == DropReason::ip_bad_version);
    CHECK(parse_ip_packet({}, p) == DropReason::truncated);
}

TEST_CASE("ones_complement_sum matches a plain 16-bit big-endian sum", "[packet]") {
    // A second, obvious implementation checks the word-at-a-time one, over every
    // length from 0 to 64 and a non-zero initial value.
    auto reference = [](const Bytes& b, uint32_t initial) {
        uint64_t sum = initial;
        for (size_t i = 0; i < b.size(); i += 2)
            sum += (uint32_t{b[i]} << 8) | (i + 1 < b.size() ? b[i + 1] : 0);
        while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
        return static_cast<uint16_t>(sum);
    };
    Bytes b;
    for (size_t n = 0; n <= 64; ++n) {
        INFO("length " << n);
        CHECK(ones_complement_sum(b) == reference(b, 0));
        CHECK(ones_complement_sum(b, 0x1fffe) == reference(b, 0x1fffe));
        b.push_back(static_cast<uint8_t>(0xff - n * 7));
    }
    // The inline 20-byte form, on headers of all-ones, all-zeros and mixed words
    // (carries across every fold).
    for (int fill : {0x00, 0xff, 0x80, 0x7f}) {
        for (int k = 0; k < 64; ++k) {
            Bytes h(20, static_cast<uint8_t>(fill));
            for (size_t i = 0; i < 20; ++i) h[i] = static_cast<uint8_t>(h[i] ^ ((i * 37 + static_cast<size_t>(k) * 11) & 0xff) * (k & 1));
            INFO("fill " << fill << " variant " << k);
            CHECK(ipv4_header_sum(h.data()) == reference(h, 0));
        }
    }
}
