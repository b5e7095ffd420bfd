// The audit log (see audit_log.h for the format).
#include "audit_log.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <span>
#include <utility>

#include <fmt/format.h>

#include "duration.h"
#include "sodium_init.h"

namespace jitlb::control {

static_assert(crypto_generichash_BYTES == sizeof(AuditHash));
static_assert(sizeof(GrantSignature) == crypto_sign_BYTES);

namespace {

using ordered_json = nlohmann::ordered_json;

// The keys of a line, in their order.
constexpr std::array<std::string_view, 11> kKeys{"seq",    "time_ms", "time",   "actor",
                                                 "action", "object",  "result", "reason",
                                                 "detail", "prev",    "hash"};
// A line ends in  ,"hash":"<64 hex>"}  — its body is the line without it, plus "}".
constexpr std::string_view kHashKeyPrefix = ",\"hash\":\"";
constexpr size_t kHashHexSize = 2 * sizeof(AuditHash);
constexpr size_t kHashSuffixSize = kHashKeyPrefix.size() + kHashHexSize + 2;
static_assert(kHashSuffixSize == 75);
constexpr size_t kKeyIdHexSize = 2 * sizeof(IssuerKeyId);
constexpr size_t kSignatureHexSize = 2 * sizeof(GrantSignature);
constexpr size_t kReadChunk = 1 << 20;
// How much of a cut-off torn line the "audit.recovered" line quotes.
constexpr size_t kRemovedExcerptBytes = 200;

std::string errno_text(int err) {
    return std::strerror(err);
}

std::string dump_line(const ordered_json& j) {
    // Strings that are not UTF-8 get U+FFFD instead of losing the event; a
    // parsed line is UTF-8 already, so verification dumps the same bytes.
    return j.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
}

AuditHash blake2b(std::string_view bytes) {
    AuditHash hash{};
    crypto_generichash(hash.data(), hash.size(),
                       reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), nullptr,
                       0);
    return hash;
}

std::string to_hex(std::span<const uint8_t> bytes) {
    std::string hex(bytes.size() * 2 + 1, '\0');
    sodium_bin2hex(hex.data(), hex.size(), bytes.data(), bytes.size());
    hex.pop_back();  // the encoder's NUL
    return hex;
}

int lower_hex_value(char c) noexcept {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

// Exactly 2 * N lowercase hex digits.
template <size_t N>
bool from_lower_hex(std::string_view text, std::array<uint8_t, N>& out) noexcept {
    if (text.size() != 2 * N) return false;
    for (size_t i = 0; i < N; ++i) {
        const int hi = lower_hex_value(text[2 * i]);
        const int lo = lower_hex_value(text[2 * i + 1]);
        if (hi < 0 || lo < 0) return false;
        out[i] = static_cast<uint8_t>(hi << 4 | lo);
    }
    return true;
}

// The deepest nesting of arrays and objects outside strings. Checked before
// a line is parsed or dumped, because dump() recurses once per level.
size_t nesting_depth(std::string_view text) noexcept {
    size_t depth = 0;
    size_t deepest = 0;
    bool in_string = false;
    bool escaped = false;
    for (const char c : text) {
        if (in_string) {
            if (escaped) {
                escaped = false;
            } else if (c == '\\') {
                escaped = true;
            } else if (c == '"') {
                in_string = false;
            }
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            deepest = std::max(deepest, ++depth);
        } else if ((c == ']' || c == '}') && depth > 0) {
            --depth;
        }
    }
    return deepest;
}

// A JSON value for a message: its dump, cut short.
std::string quote_value(const ordered_json& value) {
    std::string text = dump_line(value);
    if (text.size() > 60) text = text.substr(0, 57) + "...";
    return text;
}

void put_u64_le(uint8_t* out, uint64_t value) noexcept {
    for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(value >> (8 * i));
}

ssize_t pread_retry(int fd, char* buf, size_t size, uint64_t offset) noexcept {
    ssize_t n;
    do {
        n = ::pread(fd, buf, size, static_cast<off_t>(offset));
    } while (n < 0 && errno == EINTR);
    return n;
}

// Writes all of `bytes` (write(2) may write less, e.g. on a full disk);
// 0 or the errno of the failure.
int write_all(int fd, std::string_view bytes) noexcept {
    while (!bytes.empty()) {
        const ssize_t n = ::write(fd, bytes.data(), bytes.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (n == 0) return EIO;
        bytes.remove_prefix(static_cast<size_t>(n));
    }
    return 0;
}

// --- reading a log file line by line ------------------------------------------------

struct FileLine {
    std::string_view text;  // without the '\n'; valid until the next next()
    uint64_t offset = 0;    // of the line's first byte in the file
    bool terminated = false;
    // Longer than kMaxAuditLineBytes: `text` is its first kMaxAuditLineBytes + 1
    // bytes and the rest of it is skipped.
    bool overlong = false;
};

// Reads a file from its start in chunks, so that a log of any size is read in
// bounded memory.
class FileLines {
  public:
    FileLines(int fd, const std::string& path) : fd_(fd), path_(path) {}

    bool next(FileLine& out) {
        for (;;) {
            if (skipping_) {
                const size_t newline = buf_.find('\n', pos_);
                if (newline == std::string::npos) {
                    buf_offset_ += buf_.size();
                    buf_.clear();
                    pos_ = 0;
                    if (eof_ || !fill()) return false;
                    continue;
                }
                pos_ = newline + 1;
                skipping_ = false;
            }
            const std::string_view view(buf_);
            const size_t newline = buf_.find('\n', pos_);
            if (newline != std::string::npos) {
                out = FileLine{view.substr(pos_, newline - pos_), buf_offset_ + pos_, true, false};
                pos_ = newline + 1;
                return true;
            }
            const size_t pending = buf_.size() - pos_;
            if (pending > kMaxAuditLineBytes) {
                out = FileLine{view.substr(pos_, kMaxAuditLineBytes + 1), buf_offset_ + pos_, false,
                               true};
                skipping_ = true;
                return true;
            }
            if (eof_) {
                if (pending == 0) return false;
                out = FileLine{view.substr(pos_), buf_offset_ + pos_, false, false};
                pos_ = buf_.size();
                return true;
            }
            buf_.erase(0, pos_);
            buf_offset_ += pos_;
            pos_ = 0;
            fill();
        }
    }

  private:
    // Appends the next chunk of the file to buf_; false at the end of the file.
    bool fill() {
        const size_t old_size = buf_.size();
        buf_.resize(old_size + kReadChunk);
        const ssize_t n =
            pread_retry(fd_, buf_.data() + old_size, kReadChunk, buf_offset_ + old_size);
        if (n < 0) {
            const int err = errno;
            buf_.resize(old_size);
            throw AuditError(fmt::format("audit log {}: read failed at byte {}: {}", path_,
                                         buf_offset_ + old_size, errno_text(err)));
        }
        buf_.resize(old_size + static_cast<size_t>(n));
        if (n == 0) eof_ = true;
        return n > 0;
    }

    int fd_;
    const std::string& path_;
    std::string buf_;
    size_t pos_ = 0;           // next unread byte of buf_
    uint64_t buf_offset_ = 0;  // file offset of buf_[0]
    bool eof_ = false;
    bool skipping_ = false;  // inside an overlong line
};

// --- checking the chain ----------------------------------------------------------------

// Checks lines one at a time, in order, and stops at the first bad one: what
// verification, open() and the fuzz target share.
class ChainChecker {
  public:
    ChainChecker(const TrustedIssuers* keys, std::optional<AuditHead> expected)
        : keys_(keys), expected_(expected) {}

    // The next line, without its '\n'. False, with the fault in report(), when
    // it is bad; no line may follow then.
    bool add(std::string_view line) {
        const uint64_t n = report_.lines + 1;
        if (line.size() > kMaxAuditLineBytes) return too_long();
        if (line.empty()) {
            return fail(AuditFault::not_json, n,
                        fmt::format("line {}: empty (an audit line is one JSON object)", n));
        }
        if (nesting_depth(line) > kMaxAuditNesting) {
            return fail(AuditFault::bad_line, n,
                        fmt::format("line {}: arrays and objects nested more than {} deep", n,
                                    kMaxAuditNesting));
        }
        const ordered_json j = ordered_json::parse(line.begin(), line.end(), nullptr, false);
        if (j.is_discarded()) {
            return fail(AuditFault::not_json, n,
                        fmt::format("line {}: not valid JSON (the line was damaged, or something "
                                    "other than jitd wrote to the log)",
                                    n));
        }
        std::string problem = check_fields(j);
        if (!problem.empty()) {
            return fail(AuditFault::bad_line, n, fmt::format("line {}: {}", n, problem));
        }
        if (dump_line(j) != line) {
            return fail(AuditFault::not_canonical, n,
                        fmt::format("line {}: not in the form jitd writes (blanks, key order, "
                                    "escapes or number forms differ): the line was rewritten",
                                    n));
        }
        const uint64_t seq = j["seq"].get<uint64_t>();
        const uint64_t time_ms = j["time_ms"].get<uint64_t>();
        AuditHash prev{};
        AuditHash hash{};
        from_lower_hex(j["prev"].get_ref<const std::string&>(), prev);
        from_lower_hex(j["hash"].get_ref<const std::string&>(), hash);

        // The line is canonical, so it ends in the hash suffix.
        const AuditHash computed = *audit_line_hash(line);
        if (computed != hash) {
            return fail(AuditFault::hash, n,
                        fmt::format("line {}: hash does not match the line's content (its body "
                                    "hashes to {}): the line was edited after it was written",
                                    n, audit_hash_hex(computed)));
        }
        if (seq != n) {
            return fail(AuditFault::seq, n,
                        fmt::format("line {}: seq is {}, expected {}: a line was removed, "
                                    "inserted or reordered at or before this line",
                                    n, seq, n));
        }
        if (prev != report_.head.hash) {
            if (n == 1) {
                return fail(AuditFault::prev, n,
                            "line 1: prev is not 64 zeros, so line 1 is not the first line "
                            "written: the start of the log was cut off");
            }
            return fail(AuditFault::prev, n,
                        fmt::format("line {}: prev does not match the hash of line {}: line {} "
                                    "was edited (and its hash recomputed), or this line comes "
                                    "from elsewhere",
                                    n, n - 1, n - 1));
        }
        if (j["action"].get_ref<const std::string&>() == kAuditCheckpointAction) {
            if (!check_checkpoint(j["detail"], n, time_ms, prev)) return false;
        }
        if (expected_ && expected_->seq == seq && expected_->hash != hash) {
            return fail(AuditFault::head_mismatch, n,
                        fmt::format("line {}: hash {} is not the stored head's hash {}: the log "
                                    "was rewritten from this line or earlier, or the stored head "
                                    "belongs to another log",
                                    n, audit_hash_hex(hash), audit_hash_hex(expected_->hash)));
        }
        report_.lines = n;
        report_.head = AuditHead{seq, hash};
        return true;
    }

    // A line longer than kMaxAuditLineBytes (the file reader does not keep it).
    bool too_long() {
        const uint64_t n = report_.lines + 1;
        return fail(AuditFault::bad_line, n,
                    fmt::format("line {}: longer than the {} bytes an audit line may have", n,
                                kMaxAuditLineBytes));
    }

    // A last line without '\n'.
    bool torn() {
        const uint64_t n = report_.lines + 1;
        return fail(AuditFault::torn, n,
                    fmt::format("line {}: no newline at its end: a write was cut short (jitd "
                                "cuts such a line off, and records the cut, when it next opens "
                                "the log)",
                                n));
    }

    // After the last line: is the expected head in the log?
    bool finish() {
        if (!expected_ || report_.head.seq >= expected_->seq) return true;
        const uint64_t n = report_.lines + 1;
        return fail(AuditFault::truncated, n,
                    fmt::format("line {}: missing: the log ends after line {} but the stored head "
                                "is line {} ({}): the tail was cut off, or the log was replaced "
                                "by an older copy",
                                n, report_.lines, expected_->seq, audit_hash_hex(expected_->hash)));
    }

    const AuditVerifyReport& report() const noexcept { return report_; }
    uint64_t last_checkpoint_seq() const noexcept { return last_checkpoint_seq_; }
    uint64_t last_checkpoint_ms() const noexcept { return last_checkpoint_ms_; }

  private:
    bool fail(AuditFault fault, uint64_t line, std::string problem) {
        report_.ok = false;
        report_.fault = fault;
        report_.first_bad_line = line;
        report_.problem = std::move(problem);
        return false;
    }

    // What is wrong with the keys and value types, or "".
    static std::string check_fields(const ordered_json& j) {
        if (!j.is_object()) return fmt::format("a JSON {}, not an object", j.type_name());
        bool keys_match = j.size() == kKeys.size();
        if (keys_match) {
            size_t i = 0;
            for (const auto& item : j.items()) keys_match = keys_match && item.key() == kKeys[i++];
        }
        if (!keys_match) {
            std::string found;
            for (const auto& item : j.items()) {
                found += found.empty() ? "" : ",";
                found += item.key();
            }
            return fmt::format(
                "keys are {}; an audit line has exactly seq,time_ms,time,actor,"
                "action,object,result,reason,detail,prev,hash in that order",
                found);
        }
        const ordered_json& seq = j["seq"];
        if (!seq.is_number_unsigned()) {
            return fmt::format("seq is {}, not a whole number", quote_value(seq));
        }
        const ordered_json& time_ms = j["time_ms"];
        if (!time_ms.is_number_unsigned() ||
            time_ms.get<uint64_t>() > static_cast<uint64_t>(kMaxAuditTimeMs)) {
            return fmt::format("time_ms is {}, not Unix ms in 0..{}", quote_value(time_ms),
                               kMaxAuditTimeMs);
        }
        const ordered_json& time = j["time"];
        const std::string expected_time = format_unix_ms(time_ms.get<int64_t>());
        if (!time.is_string() || time.get_ref<const std::string&>() != expected_time) {
            return fmt::format("time is {}, but time_ms {} is \"{}\"", quote_value(time),
                               time_ms.get<uint64_t>(), expected_time);
        }
        for (const char* key : {"actor", "action", "object", "result", "reason"}) {
            if (!j[key].is_string())
                return fmt::format("{} is {}, not a string", key, quote_value(j[key]));
        }
        if (j["action"].get_ref<const std::string&>().empty()) return "action is empty";
        if (!j["detail"].is_object()) {
            return fmt::format("detail is {}, not an object", quote_value(j["detail"]));
        }
        for (const char* key : {"prev", "hash"}) {
            const ordered_json& value = j[key];
            AuditHash unused{};
            if (!value.is_string() ||
                !from_lower_hex(value.get_ref<const std::string&>(), unused)) {
                return fmt::format("{} is {}, not 64 lowercase hex digits", key,
                                   quote_value(value));
            }
        }
        return {};
    }

    bool check_checkpoint(const ordered_json& detail, uint64_t n, uint64_t time_ms,
                          const AuditHash& prev) {
        IssuerKeyId key_id{};
        GrantSignature sig{};
        const bool form_ok =
            detail.size() == 2 && detail.begin().key() == "key_id" &&
            std::next(detail.begin()).key() == "sig" && detail["key_id"].is_string() &&
            detail["sig"].is_string() &&
            from_lower_hex(detail["key_id"].get_ref<const std::string&>(), key_id) &&
            from_lower_hex(detail["sig"].get_ref<const std::string&>(), sig);
        if (!form_ok) {
            return fail(AuditFault::bad_checkpoint, n,
                        fmt::format("line {}: a checkpoint's detail must be {{\"key_id\": {} hex "
                                    "digits, \"sig\": {} hex digits}}, not {}",
                                    n, kKeyIdHexSize, kSignatureHexSize, quote_value(detail)));
        }
        ++report_.checkpoints;
        last_checkpoint_seq_ = n;
        last_checkpoint_ms_ = time_ms;
        if (keys_ == nullptr) return true;
        const TrustedIssuer* key = keys_->find(key_id);
        if (key == nullptr) {
            return fail(AuditFault::untrusted_key, n,
                        fmt::format("line {}: checkpoint signed by audit key {}, which is not "
                                    "among the trusted audit keys (give the public key file that "
                                    "lists it; after a key rotation, list the old key too)",
                                    n, key_id_hex(key_id)));
        }
        const auto message = audit_checkpoint_message(n, time_ms, prev);
        if (crypto_sign_verify_detached(sig.data(), message.data(), message.size(),
                                        key->key.bytes.data()) != 0) {
            return fail(AuditFault::signature, n,
                        fmt::format("line {}: checkpoint signature does not verify with audit key "
                                    "{}: lines before it were rewritten (their hashes recomputed), "
                                    "or the checkpoint was forged",
                                    n, key_id_hex(key_id)));
        }
        ++report_.signatures_verified;
        report_.signed_through_seq = n - 1;
        return true;
    }

    const TrustedIssuers* keys_;
    std::optional<AuditHead> expected_;
    AuditVerifyReport report_;
    uint64_t last_checkpoint_seq_ = 0;
    uint64_t last_checkpoint_ms_ = 0;
};

// After damage, where the chain is not trusted: continue after the file's
// last whole line, taking its seq and hash as they are, or as near as it has.
AuditHead head_after_damage(std::string_view last_line, uint64_t whole_lines) {
    AuditHead head;
    head.seq = whole_lines;
    if (nesting_depth(last_line) <= kMaxAuditNesting) {
        const ordered_json j =
            ordered_json::parse(last_line.begin(), last_line.end(), nullptr, false);
        if (j.is_object() && j.contains("seq") && j["seq"].is_number_unsigned() &&
            j["seq"].get<uint64_t>() < UINT64_MAX / 2) {
            head.seq = j["seq"].get<uint64_t>();
        }
    }
    head.hash = audit_line_hash(last_line).value_or(blake2b(last_line));
    return head;
}

void check_time(int64_t now_ms) {
    if (now_ms < 0 || now_ms > kMaxAuditTimeMs) {
        throw AuditError(fmt::format("audit: time {} ms is outside 0..{} (is the clock set?)",
                                     now_ms, kMaxAuditTimeMs));
    }
}

void fsync_parent_directory(const std::string& path) {
    std::filesystem::path dir = std::filesystem::path(path).parent_path();
    if (dir.empty()) dir = ".";
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || ::fsync(fd) != 0) {
        const int err = errno;
        if (fd >= 0) ::close(fd);
        throw AuditError(fmt::format("audit log {}: cannot fsync its directory {}: {}", path,
                                     dir.string(), errno_text(err)));
    }
    ::close(fd);
}

}  // namespace

// --- helpers ------------------------------------------------------------------------

std::string audit_hash_hex(const AuditHash& hash) {
    return to_hex(hash);
}

std::optional<AuditHash> parse_audit_hash_hex(std::string_view text) {
    AuditHash hash{};
    if (!from_lower_hex(text, hash)) return std::nullopt;
    return hash;
}

std::string format_audit_head(const AuditHead& head) {
    return fmt::format("{}:{}", head.seq, audit_hash_hex(head.hash));
}

std::optional<AuditHead> parse_audit_head(std::string_view text, std::string* error) {
    const auto refuse = [&](std::string message) -> std::optional<AuditHead> {
        if (error) *error = std::move(message);
        return std::nullopt;
    };
    const size_t colon = text.find(':');
    if (colon == std::string_view::npos) {
        return refuse(fmt::format("audit head \"{}\" has no ':' (write SEQ:HASH)", text));
    }
    const std::string_view digits = text.substr(0, colon);
    if (digits.empty() || digits.size() > 20 ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return refuse(fmt::format("audit head \"{}\": seq \"{}\" is not a number", text, digits));
    }
    AuditHead head;
    for (const char c : digits) {
        const uint64_t digit = static_cast<uint64_t>(c - '0');
        if (head.seq > (UINT64_MAX - digit) / 10) {
            return refuse(fmt::format("audit head \"{}\": seq is too large", text));
        }
        head.seq = head.seq * 10 + digit;
    }
    const auto hash = parse_audit_hash_hex(text.substr(colon + 1));
    if (!hash) {
        return refuse(
            fmt::format("audit head \"{}\": the hash is not 64 lowercase hex digits", text));
    }
    head.hash = *hash;
    return head;
}

std::optional<AuditHash> audit_line_hash(std::string_view line) {
    ensure_sodium();
    if (line.size() <= kHashSuffixSize) return std::nullopt;
    const std::string_view suffix = line.substr(line.size() - kHashSuffixSize);
    AuditHash unused{};
    if (suffix.substr(0, kHashKeyPrefix.size()) != kHashKeyPrefix ||
        !from_lower_hex(suffix.substr(kHashKeyPrefix.size(), kHashHexSize), unused) ||
        suffix.substr(kHashKeyPrefix.size() + kHashHexSize) != "\"}") {
        return std::nullopt;
    }
    // BLAKE2b-256(line without the suffix || "}"), without copying the line.
    crypto_generichash_state state;
    crypto_generichash_init(&state, nullptr, 0, sizeof(AuditHash));
    crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(line.data()),
                              line.size() - kHashSuffixSize);
    crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>("}"), 1);
    AuditHash hash{};
    crypto_generichash_final(&state, hash.data(), hash.size());
    return hash;
}

std::array<uint8_t, kAuditCheckpointMessageSize> audit_checkpoint_message(uint64_t seq,
                                                                          uint64_t time_ms,
                                                                          const AuditHash& prev) {
    std::array<uint8_t, kAuditCheckpointMessageSize> message{};
    uint8_t* out = message.data();
    std::memcpy(out, kAuditCheckpointDomain.data(), kAuditCheckpointDomain.size());
    out += kAuditCheckpointDomain.size();
    put_u64_le(out, seq);
    put_u64_le(out + 8, time_ms);
    std::memcpy(out + 16, prev.data(), prev.size());
    return message;
}

std::string_view audit_fault_name(AuditFault fault) noexcept {
    switch (fault) {
        case AuditFault::none:
            return "none";
        case AuditFault::not_json:
            return "not_json";
        case AuditFault::bad_line:
            return "bad_line";
        case AuditFault::not_canonical:
            return "not_canonical";
        case AuditFault::hash:
            return "hash";
        case AuditFault::seq:
            return "seq";
        case AuditFault::prev:
            return "prev";
        case AuditFault::bad_checkpoint:
            return "bad_checkpoint";
        case AuditFault::untrusted_key:
            return "untrusted_key";
        case AuditFault::signature:
            return "signature";
        case AuditFault::head_mismatch:
            return "head_mismatch";
        case AuditFault::truncated:
            return "truncated";
        case AuditFault::torn:
            return "torn";
    }
    return "unknown";
}

// --- verifying ----------------------------------------------------------------------

AuditVerifyReport verify_audit_text(std::string_view text, const TrustedIssuers* checkpoint_keys,
                                    std::optional<AuditHead> expected_head) {
    ensure_sodium();
    ChainChecker checker(checkpoint_keys, expected_head);
    size_t pos = 0;
    while (pos < text.size()) {
        const size_t newline = text.find('\n', pos);
        if (newline == std::string_view::npos) {
            checker.torn();
            return checker.report();
        }
        if (!checker.add(text.substr(pos, newline - pos))) return checker.report();
        pos = newline + 1;
    }
    checker.finish();
    return checker.report();
}

AuditVerifyReport verify_audit_log(const std::string& path, const TrustedIssuers* checkpoint_keys,
                                   std::optional<AuditHead> expected_head) {
    ensure_sodium();
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        throw AuditError(fmt::format("audit log {}: cannot open: {}", path, errno_text(errno)));
    }
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    ChainChecker checker(checkpoint_keys, expected_head);
    FileLines lines(fd, path);
    FileLine line;
    while (lines.next(line)) {
        if (line.overlong) {
            checker.too_long();
            return checker.report();
        }
        if (!line.terminated) {
            checker.torn();
            return checker.report();
        }
        if (!checker.add(line.text)) return checker.report();
    }
    checker.finish();
    return checker.report();
}

// --- writing ------------------------------------------------------------------------

AuditLog AuditLog::open(const std::string& path, const IssuerSecretKey* checkpoint_key,
                        AuditOptions options, int64_t now_ms) {
    ensure_sodium();
    check_time(now_ms);
    if (options.checkpoint_every_ms < 0) {
        throw AuditError(
            fmt::format("audit log {}: checkpoint_every_ms is {}; give a positive "
                        "interval, or 0 for no time-based checkpoints",
                        path, options.checkpoint_every_ms));
    }
    AuditLog log;  // closes what it holds if anything below throws
    log.path_ = path;
    log.key_ = checkpoint_key;
    log.options_ = std::move(options);
    const AuditOptions& opts = log.options_;

    bool created = true;
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0 && errno == EEXIST) {
        created = false;
        fd = ::open(path.c_str(), O_RDWR | O_APPEND | O_CLOEXEC);
    }
    if (fd < 0) {
        throw AuditError(
            fmt::format("audit log {}: cannot open: {} (does the directory exist, "
                        "and may jitd write there?)",
                        path, errno_text(errno)));
    }
    log.fd_ = fd;
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        throw AuditError(fmt::format("audit log {}: fstat failed: {}", path, errno_text(errno)));
    }
    if (!S_ISREG(st.st_mode)) {
        throw AuditError(
            fmt::format("audit log {}: not a regular file (give the path of a file)", path));
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK) {
            throw AuditError(
                fmt::format("audit log {}: another process has it open for writing "
                            "(is a second jitd running with the same audit log?)",
                            path));
        }
        throw AuditError(fmt::format("audit log {}: flock failed: {}", path, errno_text(errno)));
    }
    if (created && opts.fsync) fsync_parent_directory(path);

    // Read the whole log: find the head, a torn last line, or other damage.
    const uint64_t file_size = static_cast<uint64_t>(st.st_size);
    ChainChecker checker(nullptr, opts.expected_head);
    FileLines lines(fd, path);
    FileLine line;
    uint64_t whole_lines = 0;
    uint64_t cut_offset = file_size;
    uint64_t damaged_line = 0;
    std::string damage;
    std::string last_line;  // after damage: the last whole line read
    while (lines.next(line)) {
        if (!line.terminated && !line.overlong) {  // only ever the end of the file
            cut_offset = line.offset;
            break;
        }
        ++whole_lines;
        if (damaged_line != 0) {
            last_line.assign(line.text);
            continue;
        }
        if (line.overlong ? checker.too_long() : checker.add(line.text)) continue;
        const bool is_last = line.offset + line.text.size() + 1 == file_size;
        if (checker.report().fault == AuditFault::not_json && is_last) {
            // A newline-terminated last line that is not JSON: what a power cut
            // can leave (zeros where the data had not reached the disk).
            cut_offset = line.offset;
            --whole_lines;
            break;
        }
        damaged_line = checker.report().first_bad_line;
        damage = checker.report().problem;
        last_line.assign(line.text);
        if (!opts.open_damaged) {
            throw AuditError(fmt::format("audit log {}: {}. jitd does not write after damage it "
                                         "did not make: keep a copy and verify it (jitctl audit "
                                         "verify), then move it aside to start a new log, or open "
                                         "it anyway (jitd --open-damaged-audit-log) to continue after it",
                                         path, damage),
                             damaged_line);
        }
    }
    if (damaged_line == 0 && !checker.finish()) {
        damaged_line = checker.report().first_bad_line;
        damage = checker.report().problem;
        if (!opts.open_damaged) {
            throw AuditError(fmt::format("audit log {}: {}. Keep a copy, and find out what "
                                         "happened before opening it anyway (jitd --open-damaged-audit-log)",
                                         path, damage),
                             damaged_line);
        }
    }
    const bool line_damaged = damaged_line != 0 && checker.report().fault != AuditFault::truncated;
    log.head_ = line_damaged ? head_after_damage(last_line, whole_lines) : checker.report().head;
    log.last_checkpoint_seq_ = checker.last_checkpoint_seq();
    log.last_checkpoint_ms_ = checker.last_checkpoint_seq() != 0
                                  ? static_cast<int64_t>(checker.last_checkpoint_ms())
                                  : now_ms;
    log.damage_ = damage;

    // Cut the torn last line, keeping what identifies it for the record.
    ordered_json detail = ordered_json::object();
    if (cut_offset < file_size) {
        const uint64_t removed = file_size - cut_offset;
        crypto_generichash_state state;
        crypto_generichash_init(&state, nullptr, 0, sizeof(AuditHash));
        std::string excerpt;
        std::string chunk(kReadChunk, '\0');
        for (uint64_t offset = cut_offset; offset < file_size;) {
            const size_t want =
                static_cast<size_t>(std::min<uint64_t>(kReadChunk, file_size - offset));
            const ssize_t n = pread_retry(fd, chunk.data(), want, offset);
            if (n <= 0) {
                throw AuditError(
                    fmt::format("audit log {}: cannot read the torn last line at byte "
                                "{}: {}",
                                path, offset, n < 0 ? errno_text(errno) : "end of file"));
            }
            crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(chunk.data()),
                                      static_cast<size_t>(n));
            if (excerpt.size() < kRemovedExcerptBytes) {
                excerpt.append(
                    chunk, 0,
                    std::min(static_cast<size_t>(n), kRemovedExcerptBytes - excerpt.size()));
            }
            offset += static_cast<uint64_t>(n);
        }
        AuditHash removed_hash{};
        crypto_generichash_final(&state, removed_hash.data(), removed_hash.size());
        if (::ftruncate(fd, static_cast<off_t>(cut_offset)) != 0 ||
            (opts.fsync && ::fdatasync(fd) != 0)) {
            throw AuditError(
                fmt::format("audit log {}: cannot cut off the torn last line ({} bytes "
                            "at byte {}): {}",
                            path, removed, cut_offset, errno_text(errno)));
        }
        log.recovered_bytes_ = removed;
        detail["bytes_removed"] = removed;
        detail["offset"] = cut_offset;
        detail["removed_blake2b"] = to_hex(removed_hash);
        detail["removed_excerpt"] = excerpt;
    }

    if (!opts.sink_path.empty()) {
        const int sink =
            ::open(opts.sink_path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (sink < 0) {
            throw AuditError(
                fmt::format("audit sink {}: cannot open: {} (does the directory exist, "
                            "and may jitd write there?)",
                            opts.sink_path, errno_text(errno)));
        }
        log.sink_fd_ = sink;
    }

    if (log.recovered_bytes_ != 0 || damaged_line != 0) {
        AuditEvent event;
        event.actor = opts.self_actor;
        event.action = std::string(kAuditRecoveredAction);
        if (damaged_line != 0) {
            detail["damaged_line"] = damaged_line;
            detail["damage"] = damage;
        }
        event.result = damaged_line != 0 ? "damaged" : "ok";
        event.reason = damaged_line == 0
                           ? "torn last line cut off (a write interrupted by a crash or power loss)"
                           : (log.recovered_bytes_ != 0
                                  ? "opened despite damage (open_damaged); torn last line cut off"
                                  : "opened despite damage (open_damaged)");
        event.detail = std::move(detail);
        log.write_lines(&event, now_ms, false);
    }
    return log;
}

AuditLog::AuditLog(AuditLog&& other) noexcept {
    *this = std::move(other);
}

AuditLog& AuditLog::operator=(AuditLog&& other) noexcept {
    if (this == &other) return *this;
    close_files();
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    sink_fd_ = std::exchange(other.sink_fd_, -1);
    key_ = other.key_;
    options_ = std::move(other.options_);
    head_ = other.head_;
    last_checkpoint_seq_ = other.last_checkpoint_seq_;
    last_checkpoint_ms_ = other.last_checkpoint_ms_;
    recovered_bytes_ = other.recovered_bytes_;
    damage_ = std::move(other.damage_);
    broken_ = std::move(other.broken_);
    sink_error_ = std::move(other.sink_error_);
    sink_failures_ = other.sink_failures_;
    sink_check_end_ = other.sink_check_end_;
    return *this;
}

AuditLog::~AuditLog() {
    close_files();
}

void AuditLog::close_files() noexcept {
    if (fd_ >= 0) ::close(fd_);  // also releases the flock
    if (sink_fd_ >= 0) ::close(sink_fd_);
    fd_ = -1;
    sink_fd_ = -1;
}

AuditHead AuditLog::append(const AuditEvent& event, int64_t now_ms) {
    const auto refuse = [&](const std::string& what) {
        throw AuditError(fmt::format("audit log {}: event refused: {}", path_, what));
    };
    if (event.action.empty()) refuse("the action is empty (name what was done, e.g. grant.issue)");
    if (event.action == kAuditCheckpointAction || event.action == kAuditRecoveredAction) {
        refuse(
            fmt::format("the action {} is reserved for lines the log writes itself", event.action));
    }
    if (!event.detail.is_object()) {
        refuse(fmt::format("detail is a JSON {}, not an object", event.detail.type_name()));
    }
    return write_lines(&event, now_ms, false);
}

AuditHead AuditLog::checkpoint_if_due(int64_t now_ms) {
    return write_lines(nullptr, now_ms, false);
}

AuditHead AuditLog::checkpoint_now(int64_t now_ms) {
    return write_lines(nullptr, now_ms, true);
}

std::string AuditLog::make_line(uint64_t seq, const AuditHash& prev, int64_t now_ms,
                                std::string_view actor, std::string_view action,
                                std::string_view object, std::string_view result,
                                std::string_view reason, const nlohmann::ordered_json& detail,
                                AuditHash& hash) const {
    ordered_json j = ordered_json::object();
    j["seq"] = seq;
    j["time_ms"] = static_cast<uint64_t>(now_ms);
    j["time"] = format_unix_ms(now_ms);
    j["actor"] = std::string(actor);
    j["action"] = std::string(action);
    j["object"] = std::string(object);
    j["result"] = std::string(result);
    j["reason"] = std::string(reason);
    j["detail"] = detail;
    j["prev"] = audit_hash_hex(prev);
    const std::string body = dump_line(j);
    if (nesting_depth(body) > kMaxAuditNesting) {
        throw AuditError(
            fmt::format("audit log {}: event refused: detail nests arrays and "
                        "objects more than {} deep (flatten it)",
                        path_, kMaxAuditNesting - 1));
    }
    hash = blake2b(body);
    std::string line;
    line.reserve(body.size() + kHashSuffixSize + 1);
    line.append(body, 0, body.size() - 1);  // without the closing '}'
    line += kHashKeyPrefix;
    line += audit_hash_hex(hash);
    line += "\"}\n";
    if (line.size() - 1 > kMaxAuditLineBytes) {
        throw AuditError(
            fmt::format("audit log {}: event refused: its line would be {} bytes, "
                        "more than {} (shorten the detail)",
                        path_, line.size() - 1, kMaxAuditLineBytes));
    }
    return line;
}

std::string AuditLog::checkpoint_due_reason(int64_t now_ms, uint64_t unsigned_lines) const {
    if (options_.checkpoint_every_lines != 0 && unsigned_lines >= options_.checkpoint_every_lines) {
        return fmt::format("{} lines since the last checkpoint", unsigned_lines);
    }
    if (options_.checkpoint_every_ms != 0 &&
        now_ms - last_checkpoint_ms_ >= options_.checkpoint_every_ms) {
        return fmt::format("{} since the last checkpoint",
                           format_duration_ms(now_ms - last_checkpoint_ms_));
    }
    return {};
}

AuditHead AuditLog::write_lines(const AuditEvent* event, int64_t now_ms, bool force_checkpoint) {
    if (fd_ < 0) throw AuditError("audit log: used after it was moved from");
    if (!broken_.empty()) throw AuditError(broken_);
    check_time(now_ms);

    std::string lines;
    AuditHead next = head_;
    if (event != nullptr) {
        AuditHash hash{};
        lines = make_line(next.seq + 1, next.hash, now_ms, event->actor, event->action,
                          event->object, event->result, event->reason, event->detail, hash);
        next = AuditHead{next.seq + 1, hash};
    }
    const uint64_t unsigned_lines = next.seq - last_checkpoint_seq_;
    size_t checkpoint_start = std::string::npos;
    // Only a log with an audit key checkpoints, and only when a line is unsigned.
    if (key_ != nullptr && unsigned_lines != 0) {
        const std::string reason = force_checkpoint ? std::string("requested")
                                                    : checkpoint_due_reason(now_ms, unsigned_lines);
        if (!reason.empty()) {
            const uint64_t seq = next.seq + 1;
            const auto message =
                audit_checkpoint_message(seq, static_cast<uint64_t>(now_ms), next.hash);
            const GrantSignature sig = key_->sign(message);
            ordered_json detail = ordered_json::object();
            detail["key_id"] = key_id_hex(key_->key_id());
            detail["sig"] = to_hex(sig);
            AuditHash hash{};
            checkpoint_start = lines.size();
            lines += make_line(seq, next.hash, now_ms, options_.self_actor, kAuditCheckpointAction,
                               "", "ok", reason, detail, hash);
            next = AuditHead{seq, hash};
        }
    }
    if (lines.empty()) return head_;

    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
        throw AuditError(fmt::format("audit log {}: fstat failed: {}; the event was not logged",
                                     path_, errno_text(errno)));
    }
    const int err = write_all(fd_, lines);
    if (err != 0) {
        if (::ftruncate(fd_, st.st_size) != 0) {
            broken_ = fmt::format(
                "audit log {}: a write failed ({}) and cutting off what it "
                "wrote failed too ({}): no more appends; restart jitd (opening "
                "the log cuts a torn line off and records it)",
                path_, errno_text(err), errno_text(errno));
            throw AuditError(broken_);
        }
        throw AuditError(
            fmt::format("audit log {}: write failed: {} (is the disk full?); the "
                        "event was not logged",
                        path_, errno_text(err)));
    }
    if (options_.fsync && ::fdatasync(fd_) != 0) {
        // After a failed fdatasync the kernel may have dropped the pages: what
        // is on disk is unknown until the log is read again.
        broken_ = fmt::format(
            "audit log {}: fdatasync failed: {}; the last lines may not be on "
            "disk, so no more appends: restart jitd (opening the log checks it "
            "and repairs a torn end)",
            path_, errno_text(errno));
        throw AuditError(broken_);
    }
    head_ = next;
    if (checkpoint_start != std::string::npos) {
        last_checkpoint_seq_ = next.seq;
        last_checkpoint_ms_ = now_ms;
        if (sink_fd_ >= 0) write_sink(std::string_view(lines).substr(checkpoint_start), next.seq);
    }
    return head_;
}

void AuditLog::write_sink(std::string_view line, uint64_t seq) {
    int err = 0;
    if (sink_check_end_) {
        struct stat st {};
        char last = '\n';
        if (::fstat(sink_fd_, &st) != 0) {
            err = errno;
        } else if (st.st_size > 0) {
            const ssize_t n =
                pread_retry(sink_fd_, &last, 1, static_cast<uint64_t>(st.st_size - 1));
            if (n != 1) err = n < 0 ? errno : EIO;
            if (err == 0 && last != '\n') err = write_all(sink_fd_, "\n");
        }
    }
    if (err == 0) err = write_all(sink_fd_, line);
    if (err == 0 && options_.fsync && ::fdatasync(sink_fd_) != 0) err = errno;
    if (err != 0) {
        ++sink_failures_;
        sink_check_end_ = true;
        sink_error_ = fmt::format(
            "audit sink {}: writing the checkpoint at seq {} failed: {} (it "
            "is in the log {}, not in the sink)",
            options_.sink_path, seq, errno_text(err), path_);
        return;
    }
    sink_check_end_ = false;
    sink_error_.clear();
}

}  // namespace jitlb::control
