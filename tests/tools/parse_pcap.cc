// parse_pcap: runs the packet parser over every frame of a pcap file and prints
// one line per frame, for tests that check the parser against an independent
// model (scapy) and for people looking at a capture.
//
//   parse_pcap FILE.pcap
//   line: <index> <verdict> <version> <proto> <src> <dst> <sport> <dport> <fragment> <l4> <icmp_error>
#include <arpa/inet.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "packet.h"
#include "pcap_file.h"

namespace {

const char* fragment_name(jitlb::FragmentState f) {
    switch (f) {
        case jitlb::FragmentState::none: return "none";
        case jitlb::FragmentState::first: return "first";
        case jitlb::FragmentState::non_first: return "non_first";
    }
    return "?";
}

void format_addr(const jitlb::FlowTuple& t, const std::array<uint8_t, 16>& a, char* out, size_t n) {
    if (t.version == jitlb::IpVersion::v4) {
        inet_ntop(AF_INET, a.data(), out, static_cast<socklen_t>(n));
    } else if (t.version == jitlb::IpVersion::v6) {
        inet_ntop(AF_INET6, a.data(), out, static_cast<socklen_t>(n));
    } else {
        std::snprintf(out, n, "-");
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: parse_pcap FILE.pcap\n");
        return 2;
    }
    jitlb::tools::PcapReader pcap(argv[1]);
    std::vector<uint8_t> frame;
    for (unsigned index = 0; pcap.next(frame); ++index) {
        jitlb::ParsedPacket p;
        const jitlb::DropReason r = jitlb::parse_packet(frame, p);
        char src[64], dst[64];
        format_addr(p.flow, p.flow.src, src, sizeof src);
        format_addr(p.flow, p.flow.dst, dst, sizeof dst);
        if (r != jitlb::DropReason::none) {
            std::printf("%u %s - - - - - - - - -\n", index, std::string(jitlb::drop_reason_name(r)).c_str());
            continue;
        }
        const char* kind = p.kind == jitlb::PacketKind::arp ? "arp" : p.kind == jitlb::PacketKind::ndp ? "ndp" : "ok";
        std::printf("%u %s %d %u %s %s %u %u %s %d %d\n", index, kind, static_cast<int>(p.flow.version),
                    p.flow.proto, src, dst, p.flow.src_port, p.flow.dst_port, fragment_name(p.fragment),
                    p.l4_present ? 1 : 0, p.icmp_error ? 1 : 0);
    }
    if (!pcap.error().empty()) {
        std::fprintf(stderr, "parse_pcap: %s\n", pcap.error().c_str());
        return 1;
    }
    return 0;
}
