// The ring messages (common/messages.h, docs/shared-region.md "Messages"):
// every type round-trips to the same bytes, the documented byte layout holds,
// every malformed case is refused with its specific error, and the largest
// messages fit the default ring.
#include <catch2/catch.hpp>

#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "messages.h"

using namespace jitlb;

namespace {

GrantId grant_id(uint8_t seed) {
    GrantId id{};
    for (size_t i = 0; i < id.size(); ++i) id[i] = static_cast<uint8_t>(seed + i);
    return id;
}

IpAddress v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
    IpAddress addr;
    addr.version = IpVersion::v4;
    addr.bytes = {a, b, c, d};
    return addr;
}

IpAddress v6(uint16_t last) {
    IpAddress addr;
    addr.version = IpVersion::v6;
    addr.bytes = {0x20, 0x01, 0x0d, 0xb8};
    addr.bytes[14] = static_cast<uint8_t>(last >> 8);
    addr.bytes[15] = static_cast<uint8_t>(last);
    return addr;
}

BackendSet backends_v6(size_t count, size_t id_len) {
    BackendSet set{"web", {}};
    for (size_t i = 0; i < count; ++i) {
        std::string id = "be-" + std::to_string(i) + "-";
        id.resize(id_len, 'x');
        set.backends.push_back(
            {id,
             v6(static_cast<uint16_t>(i)),
             static_cast<uint32_t>(1 + i % 7),
             {0x02, 0, 0, 0, static_cast<uint8_t>(i >> 8), static_cast<uint8_t>(i)}});
    }
    return set;
}

// One message of every type, with non-trivial values.
std::vector<Message> samples() {
    std::vector<uint8_t> grant(200);
    for (size_t i = 0; i < grant.size(); ++i) grant[i] = static_cast<uint8_t>(i * 7);
    DenialSample denial;
    denial.family = IpVersion::v6;
    denial.protocol = 6;
    denial.reason = DenialReason::grant_expired;
    denial.service_id = 3;
    denial.source = v6(0x1234).bytes;
    denial.vip = v6(0x80).bytes;
    denial.vip_port = 443;
    denial.count = 12345;
    return {
        GrantPush{42, grant},
        Revoke{grant_id(1), 1'700'000'000'000, RevokeReason::request_withdrawn},
        ServiceSet{"web.prod-1",
                   ForwardingMode::gue,
                   6080,
                   65537,
                   kServiceFlagDisabled,
                   {{v4(192, 0, 2, 10), 443, L4Protocol::tcp}, {v6(1), 53, L4Protocol::udp}}},
        backends_v6(3, 12),
        BackendSet{"empty", {}},
        BackendSet{"draining", {{"b0", v6(1), 0, {}}}},  // weight 0 is valid: draining
        KeyReload{},
        ServiceDelete{"web.prod-1"},
        GrantActivated{grant_id(2), 7, 1'700'000'060'000},
        GrantRejected{grant_id(3), GrantRejectReason::superseded,
                      "superseded by a grant ending later"},
        GrantRejected{GrantId{}, GrantRejectReason::malformed, ""},
        GrantRevoked{grant_id(4), RevokeReason::issuer_key_removed},
        GrantExpired{grant_id(5), 1'700'000'120'000},
        denial,
        ServiceApplied{99, 7, 3, "web"},
        CommandRejected{100, 0x0999, CommandRejectReason::unknown_type, "type 0x0999"},
        KeysReloaded{101, 2, 5},
    };
}

std::vector<uint8_t> encode(const Message& m, uint64_t sequence = 5) {
    std::vector<uint8_t> out;
    const MessageFault fault = encode_message(m, sequence, out);
    INFO(describe_message_fault(fault));
    REQUIRE(fault.ok());
    return out;
}

MessageFault decode(const std::vector<uint8_t>& bytes) {
    DecodedMessage decoded;
    return decode_message(bytes, decoded);
}

// The encoder's verdict on a message.
MessageError encode_error(const Message& m) {
    std::vector<uint8_t> out;
    return encode_message(m, 0, out).error;
}

void set_length(std::vector<uint8_t>& bytes) {
    const auto length = static_cast<uint32_t>(bytes.size() - 16);
    std::memcpy(bytes.data() + 4, &length, 4);
}

struct RingPair {
    explicit RingPair(uint32_t slots = kDefaultCmdRingSlots)
        : bytes(size_t{slots} * kRingSlotBytes),
          storage(new uint8_t[bytes]()),
          producer({storage.get(), bytes}, kRingSlotBytes, &prod, &cons),
          consumer({storage.get(), bytes}, kRingSlotBytes, &prod, &cons),
          buffer(consumer.max_record_bytes()) {
        producer.reset(1);
        RingRecord rec;
        consumer.peek(buffer, rec);  // attach
    }
    size_t bytes;
    std::unique_ptr<uint8_t[]> storage;
    RingProducerControl prod{};
    RingConsumerControl cons{};
    RingProducer producer;
    RingConsumer consumer;
    std::vector<uint8_t> buffer;
};

}  // namespace

TEST_CASE("every message type round-trips to the same bytes") {
    std::set<uint16_t> types;
    for (const Message& m : samples()) {
        const auto bytes = encode(m, 77);
        INFO(message_type_name(static_cast<uint16_t>(message_type(m))));
        DecodedMessage decoded;
        const MessageFault fault = decode_message(bytes, decoded);
        INFO(describe_message_fault(fault));
        REQUIRE(fault.ok());
        CHECK(decoded.sequence == 77);
        CHECK(decoded.message == m);
        CHECK(encode(decoded.message, 77) == bytes);
        CHECK(bytes.size() == 16 + encoded_payload_size(m));
        types.insert(static_cast<uint16_t>(message_type(m)));
    }
    CHECK(types.size() == std::variant_size_v<Message>);
}

TEST_CASE("messages have the byte layout docs/shared-region.md gives") {
    SECTION("Revoke: header, id16, u64 not_after_ms, u16 reason, all little endian") {
        const auto bytes = encode(Revoke{grant_id(0xa0), 0x0102030405060708, RevokeReason::policy},
                                  0x1122334455667788);
        const std::vector<uint8_t> expected = {
            0x02, 0x00, 0x01, 0x00, 26,   0,    0,    0,     // type 2, version 1, length 26
            0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,  // sequence
            0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,  // grant id
            0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,  //
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,  // not_after_ms
            0x03, 0x00,                                      // reason policy
        };
        CHECK(bytes == expected);
    }
    SECTION("ServiceSet: str8 name, mode, gue port, table size, flags, VIPs of 20 bytes") {
        const auto bytes = encode(
            ServiceSet{
                "ab", ForwardingMode::ipip, 0, 7, 0, {{v4(10, 0, 0, 1), 80, L4Protocol::tcp}}},
            0);
        const std::vector<uint8_t> payload = {
            2,  'a', 'b',                                            // name
            1,                                                       // mode ipip
            0,  0,                                                   // gue_port
            7,  0,   0,   0,                                         // maglev_table_size
            0,  0,   0,   0,                                         // flags
            1,                                                       // vip_count
            4,  10,  0,   0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  // family, address
            80, 0,                                                   // port
            6,                                                       // protocol TCP
        };
        REQUIRE(bytes.size() == 16 + payload.size());
        CHECK(std::vector<uint8_t>(bytes.begin() + 16, bytes.end()) == payload);
        CHECK(payload.size() == 13 + 2 + 20);
    }
    SECTION("sizes in the table of types") {
        CHECK(encoded_payload_size(GrantActivated{}) == 28);
        CHECK(encoded_payload_size(GrantRevoked{}) == 18);
        CHECK(encoded_payload_size(GrantExpired{}) == 24);
        CHECK(encoded_payload_size(DenialSample{}) == 50);
        CHECK(encoded_payload_size(KeysReloaded{}) == 16);
        CHECK(encoded_payload_size(KeyReload{}) == 0);
        CHECK(encoded_payload_size(GrantPush{1, std::vector<uint8_t>(100)}) == 110);
        CHECK(encoded_payload_size(backends_v6(1, 20)) == 3 + 3 + 48);
    }
}

TEST_CASE("a message truncated at any byte is refused as truncated") {
    for (const Message& m : samples()) {
        const auto bytes = encode(m);
        INFO(message_type_name(static_cast<uint16_t>(message_type(m))));
        for (size_t n = 0; n < bytes.size(); ++n) {
            INFO("whole message cut to " << n << " bytes");
            const std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + n);
            CHECK(decode(cut).error == MessageError::truncated);
        }
        // The payload alone cut short, the header's length agreeing: the
        // payload decoder's own checks.
        const std::span<const uint8_t> payload(bytes.data() + 16, bytes.size() - 16);
        for (size_t n = 0; n < payload.size(); ++n) {
            INFO("payload cut to " << n << " bytes");
            Message out;
            CHECK(decode_payload(static_cast<uint16_t>(message_type(m)), kMessageVersion,
                                 payload.first(n), out)
                      .error == MessageError::truncated);
        }
    }
}

TEST_CASE("unknown types, unsupported versions and trailing bytes are refused") {
    const auto good = encode(Revoke{grant_id(1), 5, RevokeReason::policy});
    SECTION("unknown type") {
        for (const uint16_t type : {0x0000, 0x0007, 0x0100, 0x0109, 0x0200, 0xffff}) {
            auto bytes = good;
            std::memcpy(bytes.data(), &type, 2);
            const MessageFault fault = decode(bytes);
            CHECK(fault.error == MessageError::unknown_type);
            CHECK(fault.value == type);
        }
    }
    SECTION("unsupported version") {
        for (const uint16_t version : {0, 2, 0xffff}) {
            auto bytes = good;
            std::memcpy(bytes.data() + 2, &version, 2);
            CHECK(decode(bytes).error == MessageError::unsupported_version);
        }
    }
    SECTION("a byte after the message") {
        auto bytes = good;
        bytes.push_back(0);
        CHECK(decode(bytes).error == MessageError::trailing_bytes);
    }
    SECTION("a byte after the payload, counted in the header's length") {
        auto bytes = good;
        bytes.push_back(0);
        set_length(bytes);
        const MessageFault fault = decode(bytes);
        CHECK(fault.error == MessageError::trailing_bytes);
        CHECK(std::string(fault.field) == "payload");
        CHECK(fault.offset == 16 + 26);
    }
    SECTION("a key reload with a payload") {
        auto bytes = encode(KeyReload{});
        bytes.push_back(1);
        set_length(bytes);
        CHECK(decode(bytes).error == MessageError::trailing_bytes);
    }
}

TEST_CASE("strings outside their length or alphabet are refused by encoder and decoder") {
    auto service_delete = [](std::string name) { return Message{ServiceDelete{std::move(name)}}; };
    CHECK(encode_error(service_delete(std::string(31, 'a'))) == MessageError::ok);
    CHECK(encode_error(service_delete(std::string(32, 'a'))) == MessageError::string_length);
    CHECK(encode_error(service_delete("")) == MessageError::string_length);
    CHECK(encode_error(service_delete("web prod")) == MessageError::string_alphabet);
    CHECK(encode_error(service_delete("../etc")) == MessageError::string_alphabet);
    CHECK(encode_error(service_delete(std::string("a\0b", 3))) == MessageError::string_alphabet);

    Backend backend{"", v4(10, 0, 0, 1), 1, {}};
    backend.id = std::string(63, '!');
    CHECK(encode_error(BackendSet{"web", {backend}}) == MessageError::ok);
    backend.id = std::string(64, '!');
    CHECK(encode_error(BackendSet{"web", {backend}}) == MessageError::string_length);
    backend.id = "has space";
    CHECK(encode_error(BackendSet{"web", {backend}}) == MessageError::string_alphabet);

    GrantRejected rejected{grant_id(1), GrantRejectReason::expired, std::string(127, 'x')};
    CHECK(encode_error(rejected) == MessageError::ok);
    rejected.text = std::string(128, 'x');
    CHECK(encode_error(rejected) == MessageError::string_length);
    rejected.text = "tab\there";
    CHECK(encode_error(rejected) == MessageError::string_alphabet);
    rejected.text = "\x7f";
    CHECK(encode_error(rejected) == MessageError::string_alphabet);

    // The decoder on the same cases, built by hand.
    std::vector<uint8_t> bytes = encode(ServiceDelete{std::string(31, 'a')});
    bytes[16] = 32;
    bytes.push_back('a');
    set_length(bytes);
    MessageFault fault = decode(bytes);
    CHECK(fault.error == MessageError::string_length);
    CHECK(fault.offset == 16);
    CHECK(fault.value == 32);
    bytes = encode(ServiceDelete{"abc"});
    bytes[18] = ' ';
    fault = decode(bytes);
    CHECK(fault.error == MessageError::string_alphabet);
    CHECK(fault.offset == 18);
    CHECK(describe_message_fault(fault) ==
          "service_delete.name at byte 18: string_alphabet (value 32)");
}

TEST_CASE("counts beyond their limits are refused by encoder and decoder") {
    ServiceSet set{"web", ForwardingMode::ipip, 0, 65537, 0, {}};
    CHECK(encode_error(set) == MessageError::count_limit);  // no VIP
    for (size_t i = 0; i < kMaxVips; ++i) {
        set.vips.push_back({v4(10, 0, 0, 1), static_cast<uint16_t>(i + 1), L4Protocol::tcp});
    }
    CHECK(encode_error(set) == MessageError::ok);
    set.vips.push_back({v4(10, 0, 0, 1), 999, L4Protocol::tcp});
    CHECK(encode_error(set) == MessageError::count_limit);

    CHECK(encode_error(backends_v6(kMaxBackends, 4)) == MessageError::ok);
    CHECK(encode_error(backends_v6(kMaxBackends + 1, 4)) == MessageError::count_limit);

    CHECK(encode_error(GrantPush{1, {}}) == MessageError::count_limit);
    CHECK(encode_error(GrantPush{1, std::vector<uint8_t>(kMaxGrantBytes)}) == MessageError::ok);
    CHECK(encode_error(GrantPush{1, std::vector<uint8_t>(kMaxGrantBytes + 1)}) ==
          MessageError::count_limit);

    SECTION("decoder: 17 VIPs") {
        set.vips.resize(kMaxVips);
        auto bytes = encode(set);
        const size_t count_at = 16 + 1 + 3 + 1 + 2 + 4 + 4;
        REQUIRE(bytes[count_at] == kMaxVips);
        bytes[count_at] = kMaxVips + 1;
        bytes.insert(bytes.end(), bytes.end() - 20, bytes.end());
        set_length(bytes);
        const MessageFault fault = decode(bytes);
        CHECK(fault.error == MessageError::count_limit);
        CHECK(fault.offset == count_at);
    }
    SECTION("decoder: 4097 backends") {
        auto bytes = encode(BackendSet{"web", {}});
        const uint16_t count = kMaxBackends + 1;
        std::memcpy(bytes.data() + 16 + 4, &count, 2);
        bytes.resize(bytes.size() + 4097 * 29, 0);
        set_length(bytes);
        CHECK(decode(bytes).error == MessageError::count_limit);
    }
    SECTION("decoder: a backend count the bytes cannot hold") {
        auto bytes = encode(BackendSet{"web", {}});
        const uint16_t count = 4000;
        std::memcpy(bytes.data() + 16 + 4, &count, 2);
        CHECK(decode(bytes).error == MessageError::truncated);
    }
    SECTION("decoder: grant of 0 and of 1025 bytes") {
        auto bytes = encode(GrantPush{1, {1}});
        bytes[16 + 8] = 0;
        bytes.pop_back();
        set_length(bytes);
        CHECK(decode(bytes).error == MessageError::count_limit);
        bytes = encode(GrantPush{1, std::vector<uint8_t>(kMaxGrantBytes)});
        const uint16_t n = kMaxGrantBytes + 1;
        std::memcpy(bytes.data() + 16 + 8, &n, 2);
        bytes.push_back(0);
        set_length(bytes);
        CHECK(decode(bytes).error == MessageError::count_limit);
    }
}

TEST_CASE("values outside their sets are refused by encoder and decoder") {
    const ServiceSet good{
        "web", ForwardingMode::gue, 6080, 65537, 0, {{v4(10, 0, 0, 1), 80, L4Protocol::tcp}}};
    REQUIRE(encode_error(good) == MessageError::ok);
    // Offsets in the encoding of `good`.
    const size_t mode_at = 16 + 4, gue_at = mode_at + 1, table_at = gue_at + 2,
                 flags_at = table_at + 4, family_at = flags_at + 4 + 1, addr_at = family_at + 1,
                 port_at = addr_at + 16, proto_at = port_at + 2;

    struct Case {
        const char* what;
        void (*change_struct)(ServiceSet&);
        size_t at;
        uint8_t byte;  // the field's new value: this byte, then zeros
        size_t width;
        MessageError error;
    };
    const Case cases[] = {
        {"mode 0", [](ServiceSet& s) { s.mode = static_cast<ForwardingMode>(0); }, mode_at, 0, 1,
         MessageError::bad_enum},
        {"mode 4", [](ServiceSet& s) { s.mode = static_cast<ForwardingMode>(4); }, mode_at, 4, 1,
         MessageError::bad_enum},
        {"gue without a port", [](ServiceSet& s) { s.gue_port = 0; }, gue_at, 0, 2,
         MessageError::bad_value},
        {"table size 2", [](ServiceSet& s) { s.maglev_table_size = 2; }, table_at, 2, 4,
         MessageError::bad_value},
        {"unknown flag", [](ServiceSet& s) { s.flags = 4; }, flags_at, 4, 4,
         MessageError::bad_flags},
        {"family 5", [](ServiceSet& s) { s.vips[0].address.version = static_cast<IpVersion>(5); },
         family_at, 5, 1, MessageError::bad_family},
        {"IPv4 with bytes past 4", [](ServiceSet& s) { s.vips[0].address.bytes[9] = 1; },
         addr_at + 9, 1, 1, MessageError::nonzero_padding},
        {"protocol ICMP", [](ServiceSet& s) { s.vips[0].protocol = static_cast<L4Protocol>(1); },
         proto_at, 1, 1, MessageError::bad_enum},
    };
    for (const Case& c : cases) {
        INFO(c.what);
        ServiceSet changed = good;
        c.change_struct(changed);
        CHECK(encode_error(changed) == c.error);
        auto bytes = encode(good);
        bytes[c.at] = c.byte;
        for (size_t i = 1; i < c.width; ++i) bytes[c.at + i] = 0;
        const MessageFault fault = decode(bytes);
        CHECK(fault.error == c.error);
        CHECK(fault.offset == c.at);
    }
    // A port with ipip mode.
    ServiceSet ipip = good;
    ipip.mode = ForwardingMode::ipip;
    CHECK(encode_error(ipip) == MessageError::bad_value);
    // Reasons outside their enums.
    CHECK(encode_error(Revoke{{}, 0, static_cast<RevokeReason>(6)}) == MessageError::bad_enum);
    CHECK(encode_error(GrantRejected{{}, static_cast<GrantRejectReason>(13), ""}) ==
          MessageError::bad_enum);
    CHECK(encode_error(DenialSample{IpVersion::v4, 6, static_cast<DenialReason>(0)}) ==
          MessageError::bad_enum);
    CHECK(encode_error(CommandRejected{0, 0, static_cast<CommandRejectReason>(12), ""}) ==
          MessageError::bad_enum);
    auto revoke = encode(Revoke{{}, 0, RevokeReason::policy});
    revoke[16 + 24] = 6;
    CHECK(decode(revoke).error == MessageError::bad_enum);
}

TEST_CASE(
    "any single changed byte either decodes to something that re-encodes the same, or is "
    "refused") {
    std::mt19937 rng(3);
    for (const Message& m : samples()) {
        const auto bytes = encode(m);
        for (size_t i = 0; i < bytes.size(); ++i) {
            for (int k = 0; k < 4; ++k) {
                auto changed = bytes;
                changed[i] = static_cast<uint8_t>(rng());
                DecodedMessage decoded;
                if (decode_message(changed, decoded).ok()) {
                    std::vector<uint8_t> again;
                    REQUIRE(encode_message(decoded.message, decoded.sequence, again).ok());
                    REQUIRE(again == changed);
                }
            }
        }
    }
}

TEST_CASE(
    "a service set of 1000 IPv6 backends fits in the default ring, and so does the "
    "largest") {
    RingPair ring;
    for (const size_t id_len : {size_t{20}, kMaxBackendIdLen}) {
        const BackendSet set = backends_v6(id_len == 20 ? 1000 : kMaxBackends, id_len);
        INFO(set.backends.size() << " backends with " << id_len
                                 << "-character ids: " << encoded_payload_size(set) << " bytes");
        CHECK(encoded_payload_size(set) <= ring.producer.max_payload_bytes());
        const SendResult sent = push_message(ring.producer, set);
        INFO(describe_push_result(sent.ring, "command ring"));
        REQUIRE(sent.ok());
        DecodedMessage decoded;
        const ReceiveResult got =
            pop_message(ring.consumer, Direction::command, ring.buffer, decoded);
        REQUIRE(got.status == ReceiveStatus::ok);
        CHECK(got.sequence == sent.ring.sequence);
        CHECK(decoded.sequence == sent.ring.sequence);
        CHECK(decoded.message == Message{set});
    }
    CHECK(encoded_payload_size(backends_v6(kMaxBackends, kMaxBackendIdLen)) ==
          3 + 3 + kMaxBackends * (28 + kMaxBackendIdLen));
}

TEST_CASE("messages go through a ring encoded in place and come out decoded") {
    RingPair ring;
    uint64_t last_sequence = 0;
    for (const Message& m : samples()) {
        const SendResult sent = push_message(ring.producer, m);
        REQUIRE(sent.ok());
        CHECK((sent.ring.sequence > last_sequence || last_sequence == 0));
        last_sequence = sent.ring.sequence;
        const Direction dir = type_direction(message_type(m));
        DecodedMessage decoded;
        const ReceiveResult got = pop_message(ring.consumer, dir, ring.buffer, decoded);
        REQUIRE(got.status == ReceiveStatus::ok);
        CHECK(decoded.message == m);
        CHECK(got.type == static_cast<uint16_t>(message_type(m)));
    }
    DecodedMessage decoded;
    CHECK(pop_message(ring.consumer, Direction::command, ring.buffer, decoded).status ==
          ReceiveStatus::empty);
}

TEST_CASE("bad records on the command ring are consumed and rejected with a reason") {
    RingPair ring;
    DecodedMessage decoded;
    auto next = [&] {
        return pop_message(ring.consumer, Direction::command, ring.buffer, decoded);
    };

    SECTION("an event on the command ring") {
        const SendResult sent = push_message(ring.producer, GrantExpired{grant_id(1), 5});
        REQUIRE(sent.ok());
        const ReceiveResult got = next();
        CHECK(got.status == ReceiveStatus::rejected);
        CHECK(got.fault.error == MessageError::wrong_direction);
        CHECK(got.sequence == sent.ring.sequence);
        CHECK(command_reject_reason(got.fault.error) == CommandRejectReason::wrong_direction);
    }
    SECTION("an unknown type") {
        REQUIRE(ring.producer.push(0x0999, 1, std::vector<uint8_t>(5)).error == RingError::ok);
        const ReceiveResult got = next();
        CHECK(got.status == ReceiveStatus::rejected);
        CHECK(got.type == 0x0999);
        CHECK(command_reject_reason(got.fault.error) == CommandRejectReason::unknown_type);
    }
    SECTION("a newer version") {
        REQUIRE(ring.producer.push(2, 2, std::vector<uint8_t>(26)).error == RingError::ok);
        CHECK(command_reject_reason(next().fault.error) ==
              CommandRejectReason::unsupported_version);
    }
    SECTION("a malformed payload") {
        REQUIRE(ring.producer.push(2, 1, std::vector<uint8_t>(25)).error == RingError::ok);
        const ReceiveResult got = next();
        CHECK(got.status == ReceiveStatus::rejected);
        CHECK(got.fault.error == MessageError::truncated);
        CHECK(command_reject_reason(got.fault.error) == CommandRejectReason::malformed);
    }
    SECTION("a record larger than the consumer's buffer") {
        REQUIRE(push_message(ring.producer, backends_v6(100, 20)).ok());
        std::vector<uint8_t> small(1024);
        const ReceiveResult got = pop_message(ring.consumer, Direction::command, small, decoded);
        CHECK(got.status == ReceiveStatus::rejected);
        CHECK(got.fault.error == MessageError::too_large);
    }
    // Whatever was wrong, the record is gone and the next one is read.
    REQUIRE(push_message(ring.producer, KeyReload{}).ok());
    const ReceiveResult after = next();
    CHECK(after.status == ReceiveStatus::ok);
    CHECK(std::holds_alternative<KeyReload>(decoded.message));
}

TEST_CASE("a message that breaks a rule is not written to the ring") {
    RingPair ring;
    const uint64_t before = ring.producer.index();
    const SendResult sent = push_message(ring.producer, ServiceDelete{"no spaces allowed"});
    CHECK_FALSE(sent.ok());
    CHECK(sent.message.error == MessageError::string_alphabet);
    CHECK(ring.producer.index() == before);
    CHECK(shared_load(ring.prod.index) == before);
}
