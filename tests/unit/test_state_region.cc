// The pieces of issue "Grants" together, as jitlb and jitd will use them: a
// grant signed by an issuer, verified, written into the grant table inside
// jitlb's state file, and found by another reader that maps the file
// read-only; a revocation through the same file ends it.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "grant.h"
#include "grant_table.h"
#include "issuer_keys.h"
#include "shared_file.h"
#include "shared_layout.h"

using namespace jitlb;

namespace {

struct TempDir {
    TempDir() {
        char name[] = "/tmp/jitlb-state-XXXXXX";
        REQUIRE(mkdtemp(name) != nullptr);
        path = name;
    }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
    std::string path;
};

std::span<std::byte> as_bytes(std::span<uint8_t> s) { return std::as_writable_bytes(s); }
std::span<const std::byte> as_bytes(std::span<const uint8_t> s) { return std::as_bytes(s); }

}  // namespace

TEST_CASE("a verified grant in jitlb's state file is found by a read-only reader until revoked",
          "[state]") {
    TempDir dir;
    const int64_t now = 1'790'000'000'000;  // Unix ms

    // The issuer signs a grant for 198.51.100.0/24 on service "web".
    const IssuerSecretKey issuer = IssuerSecretKey::generate();
    TrustedIssuers trusted;
    REQUIRE(trusted.add(issuer.public_key()).ok());
    Grant g;
    g.grant_id = random_grant_id();
    g.subject = "alice";
    std::string err;
    const auto prefix = parse_ip_prefix("198.51.100.0/24", &err);
    REQUIRE(prefix.has_value());
    g.source = *prefix;
    g.service = "web";
    g.not_before_ms = now - 1000;
    g.not_after_ms = now + 60'000;
    SignedGrant signed_grant;
    REQUIRE(sign_grant(g, issuer, signed_grant) == GrantFormatError::ok);

    // jitlb: its state file with the grant table inside, sized by the table.
    GrantTableConfig cfg;
    cfg.capacity = 1024;
    cfg.max_service_id = 64;
    const GrantTableSizes table_sizes = GrantTable::sizes(cfg);
    StateSizes sizes;
    sizes.grant_table_bytes = table_sizes.table_bytes;
    sizes.revoked_set_bytes = table_sizes.revoked_set_bytes;
    sizes.grant_format_hash = GrantTable::format_hash();
    sizes.service_capacity = 64;
    const std::string path = state_file_path(dir.path, "test");
    SharedFile own = SharedFile::create_or_open_own(path, compute_state_layout(sizes).total_bytes, 0640);
    StateRegion region;
    REQUIRE(start_state_region(own.mutable_bytes(), sizes, new_region_epoch(), 1000, region) ==
            RegionStart::fresh);
    GrantTableMacKey mac_key{};
    mac_key[0] = 7;
    GrantTableError table_error;
    auto writer = GrantTableWriter::create(as_bytes(region.grant_table), as_bytes(region.revoked_set),
                                           cfg, mac_key, table_error);
    REQUIRE(writer.has_value());

    // jitlb's main lcore: verify, map the service name to an id, insert.
    const VerifyResult v = verify_grant(signed_grant, trusted, VerifyPolicy{}, now);
    REQUIRE(v.ok());
    const uint32_t service_id = service_map_assign(region, v.grant.service);
    REQUIRE(service_id != 0);
    GrantEntry entry;
    entry.key = {static_cast<uint16_t>(service_id), v.grant.source.family, v.grant.source.prefix_len,
                 v.grant.source.addr};
    entry.grant_id = v.grant.grant_id;
    entry.issuer_key_id = v.grant.issuer_key_id;
    entry.not_before_ms = v.grant.not_before_ms;
    entry.not_after_ms = v.grant.not_after_ms;
    entry.record_hash = v.record_hash;
    REQUIRE(upsert_succeeded(writer->upsert(entry, now)));

    // jitctl: another mapping of the same file, read-only, after the checks.
    SharedFile peer = SharedFile::open_peer_readonly(path, getuid());
    const StateRegionView view = attach_state_region(peer.bytes(), path, GrantTable::format_hash());
    uint32_t found_id = 0;
    REQUIRE(service_map_find(view.services, "web", found_id) == SeqRead::ok);
    CHECK(found_id == service_id);
    auto reader = GrantTableReader::attach(as_bytes(view.grant_table), as_bytes(view.revoked_set),
                                           table_error);
    REQUIRE(reader.has_value());

    LookupKey inside;
    inside.family = IpVersion::v4;
    inside.service_id = static_cast<uint16_t>(service_id);
    inside.address = {198, 51, 100, 77};
    LookupKey outside = inside;
    outside.address = {198, 51, 101, 77};
    LookupKey other_service = inside;
    other_service.service_id = static_cast<uint16_t>(service_id + 1);
    const uint64_t now_ticks = static_cast<uint64_t>(now);  // 1000 ticks per second: ticks are ms
    CHECK(reader->lookup(inside, now_ticks).kind == LookupKind::granted);
    CHECK(reader->lookup(outside, now_ticks).kind == LookupKind::no_grant);
    CHECK(reader->lookup(other_service, now_ticks).kind == LookupKind::no_grant);
    CHECK(reader->lookup(inside, static_cast<uint64_t>(g.not_after_ms)).kind == LookupKind::expired);

    // A revocation by grant id: gone at once for every reader of the file.
    writer->revoke(g.grant_id, g.not_after_ms);
    CHECK(reader->lookup(inside, now_ticks).kind == LookupKind::no_grant);
    // And the same signed grant pushed again does not come back.
    CHECK(writer->upsert(entry, now) == UpsertResult::revoked_id);
    CHECK(reader->lookup(inside, now_ticks).kind == LookupKind::no_grant);
}
