// A worker lcore: polls its rx queues and runs the pipeline (pipeline.h) on
// each burst of mbufs, sends what the pipeline says, hands exception traffic
// and sampled denials to the main lcore through rings, and announces the
// service snapshot it is done with. The mbuf <-> PacketBuf adapter lives
// here, so tests drive a worker over net_ring ports without the binary.
// Nothing here locks, logs, allocates from the heap or makes a system call
// (mbufs come from a mempool; a PMD may make its own calls).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>

#include "counters.h"
#include "pipeline.h"
#include "service_table.h"
#include "shared_layout.h"

namespace jitlb::lb {

struct RxQueue {
    uint16_t port;
    uint16_t queue;
    // Software RSS (software_rss.h): the port has this one rx queue for all
    // workers, and its owner hands each frame to the worker its addresses pick.
    bool spread = false;
};

struct alignas(64) WorkerContext {
    unsigned index = 0;        // also the tx queue this worker uses on every port
    std::vector<RxQueue> queues;
    std::unique_ptr<Pipeline> pipeline;
    WorkerCounters* counters = nullptr;
    std::span<ServiceCounters> per_service;  // by service id, after counters in the stats lines
    std::span<BackendCounters> per_backend;  // by counter slot, after per_service
    rte_ring* exception_ring = nullptr;    // to the main lcore (SP/SC); nullptr: no exception port
    // From the main lcore, to send out by each mbuf's m->port (SP/SC): the
    // kernel's frames from the exception port and the resolvers' requests.
    rte_ring* from_kernel_ring = nullptr;
    rte_ring* denial_ring = nullptr;       // sampled denials to the main lcore (SP/SC, by value)
    rte_ring* resolver_ring = nullptr;     // ARP replies / NAs to the main lcore, m->port set (SP/SC); nullptr: none
    // The index of each port's PortIdentity in the pipeline's node, by port
    // id (a frame's m->port); ports not listed are index 0.
    std::array<uint8_t, RTE_MAX_ETHPORTS> port_index{};
    static_assert(RTE_MAX_ETHPORTS <= 256, "a port index fits in uint8_t");
    // Software RSS: the ring each worker takes handed-over frames from, by
    // worker index (multi-producer, single-consumer); empty when no port
    // needs it. This worker dequeues handoff[index].
    std::vector<rte_ring*> handoff;
    uint64_t rss_seed = 0;
    const ServiceTable* services = nullptr;
    Quiescence* quiescence = nullptr;
    const StateHeader* state_header = nullptr;  // the clock offset word
    rte_mempool* pool = nullptr;  // for the packets the pipeline makes (resets)
    const std::atomic<bool>* stop = nullptr;
    std::atomic<uint64_t> last_rx_tsc{0};
    ExtraPackets extra;  // spare mbufs lent to the pipeline
};

// One pass: every rx queue once, then the return ring; announces the service
// snapshot used. Returns the packets received.
unsigned worker_poll(WorkerContext& w) noexcept;
// rte_eal_remote_launch entry: polls until *w.stop, then goes offline.
int worker_main(void* arg);
// Software RSS: runs what is left in this worker's handoff ring through its
// pipeline (after every worker stopped, so no frame received is lost unjudged).
unsigned worker_drain_handoff(WorkerContext& w) noexcept;
// Frees the spare mbufs (after the worker stopped).
void worker_release(WorkerContext& w) noexcept;

}  // namespace jitlb::lb
