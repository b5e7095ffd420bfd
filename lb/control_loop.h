// jitlb's main lcore, without DPDK: it owns the state file, drains jitd's
// command ring, verifies and applies grants, revocations and service changes,
// expires grants, answers every command on the event ring and keeps the clock
// offset that workers add to the TSC (DESIGN.md, "The main lcore's tick";
// docs/shared-region.md, "The error and acknowledgement path").
//
// A tick drains the command ring into a bounded backlog and applies
// everything but grant verification at once; only Ed25519 verification is
// capped per tick, so a flood of grants never delays a revocation. Workers
// read the grant table, the service snapshots and the clock offset lock-free;
// nothing here is called from a worker.
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "counters.h"
#include "grant.h"
#include "grant_table.h"
#include "issuer_keys.h"
#include "messages.h"
#include "service_table.h"
#include "shared_file.h"
#include "shared_layout.h"
#include "spsc_ring.h"

namespace jitlb::lb {

// ControlLoop::open could not start: a bad configuration, key file, state
// file or grant table. The message names the path or value and what to do.
// (RegionError, also a std::runtime_error, passes through from shared_file.h.)
class ControlLoopError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

struct ControlConfig {
    std::string instance = "default";  // jitlb-<instance>.cmd / .state
    std::string region_dir;            // where jitlb's state file lives (tests: a temp dir)
    std::string cmd_dir;               // where jitd's cmd file lives; empty: region_dir
    uid_t cmd_owner_uid = 0;       // the cmd file must be owned by this uid (jitd; tests: getuid())
    std::string issuer_keys_file;  // trusted public keys (common/issuer_keys.h format)
    GrantTableMacKey mac_key{};    // the entries' MAC key (main.cc reads it from a file)
    uint64_t grant_capacity = kGrantTableDefaultCapacity;
    uint32_t grant_slots_per_grant = kGrantTableDefaultSlotsPerGrant;  // 2, 4 or 8
    int64_t skew_ms = 2'000;                     // tolerated issuer clock lead, on not-before
    int64_t max_duration_ms = 24 * 3'600'000LL;  // longest not-after - not-before
    int64_t horizon_ms = 24 * 3'600'000LL;       // furthest accepted not-before
    // Ed25519 verifications per tick: about 45-50 us each, so 64 make a tick
    // of about 3 ms; 2 keep it within 100 us. Revocations are never capped.
    uint32_t verify_per_tick = 2;
    uint32_t backlog_capacity = 4096;   // grants waiting for verification
    uint32_t commands_per_tick = 4096;  // records popped per tick (the ring's default size)
    // Entries and revoked ids GrantTableWriter::expire examines per tick.
    uint32_t expire_budget = 4096;
    uint32_t expiry_events_per_tick = 1024;  // GrantExpired events posted per tick at most
    uint64_t ticks_per_second = 1000;        // the data plane's timebase (TSC hz; tests 1000)
    uint32_t service_capacity = kDefaultServiceCapacity;  // ids 1..capacity
    uint32_t backend_capacity = kDefaultBackendCapacity;  // per-backend counter slots
    uint32_t event_ring_slots = kDefaultEventRingSlots;
    uint32_t worker_stats_lines = kDefaultWorkerStatsLines;
    mode_t state_mode = 0640;
    // Reopening a grant table checks every entry's MAC: in this many parts,
    // through run_parts (ReopenOptions). main.cc: the main lcore and the
    // worker lcores, which are idle until the workers are launched.
    unsigned reopen_parts = 1;
    std::function<void(unsigned, const std::function<void(unsigned)>&)> reopen_run_parts;
};

// Unix time and the data plane's tick counter. main.cc gives the TSC and a
// calibrated Unix clock; tests give a fake one they shift.
class Clock {
  public:
    virtual ~Clock();
    virtual int64_t unix_ms() = 0;
    virtual uint64_t ticks() = 0;
    // Unix time in microseconds and the tick counter read together, for the
    // clock offset workers add to their ticks; false when the two readings
    // lie too far apart to pair (the thread was preempted between them).
    virtual bool sample(int64_t& unix_us, uint64_t& ticks_at) {
        unix_us = unix_ms() * 1000;
        ticks_at = ticks();
        return true;
    }
};

// What one tick (or drain_all) did.
struct TickReport {
    bool cmd_attached = false;       // the cmd file is mapped and read
    bool ring_corrupt = false;       // the command ring's frame is broken (see last_error)
    uint32_t commands = 0;           // records taken off the command ring
    uint32_t commands_rejected = 0;  // answered with CommandRejected
    uint32_t services_applied = 0;   // ServiceSet / BackendSet / ServiceDelete done
    uint32_t grants_queued = 0;      // GrantPushes put in the backlog
    uint32_t grants_verified = 0;    // verify_grant calls
    uint32_t grants_activated = 0;   // GrantActivated, re-push acknowledgements included
    uint32_t grants_rejected = 0;
    uint32_t revocations = 0;
    uint32_t grants_expired = 0;  // grants found past not-after (GrantExpired)
    uint32_t grants_swept = 0;    // expired entries GrantTableWriter::expire removed
    uint32_t events_posted = 0;
    uint32_t events_dropped = 0;  // the event ring was full, or jitd not attached
    size_t backlog = 0;           // grants waiting for verification after the tick

    TickReport& operator+=(const TickReport& other) noexcept;
};

inline constexpr size_t kGrantRejectReasons = 13;    // GrantRejectReason values 1..12
inline constexpr size_t kCommandRejectReasons = 12;  // CommandRejectReason values 1..11

// Totals since open (main-lcore private; not exported yet: docs/counters.md).
struct ControlStats {
    uint64_t ticks = 0;
    uint64_t commands = 0;
    uint64_t commands_applied = 0;  // services, revocations, key reloads that succeeded
    std::array<uint64_t, kCommandRejectReasons> commands_rejected{};  // by CommandRejectReason
    uint64_t grants_received = 0;
    uint64_t grants_verified = 0;  // verify_grant calls (the Ed25519 cost)
    uint64_t grants_activated = 0;
    uint64_t grants_repush_acknowledged = 0;  // identical re-pushes, not verified again
    std::array<uint64_t, kGrantRejectReasons> grants_rejected{};  // by GrantRejectReason
    uint64_t backlog_high_water = 0;
    uint64_t revocations = 0;
    uint64_t revocations_not_recorded = 0;  // the revoked set was full: activations fail closed
    uint64_t grants_expired = 0;
    uint64_t grants_swept = 0;
    uint64_t revoked_ids_pruned = 0;
    uint64_t key_reloads = 0;
    uint64_t key_reload_failures = 0;
    uint64_t grants_ended_by_key_removal = 0;
    uint64_t events_posted = 0;
    uint64_t events_dropped = 0;     // the event ring was full: never blocks, never overwrites
    uint64_t events_unattached = 0;  // jitd had not attached to the event ring
    uint64_t events_failed = 0;      // any other ring or encoding error (a bug or a corrupt peer)
    uint64_t cmd_attaches = 0;
    uint64_t cmd_attach_failures = 0;  // the cmd file exists but was refused (owner, mode, header)
    uint64_t cmd_file_faults = 0;      // SIGBUS reading jitd's cmd file (it shrank under the mapping)
    uint64_t cmd_ring_corrupt = 0;     // ticks that found the command ring's frame broken
    uint64_t clock_offset_updates = 0;
};

// How open() found the state file.
struct ControlStart {
    RegionStart region = RegionStart::fresh;
    bool grant_table_reopened = false;  // the grants of the previous run were kept (MAC-checked)
    std::string grant_table_note;       // why the table was created anew, when it was not reopened
    ReopenReport reopen;                // what reopen kept and dropped
    double reopen_ms = 0;               // how long reopen took (MAC checks included)
    uint32_t services_kept = 0;       // service map entries kept (jitd re-sends their definitions)
    size_t service_ids_reserved = 0;  // ids of deleted services whose grants still live
};

// The state file's backend map, kept up to date by the service table (its
// BackendSlotSink): each counter slot named with its backend, and with the
// baseline its counters summed to over the stats blocks when it was assigned.
class BackendMapWriter final : public BackendSlotSink {
  public:
    BackendMapWriter(StateRegion& region, StatsBlockShape shape) : region_(region), shape_(shape) {}
    void slot_assigned(uint32_t slot, uint16_t service_id, const BackendInfo& backend, bool fresh) override;
    void slot_freed(uint32_t slot) override;

  private:
    StateRegion& region_;
    StatsBlockShape shape_;
};

class ControlLoop {
  public:
    // Creates or re-opens jitlb's own state file and the grant table in it.
    // On a restart of the same instance it re-attaches: the grant table is
    // reopened (every entry's MAC checked, odd sequences repaired, entries of
    // issuers no longer in the key file dropped), the service name -> id map
    // is kept (odd entries repaired), the command ring's consumer index is
    // kept. The services themselves are not: jitd sees the state file's new
    // epoch and re-sends every ServiceSet and BackendSet, which find their
    // old ids in the map. The stats lines start at zero and the backend map
    // empty; from then on it names the counter slots `services` assigns.
    // Throws ControlLoopError or RegionError; nothing is returned half-started.
    static std::unique_ptr<ControlLoop> open(const ControlConfig& config, ServiceTable& services,
                                             Clock& clock);

    ControlLoop(const ControlLoop&) = delete;
    ControlLoop& operator=(const ControlLoop&) = delete;
    ~ControlLoop();

    // One tick: heartbeat and clock offset; attach the cmd file if it has
    // appeared (a missing file is normal until jitd starts); pop the command
    // ring into the backlog, applying revocations, service changes and key
    // reloads at once; verify at most verify_per_tick grants; post
    // GrantExpired for grants past not-after and sweep them out of the table.
    TickReport tick();
    // Ticks with no verification cap until the command ring and the backlog
    // are empty (jitlb calls it once before starting its ports).
    TickReport drain_all();
    // Re-reads the issuer key file (SIGHUP, or a KeyReload command with its
    // sequence). Grants of removed keys end at once (GrantRevoked with
    // issuer_key_removed each, then KeysReloaded). A bad file keeps the old
    // keys and posts CommandRejected(key_reload_failed) with the message.
    void reload_keys(uint64_t command_sequence = 0);
    // A denial a worker sampled, forwarded to the event ring (for the audit
    // log: who knocked). Dropped and counted like any event when the ring is
    // full or jitd is not attached.
    void post_denial(const DenialSample& sample);

    const GrantTableReader& grants() const noexcept { return writer_->reader(); }
    const GrantTableWriter& grant_writer() const noexcept { return *writer_; }
    StateRegion& state() noexcept { return region_; }
    const TrustedIssuers& issuers() const noexcept { return issuers_; }
    const ControlStats& stats() const noexcept { return stats_; }
    const ControlStart& start() const noexcept { return start_; }
    size_t backlog_length() const noexcept { return backlog_size_; }
    bool cmd_attached() const noexcept { return static_cast<bool>(cmd_file_); }
    uint64_t grants_rejected(GrantRejectReason reason) const noexcept;
    uint64_t commands_rejected(CommandRejectReason reason) const noexcept;
    // The last problem worth a log line (cmd file refused, ring corrupt, key
    // reload failed); empty if none. main.cc logs it when it changes.
    const std::string& last_error() const noexcept { return last_error_; }
    // The id the service map gives `name`, 0 if none.
    uint32_t service_id(std::string_view name) const noexcept;
    // The name the map gives an id, or "" (slow: a scan; for reports).
    std::string service_name(uint32_t id) const;

  private:
    // A GrantPush that passed the cheap checks, waiting for verification.
    struct PendingGrant {
        SignedGrant bytes{};
        GrantId grant_id{};
        uint64_t command_sequence = 0;
    };
    // A grant's not-after, for GrantExpired at the right tick.
    struct Deadline {
        int64_t not_after_ms = 0;
        GrantId grant_id{};
        friend auto operator<=>(const Deadline&, const Deadline&) = default;
    };
    // A deleted service's id, kept from other names while grants of it may
    // live (the grant table keys grants by id).
    struct ReservedId {
        std::string name;  // empty: unknown (found at restart)
        int64_t until_ms = 0;
    };

    ControlLoop(const ControlConfig& config, ServiceTable& services, Clock& clock);
    void start_grant_table(const GrantTableConfig& table_config);
    void rebuild_private_indexes();

    TickReport run_tick(bool capped);
    void maintain_cmd_file(int64_t now_ms);
    bool try_attach_cmd();
    void detach_cmd();
    // Runs `body` with SIGBUS inside the cmd file's mapping turned into a
    // detach (cmd_file_faults, last_error) instead of a crash; false then.
    template <class F>
    bool guard_cmd_file(F&& body);
    void publish_clock();
    void drain_commands(int64_t now_ms, uint32_t limit, TickReport& report);
    void apply_command(uint64_t sequence, const Message& message, int64_t now_ms,
                       TickReport& report);
    void on_grant_push(uint64_t sequence, const GrantPush& push, int64_t now_ms,
                       TickReport& report);
    void on_revoke(const Revoke& revoke, int64_t now_ms, TickReport& report);
    void on_service_set(uint64_t sequence, const ServiceSet& set, TickReport& report);
    void on_backend_set(uint64_t sequence, const BackendSet& set, TickReport& report);
    void on_service_delete(uint64_t sequence, const ServiceDelete& del, int64_t now_ms,
                           TickReport& report);
    void verify_backlog(uint32_t limit, int64_t now_ms, TickReport& report);
    void verify_one(const PendingGrant& pending, int64_t now_ms, TickReport& report);
    void expire_grants(int64_t now_ms, bool capped, TickReport& report);
    void reload_keys_now(uint64_t command_sequence, TickReport& report);

    void reject_grant(const GrantId& id, GrantRejectReason reason, std::string_view text,
                      TickReport& report);
    void reject_command(uint64_t sequence, uint16_t type, CommandRejectReason reason,
                        std::string_view text, TickReport& report);
    void activated(const GrantId& id, uint32_t service_id, int64_t not_after_ms,
                   TickReport& report);
    void post(const Message& event, TickReport& report);

    uint32_t assign_service_id(std::string_view name, bool& newly_assigned);
    void write_service(uint32_t id, std::string_view name, uint64_t generation);
    void free_service(uint32_t id);
    void note_grant(uint16_t service_id, const GrantId& id, int64_t not_after_ms);

    ControlConfig config_;
    ServiceTable& services_;
    Clock& clock_;
    ControlStart start_;

    SharedFile state_file_;
    StateRegion region_;
    std::optional<GrantTableWriter> writer_;
    std::shared_ptr<BackendMapWriter> backend_map_;  // services_ holds a weak reference
    TrustedIssuers issuers_;
    VerifyPolicy policy_;
    RingProducer events_;

    SharedFile cmd_file_;  // empty until jitd's file appears
    CmdRegionView cmd_;
    RingConsumer commands_;
    std::vector<uint8_t> record_buffer_;  // holds any record of the command ring
    int64_t next_attach_ms_ = 0;          // a refused or missing cmd file is retried from then
    int64_t next_replaced_check_ms_ = 0;
    std::string cmd_path_;

    std::vector<PendingGrant> backlog_;  // a ring of backlog_capacity
    size_t backlog_head_ = 0;
    size_t backlog_size_ = 0;

    std::priority_queue<Deadline, std::vector<Deadline>, std::greater<>> deadlines_;
    std::vector<int64_t> service_grants_until_ms_;  // by service id: latest not-after activated
    std::map<uint32_t, ReservedId> reserved_ids_;
    // The service map's names, mirrored: every grant push looks one up, and a
    // walk of the shared map costs a seqlock read per entry.
    std::map<std::string, uint32_t, std::less<>> service_ids_;
    int64_t last_sweep_ms_ = 0;  // GrantTableWriter::expire's last call

    bool clock_published_ = false;
    int64_t published_offset_ = 0;

    ControlStats stats_;
    std::string last_error_;
};

// How long the main lcore sleeps after a tick that took `worked`: a tick with
// no backlog sleeps `tick`; with grants waiting, the next tick runs at once,
// unless the main lcore runs at a real-time priority: then nothing else on its
// core would run while the backlog lasts, so it sleeps as long as the tick
// worked (at least 10 us), which holds it to about half of the core.
inline std::chrono::nanoseconds main_lcore_pause(bool backlog, bool realtime, std::chrono::nanoseconds tick,
                                                 std::chrono::nanoseconds worked) noexcept {
    if (!backlog) return tick;
    if (!realtime) return std::chrono::nanoseconds{0};
    return std::max(worked, std::chrono::nanoseconds{std::chrono::microseconds{10}});
}

}  // namespace jitlb::lb
