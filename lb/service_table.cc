// The data plane's services (service_table.h).
#include "service_table.h"

#include <arpa/inet.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <map>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "flow_hash.h"
#include "maglev.h"

namespace jitlb::lb {

uint64_t vip_hash(const VipKey& key) noexcept {
    uint8_t bytes[20];
    std::memcpy(bytes, key.address.data(), 16);
    bytes[16] = static_cast<uint8_t>(key.family);
    bytes[17] = key.protocol;
    bytes[18] = static_cast<uint8_t>(key.port >> 8);
    bytes[19] = static_cast<uint8_t>(key.port);
    return hash_bytes(bytes, 0x7669702d6d617021);  // "vip-map!"
}

uint64_t backend_id_hash(std::string_view id) noexcept {
    return hash_bytes({reinterpret_cast<const uint8_t*>(id.data()), id.size()}, 0x6261636b656e6421);
}

namespace {

VipKey key_of(const Vip& vip) {
    VipKey k;
    k.address = vip.address.bytes;
    k.family = vip.address.version;
    k.protocol = static_cast<uint8_t>(vip.protocol);
    k.port = vip.port;
    return k;
}

std::string describe_vip(const Vip& vip) {
    char text[INET6_ADDRSTRLEN] = "?";
    const bool v4 = vip.address.version == IpVersion::v4;
    inet_ntop(v4 ? AF_INET : AF_INET6, vip.address.bytes.data(), text, sizeof text);
    return fmt::format("{}{}{}:{}/{}", v4 ? "" : "[", text, v4 ? "" : "]", vip.port,
                       vip.protocol == L4Protocol::tcp ? "tcp" : "udp");
}

// One rule for both ways a service and its backends meet (a ServiceSet that
// keeps backends, a BackendSet that keeps the mode): L2 DSR needs every
// backend's MAC.
std::string check_backends_for_mode(std::string_view service, ForwardingMode mode,
                                    const std::vector<BackendInfo>& backends) {
    if (mode != ForwardingMode::l2dsr) return {};
    for (const BackendInfo& b : backends)
        if (b.mac == MacAddress{})
            return fmt::format("service {}: backend {} has no MAC (L2 DSR needs one; send a backend_set "
                               "with MACs first)",
                               service, b.id);
    return {};
}

ServiceApplyResult failure(CommandRejectReason reason, std::string text) {
    ServiceApplyResult r;
    r.ok = false;
    r.reason = reason;
    r.error = std::move(text);
    return r;
}

// Builds `service`'s Maglev table from its backends of weight > 0; "" or the
// error. Draining backends (weight 0) get no slot, so no new flow; with none
// left the table is empty and new flows are dropped (service_down).
std::string build_maglev(Service& service, uint32_t table_size) {
    service.maglev.clear();
    std::vector<MaglevBackend> mb;
    std::vector<uint32_t> list_index;  // mb[i] is service.backends[list_index[i]]
    for (uint32_t i = 0; i < service.backends.size(); ++i) {
        const BackendInfo& b = service.backends[i];
        if (b.weight == 0) continue;
        mb.push_back({b.id, b.weight});
        list_index.push_back(i);
    }
    if (mb.empty()) return {};
    std::vector<uint32_t> table(table_size);
    const MaglevError err = maglev_build(mb, table);
    if (err != MaglevError::ok) return maglev_error_message(err, mb, table_size);
    // maglev_build indexes `mb`; workers index `backends`.
    for (uint32_t& slot : table) slot = list_index[slot];
    service.maglev = std::move(table);
    return {};
}

}  // namespace

const Service* ServiceSnapshot::find(const VipKey& key) const noexcept {
    if (vip_slots_.empty()) return nullptr;
    for (uint64_t i = vip_hash(key) & vip_mask_;; i = (i + 1) & vip_mask_) {
        const VipSlot& s = vip_slots_[i];
        if (s.service == nullptr) return nullptr;
        if (s.key == key) return s.service;
    }
}

const Service* ServiceSnapshot::match(const VipKey& key, bool& three_tuple) const noexcept {
    three_tuple = key.port == 0;
    const Service* service = find(key);
    if (service != nullptr || key.port == 0 || !any_port_) return service;
    VipKey any = key;
    any.port = 0;
    three_tuple = true;
    return find(any);
}

bool ServiceSnapshot::is_vip_address(const IpAddress& address) const noexcept {
    return std::binary_search(vip_addresses_.begin(), vip_addresses_.end(), address,
                              [](const IpAddress& a, const IpAddress& b) {
                                  if (a.version != b.version) return a.version < b.version;
                                  return a.bytes < b.bytes;
                              });
}

bool ServiceSnapshot::answers_echo(IpVersion family, const uint8_t* address) const noexcept {
    if (echo_addresses_.empty()) return false;
    IpAddress a;
    a.version = family;
    std::memcpy(a.bytes.data(), address, family == IpVersion::v4 ? 4 : 16);
    return std::binary_search(echo_addresses_.begin(), echo_addresses_.end(), a,
                              [](const IpAddress& x, const IpAddress& y) {
                                  if (x.version != y.version) return x.version < y.version;
                                  return x.bytes < y.bytes;
                              });
}

Quiescence::Quiescence(size_t workers) : slots_(workers) {}

void Quiescence::announce(size_t w, uint64_t generation) noexcept {
    slots_[w].generation.store(generation, std::memory_order_release);
}

void Quiescence::go_offline(size_t w) noexcept {
    slots_[w].generation.store(std::numeric_limits<uint64_t>::max(), std::memory_order_release);
}

uint64_t Quiescence::oldest_in_use() const noexcept {
    uint64_t oldest = std::numeric_limits<uint64_t>::max();
    for (const Slot& s : slots_) oldest = std::min(oldest, s.generation.load(std::memory_order_acquire));
    return oldest;
}

ServiceTable::ServiceTable(uint32_t backend_slots) : slots_(backend_slots) { publish({}); }

ServiceTable::~ServiceTable() = default;

std::optional<uint16_t> ServiceTable::id_of(std::string_view name) const {
    const Service* s = find_by_name(name);
    if (s == nullptr) return std::nullopt;
    return s->id;
}

const Service* ServiceTable::find_by_name(std::string_view name) const {
    for (const auto& s : owned_current_->by_id_)
        if (s && s->name == name) return s.get();
    return nullptr;
}

ServiceApplyResult ServiceTable::apply(uint16_t id, const ServiceSet& set) {
    if (id == kNoService) return failure(CommandRejectReason::internal, "service id 0 is not an id");
    const MessageFault fault = check_message(Message{set});
    if (fault.error != MessageError::ok)
        return failure(CommandRejectReason::invalid_service,
                       fmt::format("service {}: {}", set.name, describe_message_fault(fault)));
    if (!is_prime(set.maglev_table_size))
        return failure(CommandRejectReason::invalid_service,
                       fmt::format("service {}: Maglev table size {} is not prime (use e.g. 65537)",
                                   set.name, set.maglev_table_size));
    const ServiceSnapshot& cur = *owned_current_;
    const Service* by_name = find_by_name(set.name);
    if (by_name != nullptr && by_name->id != id)
        return failure(CommandRejectReason::internal,
                       fmt::format("service {} already has id {}, not {}", set.name, by_name->id, id));
    const Service* old = cur.by_id(id);
    if (old != nullptr && old->name != set.name)
        return failure(CommandRejectReason::internal,
                       fmt::format("service id {} belongs to {}, not {}", id, old->name, set.name));
    // Every VIP free or already this service's, and none twice in the set.
    std::vector<VipKey> keys;
    for (const Vip& vip : set.vips) {
        const VipKey k = key_of(vip);
        if (std::find(keys.begin(), keys.end(), k) != keys.end())
            return failure(CommandRejectReason::invalid_service,
                           fmt::format("service {}: VIP {} listed twice", set.name, describe_vip(vip)));
        const Service* holder = cur.find(k);
        if (holder != nullptr && holder->id != id)
            return failure(CommandRejectReason::invalid_service,
                           fmt::format("service {}: VIP {} belongs to service {}", set.name,
                                       describe_vip(vip), holder->name));
        keys.push_back(k);
    }
    auto next = std::make_shared<Service>();
    next->id = id;
    next->name = set.name;
    next->mode = set.mode;
    next->gue_port = set.gue_port;
    next->flags = set.flags;
    next->vips = set.vips;
    next->generation = (old ? old->generation : 0) + 1;
    if (old != nullptr) {
        next->backends = old->backends;  // the Maglev table is rebuilt: its size may have changed
        if (std::string err = check_backends_for_mode(set.name, set.mode, next->backends); !err.empty())
            return failure(CommandRejectReason::invalid_service, err);
    }
    if (std::string err = build_maglev(*next, set.maglev_table_size); !err.empty())
        return failure(CommandRejectReason::invalid_service, fmt::format("service {}: {}", set.name, err));
    table_sizes_[id] = set.maglev_table_size;
    std::vector<std::shared_ptr<const Service>> by_id = cur.by_id_;
    if (by_id.size() <= id) by_id.resize(size_t{id} + 1);
    by_id[id] = std::move(next);
    publish(std::move(by_id));
    ServiceApplyResult r;
    r.ok = true;
    r.service_id = id;
    r.generation = owned_current_->by_id(id)->generation;
    return r;
}

ServiceApplyResult ServiceTable::apply(const BackendSet& set) {
    const MessageFault fault = check_message(Message{set});
    if (fault.error != MessageError::ok)
        return failure(CommandRejectReason::invalid_service,
                       fmt::format("backends of {}: {}", set.service, describe_message_fault(fault)));
    const Service* old = find_by_name(set.service);
    if (old == nullptr)
        return failure(CommandRejectReason::unknown_service,
                       fmt::format("backends for unknown service {} (send its service_set first)", set.service));
    // Weight 0 is not refused: it drains the backend (build_maglev).
    std::unordered_set<std::string> ids;
    for (const Backend& b : set.backends) {
        if (!ids.insert(b.id).second)
            return failure(CommandRejectReason::invalid_service,
                           fmt::format("backends of {}: id {} listed twice", set.service, b.id));
    }
    auto next = std::make_shared<Service>(*old);
    next->backends.clear();
    for (const Backend& b : set.backends)
        next->backends.push_back({b.id, b.address, b.mac, b.weight, backend_id_hash(b.id)});
    if (std::string err = check_backends_for_mode(set.service, old->mode, next->backends); !err.empty())
        return failure(CommandRejectReason::invalid_service, err);
    next->generation = old->generation + 1;
    if (std::string err = build_maglev(*next, table_sizes_[old->id]); !err.empty())
        return failure(CommandRejectReason::invalid_service, fmt::format("backends of {}: {}", set.service, err));
    const uint16_t id = old->id;
    // Counter slots, now that nothing can fail: a backend that stays keeps
    // its slot; a new one takes one, named before the snapshot goes out so
    // that its first packet counts after its baseline.
    const std::shared_ptr<BackendSlotSink> sink = sink_.lock();
    std::unordered_map<std::string_view, const BackendInfo*> before;
    for (const BackendInfo& b : old->backends) before.emplace(b.id, &b);
    for (BackendInfo& b : next->backends) {
        const auto it = before.find(b.id);
        const BackendInfo* kept = it == before.end() ? nullptr : it->second;
        if (kept != nullptr) before.erase(it);
        if (kept != nullptr && kept->counter_slot != kNoCounterSlot) {
            b.counter_slot = kept->counter_slot;
            if (sink && (kept->address != b.address || kept->weight != b.weight))
                sink->slot_assigned(b.counter_slot, id, b, false);
            continue;
        }
        b.counter_slot = slots_.take();
        if (b.counter_slot == kNoCounterSlot) ++uncounted_backends_;
        else if (sink) sink->slot_assigned(b.counter_slot, id, b, true);
    }
    std::vector<std::shared_ptr<const Service>> by_id = owned_current_->by_id_;
    by_id[id] = std::move(next);
    publish(std::move(by_id));
    // The backends that left: their slots retire with this snapshot.
    for (const auto& [name, b] : before) {
        if (b->counter_slot == kNoCounterSlot) continue;
        slots_.retire(b->counter_slot, generation_);
        if (sink) sink->slot_freed(b->counter_slot);
    }
    ServiceApplyResult r;
    r.ok = true;
    r.service_id = id;
    r.generation = owned_current_->by_id(id)->generation;
    return r;
}

ServiceApplyResult ServiceTable::remove(std::string_view name) {
    const Service* old = find_by_name(name);
    if (old == nullptr)
        return failure(CommandRejectReason::unknown_service, fmt::format("no service named {}", name));
    const uint16_t id = old->id;
    const std::shared_ptr<const Service> gone = owned_current_->by_id_[id];  // `old` lives on in it
    std::vector<std::shared_ptr<const Service>> by_id = owned_current_->by_id_;
    by_id[id].reset();
    table_sizes_.erase(id);
    publish(std::move(by_id));
    const std::shared_ptr<BackendSlotSink> sink = sink_.lock();
    for (const BackendInfo& b : gone->backends) {
        if (b.counter_slot == kNoCounterSlot) continue;
        slots_.retire(b.counter_slot, generation_);
        if (sink) sink->slot_freed(b.counter_slot);
    }
    ServiceApplyResult r;
    r.ok = true;
    r.service_id = id;
    return r;
}

void ServiceTable::publish(std::vector<std::shared_ptr<const Service>> by_id) {
    auto snap = std::make_unique<ServiceSnapshot>();
    snap->generation_ = ++generation_;
    size_t vip_count = 0;
    for (const auto& s : by_id)
        if (s) {
            ++snap->count_;
            vip_count += s->vips.size();
        }
    const size_t slots = std::bit_ceil(std::max<size_t>(16, vip_count * 2));
    snap->vip_slots_.resize(slots);
    snap->vip_mask_ = slots - 1;
    for (const auto& s : by_id) {
        if (!s) continue;
        for (const Vip& vip : s->vips) {
            const VipKey k = key_of(vip);
            uint64_t i = vip_hash(k) & snap->vip_mask_;
            while (snap->vip_slots_[i].service != nullptr) i = (i + 1) & snap->vip_mask_;
            snap->vip_slots_[i] = {k, s.get()};
            snap->any_port_ |= k.port == 0;
            snap->vip_addresses_.push_back(vip.address);
            if ((s->flags & kServiceFlagAnswerEcho) != 0 && (s->flags & kServiceFlagDisabled) == 0)
                snap->echo_addresses_.push_back(vip.address);
        }
    }
    auto less = [](const IpAddress& a, const IpAddress& b) {
        if (a.version != b.version) return a.version < b.version;
        return a.bytes < b.bytes;
    };
    std::sort(snap->vip_addresses_.begin(), snap->vip_addresses_.end(), less);
    snap->vip_addresses_.erase(std::unique(snap->vip_addresses_.begin(), snap->vip_addresses_.end()),
                               snap->vip_addresses_.end());
    std::sort(snap->echo_addresses_.begin(), snap->echo_addresses_.end(), less);
    snap->echo_addresses_.erase(std::unique(snap->echo_addresses_.begin(), snap->echo_addresses_.end()),
                                snap->echo_addresses_.end());
    snap->by_id_ = std::move(by_id);
    current_.store(snap.get(), std::memory_order_release);
    if (owned_current_) retired_.push_back(std::move(owned_current_));
    owned_current_ = std::move(snap);
}

void ServiceTable::set_backend_sink(std::weak_ptr<BackendSlotSink> sink_ref) {
    sink_ = std::move(sink_ref);
    const std::shared_ptr<BackendSlotSink> sink = sink_.lock();
    if (!sink) return;
    for (const auto& s : owned_current_->by_id_) {
        if (!s) continue;
        for (const BackendInfo& b : s->backends)
            if (b.counter_slot != kNoCounterSlot) sink->slot_assigned(b.counter_slot, s->id, b, true);
    }
}

size_t ServiceTable::reclaim(const Quiescence& quiescence) {
    // A worker that announced generation g loaded snapshot g after it was
    // published, so it holds nothing older; snapshots older than every
    // worker's announcement are free.
    const uint64_t oldest = quiescence.oldest_in_use();
    slots_.recycle(oldest);
    const size_t before = retired_.size();
    std::erase_if(retired_, [&](const std::unique_ptr<ServiceSnapshot>& s) { return s->generation_ < oldest; });
    return before - retired_.size();
}

}  // namespace jitlb::lb
