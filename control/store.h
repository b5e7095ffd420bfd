// jitd's durable state (docs/operations.md, "State"): requests, grants,
// services and the audit log's head, in SQLite (WAL, synchronous=FULL) in the
// state directory. A change is acknowledged to a caller only after its
// transaction commits, and the audit head (sequence, hash of the last line
// that recorded a change) is written in the same transaction as the change,
// so that a log cut back behind it is noticed at start.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace jitlb::control {

class StoreError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// Request states: pending -> approved | denied | refused | expired | withdrawn.
struct RequestRow {
    std::string id;  // 32 hex digits
    std::string user;
    int64_t uid = 0;
    std::string service;
    std::string source;  // canonical prefix text
    int64_t duration_ms = 0;
    int64_t not_before_ms = 0;  // requested start
    std::string reason;
    std::string state;
    std::string rule;  // policy rule that decided or must approve
    int64_t created_ms = 0;
    int64_t updated_ms = 0;
    std::string decided_by;  // approver / "policy" / "jitd"
    std::string decision_reason;
    std::string grant_id;  // once issued
};

// Grant states: scheduled (held until not-before - skew) -> ready (to push)
// -> pushed -> active | rejected | superseded or waiting (pushed again later) ->
// expired | revoked.
struct GrantRow {
    std::string id;  // 32 hex digits
    std::string request_id;  // "" for a direct grant or an imported one
    std::string subject;
    std::string service;
    std::string source;
    int64_t not_before_ms = 0;
    int64_t not_after_ms = 0;
    std::string text;  // the signed grant's text form
    std::string state;
    std::string state_reason;
    std::string issued_by;
    int64_t issued_ms = 0;
    int64_t updated_ms = 0;
};

struct ServiceRow {
    std::string name;
    std::string spec_json;  // ServiceSpec (service_spec.h) as JSON
};

struct AuditHeadRow {
    uint64_t seq = 0;
    std::string hash_hex;
};

class Store {
  public:
    // Opens or creates `path` (0600), WAL, synchronous FULL, the schema.
    // `durable` false (synchronous OFF) is for fuzzing only: a crash may then
    // lose acknowledged changes.
    explicit Store(const std::string& path, bool durable = true);
    ~Store();
    Store(const Store&) = delete;
    Store& operator=(const Store&) = delete;

    // Runs `body` in one IMMEDIATE transaction; commits when it returns,
    // rolls back when it throws (and rethrows).
    void transaction(const std::function<void()>& body);

    void put_request(const RequestRow& row);  // insert or replace
    std::optional<RequestRow> request(const std::string& id) const;
    // All, or only those in `states` (empty: all), newest first, at most `limit`.
    std::vector<RequestRow> requests(const std::vector<std::string>& states, size_t limit) const;

    void put_grant(const GrantRow& row);
    std::optional<GrantRow> grant(const std::string& id) const;
    std::vector<GrantRow> grants(const std::vector<std::string>& states, size_t limit) const;

    void put_service(const ServiceRow& row);
    void delete_service(const std::string& name);
    std::optional<ServiceRow> service(const std::string& name) const;
    std::vector<ServiceRow> services() const;

    void set_audit_head(const AuditHeadRow& head);
    std::optional<AuditHeadRow> audit_head() const;
    void set_counter(const std::string& name, int64_t value);
    int64_t counter(const std::string& name) const;

  private:
    void exec(const char* sql);
    sqlite3* db_ = nullptr;
    std::string path_;
};

}  // namespace jitlb::control
