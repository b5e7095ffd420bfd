// libFuzzer target: the packet parser on arbitrary frames, and the parser of
// ARP replies and neighbour advertisements (next-hop resolution) on the same
// bytes. Besides memory safety (ASan/UBSan), it checks the parsers' promises
// on what they accept.
#include <cstdint>
#include <cstdlib>
#include <span>

#include "neighbour.h"
#include "packet.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::span<const uint8_t> frame(data, size);
    jitlb::ParsedPacket p;
    if (jitlb::parse_packet(frame, p) == jitlb::DropReason::none) {
        // Offsets of an accepted frame lie within it, in order.
        if (p.l3_offset > size || p.payload_offset > size) std::abort();
        if (p.l4_present && (p.l4_offset < p.l3_offset || p.l4_offset > p.payload_offset)) std::abort();
        if (p.fragment == jitlb::FragmentState::non_first && p.l4_present) std::abort();
        if (p.kind == jitlb::PacketKind::ip && p.l3_offset + p.l3_length > size) std::abort();
    }
    jitlb::parse_ip_packet(frame, p);
    jitlb::NeighbourReply reply;
    switch (jitlb::parse_neighbour_reply(frame, reply)) {
        case jitlb::NeighbourFrame::arp_reply:
        case jitlb::NeighbourFrame::neighbour_advert:
            // A learned MAC is always a unicast one; the sender has a family.
            if (reply.has_mac && (reply.mac[0] & 1) != 0) std::abort();
            if (reply.sender.version == jitlb::IpVersion::none) std::abort();
            break;
        case jitlb::NeighbourFrame::malformed:
            if (reply.why == nullptr || reply.why[0] == '\0') std::abort();
            break;
        case jitlb::NeighbourFrame::other: break;
    }
    return 0;
}
