// jitlb's main lcore (lb/control_loop.h) against the real region files: the
// test plays jitd (it creates the cmd file, pushes commands on its ring and
// reads the events jitlb posts), signs grants with an issuer key generated
// here, and drives jitlb's clock by hand.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "control_loop.h"
#include "grant.h"
#include "grant_table.h"
#include "issuer_keys.h"
#include "messages.h"
#include "service_table.h"
#include "shared_file.h"
#include "shared_layout.h"
#include "spsc_ring.h"

using namespace jitlb;
using namespace jitlb::lb;

namespace {

constexpr int64_t kNow = 1'790'000'000'000;  // Unix ms when each test starts
constexpr uint64_t kBootTicks = 5'000'000;   // the fake TSC then (1000 ticks per second)
constexpr int64_t kHour = 3'600'000;

struct TempDir {
    TempDir() {
        char name[] = "/tmp/jitlb-control-XXXXXX";
        REQUIRE(mkdtemp(name) != nullptr);
        path = name;
    }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    std::string path;
};

// ticks are milliseconds since boot; Unix time can be stepped apart from them.
class FakeClock : public Clock {
  public:
    int64_t unix_ms() override { return now_ms; }
    uint64_t ticks() override { return ticks_now; }
    // Time passes: both move.
    void advance(int64_t ms) {
        now_ms += ms;
        ticks_now += static_cast<uint64_t>(ms);
    }
    // The system clock is stepped (NTP): the TSC does not move.
    void step(int64_t ms) { now_ms += ms; }
    int64_t now_ms = kNow;
    uint64_t ticks_now = kBootTicks;
};

// The public key file jitlb reads, replaced atomically as an operator would.
void write_key_file(const std::string& path, std::initializer_list<const IssuerSecretKey*> keys) {
    std::string text = "# trusted issuers of this test\n";
    for (const IssuerSecretKey* key : keys)
        text += public_key_line(key->public_key(), "test issuer");
    const std::string tmp = path + ".new";
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << text;
    }
    REQUIRE(::chmod(tmp.c_str(), 0644) == 0);
    REQUIRE(std::rename(tmp.c_str(), path.c_str()) == 0);
}

std::array<uint8_t, 16> v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
    return {a, b, c, d};
}

IpPrefix prefix(std::string_view text) {
    std::string error;
    const auto p = parse_ip_prefix(text, &error);
    INFO(error);
    REQUIRE(p.has_value());
    return *p;
}

template <class T>
std::vector<T> events_of(const std::vector<DecodedMessage>& events) {
    std::vector<T> out;
    for (const DecodedMessage& e : events)
        if (const T* m = std::get_if<T>(&e.message)) out.push_back(*m);
    return out;
}

ServiceSet service_set(const std::string& name, uint8_t vip_octet, uint32_t table_size = 251) {
    ServiceSet s;
    s.name = name;
    s.mode = ForwardingMode::ipip;
    s.maglev_table_size = table_size;
    Vip vip;
    vip.address = IpAddress{IpVersion::v4, v4(192, 0, 2, vip_octet)};
    vip.port = 443;
    vip.protocol = L4Protocol::tcp;
    s.vips = {vip};
    return s;
}

// jitd and jitlb of one instance in a temporary directory.
struct Harness {
    explicit Harness(const std::function<void(ControlConfig&)>& adjust = {}) {
        config.instance = "test";
        config.region_dir = dir.path;
        config.cmd_owner_uid = getuid();
        config.issuer_keys_file = dir.path + "/issuers.pub";
        config.mac_key.fill(0x5a);
        config.grant_capacity = 1024;
        config.skew_ms = 2'000;
        config.max_duration_ms = 24 * kHour;
        config.horizon_ms = 24 * kHour;
        config.ticks_per_second = 1000;
        config.verify_per_tick = 64;  // the tests below count in ticks of 64
        config.service_capacity = 64;
        config.worker_stats_lines = 4;
        if (adjust) adjust(config);
        write_key_file(config.issuer_keys_file, {&issuer});
        start_jitd();
        start_jitlb();
    }

    // The cmd file as jitd makes it: its own file, its ring reset to a new epoch.
    void start_jitd() {
        const CmdSizes sizes;
        cmd_file = SharedFile::create_or_open_own(cmd_file_path(dir.path, config.instance),
                                                  compute_cmd_layout(sizes).total_bytes, 0640);
        start_cmd_region(cmd_file.mutable_bytes(), sizes, new_region_epoch(), cmd);
        commands = RingProducer(cmd.cmd_slots, kRingSlotBytes, cmd.cmd_producer, nullptr);
    }

    // jitlb (again, after a restart), then jitd maps its state file read-only
    // and both rings attach.
    void start_jitlb() {
        services = std::make_unique<ServiceTable>();
        loop = ControlLoop::open(config, *services, clock);
        const std::string path = state_file_path(dir.path, config.instance);
        state_file = SharedFile::open_peer_readonly(path, getuid());
        state = attach_state_region(state_file.bytes(), path, GrantTable::format_hash());
        commands.set_peer(state.cmd_consumer);
        events = RingConsumer(state.event_slots, kRingSlotBytes, state.event_producer,
                              cmd.event_consumer);
        event_buffer.resize(events.max_record_bytes());
        loop->tick();  // jitlb finds the cmd file and attaches to its ring
        REQUIRE(loop->cmd_attached());
        REQUIRE(commands.attached());
        REQUIRE(drain_events().empty());  // jitd attaches to the event ring
    }

    void restart_jitlb() {
        loop.reset();
        start_jitlb();
    }

    uint64_t send(const Message& message) {
        const SendResult sent = push_message(commands, message);
        INFO(describe_message_fault(sent.message)
             << " " << describe_push_result(sent.ring, "command ring"));
        REQUIRE(sent.ok());
        return sent.ring.sequence;
    }

    std::vector<DecodedMessage> drain_events() {
        std::vector<DecodedMessage> out;
        for (;;) {
            DecodedMessage decoded;
            const ReceiveResult r = pop_message(events, Direction::event, event_buffer, decoded);
            if (r.status == ReceiveStatus::empty) break;
            INFO(describe_message_fault(r.fault));
            REQUIRE(r.status == ReceiveStatus::ok);
            out.push_back(std::move(decoded));
        }
        return out;
    }

    std::vector<DecodedMessage> tick_events() {
        last_report = loop->tick();
        return drain_events();
    }

    uint32_t define_service(const std::string& name, uint8_t vip_octet) {
        const uint64_t sequence = send(service_set(name, vip_octet));
        const auto applied = events_of<ServiceApplied>(tick_events());
        REQUIRE(applied.size() == 1);
        CHECK(applied[0].command_sequence == sequence);
        CHECK(applied[0].name == name);
        return applied[0].service_id;
    }

    Grant grant(std::string_view source, const std::string& service = "web",
                int64_t not_before = kNow - 1'000, int64_t not_after = kNow + kHour) {
        Grant g;
        g.grant_id = random_grant_id();
        g.subject = "alice@example.org";
        g.source = prefix(source);
        g.service = service;
        g.not_before_ms = not_before;
        g.not_after_ms = not_after;
        return g;
    }

    SignedGrant sign(const Grant& g) { return sign_with(g, issuer); }
    static SignedGrant sign_with(const Grant& g, const IssuerSecretKey& key) {
        SignedGrant s{};
        REQUIRE(sign_grant(g, key, s) == GrantFormatError::ok);
        return s;
    }

    uint64_t push(std::span<const uint8_t> bytes) {
        GrantPush p;
        p.push_sequence = ++push_sequence;
        p.grant.assign(bytes.begin(), bytes.end());
        return send(p);
    }

    // Pushes and ticks; the one event the grant got.
    DecodedMessage push_and_tick(const SignedGrant& s) {
        push(s);
        const auto evs = tick_events();
        REQUIRE(evs.size() == 1);
        return evs[0];
    }

    GrantRejected rejected(const SignedGrant& s) {
        const DecodedMessage e = push_and_tick(s);
        const auto* r = std::get_if<GrantRejected>(&e.message);
        REQUIRE(r != nullptr);
        return *r;
    }

    LookupKind lookup(uint32_t service_id, const std::array<uint8_t, 16>& address) {
        LookupKey key;
        key.address = address;
        key.service_id = static_cast<uint16_t>(service_id);
        key.family = IpVersion::v4;
        return loop->grants().lookup(key, loop->grants().ms_to_ticks(clock.now_ms)).kind;
    }

    TempDir dir;
    FakeClock clock;
    IssuerSecretKey issuer = IssuerSecretKey::generate();
    ControlConfig config;
    std::unique_ptr<ServiceTable> services;
    SharedFile cmd_file;
    CmdRegion cmd;
    RingProducer commands;
    SharedFile state_file;
    StateRegionView state;
    RingConsumer events;
    std::vector<uint8_t> event_buffer;
    std::unique_ptr<ControlLoop> loop;
    TickReport last_report;
    uint64_t push_sequence = 0;
};

}  // namespace

// --- grants ------------------------------------------------------------------------------------

TEST_CASE(
    "a valid grant is verified, activated, acknowledged and found by lookups in the state file",
    "[control]") {
    Harness h;
    const uint32_t web = h.define_service("web", 10);
    const Grant g = h.grant("198.51.100.0/24");
    const DecodedMessage e = h.push_and_tick(h.sign(g));
    const auto* activated = std::get_if<GrantActivated>(&e.message);
    REQUIRE(activated != nullptr);
    CHECK(activated->grant_id == g.grant_id);
    CHECK(activated->service_id == web);
    CHECK(activated->not_after_ms == static_cast<uint64_t>(g.not_after_ms));
    CHECK(h.last_report.grants_verified == 1);
    CHECK(h.last_report.grants_activated == 1);

    CHECK(h.lookup(web, v4(198, 51, 100, 77)) == LookupKind::granted);
    CHECK(h.lookup(web, v4(198, 51, 101, 77)) == LookupKind::no_grant);
    CHECK(h.lookup(web + 1, v4(198, 51, 100, 77)) == LookupKind::no_grant);

    // jitd and jitctl see the same grant through their read-only mapping.
    GrantTableError error;
    auto reader = GrantTableReader::attach(std::as_bytes(h.state.grant_table),
                                           std::as_bytes(h.state.revoked_set), error);
    REQUIRE(reader.has_value());
    LookupKey key;
    key.address = v4(198, 51, 100, 1);
    key.service_id = static_cast<uint16_t>(web);
    key.family = IpVersion::v4;
    const LookupResult hit = reader->lookup(key, reader->ms_to_ticks(kNow));
    CHECK(hit.kind == LookupKind::granted);
    GrantDetails details;
    REQUIRE(reader->read_details(hit.entry, details) == SnapshotStatus::ok);
    CHECK(details.grant_id == g.grant_id);
}

TEST_CASE("a grant whose signature does not verify is rejected as bad_signature and not activated",
          "[control]") {
    Harness h;
    const uint32_t web = h.define_service("web", 10);
    const Grant g = h.grant("198.51.100.7/32");
    SignedGrant s = h.sign(g);
    s[kGrantRecordSize + 5] ^= 0x01;  // one bit of the signature
    const GrantRejected r = h.rejected(s);
    CHECK(r.grant_id == g.grant_id);
    CHECK(r.reason == GrantRejectReason::bad_signature);
    CHECK_THAT(r.text, Catch::Contains("signature does not verify"));
    CHECK(h.loop->grants_rejected(GrantRejectReason::bad_signature) == 1);
    CHECK(h.lookup(web, v4(198, 51, 100, 7)) == LookupKind::no_grant);
}

TEST_CASE("a grant signed by a key jitlb does not trust is rejected as unknown_issuer",
          "[control]") {
    Harness h;
    const uint32_t web = h.define_service("web", 10);
    const IssuerSecretKey stranger = IssuerSecretKey::generate();
    const Grant g = h.grant("198.51.100.7/32");
    const GrantRejected r = h.rejected(Harness::sign_with(g, stranger));
    CHECK(r.grant_id == g.grant_id);
    CHECK(r.reason == GrantRejectReason::unknown_issuer);
    CHECK_THAT(r.text, Catch::Contains(key_id_hex(stranger.key_id())));
    CHECK(h.lookup(web, v4(198, 51, 100, 7)) == LookupKind::no_grant);
}

TEST_CASE("a grant past its not-after is rejected as expired", "[control]") {
    Harness h;
    h.define_service("web", 10);
    const Grant g = h.grant("198.51.100.7/32", "web", kNow - 2 * kHour, kNow - 1);
    const GrantRejected r = h.rejected(h.sign(g));
    CHECK(r.reason == GrantRejectReason::expired);
    CHECK(r.grant_id == g.grant_id);
}

TEST_CASE("a grant starting beyond the horizon is rejected as starts_too_far_ahead", "[control]") {
    Harness h([](ControlConfig& c) { c.horizon_ms = kHour; });
    h.define_service("web", 10);
    const Grant g = h.grant("198.51.100.7/32", "web", kNow + 2 * kHour, kNow + 3 * kHour);
    const GrantRejected r = h.rejected(h.sign(g));
    CHECK(r.reason == GrantRejectReason::starts_too_far_ahead);
    CHECK_THAT(r.text, Catch::Contains("horizon"));
}

TEST_CASE("a grant lasting longer than the maximum duration is rejected as too_long", "[control]") {
    Harness h;
    h.define_service("web", 10);
    const Grant g = h.grant("198.51.100.7/32", "web", kNow - 1'000, kNow - 1'000 + 25 * kHour);
    const GrantRejected r = h.rejected(h.sign(g));
    CHECK(r.reason == GrantRejectReason::too_long);
}

TEST_CASE("bytes that are not a signed grant are rejected as malformed, naming why, unverified",
          "[control]") {
    Harness h;
    h.define_service("web", 10);
    std::vector<uint8_t> junk(100, 0);
    junk[0] = kGrantFormatVersion;
    h.push(junk);
    SignedGrant other_version = h.sign(h.grant("198.51.100.7/32"));
    other_version[0] = 2;
    h.push(other_version);
    const auto rejected = events_of<GrantRejected>(h.tick_events());
    REQUIRE(rejected.size() == 2);
    CHECK(rejected[0].reason == GrantRejectReason::malformed);
    CHECK(rejected[0].grant_id == GrantId{});  // too malformed to have an id
    CHECK_THAT(rejected[0].text, Catch::Contains("truncated"));
    CHECK(rejected[1].reason == GrantRejectReason::malformed);
    CHECK_THAT(rejected[1].text, Catch::Contains("unsupported_version"));
    CHECK(h.loop->stats().grants_verified == 0);
}

TEST_CASE("an identical re-push of a live grant is acknowledged without a second verification",
          "[control]") {
    Harness h;
    const uint32_t web = h.define_service("web", 10);
    const Grant g = h.grant("198.51.100.7/32");
    const SignedGrant s = h.sign(g);
    REQUIRE(std::holds_alternative<GrantActivated>(h.push_and_tick(s).message));
    REQUIRE(h.loop->stats().grants_verified == 1);

    const DecodedMessage again = h.push_and_tick(s);
    const auto* activated = std::get_if<GrantActivated>(&again.message);
    REQUIRE(activated != nullptr);
    CHECK(activated->grant_id == g.grant_id);
    CHECK(activated->service_id == web);
    CHECK(h.loop->stats().grants_verified == 1);  // not verified again
    CHECK(h.loop->stats().grants_repush_acknowledged == 1);
    CHECK(h.last_report.grants_verified == 0);
    CHECK(h.loop->grants().stats().live_grants == 1);
}

TEST_CASE("a different record under the id of a live grant is refused and the live grant stays",
          "[control]") {
    Harness h;
    const uint32_t web = h.define_service("web", 10);
    const Grant g = h.grant("198.51.100.7/32");
    REQUIRE(std::holds_alternative<GrantActivated>(h.push_and_tick(h.sign(g)).message));
    Grant longer = g;
    longer.not_after_ms += kHour;  // properly signed, but the id names another record
    const GrantRejected r = h.rejected(h.sign(longer));
    CHECK(r.grant_id == g.grant_id);
    CHECK(r.reason == GrantRejectReason::malformed);
    CHECK_THAT(r.text, Catch::Contains("single-use"));
    CHECK(h.loop->stats().grants_verified == 1);  // refused before any verification
    LookupKey key;
    key.address = v4(198, 51, 100, 7);
    key.service_id = static_cast<uint16_t>(web);
    key.family = IpVersion::v4;
    const LookupResult hit = h.loop->grants().lookup(key, h.loop->grants().ms_to_ticks(kNow));
    REQUIRE(hit.kind == LookupKind::granted);
    GrantDetails details;
    REQUIRE(h.loop->grants().read_details(hit.entry, details) == SnapshotStatus::ok);
    CHECK(details.not_after_ms == g.not_after_ms);
}

TEST_CASE("a revocation removes its grant at once and a re-push of the revoked id is refused",
          "[control]") {
    Harness h;
    const uint32_t web = h.define_service("web", 10);
    const Grant g = h.grant("198.51.100.0/24");
    const SignedGrant s = h.sign(g);
    REQUIRE(std::holds_alternative<GrantActivated>(h.push_and_tick(s).message));
    REQUIRE(h.lookup(web, v4(198, 51, 100, 7)) == LookupKind::granted);

    h.send(Revoke{g.grant_id, static_cast<uint64_t>(g.not_after_ms), RevokeReason::by_operator});
    const auto revoked = events_of<GrantRevoked>(h.tick_events());
    REQUIRE(revoked.size() == 1);
    CHECK(revoked[0].grant_id == g.grant_id);
    CHECK(revoked[0].reason == RevokeReason::by_operator);
    CHECK(h.lookup(web, v4(198, 51, 100, 7)) == LookupKind::no_grant);
    CHECK(h.last_report.grants_verified == 0);

    const GrantRejected again = h.rejected(s);
    CHECK(again.reason == GrantRejectReason::revoked);
    CHECK(again.grant_id == g.grant_id);
    CHECK(h.lookup(web, v4(198, 51, 100, 7)) == LookupKind::no_grant);

    // An id jitlb never saw is kept revoked too: its grant never activates.
    const Grant later = h.grant("198.51.100.9/32");
    h.send(Revoke{later.grant_id, static_cast<uint64_t>(later.not_after_ms), RevokeReason::policy});
    REQUIRE(events_of<GrantRevoked>(h.tick_events()).size() == 1);
    CHECK(h.rejected(h.sign(later)).reason == GrantRejectReason::revoked);
}

TEST_CASE("a grant that has not started or ends before the live one is refused as superseded",
          "[control]") {
    Harness h;
    const uint32_t web = h.define_service("web", 10);
    const Grant live = h.grant("198.51.100.7/32", "web", kNow - 1'000, kNow + kHour);
    REQUIRE(std::holds_alternative<GrantActivated>(h.push_and_tick(h.sign(live)).message));

    const Grant shorter = h.grant("198.51.100.7/32", "web", kNow - 1'000, kNow + kHour / 2);
    CHECK(h.rejected(h.sign(shorter)).reason == GrantRejectReason::superseded);
    // Within the horizon but not started: jitd pushes it again when it starts.
    const Grant scheduled = h.grant("198.51.100.7/32", "web", kNow + 600'000, kNow + 2 * kHour);
    const GrantRejected r = h.rejected(h.sign(scheduled));
    CHECK(r.reason == GrantRejectReason::superseded);
    CHECK_THAT(r.text, Catch::Contains("push it again when it starts"));

    // A longer grant that has started replaces the entry.
    const Grant longer = h.grant("198.51.100.7/32", "web", kNow - 1'000, kNow + 2 * kHour);
    CHECK(std::holds_alternative<GrantActivated>(h.push_and_tick(h.sign(longer)).message));
    CHECK(h.lookup(web, v4(198, 51, 100, 7)) == LookupKind::granted);
    CHECK(h.loop->grants().stats().live_grants == 1);
}

TEST_CASE("a grant for a service jitlb does not have is rejected as unknown_service", "[control]") {
    Harness h;
    h.define_service("web", 10);
    const Grant g = h.grant("198.51.100.7/32", "mail");
    const GrantRejected r = h.rejected(h.sign(g));
    CHECK(r.reason == GrantRejectReason::unknown_service);
    CHECK(r.grant_id == g.grant_id);
    CHECK_THAT(r.text, Catch::Contains("mail"));
    CHECK(h.loop->stats().grants_verified == 0);
}

TEST_CASE("a full verification backlog refuses further grants at once as backlog_full",
          "[control]") {
    Harness h([](ControlConfig& c) {
        c.backlog_capacity = 4;
        c.verify_per_tick = 1;
    });
    h.define_service("web", 10);
    std::vector<Grant> grants;
    for (uint8_t i = 0; i < 6; ++i) {
        grants.push_back(h.grant("198.51.100." + std::to_string(i) + "/32"));
        h.push(h.sign(grants.back()));
    }
    const auto evs = h.tick_events();
    const auto rejected = events_of<GrantRejected>(evs);
    REQUIRE(rejected.size() == 2);
    CHECK(rejected[0].reason == GrantRejectReason::backlog_full);
    CHECK(rejected[0].grant_id == grants[4].grant_id);
    CHECK(rejected[1].grant_id == grants[5].grant_id);
    CHECK(events_of<GrantActivated>(evs).size() == 1);
    CHECK(h.last_report.backlog == 3);
    CHECK(h.loop->stats().backlog_high_water == 4);
}

// --- the verification cap ------------------------------------------------------------------

TEST_CASE(
    "one tick verifies at most verify_per_tick grants while a revocation behind them applies at "
    "once",
    "[control]") {
    Harness h;  // verify_per_tick 64
    const uint32_t web = h.define_service("web", 10);
    const Grant early = h.grant("203.0.113.1/32");
    REQUIRE(std::holds_alternative<GrantActivated>(h.push_and_tick(h.sign(early)).message));

    std::vector<Grant> flood;
    for (int i = 0; i < 200; ++i) {
        flood.push_back(
            h.grant("10.0." + std::to_string(i / 256) + "." + std::to_string(i % 256) + "/32"));
        h.push(h.sign(flood.back()));
    }
    h.send(Revoke{early.grant_id, static_cast<uint64_t>(early.not_after_ms),
                  RevokeReason::by_operator});
    h.send(Revoke{flood[150].grant_id, static_cast<uint64_t>(flood[150].not_after_ms),
                  RevokeReason::request_withdrawn});

    const auto first = h.tick_events();
    CHECK(h.last_report.commands == 202);
    CHECK(h.last_report.grants_verified == 64);
    CHECK(h.last_report.revocations == 2);
    CHECK(h.last_report.backlog == 136);
    CHECK(h.lookup(web, v4(203, 0, 113, 1)) == LookupKind::no_grant);  // gone in this tick
    // The revocations were answered before any grant of the flood.
    REQUIRE(first.size() == 66);
    CHECK(std::holds_alternative<GrantRevoked>(first[0].message));
    CHECK(std::holds_alternative<GrantRevoked>(first[1].message));
    CHECK(events_of<GrantActivated>(first).size() == 64);

    int ticks = 1;
    std::vector<DecodedMessage> rest;
    while (h.loop->backlog_length() > 0) {
        const auto evs = h.tick_events();
        CHECK(h.last_report.grants_verified <= 64);
        rest.insert(rest.end(), evs.begin(), evs.end());
        ++ticks;
    }
    CHECK(ticks == 4);  // ceil(200 / 64)
    CHECK(events_of<GrantActivated>(first).size() + events_of<GrantActivated>(rest).size() == 199);
    const auto refused = events_of<GrantRejected>(rest);
    REQUIRE(refused.size() == 1);
    CHECK(refused[0].grant_id == flood[150].grant_id);
    CHECK(refused[0].reason == GrantRejectReason::revoked);
    CHECK(h.lookup(web, v4(10, 0, 0, 150)) == LookupKind::no_grant);
    CHECK(h.lookup(web, v4(10, 0, 0, 199)) == LookupKind::granted);
}

TEST_CASE("drain_all applies everything staged, verifying without the per-tick cap", "[control]") {
    Harness h([](ControlConfig& c) { c.verify_per_tick = 1; });
    h.send(service_set("web", 10));
    std::vector<Grant> staged;
    for (int i = 0; i < 100; ++i) {
        staged.push_back(h.grant("10.1.0." + std::to_string(i) + "/32"));
        h.push(h.sign(staged.back()));
    }
    const TickReport report = h.loop->drain_all();
    CHECK(report.commands == 101);
    CHECK(report.grants_verified == 100);
    CHECK(report.grants_activated == 100);
    CHECK(report.backlog == 0);
    CHECK(h.loop->backlog_length() == 0);
    CHECK(events_of<GrantActivated>(h.drain_events()).size() == 100);
    CHECK(h.lookup(h.loop->service_id("web"), v4(10, 1, 0, 99)) == LookupKind::granted);
}

// --- expiry and the clock --------------------------------------------------------------------

TEST_CASE("a grant past its not-after gets a GrantExpired event and leaves the table",
          "[control]") {
    Harness h;
    const uint32_t web = h.define_service("web", 10);
    const Grant g = h.grant("198.51.100.7/32", "web", kNow - 1'000, kNow + 60'000);
    REQUIRE(std::holds_alternative<GrantActivated>(h.push_and_tick(h.sign(g)).message));

    h.clock.advance(59'999);
    CHECK(h.tick_events().empty());
    CHECK(h.lookup(web, v4(198, 51, 100, 7)) == LookupKind::granted);

    h.clock.advance(1);
    const auto expired = events_of<GrantExpired>(h.tick_events());
    REQUIRE(expired.size() == 1);
    CHECK(expired[0].grant_id == g.grant_id);
    CHECK(expired[0].not_after_ms == static_cast<uint64_t>(g.not_after_ms));
    CHECK(h.last_report.grants_swept == 1);
    CHECK(h.lookup(web, v4(198, 51, 100, 7)) == LookupKind::no_grant);
    CHECK(h.loop->grants().stats().live_grants == 0);
    CHECK(h.tick_events().empty());  // once
}

TEST_CASE("a revoked grant gets no GrantExpired when its not-after passes", "[control]") {
    Harness h;
    h.define_service("web", 10);
    const Grant g = h.grant("198.51.100.7/32", "web", kNow - 1'000, kNow + 60'000);
    REQUIRE(std::holds_alternative<GrantActivated>(h.push_and_tick(h.sign(g)).message));
    h.send(Revoke{g.grant_id, static_cast<uint64_t>(g.not_after_ms), RevokeReason::by_operator});
    REQUIRE(events_of<GrantRevoked>(h.tick_events()).size() == 1);
    h.clock.advance(120'000);
    CHECK(h.tick_events().empty());
}

TEST_CASE("the heartbeat and the clock offset follow jitlb's clock, stepped or not", "[control]") {
    Harness h;
    const StateHeader& header = *h.state.header;
    CHECK(read_heartbeat(header) == static_cast<uint64_t>(kNow));
    CHECK(read_clock_offset(header) == kNow - static_cast<int64_t>(kBootTicks));

    h.clock.advance(1'500);  // time passes: same offset
    h.loop->tick();
    CHECK(read_heartbeat(header) == static_cast<uint64_t>(kNow + 1'500));
    CHECK(read_clock_offset(header) == kNow - static_cast<int64_t>(kBootTicks));

    h.clock.step(-5'000);  // NTP steps the clock back: workers' now follows at once
    h.loop->tick();
    CHECK(read_clock_offset(header) == kNow - 5'000 - static_cast<int64_t>(kBootTicks));
    const uint64_t worker_now =
        h.clock.ticks_now + static_cast<uint64_t>(read_clock_offset(header));
    CHECK(worker_now == h.loop->grants().ms_to_ticks(h.clock.now_ms));
}

// --- services --------------------------------------------------------------------------------

TEST_CASE("a service set then a backend set are applied, acknowledged and kept in the service map",
          "[control]") {
    Harness h;
    const uint64_t set_sequence = h.send(service_set("web", 10));
    auto applied = events_of<ServiceApplied>(h.tick_events());
    REQUIRE(applied.size() == 1);
    CHECK(applied[0].command_sequence == set_sequence);
    CHECK(applied[0].name == "web");
    CHECK(applied[0].generation == 1);
    const uint32_t id = applied[0].service_id;
    CHECK(id >= 1);

    BackendSet backends;
    backends.service = "web";
    for (uint8_t i = 1; i <= 2; ++i) {
        Backend b;
        b.id = "backend-" + std::to_string(i);
        b.address = IpAddress{IpVersion::v4, v4(10, 9, 0, i)};
        backends.backends.push_back(b);
    }
    const uint64_t backend_sequence = h.send(backends);
    applied = events_of<ServiceApplied>(h.tick_events());
    REQUIRE(applied.size() == 1);
    CHECK(applied[0].command_sequence == backend_sequence);
    CHECK(applied[0].service_id == id);
    CHECK(applied[0].generation == 2);

    // jitd's view of the map, and the data plane's services.
    uint32_t found = 0;
    REQUIRE(service_map_find(h.state.services, "web", found) == SeqRead::ok);
    CHECK(found == id);
    ServiceInfo info;
    REQUIRE(service_map_read(h.state.services[id - 1], info) == SeqRead::ok);
    CHECK(info.generation == 2);
    const Service* web = h.services->find_by_name("web");
    REQUIRE(web != nullptr);
    CHECK(web->id == id);
    CHECK(web->backends.size() == 2);
    CHECK(web->forwarding());
}

TEST_CASE("an invalid service is refused with CommandRejected and leaves no service map entry",
          "[control]") {
    Harness h;
    const uint64_t sequence = h.send(service_set("bad", 10, 65536));  // not prime
    const auto evs = h.tick_events();
    const auto rejected = events_of<CommandRejected>(evs);
    REQUIRE(rejected.size() == 1);
    CHECK(evs.size() == 1);
    CHECK(rejected[0].command_sequence == sequence);
    CHECK(rejected[0].command_type == static_cast<uint16_t>(MessageType::service_set));
    CHECK(rejected[0].reason == CommandRejectReason::invalid_service);
    CHECK_THAT(rejected[0].text, Catch::Contains("not prime"));
    uint32_t found = 0;
    REQUIRE(service_map_find(h.state.services, "bad", found) == SeqRead::ok);
    CHECK(found == 0);
    CHECK(h.loop->service_id("bad") == 0);
    CHECK(h.services->find_by_name("bad") == nullptr);
    CHECK(h.define_service("good", 11) == 1);  // the id it held is free again

    // Backends for a service that does not exist.
    BackendSet orphan;
    orphan.service = "nowhere";
    h.send(orphan);
    const auto orphan_rejected = events_of<CommandRejected>(h.tick_events());
    REQUIRE(orphan_rejected.size() == 1);
    CHECK(orphan_rejected[0].reason == CommandRejectReason::unknown_service);
}

TEST_CASE("a deleted service's id is not given to another service while its grants live",
          "[control]") {
    Harness h;
    const uint32_t web = h.define_service("web", 10);
    const Grant g = h.grant("198.51.100.7/32", "web", kNow - 1'000, kNow + 60'000);
    REQUIRE(std::holds_alternative<GrantActivated>(h.push_and_tick(h.sign(g)).message));

    const uint64_t sequence = h.send(ServiceDelete{"web"});
    const auto deleted = events_of<ServiceApplied>(h.tick_events());
    REQUIRE(deleted.size() == 1);
    CHECK(deleted[0].command_sequence == sequence);
    CHECK(deleted[0].service_id == web);
    uint32_t found = 0;
    REQUIRE(service_map_find(h.state.services, "web", found) == SeqRead::ok);
    CHECK(found == 0);
    CHECK(h.services->find_by_name("web") == nullptr);
    // Grants of a deleted service are refused; its live one stays until it expires.
    CHECK(h.rejected(h.sign(h.grant("198.51.100.8/32"))).reason ==
          GrantRejectReason::unknown_service);

    const uint32_t api = h.define_service("api", 11);
    CHECK(api != web);
    CHECK(h.lookup(api, v4(198, 51, 100, 7)) == LookupKind::no_grant);
    // The same name gets its id, and so its grant, back.
    CHECK(h.define_service("web", 10) == web);
    CHECK(h.lookup(web, v4(198, 51, 100, 7)) == LookupKind::granted);

    // Once its grants have ended, a deleted service's id is free for anyone.
    h.send(ServiceDelete{"web"});
    REQUIRE(events_of<ServiceApplied>(h.tick_events()).size() == 1);
    h.clock.advance(60'000);
    REQUIRE(events_of<GrantExpired>(h.tick_events()).size() == 1);
    CHECK(h.define_service("mail", 12) == web);
}

// --- the ring ----------------------------------------------------------------------------------

TEST_CASE(
    "garbage records on the command ring are answered with CommandRejected and the next command "
    "applies",
    "[control]") {
    Harness h;
    const uint8_t junk[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    const uint64_t unknown = h.commands.push(0x0042, 1, junk).sequence;
    const uint64_t short_push =
        h.commands.push(static_cast<uint16_t>(MessageType::grant_push), 1, std::span(junk, 3))
            .sequence;
    const uint8_t event_payload[28] = {};
    const uint64_t event =
        h.commands.push(static_cast<uint16_t>(MessageType::grant_activated), 1, event_payload)
            .sequence;
    const uint64_t future =
        h.commands.push(static_cast<uint16_t>(MessageType::key_reload), 9, {}).sequence;
    const uint64_t good = h.send(service_set("web", 10));

    const auto evs = h.tick_events();
    const auto rejected = events_of<CommandRejected>(evs);
    REQUIRE(rejected.size() == 4);
    CHECK(rejected[0].command_sequence == unknown);
    CHECK(rejected[0].command_type == 0x0042);
    CHECK(rejected[0].reason == CommandRejectReason::unknown_type);
    CHECK(rejected[1].command_sequence == short_push);
    CHECK(rejected[1].reason == CommandRejectReason::malformed);
    CHECK_THAT(rejected[1].text, Catch::Contains("grant_push"));
    CHECK(rejected[2].command_sequence == event);
    CHECK(rejected[2].reason == CommandRejectReason::wrong_direction);
    CHECK(rejected[3].command_sequence == future);
    CHECK(rejected[3].reason == CommandRejectReason::unsupported_version);
    const auto applied = events_of<ServiceApplied>(evs);
    REQUIRE(applied.size() == 1);
    CHECK(applied[0].command_sequence == good);
    CHECK(h.last_report.commands == 5);
    CHECK(h.loop->commands_rejected(CommandRejectReason::unknown_type) == 1);
}

TEST_CASE(
    "a missing cmd file is normal until jitd starts, and a cmd file others may write is refused",
    "[control]") {
    TempDir dir;
    FakeClock clock;
    const IssuerSecretKey issuer = IssuerSecretKey::generate();
    ControlConfig config;
    config.instance = "late";
    config.region_dir = dir.path;
    config.cmd_owner_uid = getuid();
    config.issuer_keys_file = dir.path + "/issuers.pub";
    config.grant_capacity = 64;
    config.service_capacity = 8;
    config.worker_stats_lines = 4;
    write_key_file(config.issuer_keys_file, {&issuer});
    ServiceTable services;
    auto loop = ControlLoop::open(config, services, clock);
    CHECK(loop->start().region == RegionStart::fresh);
    CHECK_FALSE(loop->tick().cmd_attached);
    CHECK(loop->last_error().empty());
    CHECK(loop->stats().cmd_attach_failures == 0);

    const std::string path = cmd_file_path(dir.path, "late");
    const CmdSizes sizes;
    SharedFile cmd_file =
        SharedFile::create_or_open_own(path, compute_cmd_layout(sizes).total_bytes, 0640);
    CmdRegion cmd;
    start_cmd_region(cmd_file.mutable_bytes(), sizes, new_region_epoch(), cmd);
    REQUIRE(::chmod(path.c_str(), 0660) == 0);
    clock.advance(100);
    CHECK_FALSE(loop->tick().cmd_attached);
    CHECK(loop->stats().cmd_attach_failures == 1);
    CHECK_THAT(loop->last_error(), Catch::Contains(path));

    REQUIRE(::chmod(path.c_str(), 0640) == 0);
    clock.advance(100);
    CHECK(loop->tick().cmd_attached);
    CHECK(loop->stats().cmd_attaches == 1);
}

TEST_CASE("every command gets one answer while jitd pushes and reads from another thread",
          "[control][concurrency]") {
    Harness h;
    constexpr int kRevocations = 1000;
    std::vector<GrantId> ids(kRevocations);
    for (GrantId& id : ids) id = random_grant_id();
    std::atomic<bool> done{false};
    std::vector<GrantId> answered;
    std::thread jitd([&] {
        int sent = 0;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        while (answered.size() < ids.size() && std::chrono::steady_clock::now() < deadline) {
            if (sent < kRevocations) {
                const SendResult r =
                    push_message(h.commands, Revoke{ids[static_cast<size_t>(sent)],
                                                    static_cast<uint64_t>(kNow + kHour),
                                                    RevokeReason::reconcile});
                if (r.ok()) ++sent;  // full: jitd keeps it and tries again
            }
            for (const auto& e : events_of<GrantRevoked>(h.drain_events()))
                answered.push_back(e.grant_id);
        }
        done.store(true, std::memory_order_release);
    });
    while (!done.load(std::memory_order_acquire)) {
        h.loop->tick();
        std::this_thread::yield();
    }
    jitd.join();
    CHECK(answered == ids);
    CHECK(h.loop->stats().revocations == kRevocations);
    CHECK(h.loop->stats().events_dropped == 0);
    CHECK(h.loop->grant_writer().revoked_ids() == kRevocations);
}

TEST_CASE(
    "a cmd file that jitd shrinks under jitlb's mapping detaches it with an error and a counter, "
    "never a SIGBUS crash, and jitlb attaches again once the file is laid out anew",
    "[control]") {
    Harness h;
    const uint32_t web = h.define_service("web", 10);
    const Grant before = h.grant("198.51.100.1/32");
    REQUIRE(std::holds_alternative<GrantActivated>(h.push_and_tick(h.sign(before)).message));
    const std::string cmd_path = cmd_file_path(h.dir.path, "test");

    // A compromised jitd pushes a grant, then cuts its file to nothing.
    h.push(h.sign(h.grant("198.51.100.2/32")));
    REQUIRE(::truncate(cmd_path.c_str(), 0) == 0);
    h.loop->tick();  // reads the ring past the new end: SIGBUS, caught
    CHECK_FALSE(h.loop->cmd_attached());
    CHECK(h.loop->stats().cmd_file_faults == 1);
    CHECK_THAT(h.loop->last_error(), Catch::Contains("shrank"));
    // Nothing else changed: the grant the table held still holds; the next ticks
    // (and a denial sample) touch nothing of the cut file.
    CHECK(h.lookup(web, v4(198, 51, 100, 1)) == LookupKind::granted);
    h.clock.advance(1'000);
    h.loop->tick();
    h.loop->post_denial(DenialSample{});
    CHECK_FALSE(h.loop->cmd_attached());
    CHECK(h.loop->stats().cmd_file_faults == 1);

    // jitd restarts: its file at full size, a new ring epoch. jitlb attaches
    // again and the grant pushed again activates.
    h.cmd = CmdRegion{};
    h.cmd_file = SharedFile();
    REQUIRE(::unlink(cmd_path.c_str()) == 0);
    h.start_jitd();
    h.clock.advance(1'000);
    h.loop->tick();
    REQUIRE(h.loop->cmd_attached());
    h.commands.set_peer(h.state.cmd_consumer);
    h.events = RingConsumer(h.state.event_slots, kRingSlotBytes, h.state.event_producer,
                            h.cmd.event_consumer);
    h.loop->tick();
    h.drain_events();
    CHECK(std::holds_alternative<GrantActivated>(
        h.push_and_tick(h.sign(h.grant("198.51.100.3/32"))).message));
    CHECK(h.lookup(web, v4(198, 51, 100, 3)) == LookupKind::granted);
}

TEST_CASE("a revocation with a far not-after is kept only until the latest end of any grant jitlb would accept",
          "[control]") {
    Harness h;  // horizon 24 h, skew 2 s, longest grant 24 h
    h.define_service("web", 10);
    const Grant g = h.grant("198.51.100.1/32");
    REQUIRE(std::holds_alternative<GrantActivated>(h.push_and_tick(h.sign(g)).message));
    // A compromised jitd asks to keep the id forever.
    h.send(Revoke{g.grant_id, UINT64_MAX / 2, RevokeReason::by_operator});
    REQUIRE(events_of<GrantRevoked>(h.tick_events()).size() == 1);
    REQUIRE(h.loop->grant_writer().revoked_ids() == 1);
    const int64_t latest_end = 24 * kHour + 2'000 + 24 * kHour;
    h.clock.advance(latest_end - 60'000);
    for (int i = 0; i < 3; ++i) h.loop->tick();
    CHECK(h.loop->grant_writer().revoked_ids() == 1);  // a grant accepted now could still be live
    h.clock.advance(120'000);
    for (int i = 0; i < 3; ++i) h.loop->tick();
    CHECK(h.loop->grant_writer().revoked_ids() == 0);  // pruned: nothing it names can be valid
}

// --- restart ---------------------------------------------------------------------------------

TEST_CASE(
    "a restarted jitlb keeps its grants, revocations and service ids, and drops an entry altered "
    "in the file",
    "[control]") {
    Harness h;
    const uint32_t web = h.define_service("web", 10);
    std::vector<Grant> grants;
    std::vector<SignedGrant> signed_grants;
    for (uint8_t i = 1; i <= 4; ++i) {
        grants.push_back(h.grant("198.51.100." + std::to_string(i) + "/32"));
        signed_grants.push_back(h.sign(grants.back()));
        REQUIRE(
            std::holds_alternative<GrantActivated>(h.push_and_tick(signed_grants.back()).message));
    }
    h.send(Revoke{grants[3].grant_id, static_cast<uint64_t>(grants[3].not_after_ms),
                  RevokeReason::by_operator});
    REQUIRE(events_of<GrantRevoked>(h.tick_events()).size() == 1);

    // Where grant 2's details lie in the file (docs/architecture.md: seq,
    // generation, grant id (2 words), issuer key id, not-before, not-after...).
    LookupKey key;
    key.address = v4(198, 51, 100, 2);
    key.service_id = static_cast<uint16_t>(web);
    key.family = IpVersion::v4;
    const LookupResult hit = h.loop->grants().lookup(key, h.loop->grants().ms_to_ticks(kNow));
    REQUIRE(hit.kind == LookupKind::granted);
    const auto* file_start = reinterpret_cast<const uint8_t*>(h.loop->state().header);
    const auto* details = reinterpret_cast<const uint8_t*>(h.loop->grants().entry_words(hit.entry));
    const off_t not_after_offset = static_cast<off_t>(details - file_start) + 6 * 8;

    h.loop.reset();  // jitlb stops
    {
        // Someone with write access extends grant 2 by a day in the file.
        const int fd = ::open(state_file_path(h.dir.path, "test").c_str(), O_RDWR | O_CLOEXEC);
        REQUIRE(fd >= 0);
        int64_t not_after = 0;
        REQUIRE(::pread(fd, &not_after, 8, not_after_offset) == 8);
        REQUIRE(not_after == grants[1].not_after_ms);
        not_after += 24 * kHour;
        REQUIRE(::pwrite(fd, &not_after, 8, not_after_offset) == 8);
        ::close(fd);
    }
    h.start_jitlb();

    const ControlStart& start = h.loop->start();
    CHECK(start.region == RegionStart::reused);
    CHECK(start.grant_table_reopened);
    CHECK(start.reopen.entries_kept == 2);
    CHECK(start.reopen.dropped_bad_mac == 1);
    CHECK(start.services_kept == 1);
    CHECK(h.lookup(web, v4(198, 51, 100, 1)) == LookupKind::granted);
    CHECK(h.lookup(web, v4(198, 51, 100, 2)) == LookupKind::no_grant);
    CHECK(h.lookup(web, v4(198, 51, 100, 3)) == LookupKind::granted);
    CHECK(h.loop->service_id("web") == web);

    // jitd reconciles: it re-sends the service, which keeps its id, and the grants.
    CHECK(h.define_service("web", 10) == web);
    const DecodedMessage kept = h.push_and_tick(signed_grants[0]);
    CHECK(std::holds_alternative<GrantActivated>(kept.message));
    CHECK(h.loop->stats().grants_verified == 0);  // MAC-checked at restart, not verified again
    CHECK(std::holds_alternative<GrantActivated>(h.push_and_tick(signed_grants[1]).message));
    CHECK(h.loop->stats().grants_verified == 1);
    CHECK(h.lookup(web, v4(198, 51, 100, 2)) == LookupKind::granted);
    CHECK(h.rejected(signed_grants[3]).reason == GrantRejectReason::revoked);
}

TEST_CASE("a grant table that cannot be reopened, or was made for another capacity, starts empty and says why",
          "[control]") {
    SECTION("its header is damaged") {
        Harness h;
        const uint32_t web = h.define_service("web", 10);
        REQUIRE(std::holds_alternative<GrantActivated>(h.push_and_tick(h.sign(h.grant("198.51.100.1/32"))).message));
        const auto* file_start = reinterpret_cast<const uint8_t*>(h.loop->state().header);
        const auto* table = reinterpret_cast<const uint8_t*>(h.loop->state().grant_table.data());
        const off_t magic_at = static_cast<off_t>(table - file_start);
        h.loop.reset();
        const int fd = ::open(state_file_path(h.dir.path, "test").c_str(), O_RDWR | O_CLOEXEC);
        REQUIRE(fd >= 0);
        const uint64_t garbage = 0x0123456789abcdefull;
        REQUIRE(::pwrite(fd, &garbage, 8, magic_at) == 8);
        ::close(fd);
        h.start_jitlb();
        CHECK_FALSE(h.loop->start().grant_table_reopened);
        CHECK_THAT(h.loop->start().grant_table_note, Catch::Contains("could not be reopened"));
        CHECK(h.lookup(web, v4(198, 51, 100, 1)) == LookupKind::no_grant);
        // jitd re-pushes: the grant is verified again and active.
        CHECK(h.define_service("web", 10) == web);
        CHECK(std::holds_alternative<GrantActivated>(h.push_and_tick(h.sign(h.grant("198.51.100.2/32"))).message));
        CHECK(h.lookup(web, v4(198, 51, 100, 2)) == LookupKind::granted);
    }
    SECTION("the configuration asks for another capacity") {
        Harness h;
        const uint32_t web = h.define_service("web", 10);
        REQUIRE(std::holds_alternative<GrantActivated>(h.push_and_tick(h.sign(h.grant("198.51.100.1/32"))).message));
        h.loop.reset();
        h.config.grant_capacity = 4096;
        h.start_jitlb();
        CHECK_FALSE(h.loop->start().grant_table_reopened);
        CHECK(h.loop->grant_writer().config().capacity == 4096);
        CHECK(h.define_service("web", 10) >= 1);
        CHECK(h.lookup(h.loop->service_id("web"), v4(198, 51, 100, 1)) == LookupKind::no_grant);
        (void)web;
    }
}

TEST_CASE("a restarted jitlb drops the grants of an issuer key removed while it was down",
          "[control]") {
    Harness h;
    const uint32_t web = h.define_service("web", 10);
    REQUIRE(std::holds_alternative<GrantActivated>(
        h.push_and_tick(h.sign(h.grant("198.51.100.1/32"))).message));
    h.loop.reset();
    const IssuerSecretKey successor = IssuerSecretKey::generate();
    write_key_file(h.config.issuer_keys_file, {&successor});
    h.start_jitlb();
    CHECK(h.loop->start().reopen.dropped_issuer == 1);
    CHECK(h.lookup(web, v4(198, 51, 100, 1)) == LookupKind::no_grant);
}

// --- keys --------------------------------------------------------------------------------------

TEST_CASE("a key reload that removes a key ends its grants, and a bad key file keeps the old keys",
          "[control]") {
    Harness h;
    const IssuerSecretKey second = IssuerSecretKey::generate();
    write_key_file(h.config.issuer_keys_file, {&h.issuer, &second});
    h.loop->reload_keys();  // SIGHUP
    const auto sighup = events_of<KeysReloaded>(h.drain_events());
    REQUIRE(sighup.size() == 1);
    CHECK(sighup[0].command_sequence == 0);
    CHECK(sighup[0].key_count == 2);
    CHECK(sighup[0].grants_ended == 0);

    const uint32_t web = h.define_service("web", 10);
    const Grant by_first = h.grant("198.51.100.1/32");
    const Grant by_second = h.grant("198.51.100.2/32");
    REQUIRE(std::holds_alternative<GrantActivated>(h.push_and_tick(h.sign(by_first)).message));
    REQUIRE(std::holds_alternative<GrantActivated>(
        h.push_and_tick(Harness::sign_with(by_second, second)).message));

    write_key_file(h.config.issuer_keys_file, {&second});
    const uint64_t sequence = h.send(KeyReload{});
    const auto evs = h.tick_events();
    const auto ended = events_of<GrantRevoked>(evs);
    REQUIRE(ended.size() == 1);
    CHECK(ended[0].grant_id == by_first.grant_id);
    CHECK(ended[0].reason == RevokeReason::issuer_key_removed);
    const auto reloaded = events_of<KeysReloaded>(evs);
    REQUIRE(reloaded.size() == 1);
    CHECK(reloaded[0].command_sequence == sequence);
    CHECK(reloaded[0].key_count == 1);
    CHECK(reloaded[0].grants_ended == 1);
    CHECK(h.lookup(web, v4(198, 51, 100, 1)) == LookupKind::no_grant);
    CHECK(h.lookup(web, v4(198, 51, 100, 2)) == LookupKind::granted);
    CHECK(h.rejected(h.sign(h.grant("198.51.100.3/32"))).reason ==
          GrantRejectReason::unknown_issuer);

    {
        std::ofstream out(h.config.issuer_keys_file, std::ios::trunc);
        out << "jitlb-issuer-public-v1 not-a-key\n";
    }
    const uint64_t bad = h.send(KeyReload{});
    const auto failed = events_of<CommandRejected>(h.tick_events());
    REQUIRE(failed.size() == 1);
    CHECK(failed[0].command_sequence == bad);
    CHECK(failed[0].command_type == static_cast<uint16_t>(MessageType::key_reload));
    CHECK(failed[0].reason == CommandRejectReason::key_reload_failed);
    CHECK_THAT(failed[0].text, Catch::Contains("issuers.pub:1"));
    CHECK(h.loop->issuers().size() == 1);
    CHECK(std::holds_alternative<GrantActivated>(
        h.push_and_tick(Harness::sign_with(h.grant("198.51.100.4/32"), second)).message));
}

// --- start -------------------------------------------------------------------------------------

TEST_CASE("open refuses a bad key file or configuration before creating the state file",
          "[control]") {
    TempDir dir;
    FakeClock clock;
    ServiceTable services;
    ControlConfig config;
    config.instance = "refused";
    config.region_dir = dir.path;
    config.cmd_owner_uid = getuid();
    config.issuer_keys_file = dir.path + "/missing.pub";
    config.grant_capacity = 64;
    config.service_capacity = 8;
    REQUIRE_THROWS_WITH(ControlLoop::open(config, services, clock), Catch::Contains("missing.pub"));
    REQUIRE_THROWS_AS(ControlLoop::open(config, services, clock), ControlLoopError);

    const IssuerSecretKey issuer = IssuerSecretKey::generate();
    config.issuer_keys_file = dir.path + "/issuers.pub";
    write_key_file(config.issuer_keys_file, {&issuer});
    config.verify_per_tick = 0;
    REQUIRE_THROWS_WITH(ControlLoop::open(config, services, clock),
                        Catch::Contains("verify_per_tick"));
    config.verify_per_tick = 64;
    config.service_capacity = 70'000;
    REQUIRE_THROWS_AS(ControlLoop::open(config, services, clock), ControlLoopError);
    CHECK_FALSE(std::filesystem::exists(state_file_path(dir.path, "refused")));
}

// --- figures (hidden: run with "[.bench]")
// ---------------------------------------------------------

TEST_CASE(
    "figures: the cost of a tick that verifies 64 grants and of one that applies 1000 revocations",
    "[.bench]") {
    Harness h([](ControlConfig& c) { c.grant_capacity = 4096; });
    h.define_service("web", 10);
    std::vector<SignedGrant> grants;
    for (int i = 0; i < 64; ++i)
        grants.push_back(h.sign(h.grant("10.2.0." + std::to_string(i) + "/32")));
    // The same 64 verifications alone, for the share of the tick they take.
    auto t0 = std::chrono::steady_clock::now();
    for (const SignedGrant& s : grants)
        REQUIRE(verify_grant(s, h.loop->issuers(), VerifyPolicy{}, kNow).ok());
    const double alone_us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    for (const SignedGrant& s : grants) h.push(s);
    t0 = std::chrono::steady_clock::now();
    const TickReport verify_tick = h.loop->tick();
    const double verify_us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    REQUIRE(verify_tick.grants_verified == 64);
    h.drain_events();
    for (int i = 0; i < 1000; ++i)
        h.send(
            Revoke{random_grant_id(), static_cast<uint64_t>(kNow + kHour), RevokeReason::policy});
    t0 = std::chrono::steady_clock::now();
    const TickReport revoke_tick = h.loop->tick();
    const double revoke_us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    REQUIRE(revoke_tick.revocations == 1000);
    std::printf(
        "tick verifying 64 grants: %.0f us (%.1f us per grant; verify_grant alone %.1f us)\n",
        verify_us, verify_us / 64, alone_us / 64);
    std::printf("tick applying 1000 revocations: %.0f us (%.2f us per revocation)\n", revoke_us,
                revoke_us / 1000);
}

TEST_CASE("the main lcore sleeps a tick when idle, runs ticks back to back through a backlog, and at a real-time "
          "priority sleeps as long as a backlog tick worked",
          "[control]") {
    using std::chrono::microseconds;
    using std::chrono::nanoseconds;
    const nanoseconds tick = microseconds(100);
    // Idle: the configured tick, whatever the policy or the tick's own length.
    CHECK(main_lcore_pause(false, false, tick, microseconds(3)) == tick);
    CHECK(main_lcore_pause(false, true, tick, microseconds(700)) == tick);
    // A backlog in the fair class: the next tick at once (the scheduler shares the core).
    CHECK(main_lcore_pause(true, false, tick, microseconds(90)) == nanoseconds{0});
    // A backlog at a real-time priority: as long as the tick worked, so the
    // main lcore takes at most about half of its core; never less than 10 us.
    CHECK(main_lcore_pause(true, true, tick, microseconds(90)) == microseconds(90));
    CHECK(main_lcore_pause(true, true, tick, microseconds(2500)) == microseconds(2500));
    CHECK(main_lcore_pause(true, true, tick, microseconds(1)) == microseconds(10));
    CHECK(main_lcore_pause(true, true, tick, nanoseconds{0}) == microseconds(10));
}
