// jitd's core, without the socket (jitd.cc) so that tests drive it directly:
// the API calls (docs/api.md), the request lifecycle (pending -> approved /
// denied / expired -> grant issued -> pushed -> activated or rejected ->
// expired / revoked), the audit trail of every step, and the tick that keeps
// jitlb in step (scheduled pushes, retries, events, expiry, reconciliation
// after a jitlb restart).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "audit_log.h"
#include "grant.h"
#include "issuer_keys.h"
#include "jitd_config.h"
#include "policy.h"
#include "region_link.h"
#include "store.h"

namespace jitlb::control {

// Who is calling, from SO_PEERCRED (nothing the caller says about itself is
// trusted).
struct Caller {
    uid_t uid = 0;
    gid_t gid = 0;
    std::string user;                 // name of uid, or "uid:N" when it has none
    std::vector<std::string> groups;  // names from getgrouplist(user, gid)
};

// The caller for a uid: its name and groups from the user database.
Caller caller_of(uid_t uid, gid_t gid);

// Calls answered with an error carry one of these codes (docs/api.md).
struct ApiError : std::runtime_error {
    ApiError(std::string code_, const std::string& message)
        : std::runtime_error(message), code(std::move(code_)) {}
    std::string code;
};

class Jitd {
  public:
    using Now = std::function<int64_t()>;  // Unix ms; tests shift it

    // `link` may be null (no data plane: grants wait in state ready).
    Jitd(JitdConfig config, std::optional<IssuerSecretKey> issuer, std::unique_ptr<Store> store,
         std::unique_ptr<AuditLog> audit, std::unique_ptr<RegionLink> link, Now now);

    // One call: {"op": "...", ...} -> {"ok": true, ...} or {"ok": false,
    // "error": {"code", "message"}}. Never throws.
    nlohmann::ordered_json handle(const nlohmann::json& request, const Caller& caller);

    // Every ~10 ms: region, events, pushes, expiry. Never throws: what it cannot
    // record (a full or read-only disk) it logs once and retries every second,
    // while revocations jitlb has not taken are sent again every tick.
    void tick();
    // A clean stop: records it and signs the log's tail (best effort).
    void shutdown();

    // SIGHUP and the policy_reload call: re-read the policy; a bad file keeps
    // the old one. Returns "" or why.
    std::string reload_policy(const std::string& actor);

    // Log lines (stderr) go through this; tests capture them.
    std::function<void(const std::string&)> log = [](const std::string&) {};

    const JitdConfig& config() const noexcept { return config_; }
    bool is_admin(const Caller& caller) const;

  private:
    using ordered_json = nlohmann::ordered_json;
    using json = nlohmann::json;

    ordered_json dispatch(const json& req, const Caller& caller);
    ordered_json storage_error(const json& request, const std::string& what);
    ordered_json op_status(const Caller& caller);
    ordered_json op_request(const json& req, const Caller& caller);
    ordered_json op_withdraw(const json& req, const Caller& caller);
    ordered_json op_decide(const json& req, const Caller& caller, bool approve);
    ordered_json op_ls_requests(const json& req, const Caller& caller);
    ordered_json op_ls_grants(const json& req, const Caller& caller);
    ordered_json op_revoke(const json& req, const Caller& caller);
    ordered_json op_grant(const json& req, const Caller& caller);
    ordered_json op_push(const json& req, const Caller& caller);
    ordered_json op_service(const json& req, const Caller& caller, const std::string& op);
    ordered_json op_audit_tail(const json& req, const Caller& caller);
    ordered_json op_audit_verify(const Caller& caller);
    ordered_json op_service_sync(const json& req, const Caller& caller);
    // What a service call's answer carries so the caller can wait for jitlb:
    // the sequences of the commands it pushed (see op_service_sync).
    ordered_json sync_of_push() const;

    void require_admin(const Caller& caller, std::string_view what) const;
    void rate_limit(const Caller& caller);
    // Appends the audit lines, then commits `change` with the new audit head in
    // one transaction: a change of several rows (a request and its grant) is
    // stored whole or not at all. When the commit fails after the lines were
    // written, a store.failed line says so (now, or before the next line).
    void commit(const std::vector<AuditEvent>& events, const std::function<void()>& change);
    void commit(const AuditEvent& event, const std::function<void()>& change) {
        commit(std::vector<AuditEvent>{event}, change);
    }
    // A signed grant for `request_id` (may be empty) and its grant.issue line,
    // not stored yet: the caller commits them with what else the call changes.
    struct Issued {
        GrantRow row;
        AuditEvent event;
    };
    Issued sign_new_grant(const std::string& request_id, const std::string& subject,
                          const std::string& service, const IpPrefix& source,
                          int64_t not_before_ms, int64_t duration_ms, const std::string& actor,
                          const std::string& reason);
    // After a call committed: push what is due; a failure here is the tick's to
    // retry, never the call's (it is acknowledged already).
    void push_after_commit();
    // Ends a live grant (revoked or expired) with its audit line, after the
    // `before` lines and together with `also` in one commit.
    void end_grant(GrantRow grant, const std::string& state, RevokeReason reason,
                   const std::string& actor, const std::string& why,
                   std::vector<AuditEvent> before = {}, const std::function<void()>& also = {});
    bool push_service(const ServiceSpec& spec);
    // A command for jitlb, its sequence kept in pushed_ for sync_of_push().
    bool send_tracked(const Message& message, SendResult* result = nullptr);
    void forget_outcomes();
    void reconcile(const std::string& why);
    void resend_unsent_revocations(int64_t now);
    void push_due_grants();
    void expire_due();
    void on_event(const DecodedMessage& event);
    uint32_t active_count(const std::string& user, std::string_view rule) const;
    std::optional<ServiceSpec> load_service(const std::string& name) const;
    std::vector<std::string> service_names() const;
    std::string actor_of(const Caller& caller) const;

    JitdConfig config_;
    std::optional<IssuerSecretKey> issuer_;
    std::unique_ptr<Store> store_;
    std::unique_ptr<AuditLog> audit_;
    std::unique_ptr<RegionLink> link_;
    Now now_;
    int64_t started_ms_ = 0;
    bool was_attached_ = false;
    bool reconcile_pending_ = false;  // jitlb must be sent everything again
    std::string reconcile_why_;
    int64_t last_retry_ms_ = 0;
    int64_t push_sequence_ = 0;
    // Service commands jitlb answered, by command sequence: "" applied, else why
    // it rejected the command. Sequences count per command-ring epoch, so the
    // map starts again (with a new sync_session_) when jitlb restarts or
    // re-attaches; it keeps the last kMaxOutcomes answers.
    std::map<uint64_t, std::string> command_outcomes_;
    uint64_t sync_session_ = 0;
    std::vector<uint64_t> pushed_;  // sequences the current call pushed
    static constexpr size_t kMaxOutcomes = 4096;
    struct Bucket {
        double tokens = 0;
        int64_t at_ms = 0;
    };
    std::map<uid_t, Bucket> buckets_;
    int64_t denial_window_ms_ = 0;
    uint32_t denials_in_window_ = 0;
    uint64_t denials_not_logged_ = 0;
    std::set<std::string> unsent_revocations_;  // grant ids whose Revoke the ring refused
    std::set<std::string> pushes_audited_;      // grant ids whose first push is in the audit log
    // store.failed lines not written yet (the log could not take them either).
    std::vector<AuditEvent> unwritten_store_failures_;
    // Why the last tick could not record something ("" when it could), and
    // when: a failing tick is retried after kTickRetryMs, not every 10 ms.
    std::string tick_error_;
    int64_t tick_error_ms_ = 0;
    static constexpr int64_t kRetryMs = 2'000;
    static constexpr int64_t kTickRetryMs = 1'000;
};

}  // namespace jitlb::control
