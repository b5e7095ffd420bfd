// Service table: VIP lookup for both families, the refusals that leave the
// table as it was, Maglev tables built from BackendSet (draining backends,
// weight 0, left out of them but kept in the list), generations, and the
// snapshot lifecycle (an old snapshot stays readable until every worker has
// announced a newer generation), with a ThreadSanitizer stress of one writer
// against two readers.
#include <arpa/inet.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "ip_text.h"
#include "service_table.h"

using namespace jitlb;
using jitlb::test::ip;
using namespace jitlb::lb;

namespace {

Vip vip(const char* address, uint16_t port, L4Protocol protocol = L4Protocol::tcp) {
    return {ip(address), port, protocol};
}

VipKey key(const char* address, uint16_t port, L4Protocol protocol = L4Protocol::tcp) {
    const IpAddress a = ip(address);
    VipKey k;
    k.address = a.bytes;
    k.family = a.version;
    k.protocol = static_cast<uint8_t>(protocol);
    k.port = port;
    return k;
}

ServiceSet service(std::string name, std::vector<Vip> vips, uint32_t table_size = 65537) {
    ServiceSet s;
    s.name = std::move(name);
    s.mode = ForwardingMode::ipip;
    s.maglev_table_size = table_size;
    s.vips = std::move(vips);
    return s;
}

BackendSet backends(std::string service_name, size_t n, uint32_t first_weight = 1) {
    BackendSet set;
    set.service = std::move(service_name);
    for (size_t i = 0; i < n; ++i) {
        Backend b;
        b.id = "backend-" + std::to_string(i);
        b.address = ip(("172.16.0." + std::to_string(i + 1)).c_str());
        b.weight = i == 0 ? first_weight : 1;
        set.backends.push_back(b);
    }
    return set;
}

void require_ok(const ServiceApplyResult& r) {
    INFO(r.error);
    REQUIRE(r.ok);
}

}  // namespace

TEST_CASE("find returns the service for its v4 and v6 VIPs and misses on any other port, protocol or address",
          "[service_table]") {
    ServiceTable table;
    require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80), vip("2001:db8::64", 443),
                                              vip("203.0.113.10", 53, L4Protocol::udp)})));
    require_ok(table.apply(2, service("dns", {vip("203.0.113.11", 53, L4Protocol::udp)})));
    const ServiceSnapshot& snap = *table.current();
    CHECK(snap.service_count() == 2);

    const Service* web = snap.find(key("203.0.113.10", 80));
    REQUIRE(web != nullptr);
    CHECK(web->name == "web");
    CHECK(web->id == 1);
    CHECK(snap.find(key("2001:db8::64", 443)) == web);
    CHECK(snap.find(key("203.0.113.10", 53, L4Protocol::udp)) == web);
    const Service* dns = snap.find(key("203.0.113.11", 53, L4Protocol::udp));
    REQUIRE(dns != nullptr);
    CHECK(dns->name == "dns");
    CHECK(snap.by_id(2) == dns);
    CHECK(snap.by_id(1) == web);
    CHECK(snap.by_id(3) == nullptr);

    CHECK(snap.find(key("203.0.113.10", 81)) == nullptr);                     // other port
    CHECK(snap.find(key("203.0.113.10", 80, L4Protocol::udp)) == nullptr);    // other protocol
    CHECK(snap.find(key("203.0.113.11", 53, L4Protocol::tcp)) == nullptr);    // other protocol
    CHECK(snap.find(key("2001:db8::64", 80)) == nullptr);                     // v6 VIP, v4 VIP's port
    CHECK(snap.find(key("2001:db8::65", 443)) == nullptr);                    // other address
    CHECK(snap.find(key("203.0.113.12", 80)) == nullptr);
    // The v4 VIP's bytes under the v6 family are another key.
    VipKey v6_of_v4 = key("203.0.113.10", 80);
    v6_of_v4.family = IpVersion::v6;
    CHECK(snap.find(v6_of_v4) == nullptr);
}

TEST_CASE("is_vip_address is true for every VIP address of every service and false for others",
          "[service_table]") {
    ServiceTable table;
    CHECK_FALSE(table.current()->is_vip_address(ip("203.0.113.10")));
    require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80), vip("2001:db8::64", 443)})));
    require_ok(table.apply(7, service("mail", {vip("203.0.113.25", 25), vip("203.0.113.10", 587)})));
    const ServiceSnapshot& snap = *table.current();
    CHECK(snap.is_vip_address(ip("203.0.113.10")));
    CHECK(snap.is_vip_address(ip("203.0.113.25")));
    CHECK(snap.is_vip_address(ip("2001:db8::64")));
    CHECK_FALSE(snap.is_vip_address(ip("203.0.113.11")));
    CHECK_FALSE(snap.is_vip_address(ip("2001:db8::65")));
    CHECK_FALSE(snap.is_vip_address(ip("192.0.2.10")));
    // Same leading bytes, other family.
    IpAddress v6_of_v4 = ip("203.0.113.10");
    v6_of_v4.version = IpVersion::v6;
    CHECK_FALSE(snap.is_vip_address(v6_of_v4));
}

TEST_CASE("a VIP another service holds is refused with that service's name and nothing changes",
          "[service_table]") {
    ServiceTable table;
    require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80)})));
    const ServiceSnapshot* before = table.current();
    const uint64_t generation = table.generation();

    const ServiceApplyResult r =
        table.apply(2, service("api", {vip("203.0.113.20", 80), vip("203.0.113.10", 80)}));
    CHECK_FALSE(r.ok);
    CHECK(r.reason == CommandRejectReason::invalid_service);
    CHECK_THAT(r.error, Catch::Contains("web"));
    CHECK_THAT(r.error, Catch::Contains("203.0.113.10"));
    CHECK(table.current() == before);
    CHECK(table.generation() == generation);
    CHECK(table.retired_count() == 1);  // only the initial empty snapshot
    CHECK(table.current()->find(key("203.0.113.20", 80)) == nullptr);
    CHECK_FALSE(table.current()->is_vip_address(ip("203.0.113.20")));
    CHECK(table.current()->find(key("203.0.113.10", 80))->name == "web");
    CHECK_FALSE(table.id_of("api").has_value());

    // The same VIP on another port is a different VIP: accepted.
    require_ok(table.apply(2, service("api", {vip("203.0.113.10", 8080)})));
    CHECK(table.current()->find(key("203.0.113.10", 8080))->name == "api");
}

TEST_CASE("match: the VIP with the packet's port first, else the address's VIP without a port (3-tuple), per protocol",
          "[service_table]") {
    ServiceTable table;
    require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80)})));
    bool three = true;
    CHECK(table.current()->match(key("203.0.113.10", 80), three)->name == "web");
    CHECK_FALSE(three);
    CHECK(table.current()->match(key("203.0.113.10", 81), three) == nullptr);  // no VIP without a port yet
    CHECK_FALSE(three);

    require_ok(table.apply(2, service("bulk", {vip("203.0.113.10", 0, L4Protocol::udp),
                                               vip("203.0.113.11", 0, L4Protocol::tcp)})));
    const ServiceSnapshot& s = *table.current();
    REQUIRE(s.has_any_port_vip());
    // A port of its own still wins over the address's portless VIP of another protocol.
    CHECK(s.match(key("203.0.113.10", 80), three)->name == "web");
    CHECK_FALSE(three);
    CHECK(s.match(key("203.0.113.10", 5353, L4Protocol::udp), three)->name == "bulk");
    CHECK(three);
    CHECK(s.match(key("203.0.113.10", 0, L4Protocol::udp), three)->name == "bulk");  // a fragment
    CHECK(three);
    CHECK(s.match(key("203.0.113.11", 443), three)->name == "bulk");
    CHECK(three);
    // TCP to .10 has only port 80; another port, another protocol or address: nothing.
    CHECK(s.match(key("203.0.113.10", 443), three) == nullptr);
    CHECK(s.match(key("203.0.113.11", 53, L4Protocol::udp), three) == nullptr);
    CHECK(s.match(key("203.0.113.12", 80), three) == nullptr);
}

TEST_CASE("a Maglev table size that is not prime is refused and nothing changes", "[service_table]") {
    ServiceTable table;
    require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80)})));
    require_ok(table.apply(backends("web", 3)));
    const ServiceSnapshot* before = table.current();
    const uint64_t generation = table.generation();

    const ServiceApplyResult fresh = table.apply(2, service("api", {vip("203.0.113.20", 80)}, 65536));
    CHECK_FALSE(fresh.ok);
    CHECK(fresh.reason == CommandRejectReason::invalid_service);
    CHECK_THAT(fresh.error, Catch::Contains("65536"));
    const ServiceApplyResult existing = table.apply(1, service("web", {vip("203.0.113.10", 80)}, 1000));
    CHECK_FALSE(existing.ok);
    CHECK(existing.reason == CommandRejectReason::invalid_service);
    CHECK_THAT(existing.error, Catch::Contains("1000"));

    CHECK(table.current() == before);
    CHECK(table.generation() == generation);
    CHECK(table.current()->find(key("203.0.113.20", 80)) == nullptr);
    const Service* web = table.find_by_name("web");
    REQUIRE(web != nullptr);
    CHECK(web->maglev.size() == 65537);
    CHECK(web->backends.size() == 3);
}

TEST_CASE("a BackendSet for a service that does not exist is refused as unknown_service", "[service_table]") {
    ServiceTable table;
    require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80)})));
    const ServiceSnapshot* before = table.current();
    const ServiceApplyResult r = table.apply(backends("nosuch", 2));
    CHECK_FALSE(r.ok);
    CHECK(r.reason == CommandRejectReason::unknown_service);
    CHECK_THAT(r.error, Catch::Contains("nosuch"));
    CHECK(table.current() == before);
    CHECK(table.find_by_name("web")->backends.empty());
}

TEST_CASE("a BackendSet builds a Maglev table whose entries index the backends in proportion to weight",
          "[service_table]") {
    ServiceTable table;
    require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80)}, 10007)));
    const Service* empty = table.current()->find(key("203.0.113.10", 80));
    REQUIRE(empty != nullptr);
    CHECK(empty->backends.empty());
    CHECK(empty->maglev.empty());
    CHECK_FALSE(empty->forwarding());

    const BackendSet set = backends("web", 4, /*first_weight=*/2);  // weights 2, 1, 1, 1
    require_ok(table.apply(set));
    const Service* web = table.current()->find(key("203.0.113.10", 80));
    REQUIRE(web != nullptr);
    CHECK(web->forwarding());
    REQUIRE(web->backends.size() == 4);
    for (size_t i = 0; i < 4; ++i) {
        CHECK(web->backends[i].id == set.backends[i].id);
        CHECK(web->backends[i].address == set.backends[i].address);
        CHECK(web->backends[i].weight == set.backends[i].weight);
        CHECK(web->backends[i].id_hash == backend_id_hash(set.backends[i].id));
    }
    REQUIRE(web->maglev.size() == 10007);
    std::vector<size_t> slots(4, 0);
    for (const uint32_t index : web->maglev) {
        REQUIRE(index < web->backends.size());
        ++slots[index];
    }
    // Weight 2 of 5: 40%; weight 1: 20% each (Maglev: within about 1%).
    CHECK(slots[0] == Approx(10007 * 0.4).epsilon(0.02));
    for (size_t i = 1; i < 4; ++i) CHECK(slots[i] == Approx(10007 * 0.2).epsilon(0.02));

    // An empty BackendSet takes the service down again.
    require_ok(table.apply(backends("web", 0)));
    const Service* down = table.current()->find(key("203.0.113.10", 80));
    REQUIRE(down != nullptr);
    CHECK(down->maglev.empty());
    CHECK_FALSE(down->forwarding());
}

// --- draining: weight 0 ---------------------------------------------------------

namespace {

// The backend id each slot of `s`'s Maglev table names.
std::vector<std::string> slot_ids(const Service& s) {
    std::vector<std::string> ids;
    ids.reserve(s.maglev.size());
    for (const uint32_t index : s.maglev) ids.push_back(s.backends.at(index).id);
    return ids;
}

}  // namespace

TEST_CASE("a draining backend (weight 0) stays in the list but gets no Maglev slot, as if removed",
          "[service_table][drain]") {
    ServiceTable table;
    require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80)}, 10007)));
    require_ok(table.apply(2, service("ref", {vip("203.0.113.11", 80)}, 10007)));

    // backend-0 drains; the others keep weight 1.
    const BackendSet draining = backends("web", 4, /*first_weight=*/0);
    const ServiceApplyResult r = table.apply(draining);
    require_ok(r);
    const Service* web = table.find_by_name("web");
    REQUIRE(web != nullptr);
    CHECK(web->forwarding());
    CHECK(web->takes_new_flows());
    REQUIRE(web->backends.size() == 4);
    CHECK(web->backends[0].id == "backend-0");
    CHECK(web->backends[0].weight == 0);
    CHECK(web->backends[0].id_hash == backend_id_hash("backend-0"));  // tracked flows find it

    REQUIRE(web->maglev.size() == 10007);
    std::vector<size_t> slots(4, 0);
    for (const uint32_t index : web->maglev) {
        REQUIRE(index < web->backends.size());
        ++slots[index];
    }
    CHECK(slots[0] == 0);
    for (size_t i = 1; i < 4; ++i) CHECK(slots[i] == Approx(10007 / 3.0).epsilon(0.02));

    // The same table, slot for slot, as a set without backend-0, whose list
    // indexes differ: the filtered table maps back to the right backends.
    BackendSet removed = draining;
    removed.service = "ref";
    removed.backends.erase(removed.backends.begin());
    require_ok(table.apply(removed));
    const Service* ref = table.find_by_name("ref");
    REQUIRE(ref != nullptr);
    CHECK(ref->backends[0].id == "backend-1");
    CHECK(slot_ids(*web) == slot_ids(*ref));
}

TEST_CASE(
    "a service whose backends all drain keeps them and forwards, but its Maglev table is empty",
    "[service_table][drain]") {
    ServiceTable table;
    require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80)})));
    require_ok(table.apply(backends("web", 3)));
    BackendSet all_drain = backends("web", 3);
    for (Backend& b : all_drain.backends) b.weight = 0;
    require_ok(table.apply(all_drain));
    const Service* web = table.current()->find(key("203.0.113.10", 80));
    REQUIRE(web != nullptr);
    CHECK(web->backends.size() == 3);
    CHECK(web->maglev.empty());
    CHECK(web->forwarding());             // its tracked flows go on
    CHECK_FALSE(web->takes_new_flows());  // new flows are dropped (service_down)

    // A ServiceSet keeps the draining backends and builds no table either,
    // whatever its size: no weighted backend has to fit.
    require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80)}, 101)));
    CHECK(table.find_by_name("web")->backends.size() == 3);
    CHECK(table.find_by_name("web")->maglev.empty());
}

TEST_CASE("undraining (weight back to 1) gives a backend its Maglev slots again",
          "[service_table][drain]") {
    ServiceTable table;
    require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80)}, 10007)));
    require_ok(table.apply(backends("web", 4)));
    const std::vector<uint32_t> before = table.find_by_name("web")->maglev;

    require_ok(table.apply(backends("web", 4, /*first_weight=*/0)));
    const Service* drained = table.find_by_name("web");
    CHECK(std::count(drained->maglev.begin(), drained->maglev.end(), 0u) == 0);

    require_ok(table.apply(backends("web", 4, /*first_weight=*/1)));
    const Service* back = table.find_by_name("web");
    CHECK(back->takes_new_flows());
    // Maglev depends on the set of (id, weight) only: the very same table.
    CHECK(back->maglev == before);
    CHECK(std::count(back->maglev.begin(), back->maglev.end(), 0u) > 0);
}

TEST_CASE("a ServiceSet applied again keeps the service's backends and Maglev table", "[service_table]") {
    ServiceTable table;
    require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80)})));
    require_ok(table.apply(backends("web", 3)));
    const std::vector<uint32_t> maglev = table.find_by_name("web")->maglev;

    // A second VIP and the disabled flag.
    ServiceSet again = service("web", {vip("203.0.113.10", 80), vip("203.0.113.10", 443)});
    again.flags = kServiceFlagDisabled;
    require_ok(table.apply(1, again));
    const Service* web = table.current()->find(key("203.0.113.10", 443));
    REQUIRE(web != nullptr);
    CHECK(web == table.current()->find(key("203.0.113.10", 80)));
    REQUIRE(web->backends.size() == 3);
    CHECK(web->backends[2].id == "backend-2");
    CHECK(web->maglev == maglev);
    CHECK_FALSE(web->forwarding());  // disabled

    again.flags = 0;
    require_ok(table.apply(1, again));
    CHECK(table.find_by_name("web")->forwarding());
    CHECK(table.find_by_name("web")->backends.size() == 3);
}

TEST_CASE("a ServiceSet whose Maglev table is too small for the backends it keeps is refused and nothing changes",
          "[service_table]") {
    ServiceTable table;
    require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80)})));
    require_ok(table.apply(backends("web", 3)));
    const ServiceSnapshot* before = table.current();
    // 101 is prime but below 100 slots per backend.
    const ServiceApplyResult r = table.apply(1, service("web", {vip("203.0.113.10", 80)}, 101));
    CHECK_FALSE(r.ok);
    CHECK(r.reason == CommandRejectReason::invalid_service);
    CHECK(table.current() == before);
    CHECK(table.find_by_name("web")->maglev.size() == 65537);
    // The size in force is still the old one: a BackendSet builds with it.
    require_ok(table.apply(backends("web", 4)));
    CHECK(table.find_by_name("web")->maglev.size() == 65537);
}

TEST_CASE("a BackendSet for an L2 DSR service is refused while a backend has no MAC", "[service_table]") {
    ServiceTable table;
    ServiceSet dsr = service("dsr", {vip("203.0.113.30", 80)});
    dsr.mode = ForwardingMode::l2dsr;
    require_ok(table.apply(1, dsr));
    const ServiceApplyResult r = table.apply(backends("dsr", 2));  // no MACs
    CHECK_FALSE(r.ok);
    CHECK(r.reason == CommandRejectReason::invalid_service);
    CHECK_THAT(r.error, Catch::Contains("backend-0"));
    CHECK(table.find_by_name("dsr")->backends.empty());
    BackendSet with_macs = backends("dsr", 2);
    for (Backend& b : with_macs.backends) b.mac = {0x02, 0xcc, 0, 0, 0, 0x03};
    require_ok(table.apply(with_macs));
    CHECK(table.find_by_name("dsr")->backends[1].mac == MacAddress{0x02, 0xcc, 0, 0, 0, 0x03});
}

TEST_CASE("a ServiceSet that switches a service to L2 DSR is refused while one of its backends has no MAC",
          "[service_table]") {
    ServiceTable table;
    require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80)})));
    require_ok(table.apply(backends("web", 2)));  // IPIP: no MACs needed
    const ServiceSnapshot* before = table.current();
    ServiceSet dsr = service("web", {vip("203.0.113.10", 80)});
    dsr.mode = ForwardingMode::l2dsr;
    // The backends a ServiceSet keeps must satisfy the new mode as a
    // BackendSet would have to: L2 DSR cannot send to a zero MAC.
    const ServiceApplyResult r = table.apply(1, dsr);
    CHECK_FALSE(r.ok);
    CHECK(r.reason == CommandRejectReason::invalid_service);
    CHECK(table.current() == before);
    CHECK(table.find_by_name("web")->mode == ForwardingMode::ipip);
}

TEST_CASE("remove takes a service and its VIPs out, and its VIPs are free again", "[service_table]") {
    ServiceTable table;
    require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80), vip("2001:db8::64", 443)})));
    require_ok(table.apply(2, service("dns", {vip("203.0.113.11", 53, L4Protocol::udp)})));
    require_ok(table.apply(backends("web", 2)));

    const ServiceApplyResult r = table.remove("web");
    require_ok(r);
    CHECK(r.service_id == 1);
    const ServiceSnapshot& snap = *table.current();
    CHECK(snap.service_count() == 1);
    CHECK(snap.find(key("203.0.113.10", 80)) == nullptr);
    CHECK(snap.find(key("2001:db8::64", 443)) == nullptr);
    CHECK_FALSE(snap.is_vip_address(ip("203.0.113.10")));
    CHECK_FALSE(snap.is_vip_address(ip("2001:db8::64")));
    CHECK(snap.by_id(1) == nullptr);
    CHECK_FALSE(table.id_of("web").has_value());
    CHECK(table.find_by_name("web") == nullptr);
    CHECK(snap.find(key("203.0.113.11", 53, L4Protocol::udp))->name == "dns");

    const ServiceApplyResult again = table.remove("web");
    CHECK_FALSE(again.ok);
    CHECK(again.reason == CommandRejectReason::unknown_service);
    CHECK(table.apply(backends("web", 1)).reason == CommandRejectReason::unknown_service);

    // Another service may take the VIP now.
    require_ok(table.apply(3, service("web2", {vip("203.0.113.10", 80)})));
    CHECK(table.current()->find(key("203.0.113.10", 80))->id == 3);
}

TEST_CASE("every change publishes a snapshot with the next generation; the service's own generation counts its changes",
          "[service_table]") {
    ServiceTable table;
    const uint64_t g0 = table.generation();
    CHECK(table.current()->generation() == g0);

    const ServiceApplyResult a = table.apply(1, service("web", {vip("203.0.113.10", 80)}));
    require_ok(a);
    CHECK(table.generation() == g0 + 1);
    CHECK(table.current()->generation() == g0 + 1);
    CHECK(a.generation == 1);
    CHECK(a.service_id == 1);

    const ServiceApplyResult b = table.apply(backends("web", 2));
    require_ok(b);
    CHECK(table.generation() == g0 + 2);
    CHECK(b.generation == 2);
    CHECK(table.find_by_name("web")->generation == 2);

    require_ok(table.apply(2, service("dns", {vip("203.0.113.11", 53, L4Protocol::udp)})));
    CHECK(table.generation() == g0 + 3);
    CHECK(table.find_by_name("web")->generation == 2);  // untouched
    CHECK(table.find_by_name("dns")->generation == 1);

    const ServiceApplyResult c = table.apply(1, service("web", {vip("203.0.113.10", 80)}));
    CHECK(c.generation == 3);
    CHECK(table.generation() == g0 + 4);

    CHECK_FALSE(table.apply(backends("nosuch", 1)).ok);  // refused: no new generation
    CHECK(table.generation() == g0 + 4);

    require_ok(table.remove("dns"));
    CHECK(table.generation() == g0 + 5);
    CHECK(table.current()->generation() == g0 + 5);
}

TEST_CASE("an old snapshot stays readable until every worker has announced a newer generation",
          "[service_table]") {
    ServiceTable table;
    Quiescence q(2);
    require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80)})));
    const uint64_t g_old = table.generation();
    // Both workers are on the current snapshot: the initial empty one can go.
    q.announce(0, g_old);
    q.announce(1, g_old);
    CHECK(table.retired_count() == 1);
    CHECK(table.reclaim(q) == 1);
    CHECK(table.retired_count() == 0);

    const ServiceSnapshot* old = table.current();
    require_ok(table.apply(backends("web", 2)));
    const uint64_t g_new = table.generation();
    REQUIRE(g_new > g_old);
    CHECK(table.current() != old);
    CHECK(table.retired_count() == 1);

    // Still in use by both workers: kept, and reads as it was (ASan would
    // catch a read of freed memory here).
    CHECK(table.reclaim(q) == 0);
    CHECK(table.retired_count() == 1);
    CHECK(old->generation() == g_old);
    const Service* old_web = old->find(key("203.0.113.10", 80));
    REQUIRE(old_web != nullptr);
    CHECK(old_web->backends.empty());
    CHECK(old_web->name == "web");

    q.announce(0, g_new);
    CHECK(q.oldest_in_use() == g_old);
    CHECK(table.reclaim(q) == 0);  // worker 1 may still hold it
    CHECK(table.retired_count() == 1);
    CHECK(old->find(key("203.0.113.10", 80)) == old_web);
    CHECK(old->is_vip_address(ip("203.0.113.10")));

    q.announce(1, g_new);
    CHECK(q.oldest_in_use() == g_new);
    CHECK(table.reclaim(q) == 1);
    CHECK(table.retired_count() == 0);
    // The current snapshot is never reclaimed.
    CHECK(table.current()->find(key("203.0.113.10", 80))->backends.size() == 2);
    CHECK(table.reclaim(q) == 0);
}

TEST_CASE("a worker that never announces blocks reclamation until it goes offline", "[service_table]") {
    ServiceTable table;
    Quiescence q(3);
    CHECK(q.workers() == 3);
    CHECK(q.oldest_in_use() == 0);
    for (int i = 0; i < 4; ++i) require_ok(table.apply(1, service("web", {vip("203.0.113.10", 80)})));
    CHECK(table.retired_count() == 4);
    q.announce(0, table.generation());
    q.announce(2, table.generation());
    CHECK(table.reclaim(q) == 0);  // worker 1 has never announced
    CHECK(table.retired_count() == 4);

    q.go_offline(1);
    CHECK(q.oldest_in_use() == table.generation());
    CHECK(table.reclaim(q) == 4);
    CHECK(table.retired_count() == 0);

    // No worker online: everything retired can go at once.
    q.go_offline(0);
    q.go_offline(2);
    CHECK(q.oldest_in_use() == UINT64_MAX);
    require_ok(table.apply(backends("web", 1)));
    require_ok(table.apply(backends("web", 2)));
    CHECK(table.retired_count() == 2);
    CHECK(table.reclaim(q) == 2);
    CHECK(table.current()->find(key("203.0.113.10", 80))->backends.size() == 2);
}

// One writer (the main lcore) applies and reclaims while two readers (workers)
// use each snapshot as a burst would and announce. Run under ThreadSanitizer
// (data races, and frees racing with reads) and ASan (use after free).
TEST_CASE("readers may use the current snapshot while the writer applies and reclaims (TSan)",
          "[service_table][tsan]") {
    constexpr size_t kReaders = 2;
    ServiceTable table;
    Quiescence q(kReaders);
    const VipKey web_key = key("203.0.113.10", 80);
    const VipKey alt_key = key("2001:db8::64", 443);
    const IpAddress web_address = ip("203.0.113.10");

    std::atomic<bool> stop{false};
    std::atomic<uint64_t> errors{0};
    std::atomic<uint64_t> reads_with_service{0};
    std::vector<std::thread> readers;
    for (size_t w = 0; w < kReaders; ++w) {
        readers.emplace_back([&, w] {
            uint64_t bad = 0, found = 0, last_generation = 0;
            while (!stop.load(std::memory_order_relaxed)) {
                const ServiceSnapshot* snap = table.current();
                const uint64_t generation = snap->generation();
                if (generation < last_generation) ++bad;  // snapshots only move forward
                last_generation = generation;
                const Service* svc = snap->find(web_key);
                if (svc != nullptr) {
                    ++found;
                    if (svc->name != "tsan" || !snap->is_vip_address(web_address)) ++bad;
                    if (svc->backends.empty() != svc->maglev.empty()) ++bad;
                    uint64_t sum = 0;
                    for (const uint32_t index : svc->maglev) {
                        if (index >= svc->backends.size()) {
                            ++bad;
                            break;
                        }
                        sum += svc->backends[index].address.bytes[3] + svc->backends[index].id.size();
                    }
                    if (!svc->maglev.empty() && sum == 0) ++bad;
                    const Service* alt = snap->find(alt_key);
                    if (alt != nullptr && alt != svc) ++bad;
                }
                q.announce(w, generation);
            }
            q.go_offline(w);
            errors.fetch_add(bad);
            reads_with_service.fetch_add(found);
        });
    }

    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
    size_t reclaimed_while_running = 0;
    size_t applied = 0;
    for (uint32_t i = 0; i < 20000 && std::chrono::steady_clock::now() < deadline; ++i) {
        std::vector<Vip> vips{vip("203.0.113.10", 80)};
        if (i % 2 == 0) vips.push_back(vip("2001:db8::64", 443));
        ServiceSet set = service("tsan", vips, 1009);
        set.flags = i % 5 == 0 ? kServiceFlagDisabled : 0;
        require_ok(table.apply(1, set));
        require_ok(table.apply(backends("tsan", i % 6)));  // 0..5 backends
        applied += 2;
        if (i % 7 == 6) {
            require_ok(table.remove("tsan"));
            ++applied;
        }
        reclaimed_while_running += table.reclaim(q);
    }
    stop.store(true);
    for (std::thread& t : readers) t.join();

    INFO("applied " << applied << ", reclaimed while readers ran " << reclaimed_while_running);
    CHECK(errors.load() == 0);
    CHECK(reads_with_service.load() > 0);
    CHECK(reclaimed_while_running > 0);
    const size_t rest = table.reclaim(q);  // every reader is offline
    CHECK(table.retired_count() == 0);
    // Snapshots published: the constructor's and one per change; all but the
    // current one were freed.
    CHECK(reclaimed_while_running + rest == applied);
}
