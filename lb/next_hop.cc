// Next-hop MAC resolution (next_hop.h).
#include "next_hop.h"

namespace jitlb::lb {

NextHopResolver::NextHopResolver(const IpAddress& next_hop, const IpAddress& source, const MacAddress& own_mac,
                                 NextHopTiming timing) noexcept
    : next_hop_(next_hop), source_(source), own_mac_(own_mac), timing_(timing) {}

size_t NextHopResolver::write_request(int64_t now_ms, std::span<uint8_t> out) noexcept {
    // The first request after a reply checks the known MAC (unicast); if it
    // goes unanswered, the next ones ask everyone, in case the router moved.
    const MacAddress known = mac();
    const MacAddress* unicast = resolved() && outstanding_since_ms_ < 0 ? &known : nullptr;
    const size_t n = next_hop_.version == IpVersion::v4
                         ? write_arp_request(out, own_mac_, source_, next_hop_, unicast)
                         : write_neighbour_solicitation(out, own_mac_, source_, next_hop_, unicast);
    if (n == 0) return 0;
    if (outstanding_since_ms_ < 0) outstanding_since_ms_ = now_ms;
    next_request_ms_ = now_ms + timing_.retry_ms;
    ++stats_.requests_sent;
    return n;
}

NextHopResolver::Verdict NextHopResolver::on_reply(const NeighbourReply& reply, int64_t now_ms) noexcept {
    // Only the configured next hop may say where it is: a reply from anyone
    // else on the segment could otherwise steer every encapsulated packet.
    if (reply.sender != next_hop_ || (!reply.has_mac && !resolved())) {
        ++stats_.replies_ignored;
        return Verdict::ignored;
    }
    ++stats_.replies_accepted;
    Verdict verdict = Verdict::confirmed;
    if (reply.has_mac) {
        const uint64_t word = next_hop_word(reply.mac);
        if (!resolved()) {
            verdict = Verdict::learned;
        } else if (word != word_) {
            verdict = Verdict::changed;
            ++stats_.mac_changes;
        }
        word_ = word;
    }
    outstanding_since_ms_ = -1;
    unanswered_reported_ = false;
    next_request_ms_ = now_ms + timing_.refresh_ms;
    return verdict;
}

bool NextHopResolver::check_unanswered(int64_t now_ms) noexcept {
    if (outstanding_since_ms_ < 0 || unanswered_reported_ || now_ms - outstanding_since_ms_ < timing_.unanswered_after_ms)
        return false;
    unanswered_reported_ = true;
    ++stats_.unanswered;
    return true;
}

bool NextHopSet::add(const IpAddress& next_hop, const IpAddress& source) {
    if (next_hop.version == IpVersion::none || next_hop.version != source.version || of(next_hop.version) != nullptr)
        return false;
    resolvers_.emplace_back(next_hop, source, own_mac_, timing_);
    return true;
}

const NextHopResolver* NextHopSet::of(IpVersion v) const noexcept {
    for (const NextHopResolver& r : resolvers_)
        if (r.next_hop().version == v) return &r;
    return nullptr;
}

NextHopSet::FrameResult NextHopSet::on_frame(std::span<const uint8_t> frame, int64_t now_ms) noexcept {
    FrameResult result;
    NeighbourReply reply;
    result.kind = parse_neighbour_reply(frame, reply);
    if (result.kind == NeighbourFrame::malformed) {
        ++malformed_;
        return result;
    }
    if (result.kind == NeighbourFrame::other) return result;
    for (NextHopResolver& r : resolvers_) {
        if (r.next_hop().version != reply.sender.version) continue;
        result.verdict = r.on_reply(reply, now_ms);
        if (result.verdict != NextHopResolver::Verdict::ignored) result.resolver = &r;
        return result;
    }
    ++ignored_;
    return result;
}

uint64_t NextHopSet::word_v4() const noexcept {
    const NextHopResolver* r = of(IpVersion::v4);
    if (r == nullptr) r = of(IpVersion::v6);
    return r != nullptr ? r->word() : 0;
}

uint64_t NextHopSet::word_v6() const noexcept {
    const NextHopResolver* r = of(IpVersion::v6);
    if (r == nullptr) r = of(IpVersion::v4);
    return r != nullptr ? r->word() : 0;
}

size_t NextHopSet::resolved_count() const noexcept {
    size_t n = 0;
    for (const NextHopResolver& r : resolvers_) n += r.resolved() ? 1 : 0;
    return n;
}

NextHopStats NextHopSet::totals() const noexcept {
    NextHopStats t;
    for (const NextHopResolver& r : resolvers_) {
        const NextHopStats& s = r.stats();
        t.requests_sent += s.requests_sent;
        t.replies_accepted += s.replies_accepted;
        t.replies_ignored += s.replies_ignored;
        t.mac_changes += s.mac_changes;
        t.unanswered += s.unanswered;
    }
    t.replies_ignored += ignored_;
    return t;
}

}  // namespace jitlb::lb
