#include "region_link.h"

#include <fmt/format.h>

#include "grant_table.h"

namespace jitlb::control {

RegionLink::RegionLink(RegionLinkOptions options) : options_(std::move(options)) {
    const CmdSizes sizes{options_.cmd_ring_slots};
    own_file_ = SharedFile::create_or_open_own(options_.cmd_path,
                                               compute_cmd_layout(sizes).total_bytes, 0640);
    start_cmd_region(own_file_.mutable_bytes(), sizes, new_region_epoch(), own_);
    producer_ = RingProducer(own_.cmd_slots, kRingSlotBytes, own_.cmd_producer, nullptr);
}

void RegionLink::close_state() {
    producer_.set_peer(nullptr);
    consumer_ = RingConsumer();
    peer_.reset();
    peer_view_ = StateRegionView{};
}

void RegionLink::open_state() {
    try {
        SharedFile file = SharedFile::open_peer_readonly(options_.state_path, options_.jitlb_uid);
        const StateRegionView view =
            attach_state_region(file.bytes(), options_.state_path, GrantTable::format_hash());
        peer_ = std::move(file);
        peer_view_ = view;
        producer_.set_peer(peer_view_.cmd_consumer);
        consumer_ = RingConsumer(peer_view_.event_slots, kRingSlotBytes, peer_view_.event_producer,
                                 own_.event_consumer);
        event_buffer_.assign(consumer_.max_record_bytes(), 0);
        status_.problem.clear();
    } catch (const RegionError& e) {
        close_state();
        status_.problem = e.what();
    }
}

PeerStatus RegionLink::poll() {
    const auto now = static_cast<int64_t>(unix_now_ms());
    if (peer_ && now - last_replace_check_ms_ >= 1000) {
        last_replace_check_ms_ = now;
        if (peer_->replaced_on_disk()) close_state();
    }
    if (!peer_) open_state();
    status_.state_open = peer_.has_value();
    status_.epoch_changed = false;
    if (peer_) {
        const RegionHeader& header = peer_view_.header->region;
        status_.epoch = read_epoch(header);
        status_.heartbeat_unix_ms = read_heartbeat(*peer_view_.header);
        status_.writer_pid = header.writer_pid;
        if (status_.epoch != 0 && status_.epoch != seen_epoch_) {
            seen_epoch_ = status_.epoch;
            status_.epoch_changed = true;
        }
    }
    return status_;
}

bool RegionLink::attached() const noexcept {
    return peer_.has_value() && producer_.attached();
}

SendResult RegionLink::send(const Message& message) {
    if (!peer_) {
        SendResult result;
        result.ring.error = RingError::not_attached;
        return result;
    }
    return push_message(producer_, message);
}

size_t RegionLink::drain_events(size_t max,
                                const std::function<void(const DecodedMessage&)>& on_event,
                                const std::function<void(const std::string&)>& on_bad) {
    if (!peer_) return 0;
    size_t n = 0;
    while (n < max) {
        DecodedMessage decoded;
        const ReceiveResult got = pop_message(consumer_, Direction::event, event_buffer_, decoded);
        if (got.status == ReceiveStatus::empty) break;
        if (got.status == ReceiveStatus::ring_corrupt) {
            on_bad(fmt::format("{}: event ring: {}; re-opening the state file",
                               options_.state_path, describe_ring_fault(consumer_.fault())));
            close_state();
            break;
        }
        ++n;
        if (got.status == ReceiveStatus::rejected) {
            on_bad(fmt::format("event {} (type {:#06x}) does not decode: {}", got.sequence,
                               got.type, describe_message_fault(got.fault)));
            continue;
        }
        on_event(decoded);
    }
    return n;
}

uint32_t RegionLink::service_id(std::string_view name) const {
    if (!peer_) return 0;
    uint32_t id = 0;
    service_map_find(peer_view_.services, name, id);
    return id;
}

}  // namespace jitlb::control
