// encap_pcap: encapsulates every IP frame of a pcap towards one backend, as the
// data plane would, and writes the result to another pcap; prints the flow hash
// it used per frame so an independent model (scapy) can predict the entropy
// fields and compare the output byte for byte.
//
//   encap_pcap ipip|gue BACKEND SRC4/LEN SRC6/LEN SEED IN.pcap OUT.pcap
//   Ethernet: source 02:00:00:00:00:aa (port), destination 02:00:00:00:00:bb
//   (next hop); TTL 64; GUE port 6080. Output line: <index> <hash hex> <verdict>
#include <arpa/inet.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "encap.h"
#include "flow_hash.h"
#include "grant.h"
#include "packet.h"
#include "pcap_file.h"

namespace {

bool parse_address(const std::string& text, jitlb::IpAddress& out) {
    if (inet_pton(AF_INET, text.c_str(), out.bytes.data()) == 1) {
        out.version = jitlb::IpVersion::v4;
        return true;
    }
    if (inet_pton(AF_INET6, text.c_str(), out.bytes.data()) == 1) {
        out.version = jitlb::IpVersion::v6;
        return true;
    }
    return false;
}

// An outer source prefix of `family`, as strict as jitlb's [encap] outer_source_v4/v6.
bool parse_prefix(const char* text, jitlb::IpVersion family, jitlb::SourcePrefix& out) {
    std::string why;
    const std::optional<jitlb::IpPrefix> prefix = jitlb::parse_ip_prefix(text, &why);
    if (!prefix) {
        std::fprintf(stderr, "encap_pcap: %s\n", why.c_str());
        return false;
    }
    if (prefix->family != family) {
        std::fprintf(stderr, "encap_pcap: '%s' is not an %s prefix\n", text,
                     family == jitlb::IpVersion::v4 ? "IPv4" : "IPv6");
        return false;
    }
    out.base.version = prefix->family;
    out.base.bytes = prefix->addr;
    out.prefix_len = prefix->prefix_len;
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 8) {
        std::fprintf(stderr, "usage: encap_pcap ipip|gue BACKEND SRC4/LEN SRC6/LEN SEED IN.pcap OUT.pcap\n");
        return 2;
    }
    jitlb::EncapParams params;
    const std::string kind = argv[1];
    params.kind = kind == "gue" ? jitlb::EncapKind::gue : jitlb::EncapKind::ipip;
    params.src_mac = {0x02, 0, 0, 0, 0, 0xaa};
    params.dst_mac = {0x02, 0, 0, 0, 0, 0xbb};
    jitlb::IpAddress backend;
    if ((kind != "ipip" && kind != "gue") || !parse_address(argv[2], backend) ||
        !parse_prefix(argv[3], jitlb::IpVersion::v4, params.source_v4) ||
        !parse_prefix(argv[4], jitlb::IpVersion::v6, params.source_v6)) {
        std::fprintf(stderr, "encap_pcap: bad kind, backend or source prefix\n");
        return 2;
    }
    const uint64_t seed = std::strtoull(argv[5], nullptr, 0);
    jitlb::tools::PcapReader in(argv[6]);
    jitlb::tools::PcapWriter out(argv[7]);
    if (!out.ok()) {
        std::fprintf(stderr, "encap_pcap: cannot write %s\n", argv[7]);
        return 1;
    }
    std::vector<uint8_t> frame, packet;
    for (unsigned index = 0; in.next(frame); ++index) {
        jitlb::ParsedPacket p;
        const jitlb::DropReason r = jitlb::parse_packet(frame, p);
        if (r != jitlb::DropReason::none || p.kind != jitlb::PacketKind::ip) {
            std::printf("%u - %s\n", index, std::string(jitlb::drop_reason_name(r)).c_str());
            continue;
        }
        const uint64_t hash = jitlb::flow_hash(p.flow, seed);
        const size_t hlen = jitlb::encap_header_len(params.kind, backend.version);
        packet.assign(hlen, 0);
        packet.insert(packet.end(), frame.begin() + p.l3_offset,
                      frame.begin() + p.l3_offset + p.l3_length);
        const auto e = jitlb::write_encap_headers({packet.data(), hlen},
                                                  {packet.data() + hlen, p.l3_length}, backend,
                                                  hash, params);
        if (e != jitlb::EncapError::ok) {
            std::printf("%u %016llx error%d\n", index, static_cast<unsigned long long>(hash),
                        static_cast<int>(e));
            continue;
        }
        out.write(packet.data(), packet.size());
        std::printf("%u %016llx ok\n", index, static_cast<unsigned long long>(hash));
    }
    if (!in.error().empty()) {
        std::fprintf(stderr, "encap_pcap: %s\n", in.error().c_str());
        return 1;
    }
    return 0;
}
