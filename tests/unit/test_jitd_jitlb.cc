// jitd's core (control/jitd_core.h) and jitlb's control loop (lb/control_loop.h)
// in one process, over the real region files in a temporary directory, with one
// clock the test moves: what only the two together do. A jitd restarted after a
// revocation jitlb never saw re-sends it from its store (Jitd::reconcile), and
// the denial samples jitlb posts reach the audit log at most
// denial_samples_per_s lines a second (Jitd::on_event).
#include <catch2/catch.hpp>

#include "temp_dir.h"

#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "audit_log.h"
#include "control_loop.h"
#include "grant.h"
#include "issuer_keys.h"
#include "jitd_config.h"
#include "jitd_core.h"
#include "messages.h"
#include "region_link.h"
#include "service_table.h"
#include "shared_file.h"
#include "store.h"

using namespace jitlb;
using namespace jitlb::control;
using json = nlohmann::json;

namespace {

constexpr int64_t kT0 = 1'800'000'000'000;  // Unix ms when each test starts
constexpr int64_t kHour = 3'600'000;
constexpr uint32_t kDenialCap = 5;  // denial_samples_per_s
const Caller kRoot{0, 0, "root", {"root"}};

class FakeClock : public lb::Clock {
  public:
    int64_t unix_ms() override { return now_ms; }
    uint64_t ticks() override { return static_cast<uint64_t>(now_ms - kT0) + 1'000'000; }
    int64_t now_ms = kT0;
};

// jitd and jitlb of one instance; each can stop (as kill -9 would leave its
// files) and start again on what it left.
struct Node {
    Node() {
        IssuerSecretKey key = IssuerSecretKey::generate();
        REQUIRE(write_secret_key_file(dir.file("issuer.key"), key).ok());
        REQUIRE(write_public_key_file(dir.file("issuers.pub"), key.public_key(), "jitd").ok());
        lb_config.instance = "pair";
        lb_config.region_dir = dir.path.string();
        lb_config.cmd_owner_uid = getuid();
        lb_config.issuer_keys_file = dir.file("issuers.pub");
        lb_config.mac_key.fill(0x5a);
        lb_config.grant_capacity = 1024;
        lb_config.skew_ms = 2'000;
        lb_config.max_duration_ms = 24 * kHour;
        lb_config.horizon_ms = 24 * kHour;
        lb_config.ticks_per_second = 1000;
        lb_config.verify_per_tick = 64;
        lb_config.service_capacity = 64;
        lb_config.worker_stats_lines = 4;
    }

    std::string jitd_toml() const {
        const std::string d = dir.path.string();
        return "instance = \"pair\"\n"
               "state_dir = \"" + d + "\"\n"
               "cmd_file = \"" + cmd_file_path(d, "pair") + "\"\n"
               "state_file = \"" + state_file_path(d, "pair") + "\"\n"
               "denial_samples_per_s = " + std::to_string(kDenialCap) + "\n"
               "[policy]\n"
               "[[policy.rule]]\n"
               "name = \"r\"\nservices = [\"web\"]\nusers = [\"nobody\"]\n"
               "sources = [\"198.51.100.0/24\"]\nmax_duration = \"1h\"\n"
               "[[service]]\n"
               "name = \"web\"\n"
               "vips = [{ address = \"203.0.113.10\", port = 443, protocol = \"tcp\" }]\n"
               "backends = [{ id = \"w1\", address = \"10.1.0.1\" }]\n";
    }

    void start_jitd() {
        JitdConfig config = parse_jitd_config(jitd_toml(), dir.file("jitd.toml"));
        std::optional<IssuerSecretKey> key;
        REQUIRE(read_secret_key_file(dir.file("issuer.key"), key).ok());
        auto store = std::make_unique<Store>(dir.file("jitd.db"));
        AuditOptions opts;
        opts.fsync = false;
        if (const auto h = store->audit_head()) {
            opts.expected_head = AuditHead{h->seq, *parse_audit_hash_hex(h->hash_hex)};
        }
        auto audit = std::make_unique<AuditLog>(
            AuditLog::open(audit_path(), nullptr, opts, clock.now_ms));
        auto link = std::make_unique<RegionLink>(
            RegionLinkOptions{config.cmd_path, config.state_path, getuid(), config.cmd_ring_slots});
        jitd = std::make_unique<Jitd>(std::move(config), std::move(key), std::move(store),
                                      std::move(audit), std::move(link),
                                      [this] { return clock.now_ms; });
    }

    void start_jitlb() {
        services = std::make_unique<lb::ServiceTable>();
        loop = lb::ControlLoop::open(lb_config, *services, clock);
    }

    // Both tick, 10 ms apart, `rounds` times: pushes land, events come back.
    void run(int rounds = 20) {
        for (int i = 0; i < rounds; ++i) {
            clock.now_ms += 10;
            if (jitd) jitd->tick();
            if (loop) loop->tick();
        }
        if (jitd) jitd->tick();
    }

    std::string grant_state(const std::string& id) {
        const auto reply = jitd->handle({{"op", "ls_grants"}, {"all", true}}, kRoot);
        for (const auto& g : reply.at("grants")) {
            if (g.at("id") == id) return g.at("state");
        }
        return "missing";
    }

    std::vector<json> audit_lines(const std::string& action) const {
        std::vector<json> out;
        std::ifstream in(audit_path());
        for (std::string line; std::getline(in, line);) {
            json j = json::parse(line);
            if (j.at("action") == action) out.push_back(std::move(j));
        }
        return out;
    }

    std::string audit_path() const { return dir.file("audit.log"); }

    TempDir dir{"jitd-jitlb"};
    FakeClock clock;
    lb::ControlConfig lb_config;
    std::unique_ptr<lb::ServiceTable> services;
    std::unique_ptr<lb::ControlLoop> loop;
    std::unique_ptr<Jitd> jitd;
};

GrantId id_of(const std::string& hex) {
    GrantId id{};
    for (size_t i = 0; i < id.size(); ++i) {
        id[i] = static_cast<uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
    }
    return id;
}

DenialSample denial(uint8_t last_octet) {
    DenialSample d;
    d.family = IpVersion::v4;
    d.protocol = 6;
    d.reason = DenialReason::no_grant;
    d.service_id = 1;
    d.source = {192, 0, 2, last_octet};
    d.vip = {203, 0, 113, 10};
    d.vip_port = 443;
    d.count = 1;
    return d;
}

}  // namespace

TEST_CASE("a jitd restarted after a revocation jitlb never received re-sends it on reconcile, "
          "so the grant stays revoked",
          "[jitd_jitlb]") {
    Node n;
    n.start_jitlb();
    n.start_jitd();
    n.run();
    const auto reply = n.jitd->handle({{"op", "grant"},
                                       {"service", "web"},
                                       {"source", "198.51.100.7"},
                                       {"duration_ms", kHour},
                                       {"subject", "ops"}},
                                      kRoot);
    INFO(reply.dump());
    REQUIRE(reply.at("ok") == true);
    const std::string id = reply.at("grant").at("id");
    n.run();
    REQUIRE(n.grant_state(id) == "active");
    REQUIRE(n.loop->grant_writer().find_grant(id_of(id)).has_value());

    // jitlb goes away; jitd records the revocation (acknowledged) and dies
    // before jitlb is back: a new jitd starts a new command-ring epoch, so the
    // Revoke it may have left in the old ring is gone.
    n.loop.reset();
    REQUIRE(n.jitd->handle({{"op", "revoke"}, {"grant_id", id}}, kRoot).at("ok") == true);
    n.run(5);
    n.jitd.reset();
    n.start_jitd();
    n.start_jitlb();
    // The premise: jitlb came back with the grant (its MAC verifies), not revoked.
    REQUIRE(n.loop->grant_writer().find_grant(id_of(id)).has_value());
    REQUIRE_FALSE(n.loop->grant_writer().is_revoked(id_of(id)));

    n.run();
    CHECK_FALSE(n.loop->grant_writer().find_grant(id_of(id)).has_value());
    CHECK(n.loop->grant_writer().is_revoked(id_of(id)));
    CHECK(n.grant_state(id) == "revoked");
    const auto reconciles = n.audit_lines("jitlb.reconcile");
    REQUIRE_FALSE(reconciles.empty());
    CHECK(reconciles.back().at("detail").at("revocations") == 1);
    const auto confirmed = n.audit_lines("grant.revoked_in_jitlb");
    REQUIRE_FALSE(confirmed.empty());
    CHECK(confirmed.back().at("object") == id);
    CHECK(confirmed.back().at("reason") == "reconcile");

    // And again after a jitlb restart alone: the revoked id stays revoked.
    n.loop.reset();
    n.start_jitlb();
    n.run();
    CHECK_FALSE(n.loop->grant_writer().find_grant(id_of(id)).has_value());
    CHECK(n.loop->grant_writer().is_revoked(id_of(id)));
}

TEST_CASE("denial samples reach the audit log at most denial_samples_per_s lines a second, each "
          "counting the samples left out before it",
          "[jitd_jitlb]") {
    Node n;
    n.start_jitlb();
    n.start_jitd();
    n.run();
    const auto post = [&](int count, uint8_t first_octet) {
        for (int i = 0; i < count; ++i) {
            n.loop->post_denial(denial(static_cast<uint8_t>(first_octet + i)));
        }
        n.jitd->tick();  // drains them all at one instant
    };
    REQUIRE(n.audit_lines("denial.sample").empty());

    post(50, 1);
    auto lines = n.audit_lines("denial.sample");
    REQUIRE(lines.size() == kDenialCap);
    CHECK(lines[0].at("actor") == "jitlb");
    CHECK(lines[0].at("object") == "192.0.2.1");
    CHECK(lines[0].at("result") == "no_grant");
    CHECK(lines[0].at("detail").at("vip") == "203.0.113.10");
    CHECK(lines[0].at("detail").at("vip_port") == 443);
    CHECK(lines[0].at("detail").at("not_logged_before") == 0);

    // The same window (999 ms later): nothing more.
    n.clock.now_ms += 999;
    post(50, 100);
    CHECK(n.audit_lines("denial.sample").size() == kDenialCap);

    // A new window: at most the cap again, the first saying what was left out.
    n.clock.now_ms += 1;
    post(50, 150);
    lines = n.audit_lines("denial.sample");
    REQUIRE(lines.size() == 2 * kDenialCap);
    CHECK(lines[kDenialCap].at("object") == "192.0.2.150");
    CHECK(lines[kDenialCap].at("detail").at("not_logged_before") == 50 - kDenialCap + 50);

    // A steady flood for ten seconds: ten windows, ten times the cap.
    const int64_t start = n.clock.now_ms;
    for (int second = 1; second <= 10; ++second) {
        n.clock.now_ms = start + 1000 * second;
        for (int burst = 0; burst < 10; ++burst) {
            post(20, 1);
            n.clock.now_ms += 10;
        }
    }
    CHECK(n.audit_lines("denial.sample").size() == 12 * kDenialCap);
}

TEST_CASE("a service call names the commands it pushed; service_sync answers pending until jitlb "
          "applied them, then applied, rejected with jitlb's reason, or resent after a restart",
          "[jitd_jitlb]") {
    Node n;
    n.lb_config.service_capacity = 2;  // web and one more
    n.start_jitlb();
    n.start_jitd();
    n.run();
    const auto sync_state = [&](const json& reply) {
        const auto& sync = reply.at("sync");
        const auto s = n.jitd->handle(
            {{"op", "service_sync"}, {"session", sync.at("session")}, {"sequences", sync.at("sequences")}}, kRoot);
        INFO(s.dump());
        REQUIRE(s.at("ok") == true);
        return std::pair<std::string, std::string>{s.at("state"), s.value("detail", "")};
    };

    auto reply = n.jitd->handle({{"op", "backend_drain"}, {"service", "web"}, {"id", "w1"}}, kRoot);
    INFO(reply.dump());
    REQUIRE(reply.at("ok") == true);
    CHECK(reply.at("sync").at("jitlb_attached") == true);
    CHECK(reply.at("sync").at("sequences").size() == 2);  // service_set and backend_set
    CHECK(sync_state(reply).first == "pending");
    n.run(2);
    CHECK(sync_state(reply).first == "applied");
    const lb::Service* web = n.services->find_by_name("web");
    REQUIRE(web != nullptr);
    CHECK(web->backends.at(0).weight == 0);

    // A second service fits; a third does not: jitd stores it, jitlb refuses it.
    auto db = n.jitd->handle({{"op", "service_add"},
                              {"service", {{"name", "db"}, {"vips", {{{"address", "203.0.113.20"}, {"port", 5432},
                                                                      {"protocol", "tcp"}}}}}}},
                             kRoot);
    INFO(db.dump());
    REQUIRE(db.at("ok") == true);
    n.run(2);
    CHECK(sync_state(db).first == "applied");
    auto mq = n.jitd->handle({{"op", "service_add"},
                              {"service", {{"name", "mq"}, {"vips", {{{"address", "203.0.113.30"}, {"port", 5672},
                                                                      {"protocol", "tcp"}}}}}}},
                             kRoot);
    REQUIRE(mq.at("ok") == true);
    n.run(2);
    const auto [state, detail] = sync_state(mq);
    CHECK(state == "rejected");
    CHECK(detail.find("service_map_full") != std::string::npos);

    // The sequences name commands of one command-ring epoch: after a jitlb
    // restart jitd sends everything again and the old ones name nothing.
    auto undo = n.jitd->handle({{"op", "backend_drain"}, {"service", "web"}, {"id", "w1"}, {"undrain", true}}, kRoot);
    REQUIRE(undo.at("ok") == true);
    n.loop.reset();
    n.start_jitlb();
    n.run();
    CHECK(sync_state(undo).first == "resent");
    CHECK(n.services->find_by_name("web")->backends.at(0).weight == 1);

    // The new epoch's calls are answered again.
    auto weight = n.jitd->handle({{"op", "backend_weight"}, {"service", "web"}, {"id", "w1"}, {"weight", 2}}, kRoot);
    REQUIRE(weight.at("ok") == true);
    n.run(2);
    CHECK(sync_state(weight).first == "applied");
    CHECK(n.services->find_by_name("web")->backends.at(0).weight == 2);

    // Bad calls are refused, not answered "applied".
    const json session = weight.at("sync").at("session");
    CHECK(n.jitd->handle({{"op", "service_sync"}, {"session", session}}, kRoot).at("ok") == false);
    CHECK(n.jitd->handle({{"op", "service_sync"}, {"session", session}, {"sequences", {"a"}}}, kRoot).at("ok") ==
          false);
    CHECK(n.jitd->handle({{"op", "service_sync"}, {"session", session}, {"sequences", json::array()}}, kRoot)
              .at("ok") == true);
    const Caller nobody{65534, 65534, "nobody", {"nogroup"}};
    CHECK(n.jitd->handle({{"op", "service_sync"}, {"session", session}, {"sequences", {1}}}, nobody).at("ok") ==
          false);
}
