// libFuzzer target: the grant parsers on arbitrary input. The bytes go to the
// binary parsers (parse_signed_grant, decode_grant_record) and to verify_grant,
// and, as a string, to the text parser, the source-prefix parser and the public
// key file parser. Whatever is accepted must re-encode to the identical bytes
// or text (abort otherwise): that is what makes each grant's form canonical.
//
// Seeds (tests/fuzz/corpus/fuzz_grant/) were written once by a throwaway
// program: signed grants (binary and text, IPv4 and IPv6, scheduled, bounds of
// every length) signed with kFuzzIssuerSeed below, a bare record, and a public
// key file; docs/grants.md ("Fuzzing") lists them.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>

#include "grant.h"
#include "issuer_keys.h"

namespace {

using namespace jitlb;

constexpr int64_t kFuzzNowMs = 1'700'000'000'000;

// 32 bytes of 0x42: the seeds' issuer, so that mutations reach every verify rule.
const TrustedIssuers& fuzz_issuers() {
    static const TrustedIssuers issuers = [] {
        std::array<uint8_t, kIssuerSeedSize> seed{};
        seed.fill(0x42);
        TrustedIssuers set;
        if (!set.add(IssuerSecretKey::from_seed(seed).public_key(), "fuzz").ok()) std::abort();
        return set;
    }();
    return issuers;
}

void check_binary(std::span<const uint8_t> bytes) {
    Grant grant;
    if (decode_grant_record(bytes, grant) == GrantFormatError::ok) {
        GrantRecord again{};
        if (encode_grant_record(grant, again) != GrantFormatError::ok) std::abort();
        if (!std::equal(again.begin(), again.end(), bytes.begin(), bytes.end())) std::abort();
    }

    ParsedSignedGrant parsed;
    const GrantFormatError form = parse_signed_grant(bytes, parsed);
    if (form == GrantFormatError::ok) {
        GrantRecord record{};
        if (encode_grant_record(parsed.grant, record) != GrantFormatError::ok) std::abort();
        SignedGrant again{};
        std::copy(record.begin(), record.end(), again.begin());
        std::copy(parsed.signature.begin(), parsed.signature.end(),
                  again.begin() + kGrantRecordSize);
        if (!std::equal(again.begin(), again.end(), bytes.begin(), bytes.end())) std::abort();
        // The text form of accepted bytes parses back to them.
        SignedGrant from_text{};
        if (grant_from_text(grant_to_text(again), from_text) != GrantFormatError::ok ||
            from_text != again) {
            std::abort();
        }
    }

    const VerifyResult v = verify_grant(bytes, fuzz_issuers(), VerifyPolicy{}, kFuzzNowMs);
    // Verification and parsing agree on what is malformed.
    if ((v.status == VerifyStatus::malformed) != (form != GrantFormatError::ok)) std::abort();
    if (v.status == VerifyStatus::malformed && v.format_error != form) std::abort();
    if (v.status != VerifyStatus::malformed && !(v.grant == parsed.grant)) std::abort();
    (void)describe_verify_result(v, kFuzzNowMs);
}

void check_text(std::string_view text) {
    SignedGrant grant{};
    if (grant_from_text(text, grant) == GrantFormatError::ok) {
        if (grant_to_text(grant) != text) std::abort();
        ParsedSignedGrant parsed;
        if (parse_signed_grant(grant, parsed) != GrantFormatError::ok) std::abort();
    }

    if (const auto prefix = parse_ip_prefix(text)) {
        const auto again = parse_ip_prefix(format_ip_prefix(*prefix));
        if (!again || !(*again == *prefix)) std::abort();
    }

    TrustedIssuers issuers;
    if (parse_public_keys(text, "fuzz", issuers).ok()) {
        std::string lines;
        for (const TrustedIssuer& issuer : issuers.entries()) {
            lines += public_key_line(issuer.key, issuer.comment);
        }
        TrustedIssuers again;
        if (!parse_public_keys(lines, "fuzz", again).ok() || again.size() != issuers.size()) {
            std::abort();
        }
        for (size_t i = 0; i < issuers.size(); ++i) {
            if (again.entries()[i].key != issuers.entries()[i].key ||
                again.entries()[i].comment != issuers.entries()[i].comment) {
                std::abort();
            }
        }
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    check_binary(std::span<const uint8_t>(data, size));
    check_text(std::string_view(reinterpret_cast<const char*>(data), size));
    return 0;
}
