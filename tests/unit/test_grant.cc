// Grants (common/grant.h) and issuer keys (common/issuer_keys.h): the record's
// byte layout, round trips through every form, that no single-bit change of a
// signed grant verifies, each malformed record and text with its own error,
// each verification rule, key files (modes, refusals, line-numbered errors)
// and key rotation. Prints the cost of signing and verifying.
#include <catch2/catch.hpp>

#include "temp_dir.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "grant.h"
#include "issuer_keys.h"

using namespace jitlb;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kT0 = 1'700'000'000'000;  // 2023-11-14, Unix ms
constexpr int64_t kMinute = 60'000;


void write_text(const std::string& path, const std::string& text, mode_t mode = 0644) {
    {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out << text;
        REQUIRE(out.good());
    }
    REQUIRE(chmod(path.c_str(), mode) == 0);
}

mode_t file_mode(const std::string& path) {
    struct stat st {};
    REQUIRE(stat(path.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

// Keys from fixed seeds, so that failures reproduce.
IssuerSecretKey key_from_byte(uint8_t b) {
    std::array<uint8_t, kIssuerSeedSize> seed{};
    seed.fill(b);
    return IssuerSecretKey::from_seed(seed);
}

IpPrefix prefix(const char* text) {
    std::string error;
    const auto p = parse_ip_prefix(text, &error);
    INFO(error);
    REQUIRE(p.has_value());
    return *p;
}

Grant sample_grant() {
    Grant g;
    g.grant_id = {0x5f, 0x0c, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66,
                  0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee};
    g.subject = "alice@example.com";
    g.source = prefix("198.51.100.0/24");
    g.service = "ssh";
    g.not_before_ms = kT0;
    g.not_after_ms = kT0 + 15 * kMinute;
    return g;
}

SignedGrant sign(const Grant& g, const IssuerSecretKey& key) {
    SignedGrant out{};
    const GrantFormatError e = sign_grant(g, key, out);
    INFO(grant_format_error_name(e));
    REQUIRE(e == GrantFormatError::ok);
    return out;
}

GrantRecord encode(const Grant& g) {
    GrantRecord r{};
    const GrantFormatError e = encode_grant_record(g, r);
    INFO(grant_format_error_name(e));
    REQUIRE(e == GrantFormatError::ok);
    return r;
}

TrustedIssuers trust(std::initializer_list<const IssuerSecretKey*> keys) {
    TrustedIssuers issuers;
    for (const IssuerSecretKey* key : keys) REQUIRE(issuers.add(key->public_key()).ok());
    return issuers;
}

void store_le(uint8_t* p, uint64_t v, size_t n) {
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

std::string hex(std::span<const uint8_t> bytes) {
    std::string s;
    for (uint8_t b : bytes) s += fmt::format("{:02x}", b);
    return s;
}

}  // namespace

// --- record layout and round trips ------------------------------------------------

TEST_CASE("the grant record has the documented little-endian layout") {
    Grant g = sample_grant();
    g.issuer_key_id = {1, 2, 3, 4, 5, 6, 7, 8};
    g.not_before_ms = 0x010203040506;
    g.not_after_ms = 0x010203040507;
    const GrantRecord r = encode(g);

    // Offsets as in docs/grants.md; multi-byte integers little endian.
    const auto bytes = [&](size_t offset, size_t size) {
        return hex(std::span(r).subspan(offset, size));
    };
    // version, family, prefix length, service length, subject length
    CHECK(bytes(0, 5) == "0104180311");
    // reserved, flags, reserved
    CHECK(bytes(5, 11) == "0000000000000000000000");
    CHECK(bytes(16, 8) == "0102030405060708");                   // issuer key id
    CHECK(bytes(24, 16) == "5f0c112233445566778899aabbccddee");  // grant id
    CHECK(bytes(40, 8) == "0605040302010000");                   // not-before
    CHECK(bytes(48, 8) == "0705040302010000");                   // not-after
    CHECK(bytes(56, 16) == "c6336400000000000000000000000000");  // 198.51.100.0
    CHECK(bytes(72, 32) == "737368" + std::string(58, '0'));     // "ssh", zeros
    CHECK(std::string(r.begin() + 104, r.begin() + 121) == "alice@example.com");
    CHECK(bytes(121, 47) == std::string(94, '0'));
    CHECK(r.size() == 168);
}

TEST_CASE("a grant round-trips through the record, the signed bytes and the text form") {
    const IssuerSecretKey key = key_from_byte(0x11);
    for (const char* source : {"198.51.100.0/24", "198.51.100.7", "0.0.0.0/0", "2001:db8::/64",
                               "2001:db8::7", "::/0", "::ffff:198.51.100.7"}) {
        INFO(source);
        Grant g = sample_grant();
        g.source = prefix(source);
        g.subject = "Zoë 🔑 on-call";  // multi-byte UTF-8 is fine
        g.service = "Web-1.prod_eu";

        Grant decoded;
        const GrantRecord record = encode(g);
        REQUIRE(decode_grant_record(record, decoded) == GrantFormatError::ok);
        CHECK(decoded == g);

        const SignedGrant signed_grant = sign(g, key);
        CHECK(std::equal(record.begin() + 24, record.end(), signed_grant.begin() + 24));
        ParsedSignedGrant parsed;
        REQUIRE(parse_signed_grant(signed_grant, parsed) == GrantFormatError::ok);
        Grant expected = g;
        expected.issuer_key_id = key.key_id();
        CHECK(parsed.grant == expected);

        const std::string text = grant_to_text(signed_grant);
        CHECK(text.size() == kGrantTextSize);
        CHECK(text.rfind("jitlb-grant1:", 0) == 0);
        SignedGrant back{};
        REQUIRE(grant_from_text(text, back) == GrantFormatError::ok);
        CHECK(back == signed_grant);
        CHECK(grant_to_text(back) == text);

        const VerifyResult v = verify_grant(back, trust({&key}), VerifyPolicy{}, kT0);
        CHECK(v.status == VerifyStatus::ok);
        CHECK(v.grant == expected);
    }
}

TEST_CASE("the issuer key id is the first 8 bytes of BLAKE2b-256 of the domain and the key") {
    const IssuerSecretKey key = key_from_byte(0x22);
    std::string message(kIssuerKeyIdDomain);
    message.append(reinterpret_cast<const char*>(key.public_key().bytes.data()), 32);
    std::array<uint8_t, 32> digest{};
    crypto_generichash(digest.data(), digest.size(),
                       reinterpret_cast<const uint8_t*>(message.data()), message.size(), nullptr,
                       0);
    CHECK(std::equal(digest.begin(), digest.begin() + 8, key.key_id().begin()));
    CHECK(key.key_id() == issuer_key_id(key.public_key()));
    CHECK(key_id_hex(key.key_id()) == hex(std::span(digest).first(8)));

    // sign_grant names the signing key, whatever the struct said.
    Grant g = sample_grant();
    g.issuer_key_id = {9, 9, 9, 9, 9, 9, 9, 9};
    ParsedSignedGrant parsed;
    REQUIRE(parse_signed_grant(sign(g, key), parsed) == GrantFormatError::ok);
    CHECK(parsed.grant.issuer_key_id == key.key_id());
}

TEST_CASE("the signature covers the domain prefix and the record, and is plain Ed25519") {
    const IssuerSecretKey key = key_from_byte(0x33);
    const SignedGrant sg = sign(sample_grant(), key);
    std::array<uint8_t, 14 + kGrantRecordSize> message{};
    REQUIRE(kGrantSignatureDomain.size() == 14);
    std::memcpy(message.data(), kGrantSignatureDomain.data(), 14);
    std::memcpy(message.data() + 14, sg.data(), kGrantRecordSize);
    CHECK(crypto_sign_verify_detached(sg.data() + kGrantRecordSize, message.data(), message.size(),
                                      key.public_key().bytes.data()) == 0);
    // Without the domain prefix the same signature does not verify.
    CHECK(crypto_sign_verify_detached(sg.data() + kGrantRecordSize, sg.data(), kGrantRecordSize,
                                      key.public_key().bytes.data()) != 0);
}

TEST_CASE("the record hash is BLAKE2b-256 of the record and identical re-signing gives it again") {
    const IssuerSecretKey key = key_from_byte(0x44);
    const SignedGrant a = sign(sample_grant(), key);
    const SignedGrant b = sign(sample_grant(), key);
    CHECK(a == b);  // Ed25519 is deterministic: a re-push is the same bytes
    std::array<uint8_t, 32> digest{};
    crypto_generichash(digest.data(), digest.size(), a.data(), kGrantRecordSize, nullptr, 0);
    const RecordHash h = grant_record_hash(std::span(a).first<kGrantRecordSize>());
    CHECK(std::equal(h.begin(), h.end(), digest.begin()));

    Grant later = sample_grant();
    later.not_after_ms += 1;
    const SignedGrant c = sign(later, key);
    CHECK(grant_record_hash(std::span(c).first<kGrantRecordSize>()) != h);
    CHECK(verify_grant(a, trust({&key}), {}, kT0).record_hash == h);
}

// --- what must not verify ------------------------------------------------------------

TEST_CASE("no single-bit change of the record or the signature verifies") {
    const IssuerSecretKey key = key_from_byte(0x55);
    const TrustedIssuers issuers = trust({&key});
    const SignedGrant original = sign(sample_grant(), key);
    REQUIRE(verify_grant(original, issuers, {}, kT0).ok());

    std::map<std::string, int> outcomes;
    for (size_t bit = 0; bit < kSignedGrantSize * 8; ++bit) {
        SignedGrant flipped = original;
        flipped[bit / 8] = static_cast<uint8_t>(flipped[bit / 8] ^ (1u << (bit % 8)));
        const VerifyResult v = verify_grant(flipped, issuers, {}, kT0);
        INFO("bit " << bit << " (byte " << bit / 8 << "): " << verify_status_name(v.status));
        REQUIRE(v.status != VerifyStatus::ok);
        ++outcomes[std::string(verify_status_name(v.status))];
    }
    // Every bit was tried; the signature's own bits can only fail as bad_signature.
    int total = 0;
    for (const auto& [name, n] : outcomes) total += n;
    CHECK(total == static_cast<int>(kSignedGrantSize * 8));
    CHECK(outcomes["bad_signature"] >= static_cast<int>(kGrantSignatureSize * 8));
    CHECK(outcomes["unknown_issuer"] == 64);  // each bit of the key id names another key
}

TEST_CASE("a grant from a key that is not trusted is unknown_issuer") {
    const IssuerSecretKey trusted = key_from_byte(0x66);
    const IssuerSecretKey other = key_from_byte(0x67);
    const VerifyResult v = verify_grant(sign(sample_grant(), other), trust({&trusted}), {}, kT0);
    CHECK(v.status == VerifyStatus::unknown_issuer);
    CHECK(v.grant.grant_id == sample_grant().grant_id);  // the rejection can name the grant
    CHECK(describe_verify_result(v, kT0).find(key_id_hex(other.key_id())) != std::string::npos);
    CHECK(verify_grant(sign(sample_grant(), other), TrustedIssuers{}, {}, kT0).status ==
          VerifyStatus::unknown_issuer);
}

TEST_CASE("a record naming a trusted key id but signed by another key is bad_signature") {
    const IssuerSecretKey a = key_from_byte(0x70);
    const IssuerSecretKey b = key_from_byte(0x71);
    Grant g = sample_grant();
    g.issuer_key_id = a.key_id();  // claims A ...
    const GrantRecord record = encode(g);
    const GrantSignature by_b = sign_grant_record(record, b);  // ... signed by B
    REQUIRE(grant_signature_valid(record, by_b, b.public_key()));

    SignedGrant forged{};
    std::copy(record.begin(), record.end(), forged.begin());
    std::copy(by_b.begin(), by_b.end(), forged.begin() + kGrantRecordSize);
    // The verifier uses the trusted key for the claimed id, never another.
    CHECK(verify_grant(forged, trust({&a}), {}, kT0).status == VerifyStatus::bad_signature);
    CHECK(verify_grant(forged, trust({&a, &b}), {}, kT0).status == VerifyStatus::bad_signature);
    CHECK(verify_grant(forged, trust({&b}), {}, kT0).status == VerifyStatus::unknown_issuer);
}

// --- verification rules ------------------------------------------------------------------

TEST_CASE("verification applies expiry, the horizon, the skew and the maximum duration") {
    const IssuerSecretKey key = key_from_byte(0x77);
    const TrustedIssuers issuers = trust({&key});
    const VerifyPolicy policy{
        .skew_ms = 2'000, .horizon_ms = 60 * kMinute, .max_duration_ms = 120 * kMinute};
    const VerifyPolicy no_horizon{
        .skew_ms = 2'000, .horizon_ms = 0, .max_duration_ms = 120 * kMinute};
    const int64_t now = kT0;
    struct Case {
        const char* what;
        int64_t not_before;
        int64_t not_after;
        VerifyPolicy policy;
        VerifyStatus expected;
    };
    const Case cases[] = {
        {"started, ends later", now - kMinute, now + kMinute, policy, VerifyStatus::ok},
        {"ends 1 ms from now", now - kMinute, now + 1, policy, VerifyStatus::ok},
        {"ends now", now - kMinute, now, policy, VerifyStatus::expired},
        {"ended", now - 2 * kMinute, now - kMinute, policy, VerifyStatus::expired},
        {"starts within the horizon", now + 30 * kMinute, now + 40 * kMinute, policy,
         VerifyStatus::ok},
        {"starts at horizon + skew", now + 60 * kMinute + 2'000, now + 70 * kMinute, policy,
         VerifyStatus::ok},
        {"starts 1 ms beyond horizon + skew", now + 60 * kMinute + 2'001, now + 70 * kMinute,
         policy, VerifyStatus::starts_too_far_ahead},
        {"no horizon: starts within the skew", now + 1'500, now + kMinute, no_horizon,
         VerifyStatus::ok},
        {"no horizon: starts at the skew", now + 2'000, now + kMinute, no_horizon,
         VerifyStatus::ok},
        {"no horizon: starts beyond the skew", now + 2'001, now + kMinute, no_horizon,
         VerifyStatus::starts_too_far_ahead},
        {"lasts the maximum", now - kMinute, now + 119 * kMinute, policy, VerifyStatus::ok},
        {"lasts 1 ms more than the maximum", now - kMinute, now + 119 * kMinute + 1, policy,
         VerifyStatus::too_long},
        {"expired beats too long", now - 500 * kMinute, now - kMinute, policy,
         VerifyStatus::expired},
    };
    for (const Case& c : cases) {
        INFO(c.what);
        Grant g = sample_grant();
        g.not_before_ms = c.not_before;
        g.not_after_ms = c.not_after;
        const VerifyResult v = verify_grant(sign(g, key), issuers, c.policy, now);
        INFO(describe_verify_result(v, now));
        CHECK(v.status == c.expected);
    }
}

TEST_CASE("verification survives extreme clocks and policies without overflow") {
    const IssuerSecretKey key = key_from_byte(0x78);
    const TrustedIssuers issuers = trust({&key});
    const SignedGrant sg = sign(sample_grant(), key);
    const VerifyPolicy huge{
        .skew_ms = INT64_MAX, .horizon_ms = INT64_MAX, .max_duration_ms = INT64_MAX};
    const VerifyPolicy negative{
        .skew_ms = INT64_MIN, .horizon_ms = INT64_MIN, .max_duration_ms = INT64_MIN};
    CHECK(verify_grant(sg, issuers, huge, INT64_MIN).status == VerifyStatus::ok);
    CHECK(verify_grant(sg, issuers, huge, INT64_MAX).status == VerifyStatus::expired);
    CHECK(verify_grant(sg, issuers, negative, kT0).status == VerifyStatus::too_long);
    CHECK(verify_grant(sg, issuers, negative, INT64_MIN).status ==
          VerifyStatus::starts_too_far_ahead);
    CHECK(!describe_verify_result(verify_grant(sg, issuers, huge, INT64_MAX), INT64_MAX).empty());
}

// --- malformed records --------------------------------------------------------------------

TEST_CASE("each malformed record is refused with its own error and nothing decoded") {
    const GrantRecord good = encode(sample_grant());
    using E = GrantFormatError;
    struct Case {
        const char* what;
        std::function<void(GrantRecord&)> mutate;
        E expected;
    };
    const auto set_subject = [](GrantRecord& r, std::string_view s) {
        std::fill(r.begin() + 104, r.end(), 0);
        r[4] = static_cast<uint8_t>(s.size());
        std::memcpy(&r[104], s.data(), s.size());
    };
    const auto set_service = [](GrantRecord& r, std::string_view s) {
        std::fill(r.begin() + 72, r.begin() + 104, 0);
        r[3] = static_cast<uint8_t>(s.size());
        std::memcpy(&r[72], s.data(), s.size());
    };
    const auto make_v6 = [](GrantRecord& r) {
        r[1] = 6;
        r[2] = 64;
        std::fill(r.begin() + 56, r.begin() + 72, 0);
        r[56] = 0x20, r[57] = 0x01, r[58] = 0x0d, r[59] = 0xb8;
    };
    const Case cases[] = {
        {"version 0", [](GrantRecord& r) { r[0] = 0; }, E::unsupported_version},
        {"version 2", [](GrantRecord& r) { r[0] = 2; }, E::unsupported_version},
        {"reserved byte 5", [](GrantRecord& r) { r[5] = 1; }, E::nonzero_reserved},
        {"reserved byte 7", [](GrantRecord& r) { r[7] = 0x80; }, E::nonzero_reserved},
        {"reserved byte 12", [](GrantRecord& r) { r[12] = 1; }, E::nonzero_reserved},
        {"reserved byte 15", [](GrantRecord& r) { r[15] = 1; }, E::nonzero_reserved},
        {"flag bit 0", [](GrantRecord& r) { r[8] = 1; }, E::unknown_flags},
        {"flag bit 31", [](GrantRecord& r) { r[11] = 0x80; }, E::unknown_flags},
        {"family 0", [](GrantRecord& r) { r[1] = 0; }, E::bad_family},
        {"family 5", [](GrantRecord& r) { r[1] = 5; }, E::bad_family},
        {"IPv4 /33", [](GrantRecord& r) { r[2] = 33; }, E::prefix_too_long},
        {"IPv6 /129",
         [&](GrantRecord& r) {
             make_v6(r);
             r[2] = 129;
         },
         E::prefix_too_long},
        {"IPv4 host bit", [](GrantRecord& r) { r[59] = 1; }, E::host_bits_set},
        {"IPv4 bit 24 in a /24", [](GrantRecord& r) { r[59] = 0x80; }, E::host_bits_set},
        {"IPv6 host bit",
         [&](GrantRecord& r) {
             make_v6(r);
             r[71] = 1;
         },
         E::host_bits_set},
        {"IPv4 byte 4 set", [](GrantRecord& r) { r[60] = 1; }, E::address_padding},
        {"IPv4 byte 15 set", [](GrantRecord& r) { r[71] = 1; }, E::address_padding},
        {"zero grant id", [](GrantRecord& r) { std::fill(r.begin() + 24, r.begin() + 40, 0); },
         E::zero_grant_id},
        {"service length 0", [&](GrantRecord& r) { set_service(r, ""); }, E::service_length},
        {"service length 32", [](GrantRecord& r) { r[3] = 32; }, E::service_length},
        {"service with '/'", [&](GrantRecord& r) { set_service(r, "ss/h"); }, E::service_alphabet},
        {"service with a space", [&](GrantRecord& r) { set_service(r, "s h"); },
         E::service_alphabet},
        {"service with a NUL", [&](GrantRecord& r) { set_service(r, std::string_view("s\0h", 3)); },
         E::service_alphabet},
        {"byte after the service", [](GrantRecord& r) { r[75] = 'x'; }, E::service_padding},
        {"last service byte", [](GrantRecord& r) { r[103] = 1; }, E::service_padding},
        {"subject length 0", [&](GrantRecord& r) { set_subject(r, ""); }, E::subject_length},
        {"subject length 65", [](GrantRecord& r) { r[4] = 65; }, E::subject_length},
        {"byte after the subject", [](GrantRecord& r) { r[121] = 'x'; }, E::subject_padding},
        {"last subject byte", [](GrantRecord& r) { r[167] = 1; }, E::subject_padding},
        {"overlong '/'", [&](GrantRecord& r) { set_subject(r, "a\xc0\xaf"); }, E::subject_utf8},
        {"overlong 3 bytes", [&](GrantRecord& r) { set_subject(r, "\xe0\x80\xaf"); },
         E::subject_utf8},
        {"surrogate", [&](GrantRecord& r) { set_subject(r, "\xed\xa0\x80"); }, E::subject_utf8},
        {"beyond U+10FFFF", [&](GrantRecord& r) { set_subject(r, "\xf4\x90\x80\x80"); },
         E::subject_utf8},
        {"byte 0xff", [&](GrantRecord& r) { set_subject(r, "a\xff"); }, E::subject_utf8},
        {"lone continuation", [&](GrantRecord& r) { set_subject(r, "\x80"); }, E::subject_utf8},
        {"cut sequence", [&](GrantRecord& r) { set_subject(r, "ab\xe2\x82"); }, E::subject_utf8},
        {"newline", [&](GrantRecord& r) { set_subject(r, "alice\nroot"); }, E::subject_control},
        {"escape", [&](GrantRecord& r) { set_subject(r, "\x1b[31m"); }, E::subject_control},
        {"DEL", [&](GrantRecord& r) { set_subject(r, "a\x7f"); }, E::subject_control},
        {"C1 NEL", [&](GrantRecord& r) { set_subject(r, "a\xc2\x85"); }, E::subject_control},
        {"right-to-left override", [&](GrantRecord& r) { set_subject(r, "a\xe2\x80\xae"); },
         E::subject_control},
        {"line separator", [&](GrantRecord& r) { set_subject(r, "a\xe2\x80\xa8"); },
         E::subject_control},
        {"negative not-before", [](GrantRecord& r) { store_le(&r[40], uint64_t(-1), 8); },
         E::time_out_of_range},
        {"not-after in the year 10000",
         [](GrantRecord& r) { store_le(&r[48], uint64_t(kMaxGrantTimeMs), 8); },
         E::time_out_of_range},
        {"not-after = not-before", [](GrantRecord& r) { store_le(&r[48], uint64_t(kT0), 8); },
         E::empty_validity},
        {"not-after < not-before", [](GrantRecord& r) { store_le(&r[48], uint64_t(kT0 - 1), 8); },
         E::empty_validity},
    };
    for (const Case& c : cases) {
        INFO(c.what);
        GrantRecord r = good;
        c.mutate(r);
        Grant out = sample_grant();
        out.subject = "untouched";
        CHECK(grant_format_error_name(decode_grant_record(r, out)) ==
              grant_format_error_name(c.expected));
        CHECK(out.subject == "untouched");  // never a partial grant

        SignedGrant sg{};
        std::copy(r.begin(), r.end(), sg.begin());
        ParsedSignedGrant parsed;
        CHECK(parse_signed_grant(sg, parsed) == c.expected);
        CHECK(grant_format_error_message(c.expected).size() > 10);
    }

    // Lengths: the version is read first, so a newer grant of another size says so.
    Grant out;
    CHECK(decode_grant_record({}, out) == E::empty);
    CHECK(decode_grant_record(std::span(good).first(167), out) == E::truncated);
    std::vector<uint8_t> longer(good.begin(), good.end());
    longer.push_back(0);
    CHECK(decode_grant_record(longer, out) == E::trailing_bytes);
    longer[0] = 2;
    CHECK(decode_grant_record(longer, out) == E::unsupported_version);
    ParsedSignedGrant parsed;
    CHECK(parse_signed_grant(good, parsed) == E::truncated);
    std::vector<uint8_t> signed_longer(kSignedGrantSize + 1, 0);
    std::copy(good.begin(), good.end(), signed_longer.begin());
    CHECK(parse_signed_grant(signed_longer, parsed) == E::trailing_bytes);
}

TEST_CASE("the encoder refuses what the decoder refuses, with the same error") {
    using E = GrantFormatError;
    struct Case {
        const char* what;
        std::function<void(Grant&)> mutate;
        E expected;
    };
    const Case cases[] = {
        {"version 2", [](Grant& g) { g.version = 2; }, E::unsupported_version},
        {"flags", [](Grant& g) { g.flags = 4; }, E::unknown_flags},
        {"family none", [](Grant& g) { g.source.family = IpVersion::none; }, E::bad_family},
        {"prefix 33", [](Grant& g) { g.source.prefix_len = 33; }, E::prefix_too_long},
        {"host bits", [](Grant& g) { g.source.addr[3] = 7; }, E::host_bits_set},
        {"IPv4 padding", [](Grant& g) { g.source.addr[4] = 1; }, E::address_padding},
        {"zero id", [](Grant& g) { g.grant_id = {}; }, E::zero_grant_id},
        {"no service", [](Grant& g) { g.service.clear(); }, E::service_length},
        {"long service", [](Grant& g) { g.service.assign(32, 'a'); }, E::service_length},
        {"service alphabet", [](Grant& g) { g.service = "web:80"; }, E::service_alphabet},
        {"no subject", [](Grant& g) { g.subject.clear(); }, E::subject_length},
        {"long subject", [](Grant& g) { g.subject.assign(65, 'a'); }, E::subject_length},
        {"subject utf8", [](Grant& g) { g.subject = "\xc3"; }, E::subject_utf8},
        {"subject tab", [](Grant& g) { g.subject = "a\tb"; }, E::subject_control},
        {"negative time", [](Grant& g) { g.not_before_ms = -1; }, E::time_out_of_range},
        {"empty validity", [](Grant& g) { g.not_after_ms = g.not_before_ms; }, E::empty_validity},
    };
    const IssuerSecretKey key = key_from_byte(0x79);
    for (const Case& c : cases) {
        INFO(c.what);
        Grant g = sample_grant();
        c.mutate(g);
        CHECK(check_grant(g) == c.expected);
        GrantRecord record{};
        record.fill(0xaa);
        CHECK(encode_grant_record(g, record) == c.expected);
        CHECK(record[0] == 0xaa);  // untouched
        SignedGrant sg{};
        CHECK(sign_grant(g, key, sg) == c.expected);
        CHECK(sg[0] == 0);
    }
    // The bounds themselves are accepted.
    Grant g = sample_grant();
    g.service.assign(31, 'a');
    g.subject.assign(64, 'b');
    g.not_before_ms = 0;
    g.not_after_ms = kMaxGrantTimeMs - 1;
    g.source = prefix("::/0");
    Grant back;
    REQUIRE(decode_grant_record(encode(g), back) == E::ok);
    CHECK(back == g);
}

// --- text form ------------------------------------------------------------------------------

TEST_CASE("libsodium's base64url decoder refuses unused trailing bits that are not zero") {
    // grant_from_text relies on this to keep one text per grant.
    uint8_t out[4];
    size_t n = 0;
    const auto decode = [&](const char* s) {
        return sodium_base642bin(out, sizeof out, s, std::strlen(s), nullptr, &n, nullptr,
                                 sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    };
    CHECK(decode("AA") == 0);
    CHECK(decode("AQ") == 0);
    CHECK(decode("AB") != 0);  // 0x00 with a stray low bit
    CHECK(decode("AAE") == 0);
    CHECK(decode("AAF") != 0);
}

TEST_CASE("each malformed grant text is refused with its own error and nothing decoded") {
    const IssuerSecretKey key = key_from_byte(0x7a);
    const SignedGrant sg = sign(sample_grant(), key);
    const std::string good = grant_to_text(sg);
    const std::string body = good.substr(kGrantTextPrefix.size());
    const auto text_of = [](std::span<const uint8_t> bytes) {
        std::string t(kGrantTextPrefix);
        std::string enc(
            sodium_base64_ENCODED_LEN(bytes.size(), sodium_base64_VARIANT_URLSAFE_NO_PADDING),
            '\0');
        sodium_bin2base64(enc.data(), enc.size(), bytes.data(), bytes.size(),
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        return t + enc.c_str();
    };
    // The last character of the 310 carries 4 bits of data and 2 unused bits.
    std::string noncanonical = good;
    {
        const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        const size_t value = std::strchr(alphabet, noncanonical.back()) - alphabet;
        REQUIRE((value & 3) == 0);
        noncanonical.back() = alphabet[value | 1];
    }
    SignedGrant v2 = sg;
    v2[0] = 2;
    std::vector<uint8_t> extra(sg.begin(), sg.end());
    extra.push_back(0);
    SignedGrant host_bits = sg;
    host_bits[59] = 1;
    using E = GrantFormatError;
    struct Case {
        const char* what;
        std::string text;
        E expected;
    };
    const Case cases[] = {
        {"empty", "", E::empty},
        {"prefix only", std::string(kGrantTextPrefix), E::empty},
        {"no prefix", body, E::text_prefix},
        {"wrong prefix", "jitlb-grant2:" + body, E::text_prefix},
        {"prefix in capitals", "JITLB-GRANT1:" + body, E::text_prefix},
        {"prefix without colon", "jitlb-grant1" + body, E::text_prefix},
        {"trailing newline", good + "\n", E::text_whitespace},
        {"trailing CRLF", good + "\r\n", E::text_whitespace},
        {"leading space", " " + good, E::text_whitespace},
        {"space inside", good.substr(0, 100) + " " + good.substr(100), E::text_whitespace},
        {"line break inside", good.substr(0, 80) + "\n" + good.substr(80), E::text_whitespace},
        {"tab after prefix", std::string(kGrantTextPrefix) + "\t" + body, E::text_whitespace},
        {"padding", good + "==", E::text_padding},
        {"padding inside", good.substr(0, 50) + "=" + good.substr(51), E::text_padding},
        {"standard base64 '+'", good.substr(0, 50) + "+" + good.substr(51), E::text_alphabet},
        {"standard base64 '/'", good.substr(0, 50) + "/" + good.substr(51), E::text_alphabet},
        {"a NUL", good.substr(0, 50) + std::string(1, '\0') + good.substr(51), E::text_alphabet},
        {"non-ASCII", good.substr(0, 50) + "\xc3\xa9" + good.substr(52), E::text_alphabet},
        {"one character short (309: not base64)", good.substr(0, good.size() - 1), E::text_length},
        {"far too long", good + std::string(5000, 'A'), E::text_length},
        {"one byte short", text_of(std::span(sg).first(kSignedGrantSize - 1)), E::truncated},
        {"one character more", good + "A", E::trailing_bytes},
        {"unused bits set", noncanonical, E::text_noncanonical},
        {"version 2", text_of(v2), E::unsupported_version},
        {"one byte more", text_of(extra), E::trailing_bytes},
        {"record only", text_of(std::span(sg).first(kGrantRecordSize)), E::truncated},
        {"a malformed record", text_of(host_bits), E::host_bits_set},
    };
    for (const Case& c : cases) {
        INFO(c.what << ": " << c.text.substr(0, 40));
        SignedGrant out{};
        out.fill(0x5a);
        CHECK(grant_format_error_name(grant_from_text(c.text, out)) ==
              grant_format_error_name(c.expected));
        CHECK(out[0] == 0x5a);
        CHECK(out[kSignedGrantSize - 1] == 0x5a);
    }
    SignedGrant out{};
    REQUIRE(grant_from_text(good, out) == E::ok);
    CHECK(out == sg);
}

TEST_CASE("error and status names are distinct and every format error has a message") {
    std::vector<std::string_view> names;
    for (int i = 0; i < static_cast<int>(GrantFormatError::count_); ++i) {
        const auto e = static_cast<GrantFormatError>(i);
        names.push_back(grant_format_error_name(e));
        CHECK(names.back() != "unknown");
        CHECK(grant_format_error_message(e) != "unknown grant format error");
    }
    for (int i = 0; i <= static_cast<int>(VerifyStatus::too_long); ++i) {
        names.push_back(verify_status_name(static_cast<VerifyStatus>(i)));
    }
    for (int i = 1; i <= static_cast<int>(KeyFileErrc::key_id_collision); ++i) {
        names.push_back(key_file_errc_name(static_cast<KeyFileErrc>(i)));
    }
    // Names are distinct across the three sets (logs mix them), except the shared "ok".
    std::sort(names.begin(), names.end());
    CHECK(std::adjacent_find(names.begin(), names.end(),
                             [](auto a, auto b) { return a == b && a != "ok"; }) == names.end());
    CHECK(std::find(names.begin(), names.end(), "unknown") == names.end());
}

// --- sources ---------------------------------------------------------------------------------

TEST_CASE("source prefixes parse strictly and format canonically") {
    struct Good {
        const char* text;
        const char* formatted;
    };
    for (const Good& c :
         {Good{"198.51.100.0/24", "198.51.100.0/24"}, Good{"198.51.100.7", "198.51.100.7/32"},
          Good{"0.0.0.0/0", "0.0.0.0/0"}, Good{"2001:DB8::/64", "2001:db8::/64"},
          Good{"2001:0db8:0:0::1", "2001:db8::1/128"}, Good{"::/0", "::/0"},
          Good{"::ffff:198.51.100.7", "::ffff:198.51.100.7/128"}}) {
        INFO(c.text);
        const IpPrefix p = prefix(c.text);
        CHECK(format_ip_prefix(p) == c.formatted);
        CHECK(prefix(format_ip_prefix(p).c_str()) == p);
    }
    CHECK(prefix("198.51.100.7").family == IpVersion::v4);
    CHECK(prefix("198.51.100.7").prefix_len == 32);
    CHECK(prefix("2001:db8::7").prefix_len == 128);

    for (const char* bad :
         {"", "/24", "198.51.100.0/", "198.51.100.0/33", "2001:db8::/129", "198.51.100.0/024",
          "198.51.100.0/2 4", " 198.51.100.0/24", "198.51.100.0/24 ", "198.51.100", "198.051.100.0",
          "256.0.0.0", "198.51.100.0/-1", "198.51.100.0/+24", "198.51.100.0/24/24", "fe80::1%eth0",
          "2001:db8:::1", "example.com", "1.2.3.4/1000"}) {
        INFO(bad);
        std::string error;
        CHECK_FALSE(parse_ip_prefix(bad, &error).has_value());
        CHECK_FALSE(error.empty());
    }
    CHECK_FALSE(parse_ip_prefix(std::string_view("1.2.3.4\0/8", 10)).has_value());

    std::string error;
    CHECK_FALSE(parse_ip_prefix("198.51.100.7/24", &error).has_value());
    CHECK(error.find("198.51.100.0/24") != std::string::npos);  // the network
    CHECK(error.find("198.51.100.7/32") != std::string::npos);  // the single address
    CHECK_FALSE(parse_ip_prefix("2001:db8::7/64", &error).has_value());
    CHECK(error.find("2001:db8::/64") != std::string::npos);
}

TEST_CASE("random grant ids differ and are never zero") {
    const GrantId a = random_grant_id();
    const GrantId b = random_grant_id();
    CHECK(a != b);
    CHECK(a != GrantId{});
    CHECK(grant_id_hex(a).size() == 32);
}

// --- key files ---------------------------------------------------------------------------------

TEST_CASE("a secret key file is created 0600, never over an existing path, and reads back") {
    TempDir dir;
    const IssuerSecretKey key = IssuerSecretKey::generate();
    const std::string path = dir.file("issuer.key");
    REQUIRE(write_secret_key_file(path, key).ok());
    CHECK(file_mode(path) == 0600);

    std::optional<IssuerSecretKey> loaded;
    const KeyFileError read = read_secret_key_file(path, loaded);
    INFO(read.message);
    REQUIRE(read.ok());
    REQUIRE(loaded.has_value());
    CHECK(loaded->public_key() == key.public_key());
    CHECK(loaded->key_id() == key.key_id());
    CHECK(sign(sample_grant(), *loaded) == sign(sample_grant(), key));

    // The file is the documented single line.
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);
    CHECK(line.rfind("jitlb-issuer-secret-v1 ", 0) == 0);
    CHECK(line.size() == 23 + 43);

    // Never overwritten, never through a symlink (even a dangling one).
    const KeyFileError again = write_secret_key_file(path, key);
    CHECK(again.code == KeyFileErrc::exists);
    CHECK(again.message.find(path) != std::string::npos);
    const std::string link = dir.file("link.key");
    REQUIRE(symlink(dir.file("target.key").c_str(), link.c_str()) == 0);
    CHECK(write_secret_key_file(link, key).code == KeyFileErrc::exists);
    CHECK_FALSE(fs::exists(dir.file("target.key")));
    CHECK(write_secret_key_file(dir.file("missing/dir.key"), key).code == KeyFileErrc::io);
}

TEST_CASE("a secret key file that others may read is refused with the chmod to fix it") {
    TempDir dir;
    const IssuerSecretKey key = key_from_byte(0x80);
    const std::string path = dir.file("issuer.key");
    REQUIRE(write_secret_key_file(path, key).ok());
    for (const mode_t mode : {0644, 0640, 0604, 0601, 0610}) {
        INFO(fmt::format("{:o}", mode));
        REQUIRE(chmod(path.c_str(), mode) == 0);
        std::optional<IssuerSecretKey> loaded;
        const KeyFileError e = read_secret_key_file(path, loaded);
        CHECK(e.code == KeyFileErrc::insecure_permissions);
        CHECK(e.message.find("chmod 600 " + path) != std::string::npos);
        CHECK(e.message.find(fmt::format("{:04o}", mode)) != std::string::npos);
        CHECK_FALSE(loaded.has_value());
    }
    REQUIRE(chmod(path.c_str(), 0400) == 0);
    std::optional<IssuerSecretKey> loaded;
    CHECK(read_secret_key_file(path, loaded).ok());
}

TEST_CASE("key files must be regular files") {
    TempDir dir;
    std::optional<IssuerSecretKey> secret;
    TrustedIssuers issuers;
    CHECK(read_secret_key_file(dir.path.string(), secret).code == KeyFileErrc::not_regular);
    CHECK(read_public_key_file(dir.path.string(), issuers).code == KeyFileErrc::not_regular);
    // A FIFO must not block the reader.
    const std::string fifo = dir.file("fifo");
    REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
    CHECK(read_secret_key_file(fifo, secret).code == KeyFileErrc::not_regular);
    CHECK(read_secret_key_file(dir.file("absent"), secret).code == KeyFileErrc::io);
    write_text(dir.file("big.key"), std::string(kMaxSecretKeyFileBytes + 1, 'a'), 0600);
    CHECK(read_secret_key_file(dir.file("big.key"), secret).code == KeyFileErrc::too_large);
}

TEST_CASE("secret key file syntax errors are refused without showing the secret") {
    const IssuerSecretKey key = key_from_byte(0x81);
    TempDir dir;
    const std::string path = dir.file("k");
    REQUIRE(write_secret_key_file(path, key).ok());
    std::ifstream in(path);
    std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    REQUIRE(good.back() == '\n');
    const std::string encoded = good.substr(23, 43);

    std::optional<IssuerSecretKey> loaded;
    CHECK(parse_secret_key(good, "k", loaded).ok());
    CHECK(parse_secret_key(good.substr(0, good.size() - 1), "k", loaded).ok());  // no newline
    struct Case {
        const char* what;
        std::string text;
        KeyFileErrc expected;
    };
    const Case cases[] = {
        {"empty", "", KeyFileErrc::syntax},
        {"two newlines", good + "\n", KeyFileErrc::syntax},
        {"CRLF", good.substr(0, good.size() - 1) + "\r\n", KeyFileErrc::syntax},
        {"two spaces", "jitlb-issuer-secret-v1  " + encoded, KeyFileErrc::syntax},
        {"other tag", "jitlb-issuer-secret-v2 " + encoded, KeyFileErrc::syntax},
        {"a public key file", public_key_line(key.public_key(), ""), KeyFileErrc::syntax},
        {"short key", "jitlb-issuer-secret-v1 " + encoded.substr(1) + "\n", KeyFileErrc::syntax},
        {"bad character", "jitlb-issuer-secret-v1 " + encoded.substr(1) + "+",
         KeyFileErrc::bad_key},
        {"unused bits set", "jitlb-issuer-secret-v1 " + encoded.substr(0, 42) + "B",
         KeyFileErrc::bad_key},
    };
    for (const Case& c : cases) {
        INFO(c.what);
        std::optional<IssuerSecretKey> out;
        const KeyFileError e = parse_secret_key(c.text, "k", out);
        CHECK(e.code == c.expected);
        CHECK_FALSE(out.has_value());
        CHECK(e.message.find(encoded.substr(0, 10)) == std::string::npos);
    }
}

TEST_CASE("a public key file lists keys with comments, blank lines and comment lines") {
    const IssuerSecretKey a = key_from_byte(0x90);
    const IssuerSecretKey b = key_from_byte(0x91);
    const std::string text = "# trusted issuers\n\n" + public_key_line(a.public_key(), "") +
                             "   \t\n  # indented comment\n" + "\t" +
                             public_key_line(b.public_key(), "issuer B, 2024  rotation").substr(0);
    TrustedIssuers issuers;
    const KeyFileError e = parse_public_keys(text, "keys.pub", issuers);
    INFO(e.message);
    REQUIRE(e.ok());
    REQUIRE(issuers.size() == 2);
    CHECK(issuers.entries()[0].key == a.public_key());
    CHECK(issuers.entries()[0].line == 3);
    CHECK(issuers.entries()[1].comment == "issuer B, 2024  rotation");
    CHECK(issuers.entries()[1].line == 6);
    REQUIRE(issuers.find(b.key_id()) != nullptr);
    CHECK(issuers.find(b.key_id())->key == b.public_key());
    CHECK(issuers.find(IssuerKeyId{}) == nullptr);

    TrustedIssuers none;
    CHECK(parse_public_keys("", "empty.pub", none).ok());
    CHECK(parse_public_keys("# nothing yet\n", "empty.pub", none).ok());
    CHECK(none.empty());
    CHECK(public_key_line(a.public_key(), "x") ==
          fmt::format("jitlb-issuer-public-v1 {} x\n", public_key_base64(a.public_key())));
}

TEST_CASE("public key file errors name the file and line") {
    const IssuerSecretKey a = key_from_byte(0xa0);
    const std::string line_a = public_key_line(a.public_key(), "A");
    const std::string enc = public_key_base64(a.public_key());
    IssuerPublicKey zero;  // the identity: not a usable Ed25519 key
    struct Case {
        const char* what;
        std::string text;
        KeyFileErrc expected;
        const char* where;
    };
    const Case cases[] = {
        {"unknown tag", "# k\njitlb-issuer-public-v2 " + enc + "\n", KeyFileErrc::syntax,
         "keys.pub:2:"},
        {"tag without key", line_a + "jitlb-issuer-public-v1\n", KeyFileErrc::syntax,
         "keys.pub:2:"},
        {"key only", enc + "\n", KeyFileErrc::syntax, "keys.pub:1:"},
        {"a secret key line", "jitlb-issuer-secret-v1 " + enc + "\n", KeyFileErrc::syntax,
         "keys.pub:1:"},
        {"short key", "\n\njitlb-issuer-public-v1 " + enc.substr(1) + "\n", KeyFileErrc::bad_key,
         "keys.pub:3:"},
        {"standard base64", "jitlb-issuer-public-v1 " + enc.substr(1) + "/\n", KeyFileErrc::bad_key,
         "keys.pub:1:"},
        {"not a curve point", public_key_line(zero, ""), KeyFileErrc::bad_key, "keys.pub:1:"},
        {"duplicate", line_a + "# again\n" + line_a, KeyFileErrc::duplicate_key, "keys.pub:3:"},
        {"DOS line ending", line_a.substr(0, line_a.size() - 1) + "\r\n", KeyFileErrc::syntax,
         "keys.pub:1:"},
        {"control character", "jitlb-issuer-public-v1 " + enc + " a\x1b[0m\n", KeyFileErrc::syntax,
         "keys.pub:1:"},
        {"comment too long", public_key_line(a.public_key(), std::string(201, 'c')),
         KeyFileErrc::syntax, "keys.pub:1:"},
    };
    for (const Case& c : cases) {
        INFO(c.what);
        TrustedIssuers issuers;
        REQUIRE(issuers.add(key_from_byte(0xa1).public_key()).ok());
        const KeyFileError e = parse_public_keys(c.text, "keys.pub", issuers);
        INFO(e.message);
        CHECK(e.code == c.expected);
        CHECK(e.message.rfind(c.where, 0) == 0);
        CHECK(issuers.size() == 1);  // unchanged on error
    }
    // The duplicate's message points at the first occurrence too.
    TrustedIssuers issuers;
    const KeyFileError dup = parse_public_keys(line_a + line_a, "keys.pub", issuers);
    CHECK(dup.message.find("line 1") != std::string::npos);
    CHECK(dup.message.find(key_id_hex(a.key_id())) != std::string::npos);
}

TEST_CASE("a public key file that others may write is refused with the chmod to fix it") {
    TempDir dir;
    const IssuerSecretKey a = key_from_byte(0xb0);
    const std::string path = dir.file("trusted.pub");
    REQUIRE(write_public_key_file(path, a.public_key(), "issuer A").ok());
    CHECK(file_mode(path) == 0644);
    TrustedIssuers issuers;
    REQUIRE(read_public_key_file(path, issuers).ok());
    CHECK(issuers.find(a.key_id())->comment == "issuer A");
    CHECK(write_public_key_file(path, a.public_key(), "").code == KeyFileErrc::exists);
    CHECK(write_public_key_file(dir.file("x.pub"), a.public_key(), "two\nlines").code ==
          KeyFileErrc::syntax);

    for (const mode_t mode : {0664, 0646, 0666}) {
        REQUIRE(chmod(path.c_str(), mode) == 0);
        TrustedIssuers refused;
        const KeyFileError e = read_public_key_file(path, refused);
        CHECK(e.code == KeyFileErrc::insecure_permissions);
        CHECK(e.message.find("chmod go-w " + path) != std::string::npos);
    }
    // A line number counts from 1 in a file read from disk as well.
    write_text(path, "# ok\nnot a key\n", 0644);
    const KeyFileError e = read_public_key_file(path, issuers);
    CHECK(e.message.rfind(path + ":2:", 0) == 0);
    CHECK(issuers.size() == 1);  // the last good set stays
}

TEST_CASE("key rotation: both keys verify until the old key's line is removed") {
    TempDir dir;
    const IssuerSecretKey old_key = key_from_byte(0xc0);
    const IssuerSecretKey new_key = key_from_byte(0xc1);
    const std::string path = dir.file("trusted.pub");
    const SignedGrant from_old = sign(sample_grant(), old_key);
    Grant g2 = sample_grant();
    g2.grant_id[0] ^= 1;
    const SignedGrant from_new = sign(g2, new_key);

    const auto verify_with_file = [&](const SignedGrant& sg) {
        TrustedIssuers issuers;
        const KeyFileError e = read_public_key_file(path, issuers);
        INFO(e.message);
        REQUIRE(e.ok());
        return verify_grant(sg, issuers, {}, kT0).status;
    };
    write_text(path, public_key_line(old_key.public_key(), "old"));
    CHECK(verify_with_file(from_old) == VerifyStatus::ok);
    CHECK(verify_with_file(from_new) == VerifyStatus::unknown_issuer);

    write_text(path, public_key_line(old_key.public_key(), "old") +
                         public_key_line(new_key.public_key(), "new"));
    CHECK(verify_with_file(from_old) == VerifyStatus::ok);
    CHECK(verify_with_file(from_new) == VerifyStatus::ok);

    write_text(path, "# old key removed\n" + public_key_line(new_key.public_key(), "new"));
    CHECK(verify_with_file(from_old) == VerifyStatus::unknown_issuer);
    CHECK(verify_with_file(from_new) == VerifyStatus::ok);
}

TEST_CASE("a trusted set refuses a key twice") {
    const IssuerSecretKey a = key_from_byte(0xd0);
    TrustedIssuers issuers;
    REQUIRE(issuers.add(a.public_key(), "first", 4).ok());
    const KeyFileError e = issuers.add(a.public_key(), "second", 9);
    CHECK(e.code == KeyFileErrc::duplicate_key);
    CHECK(e.message.find("line 4") != std::string::npos);
    CHECK(issuers.size() == 1);
    CHECK(key_file_errc_name(KeyFileErrc::key_id_collision) == "key_id_collision");
}

// --- cost ---------------------------------------------------------------------------------------

TEST_CASE("cost of signing and verifying a grant (printed, not asserted)") {
    const IssuerSecretKey key = key_from_byte(0xe0);
    const TrustedIssuers issuers = trust({&key});
    const Grant g = sample_grant();
    constexpr int kRounds = 500;
    using Clock = std::chrono::steady_clock;

    SignedGrant sg{};
    const auto t0 = Clock::now();
    for (int i = 0; i < kRounds; ++i) REQUIRE(sign_grant(g, key, sg) == GrantFormatError::ok);
    const auto t1 = Clock::now();
    int ok = 0;
    for (int i = 0; i < kRounds; ++i) ok += verify_grant(sg, issuers, {}, kT0).ok();
    const auto t2 = Clock::now();
    int parsed_ok = 0;
    for (int i = 0; i < kRounds; ++i) {
        SignedGrant back{};
        parsed_ok += grant_from_text(grant_to_text(sg), back) == GrantFormatError::ok;
    }
    const auto t3 = Clock::now();
    CHECK(ok == kRounds);
    CHECK(parsed_ok == kRounds);
    const auto us = [](Clock::duration d) {
        return std::chrono::duration<double, std::micro>(d).count() / kRounds;
    };
    std::printf("grant cost per call: sign %.1f us, verify %.1f us, text round trip %.2f us\n",
                us(t1 - t0), us(t2 - t1), us(t3 - t2));
}
