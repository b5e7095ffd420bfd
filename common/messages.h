// The typed, versioned messages of the two rings (docs/shared-region.md,
// "Messages"): commands from jitd to jitlb and events back. One encoder and one
// strict decoder for jitd, jitlb and the tests. A message on its own is the
// same bytes as a ring record: a 16-byte RecordHeader, then a little-endian
// payload. The decoder checks every length and value and refuses leftovers, so
// whatever it accepts re-encodes to the same bytes; the encoder applies the
// same rules, so it cannot produce what the decoder refuses.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "flow.h"
#include "shared_layout.h"
#include "spsc_ring.h"

namespace jitlb {

enum class MessageType : uint16_t {
    // Commands, jitd -> jitlb.
    grant_push = 0x0001,
    revoke = 0x0002,
    service_set = 0x0003,
    backend_set = 0x0004,
    key_reload = 0x0005,
    service_delete = 0x0006,
    // Events, jitlb -> jitd.
    grant_activated = 0x0101,
    grant_rejected = 0x0102,
    grant_revoked = 0x0103,
    grant_expired = 0x0104,
    denial_sample = 0x0105,
    service_applied = 0x0106,
    command_rejected = 0x0107,
    keys_reloaded = 0x0108,
};

// Every type is at version 1; a type that changes gets its own number here.
inline constexpr uint16_t kMessageVersion = 1;

// Limits (part of the layout hash).
inline constexpr size_t kMaxGrantBytes = 1024;  // a signed grant: record + signature
inline constexpr size_t kMaxVips = 16;
inline constexpr size_t kMaxBackends = 4096;
inline constexpr size_t kMaxBackendIdLen = 63;
inline constexpr size_t kMaxTextLen = 127;
inline constexpr uint32_t kMinMaglevTableSize = 3;
inline constexpr uint32_t kMaxMaglevTableSize = 1u << 24;
inline constexpr uint32_t kServiceFlagDisabled = 1u << 0;    // defined, not forwarding
inline constexpr uint32_t kServiceFlagAnswerEcho = 1u << 1;  // ICMP echo to its VIP addresses is answered
inline constexpr uint32_t kServiceFlagsKnown = kServiceFlagDisabled | kServiceFlagAnswerEcho;

enum class ForwardingMode : uint8_t { ipip = 1, gue = 2, l2dsr = 3 };
enum class L4Protocol : uint8_t { tcp = 6, udp = 17 };

enum class RevokeReason : uint16_t {
    by_operator = 1,  // "operator": jitctl revoke
    request_withdrawn = 2,
    policy = 3,
    reconcile = 4,           // jitd re-sends a revocation after a restart
    issuer_key_removed = 5,  // jitlb, in GrantRevoked
};

enum class GrantRejectReason : uint16_t {
    malformed = 1,
    bad_signature = 2,
    unknown_issuer = 3,
    expired = 4,
    starts_too_far_ahead = 5,
    too_long = 6,
    superseded = 7,  // the entry for the key ends later, or this grant has not started
    revoked = 8,     // its id is in the revoked set
    unknown_service = 9,
    table_full = 10,
    revoked_set_full = 11,
    backlog_full = 12,  // verification backlog full: push it again
};

enum class DenialReason : uint16_t {
    no_grant = 1,
    grant_not_yet_valid = 2,
    grant_expired = 3,
    flow_reset = 4,  // a tracked flow whose grant ended got resets
};

enum class CommandRejectReason : uint16_t {
    malformed = 1,
    unknown_type = 2,
    unsupported_version = 3,
    too_large = 4,
    wrong_direction = 5,  // an event type on the command ring
    unknown_service = 6,
    invalid_service = 7,  // e.g. a table size that is not prime
    service_map_full = 8,
    backlog_full = 9,
    key_reload_failed = 10,
    internal = 11,
};

using GrantId = std::array<uint8_t, 16>;


// --- commands -------------------------------------------------------------------

struct GrantPush {
    uint64_t push_sequence = 0;  // jitd's own counter, for its logs
    std::vector<uint8_t> grant;  // signed grant bytes, opaque here; 1..kMaxGrantBytes
    friend bool operator==(const GrantPush&, const GrantPush&) = default;
};

struct Revoke {
    GrantId grant_id{};
    uint64_t not_after_ms = 0;  // jitlb keeps the id revoked until then
    RevokeReason reason = RevokeReason::by_operator;
    friend bool operator==(const Revoke&, const Revoke&) = default;
};

struct Vip {
    IpAddress address;
    uint16_t port = 0;  // 1..65535; 0: no port (3-tuple mode: every packet of the protocol, fragments too)
    L4Protocol protocol = L4Protocol::tcp;
    friend bool operator==(const Vip&, const Vip&) = default;
};

struct ServiceSet {
    std::string name;
    ForwardingMode mode = ForwardingMode::ipip;
    uint16_t gue_port = 0;  // non-zero iff mode is gue
    uint32_t maglev_table_size = 65537;
    uint32_t flags = 0;     // kServiceFlag*
    std::vector<Vip> vips;  // 1..kMaxVips
    friend bool operator==(const ServiceSet&, const ServiceSet&) = default;
};

struct Backend {
    std::string id;  // 1..63 bytes of 0x21..0x7e: the Maglev id
    IpAddress address;
    // Its share of new flows. 0 is valid and means draining: the backend keeps
    // the flows jitlb already tracks to it but Maglev gives it no new ones.
    uint32_t weight = 1;
    std::array<uint8_t, 6> mac{};  // for L2 DSR; zero otherwise
    friend bool operator==(const Backend&, const Backend&) = default;
};

struct BackendSet {
    std::string service;
    std::vector<Backend> backends;  // 0..kMaxBackends
    friend bool operator==(const BackendSet&, const BackendSet&) = default;
};

// Asks jitlb to re-read its own issuer key file; carries no keys.
struct KeyReload {
    friend bool operator==(const KeyReload&, const KeyReload&) = default;
};

struct ServiceDelete {
    std::string name;
    friend bool operator==(const ServiceDelete&, const ServiceDelete&) = default;
};

// --- events ---------------------------------------------------------------------

struct GrantActivated {
    GrantId grant_id{};
    uint32_t service_id = 0;
    uint64_t not_after_ms = 0;
    friend bool operator==(const GrantActivated&, const GrantActivated&) = default;
};

struct GrantRejected {
    GrantId grant_id{};  // zero when the grant was too malformed to have one
    GrantRejectReason reason = GrantRejectReason::malformed;
    std::string text;  // 0..127 bytes of printable ASCII
    friend bool operator==(const GrantRejected&, const GrantRejected&) = default;
};

struct GrantRevoked {
    GrantId grant_id{};
    RevokeReason reason = RevokeReason::by_operator;
    friend bool operator==(const GrantRevoked&, const GrantRevoked&) = default;
};

struct GrantExpired {
    GrantId grant_id{};
    uint64_t not_after_ms = 0;
    friend bool operator==(const GrantExpired&, const GrantExpired&) = default;
};

struct DenialSample {
    IpVersion family = IpVersion::v4;  // of both addresses
    uint8_t protocol = 0;              // any IP protocol
    DenialReason reason = DenialReason::no_grant;
    uint32_t service_id = 0;  // 0: none
    std::array<uint8_t, 16> source{};
    std::array<uint8_t, 16> vip{};
    uint16_t vip_port = 0;
    uint64_t count = 0;  // denials of this kind since the last sample
    friend bool operator==(const DenialSample&, const DenialSample&) = default;
};

struct ServiceApplied {
    uint64_t command_sequence = 0;
    uint32_t service_id = 0;
    uint64_t generation = 0;
    std::string name;
    friend bool operator==(const ServiceApplied&, const ServiceApplied&) = default;
};

struct CommandRejected {
    uint64_t command_sequence = 0;
    uint16_t command_type = 0;  // as found, even if unknown
    CommandRejectReason reason = CommandRejectReason::malformed;
    std::string text;
    friend bool operator==(const CommandRejected&, const CommandRejected&) = default;
};

struct KeysReloaded {
    uint64_t command_sequence = 0;
    uint32_t key_count = 0;
    uint32_t grants_ended = 0;  // grants of keys that were removed
    friend bool operator==(const KeysReloaded&, const KeysReloaded&) = default;
};

// The variant's order is not part of the format (the type numbers are).
using Message = std::variant<GrantPush, Revoke, ServiceSet, BackendSet, KeyReload, ServiceDelete,
                             GrantActivated, GrantRejected, GrantRevoked, GrantExpired,
                             DenialSample, ServiceApplied, CommandRejected, KeysReloaded>;

enum class Direction : uint8_t { command, event };

MessageType message_type(const Message& message) noexcept;
// "grant_push", ..., or "unknown" for a number that names no type.
std::string_view message_type_name(uint16_t type) noexcept;
bool is_known_type(uint16_t type) noexcept;
Direction type_direction(MessageType type) noexcept;
std::string_view revoke_reason_name(RevokeReason reason) noexcept;
std::string_view grant_reject_reason_name(GrantRejectReason reason) noexcept;
std::string_view denial_reason_name(DenialReason reason) noexcept;
std::string_view command_reject_reason_name(CommandRejectReason reason) noexcept;

// Types, versions and limits, for the layout hash.
std::span<const uint64_t> message_catalogue_facts();

// --- errors ---------------------------------------------------------------------

enum class MessageError : uint8_t {
    ok = 0,
    truncated,       // fewer bytes than a field or the header's length needs
    trailing_bytes,  // bytes after the message
    unknown_type,
    unsupported_version,
    wrong_direction,  // an event where a command is expected, or the reverse
    string_length,    // a string outside its length bounds
    string_alphabet,  // a byte outside the string's alphabet
    count_limit,      // a count (VIPs, backends, grant bytes) beyond its bounds
    bad_family,       // address family not 4 or 6
    nonzero_padding,  // an IPv4 address with bytes 4..15 not zero
    bad_enum,         // a value outside its enum (mode, protocol, reason)
    bad_flags,        // unknown flag bits
    bad_value,        // a field outside its range (port 0, table size, gue port)
    too_large,        // more than a ring can carry
};

std::string_view message_error_name(MessageError error) noexcept;

// Where and why: the field, its byte offset in the message (header included)
// and the offending value.
struct MessageFault {
    MessageError error = MessageError::ok;
    uint32_t offset = 0;
    const char* field = "";
    uint64_t value = 0;
    bool ok() const noexcept { return error == MessageError::ok; }
};

// "service_set.vip_count at byte 48: count_limit (value 17)".
std::string describe_message_fault(const MessageFault& fault);
// The CommandRejected reason jitlb answers a command that failed to decode with.
CommandRejectReason command_reject_reason(MessageError error) noexcept;

// --- encoding and decoding ----------------------------------------------------------

struct DecodedMessage {
    uint64_t sequence = 0;
    Message message;
};

// The encoder's rules (the decoder's, on a struct): ok or the first fault.
MessageFault check_message(const Message& message);
// Payload bytes of a message that passes check_message.
size_t encoded_payload_size(const Message& message);
// Writes exactly encoded_payload_size() bytes into `out`, which must be that size.
MessageFault encode_payload(const Message& message, std::span<uint8_t> out);
// Strict: `payload` is exactly one payload of `type` at `version`.
MessageFault decode_payload(uint16_t type, uint16_t version, std::span<const uint8_t> payload,
                            Message& message);

// Header + payload, as in a ring record.
MessageFault encode_message(const Message& message, uint64_t sequence, std::vector<uint8_t>& out);
MessageFault decode_message(std::span<const uint8_t> bytes, DecodedMessage& decoded);

// --- on a ring ------------------------------------------------------------------------

struct SendResult {
    MessageFault message;  // the message broke a rule: nothing written
    PushResult ring;       // otherwise the ring's answer (full, not_attached, ...)
    bool ok() const noexcept { return message.ok() && ring.error == RingError::ok; }
};

// Checks the message and encodes it straight into the producer's slots.
SendResult push_message(RingProducer& producer, const Message& message);

enum class ReceiveStatus : uint8_t {
    ok,            // `decoded` holds the message
    empty,         // nothing to read
    rejected,      // a sound record with a bad message: consumed; answer it (fault, type,
                   // sequence) with CommandRejected
    ring_corrupt,  // the ring itself: nothing consumed; see RingConsumer::fault()
};

struct ReceiveResult {
    ReceiveStatus status = ReceiveStatus::empty;
    MessageFault fault;  // when rejected
    uint16_t type = 0;   // of the record (ok or rejected)
    uint16_t version = 0;
    uint64_t sequence = 0;
};

// Pops the next record into `buffer` (RingConsumer::max_record_bytes() holds
// any) and decodes it; a record of the wrong direction, or larger than the
// buffer, is consumed and rejected.
ReceiveResult pop_message(RingConsumer& consumer, Direction expected, std::span<uint8_t> buffer,
                          DecodedMessage& decoded);

}  // namespace jitlb
