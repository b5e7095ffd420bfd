// The worker lcore (worker.h).
#include "worker.h"

#include <rte_cycles.h>
#include <rte_ethdev.h>
#include <rte_ring_elem.h>

#include <type_traits>

#include "software_rss.h"

namespace jitlb::lb {

namespace {

constexpr size_t kExtra = ExtraPackets{}.bufs.size();

// Keeps `extra` full of empty mbufs (allocation from a mempool: no system call).
void refill_extra(ExtraPackets& extra, rte_mempool* pool) noexcept {
    while (extra.available < extra.bufs.size()) {
        rte_mbuf* m = rte_pktmbuf_alloc(pool);
        if (m == nullptr) return;
        extra.handles[extra.available] = m;
        extra.bufs[extra.available] = {rte_pktmbuf_mtod(m, uint8_t*), 0, rte_pktmbuf_headroom(m),
                                       rte_pktmbuf_tailroom(m)};
        ++extra.available;
    }
}

void set_mbuf(rte_mbuf* m, const PacketBuf& b) noexcept {
    m->data_off = static_cast<uint16_t>(b.data - static_cast<uint8_t*>(m->buf_addr));
    m->data_len = static_cast<uint16_t>(b.len);
    m->pkt_len = b.len;
}

// Sends `n` mbufs on (port, queue); what the ring does not take is freed and counted.
void send(WorkerCounters& c, uint16_t port, uint16_t queue, rte_mbuf** tx, uint16_t n) noexcept {
    if (n == 0) return;
    uint64_t bytes = 0;
    for (uint16_t i = 0; i < n; ++i) bytes += tx[i]->pkt_len;  // before tx may free them
    const uint16_t sent = rte_eth_tx_burst(port, queue, tx, n);
    for (uint16_t i = sent; i < n; ++i) bytes -= tx[i]->pkt_len;
    c.add(Counter::tx_packets, sent);
    c.add(Counter::tx_bytes, bytes);
    if (sent < n) {
        c.add(Counter::drop_tx_full, static_cast<uint64_t>(n - sent));
        rte_pktmbuf_free_bulk(tx + sent, n - sent);
    }
}

void process_rx(WorkerContext& w, const ServiceSnapshot& snap, uint16_t port, rte_mbuf** mbufs, uint16_t n) noexcept {
    PacketBuf bufs[kBurst];
    Action actions[kBurst];
    rte_mbuf* tx[kBurst + kExtra];
    rte_mbuf* drop[kBurst];
    // The clock after rx: a burst is judged by the time it arrived.
    const uint64_t tsc = rte_rdtsc();
    const uint64_t now = tsc + static_cast<uint64_t>(read_clock_offset(*w.state_header));
    w.last_rx_tsc.store(tsc, std::memory_order_relaxed);
    uint16_t n_ok = 0, n_tx = 0, n_drop = 0;
    for (uint16_t i = 0; i < n; ++i) {
        rte_mbuf* m = mbufs[i];
        if (m->nb_segs != 1) {  // frames larger than one mbuf: jitlb does not chain
            w.counters->add(Counter::rx_packets);
            w.counters->add(Counter::rx_bytes, m->pkt_len);
            w.counters->add(Counter::drop_multi_segment);
            drop[n_drop++] = m;
            continue;
        }
        mbufs[n_ok] = m;
        bufs[n_ok] = {rte_pktmbuf_mtod(m, uint8_t*), m->data_len, rte_pktmbuf_headroom(m), rte_pktmbuf_tailroom(m)};
        ++n_ok;
    }
    w.pipeline->process_burst({bufs, n_ok}, snap, now, {actions, n_ok}, &w.extra, w.port_index[port]);
    if (const auto samples = w.pipeline->denial_samples(); !samples.empty())
        w.counters->add(Counter::denial_samples_lost,
                        samples.size() - rte_ring_sp_enqueue_burst_elem(w.denial_ring, samples.data(),
                                                                       sizeof(DenialSample),
                                                                       static_cast<unsigned>(samples.size()), nullptr));
    for (uint16_t i = 0; i < n_ok; ++i) {
        rte_mbuf* m = mbufs[i];
        switch (actions[i]) {
            case Action::transmit:
                set_mbuf(m, bufs[i]);
                tx[n_tx++] = m;
                break;
            case Action::exception:
                if (w.exception_ring == nullptr || rte_ring_sp_enqueue(w.exception_ring, m) != 0) {
                    w.counters->add(Counter::drop_exception_full);
                    drop[n_drop++] = m;
                }
                break;
            case Action::resolver:
                m->port = port;  // the main lcore gives it to that port's resolver; not every PMD sets it
                if (w.resolver_ring == nullptr || rte_ring_sp_enqueue(w.resolver_ring, m) != 0) {
                    w.counters->add(Counter::drop_resolver_full);
                    drop[n_drop++] = m;
                }
                break;
            case Action::drop:
                drop[n_drop++] = m;
                break;
        }
    }
    // Packets the pipeline made (resets towards backends) go after the burst's own.
    ExtraPackets& extra = w.extra;
    if (extra.used > 0) {
        for (size_t j = 0; j < extra.used; ++j) {
            auto* m = static_cast<rte_mbuf*>(extra.handles[j]);
            set_mbuf(m, extra.bufs[j]);
            tx[n_tx++] = m;
        }
        for (size_t j = extra.used; j < extra.available; ++j) {
            extra.handles[j - extra.used] = extra.handles[j];
            extra.bufs[j - extra.used] = extra.bufs[j];
        }
        extra.available -= extra.used;
        extra.used = 0;
        refill_extra(extra, w.pool);
    }
    send(*w.counters, port, static_cast<uint16_t>(w.index), tx, n_tx);
    if (n_drop > 0) rte_pktmbuf_free_bulk(drop, n_drop);
}

// Software RSS, on the worker that owns a spread queue: keeps its own share of
// the burst in place at the front of `mbufs` and returns how many; hands every
// other frame to the worker its addresses pick. A frame that worker's ring
// does not take is received and dropped here: counted rx and
// rss_handoff_full, freed.
uint16_t spread(WorkerContext& w, uint16_t port, rte_mbuf** mbufs, uint16_t n) noexcept {
    const auto workers = static_cast<unsigned>(w.handoff.size());
    rte_mbuf* away[kBurst];
    uint8_t target[kBurst];
    uint64_t others = 0;  // bit per worker that gets frames of this burst
    uint16_t kept = 0, handed = 0;
    for (uint16_t i = 0; i < n; ++i) {
        rte_mbuf* m = mbufs[i];
        const std::optional<uint64_t> h =
            software_rss_hash({rte_pktmbuf_mtod(m, const uint8_t*), m->data_len}, w.rss_seed);
        const unsigned t = h ? software_rss_worker(*h, workers) : w.index;
        if (t == w.index) {
            mbufs[kept++] = m;
            continue;
        }
        m->port = port;  // the receiver sends by m->port; not every PMD sets it
        away[handed] = m;
        target[handed++] = static_cast<uint8_t>(t);
        others |= uint64_t{1} << t;
    }
    rte_mbuf* batch[kBurst];
    rte_mbuf* refused[kBurst];
    unsigned n_refused = 0;
    while (others != 0) {
        const auto t = static_cast<unsigned>(__builtin_ctzll(others));
        others &= others - 1;
        unsigned count = 0;
        for (uint16_t j = 0; j < handed; ++j)
            if (target[j] == t) batch[count++] = away[j];
        const unsigned queued = rte_ring_mp_enqueue_burst(w.handoff[t], reinterpret_cast<void**>(batch), count, nullptr);
        w.counters->add(Counter::rss_handoffs, queued);
        for (unsigned j = queued; j < count; ++j) refused[n_refused++] = batch[j];
    }
    if (n_refused > 0) {
        for (unsigned j = 0; j < n_refused; ++j) w.counters->add(Counter::rx_bytes, refused[j]->pkt_len);
        w.counters->add(Counter::rx_packets, n_refused);
        w.counters->add(Counter::drop_rss_handoff_full, n_refused);
        rte_pktmbuf_free_bulk(refused, n_refused);
    }
    return kept;
}

// Frames other workers' spread queues handed over: one burst, in runs of one port.
unsigned take_handoff(WorkerContext& w, const ServiceSnapshot& snap) noexcept {
    rte_mbuf* mbufs[kBurst];
    const unsigned n = rte_ring_sc_dequeue_burst(w.handoff[w.index], reinterpret_cast<void**>(mbufs), kBurst, nullptr);
    for (unsigned first = 0, end; first < n; first = end) {
        for (end = first + 1; end < n && mbufs[end]->port == mbufs[first]->port;) ++end;
        process_rx(w, snap, mbufs[first]->port, mbufs + first, static_cast<uint16_t>(end - first));
    }
    return n;
}

}  // namespace

unsigned worker_drain_handoff(WorkerContext& w) noexcept {
    if (w.handoff.empty()) return 0;
    unsigned total = 0;
    while (const unsigned n = take_handoff(w, *w.services->current())) total += n;
    return total;
}

unsigned worker_poll(WorkerContext& w) noexcept {
    if (w.extra.available < w.extra.bufs.size()) refill_extra(w.extra, w.pool);
    const ServiceSnapshot* snap = w.services->current();
    rte_mbuf* mbufs[kBurst];
    unsigned received = 0;
    // Busy cycles: from before the first rx to after the last tx of a poll
    // that received something (testpmd's --record-core-cycles, per poll).
    const uint64_t start = rte_rdtsc();
    for (const RxQueue& q : w.queues) {
        uint16_t n = rte_eth_rx_burst(q.port, q.queue, mbufs, kBurst);
        if (n == 0) continue;
        received += n;
        if (q.spread) n = spread(w, q.port, mbufs, n);
        if (n > 0) process_rx(w, *snap, q.port, mbufs, n);
    }
    if (!w.handoff.empty()) received += take_handoff(w, *snap);
    if (w.from_kernel_ring != nullptr) {
        // What the kernel sent through the exception port and the resolvers'
        // requests, on this worker's tx queue, in runs of one port (m->port).
        const unsigned n = rte_ring_sc_dequeue_burst(w.from_kernel_ring, reinterpret_cast<void**>(mbufs), kBurst, nullptr);
        for (unsigned first = 0, end; first < n; first = end) {
            for (end = first + 1; end < n && mbufs[end]->port == mbufs[first]->port;) ++end;
            send(*w.counters, mbufs[first]->port, static_cast<uint16_t>(w.index), mbufs + first,
                 static_cast<uint16_t>(end - first));
        }
    }
    if (received > 0) {
        w.counters->add(Counter::busy_cycles, rte_rdtsc() - start);
        w.counters->add(Counter::busy_polls);
    }
    w.quiescence->announce(w.index, snap->generation());
    return received;
}

int worker_main(void* arg) {
    WorkerContext& w = *static_cast<WorkerContext*>(arg);
    while (!w.stop->load(std::memory_order_relaxed)) worker_poll(w);
    w.quiescence->go_offline(w.index);
    return 0;
}

void worker_release(WorkerContext& w) noexcept {
    for (size_t j = 0; j < w.extra.available; ++j) rte_pktmbuf_free(static_cast<rte_mbuf*>(w.extra.handles[j]));
    w.extra.available = 0;
}

}  // namespace jitlb::lb
