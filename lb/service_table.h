// The data plane's services: VIP -> service, each service's forwarding mode,
// backends and Maglev table. The main lcore applies ServiceSet, BackendSet and
// ServiceDelete commands (common/messages.h) by building a new immutable
// ServiceSnapshot and publishing it with one release store; workers load the
// current snapshot once per burst (acquire) and report the generation they
// are done with (Quiescence), so the main lcore frees an old snapshot only
// when no worker can still hold it. No DPDK here: unit tests and TSan build it.
#pragma once

#include <atomic>
#include <map>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backend_slots.h"
#include "encap.h"
#include "flow.h"
#include "messages.h"
#include "shared_layout.h"

namespace jitlb::lb {

inline constexpr uint16_t kNoService = 0;

struct BackendInfo {
    std::string id;  // the Maglev id
    IpAddress address;
    MacAddress mac{};  // L2 DSR: the backend's MAC
    uint32_t weight = 1;
    uint64_t id_hash = 0;  // backend_id_hash(id): a flow's backend across generations
    uint32_t counter_slot = kNoCounterSlot;  // its BackendCounters in the stats blocks (backend_slots.h)
};

uint64_t backend_id_hash(std::string_view id) noexcept;

// One service as workers see it. Immutable once published; shared between
// snapshots (a change to one service rebuilds only that one).
struct Service {
    uint16_t id = kNoService;  // the state file's service id (1..65535)
    std::string name;
    ForwardingMode mode = ForwardingMode::ipip;
    uint16_t gue_port = 0;
    uint32_t flags = 0;  // kServiceFlag*
    std::vector<Vip> vips;
    // Every backend of the last BackendSet, draining ones (weight 0) included,
    // so that a tracked flow still finds its backend by id hash.
    std::vector<BackendInfo> backends;
    // Indices into `backends`, naming only backends of weight > 0; empty when
    // there are none (no backends, or all draining): no new flows.
    std::vector<uint32_t> maglev;
    uint64_t generation = 0;  // bumped each time this service is applied

    // Forwards at all: enabled, with backends for its tracked flows at least.
    bool forwarding() const noexcept { return (flags & kServiceFlagDisabled) == 0 && !backends.empty(); }
    // Gives new flows a backend: forwarding, and some backend is not draining.
    bool takes_new_flows() const noexcept { return forwarding() && !maglev.empty(); }
};

// A VIP key as the parser sees it: destination address, IP protocol, port.
struct VipKey {
    std::array<uint8_t, 16> address{};
    IpVersion family = IpVersion::none;
    uint8_t protocol = 0;
    uint16_t port = 0;
    friend bool operator==(const VipKey&, const VipKey&) = default;
};

// Everything workers read, switched as one. Open addressing over a power-of-two
// array of VIP slots; services by id.
class ServiceSnapshot {
  public:
    uint64_t generation() const noexcept { return generation_; }
    // The service listening on (address, protocol, port), or nullptr.
    const Service* find(const VipKey& key) const noexcept;
    // Whether some VIP has no port (port 0: the 3-tuple mode, every packet of
    // the protocol to that address, fragments included, hashed on source,
    // destination and protocol); find() with port 0 names its service.
    bool has_any_port_vip() const noexcept { return any_port_; }
    // The service a packet to `key` belongs to: the VIP with its port, else,
    // when there is one, the VIP without a port (address, protocol), which
    // takes every packet of the protocol; `three_tuple` says whether the
    // service found is a 3-tuple one (also when key.port is 0: a fragment).
    const Service* match(const VipKey& key, bool& three_tuple) const noexcept;
    // Whether `address` is any service's VIP (for ARP / ND replies).
    bool is_vip_address(const IpAddress& address) const noexcept;
    // Whether an ICMP echo to `address` (family, 4 or 16 bytes) is answered: a VIP
    // of a service with kServiceFlagAnswerEcho that is not disabled.
    bool answers_echo(IpVersion family, const uint8_t* address) const noexcept;
    const Service* by_id(uint16_t id) const noexcept {
        return id < by_id_.size() ? by_id_[id].get() : nullptr;
    }
    size_t service_count() const noexcept { return count_; }

  private:
    friend class ServiceTable;
    struct VipSlot {
        VipKey key;
        const Service* service = nullptr;  // nullptr: empty slot
    };
    uint64_t generation_ = 0;
    size_t count_ = 0;
    std::vector<VipSlot> vip_slots_;  // power of two, load <= 1/2
    uint64_t vip_mask_ = 0;
    bool any_port_ = false;
    std::vector<IpAddress> vip_addresses_;  // distinct, sorted
    std::vector<IpAddress> echo_addresses_;  // distinct, sorted
    std::vector<std::shared_ptr<const Service>> by_id_;  // index = id
};

uint64_t vip_hash(const VipKey& key) noexcept;

// Workers announce, after each burst, the snapshot generation they loaded;
// the main lcore frees a snapshot once every worker's announced generation is
// newer (an idle worker announces too: its loop runs even with no packets).
// Slots are cache-line sized; one writer each (its worker), read by the main
// lcore: release store / acquire load.
class Quiescence {
  public:
    explicit Quiescence(size_t workers);
    // Worker `w`: done with everything older than `generation`.
    void announce(size_t w, uint64_t generation) noexcept;
    // Worker `w` stopped polling (never holds a snapshot again).
    void go_offline(size_t w) noexcept;
    // The smallest generation any online worker may still hold; UINT64_MAX
    // when none is online.
    uint64_t oldest_in_use() const noexcept;
    size_t workers() const noexcept { return slots_.size(); }

  private:
    struct alignas(64) Slot {
        std::atomic<uint64_t> generation{0};
    };
    std::vector<Slot> slots_;
};

// What applying a command did, for the event the main lcore posts.
struct ServiceApplyResult {
    bool ok = false;
    CommandRejectReason reason = CommandRejectReason::internal;  // when !ok
    std::string error;  // when !ok: what was wrong, with the value
    uint16_t service_id = kNoService;
    uint64_t generation = 0;  // the service's, when ok
};

// Where the service table says which backend each counter slot counts (the
// state file's backend map, ControlLoop's BackendMapWriter). Called on the
// main lcore, before the snapshot that uses a newly assigned slot is
// published, and after the one that no longer names a freed slot.
class BackendSlotSink {
  public:
    virtual ~BackendSlotSink() = default;
    // `slot` counts `backend` of service `service_id`; `fresh`: newly
    // assigned (its counts start now), else the same backend updated (weight,
    // address).
    virtual void slot_assigned(uint32_t slot, uint16_t service_id, const BackendInfo& backend, bool fresh) = 0;
    virtual void slot_freed(uint32_t slot) = 0;
};

// The main lcore's side. Not thread-safe: one owner. Workers use current().
class ServiceTable {
  public:
    // `backend_slots`: per-backend counter slots to hand out (0: none counted).
    explicit ServiceTable(uint32_t backend_slots = kDefaultBackendCapacity);
    ~ServiceTable();
    ServiceTable(const ServiceTable&) = delete;
    ServiceTable& operator=(const ServiceTable&) = delete;

    // `id` is the service's id in the state file's map (assigned by the
    // caller). Validates everything first (VIPs that another service holds,
    // table size prime, mode/port), then publishes; on error nothing changes.
    // A ServiceSet keeps the service's backends; a BackendSet keeps its
    // definition and rebuilds its Maglev table. A backend of weight 0 is
    // draining: kept in `backends` for its tracked flows, left out of Maglev.
    // A BackendSet gives each new backend a counter slot, keeps the slot of
    // one that stays (same id) and retires those of backends that left; a
    // removed service retires its backends' slots.
    ServiceApplyResult apply(uint16_t id, const ServiceSet& set);
    ServiceApplyResult apply(const BackendSet& set);
    ServiceApplyResult remove(std::string_view name);

    std::optional<uint16_t> id_of(std::string_view name) const;
    const Service* find_by_name(std::string_view name) const;

    // For workers: the snapshot to use for one burst (acquire).
    const ServiceSnapshot* current() const noexcept { return current_.load(std::memory_order_acquire); }
    // Frees retired snapshots no worker can still hold, and the counter
    // slots only they named.
    size_t reclaim(const Quiescence& quiescence);
    // Reports slot changes to `sink` from now on, while it lives (its owner
    // may go first: the state file's writer goes with its mapping), starting
    // with every slot assigned so far (as fresh).
    void set_backend_sink(std::weak_ptr<BackendSlotSink> sink);
    const BackendSlots& backend_slots() const noexcept { return slots_; }
    // Backends applied without a counter slot since start (all slots taken).
    uint64_t uncounted_backends() const noexcept { return uncounted_backends_; }
    size_t retired_count() const noexcept { return retired_.size(); }
    uint64_t generation() const noexcept { return generation_; }

  private:
    void publish(std::vector<std::shared_ptr<const Service>> by_id);
    std::atomic<const ServiceSnapshot*> current_{nullptr};
    std::unique_ptr<ServiceSnapshot> owned_current_;
    std::vector<std::unique_ptr<ServiceSnapshot>> retired_;
    std::map<uint16_t, uint32_t> table_sizes_;  // Maglev M per service id
    uint64_t generation_ = 0;
    BackendSlots slots_;
    std::weak_ptr<BackendSlotSink> sink_;
    uint64_t uncounted_backends_ = 0;
};

}  // namespace jitlb::lb
