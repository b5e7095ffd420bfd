// jitd's end of the shared region (docs/shared-region.md): it owns the cmd
// file (the command ring's producer side and the event ring's consumer index)
// and maps jitlb's state file read-only, re-opening it when jitlb re-creates
// it. jitd is one long-lived process, so it starts a new command-ring epoch
// at each start; jitlb keeps what it has across that (commands are
// idempotent) and jitd re-pushes what jitlb lacks.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "messages.h"
#include "shared_file.h"
#include "shared_layout.h"
#include "spsc_ring.h"

namespace jitlb::control {

struct RegionLinkOptions {
    std::string cmd_path;    // ours: created 0640
    std::string state_path;  // jitlb's
    uid_t jitlb_uid = 0;     // the state file's expected owner
    uint32_t cmd_ring_slots = kDefaultCmdRingSlots;
};

// What poll() found about jitlb.
struct PeerStatus {
    bool state_open = false;   // the state file is mapped and sound
    bool epoch_changed = false;  // jitlb (re)started since the last poll: reconcile
    uint64_t epoch = 0;
    uint64_t heartbeat_unix_ms = 0;
    uint32_t writer_pid = 0;
    std::string problem;  // why the state file is not open ("" when it is)
};

class RegionLink {
  public:
    // Creates or re-uses our cmd file and starts a new command-ring epoch.
    // Throws RegionError.
    explicit RegionLink(RegionLinkOptions options);

    // Every jitd tick (10 ms): (re)open the state file when it is missing or
    // was re-created (checked at most once a second), and notice a new jitlb
    // epoch.
    PeerStatus poll();
    const PeerStatus& status() const noexcept { return status_; }

    // jitlb has attached to our current command-ring epoch: pushes land.
    bool attached() const noexcept;
    // Checks and encodes the message into the command ring.
    SendResult send(const Message& message);
    // Pops at most `max` events; each decoded event goes to `on_event`, each
    // record jitlb wrote that does not decode to `on_bad` (with the why).
    size_t drain_events(size_t max, const std::function<void(const DecodedMessage&)>& on_event,
                        const std::function<void(const std::string&)>& on_bad);

    // The state file's service map: id of a service name, 0 if absent.
    uint32_t service_id(std::string_view name) const;
    const StateRegionView* state() const noexcept { return peer_ ? &peer_view_ : nullptr; }
    uint64_t cmd_epoch() const noexcept { return producer_.epoch(); }
    const std::string& cmd_path() const noexcept { return options_.cmd_path; }

  private:
    void open_state();
    void close_state();

    RegionLinkOptions options_;
    SharedFile own_file_;
    CmdRegion own_;
    RingProducer producer_;
    std::optional<SharedFile> peer_;
    StateRegionView peer_view_;
    RingConsumer consumer_;
    std::vector<uint8_t> event_buffer_;
    uint64_t seen_epoch_ = 0;
    PeerStatus status_;
    int64_t last_replace_check_ms_ = 0;
};

}  // namespace jitlb::control
