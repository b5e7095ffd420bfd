// jitd's access policy: which requests for a grant it approves at once, which
// wait for an approver, which it refuses (and why, for people and as a stable
// code), and who may approve a waiting request. The policy comes from TOML
// (a standalone file, or a [policy] table in jitd.toml) and is parsed
// strictly: an unknown key, a wrong type or a bad value is a PolicyError
// naming the file, the key path and what to write instead, and a Policy is
// either whole or not made, so a reload that fails leaves the old policy in
// force. A Policy never changes after it is made: jitd swaps the whole object
// on reload, and evaluate / may_approve are safe to call from several threads.
//
// Evaluation (evaluate):
//   - Rules are tried in file order; the first rule that allows the whole
//     request decides it (auto_approve or needs_approval). Overlapping rules
//     are how one says "up to 15m at once, up to 8h with approval".
//   - A rule applies to a request when it names the user (users) or one of
//     the user's groups (groups), and the service (services, or "*").
//   - An applying rule then checks, in this order: source, duration, start,
//     concurrent cap, reason. The source prefix must lie inside one of the
//     rule's ranges: a single address inside a range is fine, a prefix wider
//     than the range is not, and the families must agree (an IPv4-mapped IPv6
//     address is IPv6 and never matches an IPv4 range). duration_ms ==
//     max_duration and start_offset_ms == max_start_ahead are allowed.
//   - When no rule allows the request, the refusal reports the applying rule
//     that got furthest through the checks, with its first failed check; on a
//     tie, the one with the broader bound (the longer max_duration, the later
//     max_start_ahead, the higher cap: the bound worth quoting), then the
//     earlier in the file. When no rule applies: service_not_allowed if some
//     rule names the user but none the service, else no_matching_rule.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <toml++/toml.h>

#include "grant.h"

namespace jitlb::control {

inline constexpr int64_t kDefaultPendingTimeoutMs = 3'600'000;  // 1h
inline constexpr int64_t kDefaultHorizonMs = 24 * 3'600'000LL;  // 24h
inline constexpr size_t kMaxRuleNameLen = 63;
// User and group names become a grant's subject (grant.h): at most this long.
inline constexpr size_t kMaxPrincipalNameLen = kMaxGrantSubjectLen;
inline constexpr uint32_t kMaxConcurrentLimit = 1'000'000;
inline constexpr size_t kMaxPolicyFileBytes = 1 << 20;

enum class Approval : uint8_t {
    automatic,  // approval = "auto": jitd issues the grant at once
    approver,   // approval = "approver": a member of an approvers group must approve
};

// One [[rule]] of the policy file.
struct Rule {
    std::string name;  // unique, 1..kMaxRuleNameLen of [A-Za-z0-9._-]
    // Service names (valid_service_name of shared_layout.h), or exactly {"*"}: any service.
    std::vector<std::string> services;
    std::vector<std::string> users;   // who may ask: user names ...
    std::vector<std::string> groups;  // ... and/or members of these groups (one may be empty)
    std::vector<IpPrefix> sources;    // the requested source must lie inside one of these
    int64_t max_duration_ms = 0;      // > 0; a request of exactly this long is allowed
    Approval approval = Approval::automatic;
    std::vector<std::string> approvers;  // groups; non-empty exactly when approval == approver
    bool require_reason = false;
    // Live grants plus pending requests of one user under this rule (not
    // counting the request being decided) must stay below this; 0 = no cap.
    uint32_t max_concurrent = 0;
    // Furthest a requested start may lie ahead (0: now only); the policy's
    // horizon when the file leaves it out; never above the horizon.
    int64_t max_start_ahead_ms = 0;

    bool any_service() const noexcept { return services.size() == 1 && services[0] == "*"; }
    friend bool operator==(const Rule&, const Rule&) = default;
};

// What jitd knows about a request when it decides it.
struct RequestFacts {
    std::string user;                 // the requester's user name (SO_PEERCRED)
    std::vector<std::string> groups;  // the requester's group names
    std::string service;
    IpPrefix source;
    int64_t duration_ms = 0;      // not_after - not_before; must be > 0
    int64_t start_offset_ms = 0;  // not_before - now; 0 = now; must be >= 0
    bool has_reason = false;      // a non-empty reason was given
    // This user's live grants plus pending requests under the named rule, not
    // counting this request. Called only for rules with a cap, and only once
    // the request passes the rule's earlier checks; empty = 0 everywhere.
    std::function<uint32_t(std::string_view rule)> active_count;
};

enum class Outcome : uint8_t { auto_approve, needs_approval, refused };
// "auto_approve", "needs_approval", "refused".
std::string_view outcome_name(Outcome outcome) noexcept;

struct Decision {
    Outcome outcome = Outcome::refused;
    // The rule that decided (or whose check refused); empty when no rule
    // applied or the request itself was invalid.
    std::string rule;
    // For people: "rule dev-web: duration 45m is above its maximum 30m (ask
    // for 30m or less)".
    std::string message;
    // Stable, for scripts and the audit log. auto_approve, needs_approval;
    // refusals: invalid_duration, start_in_past (the request itself),
    // no_matching_rule, service_not_allowed (no rule applies),
    // source_not_allowed, duration_too_long, start_too_far_ahead,
    // concurrent_cap, reason_required (the reporting rule's first failed check).
    std::string code;
};

struct ApprovalCheck {
    bool allowed = false;
    // "ok"; refusals: unknown_rule (the rule is gone after a reload),
    // no_approvers (the rule approves automatically now), self_approval,
    // not_an_approver. Checked in that order.
    std::string code;
    std::string message;  // for people, names the rule and the user
};

class Policy {
  public:
    // No rules: refuses every request. What jitd holds until a policy loads.
    Policy() = default;
    // Takes the pieces as they are: parse_policy is what checks them.
    Policy(std::vector<Rule> rules, int64_t pending_timeout_ms, int64_t horizon_ms);

    Decision evaluate(const RequestFacts& request) const;

    // Whether approver_user (a member of approver_groups) may approve a
    // request that requester_user made under `rule`. Nobody approves their
    // own request, whatever their groups.
    ApprovalCheck may_approve(std::string_view rule, std::string_view approver_user,
                              const std::vector<std::string>& approver_groups,
                              std::string_view requester_user) const;

    const std::vector<Rule>& rules() const noexcept { return rules_; }
    const Rule* find_rule(std::string_view name) const noexcept;
    // A request not answered by then expires unanswered.
    int64_t pending_timeout_ms() const noexcept { return pending_timeout_ms_; }
    // How far ahead any requested start may lie; every rule's max_start_ahead is within it.
    int64_t horizon_ms() const noexcept { return horizon_ms_; }

  private:
    std::vector<Rule> rules_;
    int64_t pending_timeout_ms_ = kDefaultPendingTimeoutMs;
    int64_t horizon_ms_ = kDefaultHorizonMs;
};

// A policy that could not be loaded. what() is the whole story:
// "policy.toml:14:16: rule[2].max_duration: '45x': unknown unit 'x' ... ".
class PolicyError : public std::runtime_error {
  public:
    // line and column are 1-based, 0 when there is no position (a file error,
    // a missing top-level key); key is "" for syntax and file errors.
    PolicyError(std::string source, std::string key, int line, int column, std::string detail);

    const std::string& source() const noexcept { return source_; }
    const std::string& key() const noexcept { return key_; }  // "rule[2].max_duration"
    int line() const noexcept { return line_; }
    int column() const noexcept { return column_; }
    const std::string& detail() const noexcept { return detail_; }  // what() without the place

  private:
    std::string source_;
    std::string key_;
    int line_ = 0;
    int column_ = 0;
    std::string detail_;
};

// The policy keys (pending_timeout, horizon, [[rule]]) of one table.
// source_name names the file in errors; key_prefix prefixes key paths
// ("policy" for the [policy] table of jitd.toml). Throws PolicyError.
Policy parse_policy(const toml::table& policy_table, std::string_view source_name,
                    std::string_view key_prefix = "");

// TOML text holding a policy: when its top level has a `policy` key, that
// table is the policy and the rest belongs to jitd's config (not looked at);
// otherwise the top level is the policy. Throws PolicyError, also for a
// TOML syntax error.
Policy parse_policy_text(std::string_view text, std::string_view source_name);

// Reads `path` (a regular file of at most kMaxPolicyFileBytes that group and
// others cannot write: whoever writes it decides who gets access) and parses
// it as parse_policy_text does. Throws PolicyError.
Policy load_policy_file(const std::string& path);

}  // namespace jitlb::control
