// The region files (common/shared_file.h) and their layout
// (common/shared_layout.h): creation, re-use and replacement of one's own
// file; the owner, mode, symlink and type checks on the peer's; a read-only
// mapping that really is; directory selection; section alignment, the layout
// hash and header checks; writer restarts; the service map seqlock; and both
// files wired together with their rings.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "env_seconds.h"
#include "messages.h"
#include "shared_file.h"
#include "shared_layout.h"

using namespace jitlb;
namespace fs = std::filesystem;

namespace {

struct TempDir {
    TempDir() {
        char name[] = "/tmp/jitlb-region-XXXXXX";
        REQUIRE(mkdtemp(name) != nullptr);
        path = name;
    }
    ~TempDir() {
        std::error_code ignored;
        fs::remove_all(path, ignored);
    }
    std::string file(const std::string& name) const { return path + "/" + name; }
    std::string path;
};

// The RegionErrc and message of what `f` throws.
template <class F>
std::pair<RegionErrc, std::string> region_error(F&& f) {
    try {
        f();
    } catch (const RegionError& e) {
        return {e.code(), e.what()};
    }
    FAIL("no RegionError thrown");
    return {RegionErrc::io, ""};
}

bool contains(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

mode_t file_mode(const std::string& path) {
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

// A zeroed, page-aligned buffer standing in for a mapping (mmap is page
// aligned; a std::vector is not, and the region refuses it).
struct AlignedFile {
    explicit AlignedFile(size_t n) : size(n), data(static_cast<uint8_t*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096))) {
        REQUIRE(data != nullptr);
        std::memset(data, 0, size);
    }
    ~AlignedFile() { std::free(data); }
    AlignedFile(const AlignedFile&) = delete;
    AlignedFile& operator=(const AlignedFile&) = delete;
    operator std::span<uint8_t>() { return {data, size}; }
    size_t size;
    uint8_t* data;
};

StateSizes small_state_sizes() {
    StateSizes s;
    s.grant_table_bytes = 3 * 4096 + 100;
    s.revoked_set_bytes = 5000;
    s.service_tables_bytes = 8192;
    s.grant_format_hash = 0x1234;
    s.event_ring_slots = 64;
    s.worker_stats_lines = 4;
    s.service_capacity = 16;
    return s;
}

double seqlock_torture_seconds() {
    return env_seconds("JITLB_SEQLOCK_TORTURE_SECONDS", 2.0);
}

}  // namespace

// --- own files ---------------------------------------------------------------------------

TEST_CASE(
    "an own file is created with its mode whatever the umask, sized and mapped "
    "read-write") {
    TempDir dir;
    const mode_t old_umask = umask(0077);
    SharedFile file = SharedFile::create_or_open_own(dir.file("jitlb-a.state"), 5000, 0640);
    umask(old_umask);
    CHECK(file.created());
    CHECK(file.writable());
    CHECK(file.size() == 8192);  // rounded up to the page
    CHECK(file.mutable_data() != nullptr);
    CHECK(file_mode(file.path()) == 0640);
    file.mutable_data()[8191] = 1;
    CHECK(fs::file_size(file.path()) == 8192);
}

TEST_CASE("a writer re-uses its own file after a restart and finds its contents") {
    TempDir dir;
    const std::string path = dir.file("jitlb-a.state");
    {
        SharedFile file = SharedFile::create_or_open_own(path, 4096, 0640);
        std::memcpy(file.mutable_data(), "grants", 6);
    }
    SharedFile again = SharedFile::create_or_open_own(path, 4096, 0640);
    CHECK_FALSE(again.created());
    CHECK(std::memcmp(again.data(), "grants", 6) == 0);
}

TEST_CASE(
    "an own file of another size is replaced, and readers of the old one keep their "
    "mapping") {
    TempDir dir;
    const std::string path = dir.file("jitlb-a.state");
    SharedFile first = SharedFile::create_or_open_own(path, 4096, 0640);
    std::memcpy(first.mutable_data(), "old", 3);
    SharedFile reader = SharedFile::open_peer_readonly(path, getuid());
    CHECK_FALSE(reader.replaced_on_disk());

    SharedFile second = SharedFile::create_or_open_own(path, 3 * 4096, 0640);
    CHECK(second.created());
    CHECK(second.size() == 3 * 4096);
    CHECK(second.data()[0] == 0);
    CHECK(reader.replaced_on_disk());
    CHECK(std::memcmp(reader.data(), "old", 3) == 0);  // still mapped, no SIGBUS
}

TEST_CASE("an own file that is not safely ours is refused") {
    TempDir dir;
    const std::string path = dir.file("jitlb-a.state");
    SECTION("writable by group") {
        { SharedFile::create_or_open_own(path, 4096, 0640); }
        REQUIRE(::chmod(path.c_str(), 0660) == 0);
        const auto [code, message] =
            region_error([&] { SharedFile::create_or_open_own(path, 4096, 0640); });
        CHECK(code == RegionErrc::writable_by_others);
        CHECK(contains(message, path));
        CHECK(contains(message, "mode 0660"));
    }
    SECTION("a symbolic link") {
        const std::string target = dir.file("elsewhere");
        { SharedFile::create_or_open_own(target, 4096, 0640); }
        REQUIRE(::symlink(target.c_str(), path.c_str()) == 0);
        const auto [code, message] =
            region_error([&] { SharedFile::create_or_open_own(path, 4096, 0640); });
        CHECK(code == RegionErrc::symlink);
        CHECK(contains(message, "symbolic link"));
    }
    SECTION("a directory") {
        REQUIRE(::mkdir(path.c_str(), 0700) == 0);
        const auto [code, message] =
            region_error([&] { SharedFile::create_or_open_own(path, 4096, 0640); });
        CHECK(code == RegionErrc::io);
        CHECK(contains(message, "Is a directory"));
    }
    SECTION("owned by another user") {
        if (geteuid() != 0) {
            WARN("skipped: needs root to give a file away");
            return;
        }
        { SharedFile::create_or_open_own(path, 4096, 0640); }
        REQUIRE(::chown(path.c_str(), 65534, 65534) == 0);
        const auto [code, message] =
            region_error([&] { SharedFile::create_or_open_own(path, 4096, 0640); });
        CHECK(code == RegionErrc::wrong_owner);
        CHECK(contains(message, "owned by uid 65534"));
        CHECK(contains(message, "remove it"));
    }
    SECTION("a mode that lets others write") {
        CHECK(region_error([&] { SharedFile::create_or_open_own(path, 4096, 0660); }).first ==
              RegionErrc::bad_argument);
    }
}

// --- peer files ----------------------------------------------------------------------------

TEST_CASE("the peer's file is mapped read-only after the owner and mode checks") {
    TempDir dir;
    const std::string path = dir.file("jitlb-a.cmd");
    SharedFile own = SharedFile::create_or_open_own(path, 4096, 0640);
    own.mutable_data()[100] = 42;
    SharedFile peer = SharedFile::open_peer_readonly(path, getuid());
    CHECK_FALSE(peer.writable());
    CHECK(peer.mutable_data() == nullptr);
    CHECK(peer.mutable_bytes().empty());
    CHECK(peer.size() == 4096);
    CHECK(peer.data()[100] == 42);
    own.mutable_data()[100] = 43;  // shared: the reader sees the writer's stores
    CHECK(peer.data()[100] == 43);
}

TEST_CASE(
    "a peer file is refused unless it is a regular file of the expected owner that "
    "nobody else can write") {
    TempDir dir;
    const std::string path = dir.file("jitlb-a.cmd");
    { SharedFile::create_or_open_own(path, 4096, 0640); }

    SECTION("another owner") {
        const auto [code, message] =
            region_error([&] { SharedFile::open_peer_readonly(path, getuid() + 1); });
        CHECK(code == RegionErrc::wrong_owner);
        CHECK(contains(message, path));
        CHECK(contains(message, "expected uid " + std::to_string(getuid() + 1)));
        CHECK(contains(message, "only jitd may write"));
    }
    SECTION("writable by group") {
        REQUIRE(::chmod(path.c_str(), 0660) == 0);
        const auto [code, message] =
            region_error([&] { SharedFile::open_peer_readonly(path, getuid()); });
        CHECK(code == RegionErrc::writable_by_others);
        CHECK(contains(message, "chmod 0640"));
    }
    SECTION("writable by others") {
        REQUIRE(::chmod(path.c_str(), 0642) == 0);
        CHECK(region_error([&] { SharedFile::open_peer_readonly(path, getuid()); }).first ==
              RegionErrc::writable_by_others);
    }
    SECTION("a symbolic link to a good file") {
        const std::string link = dir.file("jitlb-b.cmd");
        REQUIRE(::symlink(path.c_str(), link.c_str()) == 0);
        const auto [code, message] =
            region_error([&] { SharedFile::open_peer_readonly(link, getuid()); });
        CHECK(code == RegionErrc::symlink);
        CHECK(contains(message, link));
    }
    SECTION("a FIFO, refused without blocking") {
        const std::string fifo = dir.file("jitlb-b.cmd");
        REQUIRE(::mkfifo(fifo.c_str(), 0640) == 0);
        CHECK(region_error([&] { SharedFile::open_peer_readonly(fifo, getuid()); }).first ==
              RegionErrc::not_regular);
    }
    SECTION("a directory") {
        const std::string d = dir.file("jitlb-b.cmd");
        REQUIRE(::mkdir(d.c_str(), 0750) == 0);
        CHECK(region_error([&] { SharedFile::open_peer_readonly(d, getuid()); }).first ==
              RegionErrc::not_regular);
    }
    SECTION("missing") {
        const auto [code, message] = region_error(
            [&] { SharedFile::open_peer_readonly(dir.file("jitlb-b.state"), getuid()); });
        CHECK(code == RegionErrc::not_found);
        CHECK(contains(message, "is jitlb running"));
    }
    SECTION("shorter than a header") {
        const std::string empty = dir.file("jitlb-b.state");
        const int fd = ::open(empty.c_str(), O_CREAT | O_WRONLY, 0640);
        REQUIRE(fd >= 0);
        ::close(fd);
        REQUIRE(::chmod(empty.c_str(), 0640) == 0);
        const auto [code, message] =
            region_error([&] { SharedFile::open_peer_readonly(empty, getuid()); });
        CHECK(code == RegionErrc::too_small);
        CHECK(contains(message, "retry"));
    }
}

TEST_CASE("writing through the read-only mapping kills the writer with SIGSEGV") {
    TempDir dir;
    const std::string path = dir.file("jitlb-a.state");
    SharedFile own = SharedFile::create_or_open_own(path, 4096, 0640);
    SharedFile peer = SharedFile::open_peer_readonly(path, getuid());
    const pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        // Sanitizers catch SIGSEGV and exit(1); the default action shows the signal.
        signal(SIGSEGV, SIG_DFL);
        signal(SIGBUS, SIG_DFL);
        auto* p = const_cast<volatile uint8_t*>(peer.data());
        p[10] = 1;
        _exit(0);  // reached only if the mapping were writable
    }
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGSEGV);
    CHECK(own.data()[10] == 0);
}

TEST_CASE("hugetlbfs files are sized in huge pages") {
    if (!is_hugetlbfs(std::string(kHugepagesDir)) || access("/dev/hugepages", W_OK) != 0) {
        WARN("skipped: no writable hugetlbfs at /dev/hugepages (scripts/setup mounts it)");
        return;
    }
    char name[] = "/dev/hugepages/jitlb-test-XXXXXX";
    if (mkdtemp(name) == nullptr) {
        WARN("skipped: cannot make a directory on hugetlbfs");
        return;
    }
    const std::string path = std::string(name) + "/jitlb-t.state";
    try {
        SharedFile file = SharedFile::create_or_open_own(path, 5000, 0640);
        CHECK(file.hugetlbfs());
        CHECK(file.size() == 2u << 20);
        file.mutable_data()[file.size() - 1] = 1;
        SharedFile peer = SharedFile::open_peer_readonly(path, getuid());
        CHECK(peer.hugetlbfs());
        CHECK(peer.data()[peer.size() - 1] == 1);
        SharedFile again = SharedFile::create_or_open_own(path, 5000, 0640);
        CHECK_FALSE(again.created());
    } catch (const RegionError& e) {
        if (e.code() != RegionErrc::no_hugepages) {
            ::unlink(path.c_str());
            ::rmdir(name);
            throw;
        }
        WARN("skipped: " << e.what());
    }
    ::unlink(path.c_str());
    ::rmdir(name);
}

// --- where the files live -----------------------------------------------------------------

TEST_CASE(
    "the region files go to hugetlbfs, or to /dev/shm with a warning that names the "
    "fix") {
    const RegionDirs huge = select_region_dirs(true);
    CHECK(huge.cmd_dir == "/dev/hugepages/jitd");
    CHECK(huge.state_dir == "/dev/hugepages/jitlb");
    CHECK(huge.hugetlbfs);
    CHECK(huge.warning.empty());

    const RegionDirs shm = select_region_dirs(false);
    CHECK(shm.cmd_dir == "/dev/shm");
    CHECK(shm.state_dir == "/dev/shm");
    CHECK_FALSE(shm.hugetlbfs);
    CHECK(contains(shm.warning, "run scripts/setup or mount -t hugetlbfs nodev /dev/hugepages"));

    CHECK(cmd_file_path("/dev/hugepages/jitd/", "default") ==
          "/dev/hugepages/jitd/jitlb-default.cmd");
    CHECK(state_file_path("/tmp/x", "edge-1_a") == "/tmp/x/jitlb-edge-1_a.state");
    CHECK_FALSE(is_hugetlbfs("/tmp"));
}

TEST_CASE("instance names that could name another directory are refused") {
    CHECK(valid_instance_name("default"));
    CHECK(valid_instance_name(std::string(32, 'a')));
    CHECK_FALSE(valid_instance_name(std::string(33, 'a')));
    CHECK_FALSE(valid_instance_name(""));
    CHECK_FALSE(valid_instance_name("../etc"));
    CHECK_FALSE(valid_instance_name("a/b"));
    CHECK_FALSE(valid_instance_name("a.b"));
    const auto [code, message] = region_error([] { cmd_file_path("/tmp", "../x"); });
    CHECK(code == RegionErrc::bad_argument);
    CHECK(contains(message, "'../x'"));
}

// --- layout ----------------------------------------------------------------------------------

TEST_CASE("every section is aligned, inside the file and apart from the others") {
    std::vector<StateSizes> cases = {StateSizes{}, small_state_sizes()};
    StateSizes big;
    big.grant_table_bytes = 160ull << 20;
    big.revoked_set_bytes = 33ull << 20;
    big.event_ring_slots = kRingMaxSlots;
    big.service_capacity = kMaxServiceCapacity;
    big.worker_stats_lines = 4097;
    cases.push_back(big);
    for (const StateSizes& sizes : cases) {
        const StateLayout l = compute_state_layout(sizes);
        const RegionSection sections[] = {l.header,         l.service_map, l.cmd_consumer,
                                          l.event_producer, l.event_slots, l.worker_stats,
                                          l.grant_table,    l.revoked_set, l.service_tables};
        for (size_t i = 0; i < std::size(sections); ++i) {
            CHECK(sections[i].offset % 64 == 0);
            CHECK(sections[i].offset + sections[i].bytes <= l.total_bytes);
            if (i > 0) CHECK(sections[i].offset >= sections[i - 1].offset + sections[i - 1].bytes);
        }
        CHECK(l.grant_table.offset % 4096 == 0);
        CHECK(l.revoked_set.offset % 4096 == 0);
        CHECK(l.service_tables.offset % 4096 == 0);
        CHECK(l.total_bytes % 4096 == 0);
        CHECK(l.event_slots.bytes == uint64_t{sizes.event_ring_slots} * kRingSlotBytes);
        CHECK(l.grant_table.bytes == sizes.grant_table_bytes);
    }
    const CmdLayout c = compute_cmd_layout(CmdSizes{});
    CHECK(c.cmd_producer.offset % 64 == 0);
    CHECK(c.event_consumer.offset % 64 == 0);
    CHECK(c.cmd_slots.offset % 64 == 0);
    CHECK(c.total_bytes % 4096 == 0);
}

TEST_CASE("the default layouts have the offsets docs/shared-region.md gives") {
    const CmdLayout c = compute_cmd_layout(CmdSizes{});
    CHECK(c.cmd_producer.offset == 512);
    CHECK(c.event_consumer.offset == 576);
    CHECK(c.cmd_slots.offset == 640);
    CHECK(c.cmd_slots.bytes == 1'048'576);
    CHECK(c.total_bytes == 1'052'672);

    StateSizes sizes;
    sizes.grant_table_bytes = 1000;
    sizes.revoked_set_bytes = 1000;
    const StateLayout s = compute_state_layout(sizes);
    CHECK(s.service_map.offset == 512);
    CHECK(s.service_map.bytes == 65'536);
    CHECK(s.cmd_consumer.offset == 66'048);
    CHECK(s.event_producer.offset == 66'112);
    CHECK(s.event_slots.offset == 66'176);
    CHECK(s.worker_stats.offset == 1'114'752);
    CHECK(s.worker_stats.bytes == 32'768);
    CHECK(s.grant_table.offset == 1'150'976);
    CHECK(s.revoked_set.offset == 1'150'976 + 4096);
    CHECK(s.service_tables.offset == 1'150'976 + 8192);
    CHECK(s.backend_map.offset == 1'150'976 + 8192);  // service_tables_bytes 0
    CHECK(s.backend_map.bytes == 4096 * 128);
    CHECK(s.total_bytes == 1'150'976 + 8192 + 524'288);
}

TEST_CASE("the layout hash changes when any size, offset or constant changes") {
    const auto facts = region_layout_facts();
    const std::vector<uint64_t> base(facts.begin(), facts.end());
    REQUIRE(base.size() > 60);
    const uint64_t h = hash_layout_facts(base);
    for (size_t i = 0; i < base.size(); ++i) {
        auto changed = base;
        changed[i] += 1;
        CHECK(hash_layout_facts(changed) != h);
    }
    CHECK(cmd_layout_hash() != state_layout_hash(0));
    CHECK(state_layout_hash(1) != state_layout_hash(2));
    CHECK(compute_state_layout(small_state_sizes()).layout_hash ==
          state_layout_hash(small_state_sizes().grant_format_hash));
}

TEST_CASE("impossible sizes are refused with what is wrong") {
    StateSizes s;
    s.event_ring_slots = 1000;
    CHECK(contains(check_state_sizes(s), "event_ring_slots 1000 is not a power of two"));
    s = {};
    s.event_ring_slots = 32;
    CHECK_FALSE(check_state_sizes(s).empty());
    s = {};
    s.service_capacity = 0;
    CHECK(contains(check_state_sizes(s), "service_capacity 0"));
    s = {};
    s.grant_table_bytes = kMaxGrantTableBytes + 1;
    CHECK_FALSE(check_state_sizes(s).empty());
    CHECK(region_error([&] { compute_state_layout(s); }).first == RegionErrc::bad_argument);
    CHECK_FALSE(check_cmd_sizes(CmdSizes{100}).empty());
    CHECK(check_cmd_sizes(CmdSizes{}).empty());
}

// --- headers, writers and readers ----------------------------------------------------------

TEST_CASE("a writer lays out a fresh state file and a reader attaches to it") {
    TempDir dir;
    const std::string path = state_file_path(dir.path, "t");
    const StateSizes sizes = small_state_sizes();
    const StateLayout layout = compute_state_layout(sizes);
    SharedFile own = SharedFile::create_or_open_own(path, layout.total_bytes, 0640);
    StateRegion region;
    CHECK(start_state_region(own.mutable_bytes(), sizes, 0xabc, 2'500'000'000, region) ==
          RegionStart::fresh);
    CHECK(region.layout == layout);

    SharedFile peer = SharedFile::open_peer_readonly(path, getuid());
    const StateRegionView view = attach_state_region(peer.bytes(), path, sizes.grant_format_hash);
    CHECK(view.layout == layout);
    CHECK(read_epoch(view.header->region) == 0xabc);
    CHECK(view.header->tsc_hz == 2'500'000'000);
    CHECK(view.header->region.writer_pid == static_cast<uint32_t>(getpid()));
    CHECK(read_heartbeat(*view.header) > 1'600'000'000'000);
    CHECK(view.services.size() == 16);
    CHECK(view.grant_table.data() == peer.data() + layout.grant_table.offset);
    CHECK(view.grant_table.size() == sizes.grant_table_bytes);
    CHECK(std::memcmp(peer.data(), "JITLBSTA", 8) == 0);
    CHECK(shared_load(view.event_producer->epoch) == 0xabc);

    publish_heartbeat(*region.header, 123);
    publish_clock_offset(*region.header, -42);
    CHECK(read_heartbeat(*view.header) == 123);
    CHECK(read_clock_offset(*view.header) == -42);
}

TEST_CASE("a header of another magic, ABI or layout is refused with what to do") {
    TempDir dir;
    const std::string path = state_file_path(dir.path, "t");
    const StateSizes sizes = small_state_sizes();
    SharedFile own =
        SharedFile::create_or_open_own(path, compute_state_layout(sizes).total_bytes, 0640);
    StateRegion region;
    start_state_region(own.mutable_bytes(), sizes, 1, 1, region);
    SharedFile peer = SharedFile::open_peer_readonly(path, getuid());
    RegionHeader& h = region.header->region;
    auto attach = [&] { attach_state_region(peer.bytes(), path, sizes.grant_format_hash); };

    SECTION("magic 0: initialising") {
        h.magic = 0;
        const auto [code, message] = region_error(attach);
        CHECK(code == RegionErrc::not_initialised);
        CHECK(contains(message, "retry"));
    }
    SECTION("the cmd file's magic") {
        h.magic = kCmdMagic;
        const auto [code, message] = region_error(attach);
        CHECK(code == RegionErrc::bad_magic);
        CHECK(contains(message, "other file of the pair"));
    }
    SECTION("a foreign magic") {
        h.magic = 0x1122334455667788;
        const auto [code, message] = region_error(attach);
        CHECK(code == RegionErrc::bad_magic);
        CHECK(contains(message, "1122334455667788"));
    }
    SECTION("another ABI") {
        h.abi_version = 2;
        const auto [code, message] = region_error(attach);
        CHECK(code == RegionErrc::bad_abi);
        CHECK(contains(message, "rebuild jitctl/jitd with the same jitlb version"));
    }
    SECTION("another layout hash") {
        h.layout_hash = 0xabc0000000000def;
        const auto [code, message] = region_error(attach);
        CHECK(code == RegionErrc::bad_layout_hash);
        CHECK(contains(message,
                       fmt::format("{}: state file layout abc0000000000def differs from this "
                                   "build's {:016x}: rebuild jitctl/jitd with the same jitlb "
                                   "version",
                                   path, state_layout_hash(sizes.grant_format_hash))));
    }
    SECTION("a reader with another grant table format") {
        CHECK(region_error([&] { attach_state_region(peer.bytes(), path, 0x999); }).first ==
              RegionErrc::bad_layout_hash);
    }
    SECTION("a section that is not where the sizes put it") {
        h.sections[static_cast<int>(StateSection::grant_table)].offset += 4096;
        CHECK(region_error(attach).first == RegionErrc::bad_header);
    }
    SECTION("sizes that make no layout") {
        region.header->event_ring_slots = 100;
        CHECK(region_error(attach).first == RegionErrc::bad_header);
    }
    SECTION("a total larger than the file") {
        region.header->grant_table_bytes += 1 << 20;
        h.sections[static_cast<int>(StateSection::grant_table)].bytes += 1 << 20;
        CHECK(region_error(attach).first == RegionErrc::bad_header);
    }
    SECTION("a cmd file reader on a state file") {
        const auto [code, message] = region_error([&] { attach_cmd_region(peer.bytes(), path); });
        CHECK(code == RegionErrc::bad_magic);
    }
}

TEST_CASE(
    "a restarted jitlb re-uses its state file: grants and services kept, new epoch, "
    "event ring reset") {
    TempDir dir;
    const std::string path = state_file_path(dir.path, "t");
    const StateSizes sizes = small_state_sizes();
    const uint64_t total = compute_state_layout(sizes).total_bytes;
    RingConsumerControl event_consumer{};  // jitd's side, in its own file
    std::vector<uint8_t> buf(64 * kRingSlotBytes);
    uint32_t web = 0;
    {
        SharedFile own = SharedFile::create_or_open_own(path, total, 0640);
        StateRegion region;
        REQUIRE(start_state_region(own.mutable_bytes(), sizes, 1, 1, region) == RegionStart::fresh);
        std::memset(region.grant_table.data(), 0x5a, region.grant_table.size());
        web = service_map_assign(region, "web");
        shared_store(region.cmd_consumer->index, 77);
        shared_store(region.cmd_consumer->epoch, 9);
        RingProducer events(region.event_slots, kRingSlotBytes, region.event_producer,
                            &event_consumer);
        RingConsumer jitd(std::span<const uint8_t>(region.event_slots), kRingSlotBytes,
                          region.event_producer, &event_consumer);
        RingRecord rec;
        jitd.peek(buf, rec);
        REQUIRE(push_message(events, GrantExpired{}).ok());
    }
    SharedFile own = SharedFile::create_or_open_own(path, total, 0640);
    REQUIRE_FALSE(own.created());
    StateRegion region;
    CHECK(start_state_region(own.mutable_bytes(), sizes, 2, 1, region) == RegionStart::reused);
    CHECK(read_epoch(region.header->region) == 2);
    CHECK(std::all_of(region.grant_table.begin(), region.grant_table.end(),
                      [](uint8_t b) { return b == 0x5a; }));
    uint32_t found = 0;
    CHECK(service_map_find(region.services, "web", found) == SeqRead::ok);
    CHECK(found == web);
    CHECK(shared_load(region.cmd_consumer->index) == 77);   // the command ring carries on
    CHECK(shared_load(region.event_producer->index) == 0);  // the event ring starts again
    CHECK(shared_load(region.event_producer->epoch) == 2);
    RingConsumer jitd(std::span<const uint8_t>(region.event_slots), kRingSlotBytes,
                      region.event_producer, &event_consumer);
    RingRecord rec;
    CHECK(jitd.peek(buf, rec) == RingError::empty);  // the old event is not read again
    CHECK(jitd.index() == 0);

    SECTION("other sizes: laid out afresh") {
        StateSizes bigger = sizes;
        bigger.service_capacity = 32;
        SharedFile replaced =
            SharedFile::create_or_open_own(path, compute_state_layout(bigger).total_bytes, 0640);
        StateRegion fresh;
        CHECK(start_state_region(replaced.mutable_bytes(), bigger, 3, 1, fresh) ==
              RegionStart::fresh);
        CHECK(service_map_find(fresh.services, "web", found) == SeqRead::ok);
        CHECK(found == 0);
    }
}

TEST_CASE("a restarted jitlb repairs a service map entry a crash left odd") {
    TempDir dir;
    const StateSizes sizes = small_state_sizes();
    AlignedFile file(compute_state_layout(sizes).total_bytes);
    StateRegion region;
    start_state_region(file, sizes, 1, 1, region);
    const uint32_t a = service_map_assign(region, "a");
    const uint32_t b = service_map_assign(region, "b");
    // A crash in the middle of rewriting b: seq odd, half a name.
    ServiceMapEntry& entry = region.services[b - 1];
    entry.seq += 1;
    entry.name[0] = 0x4141;
    ServiceInfo info;
    CHECK(service_map_read(entry, info) == SeqRead::busy);
    const uint64_t generation = read_service_map_generation(*region.header);

    CHECK(start_state_region(file, sizes, 2, 1, region) == RegionStart::reused);
    CHECK(entry.seq % 2 == 0);
    REQUIRE(service_map_read(entry, info) == SeqRead::ok);
    CHECK(info.service_id == 0);  // cleared: b was never used by a grant yet, or being deleted
    uint32_t found = 0;
    service_map_find(region.services, "a", found);
    CHECK(found == a);
    CHECK(read_service_map_generation(*region.header) > generation);
}

TEST_CASE("the service map assigns ids by entry, finds names and frees entries") {
    const StateSizes sizes = small_state_sizes();
    AlignedFile file(compute_state_layout(sizes).total_bytes);
    StateRegion region;
    start_state_region(file, sizes, 1, 1, region);
    const uint64_t g0 = read_service_map_generation(*region.header);
    CHECK(service_map_assign(region, "web") == 1);
    CHECK(service_map_assign(region, "dns") == 2);
    CHECK(service_map_assign(region, "web") == 1);
    CHECK(service_map_assign(region, "bad name") == 0);
    CHECK(service_map_assign(region, std::string(31, 'x')) == 3);
    CHECK(read_service_map_generation(*region.header) == g0 + 3);

    ServiceInfo info;
    REQUIRE(service_map_read(region.services[2], info) == SeqRead::ok);
    CHECK(info.name_view() == std::string(31, 'x'));
    info.generation = 7;
    service_map_write(region, 2, info);
    REQUIRE(service_map_read(region.services[2], info) == SeqRead::ok);
    CHECK(info.generation == 7);

    service_map_write(region, 0, ServiceInfo{});  // delete web
    uint32_t found = 9;
    CHECK(service_map_find(region.services, "web", found) == SeqRead::ok);
    CHECK(found == 0);
    CHECK(service_map_assign(region, "new") == 1);  // its entry is free again
    for (int i = 0; i < 13; ++i) service_map_assign(region, "s" + std::to_string(i));
    CHECK(service_map_assign(region, "one-too-many") == 0);
}

TEST_CASE("service map readers never see a torn entry while the writer rewrites it") {
    // One writer thread rewriting one entry (every payload word derived from
    // one counter), two readers checking every copy they get; under
    // ThreadSanitizer this also checks that every shared access is atomic.
    // An entry is one cache line, so on x86 a broken order rarely shows as a
    // tear here (tried: payload stored after the even sequence, 6M writes, no
    // tear); the reasoning in docs/shared-region.md carries the proof.
    // JITLB_SEQLOCK_TORTURE_SECONDS bounds it (default 2 s).
    StateSizes sizes = small_state_sizes();
    sizes.service_capacity = 1;
    AlignedFile file(compute_state_layout(sizes).total_bytes);
    StateRegion region;
    start_state_region(file, sizes, 1, 1, region);
    const std::span<const ServiceMapEntry> readonly(region.services);
    // The name: the counter in hex, twice (31 characters over four words).
    auto name_of = [](uint64_t n) { return fmt::format("{:016x}{:015x}", n, n >> 4); };
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> torn{0}, reads{0}, busy{0};

    auto reader = [&] {
        while (!stop.load(std::memory_order_relaxed)) {
            ServiceInfo info;
            if (service_map_read(readonly[0], info) == SeqRead::busy) {
                busy.fetch_add(1, std::memory_order_relaxed);
                continue;
            }
            reads.fetch_add(1, std::memory_order_relaxed);
            if (info.service_id == 0) continue;
            if (info.service_id != 1 || info.name_view() != name_of(info.generation)) {
                torn.fetch_add(1, std::memory_order_relaxed);
            }
        }
    };
    std::thread r1(reader), r2(reader);
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(seqlock_torture_seconds());
    uint64_t writes = 0;
    while (std::chrono::steady_clock::now() < deadline) {
        for (int i = 0; i < 1000; ++i) {
            ++writes;
            ServiceInfo info;
            info.service_id = 1;
            info.generation = writes * 0x9e3779b97f4a7c15ull;  // every hex digit changes
            const std::string name = name_of(info.generation);
            std::memcpy(info.name.data(), name.data(), name.size());
            service_map_write(region, 0, info);
        }
    }
    stop.store(true);
    r1.join();
    r2.join();
    CHECK(torn.load() == 0);
    CHECK(reads.load() > 1000);
    WARN("service map torture: " << writes << " writes, " << reads.load() << " reads, "
                                 << busy.load() << " busy, " << torn.load() << " torn");
}

TEST_CASE("backend map readers never see a torn entry while the writer rewrites it") {
    // As the service map's torture above: one writer rewriting one slot (every
    // word derived from one counter, a free slot now and then), two readers.
    StateSizes sizes = small_state_sizes();
    sizes.backend_capacity = 1;
    AlignedFile file(compute_state_layout(sizes).total_bytes);
    StateRegion region;
    start_state_region(file, sizes, 1, 1, region);
    const std::span<const BackendMapEntry> readonly(region.backends);
    auto id_of = [](uint64_t n) { return fmt::format("{:016x}{:016x}{:016x}", n, n >> 3, n >> 5); };
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> torn{0}, reads{0}, busy{0};
    auto reader = [&] {
        while (!stop.load(std::memory_order_relaxed)) {
            BackendSlotInfo info;
            if (backend_map_read(readonly[0], info) == SeqRead::busy) {
                busy.fetch_add(1, std::memory_order_relaxed);
                continue;
            }
            reads.fetch_add(1, std::memory_order_relaxed);
            if (info.service_id == 0) continue;
            uint64_t address = 0;
            std::memcpy(&address, info.address.bytes.data(), 8);
            if (info.id_view() != id_of(info.baseline_packets) || info.baseline_bytes != ~info.baseline_packets ||
                address != info.baseline_packets || info.service_id != (info.baseline_packets & 0xffff) + 1) {
                torn.fetch_add(1, std::memory_order_relaxed);
            }
        }
    };
    std::thread r1(reader), r2(reader);
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(seqlock_torture_seconds());
    uint64_t writes = 0;
    while (std::chrono::steady_clock::now() < deadline) {
        for (int i = 0; i < 1000; ++i) {
            ++writes;
            BackendSlotInfo info;
            if (writes % 7 != 0) {
                const uint64_t n = writes * 0x9e3779b97f4a7c15ull;
                info.baseline_packets = n;
                info.baseline_bytes = ~n;
                info.service_id = static_cast<uint32_t>(n & 0xffff) + 1;
                info.address.version = IpVersion::v6;
                std::memcpy(info.address.bytes.data(), &n, 8);
                const std::string id = id_of(n);
                std::memcpy(info.id.data(), id.data(), id.size());
            }
            backend_map_write(region, 0, info);
        }
    }
    stop.store(true);
    r1.join();
    r2.join();
    CHECK(torn.load() == 0);
    CHECK(reads.load() > 1000);
    CHECK(read_backend_map_generation(*region.header) == writes);
    WARN("backend map torture: " << writes << " writes, " << reads.load() << " reads, "
                                 << busy.load() << " busy, " << torn.load() << " torn");
}

// --- both files together -------------------------------------------------------------------

TEST_CASE("jitd's cmd file and jitlb's state file carry commands and events both ways") {
    TempDir dir;
    const std::string cmd_path = cmd_file_path(dir.path, "t");
    const std::string state_path = state_file_path(dir.path, "t");
    const StateSizes state_sizes = small_state_sizes();
    const CmdSizes cmd_sizes{64};

    // jitd: its own file, then jitlb's read-only.
    SharedFile jitd_own =
        SharedFile::create_or_open_own(cmd_path, compute_cmd_layout(cmd_sizes).total_bytes, 0640);
    CmdRegion jitd_cmd;
    CHECK(start_cmd_region(jitd_own.mutable_bytes(), cmd_sizes, 11, jitd_cmd) ==
          RegionStart::fresh);
    // jitlb: its own file, then jitd's read-only.
    SharedFile jitlb_own = SharedFile::create_or_open_own(
        state_path, compute_state_layout(state_sizes).total_bytes, 0640);
    StateRegion jitlb_state;
    start_state_region(jitlb_own.mutable_bytes(), state_sizes, 22, 1, jitlb_state);

    SharedFile jitlb_sees = SharedFile::open_peer_readonly(cmd_path, getuid());
    const CmdRegionView cmd_view = attach_cmd_region(jitlb_sees.bytes(), cmd_path);
    SharedFile jitd_sees = SharedFile::open_peer_readonly(state_path, getuid());
    const StateRegionView state_view =
        attach_state_region(jitd_sees.bytes(), state_path, state_sizes.grant_format_hash);
    CHECK(read_epoch(cmd_view.header->region) == 11);
    CHECK(read_epoch(state_view.header->region) == 22);

    // Command ring: producer and slots in jitd's file, consumer index in jitlb's.
    RingProducer commands(jitd_cmd.cmd_slots, kRingSlotBytes, jitd_cmd.cmd_producer,
                          state_view.cmd_consumer);
    RingConsumer jitlb_reads(cmd_view.cmd_slots, kRingSlotBytes, cmd_view.cmd_producer,
                             jitlb_state.cmd_consumer);
    // Event ring: producer and slots in jitlb's file, consumer index in jitd's.
    RingProducer events(jitlb_state.event_slots, kRingSlotBytes, jitlb_state.event_producer,
                        cmd_view.event_consumer);
    RingConsumer jitd_reads(state_view.event_slots, kRingSlotBytes, state_view.event_producer,
                            jitd_cmd.event_consumer);

    std::vector<uint8_t> buf(jitlb_reads.max_record_bytes());
    DecodedMessage decoded;
    CHECK(push_message(commands, KeyReload{}).ring.error == RingError::not_attached);
    CHECK(pop_message(jitlb_reads, Direction::command, buf, decoded).status ==
          ReceiveStatus::empty);  // attaches
    CHECK(pop_message(jitd_reads, Direction::event, buf, decoded).status == ReceiveStatus::empty);
    REQUIRE(commands.attached());
    REQUIRE(events.attached());

    const SendResult sent = push_message(
        commands, ServiceSet{"web",
                             ForwardingMode::ipip,
                             0,
                             65537,
                             0,
                             {{IpAddress{IpVersion::v4, {10, 0, 0, 1}}, 80, L4Protocol::tcp}}});
    REQUIRE(sent.ok());
    const ReceiveResult got = pop_message(jitlb_reads, Direction::command, buf, decoded);
    REQUIRE(got.status == ReceiveStatus::ok);
    const auto& set = std::get<ServiceSet>(decoded.message);
    const uint32_t id = service_map_assign(jitlb_state, set.name);
    REQUIRE(push_message(events, ServiceApplied{got.sequence, id, 1, set.name}).ok());

    REQUIRE(pop_message(jitd_reads, Direction::event, buf, decoded).status == ReceiveStatus::ok);
    const auto& applied = std::get<ServiceApplied>(decoded.message);
    CHECK(applied.command_sequence == sent.ring.sequence);
    uint32_t seen = 0;
    CHECK(service_map_find(state_view.services, "web", seen) == SeqRead::ok);
    CHECK(seen == applied.service_id);

    SECTION("jitd restarts on its file: the command ring starts again, events carry on") {
        CmdRegion restarted;
        CHECK(start_cmd_region(jitd_own.mutable_bytes(), cmd_sizes, 12, restarted) ==
              RegionStart::reused);
        RingProducer again(restarted.cmd_slots, kRingSlotBytes, restarted.cmd_producer,
                           state_view.cmd_consumer);
        CHECK(push_message(again, KeyReload{}).ring.error == RingError::not_attached);
        CHECK(pop_message(jitlb_reads, Direction::command, buf, decoded).status ==
              ReceiveStatus::empty);
        const SendResult reload = push_message(again, KeyReload{});
        REQUIRE(reload.ok());
        CHECK(reload.ring.sequence == 0);
        REQUIRE(pop_message(jitlb_reads, Direction::command, buf, decoded).status ==
                ReceiveStatus::ok);
        CHECK(std::holds_alternative<KeyReload>(decoded.message));
        // The event consumer index survived in jitd's file.
        REQUIRE(push_message(events, GrantExpired{}).ok());
        CHECK(pop_message(jitd_reads, Direction::event, buf, decoded).status == ReceiveStatus::ok);
    }
}

TEST_CASE("a mapping that is not page aligned is refused, not written") {
    const StateSizes sizes = small_state_sizes();
    AlignedFile file(compute_state_layout(sizes).total_bytes + 64);
    StateRegion region;
    const std::span<uint8_t> shifted(file.data + 64, file.size - 64);
    const auto [code, message] = region_error([&] { start_state_region(shifted, sizes, 1, 1, region); });
    CHECK(code == RegionErrc::bad_argument);
    CHECK_THAT(message, Catch::Matchers::Contains("not 4096-byte aligned"));
    CHECK(file.data[64] == 0);
    CHECK(region_error([&] { attach_state_region(shifted, "x", sizes.grant_format_hash); }).first ==
          RegionErrc::bad_argument);
}
