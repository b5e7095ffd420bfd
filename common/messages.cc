// Encoder and strict decoder of the ring messages (docs/shared-region.md,
// "Messages"). One routine per type writes and checks (the encoder and
// check_message share it, so their rules cannot drift apart), and one reads;
// every read checks what remains first.
#include "messages.h"

#include <cstring>
#include <type_traits>

#include <fmt/format.h>

namespace jitlb {
namespace {

constexpr uint32_t kHeaderBytes = sizeof(RecordHeader);

struct TypeSpec {
    MessageType type;
    Direction direction;
    std::string_view name;
};

constexpr TypeSpec kTypes[] = {
    {MessageType::grant_push, Direction::command, "grant_push"},
    {MessageType::revoke, Direction::command, "revoke"},
    {MessageType::service_set, Direction::command, "service_set"},
    {MessageType::backend_set, Direction::command, "backend_set"},
    {MessageType::key_reload, Direction::command, "key_reload"},
    {MessageType::service_delete, Direction::command, "service_delete"},
    {MessageType::grant_activated, Direction::event, "grant_activated"},
    {MessageType::grant_rejected, Direction::event, "grant_rejected"},
    {MessageType::grant_revoked, Direction::event, "grant_revoked"},
    {MessageType::grant_expired, Direction::event, "grant_expired"},
    {MessageType::denial_sample, Direction::event, "denial_sample"},
    {MessageType::service_applied, Direction::event, "service_applied"},
    {MessageType::command_rejected, Direction::event, "command_rejected"},
    {MessageType::keys_reloaded, Direction::event, "keys_reloaded"},
};

const TypeSpec* find_type(uint16_t type) noexcept {
    for (const TypeSpec& spec : kTypes) {
        if (static_cast<uint16_t>(spec.type) == type) return &spec;
    }
    return nullptr;
}

// The largest value of each enum: values 1..max are valid.
constexpr uint16_t kMaxForwardingMode = static_cast<uint16_t>(ForwardingMode::l2dsr);
constexpr uint16_t kMaxRevokeReason = static_cast<uint16_t>(RevokeReason::issuer_key_removed);
constexpr uint16_t kMaxGrantRejectReason = static_cast<uint16_t>(GrantRejectReason::backlog_full);
constexpr uint16_t kMaxDenialReason = static_cast<uint16_t>(DenialReason::flow_reset);
constexpr uint16_t kMaxCommandRejectReason = static_cast<uint16_t>(CommandRejectReason::internal);

bool known_protocol(uint8_t p) noexcept {
    return p == static_cast<uint8_t>(L4Protocol::tcp) || p == static_cast<uint8_t>(L4Protocol::udp);
}

// Alphabets.
bool service_name_char(uint8_t c) noexcept {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}
bool backend_id_char(uint8_t c) noexcept {
    return c >= 0x21 && c <= 0x7e;
}
bool text_char(uint8_t c) noexcept {
    return c >= 0x20 && c <= 0x7e;
}

struct StringRule {
    size_t min;
    size_t max;
    bool (*allowed)(uint8_t) noexcept;
};
constexpr StringRule kServiceNameRule{1, kMaxServiceNameLen, service_name_char};
constexpr StringRule kBackendIdRule{1, kMaxBackendIdLen, backend_id_char};
constexpr StringRule kTextRule{0, kMaxTextLen, text_char};

MessageFault make_fault(MessageError error, size_t offset, const char* field, uint64_t value) {
    return {error, static_cast<uint32_t>(offset), field, value};
}

// Little-endian output into a span, or only counting (empty span).
class Writer {
  public:
    Writer() = default;  // counts
    explicit Writer(std::span<uint8_t> out) : out_(out.data()), counting_(false) {}

    // Offset in the message, header included (for faults).
    size_t offset() const noexcept { return kHeaderBytes + pos_; }
    size_t size() const noexcept { return pos_; }

    void u8(uint8_t v) noexcept { put(v, 1); }
    void u16(uint16_t v) noexcept { put(v, 2); }
    void u32(uint32_t v) noexcept { put(v, 4); }
    void u64(uint64_t v) noexcept { put(v, 8); }
    void bytes(const void* data, size_t n) noexcept {
        if (!counting_ && n != 0) std::memcpy(out_ + pos_, data, n);
        pos_ += n;
    }

  private:
    void put(uint64_t v, size_t n) noexcept {
        if (!counting_) {
            for (size_t i = 0; i < n; ++i) out_[pos_ + i] = static_cast<uint8_t>(v >> (8 * i));
        }
        pos_ += n;
    }

    uint8_t* out_ = nullptr;
    bool counting_ = true;
    size_t pos_ = 0;
};

// Little-endian input that records the first fault.
class Reader {
  public:
    explicit Reader(std::span<const uint8_t> in) : in_(in) {}

    size_t offset() const noexcept { return kHeaderBytes + pos_; }
    size_t remaining() const noexcept { return in_.size() - pos_; }
    const MessageFault& fault() const noexcept { return fault_; }
    bool ok() const noexcept { return fault_.ok(); }

    bool fail(MessageError error, const char* field, uint64_t value, size_t offset) noexcept {
        if (fault_.ok()) fault_ = make_fault(error, offset, field, value);
        return false;
    }

    template <class T>
    bool get(T& v, const char* field) noexcept {
        static_assert(std::is_unsigned_v<T>);
        if (!ok()) return false;
        if (remaining() < sizeof(T))
            return fail(MessageError::truncated, field, sizeof(T), offset());
        uint64_t x = 0;
        for (size_t i = 0; i < sizeof(T); ++i) x |= uint64_t{in_[pos_ + i]} << (8 * i);
        pos_ += sizeof(T);
        v = static_cast<T>(x);
        return true;
    }

    bool bytes(void* out, size_t n, const char* field) noexcept {
        if (!ok()) return false;
        if (remaining() < n) return fail(MessageError::truncated, field, n, offset());
        if (n != 0) std::memcpy(out, in_.data() + pos_, n);
        pos_ += n;
        return true;
    }

    // A str8 under `rule`.
    bool string(std::string& out, const StringRule& rule, const char* field) noexcept {
        uint8_t n = 0;
        const size_t at = offset();
        if (!get(n, field)) return false;
        if (n < rule.min || n > rule.max) return fail(MessageError::string_length, field, n, at);
        if (remaining() < n) return fail(MessageError::truncated, field, n, offset());
        const uint8_t* p = in_.data() + pos_;
        for (size_t i = 0; i < n; ++i) {
            if (!rule.allowed(p[i])) {
                return fail(MessageError::string_alphabet, field, p[i], offset() + i);
            }
        }
        out.assign(reinterpret_cast<const char*>(p), n);
        pos_ += n;
        return true;
    }

    // 16 address bytes of `family`: IPv4 leaves bytes 4..15 zero.
    bool address_bytes(IpVersion family, std::array<uint8_t, 16>& out, const char* field) noexcept {
        const size_t at = offset();
        if (!bytes(out.data(), out.size(), field)) return false;
        if (family == IpVersion::v4) {
            for (size_t i = 4; i < 16; ++i) {
                if (out[i] != 0) return fail(MessageError::nonzero_padding, field, out[i], at + i);
            }
        }
        return true;
    }

    bool family(IpVersion& out, const char* field) noexcept {
        uint8_t f = 0;
        const size_t at = offset();
        if (!get(f, field)) return false;
        if (f != 4 && f != 6) return fail(MessageError::bad_family, field, f, at);
        out = static_cast<IpVersion>(f);
        return true;
    }

    bool address(IpAddress& out, const char* field) noexcept {
        return family(out.version, field) && address_bytes(out.version, out.bytes, field);
    }

    template <class E>
    bool enumeration(E& out, uint16_t max, const char* field) noexcept {
        std::underlying_type_t<E> v = 0;
        const size_t at = offset();
        if (!get(v, field)) return false;
        if (v < 1 || v > max) return fail(MessageError::bad_enum, field, v, at);
        out = static_cast<E>(v);
        return true;
    }

    bool grant_id(GrantId& id, const char* field) noexcept {
        return bytes(id.data(), id.size(), field);
    }

  private:
    std::span<const uint8_t> in_;
    size_t pos_ = 0;
    MessageFault fault_{};
};

// --- writing with checks -------------------------------------------------------------

MessageFault put_string(Writer& w, const std::string& s, const StringRule& rule,
                        const char* field) {
    if (s.size() < rule.min || s.size() > rule.max) {
        return make_fault(MessageError::string_length, w.offset(), field, s.size());
    }
    for (size_t i = 0; i < s.size(); ++i) {
        const auto c = static_cast<uint8_t>(s[i]);
        if (!rule.allowed(c)) {
            return make_fault(MessageError::string_alphabet, w.offset() + 1 + i, field, c);
        }
    }
    w.u8(static_cast<uint8_t>(s.size()));
    w.bytes(s.data(), s.size());
    return {};
}

MessageFault put_family(Writer& w, IpVersion family, const char* field) {
    const auto f = static_cast<uint8_t>(family);
    if (f != 4 && f != 6) return make_fault(MessageError::bad_family, w.offset(), field, f);
    w.u8(f);
    return {};
}

MessageFault put_address_bytes(Writer& w, IpVersion family, const std::array<uint8_t, 16>& b,
                               const char* field) {
    if (family == IpVersion::v4) {
        for (size_t i = 4; i < 16; ++i) {
            if (b[i] != 0) {
                return make_fault(MessageError::nonzero_padding, w.offset() + i, field, b[i]);
            }
        }
    }
    w.bytes(b.data(), b.size());
    return {};
}

MessageFault put_address(Writer& w, const IpAddress& a, const char* field) {
    if (MessageFault f = put_family(w, a.version, field); !f.ok()) return f;
    return put_address_bytes(w, a.version, a.bytes, field);
}

template <class E>
MessageFault put_enum(Writer& w, E value, uint16_t max, const char* field) {
    const auto v = static_cast<std::underlying_type_t<E>>(value);
    if (v < 1 || v > max) return make_fault(MessageError::bad_enum, w.offset(), field, v);
    if constexpr (sizeof(v) == 1) {
        w.u8(v);
    } else {
        w.u16(v);
    }
    return {};
}

#define JITLB_TRY(expr)                  \
    do {                                 \
        MessageFault fault_ = (expr);    \
        if (!fault_.ok()) return fault_; \
    } while (0)

MessageFault put(Writer& w, const GrantPush& m) {
    w.u64(m.push_sequence);
    if (m.grant.empty() || m.grant.size() > kMaxGrantBytes) {
        return make_fault(MessageError::count_limit, w.offset(), "grant_push.grant_length",
                          m.grant.size());
    }
    w.u16(static_cast<uint16_t>(m.grant.size()));
    w.bytes(m.grant.data(), m.grant.size());
    return {};
}

MessageFault put(Writer& w, const Revoke& m) {
    w.bytes(m.grant_id.data(), m.grant_id.size());
    w.u64(m.not_after_ms);
    return put_enum(w, m.reason, kMaxRevokeReason, "revoke.reason");
}

MessageFault put(Writer& w, const ServiceSet& m) {
    JITLB_TRY(put_string(w, m.name, kServiceNameRule, "service_set.name"));
    JITLB_TRY(put_enum(w, m.mode, kMaxForwardingMode, "service_set.mode"));
    if ((m.gue_port != 0) != (m.mode == ForwardingMode::gue)) {
        return make_fault(MessageError::bad_value, w.offset(), "service_set.gue_port", m.gue_port);
    }
    w.u16(m.gue_port);
    if (m.maglev_table_size < kMinMaglevTableSize || m.maglev_table_size > kMaxMaglevTableSize) {
        return make_fault(MessageError::bad_value, w.offset(), "service_set.maglev_table_size",
                          m.maglev_table_size);
    }
    w.u32(m.maglev_table_size);
    if ((m.flags & ~kServiceFlagsKnown) != 0) {
        return make_fault(MessageError::bad_flags, w.offset(), "service_set.flags", m.flags);
    }
    w.u32(m.flags);
    if (m.vips.empty() || m.vips.size() > kMaxVips) {
        return make_fault(MessageError::count_limit, w.offset(), "service_set.vip_count",
                          m.vips.size());
    }
    w.u8(static_cast<uint8_t>(m.vips.size()));
    for (const Vip& vip : m.vips) {
        JITLB_TRY(put_address(w, vip.address, "service_set.vip.address"));
        w.u16(vip.port);  // 0: no port, the 3-tuple mode
        const auto protocol = static_cast<uint8_t>(vip.protocol);
        if (!known_protocol(protocol)) {
            return make_fault(MessageError::bad_enum, w.offset(), "service_set.vip.protocol",
                              protocol);
        }
        w.u8(protocol);
    }
    return {};
}

MessageFault put(Writer& w, const BackendSet& m) {
    JITLB_TRY(put_string(w, m.service, kServiceNameRule, "backend_set.service"));
    if (m.backends.size() > kMaxBackends) {
        return make_fault(MessageError::count_limit, w.offset(), "backend_set.backend_count",
                          m.backends.size());
    }
    w.u16(static_cast<uint16_t>(m.backends.size()));
    for (const Backend& b : m.backends) {
        JITLB_TRY(put_string(w, b.id, kBackendIdRule, "backend_set.backend.id"));
        JITLB_TRY(put_address(w, b.address, "backend_set.backend.address"));
        w.u32(b.weight);
        w.bytes(b.mac.data(), b.mac.size());
    }
    return {};
}

MessageFault put(Writer&, const KeyReload&) {
    return {};
}

MessageFault put(Writer& w, const ServiceDelete& m) {
    return put_string(w, m.name, kServiceNameRule, "service_delete.name");
}

MessageFault put(Writer& w, const GrantActivated& m) {
    w.bytes(m.grant_id.data(), m.grant_id.size());
    w.u32(m.service_id);
    w.u64(m.not_after_ms);
    return {};
}

MessageFault put(Writer& w, const GrantRejected& m) {
    w.bytes(m.grant_id.data(), m.grant_id.size());
    JITLB_TRY(put_enum(w, m.reason, kMaxGrantRejectReason, "grant_rejected.reason"));
    return put_string(w, m.text, kTextRule, "grant_rejected.text");
}

MessageFault put(Writer& w, const GrantRevoked& m) {
    w.bytes(m.grant_id.data(), m.grant_id.size());
    return put_enum(w, m.reason, kMaxRevokeReason, "grant_revoked.reason");
}

MessageFault put(Writer& w, const GrantExpired& m) {
    w.bytes(m.grant_id.data(), m.grant_id.size());
    w.u64(m.not_after_ms);
    return {};
}

MessageFault put(Writer& w, const DenialSample& m) {
    JITLB_TRY(put_family(w, m.family, "denial_sample.family"));
    w.u8(m.protocol);
    JITLB_TRY(put_enum(w, m.reason, kMaxDenialReason, "denial_sample.reason"));
    w.u32(m.service_id);
    JITLB_TRY(put_address_bytes(w, m.family, m.source, "denial_sample.source"));
    JITLB_TRY(put_address_bytes(w, m.family, m.vip, "denial_sample.vip"));
    w.u16(m.vip_port);
    w.u64(m.count);
    return {};
}

MessageFault put(Writer& w, const ServiceApplied& m) {
    w.u64(m.command_sequence);
    w.u32(m.service_id);
    w.u64(m.generation);
    return put_string(w, m.name, kServiceNameRule, "service_applied.name");
}

MessageFault put(Writer& w, const CommandRejected& m) {
    w.u64(m.command_sequence);
    w.u16(m.command_type);
    JITLB_TRY(put_enum(w, m.reason, kMaxCommandRejectReason, "command_rejected.reason"));
    return put_string(w, m.text, kTextRule, "command_rejected.text");
}

MessageFault put(Writer& w, const KeysReloaded& m) {
    w.u64(m.command_sequence);
    w.u32(m.key_count);
    w.u32(m.grants_ended);
    return {};
}

#undef JITLB_TRY

MessageFault put_message(Writer& w, const Message& message) {
    return std::visit([&](const auto& m) { return put(w, m); }, message);
}

// --- reading ----------------------------------------------------------------------------

void get(Reader& r, GrantPush& m) {
    uint16_t n = 0;
    r.get(m.push_sequence, "grant_push.push_sequence");
    const size_t at = r.offset();
    if (!r.get(n, "grant_push.grant_length")) return;
    if (n == 0 || n > kMaxGrantBytes) {
        r.fail(MessageError::count_limit, "grant_push.grant_length", n, at);
        return;
    }
    if (r.remaining() < n) {
        r.fail(MessageError::truncated, "grant_push.grant", n, r.offset());
        return;
    }
    m.grant.resize(n);
    r.bytes(m.grant.data(), n, "grant_push.grant");
}

void get(Reader& r, Revoke& m) {
    r.grant_id(m.grant_id, "revoke.grant_id");
    r.get(m.not_after_ms, "revoke.not_after_ms");
    r.enumeration(m.reason, kMaxRevokeReason, "revoke.reason");
}

void get(Reader& r, ServiceSet& m) {
    r.string(m.name, kServiceNameRule, "service_set.name");
    r.enumeration(m.mode, kMaxForwardingMode, "service_set.mode");
    size_t at = r.offset();
    if (r.get(m.gue_port, "service_set.gue_port") &&
        (m.gue_port != 0) != (m.mode == ForwardingMode::gue)) {
        r.fail(MessageError::bad_value, "service_set.gue_port", m.gue_port, at);
    }
    at = r.offset();
    if (r.get(m.maglev_table_size, "service_set.maglev_table_size") &&
        (m.maglev_table_size < kMinMaglevTableSize || m.maglev_table_size > kMaxMaglevTableSize)) {
        r.fail(MessageError::bad_value, "service_set.maglev_table_size", m.maglev_table_size, at);
    }
    at = r.offset();
    if (r.get(m.flags, "service_set.flags") && (m.flags & ~kServiceFlagsKnown) != 0) {
        r.fail(MessageError::bad_flags, "service_set.flags", m.flags, at);
    }
    uint8_t count = 0;
    at = r.offset();
    if (!r.get(count, "service_set.vip_count")) return;
    if (count == 0 || count > kMaxVips) {
        r.fail(MessageError::count_limit, "service_set.vip_count", count, at);
        return;
    }
    m.vips.resize(count);
    for (Vip& vip : m.vips) {
        r.address(vip.address, "service_set.vip.address");
        at = r.offset();
        r.get(vip.port, "service_set.vip.port");  // 0: no port, the 3-tuple mode
        uint8_t protocol = 0;
        at = r.offset();
        if (r.get(protocol, "service_set.vip.protocol") && !known_protocol(protocol)) {
            r.fail(MessageError::bad_enum, "service_set.vip.protocol", protocol, at);
        }
        vip.protocol = static_cast<L4Protocol>(protocol);
        if (!r.ok()) return;
    }
}

void get(Reader& r, BackendSet& m) {
    r.string(m.service, kServiceNameRule, "backend_set.service");
    uint16_t count = 0;
    const size_t at = r.offset();
    if (!r.get(count, "backend_set.backend_count")) return;
    if (count > kMaxBackends) {
        r.fail(MessageError::count_limit, "backend_set.backend_count", count, at);
        return;
    }
    // Each backend takes at least 29 bytes: refuse a count the bytes cannot
    // hold before allocating for it.
    if (r.remaining() < size_t{count} * 29) {
        r.fail(MessageError::truncated, "backend_set.backends", count, r.offset());
        return;
    }
    m.backends.resize(count);
    for (Backend& b : m.backends) {
        r.string(b.id, kBackendIdRule, "backend_set.backend.id");
        r.address(b.address, "backend_set.backend.address");
        r.get(b.weight, "backend_set.backend.weight");  // any value: 0 drains (messages.h)
        r.bytes(b.mac.data(), b.mac.size(), "backend_set.backend.mac");
        if (!r.ok()) return;
    }
}

void get(Reader&, KeyReload&) {}

void get(Reader& r, ServiceDelete& m) {
    r.string(m.name, kServiceNameRule, "service_delete.name");
}

void get(Reader& r, GrantActivated& m) {
    r.grant_id(m.grant_id, "grant_activated.grant_id");
    r.get(m.service_id, "grant_activated.service_id");
    r.get(m.not_after_ms, "grant_activated.not_after_ms");
}

void get(Reader& r, GrantRejected& m) {
    r.grant_id(m.grant_id, "grant_rejected.grant_id");
    r.enumeration(m.reason, kMaxGrantRejectReason, "grant_rejected.reason");
    r.string(m.text, kTextRule, "grant_rejected.text");
}

void get(Reader& r, GrantRevoked& m) {
    r.grant_id(m.grant_id, "grant_revoked.grant_id");
    r.enumeration(m.reason, kMaxRevokeReason, "grant_revoked.reason");
}

void get(Reader& r, GrantExpired& m) {
    r.grant_id(m.grant_id, "grant_expired.grant_id");
    r.get(m.not_after_ms, "grant_expired.not_after_ms");
}

void get(Reader& r, DenialSample& m) {
    r.family(m.family, "denial_sample.family");
    r.get(m.protocol, "denial_sample.protocol");
    r.enumeration(m.reason, kMaxDenialReason, "denial_sample.reason");
    r.get(m.service_id, "denial_sample.service_id");
    r.address_bytes(m.family, m.source, "denial_sample.source");
    r.address_bytes(m.family, m.vip, "denial_sample.vip");
    r.get(m.vip_port, "denial_sample.vip_port");
    r.get(m.count, "denial_sample.count");
}

void get(Reader& r, ServiceApplied& m) {
    r.get(m.command_sequence, "service_applied.command_sequence");
    r.get(m.service_id, "service_applied.service_id");
    r.get(m.generation, "service_applied.generation");
    r.string(m.name, kServiceNameRule, "service_applied.name");
}

void get(Reader& r, CommandRejected& m) {
    r.get(m.command_sequence, "command_rejected.command_sequence");
    r.get(m.command_type, "command_rejected.command_type");
    r.enumeration(m.reason, kMaxCommandRejectReason, "command_rejected.reason");
    r.string(m.text, kTextRule, "command_rejected.text");
}

void get(Reader& r, KeysReloaded& m) {
    r.get(m.command_sequence, "keys_reloaded.command_sequence");
    r.get(m.key_count, "keys_reloaded.key_count");
    r.get(m.grants_ended, "keys_reloaded.grants_ended");
}

template <class T>
MessageFault decode_as(std::span<const uint8_t> payload, Message& message) {
    Reader r(payload);
    T value{};
    get(r, value);
    if (r.ok() && r.remaining() != 0) {
        r.fail(MessageError::trailing_bytes, "payload", r.remaining(), r.offset());
    }
    if (r.ok()) message = std::move(value);
    return r.fault();
}

void write_header(uint8_t* out, uint16_t type, uint16_t version, uint32_t length,
                  uint64_t sequence) {
    Writer w({out, kHeaderBytes});
    w.u16(type);
    w.u16(version);
    w.u32(length);
    w.u64(sequence);
}

}  // namespace

// --- names -------------------------------------------------------------------------------

MessageType message_type(const Message& message) noexcept {
    struct Visitor {
        MessageType operator()(const GrantPush&) const { return MessageType::grant_push; }
        MessageType operator()(const Revoke&) const { return MessageType::revoke; }
        MessageType operator()(const ServiceSet&) const { return MessageType::service_set; }
        MessageType operator()(const BackendSet&) const { return MessageType::backend_set; }
        MessageType operator()(const KeyReload&) const { return MessageType::key_reload; }
        MessageType operator()(const ServiceDelete&) const { return MessageType::service_delete; }
        MessageType operator()(const GrantActivated&) const { return MessageType::grant_activated; }
        MessageType operator()(const GrantRejected&) const { return MessageType::grant_rejected; }
        MessageType operator()(const GrantRevoked&) const { return MessageType::grant_revoked; }
        MessageType operator()(const GrantExpired&) const { return MessageType::grant_expired; }
        MessageType operator()(const DenialSample&) const { return MessageType::denial_sample; }
        MessageType operator()(const ServiceApplied&) const { return MessageType::service_applied; }
        MessageType operator()(const CommandRejected&) const {
            return MessageType::command_rejected;
        }
        MessageType operator()(const KeysReloaded&) const { return MessageType::keys_reloaded; }
    };
    return std::visit(Visitor{}, message);
}

std::string_view message_type_name(uint16_t type) noexcept {
    const TypeSpec* spec = find_type(type);
    return spec != nullptr ? spec->name : "unknown";
}

bool is_known_type(uint16_t type) noexcept {
    return find_type(type) != nullptr;
}

Direction type_direction(MessageType type) noexcept {
    const TypeSpec* spec = find_type(static_cast<uint16_t>(type));
    return spec != nullptr ? spec->direction : Direction::command;
}

std::string_view revoke_reason_name(RevokeReason reason) noexcept {
    switch (reason) {
        case RevokeReason::by_operator:
            return "operator";
        case RevokeReason::request_withdrawn:
            return "request_withdrawn";
        case RevokeReason::policy:
            return "policy";
        case RevokeReason::reconcile:
            return "reconcile";
        case RevokeReason::issuer_key_removed:
            return "issuer_key_removed";
    }
    return "unknown";
}

std::string_view grant_reject_reason_name(GrantRejectReason reason) noexcept {
    switch (reason) {
        case GrantRejectReason::malformed:
            return "malformed";
        case GrantRejectReason::bad_signature:
            return "bad_signature";
        case GrantRejectReason::unknown_issuer:
            return "unknown_issuer";
        case GrantRejectReason::expired:
            return "expired";
        case GrantRejectReason::starts_too_far_ahead:
            return "starts_too_far_ahead";
        case GrantRejectReason::too_long:
            return "too_long";
        case GrantRejectReason::superseded:
            return "superseded";
        case GrantRejectReason::revoked:
            return "revoked";
        case GrantRejectReason::unknown_service:
            return "unknown_service";
        case GrantRejectReason::table_full:
            return "table_full";
        case GrantRejectReason::revoked_set_full:
            return "revoked_set_full";
        case GrantRejectReason::backlog_full:
            return "backlog_full";
    }
    return "unknown";
}

std::string_view denial_reason_name(DenialReason reason) noexcept {
    switch (reason) {
        case DenialReason::no_grant:
            return "no_grant";
        case DenialReason::grant_not_yet_valid:
            return "grant_not_yet_valid";
        case DenialReason::grant_expired:
            return "grant_expired";
        case DenialReason::flow_reset:
            return "flow_reset";
    }
    return "unknown";
}

std::string_view command_reject_reason_name(CommandRejectReason reason) noexcept {
    switch (reason) {
        case CommandRejectReason::malformed:
            return "malformed";
        case CommandRejectReason::unknown_type:
            return "unknown_type";
        case CommandRejectReason::unsupported_version:
            return "unsupported_version";
        case CommandRejectReason::too_large:
            return "too_large";
        case CommandRejectReason::wrong_direction:
            return "wrong_direction";
        case CommandRejectReason::unknown_service:
            return "unknown_service";
        case CommandRejectReason::invalid_service:
            return "invalid_service";
        case CommandRejectReason::service_map_full:
            return "service_map_full";
        case CommandRejectReason::backlog_full:
            return "backlog_full";
        case CommandRejectReason::key_reload_failed:
            return "key_reload_failed";
        case CommandRejectReason::internal:
            return "internal";
    }
    return "unknown";
}

std::string_view message_error_name(MessageError error) noexcept {
    switch (error) {
        case MessageError::ok:
            return "ok";
        case MessageError::truncated:
            return "truncated";
        case MessageError::trailing_bytes:
            return "trailing_bytes";
        case MessageError::unknown_type:
            return "unknown_type";
        case MessageError::unsupported_version:
            return "unsupported_version";
        case MessageError::wrong_direction:
            return "wrong_direction";
        case MessageError::string_length:
            return "string_length";
        case MessageError::string_alphabet:
            return "string_alphabet";
        case MessageError::count_limit:
            return "count_limit";
        case MessageError::bad_family:
            return "bad_family";
        case MessageError::nonzero_padding:
            return "nonzero_padding";
        case MessageError::bad_enum:
            return "bad_enum";
        case MessageError::bad_flags:
            return "bad_flags";
        case MessageError::bad_value:
            return "bad_value";
        case MessageError::too_large:
            return "too_large";
    }
    return "unknown";
}

std::string describe_message_fault(const MessageFault& fault) {
    if (fault.ok()) return "ok";
    return fmt::format("{} at byte {}: {} (value {})", fault.field, fault.offset,
                       message_error_name(fault.error), fault.value);
}

CommandRejectReason command_reject_reason(MessageError error) noexcept {
    switch (error) {
        case MessageError::unknown_type:
            return CommandRejectReason::unknown_type;
        case MessageError::unsupported_version:
            return CommandRejectReason::unsupported_version;
        case MessageError::wrong_direction:
            return CommandRejectReason::wrong_direction;
        case MessageError::too_large:
            return CommandRejectReason::too_large;
        default:
            return CommandRejectReason::malformed;
    }
}

std::span<const uint64_t> message_catalogue_facts() {
    static const std::vector<uint64_t> facts = [] {
        std::vector<uint64_t> f;
        for (const TypeSpec& spec : kTypes) {
            f.push_back(static_cast<uint64_t>(spec.type) << 32 | uint64_t{kMessageVersion} << 8 |
                        static_cast<uint64_t>(spec.direction));
        }
        const uint64_t limits[] = {kMaxGrantBytes,
                                   kMaxVips,
                                   kMaxBackends,
                                   kMaxBackendIdLen,
                                   kMaxTextLen,
                                   kMinMaglevTableSize,
                                   kMaxMaglevTableSize,
                                   kServiceFlagsKnown,
                                   kMaxForwardingMode,
                                   kMaxRevokeReason,
                                   kMaxGrantRejectReason,
                                   kMaxDenialReason,
                                   kMaxCommandRejectReason};
        f.insert(f.end(), std::begin(limits), std::end(limits));
        return f;
    }();
    return facts;
}

// --- encode and decode --------------------------------------------------------------------

MessageFault check_message(const Message& message) {
    Writer counter;
    return put_message(counter, message);
}

size_t encoded_payload_size(const Message& message) {
    Writer counter;
    put_message(counter, message);
    return counter.size();
}

MessageFault encode_payload(const Message& message, std::span<uint8_t> out) {
    Writer counter;
    if (MessageFault fault = put_message(counter, message); !fault.ok()) return fault;
    if (counter.size() != out.size()) {
        return make_fault(MessageError::too_large, 0, "payload", counter.size());
    }
    Writer writer(out);
    return put_message(writer, message);
}

MessageFault decode_payload(uint16_t type, uint16_t version, std::span<const uint8_t> payload,
                            Message& message) {
    const TypeSpec* spec = find_type(type);
    if (spec == nullptr) return make_fault(MessageError::unknown_type, 0, "header.type", type);
    if (version != kMessageVersion) {
        return make_fault(MessageError::unsupported_version, 2, "header.version", version);
    }
    switch (spec->type) {
        case MessageType::grant_push:
            return decode_as<GrantPush>(payload, message);
        case MessageType::revoke:
            return decode_as<Revoke>(payload, message);
        case MessageType::service_set:
            return decode_as<ServiceSet>(payload, message);
        case MessageType::backend_set:
            return decode_as<BackendSet>(payload, message);
        case MessageType::key_reload:
            return decode_as<KeyReload>(payload, message);
        case MessageType::service_delete:
            return decode_as<ServiceDelete>(payload, message);
        case MessageType::grant_activated:
            return decode_as<GrantActivated>(payload, message);
        case MessageType::grant_rejected:
            return decode_as<GrantRejected>(payload, message);
        case MessageType::grant_revoked:
            return decode_as<GrantRevoked>(payload, message);
        case MessageType::grant_expired:
            return decode_as<GrantExpired>(payload, message);
        case MessageType::denial_sample:
            return decode_as<DenialSample>(payload, message);
        case MessageType::service_applied:
            return decode_as<ServiceApplied>(payload, message);
        case MessageType::command_rejected:
            return decode_as<CommandRejected>(payload, message);
        case MessageType::keys_reloaded:
            return decode_as<KeysReloaded>(payload, message);
    }
    return make_fault(MessageError::unknown_type, 0, "header.type", type);
}

MessageFault encode_message(const Message& message, uint64_t sequence, std::vector<uint8_t>& out) {
    Writer counter;
    if (MessageFault fault = put_message(counter, message); !fault.ok()) return fault;
    out.assign(kHeaderBytes + counter.size(), 0);
    write_header(out.data(), static_cast<uint16_t>(message_type(message)), kMessageVersion,
                 static_cast<uint32_t>(counter.size()), sequence);
    Writer writer(std::span<uint8_t>(out).subspan(kHeaderBytes));
    return put_message(writer, message);
}

MessageFault decode_message(std::span<const uint8_t> bytes, DecodedMessage& decoded) {
    if (bytes.size() < kHeaderBytes) {
        return make_fault(MessageError::truncated, bytes.size(), "header", kHeaderBytes);
    }
    Reader header(bytes.first(kHeaderBytes));
    uint16_t type = 0;
    uint16_t version = 0;
    uint32_t length = 0;
    uint64_t sequence = 0;
    header.get(type, "header.type");
    header.get(version, "header.version");
    header.get(length, "header.length");
    header.get(sequence, "header.sequence");
    if (!is_known_type(type)) {
        return make_fault(MessageError::unknown_type, 0, "header.type", type);
    }
    if (version != kMessageVersion) {
        return make_fault(MessageError::unsupported_version, 2, "header.version", version);
    }
    const size_t payload_bytes = bytes.size() - kHeaderBytes;
    if (length > payload_bytes) {
        return make_fault(MessageError::truncated, bytes.size(), "header.length", length);
    }
    if (length < payload_bytes) {
        return make_fault(MessageError::trailing_bytes, kHeaderBytes + length, "header.length",
                          payload_bytes - length);
    }
    MessageFault fault =
        decode_payload(type, version, bytes.subspan(kHeaderBytes), decoded.message);
    if (fault.ok()) decoded.sequence = sequence;
    return fault;
}

// --- on a ring ------------------------------------------------------------------------------

SendResult push_message(RingProducer& producer, const Message& message) {
    SendResult result;
    Writer counter;
    result.message = put_message(counter, message);
    if (!result.message.ok()) return result;
    std::span<uint8_t> room;
    result.ring = producer.reserve(static_cast<uint32_t>(counter.size()), room);
    if (result.ring.error != RingError::ok) return result;
    Writer writer(room);
    put_message(writer, message);  // checked above: cannot fail
    result.ring = producer.commit(static_cast<uint16_t>(message_type(message)), kMessageVersion);
    return result;
}

ReceiveResult pop_message(RingConsumer& consumer, Direction expected, std::span<uint8_t> buffer,
                          DecodedMessage& decoded) {
    ReceiveResult result;
    RingRecord record;
    const RingError error = consumer.peek(buffer, record);
    result.type = record.type;
    result.version = record.version;
    result.sequence = record.sequence;
    switch (error) {
        case RingError::ok:
            break;
        case RingError::buffer_too_small:
            consumer.consume();
            result.status = ReceiveStatus::rejected;
            result.fault = make_fault(MessageError::too_large, 4, "header.length", record.length);
            return result;
        case RingError::corrupt:
            result.status = ReceiveStatus::ring_corrupt;
            return result;
        default:
            result.status = ReceiveStatus::empty;
            return result;
    }
    consumer.consume();  // the record is in `buffer` now
    const TypeSpec* spec = find_type(record.type);
    if (spec != nullptr && spec->direction != expected) {
        result.status = ReceiveStatus::rejected;
        result.fault = make_fault(MessageError::wrong_direction, 0, "header.type", record.type);
        return result;
    }
    result.fault = decode_message(record.bytes, decoded);
    result.status = result.fault.ok() ? ReceiveStatus::ok : ReceiveStatus::rejected;
    return result;
}

}  // namespace jitlb
