// jitlb's main lcore (control_loop.h).
#include "control_loop.h"

#include <setjmp.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <type_traits>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace jitlb::lb {

namespace {

// A missing or refused cmd file is tried again this often: jitd may start at
// any time, and an open() per tick would be a system call per 100 us.
constexpr int64_t kAttachRetryMs = 100;
// docs/shared-region.md: a peer's re-created file is looked for about once a second.
constexpr int64_t kReplacedCheckMs = 1000;

// Event texts are 0..127 bytes of printable ASCII (messages.h): anything
// else becomes '?', and a longer text is cut.
std::string event_text(std::string_view text) {
    std::string out(text.substr(0, kMaxTextLen));
    for (char& c : out)
        if (c < 0x20 || c > 0x7e) c = '?';
    return out;
}

// The event already carries the grant id: a text that starts with it spends
// 39 of its 127 bytes on it, so it goes.
std::string without_grant_id(std::string text, const GrantId& id) {
    const std::string prefix = "grant " + grant_id_hex(id) + " ";
    if (text.starts_with(prefix)) text.erase(0, prefix.size());
    return text;
}

GrantRejectReason verify_reject_reason(VerifyStatus status) noexcept {
    switch (status) {
        case VerifyStatus::unknown_issuer:
            return GrantRejectReason::unknown_issuer;
        case VerifyStatus::bad_signature:
            return GrantRejectReason::bad_signature;
        case VerifyStatus::expired:
            return GrantRejectReason::expired;
        case VerifyStatus::starts_too_far_ahead:
            return GrantRejectReason::starts_too_far_ahead;
        case VerifyStatus::too_long:
            return GrantRejectReason::too_long;
        case VerifyStatus::ok:
        case VerifyStatus::malformed:
            break;
    }
    return GrantRejectReason::malformed;
}

// A grant id names one record; reusing it for another is the issuer's fault,
// and no reason fits better than malformed.
constexpr std::string_view kIdReusedText =
    "its id is live with another record or source (grant ids are single-use: mint a new one)";

std::pair<GrantRejectReason, std::string> upsert_reject(UpsertResult result, uint64_t capacity) {
    switch (result) {
        case UpsertResult::superseded:
            return {GrantRejectReason::superseded,
                    "not started yet, or the live grant for this source and service ends later "
                    "(push it again when it starts)"};
        case UpsertResult::revoked_id:
            return {GrantRejectReason::revoked, "its id was revoked: it never reactivates"};
        case UpsertResult::revoked_set_full:
            return {GrantRejectReason::revoked_set_full,
                    "the revoked-id set is full: nothing activates until unrecorded revocations "
                    "would have expired (raise grant_capacity)"};
        case UpsertResult::table_full:
            return {
                GrantRejectReason::table_full,
                fmt::format("the grant table is full ({} grants; raise grant_capacity)", capacity)};
        case UpsertResult::expired:
            return {GrantRejectReason::expired, "expired before it could be applied"};
        case UpsertResult::duplicate_id:
            return {GrantRejectReason::malformed, std::string(kIdReusedText)};
        case UpsertResult::invalid:
        case UpsertResult::inserted:
        case UpsertResult::replaced:
        case UpsertResult::unchanged:
            break;
    }
    return {GrantRejectReason::malformed, "its source or service does not fit the grant table"};
}

GrantTableConfig grant_table_config(const ControlConfig& c) {
    GrantTableConfig t;
    t.capacity = c.grant_capacity;
    t.max_service_id = c.service_capacity;  // map ids are 1..service_capacity
    t.ticks_per_second = c.ticks_per_second;
    t.skew_ms = c.skew_ms;
    t.hash_seed = 0;  // random: a restart reopens the table with its stored seed
    t.slots_per_grant = c.grant_slots_per_grant;
    return t;
}

void check_config(const ControlConfig& c) {
    const auto fail = [](std::string what) {
        throw ControlLoopError("jitlb configuration: " + what);
    };
    if (!valid_instance_name(c.instance))
        fail(fmt::format("instance '{}' is not 1 to 32 characters of [A-Za-z0-9_-]", c.instance));
    if (c.region_dir.empty()) fail("no directory for the state file");
    if (c.issuer_keys_file.empty())
        fail("no issuer key file (jitlb trusts only the keys it lists)");
    if (c.verify_per_tick == 0) fail("verify_per_tick is 0: no grant would ever be verified");
    if (c.backlog_capacity == 0)
        fail("backlog_capacity is 0: no grant could wait for verification");
    if (c.commands_per_tick == 0)
        fail("commands_per_tick is 0: the command ring would never drain");
    if (c.expire_budget == 0)
        fail("expire_budget is 0: expired grants would never leave the table");
    if (c.expiry_events_per_tick == 0) fail("expiry_events_per_tick is 0");
    const uint32_t max_services = std::min<uint32_t>(kMaxServiceCapacity, kGrantTableMaxServiceId);
    if (c.service_capacity == 0 || c.service_capacity > max_services)
        fail(fmt::format("service_capacity {} is outside 1..{}", c.service_capacity, max_services));
    if (c.horizon_ms < 0 || c.max_duration_ms <= 0)
        fail(fmt::format("horizon {} ms and maximum duration {} ms must be >= 0 and > 0",
                         c.horizon_ms, c.max_duration_ms));
    if ((c.state_mode & 022) != 0)
        fail(fmt::format("state file mode {:04o} lets group or others write it (use 0640)",
                         static_cast<unsigned>(c.state_mode)));
    if (std::string problem = GrantTable::check_config(grant_table_config(c)); !problem.empty())
        fail(problem);
}

}  // namespace

Clock::~Clock() = default;

TickReport& TickReport::operator+=(const TickReport& o) noexcept {
    cmd_attached = o.cmd_attached;
    ring_corrupt = ring_corrupt || o.ring_corrupt;
    commands += o.commands;
    commands_rejected += o.commands_rejected;
    services_applied += o.services_applied;
    grants_queued += o.grants_queued;
    grants_verified += o.grants_verified;
    grants_activated += o.grants_activated;
    grants_rejected += o.grants_rejected;
    revocations += o.revocations;
    grants_expired += o.grants_expired;
    grants_swept += o.grants_swept;
    events_posted += o.events_posted;
    events_dropped += o.events_dropped;
    backlog = o.backlog;
    return *this;
}

// --- start -------------------------------------------------------------------------------

std::unique_ptr<ControlLoop> ControlLoop::open(const ControlConfig& config, ServiceTable& services,
                                               Clock& clock) {
    return std::unique_ptr<ControlLoop>(new ControlLoop(config, services, clock));
}

ControlLoop::ControlLoop(const ControlConfig& config, ServiceTable& services, Clock& clock)
    : config_(config), services_(services), clock_(clock) {
    if (config_.cmd_dir.empty()) config_.cmd_dir = config_.region_dir;
    check_config(config_);
    // The keys first: a bad key file stops the start before any file is touched.
    if (const KeyFileError e = read_public_key_file(config_.issuer_keys_file, issuers_); !e.ok())
        throw ControlLoopError(fmt::format("issuer keys: {}", e.message));
    policy_.skew_ms = config_.skew_ms;
    policy_.horizon_ms = config_.horizon_ms;
    policy_.max_duration_ms = config_.max_duration_ms;

    const GrantTableConfig table_config = grant_table_config(config_);
    const GrantTableSizes table_sizes = GrantTable::sizes(table_config);
    StateSizes sizes;
    sizes.grant_table_bytes = table_sizes.table_bytes;
    sizes.revoked_set_bytes = table_sizes.revoked_set_bytes;
    sizes.service_tables_bytes = 0;  // the services live in ServiceTable's snapshots
    sizes.grant_format_hash = GrantTable::format_hash();
    sizes.event_ring_slots = config_.event_ring_slots;
    sizes.worker_stats_lines = config_.worker_stats_lines;
    sizes.service_capacity = config_.service_capacity;
    sizes.backend_capacity = config_.backend_capacity;
    if (std::string problem = check_state_sizes(sizes); !problem.empty())
        throw ControlLoopError("jitlb configuration: " + problem);
    const StateLayout layout = compute_state_layout(sizes);
    cmd_path_ = cmd_file_path(config_.cmd_dir, config_.instance);

    state_file_ =
        SharedFile::create_or_open_own(state_file_path(config_.region_dir, config_.instance),
                                       layout.total_bytes, config_.state_mode);
    // Re-used (same build and sizes): the service map (odd entries repaired),
    // the grant table, the revoked set and the command consumer index stay.
    start_.region = start_state_region(state_file_.mutable_bytes(), sizes, new_region_epoch(),
                                       config_.ticks_per_second, region_);
    start_grant_table(table_config);
    // Counters are totals since this start; slots are assigned anew as
    // backend_sets arrive (none is applied yet), each from a zero baseline.
    std::memset(region_.worker_stats.data(), 0, region_.worker_stats.size());
    backend_map_clear(region_);
    backend_map_ = std::make_shared<BackendMapWriter>(
        region_, StatsBlockShape{config_.service_capacity, config_.backend_capacity});
    services_.set_backend_sink(backend_map_);
    events_ = RingProducer(region_.event_slots, kRingSlotBytes, region_.event_producer, nullptr);
    backlog_.resize(config_.backlog_capacity);
    service_grants_until_ms_.assign(size_t{config_.service_capacity} + 1, 0);
    rebuild_private_indexes();
    publish_clock();  // workers started before the first tick need it too
}

ControlLoop::~ControlLoop() = default;

void ControlLoop::start_grant_table(const GrantTableConfig& table_config) {
    const std::span<std::byte> table = std::as_writable_bytes(region_.grant_table);
    const std::span<std::byte> revoked = std::as_writable_bytes(region_.revoked_set);
    GrantTableError error;
    if (start_.region == RegionStart::reused) {
        ReopenOptions options;
        options.ticks_per_second = config_.ticks_per_second;  // the TSC's hz may differ
        options.skew_ms = config_.skew_ms;
        // A key removed while jitlb was down ends its grants now.
        options.keep_issuer = [this](const IssuerKeyId& id) {
            return issuers_.find(id) != nullptr;
        };
        options.parts = config_.reopen_parts;
        options.run_parts = config_.reopen_run_parts;
        const auto reopen_start = std::chrono::steady_clock::now();
        writer_ = GrantTableWriter::reopen(table, revoked, config_.mac_key, error, &start_.reopen,
                                           options);
        start_.reopen_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                                     reopen_start).count();
        if (writer_ && (writer_->config().capacity != table_config.capacity ||
                        writer_->config().max_service_id != table_config.max_service_id)) {
            start_.grant_table_note = fmt::format(
                "the grant table held capacity {} and service ids up to {}, the configuration "
                "asks for {} and {}: created anew (jitd re-pushes its grants)",
                writer_->config().capacity, writer_->config().max_service_id, table_config.capacity,
                table_config.max_service_id);
            writer_.reset();
        } else if (!writer_) {
            // Unreadable: start empty (fail closed) rather than trust it;
            // jitd re-pushes its grants and revocations on the new epoch.
            start_.grant_table_note = fmt::format(
                "the grant table could not be reopened ({}): created anew (jitd re-pushes its "
                "grants and revocations)",
                error.message);
        } else {
            start_.grant_table_reopened = true;
            return;
        }
    }
    writer_ = GrantTableWriter::create(table, revoked, table_config, config_.mac_key, error);
    if (!writer_)
        throw ControlLoopError(
            fmt::format("{}: grant table: {}", state_file_.path(), error.message));
}

// The private indexes a restart lost: the name -> id index of the service
// map, every live grant's deadline, and the ids of deleted services whose
// grants are still in the table.
void ControlLoop::rebuild_private_indexes() {
    for (uint32_t index = 0; index < region_.services.size(); ++index) {
        ServiceInfo info;
        service_map_read(region_.services[index], info);  // our own map: never busy
        if (info.service_id == 0) continue;
        service_ids_.emplace(std::string(info.name_view()), info.service_id);
        ++start_.services_kept;
    }
    const GrantTableReader& reader = writer_->reader();
    for (uint64_t s = 0; s < reader.slot_count(); ++s) {
        SlotSnapshot slot;
        GrantDetails details;
        if (reader.read_slot(s, slot) != SnapshotStatus::ok ||
            reader.read_details(slot.entry, details) != SnapshotStatus::ok)
            continue;
        note_grant(slot.key.service_id, details.grant_id, details.not_after_ms);
    }
    for (uint32_t id = 1; id < service_grants_until_ms_.size(); ++id) {
        ServiceInfo info;
        service_map_read(region_.services[id - 1], info);
        if (service_grants_until_ms_[id] != 0 && info.service_id == 0)
            reserved_ids_[id] = ReservedId{"", service_grants_until_ms_[id]};
    }
    start_.service_ids_reserved = reserved_ids_.size();
}

// --- the tick --------------------------------------------------------------------------------

// jitd's cmd file is mapped, and jitd can shrink it (ftruncate) at any time:
// the next read past its new end is a SIGBUS, which would kill jitlb. Every
// access to that mapping happens on the main lcore inside guard_cmd_file, so
// the handler turns a SIGBUS whose address lies in the mapping into a jump back
// to the guard, which detaches from the file (and attaches again once jitd
// lays it out anew). Any other SIGBUS keeps its previous disposition. What the
// jump skips is at most one command's or event's work: no destructor of the
// frames in between runs, so a decoded message's buffers may leak, once per
// fault. A fault between a grant table change and its event loses the event
// only; jitd's re-push is acknowledged, its re-sent revocation finds nothing.
namespace {

thread_local sigjmp_buf* t_cmd_jump = nullptr;
thread_local const SharedFile* t_cmd_file = nullptr;
struct sigaction g_previous_sigbus;

void on_sigbus(int signal_number, siginfo_t* info, void* context) {
    if (t_cmd_jump != nullptr && t_cmd_file != nullptr) {
        const std::span<const uint8_t> mapped = t_cmd_file->bytes();
        const auto* at = static_cast<const uint8_t*>(info->si_addr);
        if (!mapped.empty() && at >= mapped.data() && at < mapped.data() + mapped.size())
            siglongjmp(*t_cmd_jump, 1);
    }
    // Not ours: as it would have been without us (returning re-runs the
    // faulting access, which then gets that disposition).
    if ((g_previous_sigbus.sa_flags & SA_SIGINFO) != 0 && g_previous_sigbus.sa_sigaction != nullptr) {
        g_previous_sigbus.sa_sigaction(signal_number, info, context);
        return;
    }
    if (g_previous_sigbus.sa_handler != SIG_DFL && g_previous_sigbus.sa_handler != SIG_IGN &&
        g_previous_sigbus.sa_handler != nullptr) {
        g_previous_sigbus.sa_handler(signal_number);
        return;
    }
    signal(SIGBUS, SIG_DFL);
}

void install_sigbus_handler() {
    static const bool installed = [] {
        struct sigaction sa {};
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        return sigaction(SIGBUS, &sa, &g_previous_sigbus) == 0;
    }();
    (void)installed;
}

}  // namespace

template <class F>
bool ControlLoop::guard_cmd_file(F&& body) {
    install_sigbus_handler();
    sigjmp_buf jump;
    sigjmp_buf* const outer = t_cmd_jump;
    const SharedFile* const outer_file = t_cmd_file;
    if (sigsetjmp(jump, 1) != 0) {  // 1: the signal mask (SIGBUS blocked in the handler) is restored
        t_cmd_jump = outer;
        t_cmd_file = outer_file;
        ++stats_.cmd_file_faults;
        last_error_ = fmt::format(
            "{}: the command file shrank under jitlb's mapping (SIGBUS reading it): detached; "
            "attaching again when jitd lays it out anew",
            cmd_path_);
        detach_cmd();
        next_attach_ms_ = clock_.unix_ms() + kAttachRetryMs;
        return false;
    }
    t_cmd_jump = &jump;
    t_cmd_file = &cmd_file_;
    body();
    t_cmd_jump = outer;
    t_cmd_file = outer_file;
    return true;
}

TickReport ControlLoop::tick() {
    TickReport report;
    guard_cmd_file([&] { report = run_tick(true); });
    return report;
}

TickReport ControlLoop::drain_all() {
    TickReport total;
    for (;;) {
        TickReport r;
        if (!guard_cmd_file([&] { r = run_tick(false); })) continue;  // detached: drain what is left
        total += r;
        if (r.ring_corrupt || (r.commands == 0 && backlog_size_ == 0)) break;
    }
    return total;
}

TickReport ControlLoop::run_tick(bool capped) {
    TickReport report;
    const int64_t now_ms = clock_.unix_ms();
    ++stats_.ticks;
    publish_heartbeat(*region_.header, static_cast<uint64_t>(std::max<int64_t>(now_ms, 0)));
    publish_clock();
    maintain_cmd_file(now_ms);
    if (cmd_file_) drain_commands(now_ms, config_.commands_per_tick, report);
    verify_backlog(capped ? config_.verify_per_tick : std::numeric_limits<uint32_t>::max(), now_ms,
                   report);
    expire_grants(now_ms, capped, report);
    std::erase_if(reserved_ids_, [&](const auto& r) { return r.second.until_ms <= now_ms; });
    report.cmd_attached = cmd_attached();
    report.backlog = backlog_size_;
    return report;
}

// Workers compute Unix ticks as tsc + offset, so a grant's not-after is kept
// within the offset's error: the clock is sampled in microseconds, paired with
// the TSC around it, and re-published when it moved by more than 50 us (NTP
// slews at most 0.5 ms/s; a step shows at the next tick).
void ControlLoop::publish_clock() {
    int64_t unix_us = 0;
    uint64_t ticks_at = 0;
    if (!clock_.sample(unix_us, ticks_at) && clock_published_) return;  // try again next tick
    // Whole seconds and the rest apart: no overflow for TSCs up to ~5 GHz until 2106.
    const uint64_t us = static_cast<uint64_t>(std::max<int64_t>(unix_us, 0));
    const uint64_t tps = config_.ticks_per_second;
    const uint64_t unix_ticks = us / 1'000'000 * tps + us % 1'000'000 * tps / 1'000'000;
    const int64_t offset = static_cast<int64_t>(unix_ticks - ticks_at);
    const uint64_t diff = static_cast<uint64_t>(offset) - static_cast<uint64_t>(published_offset_);
    const uint64_t distance = std::min(diff, uint64_t{0} - diff);
    if (clock_published_ && distance <= config_.ticks_per_second / 20'000) return;
    publish_clock_offset(*region_.header, offset);
    published_offset_ = offset;
    clock_published_ = true;
    ++stats_.clock_offset_updates;
}

void ControlLoop::maintain_cmd_file(int64_t now_ms) {
    if (cmd_file_ && now_ms >= next_replaced_check_ms_) {
        next_replaced_check_ms_ = now_ms + kReplacedCheckMs;
        // jitd re-created its file (another size) or removed it: what we map
        // is dead. Commands are idempotent, so nothing is lost by re-attaching.
        if (cmd_file_.replaced_on_disk()) {
            detach_cmd();
            next_attach_ms_ = now_ms;
        }
    }
    if (!cmd_file_ && now_ms >= next_attach_ms_) {
        if (try_attach_cmd())
            next_replaced_check_ms_ = now_ms + kReplacedCheckMs;
        else
            next_attach_ms_ = now_ms + kAttachRetryMs;
    }
}

bool ControlLoop::try_attach_cmd() {
    try {
        SharedFile file = SharedFile::open_peer_readonly(cmd_path_, config_.cmd_owner_uid);
        const CmdRegionView view = attach_cmd_region(file.bytes(), cmd_path_);
        cmd_file_ = std::move(file);  // the mapping, and so the view, stays where it is
        cmd_ = view;
    } catch (const RegionError& e) {
        switch (e.code()) {
            case RegionErrc::not_found:        // jitd has not started
            case RegionErrc::too_small:        // jitd is creating it
            case RegionErrc::not_initialised:  // jitd is laying it out
                return false;
            default:  // refused: wrong owner, writable by others, another build...
                ++stats_.cmd_attach_failures;
                last_error_ = e.what();
                return false;
        }
    }
    // Our index and epoch are in our own file: a restarted jitlb carries on
    // where it was, and a restarted jitd (new epoch) is attached to afresh.
    commands_ =
        RingConsumer(cmd_.cmd_slots, kRingSlotBytes, cmd_.cmd_producer, region_.cmd_consumer);
    record_buffer_.resize(commands_.max_record_bytes());
    events_.set_peer(cmd_.event_consumer);
    ++stats_.cmd_attaches;
    return true;
}

void ControlLoop::detach_cmd() {
    events_.set_peer(nullptr);
    commands_ = RingConsumer();
    cmd_ = CmdRegionView{};
    cmd_file_ = SharedFile();
}

// --- commands --------------------------------------------------------------------------------

void ControlLoop::drain_commands(int64_t now_ms, uint32_t limit, TickReport& report) {
    for (uint32_t n = 0; n < limit; ++n) {
        DecodedMessage decoded;
        const ReceiveResult r = pop_message(commands_, Direction::command, record_buffer_, decoded);
        switch (r.status) {
            case ReceiveStatus::empty:
                return;
            case ReceiveStatus::ring_corrupt:
                // Nothing was consumed; it stays stuck until jitd resets its
                // ring (a restart), which gives a new epoch to attach to.
                report.ring_corrupt = true;
                ++stats_.cmd_ring_corrupt;
                last_error_ = fmt::format("{}: {} (restart jitd to reset its command ring)",
                                          cmd_path_, describe_ring_fault(commands_.fault()));
                return;
            case ReceiveStatus::rejected:
                ++report.commands;
                ++stats_.commands;
                reject_command(
                    r.sequence, r.type, command_reject_reason(r.fault.error),
                    fmt::format("{} record (type {:#06x}): {}", message_type_name(r.type), r.type,
                                describe_message_fault(r.fault)),
                    report);
                break;
            case ReceiveStatus::ok:
                ++report.commands;
                ++stats_.commands;
                apply_command(r.sequence, decoded.message, now_ms, report);
                break;
        }
    }
}

void ControlLoop::apply_command(uint64_t sequence, const Message& message, int64_t now_ms,
                                TickReport& report) {
    std::visit(
        [&](const auto& m) {
            using T = std::decay_t<decltype(m)>;
            if constexpr (std::is_same_v<T, GrantPush>) {
                on_grant_push(sequence, m, now_ms, report);
            } else if constexpr (std::is_same_v<T, Revoke>) {
                on_revoke(m, now_ms, report);
            } else if constexpr (std::is_same_v<T, ServiceSet>) {
                on_service_set(sequence, m, report);
            } else if constexpr (std::is_same_v<T, BackendSet>) {
                on_backend_set(sequence, m, report);
            } else if constexpr (std::is_same_v<T, ServiceDelete>) {
                on_service_delete(sequence, m, now_ms, report);
            } else if constexpr (std::is_same_v<T, KeyReload>) {
                reload_keys_now(sequence, report);
            } else {
                // pop_message refuses events on the command ring; kept for safety.
                reject_command(sequence, static_cast<uint16_t>(message_type(message)),
                               CommandRejectReason::wrong_direction, "an event on the command ring",
                               report);
            }
        },
        message);
}

// The cheap checks, at once: form, service, re-push, revocation, room. Only
// the signature waits in the backlog.
void ControlLoop::on_grant_push(uint64_t sequence, const GrantPush& push, int64_t now_ms,
                                TickReport& report) {
    ++stats_.grants_received;
    ParsedSignedGrant parsed;
    if (const GrantFormatError e = parse_signed_grant(push.grant, parsed);
        e != GrantFormatError::ok) {
        reject_grant(GrantId{}, GrantRejectReason::malformed,
                     fmt::format("malformed ({}): {}", grant_format_error_name(e),
                                 grant_format_error_message(e)),
                     report);
        return;
    }
    const Grant& g = parsed.grant;
    // The service map is the authority, not the ServiceTable: after a restart
    // it names every service before jitd has re-sent their definitions, and
    // the grant table keys grants by its ids.
    const uint32_t sid = service_id(g.service);
    if (sid == 0) {
        reject_grant(g.grant_id, GrantRejectReason::unknown_service,
                     fmt::format("service {} is not defined in jitlb (send its service_set first)",
                                 g.service),
                     report);
        return;
    }
    const RecordHash hash = grant_record_hash(
        std::span<const uint8_t, kGrantRecordSize>(push.grant.data(), kGrantRecordSize));
    if (const std::optional<uint32_t> entry = writer_->find_grant(g.grant_id)) {
        GrantDetails live;
        if (grants().read_details(*entry, live) == SnapshotStatus::ok) {
            if (live.record_hash != hash) {
                reject_grant(g.grant_id, GrantRejectReason::malformed, kIdReusedText, report);
                return;
            }
            // The same record is live: acknowledged without verifying again
            // (DESIGN.md). Past not-after it goes on and fails as expired.
            if (live.not_after_ms > now_ms) {
                ++stats_.grants_repush_acknowledged;
                activated(g.grant_id, sid, live.not_after_ms, report);
                return;
            }
        }
    }
    if (writer_->is_revoked(g.grant_id)) {
        reject_grant(g.grant_id, GrantRejectReason::revoked,
                     "its id was revoked: it never reactivates", report);
        return;
    }
    if (backlog_size_ == backlog_.size()) {
        reject_grant(g.grant_id, GrantRejectReason::backlog_full,
                     fmt::format("the verification backlog is full ({} grants): push it again",
                                 backlog_.size()),
                     report);
        return;
    }
    PendingGrant& slot = backlog_[(backlog_head_ + backlog_size_) % backlog_.size()];
    std::copy(push.grant.begin(), push.grant.end(), slot.bytes.begin());
    slot.grant_id = g.grant_id;
    slot.command_sequence = sequence;
    ++backlog_size_;
    stats_.backlog_high_water = std::max<uint64_t>(stats_.backlog_high_water, backlog_size_);
    ++report.grants_queued;
}

// One store in the table, effective for every worker's next lookup. A grant
// with this id still in the backlog is refused when its turn comes.
void ControlLoop::on_revoke(const Revoke& revoke, int64_t now_ms, TickReport& report) {
    // The id stays revoked until no grant jitlb would accept could still be
    // valid: one starting at the horizon (plus the skew) and lasting the longest
    // duration. A later not-after would only fill the revoked set (which, full,
    // refuses every new grant) with ids that can never matter.
    const int64_t latest_end = now_ms + config_.horizon_ms + config_.skew_ms + config_.max_duration_ms;
    const int64_t until = std::min<int64_t>(
        static_cast<int64_t>(std::min<uint64_t>(revoke.not_after_ms, kMaxGrantTimeMs)), latest_end);
    const RevokeResult r = writer_->revoke(revoke.grant_id, until);
    if (r.set == RevokedSetStatus::full) ++stats_.revocations_not_recorded;
    ++stats_.revocations;
    ++stats_.commands_applied;
    ++report.revocations;
    post(GrantRevoked{revoke.grant_id, revoke.reason}, report);
}

void ControlLoop::on_service_set(uint64_t sequence, const ServiceSet& set, TickReport& report) {
    bool newly_assigned = false;
    const uint32_t id = assign_service_id(set.name, newly_assigned);
    if (id == 0) {
        reject_command(sequence, static_cast<uint16_t>(MessageType::service_set),
                       CommandRejectReason::service_map_full,
                       fmt::format("service {}: the service map is full ({} services; raise "
                                   "service_capacity)",
                                   set.name, region_.services.size()),
                       report);
        return;
    }
    const ServiceApplyResult r = services_.apply(static_cast<uint16_t>(id), set);
    if (!r.ok) {
        if (newly_assigned) free_service(id);  // no half-applied state
        reject_command(sequence, static_cast<uint16_t>(MessageType::service_set), r.reason, r.error,
                       report);
        return;
    }
    reserved_ids_.erase(id);  // its old grants belong to it again
    write_service(id, set.name, r.generation);
    ++stats_.commands_applied;
    ++report.services_applied;
    post(ServiceApplied{sequence, id, r.generation, set.name}, report);
}

void ControlLoop::on_backend_set(uint64_t sequence, const BackendSet& set, TickReport& report) {
    const ServiceApplyResult r = services_.apply(set);
    if (!r.ok) {
        reject_command(sequence, static_cast<uint16_t>(MessageType::backend_set), r.reason, r.error,
                       report);
        return;
    }
    write_service(r.service_id, set.service, r.generation);  // the map shows the generation
    ++stats_.commands_applied;
    ++report.services_applied;
    post(ServiceApplied{sequence, r.service_id, r.generation, set.service}, report);
}

// The service's grants stay in the table until they expire: workers find no
// VIP for a deleted service, so nothing uses them. Because the table keys
// grants by service id, the id is kept from other names until then (a new
// service must not inherit them); a service of the same name gets it back.
void ControlLoop::on_service_delete(uint64_t sequence, const ServiceDelete& del, int64_t now_ms,
                                    TickReport& report) {
    const uint32_t id = service_id(del.name);
    const ServiceApplyResult r = services_.remove(del.name);
    // Known to the map only: a restart, and jitd deletes before re-sending it.
    if (!r.ok && id == 0) {
        reject_command(sequence, static_cast<uint16_t>(MessageType::service_delete), r.reason,
                       r.error, report);
        return;
    }
    if (id != 0) {
        free_service(id);
        if (service_grants_until_ms_[id] > now_ms)
            reserved_ids_[id] = ReservedId{del.name, service_grants_until_ms_[id]};
    }
    ++stats_.commands_applied;
    ++report.services_applied;
    post(ServiceApplied{sequence, id != 0 ? id : r.service_id, r.generation, del.name}, report);
}

// --- verification ----------------------------------------------------------------------------

void ControlLoop::verify_backlog(uint32_t limit, int64_t now_ms, TickReport& report) {
    for (uint32_t n = 0; n < limit && backlog_size_ > 0; ++n) {
        const PendingGrant pending = backlog_[backlog_head_];
        backlog_head_ = (backlog_head_ + 1) % backlog_.size();
        --backlog_size_;
        verify_one(pending, now_ms, report);
    }
}

void ControlLoop::verify_one(const PendingGrant& pending, int64_t now_ms, TickReport& report) {
    const VerifyResult v = verify_grant(pending.bytes, issuers_, policy_, now_ms);
    ++stats_.grants_verified;
    ++report.grants_verified;
    if (!v.ok()) {
        reject_grant(pending.grant_id, verify_reject_reason(v.status),
                     without_grant_id(describe_verify_result(v, now_ms), pending.grant_id), report);
        return;
    }
    const Grant& g = v.grant;
    // Looked up again: a ServiceDelete may have come while it waited.
    const uint32_t sid = service_id(g.service);
    if (sid == 0) {
        reject_grant(g.grant_id, GrantRejectReason::unknown_service,
                     fmt::format("service {} was deleted while the grant waited", g.service),
                     report);
        return;
    }
    GrantEntry entry;
    entry.key =
        GrantKey{static_cast<uint16_t>(sid), g.source.family, g.source.prefix_len, g.source.addr};
    entry.grant_id = g.grant_id;
    entry.issuer_key_id = g.issuer_key_id;
    entry.not_before_ms = g.not_before_ms;
    entry.not_after_ms = g.not_after_ms;
    entry.record_hash = v.record_hash;
    const UpsertResult u = writer_->upsert(entry, now_ms);
    if (upsert_succeeded(u)) {
        if (u != UpsertResult::unchanged)
            note_grant(entry.key.service_id, g.grant_id, g.not_after_ms);
        activated(g.grant_id, sid, g.not_after_ms, report);
        return;
    }
    const auto [reason, text] = upsert_reject(u, writer_->config().capacity);
    reject_grant(g.grant_id, reason, text, report);
}

// --- expiry ------------------------------------------------------------------------------------

// Workers stop a grant at its not-after by themselves (one compare); this
// tells jitd (GrantExpired, at the first tick past not-after) and frees the
// entries. Every live grant has a deadline here, and the sweep runs only once
// every due deadline has had its event, so no grant leaves without one.
void ControlLoop::expire_grants(int64_t now_ms, bool capped, TickReport& report) {
    uint32_t events = 0;
    while (!deadlines_.empty() && deadlines_.top().not_after_ms <= now_ms) {
        if (capped && events == config_.expiry_events_per_tick) return;  // sweep next tick
        const Deadline due = deadlines_.top();
        deadlines_.pop();
        // Gone already: revoked, replaced, or its issuer key was removed.
        if (!writer_->find_grant(due.grant_id)) continue;
        ++events;
        ++stats_.grants_expired;
        ++report.grants_expired;
        post(GrantExpired{due.grant_id, static_cast<uint64_t>(due.not_after_ms)}, report);
    }
    // The sweep frees table entries and prunes the revoked set; workers stop
    // expired grants by themselves, so it need not run every tick: when a grant
    // just expired, in drain_all, and every 10 ms otherwise (a full tick's
    // budget every tick would keep the main lcore busy on a shared core).
    if (capped && events == 0 && now_ms - last_sweep_ms_ < 10 && now_ms >= last_sweep_ms_) return;
    last_sweep_ms_ = now_ms;
    const ExpireResult r = writer_->expire(now_ms, config_.expire_budget);
    stats_.grants_swept += r.grants_removed;
    stats_.revoked_ids_pruned += r.ids_pruned;
    report.grants_swept += static_cast<uint32_t>(r.grants_removed);
}

void ControlLoop::note_grant(uint16_t service, const GrantId& id, int64_t not_after_ms) {
    deadlines_.push(Deadline{not_after_ms, id});
    if (service < service_grants_until_ms_.size())
        service_grants_until_ms_[service] =
            std::max(service_grants_until_ms_[service], not_after_ms);
}

// --- keys ----------------------------------------------------------------------------------------

void ControlLoop::reload_keys(uint64_t command_sequence) {
    TickReport ignored;
    guard_cmd_file([&] { reload_keys_now(command_sequence, ignored); });
}

void ControlLoop::reload_keys_now(uint64_t command_sequence, TickReport& report) {
    TrustedIssuers fresh;
    if (const KeyFileError e = read_public_key_file(config_.issuer_keys_file, fresh); !e.ok()) {
        ++stats_.key_reload_failures;
        last_error_ =
            fmt::format("key reload failed, {} keys kept: {}", issuers_.size(), e.message);
        reject_command(command_sequence, static_cast<uint16_t>(MessageType::key_reload),
                       CommandRejectReason::key_reload_failed, last_error_, report);
        return;
    }
    std::vector<IssuerKeyId> removed;
    for (const TrustedIssuer& old : issuers_.entries()) {
        const TrustedIssuer* kept = fresh.find(old.key_id);
        if (kept == nullptr || kept->key != old.key) removed.push_back(old.key_id);
    }
    // remove_issuer only counts what it ends; the ids are taken first, for
    // one GrantRevoked each. A walk of the details: rare and slow-path.
    std::vector<GrantId> ending;
    if (!removed.empty()) {
        const GrantTableReader& reader = grants();
        for (uint32_t entry = 0; entry < reader.entry_count(); ++entry) {
            GrantDetails d;
            if (reader.read_details(entry, d) != SnapshotStatus::ok) continue;
            if (std::find(removed.begin(), removed.end(), d.issuer_key_id) == removed.end())
                continue;
            if (writer_->find_grant(d.grant_id) == entry) ending.push_back(d.grant_id);
        }
    }
    issuers_ = std::move(fresh);
    size_t ended = 0;
    for (const IssuerKeyId& id : removed) ended += writer_->remove_issuer(id);
    ++stats_.key_reloads;
    ++stats_.commands_applied;
    stats_.grants_ended_by_key_removal += ended;
    for (const GrantId& id : ending)
        post(GrantRevoked{id, RevokeReason::issuer_key_removed}, report);
    post(KeysReloaded{command_sequence, static_cast<uint32_t>(issuers_.size()),
                      static_cast<uint32_t>(ended)},
         report);
}

// --- the backend map -------------------------------------------------------------------------

void BackendMapWriter::slot_assigned(uint32_t slot, uint16_t service_id, const BackendInfo& backend, bool fresh) {
    BackendSlotInfo info;
    if (!fresh && backend_map_read(region_.backends[slot], info) != SeqRead::ok) return;  // ours: never busy
    if (fresh) {
        // No worker counts into a slot being assigned (it was free, or
        // recycled after quiescence): its sum is final until the snapshot
        // naming the new backend is published, after this.
        const BackendCounters base = sum_backend_slot(region_.worker_stats, shape_, slot);
        info.baseline_packets = base.packets;
        info.baseline_bytes = base.bytes;
    }
    info.service_id = service_id;
    info.address = backend.address;
    info.weight = backend.weight;
    info.id = {};
    std::memcpy(info.id.data(), backend.id.data(), std::min(backend.id.size(), kMaxBackendIdBytes));
    backend_map_write(region_, slot, info);
}

void BackendMapWriter::slot_freed(uint32_t slot) { backend_map_write(region_, slot, BackendSlotInfo{}); }

// --- the service map -------------------------------------------------------------------------

uint32_t ControlLoop::service_id(std::string_view name) const noexcept {
    const auto it = service_ids_.find(name);
    return it == service_ids_.end() ? 0 : it->second;
}

std::string ControlLoop::service_name(uint32_t id) const {
    for (const auto& [name, sid] : service_ids_)
        if (sid == id) return name;
    return {};
}

// The id `name` has in the map, or the first free one that no deleted
// service's live grants still use (service_map_assign would hand those out).
uint32_t ControlLoop::assign_service_id(std::string_view name, bool& newly_assigned) {
    newly_assigned = false;
    if (const uint32_t id = service_id(name); id != 0) return id;
    uint32_t chosen = 0;
    for (const auto& [id, reserved] : reserved_ids_) {
        if (reserved.name == name) {
            chosen = id;  // a service deleted and defined again finds its grants
            break;
        }
    }
    for (uint32_t index = 0; chosen == 0 && index < region_.services.size(); ++index) {
        ServiceInfo info;
        service_map_read(region_.services[index], info);
        if (info.service_id == 0 && !reserved_ids_.contains(index + 1)) chosen = index + 1;
    }
    if (chosen == 0 || !valid_service_name(name)) return 0;
    write_service(chosen, name, 0);
    newly_assigned = true;
    return chosen;
}

void ControlLoop::write_service(uint32_t id, std::string_view name, uint64_t generation) {
    ServiceInfo info;
    info.service_id = id;
    info.generation = generation;
    std::memcpy(info.name.data(), name.data(), std::min(name.size(), kMaxServiceNameLen));
    service_map_write(region_, id - 1, info);
    service_ids_.insert_or_assign(std::string(name), id);
}

void ControlLoop::free_service(uint32_t id) {
    ServiceInfo info;
    service_map_read(region_.services[id - 1], info);
    if (const auto it = service_ids_.find(info.name_view()); it != service_ids_.end())
        service_ids_.erase(it);
    service_map_write(region_, id - 1, ServiceInfo{});
}

// --- events --------------------------------------------------------------------------------------

void ControlLoop::reject_grant(const GrantId& id, GrantRejectReason reason, std::string_view text,
                               TickReport& report) {
    ++report.grants_rejected;
    ++stats_.grants_rejected[static_cast<size_t>(reason) % kGrantRejectReasons];
    post(GrantRejected{id, reason, event_text(text)}, report);
}

void ControlLoop::reject_command(uint64_t sequence, uint16_t type, CommandRejectReason reason,
                                 std::string_view text, TickReport& report) {
    ++report.commands_rejected;
    ++stats_.commands_rejected[static_cast<size_t>(reason) % kCommandRejectReasons];
    post(CommandRejected{sequence, type, reason, event_text(text)}, report);
}

void ControlLoop::activated(const GrantId& id, uint32_t service, int64_t not_after_ms,
                            TickReport& report) {
    ++stats_.grants_activated;
    ++report.grants_activated;
    post(GrantActivated{id, service, static_cast<uint64_t>(not_after_ms)}, report);
}

// Never blocks and never overwrites: an event that does not fit is counted
// and dropped. Events are advice; jitd reconciles from the state file.
void ControlLoop::post_denial(const DenialSample& sample) {
    TickReport report;
    guard_cmd_file([&] { post(Message{sample}, report); });
}

void ControlLoop::post(const Message& event, TickReport& report) {
    const SendResult sent = push_message(events_, event);
    if (sent.ok()) {
        ++stats_.events_posted;
        ++report.events_posted;
        return;
    }
    ++report.events_dropped;
    if (!sent.message.ok()) {
        ++stats_.events_failed;
        last_error_ = "event not encodable: " + describe_message_fault(sent.message);
        return;
    }
    switch (sent.ring.error) {
        case RingError::full:
            ++stats_.events_dropped;
            break;
        case RingError::not_attached:
            ++stats_.events_unattached;
            break;
        default:
            ++stats_.events_failed;
            last_error_ = describe_push_result(sent.ring, "event ring");
            break;
    }
}

uint64_t ControlLoop::grants_rejected(GrantRejectReason reason) const noexcept {
    const auto i = static_cast<size_t>(reason);
    return i < kGrantRejectReasons ? stats_.grants_rejected[i] : 0;
}

uint64_t ControlLoop::commands_rejected(CommandRejectReason reason) const noexcept {
    const auto i = static_cast<size_t>(reason);
    return i < kCommandRejectReasons ? stats_.commands_rejected[i] : 0;
}

}  // namespace jitlb::lb
