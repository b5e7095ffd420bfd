// The audit log (docs/audit.md): jitd's tamper-evident record of every step a
// grant takes (request, decision, issue, push, revocation, expiry) and of the
// data plane's sampled denials. Each line carries the hash of the line before
// it, so that editing, removing, inserting or reordering a line anywhere breaks
// the chain; periodic checkpoint lines sign the chain with an Ed25519 key, so
// that a chain rewritten from an edited line onwards is caught too; the head
// that jitd keeps in SQLite catches a tail cut back to an earlier line.
//
// --- The format (version 1) -------------------------------------------------------
//
// UTF-8 JSON lines, one event per line, each line ending in '\n'. Every line
// is one JSON object with exactly these keys, in this order:
//
//   seq      u64     1 for the first line, +1 per line: seq is the line number.
//   time_ms  u64     Unix ms when the line was written, 0..253402300799999.
//   time     string  time_ms as RFC 3339 UTC, as control/duration.h's
//                    format_unix_ms writes it ("2026-12-06T14:00:00.250Z",
//                    the milliseconds only when not zero).
//   actor    string  who did it: "user:alice(uid 1001)", "jitd", "jitlb", ...
//   action   string  what was done, never empty: "request.create",
//                    "grant.issue", "grant.revoke", "denial.sample", ...
//                    "audit.checkpoint" and "audit.recovered" are written by
//                    the log itself and refused from callers.
//   object   string  what it was done to (a request or grant id); may be empty.
//   result   string  "ok", "refused", ...
//   reason   string  may be empty.
//   detail   object  anything else; may be {}. At most kMaxAuditNesting deep.
//   prev     string  64 lowercase hex digits: the previous line's hash; 64
//                    zeros on line 1.
//   hash     string  64 lowercase hex digits: the line's hash (below).
//
// A line is in the canonical form nlohmann::json's dump() writes: no blanks
// between tokens, keys in the order above, strings escaped as dump() does
// (ensure_ascii off: UTF-8 as is, control characters as \uXXXX). A line must
// not be longer than kMaxAuditLineBytes (without its '\n').
//
// The hash. The line's BODY is the line without its hash key: since "hash" is
// last and its value has a fixed length, the line always ends in the 75 bytes
//   ,"hash":"<64 hex>"}
// and BODY = the line minus those 75 bytes, plus "}" — exactly the bytes
// `{"seq":...,"prev":"<64 hex>"}`. hash = BLAKE2b-256(BODY), unkeyed, no
// personalisation (libsodium crypto_generichash with a 32-byte output), so
// that any BLAKE2b tool recomputes it from the line (e.g. `b2sum -l 256`).
// Verification hashes the bytes as found and also requires the line to be
// canonical, so every valid line has exactly one encoding.
//
// Checkpoints. A line with action "audit.checkpoint" (actor: the log's own,
// object "", result "ok", reason saying why it was due) has the detail
//   {"key_id": "<16 hex: the audit key's id, as issuer_keys.h derives it>",
//    "sig":    "<128 hex: Ed25519 detached signature>"}
// over the kAuditCheckpointMessageSize bytes
//   "jitlb-audit-checkpoint-v1"   25 bytes of ASCII, no NUL (the domain)
//   seq                           u64 little endian: the checkpoint line's seq
//   time_ms                       u64 little endian: the checkpoint line's time_ms
//   prev                          32 bytes: the checkpoint line's prev
// Because prev is the hash of line seq-1, which chains every line before it,
// the signature covers lines 1..seq-1 whole; the checkpoint line itself is
// covered by the next checkpoint. The domain keeps a checkpoint signature from
// being taken for a grant signature if one key were ever used for both.
// Checkpoints are written every `checkpoint_every_lines` lines or every
// `checkpoint_every_ms` ms, whichever comes first (checked at each append and
// by checkpoint_if_due()); each is also appended to the sink file when one is
// configured (a second disk, or a file a collector ships off the node).
//
// Recovery. A line with action "audit.recovered" records that open() found
// the log damaged: detail {"bytes_removed", "offset", "removed_blake2b",
// "removed_excerpt"} when a torn last line was cut off, and {"damaged_line",
// "damage"} when the caller opened a damaged log anyway (the damage stays in
// the file, and verification still reports it).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "issuer_keys.h"

namespace jitlb::control {

using AuditHash = std::array<uint8_t, 32>;  // crypto_generichash_BYTES

inline constexpr size_t kMaxAuditLineBytes = 1 << 20;
// Arrays and objects inside one line, the line itself included.
inline constexpr size_t kMaxAuditNesting = 32;
inline constexpr std::string_view kAuditCheckpointDomain = "jitlb-audit-checkpoint-v1";
inline constexpr size_t kAuditCheckpointMessageSize = kAuditCheckpointDomain.size() + 8 + 8 + 32;
inline constexpr std::string_view kAuditCheckpointAction = "audit.checkpoint";
inline constexpr std::string_view kAuditRecoveredAction = "audit.recovered";
// The last time format_unix_ms writes with a four-digit year.
inline constexpr int64_t kMaxAuditTimeMs = 253'402'300'799'999;

// The last line of a log: its seq (0 for an empty log) and its hash (zeros for
// an empty log). jitd stores it in SQLite after each append and hands it back
// to open() and verification, which then catch a log cut back or replaced.
struct AuditHead {
    uint64_t seq = 0;
    AuditHash hash{};
    friend bool operator==(const AuditHead&, const AuditHead&) = default;
};

struct AuditEvent {
    std::string actor, action, object, result, reason;
    nlohmann::ordered_json detail = nlohmann::ordered_json::object();
};

struct AuditOptions {
    uint64_t checkpoint_every_lines = 100;  // 0: never because of the line count
    int64_t checkpoint_every_ms = 60'000;   // 0: never because of the time
    std::string sink_path;                  // empty: no sink
    bool fsync = true;                      // fdatasync after each write (log and sink)
    // What jitd stored in SQLite: open() refuses a log that does not contain
    // this line (cut back, replaced, or rewritten from this line on).
    std::optional<AuditHead> expected_head;
    // Open a log with damage other than a torn last line (or that misses
    // expected_head) anyway: the chain continues after the last line and an
    // "audit.recovered" line records the damage. For an operator who has
    // looked at the damage and saved a copy, never a default.
    bool open_damaged = false;
    // The actor of the lines the log writes itself (checkpoints, recovery).
    std::string self_actor = "jitd";
};

// I/O failures, a damaged log at open(), and events append() refuses. The
// message names the path (and the line) and says what to do.
class AuditError : public std::runtime_error {
  public:
    explicit AuditError(const std::string& message, uint64_t line = 0)
        : std::runtime_error(message), line_(line) {}
    // The 1-based line the error is about, 0 when it is about no line.
    uint64_t line() const noexcept { return line_; }

  private:
    uint64_t line_;
};

// --- writing ----------------------------------------------------------------------

// The one writer of one log file: open() takes an exclusive flock(2) on it, so
// a second jitd on the same file is refused instead of forking the chain.
// Move-only; not thread-safe (jitd appends from its one control thread).
class AuditLog {
  public:
    // Opens or creates (mode 0640, O_APPEND | O_CLOEXEC) the log and reads it
    // whole, checking the chain (not the checkpoint signatures: that needs the
    // trusted keys, see verify_audit_log) to find the head. A torn last line —
    // no '\n' at the end of the file, or a last line that is not JSON, which is
    // what kill -9 or a power cut during a write leaves — is cut off
    // (ftruncate) and an "audit.recovered" line recording the cut is appended.
    // Any other damage, or a log without options.expected_head, throws an
    // AuditError naming the line unless options.open_damaged.
    // `checkpoint_key` may be null (no checkpoints); otherwise it must outlive
    // the AuditLog. The sink, when configured, is opened (created 0640) too.
    static AuditLog open(const std::string& path, const IssuerSecretKey* checkpoint_key,
                         AuditOptions options, int64_t now_ms);

    AuditLog(AuditLog&& other) noexcept;
    AuditLog& operator=(AuditLog&& other) noexcept;
    AuditLog(const AuditLog&) = delete;
    AuditLog& operator=(const AuditLog&) = delete;
    ~AuditLog();

    // Appends the event's line, and a checkpoint line when one is due, with one
    // write(2), then fdatasync (options.fsync); returns the new head (the
    // checkpoint's when one was written). Throws AuditError when the event is
    // refused (empty or reserved action, detail not an object or too deep, line
    // too long, now_ms outside 0..kMaxAuditTimeMs) or on I/O failure. After a
    // failed write the file is cut back to the previous head and the log stays
    // usable; when that cut or fdatasync fails, the state of the file is
    // unknown and every later append throws until the log is opened again.
    AuditHead append(const AuditEvent& event, int64_t now_ms);
    // Writes a checkpoint when checkpoint_every_ms has passed since the last one
    // and lines were written since; jitd calls it from its timer so that an idle
    // log is still signed. Returns the head.
    AuditHead checkpoint_if_due(int64_t now_ms);
    // Writes a checkpoint now if there is a key and any line is not yet covered
    // by one (e.g. at a clean shutdown). Returns the head.
    AuditHead checkpoint_now(int64_t now_ms);

    AuditHead head() const noexcept { return head_; }
    const std::string& path() const noexcept { return path_; }
    // Bytes open() cut off as a torn last line; 0 if nothing.
    uint64_t recovered_bytes() const noexcept { return recovered_bytes_; }
    // The damage open() found and went past (options.open_damaged); empty if none.
    const std::string& damage() const noexcept { return damage_; }
    // Sink writes never make append() throw (the line is in the log already);
    // a failure is counted and kept here for jitd to report. Empty after a
    // sink write that succeeded.
    const std::string& sink_error() const noexcept { return sink_error_; }
    uint64_t sink_failures() const noexcept { return sink_failures_; }

  private:
    AuditLog() = default;
    void close_files() noexcept;
    // One line of the chain (with its '\n'); its hash into `hash`.
    std::string make_line(uint64_t seq, const AuditHash& prev, int64_t now_ms,
                          std::string_view actor, std::string_view action, std::string_view object,
                          std::string_view result, std::string_view reason,
                          const nlohmann::ordered_json& detail, AuditHash& hash) const;
    // Writes `event` (if any), then a checkpoint if one is due (or forced and
    // any line is unsigned), with one write(2).
    AuditHead write_lines(const AuditEvent* event, int64_t now_ms, bool force_checkpoint);
    // Why a checkpoint is due after `unsigned_lines` (> 0) lines without one; "" if not.
    // Only for a log with an audit key.
    std::string checkpoint_due_reason(int64_t now_ms, uint64_t unsigned_lines) const;
    void write_sink(std::string_view line, uint64_t seq);

    std::string path_;
    int fd_ = -1;
    int sink_fd_ = -1;
    const IssuerSecretKey* key_ = nullptr;
    AuditOptions options_;
    AuditHead head_;
    uint64_t last_checkpoint_seq_ = 0;
    int64_t last_checkpoint_ms_ = 0;
    uint64_t recovered_bytes_ = 0;
    std::string damage_;
    std::string broken_;  // non-empty: appends refused, with this reason
    std::string sink_error_;
    uint64_t sink_failures_ = 0;
    // The sink may end in part of a line (a crash or a failed write): look
    // before the next write, so that two lines never merge.
    bool sink_check_end_ = true;
};

// --- verifying ----------------------------------------------------------------------

// What verification found wrong first (it stops there).
enum class AuditFault : uint8_t {
    none,
    not_json,        // the line does not parse as JSON
    bad_line,        // JSON, but not an audit line: keys, types, values, nesting, length
    not_canonical,   // an audit line, but not the bytes jitd writes for it
    hash,            // the hash is not BLAKE2b-256 of the line's body: the line was edited
    seq,             // seq is not the line number: lines removed, inserted or reordered
    prev,            // prev is not the previous line's hash: the chain is broken here
    bad_checkpoint,  // a checkpoint's detail is not {key_id, sig}
    untrusted_key,   // a checkpoint signed by a key not among the trusted keys
    signature,       // a checkpoint signature that does not verify
    head_mismatch,   // the line at the expected head's seq has another hash
    truncated,       // the log ends before the expected head
    torn,            // the last line has no '\n' (a write cut short)
};

std::string_view audit_fault_name(AuditFault fault) noexcept;

struct AuditVerifyReport {
    bool ok = true;
    AuditFault fault = AuditFault::none;
    uint64_t lines = 0;        // lines that verified (all of them when ok)
    uint64_t checkpoints = 0;  // checkpoint lines among those
    // Checkpoint signatures checked against a trusted key (0 without keys).
    uint64_t signatures_verified = 0;
    // The last seq that a verified checkpoint signature covers; lines after it
    // rest on the hash chain (and the expected head) alone.
    uint64_t signed_through_seq = 0;
    uint64_t first_bad_line = 0;  // 1-based; 0 when ok
    // "line 7: prev does not match the hash of line 6 (...)"; empty when ok.
    std::string problem;
    AuditHead head;  // the last line that verified
};

// Verifies the format, sequence numbers, hashes and chain of every line, and,
// when `checkpoint_keys` is given, every checkpoint signature (without keys,
// their form only). With `expected_head` (what jitd stored in SQLite) it also
// finds a log cut back to before that line (truncated) or whose line at that
// seq has another hash (head_mismatch); a log longer than the expected head
// is fine (jitd may have stopped between appending and storing the head).
// Throws AuditError only when the file cannot be read.
AuditVerifyReport verify_audit_log(const std::string& path, const TrustedIssuers* checkpoint_keys,
                                   std::optional<AuditHead> expected_head);
// The same over a log's text (tests, fuzzing, a log read from elsewhere).
AuditVerifyReport verify_audit_text(std::string_view text, const TrustedIssuers* checkpoint_keys,
                                    std::optional<AuditHead> expected_head);

// --- helpers -------------------------------------------------------------------------

// 64 lowercase hex digits.
std::string audit_hash_hex(const AuditHash& hash);
// Exactly 64 lowercase hex digits; nullopt otherwise.
std::optional<AuditHash> parse_audit_hash_hex(std::string_view text);
// "SEQ:HASH", e.g. "250:3f9a…" (64 hex): how jitctl prints and takes a head.
std::string format_audit_head(const AuditHead& head);
std::optional<AuditHead> parse_audit_head(std::string_view text, std::string* error = nullptr);
// The hash rule above applied to one line (without its '\n'): BLAKE2b-256 of
// its body. nullopt when the line does not end in `,"hash":"<64 hex>"}`.
std::optional<AuditHash> audit_line_hash(std::string_view line);
// The bytes a checkpoint signature covers (see the format above).
std::array<uint8_t, kAuditCheckpointMessageSize> audit_checkpoint_message(uint64_t seq,
                                                                          uint64_t time_ms,
                                                                          const AuditHash& prev);

}  // namespace jitlb::control
