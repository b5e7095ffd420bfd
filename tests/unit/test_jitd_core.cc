// jitd's core (control/jitd_core.h) driven through Jitd::handle and
// Jitd::tick without a data plane: requests approved by policy or by an
// approver, refusals and their codes, scheduled grants, expiry, withdrawal and
// revocation, service administration, rate limiting, durability in SQLite,
// the audit trail and its head, policy reload, malformed calls, and calls
// whose change cannot be stored.
#include <catch2/catch.hpp>

#include "temp_dir.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "audit_log.h"
#include "grant.h"
#include "issuer_keys.h"
#include "jitd_config.h"
#include "jitd_core.h"
#include "policy.h"
#include "store.h"

using namespace jitlb;
using namespace jitlb::control;
namespace fs = std::filesystem;
using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

namespace {

constexpr int64_t kT0 = 1'800'000'000'000;  // 2027-01-15, Unix ms
constexpr int64_t kSecond = 1'000;
constexpr int64_t kMinute = 60 * kSecond;
constexpr int64_t kHour = 60 * kMinute;
constexpr int64_t kSkew = 2 * kSecond;  // the config's default skew


// Two rules over the service web for the group dev (15m at once, up to 8h
// with an approval by ops, each starting at most 2h ahead), and one for alice
// alone over db from a /25.
constexpr std::string_view kPolicyTable = R"(
[policy]
pending_timeout = "30m"
horizon = "24h"

[[policy.rule]]
name = "dev-web"
services = ["web"]
groups = ["dev"]
sources = ["198.51.100.0/24"]
max_duration = "15m"
approval = "auto"
max_start_ahead = "2h"

[[policy.rule]]
name = "dev-web-long"
services = ["web"]
groups = ["dev"]
sources = ["198.51.100.0/24"]
max_duration = "8h"
approval = "approver"
approvers = ["ops"]
max_start_ahead = "2h"

[[policy.rule]]
name = "alice-db"
services = ["db"]
users = ["alice"]
sources = ["203.0.113.0/25"]
max_duration = "1h"
)";

constexpr std::string_view kServices = R"(
[[service]]
name = "web"
vips = [{ address = "203.0.113.10", port = 443, protocol = "tcp" }]
backends = [{ id = "w1", address = "10.1.0.1" }]

[[service]]
name = "db"
vips = [{ address = "203.0.113.11", port = 5432 }]
backends = [{ id = "d1", address = "10.1.0.2" }]
)";

const Caller kAlice{1001, 1001, "alice", {"alice", "dev"}};
const Caller kAliceInOps{1001, 1001, "alice", {"alice", "dev", "ops"}};
const Caller kBob{1002, 1002, "bob", {"bob", "ops"}};
const Caller kCarol{1003, 1003, "carol", {"carol", "dev"}};
const Caller kMallory{1004, 1004, "mallory", {"mallory"}};
const Caller kRoot{0, 0, "root", {"root"}};

void write_file(const std::string& path, std::string_view text);

// A jitd in a temporary state directory with a clock the test moves.
// `top` goes at the top of jitd.toml (before any table); `policy` is the
// [policy] table, or "" when `top` names a policy_file.
struct Harness {
    explicit Harness(std::string top_keys = "", std::string policy = std::string(kPolicyTable))
        : top(std::move(top_keys)), policy_text(std::move(policy)) {
        start();
    }
    Harness(const Harness&) = delete;
    Harness& operator=(const Harness&) = delete;

    std::string config_text() const {
        const std::string d = dir.path.string();
        return "instance = \"test1\"\n"
               "state_dir = \"" + d + "\"\n"
               "cmd_file = \"" + d + "/jitlb-test1.cmd\"\n"
               "state_file = \"" + d + "/jitlb-test1.state\"\n"
               "jitlb_user = \"jitlb-test\"\n" +
               top + "\n" + policy_text + "\n" + std::string(kServices);
    }

    // (Re)starts jitd on the state directory, as jitd.cc does after a restart.
    void start() {
        jitd.reset();
        // Also on disk, for a reload of the inline policy (reload_policy re-reads it).
        write_file(dir.file("jitd.toml"), config_text());
        JitdConfig config = parse_jitd_config(config_text(), dir.file("jitd.toml"));
        REQUIRE(config.audit_log == audit_path());
        // A new issuer key at each start (as after a key rotation): grants
        // issued before keep the old key's id.
        IssuerSecretKey key = IssuerSecretKey::generate();
        issuer_public = key.public_key();
        auto owned_store = std::make_unique<Store>(dir.file("jitd.db"));
        AuditOptions opts;
        opts.fsync = false;
        if (const auto h = owned_store->audit_head()) {
            const auto hash = parse_audit_hash_hex(h->hash_hex);
            REQUIRE(hash);
            opts.expected_head = AuditHead{h->seq, *hash};
        }
        auto owned_audit =
            std::make_unique<AuditLog>(AuditLog::open(audit_path(), nullptr, opts, now));
        store = owned_store.get();
        audit = owned_audit.get();
        jitd = std::make_unique<Jitd>(std::move(config), std::move(key),
                                      std::move(owned_store), std::move(owned_audit), nullptr,
                                      [this] { return now; });
    }

    void stop() {
        jitd.reset();
        store = nullptr;
        audit = nullptr;
    }

    // As jitd.cc hands it over: one line of text from the socket, parsed
    // (so that non-negative numbers arrive unsigned, as nlohmann parses them).
    ordered_json call(const json& request, const Caller& caller) {
        return jitd->handle(json::parse(request.dump()), caller);
    }

    // A call that must succeed.
    ordered_json ok(const json& request, const Caller& caller) {
        ordered_json reply = call(request, caller);
        INFO(request.dump() << " -> " << reply.dump());
        REQUIRE(reply.at("ok") == true);
        return reply;
    }

    // A call that must fail with `code`; returns its message.
    std::string fails(const json& request, const Caller& caller, const std::string& code) {
        ordered_json reply = call(request, caller);
        INFO(request.dump() << " -> " << reply.dump());
        REQUIRE(reply.at("ok") == false);
        REQUIRE(reply.at("error").at("code") == code);
        return reply.at("error").at("message").get<std::string>();
    }

    std::string audit_path() const { return dir.file("audit.log"); }

    TempDir dir;
    std::string top;
    std::string policy_text;
    int64_t now = kT0;
    std::optional<IssuerPublicKey> issuer_public;
    Store* store = nullptr;     // owned by jitd
    AuditLog* audit = nullptr;  // owned by jitd
    std::unique_ptr<Jitd> jitd;
};

json request_call(const std::string& service, const std::string& source, int64_t duration_ms,
                  const std::string& reason = "") {
    json j = {{"op", "request"}, {"service", service}, {"source", source},
              {"duration_ms", duration_ms}};
    if (!reason.empty()) j["reason"] = reason;
    return j;
}

std::string code_of(const ordered_json& reply) {
    if (reply.at("ok") == true) return "ok";
    return reply.at("error").at("code").get<std::string>();
}

std::vector<std::string> read_lines(const std::string& path) {
    std::ifstream in(path);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

// "action/result" of every line of the audit log, in order.
std::vector<std::string> audit_steps(const std::string& path) {
    std::vector<std::string> steps;
    for (const std::string& line : read_lines(path)) {
        const json j = json::parse(line);
        steps.push_back(j.at("action").get<std::string>() + "/" + j.at("result").get<std::string>());
    }
    return steps;
}

std::optional<AuditHead> stored_head(const Store& store) {
    const auto row = store.audit_head();
    if (!row) return std::nullopt;
    const auto hash = parse_audit_hash_hex(row->hash_hex);
    if (!hash) return std::nullopt;
    return AuditHead{row->seq, *hash};
}

void write_file(const std::string& path, std::string_view text) {
    {
        std::ofstream out(path, std::ios::trunc);
        out << text;
    }
    REQUIRE(chmod(path.c_str(), 0600) == 0);
}

IpPrefix prefix(std::string_view text) {
    std::string why;
    const auto p = parse_ip_prefix(text, &why);
    INFO(why);
    REQUIRE(p);
    return *p;
}

const ordered_json* find_by_id(const ordered_json& list, const std::string& id) {
    for (const auto& item : list) {
        if (item.at("id") == id) return &item;
    }
    return nullptr;
}

}  // namespace

// --- 1 ----------------------------------------------------------------------------------

TEST_CASE("an auto-approved request is answered with a grant signed by the issuer key",
          "[jitd_core]") {
    Harness h;
    const ordered_json reply = h.ok(request_call("web", "198.51.100.7", 10 * kMinute, "deploy"), kAlice);

    const auto& request = reply.at("request");
    const auto& grant = reply.at("grant");
    CHECK(request.at("state") == "approved");
    CHECK(request.at("rule") == "dev-web");
    CHECK(request.at("decided_by") == "policy");
    CHECK(request.at("grant_id") == grant.at("id"));
    // No data plane: the grant waits to be pushed.
    CHECK(grant.at("state") == "ready");

    SignedGrant bytes{};
    REQUIRE(grant_from_text(grant.at("text").get<std::string>(), bytes) == GrantFormatError::ok);
    ParsedSignedGrant parsed;
    REQUIRE(parse_signed_grant(bytes, parsed) == GrantFormatError::ok);
    TrustedIssuers trusted;
    REQUIRE(trusted.add(*h.issuer_public, "test issuer").ok());
    const VerifyResult verified = verify_grant(bytes, trusted, VerifyPolicy{}, h.now);
    INFO(describe_verify_result(verified, h.now));
    REQUIRE(verified.ok());

    const Grant& g = verified.grant;
    CHECK(g == parsed.grant);
    CHECK(grant_id_hex(g.grant_id) == grant.at("id"));
    CHECK(g.subject == "alice");
    CHECK(g.service == "web");
    CHECK(g.source == prefix("198.51.100.7/32"));
    CHECK(g.not_before_ms == kT0);
    CHECK(g.not_after_ms == kT0 + 10 * kMinute);
    CHECK(grant.at("not_before_ms") == kT0);
    CHECK(grant.at("not_after_ms") == kT0 + 10 * kMinute);

    // The store holds the same.
    const auto row = h.store->grant(grant.at("id").get<std::string>());
    REQUIRE(row);
    CHECK(row->state == "ready");
    CHECK(row->text == grant.at("text"));
    CHECK(row->request_id == request.at("id"));
    const auto req_row = h.store->request(request.at("id").get<std::string>());
    REQUIRE(req_row);
    CHECK(req_row->state == "approved");
    CHECK(req_row->grant_id == grant.at("id"));
}

// --- 2 ----------------------------------------------------------------------------------

TEST_CASE("a request needing approval waits until an approver approves it; self-approval, "
          "non-approvers, reasonless denials and second decisions are refused",
          "[jitd_core]") {
    Harness h;
    const ordered_json pending = h.ok(request_call("web", "198.51.100.7", kHour, "incident"), kAlice);
    CHECK(pending.at("request").at("state") == "pending");
    CHECK(pending.at("request").at("rule") == "dev-web-long");
    CHECK_FALSE(pending.contains("grant"));
    const std::string id = pending.at("request").at("id");
    CHECK(h.store->grants({}, 100).empty());

    // The requester may not approve, even when in the approvers group.
    h.fails({{"op", "approve"}, {"id", id}}, kAliceInOps, "self_approval");
    h.fails({{"op", "approve"}, {"id", id}}, kAlice, "self_approval");
    // Another dev is no approver.
    h.fails({{"op", "approve"}, {"id", id}}, kCarol, "not_an_approver");
    h.fails({{"op", "deny"}, {"id", id}, {"reason", "no"}}, kMallory, "not_an_approver");
    // A denial needs a reason.
    h.fails({{"op", "deny"}, {"id", id}}, kBob, "reason_required");
    CHECK(h.store->request(id)->state == "pending");
    CHECK(h.store->grants({}, 100).empty());

    // An approver may see it.
    const ordered_json visible = h.ok({{"op", "ls_requests"}}, kBob);
    CHECK(find_by_id(visible.at("requests"), id) != nullptr);

    h.now += 5 * kMinute;
    const ordered_json approved = h.ok({{"op", "approve"}, {"id", id}, {"reason", "ok"}}, kBob);
    CHECK(approved.at("request").at("state") == "approved");
    CHECK(approved.at("request").at("decided_by") == "bob");
    const auto& grant = approved.at("grant");
    CHECK(grant.at("subject") == "alice");
    CHECK(grant.at("service") == "web");
    CHECK(grant.at("source") == "198.51.100.7/32");
    CHECK(grant.at("state") == "ready");
    // Approved after its requested start: it runs its duration from the approval.
    CHECK(grant.at("not_before_ms") == h.now);
    CHECK(grant.at("not_after_ms") == h.now + kHour);
    CHECK(h.store->request(id)->grant_id == grant.at("id"));
    const auto row = h.store->grant(grant.at("id").get<std::string>());
    REQUIRE(row);
    CHECK(row->subject == "alice");

    // Deciding again.
    h.fails({{"op", "approve"}, {"id", id}}, kBob, "conflict");
    h.fails({{"op", "deny"}, {"id", id}, {"reason", "changed my mind"}}, kBob, "conflict");
    CHECK(h.store->grants({}, 100).size() == 1);

    // A denial with a reason ends a request without a grant.
    const ordered_json second = h.ok(request_call("web", "198.51.100.8", 2 * kHour), kCarol);
    const std::string id2 = second.at("request").at("id");
    const ordered_json denied = h.ok({{"op", "deny"}, {"id", id2}, {"reason", "not today"}}, kBob);
    CHECK(denied.at("request").at("state") == "denied");
    CHECK(denied.at("request").at("decision_reason") == "not today");
    CHECK_FALSE(denied.contains("grant"));
    CHECK(h.store->request(id2)->state == "denied");
    CHECK(h.store->request(id2)->grant_id.empty());
    h.fails({{"op", "approve"}, {"id", id2}}, kBob, "conflict");
    CHECK(h.store->grants({}, 100).size() == 1);

    h.fails({{"op", "approve"}, {"id", std::string(32, '0')}}, kBob, "not_found");
}

// --- 3 ----------------------------------------------------------------------------------

TEST_CASE("refused requests carry the policy's code and are stored as refused", "[jitd_core]") {
    Harness h;
    const std::string too_long =
        h.fails(request_call("web", "198.51.100.7", 9 * kHour, "why"), kAlice, "duration_too_long");
    CHECK(too_long.find("8h") != std::string::npos);
    h.fails(request_call("web", "192.0.2.1", 10 * kMinute), kAlice, "source_not_allowed");
    // The rule allows 203.0.113.0/25: the /25 itself is fine, the /24 around it is not.
    h.fails(request_call("db", "203.0.113.0/24", 10 * kMinute), kAlice, "source_not_allowed");
    h.ok(request_call("db", "203.0.113.0/25", 10 * kMinute), kAlice);
    // Nobody but alice may ask for db.
    h.fails(request_call("db", "203.0.113.1", 10 * kMinute), kCarol, "service_not_allowed");

    const std::string unknown = h.fails(request_call("nosuch", "198.51.100.7", kMinute), kAlice,
                                        "unknown_service");
    CHECK(unknown.find("nosuch") != std::string::npos);
    CHECK(unknown.find("web") != std::string::npos);
    CHECK(unknown.find("db") != std::string::npos);
    h.fails(request_call("web", "198.51.100.300", kMinute), kAlice, "bad_source");
    h.fails(request_call("web", "198.51.100.7/24", kMinute), kAlice, "bad_source");
    h.fails(request_call("web", "", kMinute), kAlice, "bad_source");

    // The policy's refusals are stored; calls that never reached the policy
    // (unknown service, malformed source) are not requests.
    const ordered_json all = h.ok({{"op", "ls_requests"}, {"all", true}}, kRoot);
    std::vector<std::string> refused_sources;
    size_t approved = 0;
    for (const auto& r : all.at("requests")) {
        if (r.at("state") == "refused") {
            refused_sources.push_back(r.at("service").get<std::string>() + " " +
                                      r.at("source").get<std::string>());
            CHECK(r.at("decided_by") == "policy");
            CHECK_FALSE(r.at("decision_reason").get<std::string>().empty());
            CHECK(r.at("grant_id") == "");
        } else {
            CHECK(r.at("state") == "approved");
            ++approved;
        }
    }
    std::sort(refused_sources.begin(), refused_sources.end());
    CHECK(refused_sources == std::vector<std::string>{"db 203.0.113.0/24", "db 203.0.113.1/32",
                                                      "web 192.0.2.1/32", "web 198.51.100.7/32"});
    CHECK(approved == 1);
    CHECK(h.store->requests({"refused"}, 100).size() == 4);
    CHECK(h.store->grants({}, 100).size() == 1);

    // Not pending, so not in the default listing; and not shown to others.
    CHECK(h.ok({{"op", "ls_requests"}}, kRoot).at("requests").empty());
    CHECK(h.ok({{"op", "ls_requests"}, {"all", true}}, kMallory).at("requests").empty());
    CHECK(h.ok({{"op", "ls_requests"}, {"all", true}}, kAlice).at("requests").size() == 4);
}

// --- 4 ----------------------------------------------------------------------------------

TEST_CASE("a request starting later gets a scheduled grant that becomes ready at not-before "
          "minus skew",
          "[jitd_core]") {
    Harness h;
    json call = request_call("web", "198.51.100.7", 10 * kMinute);
    call["start_ms"] = kT0 + kHour;
    const ordered_json reply = h.ok(call, kAlice);
    const auto& grant = reply.at("grant");
    CHECK(grant.at("state") == "scheduled");
    CHECK(grant.at("not_before_ms") == kT0 + kHour);
    CHECK(grant.at("not_after_ms") == kT0 + kHour + 10 * kMinute);
    const std::string id = grant.at("id");

    h.now = kT0 + kHour - kSkew - 1;
    h.jitd->tick();
    CHECK(h.store->grant(id)->state == "scheduled");

    h.now = kT0 + kHour - kSkew;
    h.jitd->tick();
    CHECK(h.store->grant(id)->state == "ready");
    const ordered_json live = h.ok({{"op", "ls_grants"}}, kAlice);
    REQUIRE(find_by_id(live.at("grants"), id) != nullptr);
    CHECK(find_by_id(live.at("grants"), id)->at("state") == "ready");

    // Beyond the rule's max_start_ahead (2h): refused.
    json far = request_call("web", "198.51.100.7", 10 * kMinute);
    far["start_ms"] = h.now + 2 * kHour + 1;
    h.fails(far, kAlice, "start_too_far_ahead");
    // In the past (beyond the skew): a bad request.
    json past = request_call("web", "198.51.100.7", 10 * kMinute);
    past["start_ms"] = h.now - kSkew - 1;
    h.fails(past, kAlice, "bad_request");
}

// --- 5 ----------------------------------------------------------------------------------

TEST_CASE("tick expires grants past not-after and pending requests past the pending timeout",
          "[jitd_core]") {
    Harness h;
    const ordered_json granted = h.ok(request_call("web", "198.51.100.7", 10 * kMinute), kAlice);
    const std::string grant_id = granted.at("grant").at("id");
    const ordered_json pending = h.ok(request_call("web", "198.51.100.7", kHour), kAlice);
    const std::string request_id = pending.at("request").at("id");

    h.now = kT0 + 10 * kMinute - 1;
    h.jitd->tick();
    CHECK(h.store->grant(grant_id)->state == "ready");
    h.now = kT0 + 10 * kMinute;
    h.jitd->tick();
    CHECK(h.store->grant(grant_id)->state == "expired");
    CHECK(h.ok({{"op", "ls_grants"}}, kAlice).at("grants").empty());
    h.fails({{"op", "revoke"}, {"grant_id", grant_id}}, kAlice, "conflict");

    h.now = kT0 + 30 * kMinute - 1;  // pending_timeout = 30m
    h.jitd->tick();
    CHECK(h.store->request(request_id)->state == "pending");
    h.now = kT0 + 30 * kMinute;
    h.jitd->tick();
    const auto expired = h.store->request(request_id);
    CHECK(expired->state == "expired");
    CHECK(expired->decided_by == "jitd");
    CHECK(expired->grant_id.empty());
    h.fails({{"op", "approve"}, {"id", request_id}}, kBob, "conflict");

    const auto steps = audit_steps(h.audit_path());
    CHECK(std::count(steps.begin(), steps.end(), "grant.expired/ok") == 1);
    CHECK(std::count(steps.begin(), steps.end(), "request.expire/ok") == 1);
    // A second tick changes nothing more.
    h.jitd->tick();
    CHECK(audit_steps(h.audit_path()) == steps);
}

// --- 6 ----------------------------------------------------------------------------------

TEST_CASE("withdrawing an approved request revokes its grant; only the requester or an admin "
          "may withdraw",
          "[jitd_core]") {
    Harness h;
    const ordered_json mine = h.ok(request_call("web", "198.51.100.7", 10 * kMinute), kAlice);
    const std::string id = mine.at("request").at("id");
    const std::string grant_id = mine.at("grant").at("id");

    h.fails({{"op", "withdraw"}, {"id", id}}, kCarol, "forbidden");
    h.fails({{"op", "withdraw"}, {"id", id}}, kMallory, "forbidden");
    CHECK(h.store->grant(grant_id)->state == "ready");

    const ordered_json withdrawn = h.ok({{"op", "withdraw"}, {"id", id}}, kAlice);
    CHECK(withdrawn.at("request").at("state") == "withdrawn");
    CHECK(h.store->request(id)->state == "withdrawn");
    const auto g = h.store->grant(grant_id);
    CHECK(g->state == "revoked");
    CHECK(g->state_reason == "request withdrawn");
    h.fails({{"op", "withdraw"}, {"id", id}}, kAlice, "conflict");

    // An administrator may withdraw anyone's.
    const ordered_json carols = h.ok(request_call("web", "198.51.100.9", 10 * kMinute), kCarol);
    const std::string carol_id = carols.at("request").at("id");
    h.ok({{"op", "withdraw"}, {"id", carol_id}, {"reason", "offboarding"}}, kRoot);
    CHECK(h.store->grant(carols.at("grant").at("id").get<std::string>())->state == "revoked");

    // A pending request: withdrawn without any grant.
    const ordered_json pending = h.ok(request_call("web", "198.51.100.7", kHour), kAlice);
    const std::string pending_id = pending.at("request").at("id");
    h.ok({{"op", "withdraw"}, {"id", pending_id}}, kAlice);
    CHECK(h.store->request(pending_id)->state == "withdrawn");
    h.fails({{"op", "approve"}, {"id", pending_id}}, kBob, "conflict");
    CHECK(h.store->grants({}, 100).size() == 2);

    h.fails({{"op", "withdraw"}, {"id", "nope"}}, kAlice, "not_found");
}

// --- 7 ----------------------------------------------------------------------------------

TEST_CASE("an admin revokes any grant, a subject their own, others are forbidden; a second "
          "revocation conflicts",
          "[jitd_core]") {
    Harness h;
    const std::string alices =
        h.ok(request_call("web", "198.51.100.7", 10 * kMinute), kAlice).at("grant").at("id");
    const std::string carols =
        h.ok(request_call("web", "198.51.100.8", 10 * kMinute), kCarol).at("grant").at("id");

    h.fails({{"op", "revoke"}, {"grant_id", alices}}, kCarol, "forbidden");
    h.fails({{"op", "revoke"}, {"grant_id", alices}}, kBob, "forbidden");
    CHECK(h.store->grant(alices)->state == "ready");

    const ordered_json own = h.ok({{"op", "revoke"}, {"grant_id", alices}}, kAlice);
    CHECK(own.at("grant").at("state") == "revoked");
    CHECK(h.store->grant(alices)->state == "revoked");
    h.fails({{"op", "revoke"}, {"grant_id", alices}}, kAlice, "conflict");
    h.fails({{"op", "revoke"}, {"grant_id", alices}}, kRoot, "conflict");

    const ordered_json by_admin =
        h.ok({{"op", "revoke"}, {"grant_id", carols}, {"reason", "incident 42"}}, kRoot);
    CHECK(by_admin.at("grant").at("state") == "revoked");
    CHECK(by_admin.at("grant").at("state_reason") == "incident 42");
    h.fails({{"op", "revoke"}, {"grant_id", carols}}, kCarol, "conflict");

    h.fails({{"op", "revoke"}, {"grant_id", std::string(32, 'a')}}, kRoot, "not_found");
    const auto steps = audit_steps(h.audit_path());
    CHECK(std::count(steps.begin(), steps.end(), "grant.revoke/ok") == 2);
}

// --- 8 ----------------------------------------------------------------------------------

TEST_CASE("administrators manage services and backends; others are forbidden; bad specs are "
          "refused naming the field",
          "[jitd_core]") {
    Harness h("request_burst = 1000\n");
    const auto services = [&](const Caller& c) { return h.ok({{"op", "service_ls"}}, c).at("services"); };
    const auto service = [&](const std::string& name) -> ordered_json {
        for (const auto& s : services(kRoot)) {
            if (s.at("name") == name) return s;
        }
        return nullptr;
    };
    REQUIRE(services(kAlice).size() == 2);  // from the config; anyone may list

    const json api = {{"name", "api"},
                      {"vips", {{{"address", "203.0.113.12"}, {"port", 8443}}}},
                      {"backends", {{{"id", "a1"}, {"address", "10.2.0.1"}}}}};
    h.fails({{"op", "service_add"}, {"service", api}}, kAlice, "forbidden");
    h.fails({{"op", "service_add"}, {"service", api}}, kBob, "forbidden");
    CHECK(service("api").is_null());
    h.ok({{"op", "service_add"}, {"service", api}}, kRoot);
    REQUIRE_FALSE(service("api").is_null());
    CHECK(services(kAlice).size() == 3);
    CHECK(service("api").at("vips").at(0).at("address") == "203.0.113.12");
    h.fails({{"op", "service_add"}, {"service", api}}, kRoot, "conflict");

    const json b2 = {{"id", "a2"}, {"address", "10.2.0.2"}, {"weight", 3}};
    h.fails({{"op", "backend_add"}, {"service", "api"}, {"backend", b2}}, kAlice, "forbidden");
    h.ok({{"op", "backend_add"}, {"service", "api"}, {"backend", b2}}, kRoot);
    REQUIRE(service("api").at("backends").size() == 2);
    CHECK(service("api").at("backends").at(1).at("id") == "a2");
    CHECK(service("api").at("backends").at(1).at("weight") == 3);

    h.fails({{"op", "backend_drain"}, {"service", "api"}, {"id", "a2"}}, kCarol, "forbidden");
    h.ok({{"op", "backend_drain"}, {"service", "api"}, {"id", "a2"}}, kRoot);
    CHECK(service("api").at("backends").at(1).at("draining") == true);
    h.ok({{"op", "backend_drain"}, {"service", "api"}, {"id", "a2"}, {"undrain", true}}, kRoot);
    CHECK(service("api").at("backends").at(1).at("draining") == false);

    h.fails({{"op", "backend_weight"}, {"service", "api"}, {"id", "a2"}, {"weight", 9}}, kAlice,
            "forbidden");
    h.ok({{"op", "backend_weight"}, {"service", "api"}, {"id", "a2"}, {"weight", 9}}, kRoot);
    CHECK(service("api").at("backends").at(1).at("weight") == 9);

    // Bad input, each refused with the field named.
    json unknown_key = api;
    unknown_key["name"] = "api2";
    unknown_key["colour"] = "red";
    CHECK_THAT(h.fails({{"op", "service_add"}, {"service", unknown_key}}, kRoot, "bad_service"),
               Catch::Contains("colour"));
    json bad_vip = api;
    bad_vip["name"] = "api3";
    bad_vip["vips"][0]["address"] = "203.0.113.300";
    CHECK_THAT(h.fails({{"op", "service_add"}, {"service", bad_vip}}, kRoot, "bad_service"),
               Catch::Contains("address"));
    CHECK_THAT(h.fails({{"op", "backend_add"}, {"service", "api"},
                        {"backend", {{"id", "a9"}, {"address", "10.2.0.999"}}}},
                       kRoot, "bad_backend"),
               Catch::Contains("address"));
    CHECK_THAT(h.fails({{"op", "backend_add"}, {"service", "api"},
                        {"backend", {{"id", "a9"}, {"address", "10.2.0.9"}, {"weight", 0}}}},
                       kRoot, "bad_backend"),
               Catch::Contains("weight"));
    CHECK_THAT(h.fails({{"op", "backend_add"}, {"service", "api"},
                        {"backend", {{"id", "a2"}, {"address", "10.2.0.3"}}}},
                       kRoot, "conflict"),
               Catch::Contains("a2"));
    // backend_weight checks the number itself (bad_request, not bad_backend).
    CHECK_THAT(h.fails({{"op", "backend_weight"}, {"service", "api"}, {"id", "a2"}, {"weight", 0}},
                       kRoot, "bad_request"),
               Catch::Contains("weight"));
    CHECK_THAT(h.fails({{"op", "backend_weight"}, {"service", "api"}, {"id", "a2"}, {"weight", 65536}},
                       kRoot, "bad_request"),
               Catch::Contains("weight"));
    json dsr = api;
    dsr["name"] = "dsr";
    dsr["mode"] = "l2dsr";
    CHECK_THAT(h.fails({{"op", "service_add"}, {"service", dsr}}, kRoot, "bad_service"),
               Catch::Contains("mac"));
    dsr["backends"][0]["mac"] = "02:00:00:00:00:01";
    h.ok({{"op", "service_add"}, {"service", dsr}}, kRoot);
    CHECK_THAT(h.fails({{"op", "backend_add"}, {"service", "dsr"},
                        {"backend", {{"id", "d2"}, {"address", "10.2.0.5"}}}},
                       kRoot, "bad_service"),
               Catch::Contains("mac"));
    h.fails({{"op", "backend_drain"}, {"service", "api"}, {"id", "zz"}}, kRoot, "not_found");
    h.fails({{"op", "backend_add"}, {"service", "nosuch"}, {"backend", b2}}, kRoot,
            "unknown_service");
    // None of the refused changes reached the store.
    CHECK(service("api").at("backends").size() == 2);
    CHECK(service("api").at("backends").at(1).at("weight") == 9);
    CHECK(service("api2").is_null());
    CHECK(service("api3").is_null());
    CHECK(service("dsr").at("backends").size() == 1);

    h.fails({{"op", "backend_rm"}, {"service", "api"}, {"id", "a2"}}, kAlice, "forbidden");
    h.ok({{"op", "backend_rm"}, {"service", "api"}, {"id", "a2"}}, kRoot);
    REQUIRE(service("api").at("backends").size() == 1);
    CHECK(service("api").at("backends").at(0).at("id") == "a1");

    h.fails({{"op", "service_rm"}, {"service", "api"}}, kAlice, "forbidden");
    h.ok({{"op", "service_rm"}, {"service", "api"}}, kRoot);
    CHECK(service("api").is_null());
    CHECK(!h.store->service("api"));
    h.fails({{"op", "service_rm"}, {"service", "api"}}, kRoot, "unknown_service");
    // A removed service can no longer be requested.
    h.fails(request_call("api", "198.51.100.7", kMinute), kAlice, "unknown_service");
}

// --- 9 ----------------------------------------------------------------------------------

TEST_CASE("mutating calls beyond request_burst at one instant are rate-limited per uid",
          "[jitd_core]") {
    Harness h("request_burst = 3\nrequest_rate = 1\n");
    for (int i = 0; i < 3; ++i) h.ok(request_call("web", "198.51.100.7", kMinute), kAlice);
    const std::string why = h.fails(request_call("web", "198.51.100.7", kMinute), kAlice, "rate_limited");
    CHECK_THAT(why, Catch::Contains("alice"));
    // A limited call changes nothing; reads are not limited.
    CHECK(h.store->requests({}, 100).size() == 3);
    for (int i = 0; i < 5; ++i) h.ok({{"op", "ls_grants"}}, kAlice);
    h.fails({{"op", "withdraw"}, {"id", "x"}}, kAlice, "rate_limited");

    // Another uid has its own bucket.
    for (int i = 0; i < 3; ++i) h.ok(request_call("web", "198.51.100.8", kMinute), kCarol);
    h.fails(request_call("web", "198.51.100.8", kMinute), kCarol, "rate_limited");

    // One second refills one token (rate 1/s) ...
    h.now += kSecond;
    h.ok(request_call("web", "198.51.100.7", kMinute), kAlice);
    h.fails(request_call("web", "198.51.100.7", kMinute), kAlice, "rate_limited");
    // ... and a long pause no more than the burst.
    h.now += kHour;
    for (int i = 0; i < 3; ++i) h.ok(request_call("web", "198.51.100.7", kMinute), kAlice);
    h.fails(request_call("web", "198.51.100.7", kMinute), kAlice, "rate_limited");
    CHECK(h.store->requests({}, 100).size() == 3 + 3 + 1 + 3);
}

// --- 10 ---------------------------------------------------------------------------------

TEST_CASE("every acknowledged request and grant survives a restart, and the audit log holds "
          "one verified line per step",
          "[jitd_core]") {
    Harness h;
    std::vector<std::string> expected = {"service.set/ok", "service.set/ok", "jitd.start/ok"};
    std::vector<std::pair<std::string, std::string>> requests;  // id, state
    std::vector<std::pair<std::string, std::string>> grants;    // id, state

    ordered_json r = h.ok(request_call("web", "198.51.100.7", 10 * kMinute, "deploy"), kAlice);
    requests.emplace_back(r.at("request").at("id"), "approved");
    grants.emplace_back(r.at("grant").at("id"), "ready");
    expected.insert(expected.end(), {"request.create/approved", "grant.issue/ok"});

    h.now += kSecond;
    r = h.ok(request_call("web", "198.51.100.8", 2 * kHour), kCarol);
    const std::string pending_id = r.at("request").at("id");
    expected.emplace_back("request.create/pending");
    h.fails({{"op", "approve"}, {"id", pending_id}}, kCarol, "self_approval");
    expected.emplace_back("request.approve/refused");
    r = h.ok({{"op", "approve"}, {"id", pending_id}}, kBob);
    requests.emplace_back(pending_id, "approved");
    grants.emplace_back(r.at("grant").at("id"), "revoked");
    expected.insert(expected.end(), {"request.approve/ok", "grant.issue/ok"});
    h.ok({{"op", "revoke"}, {"grant_id", grants.back().first}}, kRoot);
    expected.emplace_back("grant.revoke/ok");

    h.now += kSecond;
    r = h.ok(request_call("web", "198.51.100.9", 3 * kHour), kAlice);
    requests.emplace_back(r.at("request").at("id"), "denied");
    expected.emplace_back("request.create/pending");
    h.ok({{"op", "deny"}, {"id", requests.back().first}, {"reason", "no"}}, kBob);
    expected.emplace_back("request.deny/ok");

    h.fails(request_call("web", "192.0.2.1", kMinute), kAlice, "source_not_allowed");
    expected.emplace_back("request.create/refused");
    const auto refused = h.store->requests({"refused"}, 10);
    REQUIRE(refused.size() == 1);
    requests.emplace_back(refused[0].id, "refused");

    r = h.ok(request_call("web", "198.51.100.7", kHour), kAlice);
    requests.emplace_back(r.at("request").at("id"), "withdrawn");
    expected.emplace_back("request.create/pending");
    h.ok({{"op", "withdraw"}, {"id", requests.back().first}}, kAlice);
    expected.emplace_back("request.withdraw/ok");

    // Calls that change nothing leave no line.
    h.fails({{"op", "revoke"}, {"grant_id", grants.back().first}}, kRoot, "conflict");
    h.fails(request_call("nosuch", "198.51.100.7", kMinute), kAlice, "unknown_service");
    h.ok({{"op", "status"}}, kAlice);
    h.ok({{"op", "ls_requests"}, {"all", true}}, kRoot);
    h.jitd->tick();

    const auto head_before_stop = stored_head(*h.store);
    REQUIRE(head_before_stop);
    CHECK(head_before_stop->seq == expected.size());
    h.stop();

    {
        Store reopened(h.dir.file("jitd.db"));
        for (const auto& [id, state] : requests) {
            INFO("request " << id);
            const auto row = reopened.request(id);
            REQUIRE(row);
            CHECK(row->state == state);
        }
        for (const auto& [id, state] : grants) {
            INFO("grant " << id);
            const auto row = reopened.grant(id);
            REQUIRE(row);
            CHECK(row->state == state);
            CHECK_FALSE(row->text.empty());
        }
        CHECK(reopened.requests({}, 100).size() == requests.size());
        CHECK(reopened.grants({}, 100).size() == grants.size());
        CHECK(reopened.services().size() == 2);
        const auto head = stored_head(reopened);
        REQUIRE(head);
        CHECK(*head == *head_before_stop);

        const AuditVerifyReport rep = verify_audit_log(h.audit_path(), nullptr, head);
        INFO(rep.problem);
        CHECK(rep.ok);
        CHECK(rep.lines == expected.size());
        CHECK(rep.head == *head);
    }
    CHECK(audit_steps(h.audit_path()) == expected);

    // jitd starts again on the same state and sees the same.
    h.start();
    expected.emplace_back("jitd.start/ok");  // the services are unchanged: no service.set
    CHECK(audit_steps(h.audit_path()) == expected);
    const ordered_json listed = h.ok({{"op", "ls_grants"}, {"all", true}}, kRoot);
    CHECK(listed.at("grants").size() == grants.size());
    const ordered_json verify = h.ok({{"op", "audit_verify"}}, kRoot);
    CHECK(verify.at("verified") == true);
    CHECK(verify.at("lines") == expected.size());
}

// --- 11 ---------------------------------------------------------------------------------

TEST_CASE("the audit head stored in SQLite is the log's last line after every call",
          "[jitd_core]") {
    Harness h;
    const auto check_head = [&](const std::string& what) {
        INFO("after " << what);
        const auto stored = stored_head(*h.store);
        REQUIRE(stored);
        CHECK(*stored == h.audit->head());
        const auto lines = read_lines(h.audit_path());
        REQUIRE_FALSE(lines.empty());
        const json last = json::parse(lines.back());
        CHECK(last.at("seq") == stored->seq);
        CHECK(last.at("hash") == audit_hash_hex(stored->hash));
        CHECK(lines.size() == stored->seq);
    };
    check_head("start");
    const std::string grant_id =
        h.ok(request_call("web", "198.51.100.7", 10 * kMinute), kAlice).at("grant").at("id");
    check_head("auto-approved request");
    const std::string pending_id =
        h.ok(request_call("web", "198.51.100.7", kHour), kAlice).at("request").at("id");
    check_head("pending request");
    h.fails({{"op", "approve"}, {"id", pending_id}}, kCarol, "not_an_approver");
    check_head("refused approval");
    h.fails(request_call("web", "192.0.2.1", kMinute), kAlice, "source_not_allowed");
    check_head("refused request");
    h.ok({{"op", "approve"}, {"id", pending_id}}, kBob);
    check_head("approval");
    h.ok({{"op", "revoke"}, {"grant_id", grant_id}}, kAlice);
    check_head("revocation");
    h.fails({{"op", "revoke"}, {"grant_id", grant_id}}, kAlice, "conflict");
    check_head("failed revocation");
    h.fails({{"op", "frobnicate"}}, kAlice, "unknown_op");
    check_head("unknown op");
    // mallory matches no rule: each request is refused and recorded, until
    // the burst (20) is spent.
    for (int i = 0; i < 20; ++i) {
        h.fails(request_call("web", "198.51.100.7", kMinute), kMallory, "no_matching_rule");
    }
    check_head("refused requests");
    h.fails(request_call("web", "198.51.100.7", kMinute), kMallory, "rate_limited");
    check_head("rate-limited call");
    h.ok({{"op", "service_add"},
          {"service", {{"name", "api"}, {"vips", {{{"address", "203.0.113.12"}, {"port", 80}}}}}}},
         kRoot);
    check_head("service_add");
    h.ok({{"op", "backend_add"}, {"service", "api"}, {"backend", {{"id", "a1"}, {"address", "10.2.0.1"}}}},
         kRoot);
    check_head("backend_add");
    h.ok({{"op", "backend_weight"}, {"service", "api"}, {"id", "a1"}, {"weight", 2}}, kRoot);
    check_head("backend_weight");
    h.ok({{"op", "backend_drain"}, {"service", "api"}, {"id", "a1"}}, kRoot);
    check_head("backend_drain");
    h.ok({{"op", "backend_rm"}, {"service", "api"}, {"id", "a1"}}, kRoot);
    check_head("backend_rm");
    h.ok({{"op", "service_rm"}, {"service", "api"}}, kRoot);
    check_head("service_rm");
    const std::string denied_id =
        h.ok(request_call("web", "198.51.100.8", kHour), kCarol).at("request").at("id");
    h.ok({{"op", "deny"}, {"id", denied_id}, {"reason", "no"}}, kBob);
    check_head("deny");
    const std::string withdrawn_id =
        h.ok(request_call("web", "198.51.100.8", kHour), kCarol).at("request").at("id");
    h.ok({{"op", "withdraw"}, {"id", withdrawn_id}}, kCarol);
    check_head("withdraw of a pending request");
    const ordered_json auto_approved = h.ok(request_call("web", "198.51.100.8", kMinute), kCarol);
    h.ok({{"op", "withdraw"}, {"id", auto_approved.at("request").at("id")}}, kCarol);
    check_head("withdraw of an approved request");
    h.ok({{"op", "grant"}, {"service", "db"}, {"source", "192.0.2.7"}, {"duration_ms", kHour},
          {"subject", "dave"}},
         kRoot);
    check_head("direct grant");
    {
        // A grant signed elsewhere.
        const IssuerSecretKey other = IssuerSecretKey::generate();
        Grant g;
        g.grant_id = random_grant_id();
        g.subject = "erin";
        g.source = prefix("192.0.2.8");
        g.service = "db";
        g.not_before_ms = h.now;
        g.not_after_ms = h.now + kHour;
        SignedGrant signed_grant{};
        REQUIRE(sign_grant(g, other, signed_grant) == GrantFormatError::ok);
        h.ok({{"op", "push"}, {"text", grant_to_text(signed_grant)}}, kRoot);
        check_head("push");
    }
    h.ok({{"op", "policy_reload"}}, kRoot);
    check_head("policy_reload");
    h.now += kHour;
    h.jitd->tick();
    check_head("tick with expiries");
    h.ok({{"op", "status"}}, kRoot);
    h.ok({{"op", "audit_tail"}, {"lines", 3}}, kRoot);
    check_head("reads");
    h.jitd->shutdown();
    check_head("shutdown");
}

// --- 12 ---------------------------------------------------------------------------------

TEST_CASE("policy reload picks up a changed policy file and keeps the old policy when the new "
          "one is broken",
          "[jitd_core]") {
    constexpr std::string_view kRule = R"(
pending_timeout = "30m"
[[rule]]
name = "dev-web"
services = ["web"]
groups = ["dev"]
sources = ["198.51.100.0/24"]
approval = "auto"
max_duration = )";
    TempDir policy_dir;
    const std::string policy_path = policy_dir.file("policy.toml");
    write_file(policy_path, std::string(kRule) + "\"15m\"\n");
    Harness h("policy_file = \"" + policy_path + "\"\n", "");
    REQUIRE(h.jitd->config().policy_file == policy_path);

    h.fails(request_call("web", "198.51.100.7", 30 * kMinute), kAlice, "duration_too_long");

    write_file(policy_path, std::string(kRule) + "\"1h\"\n");
    CHECK(h.jitd->reload_policy("test") == "");
    h.ok(request_call("web", "198.51.100.7", 30 * kMinute), kAlice);

    // A bad value: the reason names the key; the 1h policy stays.
    write_file(policy_path, std::string(kRule) + "\"45x\"\n");
    const std::string why = h.jitd->reload_policy("test");
    CHECK_THAT(why, Catch::Contains("max_duration"));
    h.ok(request_call("web", "198.51.100.7", 30 * kMinute), kAlice);
    h.fails(request_call("web", "198.51.100.7", 2 * kHour), kAlice, "duration_too_long");

    // Through the API: for administrators; a broken file is a policy_error.
    write_file(policy_path, "[[rule]\nname = ");
    h.fails({{"op", "policy_reload"}}, kAlice, "forbidden");
    const std::string api_why = h.fails({{"op", "policy_reload"}}, kRoot, "policy_error");
    CHECK_THAT(api_why, Catch::Contains("old policy"));
    h.ok(request_call("web", "198.51.100.7", 30 * kMinute), kAlice);
    // A file others may write is refused too.
    write_file(policy_path, std::string(kRule) + "\"8h\"\n");
    REQUIRE(chmod(policy_path.c_str(), 0666) == 0);
    CHECK_FALSE(h.jitd->reload_policy("test").empty());
    h.fails(request_call("web", "198.51.100.7", 2 * kHour), kAlice, "duration_too_long");

    REQUIRE(chmod(policy_path.c_str(), 0600) == 0);
    const ordered_json reloaded = h.ok({{"op", "policy_reload"}}, kRoot);
    CHECK(reloaded.at("rules") == 1);
    h.ok(request_call("web", "198.51.100.7", 2 * kHour), kAlice);

    const auto steps = audit_steps(h.audit_path());
    CHECK(std::count(steps.begin(), steps.end(), "policy.reload/ok") == 2);
    CHECK(std::count(steps.begin(), steps.end(), "policy.reload/refused") == 3);
}

// --- 13 ---------------------------------------------------------------------------------

TEST_CASE("malformed calls are answered with bad_request or unknown_op and never throw",
          "[jitd_core]") {
    Harness h("request_burst = 1000\n");
    struct BadCall {
        json call;
        std::string code;
    };
    const std::vector<BadCall> cases = {
        {json::array({"request"}), "bad_request"},
        {json("request"), "bad_request"},
        {json(42), "bad_request"},
        {json(nullptr), "bad_request"},
        // What jitd.cc's parse (allow_exceptions = false) makes of a line that is not JSON.
        {json(json::value_t::discarded), "bad_request"},
        {json::object(), "bad_request"},
        {{{"service", "web"}}, "bad_request"},
        {{{"op", 5}}, "bad_request"},
        {{{"op", nullptr}}, "bad_request"},
        {{{"op", {{"x", 1}}}}, "bad_request"},
        {{{"op", "frobnicate"}}, "unknown_op"},
        {{{"op", ""}}, "unknown_op"},
        {{{"op", "backend_frobnicate"}, {"service", "web"}, {"id", "w1"}}, "unknown_op"},
        {{{"op", "request"}, {"service", 5}, {"source", "198.51.100.7"}, {"duration_ms", 60000}},
         "bad_request"},
        {{{"op", "request"}, {"service", "web"}, {"source", "198.51.100.7"}}, "bad_request"},
        {{{"op", "request"}, {"service", "web"}, {"source", "198.51.100.7"}, {"duration_ms", "10m"}},
         "bad_request"},
        {{{"op", "request"}, {"service", "web"}, {"source", "198.51.100.7"}, {"duration_ms", 1.5}},
         "bad_request"},
        {{{"op", "request"}, {"service", "web"}, {"source", "198.51.100.7"}, {"duration_ms", -1}},
         "bad_request"},
        {{{"op", "request"}, {"service", "web"}, {"source", json::array({"198.51.100.7"})}, {"duration_ms", 60000}},
         "bad_request"},
        {{{"op", "request"}, {"service", "web"}, {"source", "198.51.100.7"}, {"duration_ms", 60000},
          {"start_ms", "soon"}},
         "bad_request"},
        {{{"op", "request"}, {"service", "web"}, {"source", "198.51.100.7"}, {"duration_ms", 60000},
          {"reason", 7}},
         "bad_request"},
        {{{"op", "request"}, {"service", "web"}, {"source", "198.51.100.7"}, {"duration_ms", 60000},
          {"reason", "line\nbreak"}},
         "bad_request"},
        {{{"op", "request"}, {"service", "web"}, {"source", "198.51.100.7"}, {"duration_ms", 60000},
          {"reason", std::string(501, 'r')}},
         "bad_request"},
        {{{"op", "approve"}}, "bad_request"},
        {{{"op", "approve"}, {"id", 12}}, "bad_request"},
        {{{"op", "withdraw"}, {"id", true}}, "bad_request"},
        {{{"op", "revoke"}, {"grant_id", json::array()}}, "bad_request"},
        {{{"op", "ls_requests"}, {"all", "yes"}}, "bad_request"},
        {{{"op", "ls_grants"}, {"limit", "ten"}}, "bad_request"},
        {{{"op", "backend_drain"}, {"service", "web"}, {"id", "w1"}, {"undrain", 1}}, "bad_request"},
        {{{"op", "backend_weight"}, {"service", "web"}, {"id", "w1"}, {"weight", "2"}}, "bad_request"},
        {{{"op", "service_add"}}, "bad_request"},
        {{{"op", "audit_tail"}, {"lines", "all"}}, "bad_request"},
        {{{"op", "grant"}, {"service", "web"}, {"source", "198.51.100.7"}, {"duration_ms", 60000},
          {"subject", 3}},
         "bad_request"},
        {{{"op", "push"}, {"text", 3}}, "bad_request"},
    };
    for (const BadCall& c : cases) {
        INFO(c.call.dump());
        ordered_json reply;
        REQUIRE_NOTHROW(reply = h.jitd->handle(c.call, kRoot));
        REQUIRE(reply.at("ok") == false);
        CHECK(reply.at("error").at("code") == c.code);
        CHECK_FALSE(reply.at("error").at("message").get<std::string>().empty());
        // No failed call issued or stored anything.
        CHECK(h.store->requests({}, 100).empty());
        CHECK(h.store->grants({}, 100).empty());
    }
    // Still serving afterwards.
    h.ok(request_call("web", "198.51.100.7", kMinute), kAlice);
    CHECK(code_of(h.call({{"op", "status"}}, kMallory)) == "ok");
}

// A misspelt service op must not be taken for a service op (and then be
// answered "forbidden" or "'service' is required").
TEST_CASE("an unknown op that starts with service_ or backend_ is unknown_op for anyone",
          "[jitd_core]") {
    Harness h;
    CHECK(code_of(h.call({{"op", "service_frobnicate"}}, kRoot)) == "unknown_op");
    CHECK(code_of(h.call({{"op", "backend_frobnicate"}}, kRoot)) == "unknown_op");
    CHECK(code_of(h.call({{"op", "service_frobnicate"}, {"service", "web"}}, kRoot)) == "unknown_op");
    CHECK(code_of(h.call({{"op", "service_frobnicate"}}, kAlice)) == "unknown_op");
}

// A start near INT64_MAX must be refused before not_before + duration is
// computed (signed overflow, which the ASan/UBSan build reports).
TEST_CASE("a direct grant starting at the end of time is refused without overflow",
          "[jitd_core]") {
    Harness h;
    for (const int64_t start : {std::numeric_limits<int64_t>::max(),
                                std::numeric_limits<int64_t>::max() - 30'000}) {
        INFO("start_ms " << start);
        ordered_json reply;
        REQUIRE_NOTHROW(reply = h.call({{"op", "grant"}, {"service", "web"},
                                        {"source", "198.51.100.7"}, {"duration_ms", 60'000},
                                        {"start_ms", start}},
                                       kRoot));
        CHECK(reply.at("ok") == false);
        CHECK(code_of(reply) == "bad_request");
    }
    CHECK(h.store->grants({}, 100).empty());
}

// --- 14 ---------------------------------------------------------------------------------

namespace {

// A second connection to jitd's database that makes every write of a grant row
// fail, as a full disk fails the commit, until it is dropped.
class GrantWritesFail {
  public:
    explicit GrantWritesFail(const std::string& db_path) {
        REQUIRE(sqlite3_open(db_path.c_str(), &db_) == SQLITE_OK);
        exec("CREATE TRIGGER fail_grants BEFORE INSERT ON grants "
             "BEGIN SELECT RAISE(ABORT, 'injected: no room for grants'); END");
    }
    ~GrantWritesFail() {
        exec("DROP TRIGGER IF EXISTS fail_grants");
        sqlite3_close(db_);
    }
    GrantWritesFail(const GrantWritesFail&) = delete;
    GrantWritesFail& operator=(const GrantWritesFail&) = delete;

  private:
    void exec(const char* sql) {
        char* err = nullptr;
        const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err);
        INFO((err ? err : ""));
        sqlite3_free(err);
        CHECK(rc == SQLITE_OK);
    }
    sqlite3* db_ = nullptr;
};

}  // namespace

TEST_CASE("a call whose change cannot be stored is refused whole, the log says the commit "
          "failed, and the tick carries on",
          "[jitd_core]") {
    Harness h;
    std::vector<std::string> logged;
    h.jitd->log = [&](const std::string& line) { logged.push_back(line); };
    // One approved grant and one pending request, stored before the failures.
    const ordered_json before = h.ok(request_call("web", "198.51.100.7", 10 * kMinute), kAlice);
    const std::string live_request = before.at("request").at("id");
    const std::string live_grant = before.at("grant").at("id");
    const std::string pending =
        h.ok(request_call("web", "198.51.100.8", 2 * kHour), kCarol).at("request").at("id");
    const size_t requests_before = h.store->requests({}, 100).size();
    const uint64_t lines_before = read_lines(h.audit_path()).size();

    std::vector<uint64_t> failed_seqs;  // lines whose change was not stored
    std::vector<uint64_t> explained;    // seqs the store.failed lines name
    {
        const GrantWritesFail fail(h.dir.file("jitd.db"));
        // An auto-approved request: no request is left approved without its grant.
        const std::string msg =
            h.fails(request_call("web", "198.51.100.9", 10 * kMinute), kAlice, "storage");
        CHECK(msg.find("injected: no room for grants") != std::string::npos);
        CHECK(msg.find("not acknowledged") != std::string::npos);
        CHECK(h.store->requests({}, 100).size() == requests_before);
        // An approval: the request stays pending, with no grant.
        h.fails({{"op", "approve"}, {"id", pending}}, kBob, "storage");
        CHECK(h.store->request(pending)->state == "pending");
        CHECK(h.store->request(pending)->grant_id.empty());
        // A withdrawal: the request and its grant stay as they were, both.
        h.fails({{"op", "withdraw"}, {"id", live_request}}, kAlice, "storage");
        CHECK(h.store->request(live_request)->state == "approved");
        CHECK(h.store->grant(live_grant)->state == "ready");
        // A direct grant, and a revocation.
        h.fails({{"op", "grant"}, {"service", "web"}, {"source", "198.51.100.10"},
                 {"duration_ms", kMinute}},
                kRoot, "storage");
        h.fails({{"op", "revoke"}, {"grant_id", live_grant}}, kRoot, "storage");
        CHECK(h.store->grant(live_grant)->state == "ready");
        CHECK(h.store->grants({}, 100).size() == 1);

        // Expiry cannot be recorded either: the tick neither throws nor stops,
        // and says so once.
        h.now += 11 * kMinute;
        logged.clear();
        for (int i = 0; i < 5; ++i) {
            REQUIRE_NOTHROW(h.jitd->tick());
            h.now += 10;
        }
        CHECK(std::count_if(logged.begin(), logged.end(), [](const std::string& l) {
                  return l.find("cannot record what the tick found") != std::string::npos &&
                         l.find("injected") != std::string::npos;
              }) == 1);
        CHECK(h.store->grant(live_grant)->state == "ready");
    }
    // Each refused call left lines in the log and a store.failed line naming them.
    const auto lines = read_lines(h.audit_path());
    for (size_t i = lines_before; i < lines.size(); ++i) {
        const json j = json::parse(lines[i]);
        if (j.at("action") == "store.failed") {
            for (const auto& seq : j.at("detail").at("seqs")) {
                explained.push_back(seq.get<uint64_t>());
            }
        } else if (j.at("action") != "audit.checkpoint") {
            failed_seqs.push_back(j.at("seq").get<uint64_t>());
        }
    }
    CHECK_FALSE(failed_seqs.empty());
    CHECK(failed_seqs == explained);

    // Room again: the next tick expires the grant, and calls succeed.
    h.now += 2 * kSecond;
    h.jitd->tick();
    CHECK(h.store->grant(live_grant)->state == "expired");
    CHECK(std::find(logged.begin(), logged.end(), "the tick records again") != logged.end());
    h.ok({{"op", "approve"}, {"id", pending}}, kBob);
    CHECK(h.store->request(pending)->state == "approved");
    CHECK_FALSE(h.store->request(pending)->grant_id.empty());
    const auto head = stored_head(*h.store);
    REQUIRE(head);
    CHECK(*head == h.audit->head());
    const AuditVerifyReport rep = verify_audit_log(h.audit_path(), nullptr, head);
    INFO(rep.problem);
    CHECK(rep.ok);
}
