// Grants (docs/grants.md): the signed, time-limited record that lets one
// source reach one service. A grant is a canonical fixed-size binary record
// (little endian, explicit offsets) followed by a detached Ed25519 signature
// over a domain prefix and the record; the same bytes travel in the command
// ring, and a text form (prefix + base64url) carries them between people and
// pipes. Decoding is strict, so every accepted grant has exactly one encoding:
// a grant is either whole and canonical or refused with a specific error.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "flow.h"
#include "issuer_keys.h"

namespace jitlb {

using GrantId = std::array<uint8_t, 16>;
using RecordHash = std::array<uint8_t, 32>;

// --- the record layout -----------------------------------------------------------
// Offsets and sizes of the version 1 record; docs/grants.md has the table.
namespace grant_layout {
inline constexpr size_t kVersion = 0;       // u8, kGrantFormatVersion
inline constexpr size_t kFamily = 1;        // u8, 4 or 6
inline constexpr size_t kPrefixLen = 2;     // u8, 0..32 or 0..128
inline constexpr size_t kServiceLen = 3;    // u8, 1..kMaxGrantServiceLen
inline constexpr size_t kSubjectLen = 4;    // u8, 1..kMaxGrantSubjectLen
inline constexpr size_t kReserved1 = 5;     // 3 bytes, zero
inline constexpr size_t kFlags = 8;         // u32, zero (no flags defined)
inline constexpr size_t kReserved2 = 12;    // 4 bytes, zero
inline constexpr size_t kIssuerKeyId = 16;  // 8 bytes
inline constexpr size_t kGrantId = 24;      // 16 bytes, not all zero
inline constexpr size_t kNotBefore = 40;    // i64, Unix ms
inline constexpr size_t kNotAfter = 48;     // i64, Unix ms, > not-before
inline constexpr size_t kAddress = 56;      // 16 bytes, network order, IPv4 in 0..3
inline constexpr size_t kService = 72;      // 32 bytes: name, then zeros
inline constexpr size_t kSubject = 104;     // 64 bytes: UTF-8, then zeros
inline constexpr size_t kEnd = 168;
inline constexpr size_t kReserved1Size = kFlags - kReserved1;
inline constexpr size_t kReserved2Size = kIssuerKeyId - kReserved2;
inline constexpr size_t kServiceField = kSubject - kService;
inline constexpr size_t kSubjectField = kEnd - kSubject;
}  // namespace grant_layout

inline constexpr uint8_t kGrantFormatVersion = 1;
inline constexpr size_t kGrantRecordSize = grant_layout::kEnd;
inline constexpr size_t kGrantSignatureSize = sizeof(GrantSignature);
inline constexpr size_t kSignedGrantSize = kGrantRecordSize + kGrantSignatureSize;
// The service-name rule is the service map's (shared_layout.h): 1..31 bytes of
// [A-Za-z0-9._-]. The subject is 1..64 bytes of UTF-8 without control
// characters.
inline constexpr size_t kMaxGrantServiceLen = 31;
inline constexpr size_t kMaxGrantSubjectLen = 64;
// Times are Unix ms in [0, 253402300800000), i.e. before the year 10000, so
// that sums of a time and a policy bound never overflow.
inline constexpr int64_t kMaxGrantTimeMs = 253'402'300'800'000;

// Signed bytes: this prefix, then the record. A signature over a grant can
// never be taken for a signature over anything else the key might sign.
inline constexpr std::string_view kGrantSignatureDomain = "jitlb-grant-v1";
// Text form: this prefix, then base64url without padding of record || signature.
inline constexpr std::string_view kGrantTextPrefix = "jitlb-grant1:";
inline constexpr size_t kGrantTextSize = kGrantTextPrefix.size() + (kSignedGrantSize * 4 + 2) / 3;

static_assert(grant_layout::kFamily == grant_layout::kVersion + 1);
static_assert(grant_layout::kPrefixLen == grant_layout::kFamily + 1);
static_assert(grant_layout::kServiceLen == grant_layout::kPrefixLen + 1);
static_assert(grant_layout::kSubjectLen == grant_layout::kServiceLen + 1);
static_assert(grant_layout::kReserved1 == grant_layout::kSubjectLen + 1);
static_assert(grant_layout::kReserved2 == grant_layout::kFlags + 4);
static_assert(grant_layout::kGrantId == grant_layout::kIssuerKeyId + sizeof(IssuerKeyId));
static_assert(grant_layout::kNotBefore == grant_layout::kGrantId + sizeof(GrantId));
static_assert(grant_layout::kNotAfter == grant_layout::kNotBefore + 8);
static_assert(grant_layout::kAddress == grant_layout::kNotAfter + 8);
static_assert(grant_layout::kService == grant_layout::kAddress + 16);
static_assert(grant_layout::kServiceField > kMaxGrantServiceLen);  // always a NUL after it
static_assert(grant_layout::kSubjectField == kMaxGrantSubjectLen);
static_assert(kGrantRecordSize == 168 && kSignedGrantSize == 232);
static_assert(kGrantTextSize == 13 + 310);

using GrantRecord = std::array<uint8_t, kGrantRecordSize>;
using SignedGrant = std::array<uint8_t, kSignedGrantSize>;  // record || signature

// --- sources ---------------------------------------------------------------------

// An address or prefix. Canonical: the family is v4 or v6, prefix_len is at
// most 32 / 128, bytes beyond the prefix are zero (and bytes 4..15 for IPv4).
struct IpPrefix {
    IpVersion family = IpVersion::v4;
    std::array<uint8_t, 16> addr{};  // network byte order, IPv4 in bytes 0..3
    uint8_t prefix_len = 32;
    friend bool operator==(const IpPrefix&, const IpPrefix&) = default;
};

// "198.51.100.0/24", "2001:db8::/64"; a bare address is /32 or /128. Strict:
// no blanks, a decimal length without leading zeros, and no host bits set
// (the error suggests the network and the single address). nullopt on error,
// with the reason in *error when given.
std::optional<IpPrefix> parse_ip_prefix(std::string_view text, std::string* error = nullptr);
// Always with the length: "198.51.100.7/32", "2001:db8::/64" (RFC 5952 form).
std::string format_ip_prefix(const IpPrefix& prefix);

// --- the grant ---------------------------------------------------------------------

struct Grant {
    uint8_t version = kGrantFormatVersion;
    IssuerKeyId issuer_key_id{};  // sign_grant fills it from the key
    GrantId grant_id{};           // the grant's identity: random_grant_id()
    std::string subject;          // who asked: 1..64 bytes of UTF-8, no control characters
    IpPrefix source;
    std::string service;        // 1..31 bytes of [A-Za-z0-9._-]
    int64_t not_before_ms = 0;  // Unix ms; valid while not_before <= now < not_after
    int64_t not_after_ms = 0;
    uint32_t flags = 0;  // none defined: must be 0
    friend bool operator==(const Grant&, const Grant&) = default;
};

// 128 bits from randombytes_buf.
GrantId random_grant_id();
std::string grant_id_hex(const GrantId& id);

// --- errors ------------------------------------------------------------------------

// Why bytes or text are not a grant. The names are stable (logs, JSON, the
// GrantRejected text): add at the end.
enum class GrantFormatError : uint8_t {
    ok = 0,
    empty,                // no bytes / no text
    unsupported_version,  // the first byte is not kGrantFormatVersion
    truncated,            // fewer bytes than a signed grant (or record)
    trailing_bytes,       // more bytes than a signed grant (or record)
    nonzero_reserved,     // a reserved byte is not zero
    unknown_flags,        // a flag bit is set; none is defined
    bad_family,           // source family not 4 or 6
    prefix_too_long,      // prefix length beyond 32 (IPv4) or 128 (IPv6)
    host_bits_set,        // address bits beyond the prefix length are not zero
    address_padding,      // IPv4 address with bytes 4..15 not zero
    zero_grant_id,        // an all-zero grant id (ids are random)
    service_length,       // service name empty or longer than 31 bytes
    service_alphabet,     // a service-name byte outside [A-Za-z0-9._-]
    service_padding,      // bytes after the service name not zero
    subject_length,       // subject empty or longer than 64 bytes
    subject_utf8,         // subject is not valid UTF-8 (overlong, surrogate, truncated, ...)
    subject_control,      // subject holds a control or bidirectional-formatting character
    subject_padding,      // bytes after the subject not zero
    time_out_of_range,    // a time below 0 or not before the year 10000
    empty_validity,       // not-after <= not-before
    text_prefix,          // text does not start with kGrantTextPrefix
    text_whitespace,      // whitespace anywhere (strip a trailing newline before parsing)
    text_padding,         // '=' in the text: the form has no padding
    text_alphabet,        // a character outside base64url
    text_length,          // a length no base64 text can have, or far too long
    text_noncanonical,    // base64 whose unused trailing bits are not zero
    count_                // number of errors; not an error
};

// "host_bits_set", ...
std::string_view grant_format_error_name(GrantFormatError error) noexcept;
// What was wrong and what to do, e.g. "the source prefix has bits set beyond
// its length (use the network address, e.g. 198.51.100.0/24)".
std::string_view grant_format_error_message(GrantFormatError error) noexcept;

// --- binary form -------------------------------------------------------------------

// The encoder's rules, applied to a struct: ok or the first violation, in the
// order the decoder checks. The version must be kGrantFormatVersion.
GrantFormatError check_grant(const Grant& grant) noexcept;
// Writes the record; `out` is untouched unless ok.
GrantFormatError encode_grant_record(const Grant& grant, GrantRecord& out) noexcept;
// Strict: exactly kGrantRecordSize bytes of a canonical record. `out` is
// untouched unless ok.
GrantFormatError decode_grant_record(std::span<const uint8_t> bytes, Grant& out);

// BLAKE2b-256 of the record (not the signature): with the grant id, how the
// data plane recognises an identical re-push of a live grant.
RecordHash grant_record_hash(std::span<const uint8_t, kGrantRecordSize> record) noexcept;

// --- signatures ----------------------------------------------------------------------

// Encodes `grant` with the key's id as issuer_key_id (whatever the struct
// holds there is replaced: it is a function of the key) and signs it.
// `out` is untouched unless ok.
GrantFormatError sign_grant(const Grant& grant, const IssuerSecretKey& key, SignedGrant& out);
// The signature over kGrantSignatureDomain || record. Does not look at the
// record: a test can make a record that names another issuer.
GrantSignature sign_grant_record(std::span<const uint8_t, kGrantRecordSize> record,
                                 const IssuerSecretKey& key) noexcept;
// crypto_sign_verify_detached over kGrantSignatureDomain || record.
bool grant_signature_valid(std::span<const uint8_t, kGrantRecordSize> record,
                           const GrantSignature& signature, const IssuerPublicKey& key) noexcept;

struct ParsedSignedGrant {
    Grant grant;
    GrantSignature signature{};
};
// Strict: exactly kSignedGrantSize bytes, a canonical record then 64 bytes of
// signature. Checks the form only, not the signature (verify_grant does).
GrantFormatError parse_signed_grant(std::span<const uint8_t> bytes, ParsedSignedGrant& out);

// --- text form -----------------------------------------------------------------------

// kGrantTextPrefix + base64url (no padding) of the signed grant: kGrantTextSize
// characters, no newline.
std::string grant_to_text(const SignedGrant& grant);
// Strict: any deviation is a specific error (the text_* errors, then those of
// parse_signed_grant for the decoded bytes). A caller reading a line strips
// one trailing newline first. `out` is untouched unless ok.
GrantFormatError grant_from_text(std::string_view text, SignedGrant& out);

// --- verification ----------------------------------------------------------------------

struct VerifyPolicy {
    // How far ahead of our clock not-before may be and still count as
    // started: the issuer's and our clocks differ by up to this.
    int64_t skew_ms = 2'000;
    // A grant whose not-before lies further than horizon (+ skew) ahead is
    // refused; nearer, it is accepted and the data plane waits for it.
    int64_t horizon_ms = 24 * 3'600'000LL;
    // Longest allowed not-after - not-before.
    int64_t max_duration_ms = 24 * 3'600'000LL;
};

// Names match GrantRejectReason (messages.h) where the two overlap.
enum class VerifyStatus : uint8_t {
    ok,
    malformed,             // see VerifyResult::format_error
    unknown_issuer,        // no trusted key has the grant's issuer key id
    bad_signature,         // the trusted key with that id did not sign these bytes
    expired,               // not_after <= now
    starts_too_far_ahead,  // not_before > now + horizon + skew
    too_long,              // not_after - not_before > max_duration
};

std::string_view verify_status_name(VerifyStatus status) noexcept;

struct VerifyResult {
    VerifyStatus status = VerifyStatus::malformed;
    GrantFormatError format_error = GrantFormatError::ok;  // when malformed
    // Decoded whenever status != malformed, so that a rejection can name the
    // grant id; the contents are authentic only when status == ok.
    Grant grant;
    RecordHash record_hash{};  // likewise
    bool ok() const noexcept { return status == VerifyStatus::ok; }
};

// Checks, in order: form (malformed), issuer (unknown_issuer), the cheap time
// rules (expired, starts_too_far_ahead, too_long), and last the signature
// (about 44 us), so that a flood of stale or foreign grants costs little. Only
// ok says the grant is authentic.
VerifyResult verify_grant(std::span<const uint8_t> signed_grant, const TrustedIssuers& issuers,
                          const VerifyPolicy& policy, int64_t now_ms);

// "grant 5f0c... rejected: expired (not-after 2024-... is before now)": for
// logs and the GrantRejected text.
std::string describe_verify_result(const VerifyResult& result, int64_t now_ms);

}  // namespace jitlb
