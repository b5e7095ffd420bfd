#include "store.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace jitlb::control {

namespace {

// A prepared statement, finalized on scope exit.
class Stmt {
  public:
    Stmt(sqlite3* db, const char* sql) : db_(db) {
        if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK) {
            throw StoreError(fmt::format("sqlite: cannot prepare '{}': {}", sql, sqlite3_errmsg(db)));
        }
    }
    ~Stmt() { sqlite3_finalize(stmt_); }
    Stmt(const Stmt&) = delete;
    Stmt& operator=(const Stmt&) = delete;

    Stmt& bind(int i, const std::string& v) {
        check(sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
        return *this;
    }
    Stmt& bind(int i, int64_t v) {
        check(sqlite3_bind_int64(stmt_, i, v));
        return *this;
    }
    // true while there is a row.
    bool step() {
        const int rc = sqlite3_step(stmt_);
        if (rc == SQLITE_ROW) return true;
        if (rc == SQLITE_DONE) return false;
        throw StoreError(fmt::format("sqlite: {}", sqlite3_errmsg(db_)));
    }
    std::string text(int col) const {
        const auto* p = sqlite3_column_text(stmt_, col);
        return p ? std::string(reinterpret_cast<const char*>(p),
                               static_cast<size_t>(sqlite3_column_bytes(stmt_, col)))
                 : std::string();
    }
    int64_t integer(int col) const { return sqlite3_column_int64(stmt_, col); }

  private:
    void check(int rc) {
        if (rc != SQLITE_OK) throw StoreError(fmt::format("sqlite bind: {}", sqlite3_errmsg(db_)));
    }
    sqlite3* db_;
    sqlite3_stmt* stmt_ = nullptr;
};

constexpr const char* kSchema = R"(
CREATE TABLE IF NOT EXISTS requests (
  id TEXT PRIMARY KEY, user TEXT NOT NULL, uid INTEGER NOT NULL, service TEXT NOT NULL,
  source TEXT NOT NULL, duration_ms INTEGER NOT NULL, not_before_ms INTEGER NOT NULL,
  reason TEXT NOT NULL, state TEXT NOT NULL, rule TEXT NOT NULL, created_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL, decided_by TEXT NOT NULL, decision_reason TEXT NOT NULL,
  grant_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS requests_state ON requests(state);
CREATE TABLE IF NOT EXISTS grants (
  id TEXT PRIMARY KEY, request_id TEXT NOT NULL, subject TEXT NOT NULL, service TEXT NOT NULL,
  source TEXT NOT NULL, not_before_ms INTEGER NOT NULL, not_after_ms INTEGER NOT NULL,
  text TEXT NOT NULL, state TEXT NOT NULL, state_reason TEXT NOT NULL, issued_by TEXT NOT NULL,
  issued_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS grants_state ON grants(state);
CREATE TABLE IF NOT EXISTS services (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
)";

std::string in_list(const std::vector<std::string>& states) {
    if (states.empty()) return "";
    std::string sql = " WHERE state IN (";
    for (size_t i = 0; i < states.size(); ++i) sql += i ? ",?" : "?";
    return sql + ")";
}

RequestRow read_request(const Stmt& s) {
    RequestRow r;
    r.id = s.text(0);
    r.user = s.text(1);
    r.uid = s.integer(2);
    r.service = s.text(3);
    r.source = s.text(4);
    r.duration_ms = s.integer(5);
    r.not_before_ms = s.integer(6);
    r.reason = s.text(7);
    r.state = s.text(8);
    r.rule = s.text(9);
    r.created_ms = s.integer(10);
    r.updated_ms = s.integer(11);
    r.decided_by = s.text(12);
    r.decision_reason = s.text(13);
    r.grant_id = s.text(14);
    return r;
}

GrantRow read_grant(const Stmt& s) {
    GrantRow g;
    g.id = s.text(0);
    g.request_id = s.text(1);
    g.subject = s.text(2);
    g.service = s.text(3);
    g.source = s.text(4);
    g.not_before_ms = s.integer(5);
    g.not_after_ms = s.integer(6);
    g.text = s.text(7);
    g.state = s.text(8);
    g.state_reason = s.text(9);
    g.issued_by = s.text(10);
    g.issued_ms = s.integer(11);
    g.updated_ms = s.integer(12);
    return g;
}

constexpr const char* kRequestCols =
    "id,user,uid,service,source,duration_ms,not_before_ms,reason,state,rule,created_ms,"
    "updated_ms,decided_by,decision_reason,grant_id";
constexpr const char* kGrantCols =
    "id,request_id,subject,service,source,not_before_ms,not_after_ms,text,state,state_reason,"
    "issued_by,issued_ms,updated_ms";

}  // namespace

Store::Store(const std::string& path, bool durable) : path_(path) {
    // Create it 0600 ourselves: sqlite would use the umask.
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        throw StoreError(fmt::format("{}: cannot open the state database for writing: {}", path,
                                     std::strerror(errno)));
    }
    ::close(fd);
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX,
                        nullptr) != SQLITE_OK) {
        const std::string why = db_ ? sqlite3_errmsg(db_) : "out of memory";
        sqlite3_close(db_);
        db_ = nullptr;
        throw StoreError(fmt::format("{}: cannot open the state database: {}", path, why));
    }
    sqlite3_busy_timeout(db_, 5000);
    exec("PRAGMA journal_mode=WAL");
    exec(durable ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=OFF");
    exec(kSchema);
}

Store::~Store() {
    sqlite3_close(db_);
}

void Store::exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
        const std::string why = err ? err : "unknown error";
        sqlite3_free(err);
        throw StoreError(fmt::format("{}: sqlite: {} (in '{:.60}')", path_, why, sql));
    }
}

void Store::transaction(const std::function<void()>& body) {
    exec("BEGIN IMMEDIATE");
    try {
        body();
    } catch (...) {
        sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
        throw;
    }
    try {
        exec("COMMIT");
    } catch (...) {
        // A COMMIT that fails (a full disk) may leave the transaction open:
        // end it, or the next call would find itself inside this one.
        if (sqlite3_get_autocommit(db_) == 0) {
            sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
        }
        throw;
    }
}

void Store::put_request(const RequestRow& r) {
    Stmt s(db_, fmt::format("INSERT OR REPLACE INTO requests ({}) VALUES "
                            "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                            kRequestCols)
                    .c_str());
    s.bind(1, r.id).bind(2, r.user).bind(3, r.uid).bind(4, r.service).bind(5, r.source);
    s.bind(6, r.duration_ms).bind(7, r.not_before_ms).bind(8, r.reason).bind(9, r.state);
    s.bind(10, r.rule).bind(11, r.created_ms).bind(12, r.updated_ms).bind(13, r.decided_by);
    s.bind(14, r.decision_reason).bind(15, r.grant_id);
    s.step();
}

std::optional<RequestRow> Store::request(const std::string& id) const {
    Stmt s(db_, fmt::format("SELECT {} FROM requests WHERE id = ?", kRequestCols).c_str());
    s.bind(1, id);
    if (!s.step()) return std::nullopt;
    return read_request(s);
}

std::vector<RequestRow> Store::requests(const std::vector<std::string>& states,
                                        size_t limit) const {
    Stmt s(db_, fmt::format("SELECT {} FROM requests{} ORDER BY created_ms DESC, id LIMIT ?",
                            kRequestCols, in_list(states))
                    .c_str());
    int i = 1;
    for (const auto& st : states) s.bind(i++, st);
    s.bind(i, static_cast<int64_t>(limit));
    std::vector<RequestRow> out;
    while (s.step()) out.push_back(read_request(s));
    return out;
}

void Store::put_grant(const GrantRow& g) {
    Stmt s(db_, fmt::format("INSERT OR REPLACE INTO grants ({}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                            kGrantCols)
                    .c_str());
    s.bind(1, g.id).bind(2, g.request_id).bind(3, g.subject).bind(4, g.service).bind(5, g.source);
    s.bind(6, g.not_before_ms).bind(7, g.not_after_ms).bind(8, g.text).bind(9, g.state);
    s.bind(10, g.state_reason).bind(11, g.issued_by).bind(12, g.issued_ms).bind(13, g.updated_ms);
    s.step();
}

std::optional<GrantRow> Store::grant(const std::string& id) const {
    Stmt s(db_, fmt::format("SELECT {} FROM grants WHERE id = ?", kGrantCols).c_str());
    s.bind(1, id);
    if (!s.step()) return std::nullopt;
    return read_grant(s);
}

std::vector<GrantRow> Store::grants(const std::vector<std::string>& states, size_t limit) const {
    Stmt s(db_, fmt::format("SELECT {} FROM grants{} ORDER BY issued_ms DESC, id LIMIT ?",
                            kGrantCols, in_list(states))
                    .c_str());
    int i = 1;
    for (const auto& st : states) s.bind(i++, st);
    s.bind(i, static_cast<int64_t>(limit));
    std::vector<GrantRow> out;
    while (s.step()) out.push_back(read_grant(s));
    return out;
}

void Store::put_service(const ServiceRow& row) {
    Stmt s(db_, "INSERT OR REPLACE INTO services (name, spec) VALUES (?, ?)");
    s.bind(1, row.name).bind(2, row.spec_json);
    s.step();
}

void Store::delete_service(const std::string& name) {
    Stmt s(db_, "DELETE FROM services WHERE name = ?");
    s.bind(1, name);
    s.step();
}

std::optional<ServiceRow> Store::service(const std::string& name) const {
    Stmt s(db_, "SELECT name, spec FROM services WHERE name = ?");
    s.bind(1, name);
    if (!s.step()) return std::nullopt;
    return ServiceRow{s.text(0), s.text(1)};
}

std::vector<ServiceRow> Store::services() const {
    Stmt s(db_, "SELECT name, spec FROM services ORDER BY name");
    std::vector<ServiceRow> out;
    while (s.step()) out.push_back({s.text(0), s.text(1)});
    return out;
}

void Store::set_audit_head(const AuditHeadRow& head) {
    set_counter("audit_seq", static_cast<int64_t>(head.seq));
    Stmt s(db_, "INSERT OR REPLACE INTO meta (key, value) VALUES ('audit_hash', ?)");
    s.bind(1, head.hash_hex);
    s.step();
}

std::optional<AuditHeadRow> Store::audit_head() const {
    Stmt s(db_, "SELECT value FROM meta WHERE key = 'audit_hash'");
    if (!s.step()) return std::nullopt;
    return AuditHeadRow{static_cast<uint64_t>(counter("audit_seq")), s.text(0)};
}

void Store::set_counter(const std::string& name, int64_t value) {
    Stmt s(db_, "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)");
    s.bind(1, name).bind(2, std::to_string(value));
    s.step();
}

int64_t Store::counter(const std::string& name) const {
    Stmt s(db_, "SELECT value FROM meta WHERE key = ?");
    s.bind(1, name);
    if (!s.step()) return 0;
    return std::stoll(s.text(0));
}

}  // namespace jitlb::control
