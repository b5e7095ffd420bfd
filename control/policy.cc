// The policy engine (see policy.h): the TOML reader, then evaluation and
// approval checks. The reader throws PolicyError at the first problem, so no
// caller ever sees a half-read Policy.
#include "policy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "duration.h"
#include "toml_keys.h"
#include "shared_layout.h"

namespace jitlb::control {
namespace {

using toml_keys::join;
using toml_keys::type_name;

constexpr std::string_view kAnyService = "*";

// --- reading TOML ---------------------------------------------------------------------

[[noreturn]] void fail(std::string_view source, std::string key, const toml::source_position& at,
                       std::string detail) {
    throw PolicyError(std::string(source), std::move(key), static_cast<int>(at.line),
                      static_cast<int>(at.column), std::move(detail));
}


// One table of the document and its key path ("policy.rule[2]"). Every
// read checks the type, and every failure names the path.
class Section {
  public:
    Section(std::string_view source, const toml::table& table, std::string path)
        : source_(source), table_(table), path_(std::move(path)) {}

    std::string key_path(std::string_view key) const {
        return path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
    }
    std::string_view source() const { return source_; }
    const std::string& path() const { return path_; }

    // A misspelt key must not leave its setting at the default without a
    // word. The table iterates in key order; report the first in the file.
    void allow_only(std::initializer_list<std::string_view> known, std::string_view hint) const {
        const toml::key* first = toml_keys::first_unknown_key(table_, known);
        if (!first) return;
        const std::string_view name = first->str();
        fail(source_, key_path(name), first->source().begin,
             fmt::format("unknown key '{}'{}; the keys {} are: {}{}", name,
                         toml_keys::did_you_mean(name, known), toml_keys::table_place(path_),
                         join(known), hint));
    }

    const toml::node* find(std::string_view key) const { return table_.get(key); }

    // At the key's value when it is present, else at the table.
    [[noreturn]] void fail_at(std::string_view key, std::string detail) const {
        const toml::node* node = find(key);
        fail(source_, key_path(key), node ? node->source().begin : table_.source().begin,
             std::move(detail));
    }

    [[noreturn]] void missing(std::string_view key, std::string_view what) const {
        fail(source_, key_path(key), table_.source().begin, fmt::format("missing: {}", what));
    }

    // A string without control characters (messages quote values).
    std::string string_value(const toml::node& node, const std::string& path,
                             std::string_view example) const {
        const auto* value = node.as_string();
        if (!value) {
            fail(source_, path, node.source().begin,
                 fmt::format("expected a string such as {}, found {}", example, type_name(node)));
        }
        const std::string& text = value->get();
        for (const char c : text) {
            const auto byte = static_cast<unsigned char>(c);
            if (byte < 0x20 || byte == 0x7f) {
                fail(source_, path, node.source().begin,
                     fmt::format("the string contains the control character 0x{:02x}", byte));
            }
        }
        return text;
    }

    std::optional<std::string> string(std::string_view key, std::string_view example) const {
        const toml::node* node = find(key);
        if (!node) return std::nullopt;
        return string_value(*node, key_path(key), example);
    }

    std::optional<bool> boolean(std::string_view key) const {
        const toml::node* node = find(key);
        if (!node) return std::nullopt;
        const auto* value = node->as_boolean();
        if (!value) {
            fail_at(key, fmt::format("expected true or false, found {}", type_name(*node)));
        }
        return value->get();
    }

    std::optional<int64_t> integer(std::string_view key, int64_t lo, int64_t hi) const {
        const toml::node* node = find(key);
        if (!node) return std::nullopt;
        const auto* value = node->as_integer();
        if (!value) {
            fail_at(key, fmt::format("expected an integer ({}..{}), found {}", lo, hi,
                                     type_name(*node)));
        }
        const int64_t v = value->get();
        if (v < lo || v > hi) fail_at(key, fmt::format("{} is out of range ({}..{})", v, lo, hi));
        return v;
    }

    // A duration string ("30m"); with allow_zero, "0s" is 0.
    std::optional<int64_t> duration(std::string_view key, bool allow_zero) const {
        const std::optional<std::string> text = string(key, "\"30m\" or \"1h30m\"");
        if (!text) return std::nullopt;
        if (allow_zero && *text == "0s") return 0;
        std::string error;
        const std::optional<int64_t> ms = parse_duration_ms(*text, &error);
        if (!ms) {
            fail_at(key,
                    allow_zero ? fmt::format("{}; 0s allows starting now only", error) : error);
        }
        return ms;
    }

    struct Item {
        std::string value;
        std::string path;  // "rule[0].users[1]"
        toml::source_position at;
    };

    // A non-empty array of strings without repeats, or nothing when absent.
    std::optional<std::vector<Item>> string_list(std::string_view key,
                                                 std::string_view example) const {
        const toml::node* node = find(key);
        if (!node) return std::nullopt;
        const toml::array* items = node->as_array();
        if (!items) {
            fail_at(key, fmt::format("expected a list of strings such as [{}], found {}", example,
                                     type_name(*node)));
        }
        if (items->empty()) {
            fail_at(key, fmt::format("the list is empty: list at least one, e.g. [{}], or leave "
                                     "the key out",
                                     example));
        }
        std::vector<Item> out;
        for (size_t i = 0; i < items->size(); ++i) {
            const toml::node& item = *items->get(i);
            std::string path = fmt::format("{}[{}]", key_path(key), i);
            std::string value = string_value(item, path, example);
            for (const Item& earlier : out) {
                if (earlier.value == value) {
                    fail(source_, path, item.source().begin,
                         fmt::format("'{}' is listed twice (also {}): remove one", value,
                                     earlier.path));
                }
            }
            out.push_back({std::move(value), std::move(path), item.source().begin});
        }
        return out;
    }

  private:
    std::string_view source_;
    const toml::table& table_;
    std::string path_;
};

bool valid_rule_name(std::string_view name) {
    return !name.empty() && name.size() <= kMaxRuleNameLen &&
           std::all_of(name.begin(), name.end(), [](char c) {
               return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '.' || c == '_' || c == '-';
           });
}

// User and group names as the system gives them: any printable, non-blank
// bytes (directory services allow more than useradd does), at most as long
// as a grant's subject. "*" is refused: there is no wildcard for people.
std::vector<std::string> read_names(const Section& rule, std::string_view key,
                                    std::string_view kind, std::string_view example) {
    std::vector<std::string> names;
    const auto items = rule.string_list(key, example);
    if (!items) return names;
    for (const Section::Item& item : *items) {
        const std::string& name = item.value;
        if (name == kAnyService) {
            fail(rule.source(), item.path, item.at,
                 fmt::format("'*' is not a {} name: there is no wildcard for people (name them, "
                             "or name a group they are in)",
                             kind));
        }
        const bool blank = std::any_of(name.begin(), name.end(), [](char c) { return c == ' '; });
        if (name.empty() || name.size() > kMaxPrincipalNameLen || blank) {
            fail(rule.source(), item.path, item.at,
                 fmt::format("'{}' is not a {} name (1 to {} characters, no blanks)", name, kind,
                             kMaxPrincipalNameLen));
        }
        names.push_back(name);
    }
    return names;
}

std::vector<std::string> read_services(const Section& rule) {
    constexpr std::string_view kExample = "\"web\", \"api\"";
    const auto items = rule.string_list("services", kExample);
    if (!items) {
        rule.missing("services",
                     "the services this rule covers, e.g. services = [\"web\"], or "
                     "services = [\"*\"] for all");
    }
    std::vector<std::string> services;
    for (const Section::Item& item : *items) {
        if (item.value == kAnyService) {
            if (items->size() != 1) {
                fail(rule.source(), item.path, item.at,
                     "'*' means every service and stands alone: write services = [\"*\"] or "
                     "list names");
            }
        } else if (!valid_service_name(item.value)) {
            fail(rule.source(), item.path, item.at,
                 fmt::format("'{}' is not a service name (1 to {} of A-Z a-z 0-9 . _ -), nor \"*\" "
                             "for every service",
                             item.value, kMaxServiceNameLen));
        }
        services.push_back(item.value);
    }
    return services;
}

std::vector<IpPrefix> read_sources(const Section& rule) {
    constexpr std::string_view kExample = "\"198.51.100.0/24\", \"2001:db8::/64\"";
    const auto items = rule.string_list("sources", kExample);
    if (!items) {
        rule.missing("sources",
                     "the source ranges requests may name, e.g. sources = "
                     "[\"198.51.100.0/24\"] (\"0.0.0.0/0\" and \"::/0\" for anywhere)");
    }
    std::vector<IpPrefix> sources;
    for (const Section::Item& item : *items) {
        std::string error;
        const std::optional<IpPrefix> prefix = parse_ip_prefix(item.value, &error);
        if (!prefix) fail(rule.source(), item.path, item.at, error);
        sources.push_back(*prefix);
    }
    return sources;
}

Rule read_rule(const Section& section, int64_t horizon_ms, const std::vector<Rule>& earlier) {
    section.allow_only(
        {"name", "services", "users", "groups", "sources", "max_duration", "approval", "approvers",
         "require_reason", "max_concurrent", "max_start_ahead"},
        "");
    Rule rule;

    const std::optional<std::string> name = section.string("name", "\"dev-web\"");
    if (!name) section.missing("name", "a unique name for the rule, e.g. name = \"dev-web\"");
    if (!valid_rule_name(*name)) {
        section.fail_at("name", fmt::format("'{}' is not a rule name (1 to {} of A-Z a-z 0-9 . _ "
                                            "-, e.g. \"dev-web\")",
                                            *name, kMaxRuleNameLen));
    }
    for (size_t i = 0; i < earlier.size(); ++i) {
        if (earlier[i].name == *name) {
            section.fail_at("name", fmt::format("'{}' is already the name of rule[{}]: rule "
                                                "names must be unique (approvals refer to them)",
                                                *name, i));
        }
    }
    rule.name = *name;

    rule.services = read_services(section);
    rule.users = read_names(section, "users", "user", "\"alice\"");
    rule.groups = read_names(section, "groups", "group", "\"dev\"");
    if (rule.users.empty() && rule.groups.empty()) {
        section.missing("users", "who may ask: users = [\"alice\"] and/or groups = [\"dev\"]");
    }
    rule.sources = read_sources(section);

    const std::optional<int64_t> max_duration = section.duration("max_duration", false);
    if (!max_duration) {
        section.missing("max_duration",
                        "the longest grant this rule allows, e.g. "
                        "max_duration = \"30m\"");
    }
    rule.max_duration_ms = *max_duration;

    const std::optional<std::string> approval = section.string("approval", "\"auto\"");
    if (approval && *approval == "approver") {
        rule.approval = Approval::approver;
    } else if (approval && *approval != "auto") {
        section.fail_at("approval",
                        fmt::format("'{}' is not an approval mode: write \"auto\" (approve at "
                                    "once) or \"approver\" (wait for a member of approvers)",
                                    *approval));
    }
    rule.approvers = read_names(section, "approvers", "group", "\"ops\"");
    if (rule.approval == Approval::approver && rule.approvers.empty()) {
        section.missing("approvers",
                        "with approval = \"approver\", the groups whose members "
                        "may approve, e.g. approvers = [\"ops\"]");
    }
    if (rule.approval == Approval::automatic && !rule.approvers.empty()) {
        section.fail_at("approvers",
                        "approvers only count with approval = \"approver\": "
                        "set that, or remove approvers");
    }

    rule.require_reason = section.boolean("require_reason").value_or(false);
    rule.max_concurrent = static_cast<uint32_t>(
        section.integer("max_concurrent", 0, kMaxConcurrentLimit).value_or(0));

    const std::optional<int64_t> ahead = section.duration("max_start_ahead", true);
    rule.max_start_ahead_ms = ahead.value_or(horizon_ms);
    if (rule.max_start_ahead_ms > horizon_ms) {
        section.fail_at(
            "max_start_ahead",
            fmt::format("{} is beyond the policy's horizon {}: write at most {} "
                        "(or raise horizon)",
                        format_duration_ms(rule.max_start_ahead_ms), format_duration_ms(horizon_ms),
                        format_duration_ms(horizon_ms)));
    }
    return rule;
}

// --- evaluation -----------------------------------------------------------------------

bool contains(const std::vector<std::string>& names, std::string_view name) {
    return std::find(names.begin(), names.end(), name) != names.end();
}

bool any_shared(const std::vector<std::string>& a, const std::vector<std::string>& b) {
    return std::any_of(a.begin(), a.end(), [&](const std::string& x) { return contains(b, x); });
}

bool names_user(const Rule& rule, const RequestFacts& request) {
    return contains(rule.users, request.user) || any_shared(rule.groups, request.groups);
}

bool names_service(const Rule& rule, std::string_view service) {
    return rule.any_service() || contains(rule.services, service);
}

// Whether `inner` lies inside `range`: same family, at least as long, and the
// same leading range.prefix_len bits.
bool prefix_contains(const IpPrefix& range, const IpPrefix& inner) {
    if (range.family != inner.family || inner.prefix_len < range.prefix_len) return false;
    const size_t whole = range.prefix_len / 8;
    if (std::memcmp(range.addr.data(), inner.addr.data(), whole) != 0) return false;
    const unsigned rest = range.prefix_len % 8;
    if (rest == 0) return true;
    const auto mask = static_cast<uint8_t>(0xff << (8 - rest));
    return (range.addr[whole] & mask) == (inner.addr[whole] & mask);
}

// ::ffff:a.b.c.d/(96+n): the IPv4 prefix it carries, for a hint.
std::optional<IpPrefix> mapped_ipv4(const IpPrefix& source) {
    constexpr std::array<uint8_t, 12> kMappedHead{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (source.family != IpVersion::v6 || source.prefix_len < 96 ||
        !std::equal(kMappedHead.begin(), kMappedHead.end(), source.addr.begin())) {
        return std::nullopt;
    }
    IpPrefix v4;
    v4.family = IpVersion::v4;
    std::copy_n(source.addr.begin() + 12, 4, v4.addr.begin());
    v4.prefix_len = static_cast<uint8_t>(source.prefix_len - 96);
    return v4;
}

// The checks of a rule that applies, in the order they run: a refusal
// reports the rule that got furthest.
enum class Check : uint8_t { source, duration, start, concurrent, reason, passed };

struct CheckResult {
    Check failed = Check::passed;
    std::string code;
    std::string message;
    int64_t limit = 0;  // the rule's bound that refused (duration, start, cap); else 0
};

// Whether a refusal by `candidate` tells more than the one kept so far: it
// got further, or as far against a broader bound (the bound worth quoting).
// Otherwise the earlier rule stays.
bool more_relevant(const CheckResult& candidate, const CheckResult& kept) {
    if (candidate.failed != kept.failed) return candidate.failed > kept.failed;
    return candidate.limit > kept.limit;
}

CheckResult check_source(const Rule& rule, const IpPrefix& source) {
    for (const IpPrefix& range : rule.sources) {
        if (prefix_contains(range, source)) return {};
    }
    std::vector<std::string> ranges;
    for (const IpPrefix& range : rule.sources) ranges.push_back(format_ip_prefix(range));
    std::string hint = "ask for an address or prefix inside one of them";
    for (const IpPrefix& range : rule.sources) {
        if (prefix_contains(source, range)) {
            hint = fmt::format("it is wider than {}: ask for a prefix inside it",
                               format_ip_prefix(range));
            break;
        }
    }
    if (const std::optional<IpPrefix> v4 = mapped_ipv4(source)) {
        hint = fmt::format("an IPv4-mapped IPv6 address is IPv6: ask for {} instead",
                           format_ip_prefix(*v4));
    }
    return {Check::source, "source_not_allowed",
            fmt::format("rule {}: source {} is not inside its sources ({}); {}", rule.name,
                        format_ip_prefix(source), join(ranges), hint)};
}

CheckResult check_rule(const Rule& rule, const RequestFacts& request) {
    CheckResult source = check_source(rule, request.source);
    if (source.failed != Check::passed) return source;
    if (request.duration_ms > rule.max_duration_ms) {
        const std::string max = format_duration_ms(rule.max_duration_ms);
        return {Check::duration, "duration_too_long",
                fmt::format("rule {}: duration {} is above its maximum {} (ask for {} or less)",
                            rule.name, format_duration_ms(request.duration_ms), max, max),
                rule.max_duration_ms};
    }
    if (request.start_offset_ms > rule.max_start_ahead_ms) {
        const std::string max = format_duration_ms(rule.max_start_ahead_ms);
        return {Check::start, "start_too_far_ahead",
                rule.max_start_ahead_ms == 0
                    ? fmt::format("rule {}: a start {} ahead is not allowed (it grants access "
                                  "from now only)",
                                  rule.name, format_duration_ms(request.start_offset_ms))
                    : fmt::format("rule {}: a start {} ahead is further than its limit {} "
                                  "(start within {})",
                                  rule.name, format_duration_ms(request.start_offset_ms), max, max),
                rule.max_start_ahead_ms};
    }
    if (rule.max_concurrent > 0) {
        const uint32_t active = request.active_count ? request.active_count(rule.name) : 0;
        if (active >= rule.max_concurrent) {
            return {Check::concurrent, "concurrent_cap",
                    fmt::format("rule {}: user {} already has {} live or pending grants under "
                                "it, its cap is {} (withdraw one, or wait for one to end)",
                                rule.name, request.user, active, rule.max_concurrent),
                    rule.max_concurrent};
        }
    }
    if (rule.require_reason && !request.has_reason) {
        return {Check::reason, "reason_required",
                fmt::format("rule {}: a reason is required (say why you need access)", rule.name)};
    }
    return {};
}

}  // namespace

// --- PolicyError ------------------------------------------------------------------------

namespace {
std::string place_and_detail(const std::string& source, const std::string& key, int line,
                             int column, const std::string& detail) {
    std::string out = source;
    if (line > 0) out += fmt::format(":{}:{}", line, column);
    out += ": ";
    if (!key.empty()) out += key + ": ";
    return out + detail;
}
}  // namespace

PolicyError::PolicyError(std::string source, std::string key, int line, int column,
                         std::string detail)
    : std::runtime_error(place_and_detail(source, key, line, column, detail)),
      source_(std::move(source)),
      key_(std::move(key)),
      line_(line),
      column_(column),
      detail_(std::move(detail)) {}

// --- reading a policy ------------------------------------------------------------------------

Policy parse_policy(const toml::table& policy_table, std::string_view source_name,
                    std::string_view key_prefix) {
    const Section root(source_name, policy_table, std::string(key_prefix));
    root.allow_only({"pending_timeout", "horizon", "rule"},
                    key_prefix.empty() ? " (or put the policy in a [policy] table)" : "");
    const int64_t pending_timeout_ms =
        root.duration("pending_timeout", false).value_or(kDefaultPendingTimeoutMs);
    const int64_t horizon_ms = root.duration("horizon", true).value_or(kDefaultHorizonMs);

    std::vector<Rule> rules;
    if (const toml::node* node = root.find("rule")) {
        const toml::array* entries = node->as_array();
        if (!entries || !entries->is_array_of_tables()) {
            root.fail_at(
                "rule", fmt::format("expected rules as [[rule]] tables (two brackets), "
                                    "found {}",
                                    entries && !entries->empty() ? "an array holding something else"
                                                                 : type_name(*node)));
        }
        for (size_t i = 0; i < entries->size(); ++i) {
            const Section section(source_name, *entries->get(i)->as_table(),
                                  fmt::format("{}[{}]", root.key_path("rule"), i));
            rules.push_back(read_rule(section, horizon_ms, rules));
        }
    }
    return Policy(std::move(rules), pending_timeout_ms, horizon_ms);
}

Policy parse_policy_text(std::string_view text, std::string_view source_name) {
    toml::table document;
    try {
        document = toml::parse(text, source_name);
    } catch (const toml::parse_error& error) {
        fail(source_name, "", error.source().begin,
             fmt::format("TOML syntax: {}", error.description()));
    }
    if (const toml::node* node = document.get("policy")) {
        const toml::table* table = node->as_table();
        if (!table) {
            fail(source_name, "policy", node->source().begin,
                 fmt::format("expected a [policy] table, found {}", type_name(*node)));
        }
        return parse_policy(*table, source_name, "policy");
    }
    return parse_policy(document, source_name);
}

namespace {
// Closes a descriptor on every path out of load_policy_file.
struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
};
}  // namespace

Policy load_policy_file(const std::string& path) {
    const auto file_error = [&](std::string detail) {
        return PolicyError(path, "", 0, 0, std::move(detail));
    };
    const auto errno_text = [] { return std::system_category().message(errno); };
    // O_NONBLOCK: a FIFO in the path must not hang a reload.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) throw file_error(fmt::format("cannot open the policy file: {}", errno_text()));
    const FdCloser closer{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw file_error(fmt::format("cannot stat: {}", errno_text()));
    if (!S_ISREG(st.st_mode)) throw file_error("not a regular file");
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        throw file_error(
            fmt::format("group or others may write the policy file, and whoever "
                        "writes it decides who gets access: chmod go-w {}",
                        path));
    }
    std::string text(kMaxPolicyFileBytes + 1, '\0');
    size_t size = 0;
    while (size < text.size()) {
        const ssize_t n = ::read(fd, text.data() + size, text.size() - size);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw file_error(fmt::format("cannot read: {}", errno_text()));
        if (n == 0) break;
        size += static_cast<size_t>(n);
    }
    if (size > kMaxPolicyFileBytes) {
        throw file_error(
            fmt::format("more than {} bytes: too large for a policy file", kMaxPolicyFileBytes));
    }
    text.resize(size);
    return parse_policy_text(text, path);
}

// --- the policy ---------------------------------------------------------------------------------

std::string_view outcome_name(Outcome outcome) noexcept {
    switch (outcome) {
        case Outcome::auto_approve:
            return "auto_approve";
        case Outcome::needs_approval:
            return "needs_approval";
        case Outcome::refused:
            return "refused";
    }
    return "refused";
}

Policy::Policy(std::vector<Rule> rules, int64_t pending_timeout_ms, int64_t horizon_ms)
    : rules_(std::move(rules)), pending_timeout_ms_(pending_timeout_ms), horizon_ms_(horizon_ms) {}

const Rule* Policy::find_rule(std::string_view name) const noexcept {
    for (const Rule& rule : rules_) {
        if (rule.name == name) return &rule;
    }
    return nullptr;
}

Decision Policy::evaluate(const RequestFacts& request) const {
    if (request.duration_ms <= 0) {
        return {Outcome::refused, "",
                fmt::format("a duration of {} ms is not a duration: ask for a positive one",
                            request.duration_ms),
                "invalid_duration"};
    }
    if (request.start_offset_ms < 0) {
        return {Outcome::refused, "",
                fmt::format("the start lies {} in the past: ask for now or a later time",
                            format_duration_ms(-request.start_offset_ms)),
                "start_in_past"};
    }
    const Rule* reporting = nullptr;  // the applying rule that got furthest
    CheckResult report;
    bool user_named = false;
    for (const Rule& rule : rules_) {
        if (!names_user(rule, request)) continue;
        user_named = true;
        if (!names_service(rule, request.service)) continue;
        CheckResult result = check_rule(rule, request);
        if (result.failed == Check::passed) {
            if (rule.approval == Approval::automatic) {
                return {Outcome::auto_approve, rule.name,
                        fmt::format("rule {}: approved automatically", rule.name), "auto_approve"};
            }
            return {
                Outcome::needs_approval, rule.name,
                fmt::format("rule {}: waits for approval by a member of {} (within {})", rule.name,
                            join(rule.approvers, " or "), format_duration_ms(pending_timeout_ms_)),
                "needs_approval"};
        }
        if (!reporting || more_relevant(result, report)) {
            reporting = &rule;
            report = std::move(result);
        }
    }
    if (reporting) return {Outcome::refused, reporting->name, report.message, report.code};
    if (user_named) {
        return {Outcome::refused, "",
                fmt::format("no rule lets user {} ask for service {} (the rules for {} cover "
                            "other services)",
                            request.user, request.service, request.user),
                "service_not_allowed"};
    }
    return {Outcome::refused, "",
            fmt::format("no rule lets user {} ask for service {} (no rule names the user or "
                        "one of their groups)",
                        request.user, request.service),
            "no_matching_rule"};
}

ApprovalCheck Policy::may_approve(std::string_view rule_name, std::string_view approver_user,
                                  const std::vector<std::string>& approver_groups,
                                  std::string_view requester_user) const {
    const Rule* rule = find_rule(rule_name);
    if (!rule) {
        return {false, "unknown_rule",
                fmt::format("rule {} is no longer in the policy (it was removed or renamed by a "
                            "reload): the request must be made again",
                            rule_name)};
    }
    if (rule->approval != Approval::approver) {
        return {false, "no_approvers",
                fmt::format("rule {} now approves automatically and has no approvers: the "
                            "request must be evaluated again",
                            rule_name)};
    }
    if (approver_user == requester_user) {
        return {false, "self_approval",
                fmt::format("user {} made this request and cannot approve it: ask a member of {}",
                            approver_user, join(rule->approvers, " or "))};
    }
    if (!any_shared(rule->approvers, approver_groups)) {
        return {false, "not_an_approver",
                fmt::format("user {} is not in an approver group of rule {} ({})", approver_user,
                            rule_name, join(rule->approvers, ", "))};
    }
    return {true, "ok",
            fmt::format("user {} may approve requests under rule {}", approver_user, rule_name)};
}

}  // namespace jitlb::control
