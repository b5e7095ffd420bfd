// The audit log (control/audit_log.h): the line format and its hash rule,
// recomputed here by an independent model (libsodium and nlohmann directly);
// checkpoint signatures over the documented bytes; every kind of tampering —
// an edited, deleted, swapped, inserted or forged line, a rewritten tail, a
// cut tail, a bad or untrusted checkpoint — caught at the right line; torn
// last lines recovered at open and recorded, other damage refused; reopening
// continues the chain; the sink; and the cost of verifying 100k lines.
#include <catch2/catch.hpp>

#include "temp_dir.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "audit_log.h"
#include "duration.h"
#include "issuer_keys.h"
#include "sodium_init.h"

using namespace jitlb;
using namespace jitlb::control;
namespace fs = std::filesystem;
using ordered_json = nlohmann::ordered_json;

namespace {

constexpr int64_t kT0 = 1'700'000'000'000;  // 2023-11-14, Unix ms
const std::string kZeros(64, '0');


std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

void write_text(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    REQUIRE(out.good());
}

void append_text(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary | std::ios::app);
    out << text;
    REQUIRE(out.good());
}

std::vector<std::string> split_lines(const std::string& text) {
    std::vector<std::string> lines;
    size_t pos = 0;
    while (pos < text.size()) {
        const size_t newline = text.find('\n', pos);
        REQUIRE(newline != std::string::npos);
        lines.push_back(text.substr(pos, newline - pos));
        pos = newline + 1;
    }
    return lines;
}

std::string join_lines(const std::vector<std::string>& lines) {
    std::string text;
    for (const auto& line : lines) text += line + "\n";
    return text;
}

AuditEvent event(int i) {
    AuditEvent e;
    e.actor = fmt::format("user:u{}(uid {})", i % 7, 1000 + i % 7);
    e.action = i % 3 == 0 ? "request.create" : (i % 3 == 1 ? "grant.issue" : "grant.revoke");
    e.object = fmt::format("g-{:08x}", i);
    e.result = i % 5 == 0 ? "refused" : "ok";
    e.reason = i % 4 == 0 ? "" : fmt::format("ticket OPS-{}", i);
    e.detail = {{"source", fmt::format("10.0.{}.{}", i / 256 % 256, i % 256)}, {"n", i}};
    return e;
}

AuditOptions quick_options() {
    AuditOptions o;
    o.fsync = false;  // tests need no durability; one test keeps the default
    return o;
}

// A log of `events` events (and the checkpoints that come with them) written
// 100 ms apart from kT0 (no time-based checkpoint before 600 events) by `key`.
AuditHead write_log(const std::string& path, const IssuerSecretKey* key, int events,
                    AuditOptions options = quick_options()) {
    AuditLog log = AuditLog::open(path, key, options, kT0);
    AuditHead head;
    for (int i = 0; i < events; ++i) head = log.append(event(i), kT0 + i * 100);
    return head;
}

// --- the independent model of the format ----------------------------------------------------

AuditHash model_blake2b(std::string_view bytes) {
    AuditHash h{};
    crypto_generichash(h.data(), h.size(), reinterpret_cast<const unsigned char*>(bytes.data()),
                       bytes.size(), nullptr, 0);
    return h;
}

std::string model_hex(std::span<const uint8_t> bytes) {
    std::string hex;
    for (const uint8_t b : bytes) hex += fmt::format("{:02x}", b);
    return hex;
}

// The body of a line, as the format defines it, built from the parsed JSON:
// the line re-serialized without its "hash" key.
std::string model_body(const std::string& line) {
    ordered_json j = ordered_json::parse(line);
    j.erase("hash");
    return j.dump();
}

// What a forger without the checkpoint key can do: re-serialize `j` with the
// given prev, and hash it as the format says.
std::string model_line(ordered_json j, const std::string& prev_hex) {
    j.erase("hash");
    j["prev"] = prev_hex;
    const std::string body = j.dump();
    j["hash"] = model_hex(model_blake2b(body));
    return j.dump();
}

std::string model_hash_of(const std::string& line) {
    return ordered_json::parse(line)["hash"].get<std::string>();
}

// Renumbers seq from 1 and recomputes prev and hash of lines[from..]: a tail
// rewritten consistently by someone who can write the file but has no key.
void rechain(std::vector<std::string>& lines, size_t from) {
    for (size_t i = from; i < lines.size(); ++i) {
        ordered_json j = ordered_json::parse(lines[i]);
        j["seq"] = static_cast<uint64_t>(i + 1);
        lines[i] = model_line(j, i == 0 ? kZeros : model_hash_of(lines[i - 1]));
    }
}

size_t first_checkpoint_index(const std::vector<std::string>& lines, size_t from = 0) {
    for (size_t i = from; i < lines.size(); ++i) {
        if (ordered_json::parse(lines[i])["action"] == "audit.checkpoint") return i;
    }
    FAIL("no checkpoint line");
    return 0;
}

TrustedIssuers trust(const IssuerSecretKey& key) {
    TrustedIssuers keys;
    REQUIRE(keys.add(key.public_key(), "audit").ok());
    return keys;
}

void require_fault(const AuditVerifyReport& r, AuditFault fault, uint64_t line) {
    INFO(r.problem);
    CHECK_FALSE(r.ok);
    CHECK(audit_fault_name(r.fault) == audit_fault_name(fault));
    CHECK(r.first_bad_line == line);
    CHECK_THAT(r.problem, Catch::StartsWith(fmt::format("line {}: ", line)));
}

// The checked-in audit key of these tests: fixed, so failures reproduce.
const IssuerSecretKey& audit_key() {
    static const IssuerSecretKey key = [] {
        std::array<uint8_t, kIssuerSeedSize> seed{};
        for (size_t i = 0; i < seed.size(); ++i) seed[i] = static_cast<uint8_t>(0xa0 + i);
        return IssuerSecretKey::from_seed(seed);
    }();
    return key;
}

}  // namespace

// --- the format ------------------------------------------------------------------------------

TEST_CASE("a line has the documented keys in order, and its hash is BLAKE2b-256 of its body") {
    ensure_sodium();
    TempDir dir;
    const std::string path = dir.file("audit.log");
    AuditEvent e;
    e.actor = "user:alice(uid 1001)";
    e.action = "request.create";
    e.object = "r-1";
    e.result = "ok";
    e.reason = "deploy hotfix";
    e.detail = {{"service", "ssh"}, {"source", "192.0.2.7"}};
    {
        AuditLog log = AuditLog::open(path, nullptr, quick_options(), kT0);
        log.append(e, kT0 + 250);
        log.append(e, kT0 + 1000);
    }
    const std::string text = read_text(path);
    const auto lines = split_lines(text);
    REQUIRE(lines.size() == 2);
    CHECK(text.back() == '\n');

    const std::string expected_body =
        R"j({"seq":1,"time_ms":1700000000250,"time":"2023-11-14T22:13:20.250Z",)j"
        R"j("actor":"user:alice(uid 1001)","action":"request.create","object":"r-1",)j"
        R"j("result":"ok","reason":"deploy hotfix",)j"
        R"j("detail":{"service":"ssh","source":"192.0.2.7"},"prev":")j" +
        kZeros + R"j("})j";
    const std::string hash = model_hex(model_blake2b(expected_body));
    CHECK(lines[0] ==
          expected_body.substr(0, expected_body.size() - 1) + R"(,"hash":")" + hash + R"("})");
    // The body is also the line re-serialized without its hash key, and the
    // line minus its last 75 bytes, plus "}".
    CHECK(model_body(lines[0]) == expected_body);
    CHECK(lines[0].substr(0, lines[0].size() - 75) + "}" == expected_body);
    CHECK(audit_line_hash(lines[0]) == parse_audit_hash_hex(hash));

    const ordered_json second = ordered_json::parse(lines[1]);
    std::vector<std::string> keys;
    for (const auto& item : second.items()) keys.push_back(item.key());
    CHECK(keys == std::vector<std::string>{"seq", "time_ms", "time", "actor", "action", "object",
                                           "result", "reason", "detail", "prev", "hash"});
    CHECK(second["seq"] == 2);
    CHECK(second["time"] == "2023-11-14T22:13:21Z");
    CHECK(second["prev"] == hash);
    CHECK(second["hash"] == model_hex(model_blake2b(model_body(lines[1]))));
}

TEST_CASE("a checkpoint signs domain, seq, time_ms and prev with the audit key") {
    ensure_sodium();
    TempDir dir;
    const std::string path = dir.file("audit.log");
    AuditOptions o = quick_options();
    o.checkpoint_every_lines = 3;
    write_log(path, &audit_key(), 3, o);
    const auto lines = split_lines(read_text(path));
    REQUIRE(lines.size() == 4);
    const ordered_json cp = ordered_json::parse(lines[3]);
    CHECK(cp["action"] == "audit.checkpoint");
    CHECK(cp["actor"] == "jitd");
    CHECK(cp["seq"] == 4);
    CHECK(cp["detail"]["key_id"] == key_id_hex(audit_key().key_id()));
    CHECK(cp["prev"] == model_hash_of(lines[2]));

    // The message, built here byte by byte from the documented layout.
    std::string message = "jitlb-audit-checkpoint-v1";
    const uint64_t seq = 4;
    const uint64_t time_ms = cp["time_ms"].get<uint64_t>();
    for (int i = 0; i < 8; ++i) message += static_cast<char>(seq >> (8 * i) & 0xff);
    for (int i = 0; i < 8; ++i) message += static_cast<char>(time_ms >> (8 * i) & 0xff);
    const AuditHash prev = *parse_audit_hash_hex(cp["prev"].get<std::string>());
    message.append(reinterpret_cast<const char*>(prev.data()), prev.size());
    REQUIRE(message.size() == kAuditCheckpointMessageSize);
    const auto api_message = audit_checkpoint_message(seq, time_ms, prev);
    CHECK(std::string(api_message.begin(), api_message.end()) == message);

    const std::string sig_hex = cp["detail"]["sig"].get<std::string>();
    REQUIRE(sig_hex.size() == 128);
    std::array<uint8_t, 64> sig{};
    for (size_t i = 0; i < sig.size(); ++i) {
        sig[i] = static_cast<uint8_t>(std::stoul(sig_hex.substr(2 * i, 2), nullptr, 16));
    }
    CHECK(crypto_sign_verify_detached(sig.data(), reinterpret_cast<const uint8_t*>(message.data()),
                                      message.size(), audit_key().public_key().bytes.data()) == 0);
}

TEST_CASE("details with awkward values round-trip through a line that verifies") {
    TempDir dir;
    const std::string path = dir.file("audit.log");
    {
        AuditLog log = AuditLog::open(path, nullptr, quick_options(), kT0);
        AuditEvent e = event(1);
        e.reason = "tab\there, quote \" backslash \\ newline \n é 漢字 \x01";
        e.actor = std::string("not utf-8: \xff\xfe");
        e.detail = {{"float", 0.1},
                    {"neg", -5},
                    {"big", UINT64_MAX},
                    {"nan", NAN},
                    {"negzero", -0.0},
                    {"null", nullptr},
                    {"arr", {1, "2", ordered_json::object()}},
                    {"nested", {{"a", {{"b", {{"c", true}}}}}}}};
        log.append(e, kT0);
        e.detail = ordered_json::object();
        log.append(e, kT0 + 1);
    }
    const auto r = verify_audit_log(path, nullptr, std::nullopt);
    INFO(r.problem);
    CHECK(r.ok);
    CHECK(r.lines == 2);
    // Bytes that are not UTF-8 are kept as U+FFFD rather than losing the event.
    CHECK_THAT(read_text(path), Catch::Contains("not utf-8: \xef\xbf\xbd\xef\xbf\xbd"));
}

TEST_CASE("events the log refuses: empty or reserved action, detail not an object or too deep") {
    TempDir dir;
    AuditLog log = AuditLog::open(dir.file("audit.log"), nullptr, quick_options(), kT0);
    AuditEvent e = event(1);
    e.action = "";
    CHECK_THROWS_WITH(log.append(e, kT0), Catch::Contains("action is empty"));
    e.action = "audit.checkpoint";
    CHECK_THROWS_WITH(log.append(e, kT0), Catch::Contains("reserved"));
    e.action = "audit.recovered";
    CHECK_THROWS_WITH(log.append(e, kT0), Catch::Contains("reserved"));
    e.action = "grant.issue";
    e.detail = ordered_json::array();
    CHECK_THROWS_WITH(log.append(e, kT0), Catch::Contains("not an object"));
    ordered_json deep = 1;
    for (int i = 0; i < 40; ++i) deep = ordered_json::array({deep});
    e.detail = {{"deep", deep}};
    CHECK_THROWS_WITH(log.append(e, kT0), Catch::Contains("deep"));
    e.detail = {{"big", std::string(kMaxAuditLineBytes, 'x')}};
    CHECK_THROWS_WITH(log.append(e, kT0), Catch::Contains("shorten the detail"));
    e.detail = ordered_json::object();
    CHECK_THROWS_WITH(log.append(e, -1), Catch::Contains("is the clock set"));
    // Nothing refused reached the file.
    CHECK(log.head().seq == 0);
    CHECK(read_text(dir.file("audit.log")).empty());
    CHECK(log.append(e, kT0).seq == 1);
}

TEST_CASE("audit heads and hashes print and parse as SEQ:HEX") {
    AuditHead head{250, {}};
    for (size_t i = 0; i < head.hash.size(); ++i) head.hash[i] = static_cast<uint8_t>(i * 7);
    const std::string text = format_audit_head(head);
    CHECK(text == "250:" + model_hex(head.hash));
    CHECK(parse_audit_head(text) == head);
    std::string error;
    CHECK_FALSE(parse_audit_head("250", &error));
    CHECK_THAT(error, Catch::Contains("no ':'"));
    CHECK_FALSE(parse_audit_head("-1:" + kZeros, &error));
    CHECK_FALSE(parse_audit_head("99999999999999999999:" + kZeros, &error));
    CHECK_THAT(error, Catch::Contains("too large"));
    CHECK_FALSE(parse_audit_head("1:" + std::string(64, 'A'), &error));
    CHECK_FALSE(parse_audit_hash_hex(std::string(63, '0')));
    CHECK_FALSE(parse_audit_hash_hex(std::string(64, 'g')));
}

// --- verification ------------------------------------------------------------------------------

TEST_CASE("a valid log of 250 events with checkpoints verifies, with and without keys") {
    TempDir dir;
    const std::string path = dir.file("audit.log");
    const AuditHead head = write_log(path, &audit_key(), 250);
    const auto lines = split_lines(read_text(path));
    // A checkpoint after every 100 unsigned lines: seq 101 and 202.
    REQUIRE(lines.size() == 252);
    CHECK(ordered_json::parse(lines[100])["action"] == "audit.checkpoint");
    CHECK(ordered_json::parse(lines[201])["action"] == "audit.checkpoint");
    CHECK(head.seq == 252);

    const TrustedIssuers keys = trust(audit_key());
    const auto r = verify_audit_log(path, &keys, head);
    INFO(r.problem);
    CHECK(r.ok);
    CHECK(r.fault == AuditFault::none);
    CHECK(r.lines == 252);
    CHECK(r.checkpoints == 2);
    CHECK(r.signatures_verified == 2);
    CHECK(r.signed_through_seq == 201);
    CHECK(r.first_bad_line == 0);
    CHECK(r.problem.empty());
    CHECK(r.head == head);

    const auto unkeyed = verify_audit_log(path, nullptr, std::nullopt);
    CHECK(unkeyed.ok);
    CHECK(unkeyed.checkpoints == 2);
    CHECK(unkeyed.signatures_verified == 0);
    CHECK(verify_audit_text(read_text(path), &keys, head).head == head);
    CHECK(verify_audit_text("", &keys, std::nullopt).ok);
}

TEST_CASE("tampering with a line is caught at the line where the chain first breaks") {
    TempDir dir;
    const std::string path = dir.file("audit.log");
    const AuditHead head = write_log(path, &audit_key(), 250);
    const auto original = split_lines(read_text(path));
    const TrustedIssuers keys = trust(audit_key());
    const auto verify = [&](const std::vector<std::string>& lines) {
        return verify_audit_text(join_lines(lines), &keys, std::nullopt);
    };
    REQUIRE(verify(original).ok);
    constexpr size_t k = 57;  // line k is original[k - 1]

    SECTION("editing a field of line k") {
        auto lines = original;
        const size_t at = lines[k - 1].find("\"result\":\"ok\"");
        REQUIRE(at != std::string::npos);
        lines[k - 1].replace(at, 13, "\"result\":\"no\"");
        require_fault(verify(lines), AuditFault::hash, k);
    }
    SECTION("editing line k and recomputing its hash breaks line k+1's prev") {
        auto lines = original;
        ordered_json j = ordered_json::parse(lines[k - 1]);
        j["object"] = "g-somebody-else";
        lines[k - 1] = model_line(j, model_hash_of(lines[k - 2]));
        require_fault(verify(lines), AuditFault::prev, k + 1);
    }
    SECTION("deleting line k") {
        auto lines = original;
        lines.erase(lines.begin() + (k - 1));
        require_fault(verify(lines), AuditFault::seq, k);
    }
    SECTION("deleting line 1 (the start of the log)") {
        auto lines = original;
        lines.erase(lines.begin());
        require_fault(verify(lines), AuditFault::seq, 1);
    }
    SECTION("swapping lines k and k+5") {
        auto lines = original;
        std::swap(lines[k - 1], lines[k + 4]);
        require_fault(verify(lines), AuditFault::seq, k);
    }
    SECTION("inserting a well-forged line (right seq, prev and hash) before line k") {
        auto lines = original;
        ordered_json forged = ordered_json::parse(lines[k - 1]);
        forged["actor"] = "user:mallory(uid 6666)";
        lines.insert(lines.begin() + (k - 1), model_line(forged, model_hash_of(lines[k - 2])));
        // The forged line itself is consistent; the original line k, now at
        // k+1, is where the chain breaks.
        require_fault(verify(lines), AuditFault::seq, k + 1);
    }
    SECTION("inserting a line with a made-up hash") {
        auto lines = original;
        std::string forged = lines[k - 1];
        forged.replace(forged.size() - 66, 64, std::string(64, 'a'));
        lines.insert(lines.begin() + (k - 1), forged);
        require_fault(verify(lines), AuditFault::hash, k);
    }
    SECTION("a tail rewritten consistently after a forged line fails at the next checkpoint") {
        auto lines = original;
        ordered_json forged = ordered_json::parse(lines[k - 1]);
        forged["actor"] = "user:mallory(uid 6666)";
        lines.insert(lines.begin() + (k - 1), forged.dump());
        rechain(lines, k - 1);
        const size_t checkpoint = first_checkpoint_index(lines, k) + 1;  // 1-based
        CHECK(checkpoint == 102);
        require_fault(verify(lines), AuditFault::signature, checkpoint);
        // Without the keys the rewritten chain is self-consistent, which is
        // why verification takes the audit key and jitd's stored head.
        CHECK(verify_audit_text(join_lines(lines), nullptr, std::nullopt).ok);
        const auto r = verify_audit_text(join_lines(lines), nullptr, head);
        CHECK(r.fault == AuditFault::head_mismatch);
        CHECK(r.first_bad_line == head.seq);
    }
    SECTION("blanks added to a line, with its hash recomputed over the new bytes") {
        auto lines = original;
        std::string edited = lines[k - 1];
        edited.replace(edited.find("\"actor\":"), 8, "\"actor\": ");
        const std::string body = edited.substr(0, edited.size() - 75) + "}";
        edited.replace(edited.size() - 66, 64, model_hex(model_blake2b(body)));
        lines[k - 1] = edited;
        require_fault(verify(lines), AuditFault::not_canonical, k);
    }
    SECTION("a line of garbage, or a line that is JSON but not an audit line") {
        auto lines = original;
        lines[k - 1] = "garbage";
        require_fault(verify(lines), AuditFault::not_json, k);
        lines[k - 1] = R"({"seq":57})";
        require_fault(verify(lines), AuditFault::bad_line, k);
        lines[k - 1] = "";
        require_fault(verify(lines), AuditFault::not_json, k);
        lines[k - 1] = std::string(100, '[');
        require_fault(verify(lines), AuditFault::bad_line, k);
    }
    SECTION("a time that does not match time_ms") {
        auto lines = original;
        ordered_json j = ordered_json::parse(lines[k - 1]);
        j["time"] = "2023-11-14T22:13:20Z";
        lines[k - 1] = model_line(j, model_hash_of(lines[k - 2]));
        require_fault(verify(lines), AuditFault::bad_line, k);
    }
}

TEST_CASE("no single-byte change anywhere in a log verifies") {
    TempDir dir;
    const std::string path = dir.file("audit.log");
    AuditOptions o = quick_options();
    o.checkpoint_every_lines = 5;
    write_log(path, &audit_key(), 12, o);
    const std::string text = read_text(path);
    const TrustedIssuers keys = trust(audit_key());
    REQUIRE(verify_audit_text(text, &keys, std::nullopt).ok);
    size_t caught = 0;
    for (size_t i = 0; i < text.size(); ++i) {
        for (const uint8_t flip : {0x01, 0x20, 0x80}) {
            std::string changed = text;
            changed[i] = static_cast<char>(changed[i] ^ flip);
            const auto r = verify_audit_text(changed, nullptr, std::nullopt);
            INFO("byte " << i << " ^ " << int(flip) << ": " << r.problem);
            CHECK_FALSE(r.ok);
            caught += r.ok ? 0 : 1;
        }
    }
    CHECK(caught == 3 * text.size());
}

TEST_CASE("checkpoints: a bad signature, an untrusted key, a malformed detail") {
    TempDir dir;
    const std::string path = dir.file("audit.log");
    write_log(path, &audit_key(), 250);
    const auto original = split_lines(read_text(path));
    const TrustedIssuers keys = trust(audit_key());
    const size_t cp = first_checkpoint_index(original);  // 0-based: line cp + 1
    REQUIRE(cp + 1 == 101);

    SECTION("a signature changed (and the chain recomputed) does not verify") {
        auto lines = original;
        ordered_json j = ordered_json::parse(lines[cp]);
        std::string sig = j["detail"]["sig"];
        sig[10] = sig[10] == '0' ? '1' : '0';
        j["detail"]["sig"] = sig;
        lines[cp] = j.dump();
        rechain(lines, cp);
        require_fault(verify_audit_text(join_lines(lines), &keys, std::nullopt),
                      AuditFault::signature, cp + 1);
        // Without keys only the form is checked.
        CHECK(verify_audit_text(join_lines(lines), nullptr, std::nullopt).ok);
    }
    SECTION("a checkpoint re-signed with a key that is not trusted") {
        const IssuerSecretKey mallory = IssuerSecretKey::generate();
        auto lines = original;
        ordered_json j = ordered_json::parse(lines[cp]);
        const AuditHash prev = *parse_audit_hash_hex(j["prev"].get<std::string>());
        const auto message = audit_checkpoint_message(cp + 1, j["time_ms"].get<uint64_t>(), prev);
        j["detail"]["key_id"] = key_id_hex(mallory.key_id());
        j["detail"]["sig"] = model_hex(mallory.sign(message));
        lines[cp] = j.dump();
        rechain(lines, cp);
        const auto r = verify_audit_text(join_lines(lines), &keys, std::nullopt);
        require_fault(r, AuditFault::untrusted_key, cp + 1);
        CHECK_THAT(r.problem, Catch::Contains(key_id_hex(mallory.key_id())));
        // Even if that key were trusted, the real key's next checkpoint
        // (line 202) no longer verifies over the rechained lines.
        TrustedIssuers both = trust(audit_key());
        REQUIRE(both.add(mallory.public_key()).ok());
        const auto r2 = verify_audit_text(join_lines(lines), &both, std::nullopt);
        require_fault(r2, AuditFault::signature, 202);
        CHECK(r2.signatures_verified == 1);
    }
    SECTION("a log signed by one key, checked against another") {
        const TrustedIssuers other = trust(IssuerSecretKey::generate());
        require_fault(verify_audit_text(join_lines(original), &other, std::nullopt),
                      AuditFault::untrusted_key, cp + 1);
    }
    SECTION("a checkpoint detail without its signature") {
        auto lines = original;
        ordered_json j = ordered_json::parse(lines[cp]);
        j["detail"].erase("sig");
        lines[cp] = j.dump();
        rechain(lines, cp);
        require_fault(verify_audit_text(join_lines(lines), nullptr, std::nullopt),
                      AuditFault::bad_checkpoint, cp + 1);
    }
}

TEST_CASE("a tail cut back is caught only with the expected head, at the first missing line") {
    TempDir dir;
    const std::string path = dir.file("audit.log");
    const AuditHead head = write_log(path, &audit_key(), 250);
    auto lines = split_lines(read_text(path));
    lines.resize(200);
    write_text(path, join_lines(lines));
    const TrustedIssuers keys = trust(audit_key());

    const auto without = verify_audit_log(path, &keys, std::nullopt);
    CHECK(without.ok);
    CHECK(without.lines == 200);
    const auto with = verify_audit_log(path, &keys, head);
    require_fault(with, AuditFault::truncated, 201);
    CHECK_THAT(with.problem, Catch::Contains("stored head is line 252"));
    CHECK(with.lines == 200);
    // An expected head that is older than the log is fine (jitd stores the
    // head after the append).
    CHECK(verify_audit_log(path, &keys,
                           AuditHead{150, *parse_audit_hash_hex(model_hash_of(lines[149]))})
              .ok);
    // Emptied entirely.
    write_text(path, "");
    require_fault(verify_audit_log(path, &keys, head), AuditFault::truncated, 1);
    // And open() refuses it too.
    AuditOptions o = quick_options();
    o.expected_head = head;
    try {
        AuditLog::open(path, &audit_key(), o, kT0);
        FAIL("open accepted a log cut back before the stored head");
    } catch (const AuditError& e) {
        CHECK(e.line() == 1);
        CHECK_THAT(e.what(), Catch::Contains("tail was cut off"));
    }
}

TEST_CASE("verification reports a missing final newline as a torn line") {
    TempDir dir;
    const std::string path = dir.file("audit.log");
    write_log(path, nullptr, 10);
    std::string text = read_text(path);
    text.pop_back();
    require_fault(verify_audit_text(text, nullptr, std::nullopt), AuditFault::torn, 10);
    write_text(path, text);
    require_fault(verify_audit_log(path, nullptr, std::nullopt), AuditFault::torn, 10);
    CHECK_THROWS_AS(verify_audit_log(dir.file("missing.log"), nullptr, std::nullopt), AuditError);
}

// --- open, recovery, reopening ------------------------------------------------------------------

TEST_CASE("a torn last line is cut at open and recorded in an audit.recovered line") {
    TempDir dir;
    const std::string path = dir.file("audit.log");
    write_log(path, &audit_key(), 10);
    const std::string whole = read_text(path);
    const auto whole_lines = split_lines(whole);
    std::string torn;

    SECTION("half a line without a newline (kill -9 during the write)") {
        torn = whole_lines[4].substr(0, whole_lines[4].size() / 2);
    }
    SECTION("a last line that is not JSON, with a newline (zeros after a power cut)") {
        torn = std::string(40, '\0') + "\n";
    }
    append_text(path, torn);
    AuditLog log = AuditLog::open(path, &audit_key(), quick_options(), kT0 + 60'000);
    CHECK(log.recovered_bytes() == torn.size());
    CHECK(log.damage().empty());
    CHECK(log.head().seq == 11);

    const auto lines = split_lines(read_text(path));
    REQUIRE(lines.size() == 11);
    CHECK(read_text(path).substr(0, whole.size()) == whole);
    const ordered_json rec = ordered_json::parse(lines[10]);
    CHECK(rec["action"] == "audit.recovered");
    CHECK(rec["actor"] == "jitd");
    CHECK(rec["detail"]["bytes_removed"] == torn.size());
    CHECK(rec["detail"]["offset"] == whole.size());
    CHECK(rec["detail"]["removed_blake2b"] == model_hex(model_blake2b(torn)));
    const TrustedIssuers keys = trust(audit_key());
    CHECK(verify_audit_log(path, &keys, std::nullopt).ok);
    log.append(event(99), kT0 + 61'000);
    CHECK(verify_audit_log(path, &keys, log.head()).ok);
}

TEST_CASE("a line of garbage in the middle is not recovered: open throws unless forced") {
    TempDir dir;
    const std::string path = dir.file("audit.log");
    write_log(path, nullptr, 10);
    const auto original = split_lines(read_text(path));
    auto lines = original;
    lines[4] = "garbage";
    write_text(path, join_lines(lines));
    const std::string damaged = read_text(path);

    try {
        AuditLog::open(path, nullptr, quick_options(), kT0);
        FAIL("open accepted a damaged log");
    } catch (const AuditError& e) {
        CHECK(e.line() == 5);
        CHECK_THAT(e.what(), Catch::Contains("line 5: not valid JSON"));
        CHECK_THAT(e.what(), Catch::Contains(path));
    }
    CHECK(read_text(path) == damaged);  // untouched

    // An edited line with a newline at the end of the file is tampering, not a torn write.
    auto edited = original;
    edited.back().replace(edited.back().find("\"result\":\""), 10, "\"result\":\"X");
    write_text(dir.file("edited.log"), join_lines(edited));
    try {
        AuditLog::open(dir.file("edited.log"), nullptr, quick_options(), kT0);
        FAIL("open cut off an edited last line as if it were torn");
    } catch (const AuditError& e) {
        CHECK(e.line() == 10);
        CHECK_THAT(e.what(), Catch::Contains("line 10: hash does not match"));
    }

    AuditOptions forced = quick_options();
    forced.open_damaged = true;
    {
        AuditLog log = AuditLog::open(path, nullptr, forced, kT0 + 5000);
        CHECK_THAT(log.damage(), Catch::Contains("line 5"));
        CHECK(log.head().seq == 11);
        const ordered_json rec = ordered_json::parse(split_lines(read_text(path))[10]);
        CHECK(rec["action"] == "audit.recovered");
        CHECK(rec["result"] == "damaged");
        CHECK(rec["detail"]["damaged_line"] == 5);
        CHECK(rec["prev"] == model_hash_of(lines[9]));  // continues after the last line
        log.append(event(1), kT0 + 6000);
    }
    // The damage stays visible.
    require_fault(verify_audit_log(path, nullptr, std::nullopt), AuditFault::not_json, 5);
}

TEST_CASE("reopening a log continues its chain: seq and prev carry on") {
    TempDir dir;
    const std::string path = dir.file("audit.log");
    AuditOptions o = quick_options();
    o.checkpoint_every_lines = 4;
    AuditHead first;
    {
        AuditLog log = AuditLog::open(path, &audit_key(), o, kT0);
        for (int i = 0; i < 6; ++i) first = log.append(event(i), kT0 + i);
        CHECK(first.seq == 7);  // 4 events, a checkpoint, 2 events
    }
    o.expected_head = first;
    AuditLog log = AuditLog::open(path, &audit_key(), o, kT0 + 100);
    CHECK(log.head() == first);
    CHECK(log.recovered_bytes() == 0);
    const AuditHead next = log.append(event(7), kT0 + 101);
    CHECK(next.seq == 8);
    const auto lines = split_lines(read_text(path));
    CHECK(ordered_json::parse(lines[7])["prev"] == audit_hash_hex(first.hash));
    // The checkpoint count continues from the file: 2 more events make 4.
    CHECK(log.append(event(8), kT0 + 102).seq == 10);
    CHECK(ordered_json::parse(split_lines(read_text(path)).back())["action"] == "audit.checkpoint");
    const TrustedIssuers keys = trust(audit_key());
    const auto r = verify_audit_log(path, &keys, log.head());
    CHECK(r.ok);
    CHECK(r.checkpoints == 2);
}

TEST_CASE("a log can be opened by one writer at a time") {
    TempDir dir;
    const std::string path = dir.file("audit.log");
    AuditLog log = AuditLog::open(path, nullptr, quick_options(), kT0);
    CHECK_THROWS_WITH(AuditLog::open(path, nullptr, quick_options(), kT0),
                      Catch::Contains("another process"));
    AuditLog moved = std::move(log);
    CHECK(moved.append(event(1), kT0).seq == 1);
}

TEST_CASE("a new log is created 0640 and written with fdatasync by default") {
    TempDir dir;
    const std::string path = dir.file("audit.log");
    const mode_t old_umask = ::umask(022);
    {
        AuditLog log = AuditLog::open(path, nullptr, AuditOptions{}, kT0);
        log.append(event(1), kT0);
    }
    ::umask(old_umask);
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0640);
    CHECK(verify_audit_log(path, nullptr, std::nullopt).ok);
    REQUIRE(::mkfifo(dir.file("fifo").c_str(), 0600) == 0);
    CHECK_THROWS_WITH(AuditLog::open(dir.file("fifo"), nullptr, quick_options(), kT0),
                      Catch::Contains("not a regular file"));
    CHECK_THROWS_WITH(
        AuditLog::open(dir.file("no/such/dir/audit.log"), nullptr, quick_options(), kT0),
        Catch::Contains("cannot open"));
}

// --- checkpoint timing and the sink
// ---------------------------------------------------------------

TEST_CASE("checkpoints come every N lines or every T ms, whichever is first") {
    TempDir dir;
    const std::string path = dir.file("audit.log");
    AuditOptions o = quick_options();
    o.checkpoint_every_lines = 0;
    o.checkpoint_every_ms = 1000;
    AuditLog log = AuditLog::open(path, &audit_key(), o, kT0);
    CHECK(log.append(event(1), kT0 + 10).seq == 1);
    CHECK(log.append(event(2), kT0 + 999).seq == 2);
    CHECK(log.append(event(3), kT0 + 1000).seq == 4);  // the event and a checkpoint
    CHECK(log.append(event(4), kT0 + 1500).seq == 5);
    CHECK(log.checkpoint_if_due(kT0 + 1999).seq == 5);
    CHECK(log.checkpoint_if_due(kT0 + 2000).seq == 6);
    // Nothing new: no checkpoint, however long the wait.
    CHECK(log.checkpoint_if_due(kT0 + 9000).seq == 6);
    CHECK(log.checkpoint_now(kT0 + 9000).seq == 6);
    CHECK(log.append(event(5), kT0 + 2500).seq == 7);
    CHECK(log.checkpoint_now(kT0 + 2600).seq == 8);
    const auto lines = split_lines(read_text(path));
    CHECK_THAT(lines[3], Catch::Contains(R"("reason":"1s since the last checkpoint")"));
    CHECK_THAT(lines[7], Catch::Contains(R"("reason":"requested")"));
    const TrustedIssuers keys = trust(audit_key());
    const auto r = verify_audit_log(path, &keys, log.head());
    CHECK(r.ok);
    CHECK(r.checkpoints == 3);
    CHECK(r.signed_through_seq == 7);

    // Without a key there are never checkpoints.
    AuditLog unkeyed = AuditLog::open(dir.file("unkeyed.log"), nullptr, o, kT0);
    for (int i = 0; i < 5; ++i) unkeyed.append(event(i), kT0 + i * 10'000);
    CHECK(unkeyed.checkpoint_now(kT0 + 60'000).seq == 5);
}

TEST_CASE("checkpoint lines are also appended to the sink") {
    TempDir dir;
    const std::string path = dir.file("audit.log");
    AuditOptions o = quick_options();
    o.checkpoint_every_lines = 10;
    o.sink_path = dir.file("sink.log");
    write_text(o.sink_path, "a line cut short by a crash");  // must not merge with ours
    {
        AuditLog log = AuditLog::open(path, &audit_key(), o, kT0);
        for (int i = 0; i < 35; ++i) log.append(event(i), kT0 + i);
        CHECK(log.sink_error().empty());
        CHECK(log.sink_failures() == 0);
    }
    std::vector<std::string> checkpoints;
    for (const auto& line : split_lines(read_text(path))) {
        if (ordered_json::parse(line)["action"] == "audit.checkpoint") checkpoints.push_back(line);
    }
    REQUIRE(checkpoints.size() == 3);
    auto sink = split_lines(read_text(o.sink_path));
    REQUIRE(sink.size() == 4);
    CHECK(sink[0] == "a line cut short by a crash");
    sink.erase(sink.begin());
    CHECK(sink == checkpoints);
    // The sink's last checkpoint vouches for the log up to its line.
    const ordered_json last = ordered_json::parse(sink.back());
    const AuditHead sink_head{last["seq"].get<uint64_t>(),
                              *parse_audit_hash_hex(last["hash"].get<std::string>())};
    CHECK(verify_audit_log(path, nullptr, sink_head).ok);
}

// --- cost ----------------------------------------------------------------------------------------

TEST_CASE("cost of writing and verifying a 100k-line log (printed, not asserted)") {
    TempDir dir;
    const std::string path = dir.file("audit.log");
    constexpr int kEvents = 100'000;
    const auto t0 = std::chrono::steady_clock::now();
    const AuditHead head = write_log(path, &audit_key(), kEvents);
    const auto t1 = std::chrono::steady_clock::now();
    const TrustedIssuers keys = trust(audit_key());
    const auto r = verify_audit_log(path, &keys, head);
    const auto t2 = std::chrono::steady_clock::now();
    {
        AuditLog reopened =
            AuditLog::open(path, &audit_key(), quick_options(), kT0 + kEvents * 100);
        CHECK(reopened.head() == head);
    }
    const auto t3 = std::chrono::steady_clock::now();
    CHECK(r.ok);
    CHECK(r.lines == head.seq);
    CHECK(r.signatures_verified == r.checkpoints);
    const auto ms = [](auto d) { return std::chrono::duration<double, std::milli>(d).count(); };
    const std::string summary = fmt::format(
        "audit log of {} lines ({} MB, {} checkpoints): write {:.0f} ms (no fsync), verify {:.0f} "
        "ms ({:.2f} us/line), open {:.0f} ms",
        r.lines, fs::file_size(path) / 1'000'000, r.checkpoints, ms(t1 - t0), ms(t2 - t1),
        ms(t2 - t1) * 1000.0 / static_cast<double>(r.lines), ms(t3 - t2));
    INFO(summary);
    std::printf("%s\n", summary.c_str());
    CHECK(r.head == head);
}
