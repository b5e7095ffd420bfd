#include "jitd_core.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <sodium.h>

#include "duration.h"
#include "service_spec.h"

namespace jitlb::control {

using nlohmann::json;
using nlohmann::ordered_json;

namespace {

// Grant states in which the grant may be (or become) active in jitlb.
const std::vector<std::string> kLiveGrantStates = {"scheduled", "ready", "pushed", "active",
                                                   "superseded", "waiting"};
const std::vector<std::string> kOpenRequestStates = {"pending"};

std::string hex_of(std::span<const uint8_t> bytes) {
    std::string out;
    for (uint8_t b : bytes) out += fmt::format("{:02x}", b);
    return out;
}

std::string new_request_id() {
    return grant_id_hex(random_grant_id());
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
}

std::string str_field(const json& req, const char* key, bool required) {
    if (!req.contains(key)) {
        if (required) throw ApiError("bad_request", fmt::format("'{}' is required", key));
        return "";
    }
    if (!req.at(key).is_string()) {
        throw ApiError("bad_request", fmt::format("'{}' must be a string", key));
    }
    return req.at(key).get<std::string>();
}

int64_t int_field(const json& req, const char* key, int64_t fallback) {
    if (!req.contains(key)) return fallback;
    if (!req.at(key).is_number_integer()) {
        throw ApiError("bad_request", fmt::format("'{}' must be an integer", key));
    }
    return req.at(key).get<int64_t>();
}

bool bool_field(const json& req, const char* key) {
    if (!req.contains(key)) return false;
    if (!req.at(key).is_boolean()) {
        throw ApiError("bad_request", fmt::format("'{}' must be true or false", key));
    }
    return req.at(key).get<bool>();
}

// A printable reason of at most 500 bytes.
std::string reason_field(const json& req) {
    std::string r = str_field(req, "reason", false);
    if (r.size() > 500) throw ApiError("bad_request", "reason is longer than 500 bytes");
    for (unsigned char c : r) {
        if (c < 0x20 || c == 0x7f) throw ApiError("bad_request", "reason holds a control character");
    }
    return r;
}

ordered_json request_json(const RequestRow& r) {
    ordered_json j;
    j["id"] = r.id;
    j["state"] = r.state;
    j["user"] = r.user;
    j["service"] = r.service;
    j["source"] = r.source;
    j["duration"] = format_duration_ms(r.duration_ms);
    j["duration_ms"] = r.duration_ms;
    j["not_before_ms"] = r.not_before_ms;
    j["not_before"] = format_unix_ms(r.not_before_ms);
    j["reason"] = r.reason;
    j["rule"] = r.rule;
    j["created"] = format_unix_ms(r.created_ms);
    j["decided_by"] = r.decided_by;
    j["decision_reason"] = r.decision_reason;
    j["grant_id"] = r.grant_id;
    return j;
}

ordered_json grant_json(const GrantRow& g) {
    ordered_json j;
    j["id"] = g.id;
    j["state"] = g.state;
    j["state_reason"] = g.state_reason;
    j["subject"] = g.subject;
    j["service"] = g.service;
    j["source"] = g.source;
    j["not_before_ms"] = g.not_before_ms;
    j["not_after_ms"] = g.not_after_ms;
    j["not_before"] = format_unix_ms(g.not_before_ms);
    j["not_after"] = format_unix_ms(g.not_after_ms);
    j["request_id"] = g.request_id;
    j["issued_by"] = g.issued_by;
    j["text"] = g.text;
    return j;
}

std::optional<GrantId> parse_grant_id_hex(const std::string& text) {
    if (text.size() != 32) return std::nullopt;
    GrantId id{};
    for (size_t i = 0; i < 16; ++i) {
        unsigned v = 0;
        for (size_t k = 0; k < 2; ++k) {
            const char c = text[2 * i + k];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= static_cast<unsigned>(c - '0');
            else if (c >= 'a' && c <= 'f') v |= static_cast<unsigned>(c - 'a' + 10);
            else return std::nullopt;
        }
        id[i] = static_cast<uint8_t>(v);
    }
    return id;
}

}  // namespace

Caller caller_of(uid_t uid, gid_t gid) {
    Caller c;
    c.uid = uid;
    c.gid = gid;
    std::vector<char> buf(16384);
    struct passwd pw {};
    struct passwd* found = nullptr;
    if (getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) == 0 && found) {
        c.user = pw.pw_name;
        int n = 64;
        std::vector<gid_t> gids(static_cast<size_t>(n));
        if (getgrouplist(pw.pw_name, gid, gids.data(), &n) < 0) {
            gids.resize(static_cast<size_t>(n));
            getgrouplist(pw.pw_name, gid, gids.data(), &n);
        }
        gids.resize(static_cast<size_t>(std::max(n, 0)));
        for (gid_t g : gids) {
            struct group gr {};
            struct group* gfound = nullptr;
            std::vector<char> gbuf(16384);
            if (getgrgid_r(g, &gr, gbuf.data(), gbuf.size(), &gfound) == 0 && gfound) {
                c.groups.push_back(gr.gr_name);
            }
        }
    } else {
        c.user = fmt::format("uid:{}", uid);
    }
    return c;
}

Jitd::Jitd(JitdConfig config, std::optional<IssuerSecretKey> issuer, std::unique_ptr<Store> store,
           std::unique_ptr<AuditLog> audit, std::unique_ptr<RegionLink> link, Now now)
    : config_(std::move(config)),
      issuer_(std::move(issuer)),
      store_(std::move(store)),
      audit_(std::move(audit)),
      link_(std::move(link)),
      now_(std::move(now)) {
    started_ms_ = now_();
    push_sequence_ = store_->counter("push_sequence");
    forget_outcomes();
    // Services declared in the config file are the config's: they replace
    // what the store holds under the same name.
    for (const ServiceSpec& spec : config_.services) {
        const std::string text = service_to_json(spec).dump();
        const auto old = store_->service(spec.name);
        if (old && old->spec_json == text) continue;
        AuditEvent ev{"jitd", "service.set", spec.name, "ok", "declared in " + config_.source,
                      ordered_json::object()};
        ev.detail["service"] = service_to_json(spec);
        commit(ev, [&] { store_->put_service({spec.name, text}); });
    }
    AuditEvent ev{"jitd", "jitd.start", config_.instance, "ok", "", ordered_json::object()};
    ev.detail["pid"] = static_cast<int64_t>(getpid());
    ev.detail["policy_rules"] = config_.policy.rules().size();
    ev.detail["issuer_key_id"] = issuer_ ? key_id_hex(issuer_->key_id()) : "";
    commit(ev, [] {});
}

std::string Jitd::actor_of(const Caller& c) const {
    return fmt::format("user:{}(uid {})", c.user, c.uid);
}

bool Jitd::is_admin(const Caller& c) const {
    if (c.uid == 0 || contains(config_.admin_users, c.user)) return true;
    return std::any_of(c.groups.begin(), c.groups.end(),
                       [&](const std::string& g) { return contains(config_.admin_groups, g); });
}

void Jitd::require_admin(const Caller& c, std::string_view what) const {
    if (!is_admin(c)) {
        throw ApiError("forbidden",
                       fmt::format("{} is for administrators; {} is not one (admin_users / "
                                   "admin_groups in {})",
                                   what, c.user, config_.source));
    }
}

void Jitd::rate_limit(const Caller& c) {
    const int64_t now = now_();
    Bucket& b = buckets_[c.uid];
    if (b.at_ms == 0) b.tokens = config_.request_burst;
    b.tokens = std::min(config_.request_burst,
                        b.tokens + static_cast<double>(now - b.at_ms) / 1000.0 * config_.request_rate);
    b.at_ms = now;
    if (b.tokens < 1.0) {
        throw ApiError("rate_limited",
                       fmt::format("too many calls from {} (at most {} per second, burst {}): try "
                                   "again shortly",
                                   c.user, config_.request_rate, config_.request_burst));
    }
    b.tokens -= 1.0;
}

void Jitd::commit(const std::vector<AuditEvent>& events, const std::function<void()>& change) {
    // What an earlier failed commit could not say yet comes first.
    while (!unwritten_store_failures_.empty()) {
        audit_->append(unwritten_store_failures_.front(), now_());
        unwritten_store_failures_.erase(unwritten_store_failures_.begin());
    }
    std::vector<uint64_t> written;  // seqs of this commit's lines in the log
    AuditHead head = audit_->head();
    try {
        for (const AuditEvent& event : events) {
            const uint64_t seq = audit_->head().seq + 1;
            head = audit_->append(event, now_());
            written.push_back(seq);
        }
        store_->transaction([&] {
            change();
            store_->set_audit_head({head.seq, hex_of(head.hash)});
        });
    } catch (const std::exception& e) {
        if (written.empty()) throw;
        // The log holds lines for a change that is not stored: say so, so that
        // nobody reads them as done.
        ordered_json actions = ordered_json::array();
        for (const AuditEvent& event : events) actions.push_back(event.action);
        AuditEvent failed{"jitd", "store.failed", events.front().object, "failed", e.what(),
                          {{"seqs", written}, {"actions", actions}}};
        try {
            audit_->append(failed, now_());
        } catch (const std::exception&) {
            unwritten_store_failures_.push_back(std::move(failed));
        }
        throw;
    }
}

// A call jitd could not write down (a full or read-only disk, an I/O error):
// refused as a whole, with the cause.
ordered_json Jitd::storage_error(const json& request, const std::string& what) {
    log(fmt::format("cannot record {}: {}", request.value("op", "?"), what));
    return ordered_json{
        {"ok", false},
        {"error",
         {{"code", "storage"},
          {"message", fmt::format("jitd cannot record the call: {}. It is not acknowledged; make "
                                  "room on that filesystem, or repair it and restart jitd (reads "
                                  "still work)",
                                  what)}}}};
}

ordered_json Jitd::handle(const json& request, const Caller& caller) {
    pushed_.clear();  // sync_of_push() names this call's pushes only
    try {
        if (!request.is_object()) throw ApiError("bad_request", "a call is a JSON object with an 'op'");
        ordered_json out = dispatch(request, caller);
        ordered_json reply;
        reply["ok"] = true;
        for (auto& [k, v] : out.items()) reply[k] = v;
        return reply;
    } catch (const ApiError& e) {
        return ordered_json{{"ok", false}, {"error", {{"code", e.code}, {"message", e.what()}}}};
    } catch (const AuditError& e) {
        return storage_error(request, e.what());
    } catch (const StoreError& e) {
        return storage_error(request, e.what());
    } catch (const PolicyError& e) {
        return ordered_json{{"ok", false}, {"error", {{"code", "policy_error"}, {"message", e.what()}}}};
    } catch (const std::exception& e) {
        log(fmt::format("internal error in {}: {}", request.value("op", "?"), e.what()));
        return ordered_json{{"ok", false}, {"error", {{"code", "internal"}, {"message", e.what()}}}};
    }
}

ordered_json Jitd::dispatch(const json& req, const Caller& c) {
    const std::string op = str_field(req, "op", true);
    if (op == "status") return op_status(c);
    if (op == "ls_requests") return op_ls_requests(req, c);
    if (op == "ls_grants") return op_ls_grants(req, c);
    if (op == "service_ls") return op_service(req, c, op);
    if (op == "audit_tail") return op_audit_tail(req, c);
    if (op == "audit_verify") return op_audit_verify(c);
    if (op == "service_sync") return op_service_sync(req, c);
    // Everything below changes state: rate-limited per uid.
    rate_limit(c);
    if (op == "request") return op_request(req, c);
    if (op == "withdraw") return op_withdraw(req, c);
    if (op == "approve") return op_decide(req, c, true);
    if (op == "deny") return op_decide(req, c, false);
    if (op == "revoke") return op_revoke(req, c);
    if (op == "grant") return op_grant(req, c);
    if (op == "push") return op_push(req, c);
    static const std::set<std::string> kServiceOps = {"service_add", "service_rm", "backend_add",
                                                      "backend_rm", "backend_drain", "backend_weight"};
    if (kServiceOps.count(op)) return op_service(req, c, op);
    if (op == "policy_reload") {
        require_admin(c, "policy_reload");
        if (std::string why = reload_policy(actor_of(c)); !why.empty()) {
            throw ApiError("policy_error", why + " (the old policy stays in force)");
        }
        return {{"rules", config_.policy.rules().size()}};
    }
    throw ApiError("unknown_op",
                   fmt::format("unknown op '{}' (see docs/api.md)", op.substr(0, 40)));
}

ordered_json Jitd::op_status(const Caller& c) {
    ordered_json j;
    j["instance"] = config_.instance;
    j["jitd_pid"] = static_cast<int64_t>(getpid());
    j["uptime_ms"] = now_() - started_ms_;
    j["caller"] = {{"user", c.user}, {"uid", c.uid}, {"admin", is_admin(c)}};
    ordered_json lb;
    if (link_) {
        const PeerStatus& s = link_->status();
        lb["state_file"] = config_.state_path;
        lb["state_open"] = s.state_open;
        lb["attached"] = link_->attached();
        lb["epoch"] = fmt::format("{:016x}", s.epoch);
        lb["heartbeat_age_ms"] =
            s.heartbeat_unix_ms ? now_() - static_cast<int64_t>(s.heartbeat_unix_ms) : -1;
        lb["pid"] = s.writer_pid;
        lb["problem"] = s.problem;
    } else {
        lb["state_open"] = false;
        lb["attached"] = false;
        lb["problem"] = "jitd runs without a data plane link";
    }
    j["jitlb"] = lb;
    ordered_json counts = ordered_json::object();
    for (const auto& st : {"scheduled", "ready", "pushed", "active", "superseded", "waiting"}) {
        counts[st] = store_->grants({st}, 1'000'000).size();
    }
    j["grants"] = counts;
    j["pending_requests"] = store_->requests({"pending"}, 1'000'000).size();
    j["services"] = store_->services().size();
    j["policy_rules"] = config_.policy.rules().size();
    j["issuer_key_id"] = issuer_ ? key_id_hex(issuer_->key_id()) : "";
    const AuditHead head = audit_->head();
    j["audit"] = {{"seq", head.seq}, {"hash", hex_of(head.hash)}};
    return j;
}

uint32_t Jitd::active_count(const std::string& user, std::string_view rule) const {
    uint32_t n = 0;
    for (const RequestRow& r : store_->requests({"pending", "approved"}, 1'000'000)) {
        if (r.user != user || r.rule != rule) continue;
        if (r.state == "pending") {
            ++n;
        } else if (const auto g = store_->grant(r.grant_id);
                   g && contains(kLiveGrantStates, g->state)) {
            ++n;
        }
    }
    return n;
}

std::optional<ServiceSpec> Jitd::load_service(const std::string& name) const {
    const auto row = store_->service(name);
    if (!row) return std::nullopt;
    std::string why;
    auto spec = service_from_json(json::parse(row->spec_json), &why);
    if (!spec) throw ApiError("internal", "stored service " + name + " is unreadable: " + why);
    return spec;
}

std::vector<std::string> Jitd::service_names() const {
    std::vector<std::string> names;
    for (const ServiceRow& r : store_->services()) names.push_back(r.name);
    return names;
}

ordered_json Jitd::op_request(const json& req, const Caller& c) {
    const std::string service = str_field(req, "service", true);
    if (!store_->service(service)) {
        const auto names = service_names();
        std::string known;
        for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
        throw ApiError("unknown_service", fmt::format("no service named '{}'; known: {}",
                                                      service.substr(0, 64),
                                                      known.empty() ? "(none)" : known));
    }
    std::string why;
    const auto source = parse_ip_prefix(str_field(req, "source", true), &why);
    if (!source) throw ApiError("bad_source", "source: " + why);
    const int64_t duration_ms = int_field(req, "duration_ms", 0);
    if (duration_ms <= 0) throw ApiError("bad_request", "duration_ms must be a positive number of ms");
    const int64_t now = now_();
    const int64_t start = int_field(req, "start_ms", now);
    if (start < now - config_.skew_ms) {
        throw ApiError("bad_request", fmt::format("start {} is in the past", format_unix_ms(start)));
    }
    const std::string reason = reason_field(req);

    RequestFacts facts;
    facts.user = c.user;
    facts.groups = c.groups;
    facts.service = service;
    facts.source = *source;
    facts.duration_ms = duration_ms;
    facts.start_offset_ms = std::max<int64_t>(0, start - now);
    facts.has_reason = !reason.empty();
    facts.active_count = [&](std::string_view rule) { return active_count(c.user, rule); };
    const Decision d = config_.policy.evaluate(facts);

    RequestRow r;
    r.id = new_request_id();
    r.user = c.user;
    r.uid = c.uid;
    r.service = service;
    r.source = format_ip_prefix(*source);
    r.duration_ms = duration_ms;
    r.not_before_ms = std::max(start, now);
    r.reason = reason;
    r.rule = d.rule;
    r.created_ms = now;
    r.updated_ms = now;
    AuditEvent ev{actor_of(c), "request.create", r.id, "", reason, ordered_json::object()};
    ev.detail = {{"service", service}, {"source", r.source}, {"duration_ms", duration_ms},
                 {"not_before_ms", r.not_before_ms}, {"rule", d.rule}, {"decision", d.code}};
    if (d.outcome == Outcome::refused) {
        r.state = "refused";
        r.decided_by = "policy";
        r.decision_reason = d.message;
        ev.result = "refused";
        ev.detail["why"] = d.message;
        commit(ev, [&] { store_->put_request(r); });
        throw ApiError(d.code, fmt::format("request refused: {}", d.message));
    }
    if (d.outcome == Outcome::needs_approval) {
        r.state = "pending";
        ev.result = "pending";
        commit(ev, [&] { store_->put_request(r); });
        ordered_json out;
        out["request"] = request_json(r);
        out["message"] = fmt::format("request {} waits for an approver (rule {})", r.id, d.rule);
        return out;
    }
    if (!issuer_) {
        throw ApiError("no_issuer_key", "jitd holds no issuer key (issuer_key in its config): it "
                                        "cannot sign grants");
    }
    r.state = "approved";
    r.decided_by = "policy";
    r.decision_reason = fmt::format("auto-approved by rule {}", d.rule);
    ev.result = "approved";
    const Issued g = sign_new_grant(r.id, c.user, service, *source, r.not_before_ms, duration_ms,
                                    "policy", r.decision_reason);
    r.grant_id = g.row.id;
    commit({ev, g.event}, [&] {
        store_->put_request(r);
        store_->put_grant(g.row);
    });
    push_after_commit();
    ordered_json out;
    out["request"] = request_json(r);
    out["grant"] = grant_json(store_->grant(g.row.id).value_or(g.row));
    return out;
}

Jitd::Issued Jitd::sign_new_grant(const std::string& request_id, const std::string& subject,
                                  const std::string& service, const IpPrefix& source,
                                  int64_t not_before_ms, int64_t duration_ms,
                                  const std::string& actor, const std::string& reason) {
    if (!issuer_) {
        throw ApiError("no_issuer_key", "jitd holds no issuer key (issuer_key in its config): it "
                                        "cannot sign grants");
    }
    if (not_before_ms < 0 || duration_ms <= 0 || not_before_ms > kMaxGrantTimeMs - duration_ms) {
        throw ApiError("bad_request", fmt::format("the grant would end after the year 9999 (start "
                                                  "{} ms, duration {} ms)",
                                                  not_before_ms, duration_ms));
    }
    Grant grant;
    grant.grant_id = random_grant_id();
    grant.subject = subject.substr(0, kMaxGrantSubjectLen);
    grant.source = source;
    grant.service = service;
    grant.not_before_ms = not_before_ms;
    grant.not_after_ms = not_before_ms + duration_ms;
    SignedGrant signed_grant{};
    if (const GrantFormatError e = sign_grant(grant, *issuer_, signed_grant); e != GrantFormatError::ok) {
        throw ApiError("bad_request",
                       fmt::format("cannot sign the grant: {}", grant_format_error_message(e)));
    }
    const int64_t now = now_();
    GrantRow g;
    g.id = grant_id_hex(grant.grant_id);
    g.request_id = request_id;
    g.subject = grant.subject;
    g.service = service;
    g.source = format_ip_prefix(source);
    g.not_before_ms = grant.not_before_ms;
    g.not_after_ms = grant.not_after_ms;
    g.text = grant_to_text(signed_grant);
    g.state = not_before_ms - config_.skew_ms > now ? "scheduled" : "ready";
    g.issued_by = actor;
    g.issued_ms = now;
    g.updated_ms = now;
    AuditEvent ev{actor, "grant.issue", g.id, "ok", reason, ordered_json::object()};
    ev.detail = {{"request", request_id}, {"subject", g.subject}, {"service", service},
                 {"source", g.source}, {"not_before_ms", g.not_before_ms},
                 {"not_after_ms", g.not_after_ms}, {"state", g.state},
                 {"issuer_key_id", key_id_hex(issuer_->key_id())}};
    return {std::move(g), std::move(ev)};
}

void Jitd::push_after_commit() {
    try {
        push_due_grants();
    } catch (const std::exception& e) {
        log(fmt::format("pushing grants: {} (the tick tries again)", e.what()));
    }
}

ordered_json Jitd::op_withdraw(const json& req, const Caller& c) {
    const std::string id = str_field(req, "id", true);
    auto r = store_->request(id);
    if (!r) throw ApiError("not_found", fmt::format("no request {}", id.substr(0, 40)));
    if (r->uid != static_cast<int64_t>(c.uid) && !is_admin(c)) {
        throw ApiError("forbidden", fmt::format("request {} is {}'s: only they (or an "
                                                "administrator) may withdraw it",
                                                id, r->user));
    }
    if (r->state != "pending" && r->state != "approved") {
        throw ApiError("conflict", fmt::format("request {} is {}: nothing to withdraw", id, r->state));
    }
    const std::string reason = reason_field(req);
    const std::string prior = r->state;
    r->state = "withdrawn";
    r->updated_ms = now_();
    AuditEvent ev{actor_of(c), "request.withdraw", id, "ok", reason, {{"was", prior}}};
    std::optional<GrantRow> g;
    if (!r->grant_id.empty()) g = store_->grant(r->grant_id);
    if (g && contains(kLiveGrantStates, g->state)) {
        // The request and its grant end together, or neither does.
        end_grant(*g, "revoked", RevokeReason::request_withdrawn, actor_of(c), "request withdrawn",
                  {ev}, [&] { store_->put_request(*r); });
    } else {
        commit(ev, [&] { store_->put_request(*r); });
    }
    return {{"request", request_json(*r)}};
}

ordered_json Jitd::op_decide(const json& req, const Caller& c, bool approve) {
    const std::string id = str_field(req, "id", true);
    auto r = store_->request(id);
    if (!r) throw ApiError("not_found", fmt::format("no request {}", id.substr(0, 40)));
    if (r->state != "pending") {
        throw ApiError("conflict", fmt::format("request {} is {}, not pending", id, r->state));
    }
    const std::string reason = reason_field(req);
    if (!approve && reason.empty()) {
        throw ApiError("reason_required", "a denial needs a reason (--reason)");
    }
    if (approve && !issuer_) {
        throw ApiError("no_issuer_key", "jitd holds no issuer key (issuer_key in its config): it "
                                        "cannot sign the grant an approval issues");
    }
    const ApprovalCheck check = config_.policy.may_approve(r->rule, c.user, c.groups, r->user);
    if (!check.allowed) {
        AuditEvent ev{actor_of(c), approve ? "request.approve" : "request.deny", id, "refused",
                      check.message, {{"code", check.code}}};
        commit(ev, [] {});
        throw ApiError(check.code, check.message);
    }
    r->decided_by = c.user;
    r->decision_reason = reason;
    r->updated_ms = now_();
    if (!approve) {
        r->state = "denied";
        commit({actor_of(c), "request.deny", id, "ok", reason, ordered_json::object()},
               [&] { store_->put_request(*r); });
        return {{"request", request_json(*r)}};
    }
    const int64_t now = now_();
    std::string why;
    const auto source = parse_ip_prefix(r->source, &why);
    r->state = "approved";
    // A request approved after its start runs for its duration from now.
    const Issued g = sign_new_grant(r->id, r->user, r->service, *source,
                                    std::max(now, r->not_before_ms), r->duration_ms, actor_of(c),
                                    reason);
    r->grant_id = g.row.id;
    commit({{actor_of(c), "request.approve", id, "ok", reason, ordered_json::object()}, g.event},
           [&] {
               store_->put_request(*r);
               store_->put_grant(g.row);
           });
    push_after_commit();
    return {{"request", request_json(*r)},
            {"grant", grant_json(store_->grant(g.row.id).value_or(g.row))}};
}

ordered_json Jitd::op_ls_requests(const json& req, const Caller& c) {
    const bool all = bool_field(req, "all");
    const auto rows = store_->requests(all ? std::vector<std::string>{} : kOpenRequestStates,
                                       static_cast<size_t>(std::clamp<int64_t>(int_field(req, "limit", 1000), 1, 100'000)));
    ordered_json list = ordered_json::array();
    const bool admin = is_admin(c);
    for (const RequestRow& r : rows) {
        const bool mine = r.uid == static_cast<int64_t>(c.uid);
        const bool approvable =
            r.state == "pending" && config_.policy.may_approve(r.rule, c.user, c.groups, r.user).allowed;
        if (admin || mine || approvable) list.push_back(request_json(r));
    }
    return {{"requests", list}};
}

ordered_json Jitd::op_ls_grants(const json& req, const Caller& c) {
    const bool all = bool_field(req, "all");
    const auto rows = store_->grants(all ? std::vector<std::string>{} : kLiveGrantStates,
                                     static_cast<size_t>(std::clamp<int64_t>(int_field(req, "limit", 1000), 1, 100'000)));
    ordered_json list = ordered_json::array();
    const bool admin = is_admin(c);
    for (const GrantRow& g : rows) {
        if (admin || g.subject == c.user) list.push_back(grant_json(g));
    }
    return {{"grants", list}};
}

void Jitd::end_grant(GrantRow g, const std::string& state, RevokeReason reason,
                     const std::string& actor, const std::string& why,
                     std::vector<AuditEvent> before, const std::function<void()>& also) {
    // A revocation goes to jitlb before it is written down: it only closes
    // access, so it need not wait for the disk (after a crash in between,
    // jitlb's revoked set refuses the grant when jitd pushes it again).
    if (state == "revoked" && link_) {
        const auto id = parse_grant_id_hex(g.id);
        const SendResult sent =
            link_->send(Revoke{*id, static_cast<uint64_t>(g.not_after_ms), reason});
        if (!sent.ok()) {
            unsent_revocations_.insert(g.id);
            log(fmt::format("revocation of {} not delivered yet ({}): sent again every tick, and "
                            "with everything else when jitlb (re)attaches",
                            g.id, ring_error_name(sent.ring.error)));
        }
    }
    g.state = state;
    g.state_reason = why;
    g.updated_ms = now_();
    AuditEvent ended{actor, state == "revoked" ? "grant.revoke" : "grant." + state, g.id, "ok",
                     why, {{"service", g.service}, {"source", g.source}}};
    before.push_back(std::move(ended));
    const auto change = [&] {
        if (also) also();
        store_->put_grant(g);
    };
    if (state != "revoked" || !link_) {
        commit(before, change);
        return;
    }
    const std::string sent_anyway =
        " (the revocation goes to jitlb all the same: the grant may end there before jitd "
        "records it)";
    try {
        commit(before, change);
    } catch (const AuditError& e) {
        throw StoreError(e.what() + sent_anyway);
    } catch (const StoreError& e) {
        throw StoreError(e.what() + sent_anyway);
    }
}

ordered_json Jitd::op_revoke(const json& req, const Caller& c) {
    const std::string id = str_field(req, "grant_id", true);
    auto g = store_->grant(id);
    if (!g) throw ApiError("not_found", fmt::format("no grant {}", id.substr(0, 40)));
    if (!is_admin(c) && g->subject != c.user) {
        throw ApiError("forbidden", fmt::format("grant {} is {}'s: only they or an administrator "
                                                "may revoke it",
                                                id, g->subject));
    }
    if (!contains(kLiveGrantStates, g->state)) {
        throw ApiError("conflict", fmt::format("grant {} is already {}", id, g->state));
    }
    std::string reason = reason_field(req);
    if (reason.empty()) reason = "revoked by " + c.user;
    end_grant(*g, "revoked", RevokeReason::by_operator, actor_of(c), reason);
    return {{"grant", grant_json(*store_->grant(id))}};
}

ordered_json Jitd::op_grant(const json& req, const Caller& c) {
    require_admin(c, "grant (a direct grant without a request)");
    const std::string service = str_field(req, "service", true);
    if (!store_->service(service)) {
        throw ApiError("unknown_service", fmt::format("no service named '{}'", service.substr(0, 64)));
    }
    std::string why;
    const auto source = parse_ip_prefix(str_field(req, "source", true), &why);
    if (!source) throw ApiError("bad_source", "source: " + why);
    const int64_t duration_ms = int_field(req, "duration_ms", 0);
    if (duration_ms <= 0) throw ApiError("bad_request", "duration_ms must be a positive number of ms");
    if (duration_ms > config_.max_grant_ms) {
        throw ApiError("duration_too_long",
                       fmt::format("duration must be positive and at most {} (max_grant)",
                                   format_duration_ms(config_.max_grant_ms)));
    }
    const int64_t now = now_();
    const int64_t start = int_field(req, "start_ms", now);
    if (start < now - config_.skew_ms) {
        throw ApiError("bad_request", fmt::format("start {} is in the past", format_unix_ms(start)));
    }
    std::string subject = str_field(req, "subject", false);
    if (subject.empty()) subject = c.user;
    const std::string reason = reason_field(req);
    const Issued g = sign_new_grant("", subject, service, *source, std::max(start, now),
                                    duration_ms, actor_of(c), reason);
    commit(g.event, [&] { store_->put_grant(g.row); });
    push_after_commit();
    return {{"grant", grant_json(store_->grant(g.row.id).value_or(g.row))}};
}

ordered_json Jitd::op_push(const json& req, const Caller& c) {
    require_admin(c, "push (a grant signed elsewhere)");
    std::string text = str_field(req, "text", true);
    if (!text.empty() && text.back() == '\n') text.pop_back();
    SignedGrant bytes{};
    if (const GrantFormatError e = grant_from_text(text, bytes); e != GrantFormatError::ok) {
        throw ApiError("bad_grant", fmt::format("not a grant: {}", grant_format_error_message(e)));
    }
    ParsedSignedGrant parsed;
    parse_signed_grant(bytes, parsed);
    const Grant& grant = parsed.grant;
    const int64_t now = now_();
    if (grant.not_after_ms <= now) throw ApiError("expired", "the grant has already expired");
    const std::string id = grant_id_hex(grant.grant_id);
    if (const auto old = store_->grant(id)) {
        if (old->text == text) return {{"grant", grant_json(*old)}, {"message", "already known"}};
        throw ApiError("conflict", fmt::format("another grant with id {} is known", id));
    }
    GrantRow g;
    g.id = id;
    g.subject = grant.subject;
    g.service = grant.service;
    g.source = format_ip_prefix(grant.source);
    g.not_before_ms = grant.not_before_ms;
    g.not_after_ms = grant.not_after_ms;
    g.text = text;
    g.state = grant.not_before_ms - config_.skew_ms > now ? "scheduled" : "ready";
    g.issued_by = actor_of(c);
    g.issued_ms = now;
    g.updated_ms = now;
    AuditEvent ev{actor_of(c), "grant.import", id, "ok", reason_field(req),
                  {{"service", g.service}, {"source", g.source}, {"subject", g.subject},
                   {"issuer_key_id", key_id_hex(grant.issuer_key_id)},
                   {"not_after_ms", g.not_after_ms}}};
    commit(ev, [&] { store_->put_grant(g); });
    push_after_commit();
    return {{"grant", grant_json(store_->grant(id).value_or(g))}};
}

void Jitd::forget_outcomes() {
    command_outcomes_.clear();
    randombytes_buf(&sync_session_, sizeof sync_session_);
}

bool Jitd::send_tracked(const Message& message, SendResult* result) {
    const SendResult sent = link_->send(message);
    if (sent.ok()) pushed_.push_back(sent.ring.sequence);
    if (result != nullptr) *result = sent;
    return sent.ok();
}

ordered_json Jitd::sync_of_push() const {
    ordered_json j;
    j["session"] = fmt::format("{:016x}", sync_session_);
    j["sequences"] = pushed_;
    j["jitlb_attached"] = link_ != nullptr && link_->attached();
    return j;
}

// Whether jitlb has applied the commands a service call pushed: "applied",
// "rejected" (with jitlb's reason), "pending", or "resent" when jitlb restarted
// or re-attached since (it was sent everything again; the sequences no longer
// name anything).
ordered_json Jitd::op_service_sync(const json& req, const Caller& c) {
    require_admin(c, "service_sync");
    const std::string session = str_field(req, "session", true);
    if (!req.contains("sequences") || !req.at("sequences").is_array() || req.at("sequences").size() > 16) {
        throw ApiError("bad_request", "'sequences' must be an array of at most 16 command sequences");
    }
    if (session != fmt::format("{:016x}", sync_session_)) {
        return {{"state", "resent"},
                {"detail", "jitd or jitlb restarted, or jitlb re-attached, since: jitlb was sent every "
                           "service again"}};
    }
    std::string state = "applied", detail;
    for (const auto& v : req.at("sequences")) {
        if (!v.is_number_unsigned()) throw ApiError("bad_request", "a command sequence is a number");
        const auto it = command_outcomes_.find(v.get<uint64_t>());
        if (it == command_outcomes_.end()) {
            state = "pending";
        } else if (!it->second.empty()) {
            return {{"state", "rejected"}, {"detail", it->second}};
        }
    }
    return {{"state", state}, {"detail", detail}};
}

bool Jitd::push_service(const ServiceSpec& spec) {
    if (!link_) return false;
    for (const Message& m : {Message{service_set_of(spec)}, Message{backend_set_of(spec)}}) {
        SendResult sent;
        if (!send_tracked(m, &sent)) {
            // Pushed again, with everything else, once jitlb is attached.
            reconcile_pending_ = true;
            log(fmt::format("service {} not pushed yet ({}): it is pushed when jitlb attaches",
                            spec.name, sent.message.ok() ? std::string(ring_error_name(sent.ring.error))
                                                         : describe_message_fault(sent.message)));
            return false;
        }
    }
    return true;
}

ordered_json Jitd::op_service(const json& req, const Caller& c, const std::string& op) {
    if (op == "service_ls") {
        ordered_json list = ordered_json::array();
        for (const ServiceRow& r : store_->services()) list.push_back(ordered_json::parse(r.spec_json));
        return {{"services", list}};
    }
    require_admin(c, op);
    std::string why;
    const std::string reason = reason_field(req);
    if (op == "service_add") {
        if (!req.contains("service")) throw ApiError("bad_request", "'service' is required");
        auto spec = service_from_json(req.at("service"), &why);
        if (!spec) throw ApiError("bad_service", why);
        const bool replace = bool_field(req, "replace");
        if (store_->service(spec->name) && !replace) {
            throw ApiError("conflict", fmt::format("service {} exists (replace it with --replace)", spec->name));
        }
        const std::string text = service_to_json(*spec).dump();
        commit({actor_of(c), "service.set", spec->name, "ok", reason, {{"service", service_to_json(*spec)}}},
               [&] { store_->put_service({spec->name, text}); });
        push_service(*spec);
        return {{"service", service_to_json(*spec)}, {"sync", sync_of_push()}};
    }
    const std::string name = str_field(req, "service", true);
    auto spec = load_service(name);
    if (!spec) {
        std::string known;
        for (const auto& n : service_names()) known += (known.empty() ? "" : ", ") + n;
        throw ApiError("unknown_service", fmt::format("no service named '{}'; known: {}",
                                                      name.substr(0, 64), known.empty() ? "(none)" : known));
    }
    if (op == "service_rm") {
        commit({actor_of(c), "service.delete", name, "ok", reason, ordered_json::object()},
               [&] { store_->delete_service(name); });
        if (link_) send_tracked(ServiceDelete{name});
        return {{"deleted", name}, {"sync", sync_of_push()}};
    }
    ServiceSpec next = *spec;
    std::string action;
    if (op == "backend_add") {
        if (!req.contains("backend")) throw ApiError("bad_request", "'backend' is required");
        auto b = backend_from_json(req.at("backend"), &why);
        if (!b) throw ApiError("bad_backend", why);
        for (const auto& e : next.backends) {
            if (e.id == b->id) throw ApiError("conflict", fmt::format("service {} has a backend {} already", name, b->id));
        }
        next.backends.push_back(*b);
        action = "backend.add";
    } else {
        const std::string id = str_field(req, "id", true);
        auto it = std::find_if(next.backends.begin(), next.backends.end(),
                               [&](const BackendSpec& b) { return b.id == id; });
        if (it == next.backends.end()) {
            throw ApiError("not_found", fmt::format("service {} has no backend {}", name, id.substr(0, 64)));
        }
        if (op == "backend_rm") {
            next.backends.erase(it);
            action = "backend.remove";
        } else if (op == "backend_drain") {
            it->draining = !bool_field(req, "undrain");
            action = it->draining ? "backend.drain" : "backend.undrain";
        } else if (op == "backend_weight") {
            const int64_t w = int_field(req, "weight", 0);
            if (w < 1 || w > 65535) throw ApiError("bad_request", "weight must be 1..65535 (drain a backend to stop new flows)");
            it->weight = static_cast<uint32_t>(w);
            action = "backend.weight";
        } else {
            throw ApiError("unknown_op", fmt::format("unknown op '{}'", op.substr(0, 40)));
        }
    }
    if (std::string bad = check_service(next); !bad.empty()) throw ApiError("bad_service", bad);
    const std::string text = service_to_json(next).dump();
    commit({actor_of(c), action, name, "ok", reason, {{"backends", service_to_json(next)["backends"]}}},
           [&] { store_->put_service({name, text}); });
    push_service(next);
    return {{"service", service_to_json(next)}, {"sync", sync_of_push()}};
}

ordered_json Jitd::op_audit_tail(const json& req, const Caller& c) {
    require_admin(c, "audit_tail");
    const int64_t n = std::clamp<int64_t>(int_field(req, "lines", 20), 1, 10'000);
    std::ifstream in(config_.audit_log);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) {
        lines.push_back(std::move(line));
        if (lines.size() > static_cast<size_t>(n)) lines.erase(lines.begin());
    }
    ordered_json list = ordered_json::array();
    for (const auto& l : lines) list.push_back(l);
    return {{"lines", list}};
}

ordered_json Jitd::op_audit_verify(const Caller& c) {
    require_admin(c, "audit_verify");
    std::optional<AuditHead> expected;
    if (const auto head = store_->audit_head()) {
        if (const auto hash = parse_audit_hash_hex(head->hash_hex)) expected = AuditHead{head->seq, *hash};
    }
    // Checkpoints verify against the audit public key file (every key the log
    // was ever signed with, across rotations), else the current key's public half.
    std::optional<TrustedIssuers> keys;
    if (!config_.audit_public_keys.empty()) {
        keys.emplace();
        if (const KeyFileError e = read_public_key_file(config_.audit_public_keys, *keys); !e.ok()) {
            throw ApiError("audit_keys", e.message);
        }
    } else if (!config_.audit_key.empty()) {
        std::optional<IssuerSecretKey> key;
        if (read_secret_key_file(config_.audit_key, key).ok() && key) {
            keys.emplace();
            keys->add(key->public_key(), "audit key");
        }
    }
    const AuditVerifyReport rep = verify_audit_log(config_.audit_log, keys ? &*keys : nullptr, expected);
    ordered_json j;
    j["verified"] = rep.ok;
    j["lines"] = rep.lines;
    j["checkpoints"] = rep.checkpoints;
    j["first_bad_line"] = rep.first_bad_line;
    j["signatures_verified"] = rep.signatures_verified;
    j["problem"] = rep.problem;
    j["head"] = format_audit_head(rep.head);
    return j;
}

std::string Jitd::reload_policy(const std::string& actor) {
    try {
        Policy next = config_.policy_file.empty()
                          ? load_jitd_config(config_.source).policy
                          : load_policy_file(config_.policy_file);
        const size_t rules = next.rules().size();
        config_.policy = std::move(next);
        commit({actor, "policy.reload", config_.policy_file.empty() ? config_.source : config_.policy_file,
                "ok", "", {{"rules", rules}}},
               [] {});
        return "";
    } catch (const std::exception& e) {
        commit({actor, "policy.reload", config_.policy_file.empty() ? config_.source : config_.policy_file,
                "refused", e.what(), ordered_json::object()},
               [] {});
        return e.what();
    }
}

void Jitd::reconcile(const std::string& why) {
    if (!link_) return;
    reconcile_pending_ = false;  // set again by any send that fails below
    log(fmt::format("reconciling with jitlb: {}", why));
    for (const ServiceRow& r : store_->services()) {
        if (auto spec = load_service(r.name)) push_service(*spec);
    }
    const int64_t now = now_();
    size_t revocations = 0, grants = 0;
    for (const GrantRow& g : store_->grants({"revoked"}, 1'000'000)) {
        if (g.not_after_ms <= now) continue;
        if (link_->send(Revoke{*parse_grant_id_hex(g.id), static_cast<uint64_t>(g.not_after_ms),
                               RevokeReason::reconcile})
                .ok()) {
            ++revocations;
        } else {
            reconcile_pending_ = true;
        }
    }
    for (GrantRow g : store_->grants({"pushed", "active", "superseded", "waiting"}, 1'000'000)) {
        g.state = "ready";
        store_->transaction([&] { store_->put_grant(g); });
        ++grants;
    }
    AuditEvent ev{"jitd", "jitlb.reconcile", config_.instance, "ok", why,
                  {{"services", store_->services().size()}, {"revocations", revocations},
                   {"grants", grants}}};
    commit(ev, [] {});
    push_due_grants();
}

void Jitd::push_due_grants() {
    const int64_t now = now_();
    for (GrantRow g : store_->grants({"scheduled"}, 1'000'000)) {
        if (g.not_before_ms - config_.skew_ms <= now) {
            g.state = "ready";
            g.updated_ms = now;
            store_->transaction([&] { store_->put_grant(g); });
        }
    }
    if (!link_ || !link_->attached()) return;
    for (GrantRow g : store_->grants({"ready"}, 1'000'000)) {
        if (g.not_after_ms <= now) continue;  // expire_due ends it
        SignedGrant bytes{};
        if (grant_from_text(g.text, bytes) != GrantFormatError::ok) continue;
        GrantPush push;
        push.push_sequence = static_cast<uint64_t>(++push_sequence_);
        push.grant.assign(bytes.begin(), bytes.end());
        const SendResult sent = link_->send(push);
        if (!sent.ok()) {
            log(fmt::format("grant {} not pushed yet: {}", g.id,
                            describe_push_result(sent.ring, "command ring")));
            break;
        }
        g.state = "pushed";
        g.updated_ms = now;
        const auto change = [&] {
            store_->put_grant(g);
            store_->set_counter("push_sequence", push_sequence_);
        };
        // The first push of a grant by this jitd is audited; re-pushes (after
        // a jitlb restart, a lost answer, a superseded renewal's retries) are
        // summed up by the jitlb.reconcile line or repeat an audited step.
        if (pushes_audited_.insert(g.id).second) {
            commit({"jitd", "grant.push", g.id, "ok", "",
                    {{"push_sequence", push_sequence_}, {"command_sequence", sent.ring.sequence}}},
                   change);
        } else {
            store_->transaction(change);
        }
    }
}

void Jitd::expire_due() {
    const int64_t now = now_();
    for (const GrantRow& g : store_->grants(kLiveGrantStates, 1'000'000)) {
        if (g.not_after_ms <= now) end_grant(g, "expired", RevokeReason::by_operator, "jitd", "not-after passed");
    }
    const int64_t timeout = config_.policy.pending_timeout_ms();
    for (RequestRow r : store_->requests({"pending"}, 1'000'000)) {
        if (r.created_ms + timeout <= now) {
            r.state = "expired";
            r.updated_ms = now;
            r.decided_by = "jitd";
            r.decision_reason = fmt::format("not answered within {}", format_duration_ms(timeout));
            commit({"jitd", "request.expire", r.id, "ok", r.decision_reason, ordered_json::object()},
                   [&] { store_->put_request(r); });
        }
    }
}

void Jitd::on_event(const DecodedMessage& event) {
    const int64_t now = now_();
    const auto record_outcome = [&](uint64_t sequence, std::string outcome) {
        command_outcomes_[sequence] = std::move(outcome);
        while (command_outcomes_.size() > kMaxOutcomes) command_outcomes_.erase(command_outcomes_.begin());
    };
    const auto update = [&](const GrantId& id, const std::function<void(GrantRow&)>& change,
                            const std::string& action, const std::string& result,
                            const std::string& reason, bool quiet_repeat = false) {
        auto g = store_->grant(grant_id_hex(id));
        if (!g) {
            commit({"jitlb", action, grant_id_hex(id), result, reason + " (a grant jitd does not know)",
                    ordered_json::object()},
                   [] {});
            return;
        }
        const std::string before = g->state_reason;
        change(*g);
        g->updated_ms = now;
        if (quiet_repeat && g->state_reason == before) {
            // The same answer to a retry (a superseded renewal waiting for its
            // turn): one audit line when it starts waiting, not one per retry.
            store_->transaction([&] { store_->put_grant(*g); });
            return;
        }
        commit({"jitlb", action, g->id, result, reason, {{"state", g->state}}},
               [&] { store_->put_grant(*g); });
    };
    std::visit(
        [&](const auto& e) {
            using T = std::decay_t<decltype(e)>;
            if constexpr (std::is_same_v<T, GrantActivated>) {
                update(e.grant_id, [](GrantRow& g) {
                    if (g.state == "pushed" || g.state == "ready" || g.state == "superseded" || g.state == "waiting") g.state = "active";
                }, "grant.activated", "ok", "");
            } else if constexpr (std::is_same_v<T, GrantRejected>) {
                const auto reason = e.reason;
                update(e.grant_id, [&](GrantRow& g) {
                    if (g.state != "pushed" && g.state != "ready") return;
                    if (reason == GrantRejectReason::superseded) {
                        g.state = "superseded";  // pushed again from the retry tick
                    } else if (reason == GrantRejectReason::unknown_service &&
                               store_->service(g.service)) {
                        // jitlb has not applied the service yet (it was restarting,
                        // or the service set is still on its way): pushed again
                        // from the retry tick, after reconcile re-sends the service.
                        g.state = "waiting";
                        reconcile_pending_ = true;
                    } else if (reason == GrantRejectReason::backlog_full) {
                        g.state = "ready";
                    } else {
                        g.state = "rejected";
                    }
                    g.state_reason = fmt::format("{}: {}", grant_reject_reason_name(reason), e.text);
                }, "grant.rejected", std::string(grant_reject_reason_name(reason)), e.text,
                       reason == GrantRejectReason::superseded ||
                           reason == GrantRejectReason::unknown_service);
            } else if constexpr (std::is_same_v<T, GrantRevoked>) {
                const auto reason = e.reason;
                update(e.grant_id, [&](GrantRow& g) {
                    if (contains(kLiveGrantStates, g.state)) {
                        g.state = "revoked";
                        g.state_reason = std::string(revoke_reason_name(reason));
                    }
                }, "grant.revoked_in_jitlb", "ok", std::string(revoke_reason_name(reason)));
            } else if constexpr (std::is_same_v<T, GrantExpired>) {
                update(e.grant_id, [](GrantRow& g) {
                    if (contains(kLiveGrantStates, g.state)) {
                        g.state = "expired";
                        g.state_reason = "not-after passed (jitlb)";
                    }
                }, "grant.expired_in_jitlb", "ok", "");
            } else if constexpr (std::is_same_v<T, DenialSample>) {
                // Rate-limited into the audit log: who knocked without a grant.
                if (now - denial_window_ms_ >= 1000) {
                    denial_window_ms_ = now;
                    denials_in_window_ = 0;
                }
                if (denials_in_window_ >= config_.denial_samples_per_s) {
                    ++denials_not_logged_;
                    return;
                }
                ++denials_in_window_;
                IpAddress src{e.family, e.source}, vip{e.family, e.vip};
                AuditEvent ev{"jitlb", "denial.sample", format_ip(src), std::string(denial_reason_name(e.reason)),
                              "", ordered_json::object()};
                ev.detail = {{"vip", format_ip(vip)}, {"vip_port", e.vip_port}, {"protocol", e.protocol},
                             {"service_id", e.service_id}, {"count", e.count},
                             {"not_logged_before", denials_not_logged_}};
                denials_not_logged_ = 0;
                commit(ev, [] {});
            } else if constexpr (std::is_same_v<T, ServiceApplied>) {
                record_outcome(e.command_sequence, "");
            } else if constexpr (std::is_same_v<T, CommandRejected>) {
                record_outcome(e.command_sequence, fmt::format("{}: {}", command_reject_reason_name(e.reason),
                                                               e.text));
                commit({"jitlb", "command.rejected", std::string(message_type_name(e.command_type)),
                        std::string(command_reject_reason_name(e.reason)), e.text,
                        {{"command_sequence", e.command_sequence}}},
                       [] {});
                log(fmt::format("jitlb rejected command {} ({}): {}", e.command_sequence,
                                command_reject_reason_name(e.reason), e.text));
            } else if constexpr (std::is_same_v<T, KeysReloaded>) {
                commit({"jitlb", "keys.reloaded", config_.instance, "ok", "",
                        {{"keys", e.key_count}, {"grants_ended", e.grants_ended}}},
                       [] {});
            }
        },
        event.message);
}

void Jitd::resend_unsent_revocations(int64_t now) {
    if (!link_) return;
    // Revocations the ring did not take: again until it does.
    for (auto it = unsent_revocations_.begin(); it != unsent_revocations_.end();) {
        const auto g = store_->grant(*it);
        if (!g || g->not_after_ms <= now ||
            link_->send(Revoke{*parse_grant_id_hex(g->id), static_cast<uint64_t>(g->not_after_ms),
                               RevokeReason::by_operator})
                .ok()) {
            it = unsent_revocations_.erase(it);
        } else {
            ++it;
        }
    }
}

void Jitd::tick() {
    const int64_t now = now_();
    pushed_.clear();  // what reconcile() pushes is no call's to wait for
    std::string error;
    // Each step on its own: one that cannot write (a full disk) must not keep
    // the others, revocations above all, from running.
    const auto step = [&](const std::function<void()>& body) {
        try {
            body();
        } catch (const std::exception& e) {
            if (error.empty()) error = e.what();
        }
    };
    if (!tick_error_.empty() && now - tick_error_ms_ < kTickRetryMs) {
        step([&] { resend_unsent_revocations(now); });  // sends only: they need no disk
        return;
    }
    if (link_) {
        PeerStatus s{};
        step([&] { s = link_->poll(); });
        // Events first: popping attaches our event consumer to a restarted
        // jitlb's new event ring, so its answers to the re-push below land.
        step([&] {
            link_->drain_events(
                1024, [&](const DecodedMessage& e) { on_event(e); },
                [&](const std::string& why) { log(why); });
        });
        // A new jitlb, a (re)attach, or a send that failed: everything jitlb
        // should hold goes again, once jitlb is attached to our ring (before
        // that, every push is refused as not_attached).
        if (s.epoch_changed) {
            forget_outcomes();
            reconcile_pending_ = true;
            reconcile_why_ = fmt::format("jitlb epoch {:016x} (pid {})", s.epoch, s.writer_pid);
        }
        if (!link_->attached()) {
            was_attached_ = false;
        } else {
            if (!was_attached_) {
                was_attached_ = true;
                forget_outcomes();
                reconcile_pending_ = true;
                if (reconcile_why_.empty()) reconcile_why_ = "jitlb attached to the command ring";
            }
            if (reconcile_pending_) {
                step([&] {
                    try {
                        reconcile(reconcile_why_.empty() ? "a push that failed earlier"
                                                         : reconcile_why_);
                    } catch (...) {
                        reconcile_pending_ = true;  // all of it again at the next tick
                        throw;
                    }
                    reconcile_why_.clear();
                });
            }
        }
        step([&] { resend_unsent_revocations(now); });
    }
    step([&] {
        if (now - last_retry_ms_ < kRetryMs) return;
        last_retry_ms_ = now;
        // Superseded renewals are pushed again until the entry they renew
        // ends; a push whose answer was lost (events dropped) is pushed again
        // (an identical re-push of a live grant is acknowledged at once).
        for (GrantRow g : store_->grants({"superseded", "waiting", "pushed"}, 1'000'000)) {
            if (g.state == "pushed" && now - g.updated_ms < kRetryMs) continue;
            g.state = "ready";
            store_->transaction([&] { store_->put_grant(g); });
        }
    });
    step([&] { push_due_grants(); });
    step([&] { expire_due(); });
    step([&] { audit_->checkpoint_if_due(now); });
    if (!error.empty()) {
        if (error != tick_error_) {
            log(fmt::format("cannot record what the tick found: {} (tried again every {} ms; calls "
                            "that change state fail meanwhile)",
                            error, kTickRetryMs));
        }
        tick_error_ = error;
        tick_error_ms_ = now;
    } else if (!tick_error_.empty()) {
        log("the tick records again");
        tick_error_.clear();
    }
}

void Jitd::shutdown() {
    try {
        commit({"jitd", "jitd.stop", config_.instance, "ok", "", ordered_json::object()}, [] {});
        audit_->checkpoint_now(now_());
    } catch (const std::exception& e) {
        log(fmt::format("could not record the stop: {}", e.what()));
    }
}

}  // namespace jitlb::control
