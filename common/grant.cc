// Grant record, signature, text form and verification (see grant.h).
#include "grant.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <iterator>

#include <fmt/format.h>

#include "shared_layout.h"
#include "sodium_init.h"

namespace jitlb {

static_assert(kGrantSignatureSize == crypto_sign_BYTES);
static_assert(kMaxGrantServiceLen == kMaxServiceNameLen);
static_assert(crypto_generichash_BYTES == sizeof(RecordHash));

namespace {

namespace L = grant_layout;

// --- little-endian fields -------------------------------------------------------

void store_u32(uint8_t* p, uint32_t v) noexcept {
    for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

void store_i64(uint8_t* p, int64_t value) noexcept {
    const auto v = static_cast<uint64_t>(value);
    for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint32_t load_u32(const uint8_t* p) noexcept {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}

int64_t load_i64(const uint8_t* p) noexcept {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
    return static_cast<int64_t>(v);
}

bool all_zero(std::span<const uint8_t> bytes) noexcept {
    return std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0; });
}

// --- field rules -------------------------------------------------------------------

unsigned max_prefix_len(IpVersion family) noexcept {
    return family == IpVersion::v4 ? 32 : 128;
}

// Whether every address bit beyond prefix_len is zero.
bool host_bits_zero(const IpPrefix& p) noexcept {
    const unsigned bits = max_prefix_len(p.family);
    for (unsigned bit = p.prefix_len; bit < bits; ++bit) {
        if (p.addr[bit / 8] & (0x80u >> (bit % 8))) return false;
    }
    return true;
}

IpPrefix network_of(IpPrefix p) noexcept {
    const unsigned bits = max_prefix_len(p.family);
    for (unsigned bit = p.prefix_len; bit < bits; ++bit) {
        p.addr[bit / 8] = static_cast<uint8_t>(p.addr[bit / 8] & ~(0x80u >> (bit % 8)));
    }
    return p;
}

GrantFormatError check_source(const IpPrefix& p) noexcept {
    if (p.family != IpVersion::v4 && p.family != IpVersion::v6) return GrantFormatError::bad_family;
    if (p.prefix_len > max_prefix_len(p.family)) return GrantFormatError::prefix_too_long;
    if (p.family == IpVersion::v4 && !all_zero(std::span(p.addr).subspan(4))) {
        return GrantFormatError::address_padding;
    }
    if (!host_bits_zero(p)) return GrantFormatError::host_bits_set;
    return GrantFormatError::ok;
}

GrantFormatError check_service(std::string_view service) noexcept {
    if (service.empty() || service.size() > kMaxGrantServiceLen) {
        return GrantFormatError::service_length;
    }
    // The service map's rule: a grant names exactly what a ServiceSet can define.
    if (!valid_service_name(service)) return GrantFormatError::service_alphabet;
    return GrantFormatError::ok;
}

// Code points a subject must not hold: they would make it print as something
// else in logs, terminals and approval prompts (controls, line separators,
// bidirectional overrides as in "Trojan Source").
bool forbidden_in_subject(uint32_t cp) noexcept {
    return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0x061c || cp == 0x200e ||
           cp == 0x200f || cp == 0x2028 || cp == 0x2029 || (cp >= 0x202a && cp <= 0x202e) ||
           (cp >= 0x2066 && cp <= 0x2069);
}

// Strict UTF-8 (RFC 3629): shortest form only, no surrogates, at most U+10FFFF.
GrantFormatError check_subject(std::string_view subject) noexcept {
    if (subject.empty() || subject.size() > kMaxGrantSubjectLen) {
        return GrantFormatError::subject_length;
    }
    bool control = false;
    size_t i = 0;
    while (i < subject.size()) {
        const auto b0 = static_cast<uint8_t>(subject[i]);
        uint32_t cp = 0;
        size_t len = 0;
        uint32_t min = 0;
        if (b0 < 0x80) {
            cp = b0, len = 1, min = 0;
        } else if ((b0 & 0xe0) == 0xc0) {
            cp = b0 & 0x1fu, len = 2, min = 0x80;
        } else if ((b0 & 0xf0) == 0xe0) {
            cp = b0 & 0x0fu, len = 3, min = 0x800;
        } else if ((b0 & 0xf8) == 0xf0) {
            cp = b0 & 0x07u, len = 4, min = 0x10000;
        } else {
            return GrantFormatError::subject_utf8;  // continuation byte or 0xf8..0xff
        }
        if (subject.size() - i < len) return GrantFormatError::subject_utf8;
        for (size_t k = 1; k < len; ++k) {
            const auto b = static_cast<uint8_t>(subject[i + k]);
            if ((b & 0xc0) != 0x80) return GrantFormatError::subject_utf8;
            cp = (cp << 6) | (b & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return GrantFormatError::subject_utf8;
        }
        control = control || forbidden_in_subject(cp);
        i += len;
    }
    // Encoding errors first: a control "character" in broken UTF-8 is not one.
    return control ? GrantFormatError::subject_control : GrantFormatError::ok;
}

GrantFormatError check_times(int64_t not_before, int64_t not_after) noexcept {
    const auto in_range = [](int64_t t) { return t >= 0 && t < kMaxGrantTimeMs; };
    if (!in_range(not_before) || !in_range(not_after)) return GrantFormatError::time_out_of_range;
    if (not_after <= not_before) return GrantFormatError::empty_validity;
    return GrantFormatError::ok;
}

// The message Ed25519 signs: domain || record.
using SignedMessage = std::array<uint8_t, kGrantSignatureDomain.size() + kGrantRecordSize>;

SignedMessage signed_message(std::span<const uint8_t, kGrantRecordSize> record) noexcept {
    SignedMessage message{};
    std::memcpy(message.data(), kGrantSignatureDomain.data(), kGrantSignatureDomain.size());
    std::memcpy(message.data() + kGrantSignatureDomain.size(), record.data(), record.size());
    return message;
}

bool is_text_whitespace(char c) noexcept {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

bool is_base64url_char(char c) noexcept {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

// Longer text is refused before decoding: no grant version needs 4 KiB.
constexpr size_t kMaxGrantTextBody = 4096;

int64_t clamp_time(int64_t t, int64_t low) noexcept {
    return std::clamp(t, low, kMaxGrantTimeMs);
}

}  // namespace

// --- sources ------------------------------------------------------------------------

std::optional<IpPrefix> parse_ip_prefix(std::string_view text, std::string* error) {
    const auto fail = [&](std::string why) -> std::optional<IpPrefix> {
        if (error) *error = std::move(why);
        return std::nullopt;
    };
    const size_t slash = text.find('/');
    const std::string_view addr_text = text.substr(0, slash);
    const bool has_len = slash != std::string_view::npos;
    const std::string_view len_text = has_len ? text.substr(slash + 1) : std::string_view{};

    // inet_pton stops at a NUL and accepts what came before: allow only address characters.
    const bool addr_chars_ok =
        !addr_text.empty() && std::all_of(addr_text.begin(), addr_text.end(), [](char c) {
            return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
                   c == '.' || c == ':';
        });
    if (!addr_chars_ok) {
        return fail(
            fmt::format("'{}' is not an IPv4 or IPv6 address (expected e.g. "
                        "198.51.100.0/24 or 2001:db8::/64)",
                        text));
    }
    IpPrefix prefix;
    const std::string addr(addr_text);
    if (addr.find(':') != std::string::npos) {
        prefix.family = IpVersion::v6;
        if (inet_pton(AF_INET6, addr.c_str(), prefix.addr.data()) != 1) {
            return fail(fmt::format("'{}' is not an IPv6 address", addr));
        }
    } else {
        prefix.family = IpVersion::v4;
        if (inet_pton(AF_INET, addr.c_str(), prefix.addr.data()) != 1) {
            return fail(
                fmt::format("'{}' is not an IPv4 address (dotted decimal, four parts)", addr));
        }
    }
    const unsigned max_len = max_prefix_len(prefix.family);
    prefix.prefix_len = static_cast<uint8_t>(max_len);
    if (has_len) {
        const bool digits = !len_text.empty() && len_text.size() <= 3 &&
                            std::all_of(len_text.begin(), len_text.end(),
                                        [](char c) { return c >= '0' && c <= '9'; });
        unsigned len = 0;
        for (const char c : len_text) len = len * 10 + static_cast<unsigned>(c - '0');
        if (!digits || (len_text.size() > 1 && len_text[0] == '0') || len > max_len) {
            return fail(fmt::format("'{}': the prefix length must be a number from 0 to {}", text,
                                    max_len));
        }
        prefix.prefix_len = static_cast<uint8_t>(len);
    }
    if (!host_bits_zero(prefix)) {
        IpPrefix single = prefix;
        single.prefix_len = static_cast<uint8_t>(max_len);
        return fail(
            fmt::format("'{}' has bits set beyond the prefix length: write the network, "
                        "{}, or the single address, {}",
                        text, format_ip_prefix(network_of(prefix)), format_ip_prefix(single)));
    }
    return prefix;
}

std::string format_ip_prefix(const IpPrefix& prefix) {
    char buf[INET6_ADDRSTRLEN] = {};
    const int af = prefix.family == IpVersion::v4 ? AF_INET : AF_INET6;
    if (inet_ntop(af, prefix.addr.data(), buf, sizeof buf) == nullptr) return "(bad address)";
    return fmt::format("{}/{}", buf, prefix.prefix_len);
}

// --- the grant ---------------------------------------------------------------------------

GrantId random_grant_id() {
    ensure_sodium();
    GrantId id{};
    do {
        randombytes_buf(id.data(), id.size());
    } while (all_zero(id));  // zero is refused by the decoder; never in practice
    return id;
}

std::string grant_id_hex(const GrantId& id) {
    std::string hex;
    for (const uint8_t b : id) hex += fmt::format("{:02x}", b);
    return hex;
}

// --- errors ----------------------------------------------------------------------------

// Indexed by GrantFormatError: {name, message}.
struct FormatErrorText {
    std::string_view name;
    std::string_view message;
};
constexpr FormatErrorText kFormatErrorTexts[] = {
    {"ok", "a well-formed grant"},
    {"empty", "no grant: the input is empty"},
    {"unsupported_version",
     "grant format version is not 1 (issued by a newer jitd? upgrade this node)"},
    {"truncated", "grant is shorter than a signed grant (232 bytes): cut off?"},
    {"trailing_bytes", "bytes follow the signed grant (232 bytes): pass exactly one grant"},
    {"nonzero_reserved", "a reserved byte of the grant record is not zero"},
    {"unknown_flags", "the grant sets flags this version does not define"},
    {"bad_family", "the source address family is not 4 or 6"},
    {"prefix_too_long", "the source prefix length is beyond 32 (IPv4) or 128 (IPv6)"},
    {"host_bits_set",
     "the source has bits set beyond its prefix length (use the network address, e.g. "
     "198.51.100.0/24)"},
    {"address_padding", "an IPv4 source has non-zero bytes after its 4 bytes"},
    {"zero_grant_id", "the grant id is all zero (ids are 128 random bits)"},
    {"service_length", "the service name is empty or longer than 31 bytes"},
    {"service_alphabet", "the service name has a character outside [A-Za-z0-9._-]"},
    {"service_padding", "bytes after the service name are not zero"},
    {"subject_length", "the subject is empty or longer than 64 bytes"},
    {"subject_utf8", "the subject is not valid UTF-8"},
    {"subject_control",
     "the subject holds a control, line-separator or bidirectional-formatting character"},
    {"subject_padding", "bytes after the subject are not zero"},
    {"time_out_of_range", "not-before or not-after is negative or beyond the year 9999"},
    {"empty_validity", "not-after is not later than not-before"},
    {"text_prefix", "grant text does not start with 'jitlb-grant1:'"},
    {"text_whitespace",
     "grant text contains whitespace (paste it as one line; strip the trailing newline)"},
    {"text_padding", "grant text contains '=' (the form has no base64 padding)"},
    {"text_alphabet", "grant text has a character outside base64url (A-Z a-z 0-9 - _)"},
    {"text_length", "grant text has a length no grant can have: cut off?"},
    {"text_noncanonical",
     "grant text is not canonical base64url (its last character has unused bits set)"},
};
static_assert(std::size(kFormatErrorTexts) == static_cast<size_t>(GrantFormatError::count_));

std::string_view grant_format_error_name(GrantFormatError error) noexcept {
    const auto i = static_cast<size_t>(error);
    return i < std::size(kFormatErrorTexts) ? kFormatErrorTexts[i].name : "unknown";
}

std::string_view grant_format_error_message(GrantFormatError error) noexcept {
    const auto i = static_cast<size_t>(error);
    return i < std::size(kFormatErrorTexts) ? kFormatErrorTexts[i].message
                                            : "unknown grant format error";
}

// --- binary form -------------------------------------------------------------------------

GrantFormatError check_grant(const Grant& grant) noexcept {
    if (grant.version != kGrantFormatVersion) return GrantFormatError::unsupported_version;
    if (grant.flags != 0) return GrantFormatError::unknown_flags;
    if (const auto e = check_source(grant.source); e != GrantFormatError::ok) return e;
    if (all_zero(grant.grant_id)) return GrantFormatError::zero_grant_id;
    if (const auto e = check_service(grant.service); e != GrantFormatError::ok) return e;
    if (const auto e = check_subject(grant.subject); e != GrantFormatError::ok) return e;
    return check_times(grant.not_before_ms, grant.not_after_ms);
}

GrantFormatError encode_grant_record(const Grant& grant, GrantRecord& out) noexcept {
    if (const auto e = check_grant(grant); e != GrantFormatError::ok) return e;
    GrantRecord r{};  // every reserved and padding byte zero
    r[L::kVersion] = grant.version;
    r[L::kFamily] = static_cast<uint8_t>(grant.source.family);
    r[L::kPrefixLen] = grant.source.prefix_len;
    r[L::kServiceLen] = static_cast<uint8_t>(grant.service.size());
    r[L::kSubjectLen] = static_cast<uint8_t>(grant.subject.size());
    store_u32(&r[L::kFlags], grant.flags);
    std::memcpy(&r[L::kIssuerKeyId], grant.issuer_key_id.data(), grant.issuer_key_id.size());
    std::memcpy(&r[L::kGrantId], grant.grant_id.data(), grant.grant_id.size());
    store_i64(&r[L::kNotBefore], grant.not_before_ms);
    store_i64(&r[L::kNotAfter], grant.not_after_ms);
    std::memcpy(&r[L::kAddress], grant.source.addr.data(), grant.source.addr.size());
    std::memcpy(&r[L::kService], grant.service.data(), grant.service.size());
    std::memcpy(&r[L::kSubject], grant.subject.data(), grant.subject.size());
    out = r;
    return GrantFormatError::ok;
}

GrantFormatError decode_grant_record(std::span<const uint8_t> bytes, Grant& out) {
    // Version before length: a newer grant may have another size.
    if (bytes.empty()) return GrantFormatError::empty;
    if (bytes[L::kVersion] != kGrantFormatVersion) return GrantFormatError::unsupported_version;
    if (bytes.size() < kGrantRecordSize) return GrantFormatError::truncated;
    if (bytes.size() > kGrantRecordSize) return GrantFormatError::trailing_bytes;
    const uint8_t* r = bytes.data();

    if (!all_zero(bytes.subspan(L::kReserved1, L::kReserved1Size)) ||
        !all_zero(bytes.subspan(L::kReserved2, L::kReserved2Size))) {
        return GrantFormatError::nonzero_reserved;
    }
    const size_t service_len = r[L::kServiceLen];
    const size_t subject_len = r[L::kSubjectLen];
    if (service_len == 0 || service_len > kMaxGrantServiceLen) {
        return GrantFormatError::service_length;
    }
    if (subject_len == 0 || subject_len > kMaxGrantSubjectLen) {
        return GrantFormatError::subject_length;
    }
    if (!all_zero(bytes.subspan(L::kService + service_len, L::kServiceField - service_len))) {
        return GrantFormatError::service_padding;
    }
    if (!all_zero(bytes.subspan(L::kSubject + subject_len, L::kSubjectField - subject_len))) {
        return GrantFormatError::subject_padding;
    }
    const uint8_t family = r[L::kFamily];
    if (family != static_cast<uint8_t>(IpVersion::v4) &&
        family != static_cast<uint8_t>(IpVersion::v6)) {
        return GrantFormatError::bad_family;
    }

    Grant g;
    g.version = r[L::kVersion];
    g.source.family = static_cast<IpVersion>(family);
    g.source.prefix_len = r[L::kPrefixLen];
    std::memcpy(g.source.addr.data(), r + L::kAddress, g.source.addr.size());
    g.flags = load_u32(r + L::kFlags);
    std::memcpy(g.issuer_key_id.data(), r + L::kIssuerKeyId, g.issuer_key_id.size());
    std::memcpy(g.grant_id.data(), r + L::kGrantId, g.grant_id.size());
    g.not_before_ms = load_i64(r + L::kNotBefore);
    g.not_after_ms = load_i64(r + L::kNotAfter);
    g.service.assign(reinterpret_cast<const char*>(r + L::kService), service_len);
    g.subject.assign(reinterpret_cast<const char*>(r + L::kSubject), subject_len);
    if (const auto e = check_grant(g); e != GrantFormatError::ok) return e;
    out = std::move(g);
    return GrantFormatError::ok;
}

RecordHash grant_record_hash(std::span<const uint8_t, kGrantRecordSize> record) noexcept {
    RecordHash hash{};
    crypto_generichash(hash.data(), hash.size(), record.data(), record.size(), nullptr, 0);
    return hash;
}

// --- signatures ----------------------------------------------------------------------------

GrantSignature sign_grant_record(std::span<const uint8_t, kGrantRecordSize> record,
                                 const IssuerSecretKey& key) noexcept {
    const SignedMessage message = signed_message(record);
    return key.sign(message);
}

bool grant_signature_valid(std::span<const uint8_t, kGrantRecordSize> record,
                           const GrantSignature& signature, const IssuerPublicKey& key) noexcept {
    const SignedMessage message = signed_message(record);
    return crypto_sign_verify_detached(signature.data(), message.data(), message.size(),
                                       key.bytes.data()) == 0;
}

GrantFormatError sign_grant(const Grant& grant, const IssuerSecretKey& key, SignedGrant& out) {
    Grant keyed = grant;
    keyed.issuer_key_id = key.key_id();
    GrantRecord record{};
    if (const auto e = encode_grant_record(keyed, record); e != GrantFormatError::ok) return e;
    const GrantSignature signature = sign_grant_record(record, key);
    std::memcpy(out.data(), record.data(), record.size());
    std::memcpy(out.data() + record.size(), signature.data(), signature.size());
    return GrantFormatError::ok;
}

GrantFormatError parse_signed_grant(std::span<const uint8_t> bytes, ParsedSignedGrant& out) {
    if (bytes.empty()) return GrantFormatError::empty;
    if (bytes[L::kVersion] != kGrantFormatVersion) return GrantFormatError::unsupported_version;
    if (bytes.size() < kSignedGrantSize) return GrantFormatError::truncated;
    if (bytes.size() > kSignedGrantSize) return GrantFormatError::trailing_bytes;
    ParsedSignedGrant parsed;
    const auto e = decode_grant_record(bytes.first(kGrantRecordSize), parsed.grant);
    if (e != GrantFormatError::ok) return e;
    std::memcpy(parsed.signature.data(), bytes.data() + kGrantRecordSize, kGrantSignatureSize);
    out = std::move(parsed);
    return GrantFormatError::ok;
}

// --- text form ---------------------------------------------------------------------------------

std::string grant_to_text(const SignedGrant& grant) {
    constexpr size_t encoded =
        sodium_base64_ENCODED_LEN(kSignedGrantSize, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    std::string text(kGrantTextPrefix);
    text.resize(kGrantTextPrefix.size() + encoded);
    sodium_bin2base64(text.data() + kGrantTextPrefix.size(), encoded, grant.data(), grant.size(),
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    text.resize(kGrantTextSize);  // the encoder's NUL
    return text;
}

GrantFormatError grant_from_text(std::string_view text, SignedGrant& out) {
    if (text.empty()) return GrantFormatError::empty;
    if (std::any_of(text.begin(), text.end(), is_text_whitespace)) {
        return GrantFormatError::text_whitespace;
    }
    if (text.substr(0, kGrantTextPrefix.size()) != kGrantTextPrefix) {
        return GrantFormatError::text_prefix;
    }
    const std::string_view body = text.substr(kGrantTextPrefix.size());
    if (body.empty()) return GrantFormatError::empty;
    if (body.size() > kMaxGrantTextBody) return GrantFormatError::text_length;
    if (body.find('=') != std::string_view::npos) return GrantFormatError::text_padding;
    if (!std::all_of(body.begin(), body.end(), is_base64url_char)) {
        return GrantFormatError::text_alphabet;
    }
    if (body.size() % 4 == 1) return GrantFormatError::text_length;  // 6 bits: not a byte

    // Alphabet and length are right, so libsodium refuses only unused trailing bits
    // that are not zero (checked in the unit tests: it does).
    std::array<uint8_t, kMaxGrantTextBody / 4 * 3 + 3> bytes{};
    size_t size = 0;
    if (sodium_base642bin(bytes.data(), bytes.size(), body.data(), body.size(), nullptr, &size,
                          nullptr, sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0) {
        return GrantFormatError::text_noncanonical;
    }
    ParsedSignedGrant parsed;
    if (const auto e = parse_signed_grant(std::span(bytes).first(size), parsed);
        e != GrantFormatError::ok) {
        return e;
    }
    std::memcpy(out.data(), bytes.data(), kSignedGrantSize);
    return GrantFormatError::ok;
}

// --- verification ---------------------------------------------------------------------------

std::string_view verify_status_name(VerifyStatus status) noexcept {
    constexpr std::string_view kNames[] = {
        "ok",
        "malformed",
        "unknown_issuer",
        "bad_signature",
        "expired",
        "starts_too_far_ahead",
        "too_long",
    };
    static_assert(std::size(kNames) == static_cast<size_t>(VerifyStatus::too_long) + 1);
    const auto i = static_cast<size_t>(status);
    return i < std::size(kNames) ? kNames[i] : "unknown";
}

VerifyResult verify_grant(std::span<const uint8_t> signed_grant, const TrustedIssuers& issuers,
                          const VerifyPolicy& policy, int64_t now_ms) {
    ensure_sodium();
    VerifyResult result;
    ParsedSignedGrant parsed;
    result.format_error = parse_signed_grant(signed_grant, parsed);
    if (result.format_error != GrantFormatError::ok) {
        result.status = VerifyStatus::malformed;
        return result;
    }
    const auto record = signed_grant.first<kGrantRecordSize>();
    result.record_hash = grant_record_hash(record);
    result.grant = std::move(parsed.grant);
    const Grant& g = result.grant;

    const TrustedIssuer* issuer = issuers.find(g.issuer_key_id);
    if (issuer == nullptr) {
        result.status = VerifyStatus::unknown_issuer;
        return result;
    }
    // Grant times are within [0, kMaxGrantTimeMs); clamping the rest keeps the sums exact.
    const int64_t now = clamp_time(now_ms, -kMaxGrantTimeMs);
    const int64_t skew = clamp_time(policy.skew_ms, 0);
    const int64_t horizon = clamp_time(policy.horizon_ms, 0);
    const int64_t max_duration = clamp_time(policy.max_duration_ms, 0);
    if (g.not_after_ms <= now) {
        result.status = VerifyStatus::expired;
    } else if (g.not_before_ms > now + horizon + skew) {
        result.status = VerifyStatus::starts_too_far_ahead;
    } else if (g.not_after_ms - g.not_before_ms > max_duration) {
        result.status = VerifyStatus::too_long;
    } else if (!grant_signature_valid(record, parsed.signature, issuer->key)) {
        result.status = VerifyStatus::bad_signature;
    } else {
        result.status = VerifyStatus::ok;
    }
    return result;
}

std::string describe_verify_result(const VerifyResult& result, int64_t now_ms) {
    if (result.status == VerifyStatus::malformed) {
        return fmt::format("grant rejected: malformed ({}): {}",
                           grant_format_error_name(result.format_error),
                           grant_format_error_message(result.format_error));
    }
    const Grant& g = result.grant;
    const int64_t now = clamp_time(now_ms, -kMaxGrantTimeMs);  // differences stay exact
    const std::string id = grant_id_hex(g.grant_id);
    const std::string issuer = key_id_hex(g.issuer_key_id);
    const auto seconds = [](int64_t ms) { return static_cast<double>(ms) / 1000.0; };
    switch (result.status) {
        case VerifyStatus::ok:
            return fmt::format("grant {} verified (issuer key {})", id, issuer);
        case VerifyStatus::unknown_issuer:
            return fmt::format(
                "grant {} rejected: issuer key {} is not in the trusted key file "
                "(is jitlb started with this issuer's public key?)",
                id, issuer);
        case VerifyStatus::bad_signature:
            return fmt::format(
                "grant {} rejected: signature does not verify for issuer key {} "
                "(altered, or signed by another key with this id)",
                id, issuer);
        case VerifyStatus::expired:
            return fmt::format("grant {} rejected: expired {:.3f} s ago", id,
                               seconds(now - g.not_after_ms));
        case VerifyStatus::starts_too_far_ahead:
            return fmt::format(
                "grant {} rejected: starts in {:.3f} s, beyond the horizon (push "
                "it nearer its start)",
                id, seconds(g.not_before_ms - now));
        case VerifyStatus::too_long:
            return fmt::format("grant {} rejected: lasts {:.3f} s, longer than allowed", id,
                               seconds(g.not_after_ms - g.not_before_ms));
        case VerifyStatus::malformed:
            break;
    }
    return fmt::format("grant {}: {}", id, verify_status_name(result.status));
}

}  // namespace jitlb
