// libFuzzer target: the packet parser on arbitrary frames. Besides memory
// safety (ASan/UBSan), it checks the parser's promises on what it accepts.
#include <cstdint>
#include <cstdlib>
#include <span>

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
    return 0;
}
