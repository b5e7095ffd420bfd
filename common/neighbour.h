// The frames of next-hop resolution: the ARP requests and IPv6 neighbour
// solicitations jitlb's main lcore sends to learn the MAC of the router that
// encapsulated packets go to, and the parser of the ARP replies and neighbour
// advertisements that answer them. Bytes only (no DPDK, no mbuf): the main
// lcore, unit tests and the packet fuzz target call the same functions.
//
// Replies are untrusted input: the parser checks every length, the ARP
// header's fixed fields, the ICMPv6 checksum, the hop limit (RFC 4861 7.1.2:
// 255, so the advertisement was not routed) and the options' lengths, and
// says why it refused a frame rather than reading past it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "encap.h"
#include "flow.h"

namespace jitlb {

inline constexpr size_t kArpRequestLen = 42;              // Ethernet + ARP, unpadded (the NIC pads)
inline constexpr size_t kNeighbourSolicitationLen = 86;  // Ethernet + IPv6 + NS + source link-layer option

// ff02::1:ffXX:XXXX for `target` (RFC 4291 2.7.1): where a solicitation goes.
IpAddress solicited_node_address(const IpAddress& target) noexcept;
// 33:33 and the group's low 32 bits (RFC 2464 7).
MacAddress ipv6_multicast_mac(const IpAddress& group) noexcept;

// Writes an ARP request "who has `target`? tell `sender_ip`" from
// `sender_mac` into `out`: to the broadcast address, or to `unicast_to` when
// it is not null (a refresh of a known MAC, as Linux's unicast probe).
// Returns the frame's length, or 0 when `out` is too short or an address is
// not IPv4.
size_t write_arp_request(std::span<uint8_t> out, const MacAddress& sender_mac, const IpAddress& sender_ip,
                         const IpAddress& target, const MacAddress* unicast_to = nullptr) noexcept;

// Writes a neighbour solicitation for `target` from (`src_mac`, `src_ip`)
// with the source link-layer address option, hop limit 255 and its ICMPv6
// checksum: to the target's solicited-node group, or to the target itself at
// `unicast_to` when that is not null. Returns the length, or 0 when `out` is
// too short or an address is not IPv6.
size_t write_neighbour_solicitation(std::span<uint8_t> out, const MacAddress& src_mac, const IpAddress& src_ip,
                                    const IpAddress& target, const MacAddress* unicast_to = nullptr) noexcept;

// What parse_neighbour_reply found.
enum class NeighbourFrame : uint8_t {
    arp_reply,         // ARP, Ethernet/IPv4, operation 2
    neighbour_advert,  // ICMPv6 type 136 that passed every check
    other,             // a well-formed frame of another kind (an ARP request, IP, another ND type)
    malformed,         // refused: `why` says what was wrong
};

struct NeighbourReply {
    IpAddress sender{};  // ARP: the sender protocol address; NA: the target address
    MacAddress mac{};    // ARP: the sender hardware address; NA: the target link-layer option
    bool has_mac = false;  // an NA may leave the option out (RFC 4861 7.2.4, to a unicast NS)
    bool solicited = false;  // NA's S flag (ARP replies: always true)
    const char* why = "";    // for malformed: a short reason
};

// Parses an Ethernet frame (up to two VLAN tags, as parse_packet) that should
// be an ARP reply or a neighbour advertisement. Fills `out` for arp_reply and
// neighbour_advert only. A multicast or zero MAC in a reply is malformed.
NeighbourFrame parse_neighbour_reply(std::span<const uint8_t> frame, NeighbourReply& out) noexcept;

}  // namespace jitlb
