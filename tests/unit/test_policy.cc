// The policy engine (control/policy.h): decisions as a table of requests
// against one policy file, approval rights, and the strict reader.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "duration.h"
#include "policy.h"

using namespace jitlb;
using namespace jitlb::control;

namespace {

// Narrow to broad: an automatic rule for short grants, an approver rule for
// long ones over the same people and services, a per-user rule with a cap
// and a small IPv4 range, and a wildcard rule for operators.
constexpr std::string_view kPolicyText = R"(
pending_timeout = "30m"
horizon = "24h"

[[rule]]
name = "dev-web"
services = ["web", "api"]
groups = ["dev"]
sources = ["198.51.100.0/24", "2001:db8::/64"]
max_duration = "15m"
approval = "auto"

[[rule]]
name = "dev-web-long"
services = ["web", "api"]
groups = ["dev"]
sources = ["198.51.100.0/24", "2001:db8::/64"]
max_duration = "8h"
approval = "approver"
approvers = ["ops", "leads"]
require_reason = true
max_start_ahead = "2h"

[[rule]]
name = "alice-db"
services = ["db"]
users = ["alice"]
sources = ["203.0.113.0/25"]
max_duration = "1h"
max_concurrent = 2

[[rule]]
name = "ops-any"
services = ["*"]
groups = ["ops"]
sources = ["0.0.0.0/0", "::/0"]
max_duration = "4h"
)";

const Policy& test_policy() {
    static const Policy policy = parse_policy_text(kPolicyText, "policy.toml");
    return policy;
}

int64_t ms(std::string_view duration) {
    if (duration == "0") return 0;
    const auto value = parse_duration_ms(duration);
    REQUIRE(value);
    return *value;
}

IpPrefix prefix(std::string_view text) {
    std::string error;
    const auto value = parse_ip_prefix(text, &error);
    INFO(error);
    REQUIRE(value);
    return *value;
}

struct DecisionCase {
    std::string_view description;
    std::string_view user;
    std::vector<std::string> groups;
    std::string_view service;
    std::string_view source;
    std::string_view duration;
    std::string_view start = "0";  // offset from now
    bool reason = false;
    uint32_t active = 0;  // live + pending grants of the user under each rule
    Outcome outcome;
    std::string_view rule;  // "" = none
    std::string_view code;
    std::string_view says = "";  // a piece of the message
};

// clang-format off
const std::vector<DecisionCase> kDecisionCases = {
    // durations at the bounds, and overlapping rules
    {.description = "a duration equal to the automatic rule's maximum is approved at once",
     .user = "carol", .groups = {"dev"}, .service = "web", .source = "198.51.100.7",
     .duration = "15m",
     .outcome = Outcome::auto_approve, .rule = "dev-web", .code = "auto_approve"},
    {.description = "one ms above the automatic maximum falls through to the approver rule",
     .user = "carol", .groups = {"dev"}, .service = "web", .source = "198.51.100.7",
     .duration = "15m1ms", .reason = true,
     .outcome = Outcome::needs_approval, .rule = "dev-web-long", .code = "needs_approval",
     .says = "ops or leads"},
    {.description = "an hour needs approval when an auto rule allows 15m and another 8h",
     .user = "carol", .groups = {"staff", "dev"}, .service = "api", .source = "198.51.100.0/28",
     .duration = "1h", .reason = true,
     .outcome = Outcome::needs_approval, .rule = "dev-web-long", .code = "needs_approval"},
    {.description = "a duration equal to the approver rule's maximum waits for approval",
     .user = "carol", .groups = {"dev"}, .service = "web", .source = "198.51.100.7",
     .duration = "8h", .reason = true,
     .outcome = Outcome::needs_approval, .rule = "dev-web-long", .code = "needs_approval"},
    {.description = "above every maximum: refused quoting the broadest one",
     .user = "carol", .groups = {"dev"}, .service = "web", .source = "198.51.100.7",
     .duration = "8h1ms", .reason = true,
     .outcome = Outcome::refused, .rule = "dev-web-long", .code = "duration_too_long",
     .says = "duration 8h1ms is above its maximum 8h"},
    {.description = "a rule that only lacks a reason is reported over one that failed earlier",
     .user = "carol", .groups = {"dev"}, .service = "web", .source = "198.51.100.7",
     .duration = "1h",
     .outcome = Outcome::refused, .rule = "dev-web-long", .code = "reason_required"},
    {.description = "no reason needed where the rule does not require one",
     .user = "carol", .groups = {"dev"}, .service = "web", .source = "198.51.100.7",
     .duration = "10m",
     .outcome = Outcome::auto_approve, .rule = "dev-web", .code = "auto_approve"},
    // who: users and groups
    {.description = "a rule naming the user applies without any group",
     .user = "alice", .groups = {}, .service = "db", .source = "203.0.113.7",
     .duration = "1h",
     .outcome = Outcome::auto_approve, .rule = "alice-db", .code = "auto_approve"},
    {.description = "a user-name rule does not apply to a group of the same name",
     .user = "mallory", .groups = {"alice"}, .service = "db", .source = "203.0.113.7",
     .duration = "1h",
     .outcome = Outcome::refused, .rule = "", .code = "no_matching_rule",
     .says = "no rule lets user mallory ask for service db"},
    {.description = "the first rule that allows the whole request wins for a user in two groups",
     .user = "dave", .groups = {"dev", "ops"}, .service = "web", .source = "198.51.100.7",
     .duration = "2h",
     .outcome = Outcome::auto_approve, .rule = "ops-any", .code = "auto_approve"},
    {.description = "a user no rule names is refused with no_matching_rule",
     .user = "bob", .groups = {"staff"}, .service = "web", .source = "198.51.100.7",
     .duration = "5m",
     .outcome = Outcome::refused, .rule = "", .code = "no_matching_rule",
     .says = "no rule lets user bob ask for service web"},
    {.description = "a user some rule names, asking for a service none covers",
     .user = "carol", .groups = {"dev"}, .service = "db", .source = "198.51.100.7",
     .duration = "5m",
     .outcome = Outcome::refused, .rule = "", .code = "service_not_allowed",
     .says = "no rule lets user carol ask for service db"},
    // services
    {.description = "a wildcard rule covers any service",
     .user = "erin", .groups = {"ops"}, .service = "billing-admin", .source = "192.0.2.1",
     .duration = "4h",
     .outcome = Outcome::auto_approve, .rule = "ops-any", .code = "auto_approve"},
    {.description = "a wildcard rule still caps the duration",
     .user = "erin", .groups = {"ops"}, .service = "billing-admin", .source = "192.0.2.1",
     .duration = "4h1ms",
     .outcome = Outcome::refused, .rule = "ops-any", .code = "duration_too_long"},
    // sources
    {.description = "a /128 inside an IPv6 /64 range",
     .user = "carol", .groups = {"dev"}, .service = "web", .source = "2001:db8::1",
     .duration = "5m",
     .outcome = Outcome::auto_approve, .rule = "dev-web", .code = "auto_approve"},
    {.description = "the IPv6 /64 range itself",
     .user = "carol", .groups = {"dev"}, .service = "web", .source = "2001:db8::/64",
     .duration = "5m",
     .outcome = Outcome::auto_approve, .rule = "dev-web", .code = "auto_approve"},
    {.description = "a /128 in the next /64 is outside",
     .user = "carol", .groups = {"dev"}, .service = "web", .source = "2001:db8:0:1::1",
     .duration = "5m",
     .outcome = Outcome::refused, .rule = "dev-web", .code = "source_not_allowed"},
    {.description = "a /24 request against a /25 range is refused as wider",
     .user = "alice", .groups = {}, .service = "db", .source = "203.0.113.0/24",
     .duration = "5m",
     .outcome = Outcome::refused, .rule = "alice-db", .code = "source_not_allowed",
     .says = "wider than 203.0.113.0/25"},
    {.description = "an address in the other half of the /24 is outside the /25",
     .user = "alice", .groups = {}, .service = "db", .source = "203.0.113.128",
     .duration = "5m",
     .outcome = Outcome::refused, .rule = "alice-db", .code = "source_not_allowed"},
    {.description = "an IPv4-mapped IPv6 address does not match an IPv4 range",
     .user = "carol", .groups = {"dev"}, .service = "web", .source = "::ffff:198.51.100.7",
     .duration = "5m",
     .outcome = Outcome::refused, .rule = "dev-web", .code = "source_not_allowed",
     .says = "ask for 198.51.100.7/32 instead"},
    {.description = "an IPv4-mapped IPv6 address is inside ::/0",
     .user = "erin", .groups = {"ops"}, .service = "web", .source = "::ffff:198.51.100.7",
     .duration = "5m",
     .outcome = Outcome::auto_approve, .rule = "ops-any", .code = "auto_approve"},
    {.description = "an IPv6 source never matches an IPv4-only rule",
     .user = "alice", .groups = {}, .service = "db", .source = "2001:db8::7",
     .duration = "5m",
     .outcome = Outcome::refused, .rule = "alice-db", .code = "source_not_allowed"},
    {.description = "0.0.0.0/0 allows the whole IPv4 space as a request",
     .user = "erin", .groups = {"ops"}, .service = "web", .source = "0.0.0.0/0",
     .duration = "5m",
     .outcome = Outcome::auto_approve, .rule = "ops-any", .code = "auto_approve"},
    // concurrent cap
    {.description = "below the concurrent cap",
     .user = "alice", .groups = {}, .service = "db", .source = "203.0.113.7",
     .duration = "30m", .active = 1,
     .outcome = Outcome::auto_approve, .rule = "alice-db", .code = "auto_approve"},
    {.description = "concurrent cap reached",
     .user = "alice", .groups = {}, .service = "db", .source = "203.0.113.7",
     .duration = "30m", .active = 2,
     .outcome = Outcome::refused, .rule = "alice-db", .code = "concurrent_cap",
     .says = "already has 2"},
    {.description = "counts do not matter under rules without a cap",
     .user = "carol", .groups = {"dev"}, .service = "web", .source = "198.51.100.7",
     .duration = "5m", .active = 1000,
     .outcome = Outcome::auto_approve, .rule = "dev-web", .code = "auto_approve"},
    // start times
    {.description = "a start exactly at the rule's max_start_ahead",
     .user = "carol", .groups = {"dev"}, .service = "web", .source = "198.51.100.7",
     .duration = "1h", .start = "2h", .reason = true,
     .outcome = Outcome::needs_approval, .rule = "dev-web-long", .code = "needs_approval"},
    {.description = "a start one ms beyond the rule's max_start_ahead",
     .user = "carol", .groups = {"dev"}, .service = "web", .source = "198.51.100.7",
     .duration = "1h", .start = "2h1ms", .reason = true,
     .outcome = Outcome::refused, .rule = "dev-web-long", .code = "start_too_far_ahead",
     .says = "further than its limit 2h"},
    {.description = "a rule without max_start_ahead allows starts up to the horizon",
     .user = "carol", .groups = {"dev"}, .service = "web", .source = "198.51.100.7",
     .duration = "5m", .start = "24h",
     .outcome = Outcome::auto_approve, .rule = "dev-web", .code = "auto_approve"},
    {.description = "beyond the horizon every rule refuses, quoting the furthest limit",
     .user = "carol", .groups = {"dev"}, .service = "web", .source = "198.51.100.7",
     .duration = "5m", .start = "24h1ms", .reason = true,
     .outcome = Outcome::refused, .rule = "dev-web", .code = "start_too_far_ahead",
     .says = "limit 1d"},
    // the request itself
    {.description = "a zero duration is invalid before any rule is looked at",
     .user = "carol", .groups = {"dev"}, .service = "web", .source = "198.51.100.7",
     .duration = "0",
     .outcome = Outcome::refused, .rule = "", .code = "invalid_duration"},
};
// clang-format on

RequestFacts facts_of(const DecisionCase& c) {
    RequestFacts facts;
    facts.user = std::string(c.user);
    facts.groups = c.groups;
    facts.service = std::string(c.service);
    facts.source = prefix(c.source);
    facts.duration_ms = ms(c.duration);
    facts.start_offset_ms = ms(c.start);
    facts.has_reason = c.reason;
    const uint32_t active = c.active;
    facts.active_count = [active](std::string_view) { return active; };
    return facts;
}

}  // namespace

TEST_CASE("requests are decided by the first rule that allows them, else refused with a reason",
          "[policy]") {
    for (const DecisionCase& c : kDecisionCases) {
        DYNAMIC_SECTION(c.description) {
            const Decision decision = test_policy().evaluate(facts_of(c));
            INFO(decision.message);
            CHECK(outcome_name(decision.outcome) == outcome_name(c.outcome));
            CHECK(decision.rule == c.rule);
            CHECK(decision.code == c.code);
            CHECK(!decision.message.empty());
            CHECK_THAT(decision.message, Catch::Contains(std::string(c.says)));
        }
    }
}

TEST_CASE("the concurrent count is asked per rule and only for rules with a cap", "[policy]") {
    RequestFacts facts;
    facts.user = "alice";
    facts.service = "db";
    facts.source = prefix("203.0.113.7");
    facts.duration_ms = ms("5m");
    std::vector<std::string> asked;
    facts.active_count = [&](std::string_view rule) {
        asked.emplace_back(rule);
        return rule == "alice-db" ? 5u : 0u;
    };
    const Decision decision = test_policy().evaluate(facts);
    CHECK(decision.code == "concurrent_cap");
    CHECK(asked == std::vector<std::string>{"alice-db"});

    facts.active_count = nullptr;  // no counter: nothing is active
    CHECK(test_policy().evaluate(facts).outcome == Outcome::auto_approve);
}

TEST_CASE("a start in the past is refused", "[policy]") {
    RequestFacts facts;
    facts.user = "carol";
    facts.groups = {"dev"};
    facts.service = "web";
    facts.source = prefix("198.51.100.7");
    facts.duration_ms = ms("5m");
    facts.start_offset_ms = -1;
    const Decision decision = test_policy().evaluate(facts);
    CHECK(decision.outcome == Outcome::refused);
    CHECK(decision.code == "start_in_past");
    CHECK(decision.rule.empty());
}

TEST_CASE("max_start_ahead = 0s allows starting now only", "[policy]") {
    const Policy policy = parse_policy_text(R"(
[[rule]]
name = "now-only"
services = ["web"]
users = ["alice"]
sources = ["::/0"]
max_duration = "1h"
max_start_ahead = "0s"
)",
                                            "now.toml");
    RequestFacts facts;
    facts.user = "alice";
    facts.service = "web";
    facts.source = prefix("2001:db8::1");
    facts.duration_ms = ms("1h");
    CHECK(policy.evaluate(facts).code == "auto_approve");
    facts.start_offset_ms = 1;
    const Decision later = policy.evaluate(facts);
    CHECK(later.code == "start_too_far_ahead");
    CHECK_THAT(later.message, Catch::Contains("from now only"));
}

TEST_CASE("an empty policy refuses every request", "[policy]") {
    const Policy policy;
    RequestFacts facts;
    facts.user = "root";
    facts.service = "web";
    facts.duration_ms = 1;
    CHECK(policy.evaluate(facts).code == "no_matching_rule");
    CHECK(policy.pending_timeout_ms() == kDefaultPendingTimeoutMs);
    CHECK(policy.horizon_ms() == kDefaultHorizonMs);
}

// --- approval -----------------------------------------------------------------------

namespace {

struct ApprovalCase {
    std::string_view description;
    std::string_view rule;
    std::string_view approver;
    std::vector<std::string> approver_groups;
    std::string_view requester;
    bool allowed;
    std::string_view code;
};

// clang-format off
const std::vector<ApprovalCase> kApprovalCases = {
    {"a member of an approvers group approves someone else's request",
     "dev-web-long", "erin", {"ops"}, "carol", true, "ok"},
    {"membership of any one of the approvers groups is enough",
     "dev-web-long", "frank", {"staff", "leads"}, "carol", true, "ok"},
    {"nobody approves their own request, even as an approver",
     "dev-web-long", "dave", {"dev", "ops"}, "dave", false, "self_approval"},
    {"a member of the requesting group is not an approver",
     "dev-web-long", "gina", {"dev"}, "carol", false, "not_an_approver"},
    {"a user with no groups is not an approver",
     "dev-web-long", "ops", {}, "carol", false, "not_an_approver"},
    {"a rule that is gone after a reload",
     "dev-web-old", "erin", {"ops"}, "carol", false, "unknown_rule"},
    {"an automatic rule has no approvers",
     "dev-web", "erin", {"ops"}, "carol", false, "no_approvers"},
};
// clang-format on

}  // namespace

TEST_CASE("who may approve: an approver group member other than the requester", "[policy]") {
    for (const ApprovalCase& c : kApprovalCases) {
        DYNAMIC_SECTION(c.description) {
            const ApprovalCheck check =
                test_policy().may_approve(c.rule, c.approver, c.approver_groups, c.requester);
            INFO(check.message);
            CHECK(check.allowed == c.allowed);
            CHECK(check.code == c.code);
            CHECK(!check.message.empty());
        }
    }
}

TEST_CASE("a pending request's rule removed by a reload can no longer be approved", "[policy]") {
    const Policy reloaded = parse_policy_text(R"(
[[rule]]
name = "dev-web"
services = ["web"]
groups = ["dev"]
sources = ["198.51.100.0/24"]
max_duration = "15m"
)",
                                              "policy.toml");
    CHECK(test_policy().may_approve("dev-web-long", "erin", {"ops"}, "carol").allowed);
    const ApprovalCheck check = reloaded.may_approve("dev-web-long", "erin", {"ops"}, "carol");
    CHECK_FALSE(check.allowed);
    CHECK(check.code == "unknown_rule");
    CHECK_THAT(check.message, Catch::Contains("dev-web-long"));
}

// --- reading the policy -------------------------------------------------------------------

TEST_CASE("a good policy file reads back every value", "[policy][parse]") {
    const Policy& policy = test_policy();
    CHECK(policy.pending_timeout_ms() == ms("30m"));
    CHECK(policy.horizon_ms() == ms("24h"));
    REQUIRE(policy.rules().size() == 4);

    const Rule& auto_rule = policy.rules()[0];
    CHECK(auto_rule.name == "dev-web");
    CHECK(auto_rule.services == std::vector<std::string>{"web", "api"});
    CHECK(auto_rule.users.empty());
    CHECK(auto_rule.groups == std::vector<std::string>{"dev"});
    CHECK(auto_rule.sources ==
          std::vector<IpPrefix>{prefix("198.51.100.0/24"), prefix("2001:db8::/64")});
    CHECK(auto_rule.max_duration_ms == ms("15m"));
    CHECK(auto_rule.approval == Approval::automatic);
    CHECK(auto_rule.approvers.empty());
    CHECK_FALSE(auto_rule.require_reason);
    CHECK(auto_rule.max_concurrent == 0);
    CHECK(auto_rule.max_start_ahead_ms == ms("24h"));  // the horizon
    CHECK_FALSE(auto_rule.any_service());

    const Rule& approver_rule = policy.rules()[1];
    CHECK(approver_rule.name == "dev-web-long");
    CHECK(approver_rule.max_duration_ms == ms("8h"));
    CHECK(approver_rule.approval == Approval::approver);
    CHECK(approver_rule.approvers == std::vector<std::string>{"ops", "leads"});
    CHECK(approver_rule.require_reason);
    CHECK(approver_rule.max_start_ahead_ms == ms("2h"));

    const Rule& capped = policy.rules()[2];
    CHECK(capped.users == std::vector<std::string>{"alice"});
    CHECK(capped.groups.empty());
    CHECK(capped.max_concurrent == 2);

    const Rule& wildcard = policy.rules()[3];
    CHECK(wildcard.any_service());
    CHECK(wildcard.sources == std::vector<IpPrefix>{prefix("0.0.0.0/0"), prefix("::/0")});

    CHECK(policy.find_rule("alice-db") == &capped);
    CHECK(policy.find_rule("nope") == nullptr);
}

TEST_CASE("defaults: pending_timeout 1h, horizon 24h, auto, no cap, no reason", "[policy][parse]") {
    const Policy policy = parse_policy_text(R"(
[[rule]]
name = "r"
services = ["web"]
users = ["alice"]
sources = ["198.51.100.0/24"]
max_duration = "30m"
)",
                                            "minimal.toml");
    CHECK(policy.pending_timeout_ms() == kDefaultPendingTimeoutMs);
    CHECK(policy.horizon_ms() == kDefaultHorizonMs);
    REQUIRE(policy.rules().size() == 1);
    const Rule& rule = policy.rules()[0];
    CHECK(rule.approval == Approval::automatic);
    CHECK(rule.max_concurrent == 0);
    CHECK_FALSE(rule.require_reason);
    CHECK(rule.max_start_ahead_ms == kDefaultHorizonMs);
}

TEST_CASE("the [policy] table of jitd.toml is the policy and the rest of the file is not read",
          "[policy][parse]") {
    const Policy policy = parse_policy_text(R"(
[socket]
path = "/run/jitd.sock"

[policy]
pending_timeout = "10m"

[[policy.rule]]
name = "r"
services = ["*"]
groups = ["ops"]
sources = ["::/0"]
max_duration = "1h"
)",
                                            "jitd.toml");
    CHECK(policy.pending_timeout_ms() == ms("10m"));
    REQUIRE(policy.rules().size() == 1);
    CHECK(policy.rules()[0].any_service());
}

namespace {

// A valid one-rule file with some keys replaced (value "" removes the key)
// and others added, in the order given.
std::string rule_file(std::vector<std::pair<std::string, std::string>> changes,
                      std::string_view before = "") {
    // clang-format off
    std::vector<std::pair<std::string, std::string>> keys = {
        {"name", R"("r")"},
        {"services", R"(["web"])"},
        {"users", R"(["alice"])"},
        {"sources", R"(["198.51.100.0/24"])"},
        {"max_duration", R"("30m")"},
    };
    // clang-format on
    for (auto& [key, value] : changes) {
        bool replaced = false;
        for (auto& entry : keys) {
            if (entry.first == key) {
                entry.second = value;
                replaced = true;
            }
        }
        if (!replaced) keys.emplace_back(key, value);
    }
    std::string text(before);
    text += "[[rule]]\n";
    for (const auto& [key, value] : keys) {
        if (!value.empty()) text += key + " = " + value + "\n";
    }
    return text;
}

struct BadFile {
    std::string_view description;
    std::string text;
    std::string_view key;   // PolicyError::key()
    std::string_view says;  // a piece of the message: the value or what to write
};

const std::vector<BadFile> kBadFiles = {
    {"a misspelt top-level key", rule_file({}, "pending_timout = \"1h\"\n"), "pending_timout",
     "did you mean 'pending_timeout'"},
    {"a misspelt rule key", rule_file({{"max_durration", R"("1h")"}}), "rule[0].max_durration",
     "did you mean 'max_duration'"},
    {"a duration with an unknown unit", rule_file({{"max_duration", R"("45x")"}}),
     "rule[0].max_duration", "'45x'"},
    {"a duration given as a number", rule_file({{"max_duration", "30"}}), "rule[0].max_duration",
     "expected a string such as \"30m\""},
    {"a zero max_duration", rule_file({{"max_duration", R"("0s")"}}), "rule[0].max_duration",
     "longer than zero"},
    {"no max_duration", rule_file({{"max_duration", ""}}), "rule[0].max_duration", "missing"},
    {"a bad pending_timeout", rule_file({}, "pending_timeout = \"soon\"\n"), "pending_timeout",
     "'soon'"},
    {"a horizon too large", rule_file({}, "horizon = \"4000d\"\n"), "horizon", "too large"},
    {"a source with host bits set", rule_file({{"sources", R"(["198.51.100.1/24"])"}}),
     "rule[0].sources[0]", "198.51.100.0/24"},
    {"a source that is no address", rule_file({{"sources", R"(["10.0.0.0/8", "intranet"])"}}),
     "rule[0].sources[1]", "'intranet'"},
    {"an empty source list", rule_file({{"sources", "[]"}}), "rule[0].sources", "empty"},
    {"no sources", rule_file({{"sources", ""}}), "rule[0].sources", "0.0.0.0/0"},
    {"sources as a string", rule_file({{"sources", R"("10.0.0.0/8")"}}), "rule[0].sources",
     "expected a list"},
    {"neither users nor groups", rule_file({{"users", ""}}), "rule[0].users", "groups"},
    {"an empty user list", rule_file({{"users", "[]"}, {"groups", R"(["dev"])"}}), "rule[0].users",
     "empty"},
    {"a wildcard user", rule_file({{"users", R"(["*"])"}}), "rule[0].users[0]", "no wildcard"},
    {"a user listed twice", rule_file({{"users", R"(["alice", "alice"])"}}), "rule[0].users[1]",
     "twice"},
    {"a group that is no string", rule_file({{"groups", "[7]"}}), "rule[0].groups[0]",
     "found an integer"},
    {"an empty service list", rule_file({{"services", "[]"}}), "rule[0].services", "empty"},
    {"a wildcard among names", rule_file({{"services", R"(["*", "web"])"}}), "rule[0].services[0]",
     "stands alone"},
    {"a bad service name", rule_file({{"services", R"(["web server"])"}}), "rule[0].services[0]",
     "'web server'"},
    {"no name", rule_file({{"name", ""}}), "rule[0].name", "missing"},
    {"a bad rule name", rule_file({{"name", R"("dev web")"}}), "rule[0].name", "'dev web'"},
    {"a duplicate rule name", rule_file({}, rule_file({})), "rule[1].name", "unique"},
    {"an unknown approval mode", rule_file({{"approval", R"("manual")"}}), "rule[0].approval",
     "\"approver\""},
    {"approval by approver without approvers", rule_file({{"approval", R"("approver")"}}),
     "rule[0].approvers", "approvers = [\"ops\"]"},
    {"approvers on an automatic rule", rule_file({{"approvers", R"(["ops"])"}}),
     "rule[0].approvers", "approval = \"approver\""},
    {"require_reason as a string", rule_file({{"require_reason", R"("yes")"}}),
     "rule[0].require_reason", "true or false"},
    {"a negative max_concurrent", rule_file({{"max_concurrent", "-1"}}), "rule[0].max_concurrent",
     "-1 is out of range"},
    {"max_start_ahead beyond the horizon",
     rule_file({{"max_start_ahead", R"("48h")"}}, "horizon = \"1d\"\n"), "rule[0].max_start_ahead",
     "horizon 1d"},
    {"a rule written as a single table", "[rule]\nname = \"r\"\n", "rule", "[[rule]]"},
    {"a bad key inside the [policy] table of jitd.toml",
     "[policy]\n[[policy.rule]]\nname = \"r\"\nservices = [\"web\"]\nusers = [\"alice\"]\n"
     "sources = [\"::/0\"]\nmax_duration = \"1hour\"\n",
     "policy.rule[0].max_duration", "'1hour'"},
    {"policy that is not a table", "policy = \"strict\"\n", "policy", "[policy]"},
    {"a TOML syntax error", "[[rule]\nname = \"r\"\n", "", "TOML syntax"},
};

}  // namespace

TEST_CASE("a bad policy file is a PolicyError naming the file, the key and the fix",
          "[policy][parse]") {
    for (const BadFile& bad : kBadFiles) {
        DYNAMIC_SECTION(bad.description) {
            INFO(bad.text);
            try {
                (void)parse_policy_text(bad.text, "bad.toml");
                FAIL("parsed without error");
            } catch (const PolicyError& error) {
                const std::string what = error.what();
                INFO(what);
                CHECK(error.key() == bad.key);
                CHECK(error.source() == "bad.toml");
                CHECK_THAT(what, Catch::StartsWith("bad.toml:"));
                CHECK_THAT(what, Catch::Contains(std::string(bad.key)));
                CHECK_THAT(error.detail(), Catch::Contains(std::string(bad.says)));
                CHECK(error.line() > 0);  // every one of these has a place in the file
            }
        }
    }
}

namespace {

// A file in a fresh temporary directory, removed at the end of the test.
class TempFile {
  public:
    TempFile(std::string_view text, mode_t mode) {
        char dir[] = "/tmp/jitlb-policy-XXXXXX";
        REQUIRE(::mkdtemp(dir) != nullptr);
        dir_ = dir;
        path_ = dir_ + "/policy.toml";
        std::ofstream(path_) << text;
        REQUIRE(::chmod(path_.c_str(), mode) == 0);
    }
    ~TempFile() {
        ::unlink(path_.c_str());
        ::rmdir(dir_.c_str());
    }
    const std::string& path() const { return path_; }

  private:
    std::string dir_;
    std::string path_;
};

}  // namespace

TEST_CASE("load_policy_file reads the same policy as the text", "[policy][parse]") {
    const TempFile file(kPolicyText, 0644);
    const Policy loaded = load_policy_file(file.path());
    CHECK(loaded.rules() == test_policy().rules());
    CHECK(loaded.pending_timeout_ms() == test_policy().pending_timeout_ms());
    CHECK(loaded.horizon_ms() == test_policy().horizon_ms());
}

TEST_CASE("load_policy_file refuses a file others may write, and names the path in errors",
          "[policy][parse]") {
    const TempFile writable(kPolicyText, 0664);
    CHECK_THROWS_WITH(load_policy_file(writable.path()), Catch::Contains("chmod go-w"));
    CHECK_THROWS_WITH(load_policy_file(writable.path() + ".missing"),
                      Catch::Contains(".missing") && Catch::Contains("cannot open"));

    const TempFile bad(rule_file({{"max_duration", R"("45x")"}}), 0600);
    CHECK_THROWS_WITH(load_policy_file(bad.path()),
                      Catch::StartsWith(bad.path()) && Catch::Contains("rule[0].max_duration"));
}
