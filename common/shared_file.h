// One file of the shared region (docs/shared-region.md): created and mapped
// read-write by its one writer, opened and mapped read-only by everyone else
// after checking it is a regular file owned by the expected user and writable
// by nobody else. Also where the files live: hugetlbfs, or /dev/shm with a
// warning when hugetlbfs is not mounted.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

namespace jitlb {

enum class RegionErrc : uint8_t {
    io,                  // a system call failed; the message has errno's text
    bad_argument,        // a caller's value (instance name, mode, size)
    not_found,           // the peer's file does not exist (is the peer running?)
    symlink,             // O_NOFOLLOW refused a symbolic link
    not_regular,         // a directory, FIFO, device...
    wrong_owner,         // owned by another user than the expected one
    writable_by_others,  // mode has a group or other write bit
    too_small,           // shorter than a header: the writer is still creating it
    no_hugepages,        // hugetlbfs has too few free pages for the mapping
    // Header checks (shared_layout.h).
    not_initialised,  // magic 0: the writer is (re)initialising; retry
    bad_magic,
    bad_abi,
    bad_layout_hash,
    bad_header,  // sizes or sections impossible or inconsistent
};

std::string_view region_errc_name(RegionErrc code) noexcept;

// Every region error says which file, what was wrong (with the value) and what to do.
class RegionError : public std::runtime_error {
  public:
    RegionError(RegionErrc code, const std::string& message)
        : std::runtime_error(message), code_(code) {}
    RegionErrc code() const noexcept { return code_; }

  private:
    RegionErrc code_;
};

inline constexpr std::string_view kHugepagesDir = "/dev/hugepages";
inline constexpr std::string_view kShmDir = "/dev/shm";
// A peer file shorter than this cannot hold a header (shared_layout.h checks
// its header size against it).
inline constexpr uint64_t kMinRegionFileBytes = 512;

struct RegionDirs {
    std::string cmd_dir;    // where jitd creates jitlb-<instance>.cmd
    std::string state_dir;  // where jitlb creates jitlb-<instance>.state
    bool hugetlbfs = true;
    std::string warning;  // non-empty on the /dev/shm fallback: print it
};

// /dev/hugepages/jitd and /dev/hugepages/jitlb (made by scripts/setup), or
// /dev/shm for both with a warning that names the fix. Pure, for tests.
RegionDirs select_region_dirs(bool hugetlbfs_mounted);
// statfs says hugetlbfs.
bool is_hugetlbfs(const std::string& path) noexcept;
// select_region_dirs(is_hugetlbfs("/dev/hugepages")).
RegionDirs detect_region_dirs();

// 1 to 32 characters of [A-Za-z0-9_-]: an instance can never name another directory.
bool valid_instance_name(std::string_view instance) noexcept;
// <dir>/jitlb-<instance>.cmd and .state; RegionError(bad_argument) for a bad instance.
std::string cmd_file_path(std::string_view dir, std::string_view instance);
std::string state_file_path(std::string_view dir, std::string_view instance);

// The uid of a user name (jitd, jitlb), or nothing.
std::optional<uid_t> uid_of_user(const std::string& name);

// A mapped region file: RAII over the descriptor and the mapping.
class SharedFile {
  public:
    // The writer's own file: created with O_CREAT|O_EXCL|O_NOFOLLOW and `mode`
    // (no group/other write bits), or, if it exists and is a regular file the
    // effective user owns that nobody else can write, re-used as it is (same
    // size) or replaced (other size: readers keep the old inode). The size is
    // rounded up to the file system's page (2 MiB on hugetlbfs), and the
    // mapping is read-write, shared and populated. Throws RegionError.
    static SharedFile create_or_open_own(const std::string& path, uint64_t size,
                                         mode_t mode = 0640);
    // The peer's file: O_RDONLY|O_NOFOLLOW|O_NONBLOCK, refused unless it is a
    // regular file owned by `expected_uid`, not writable by group or others,
    // and at least kMinRegionFileBytes long; mapped PROT_READ, whole. Throws
    // RegionError.
    static SharedFile open_peer_readonly(const std::string& path, uid_t expected_uid);

    SharedFile() = default;
    SharedFile(SharedFile&& other) noexcept;
    SharedFile& operator=(SharedFile&& other) noexcept;
    SharedFile(const SharedFile&) = delete;
    SharedFile& operator=(const SharedFile&) = delete;
    ~SharedFile();

    const uint8_t* data() const noexcept { return data_; }
    // Null for a read-only mapping.
    uint8_t* mutable_data() noexcept { return writable_ ? data_ : nullptr; }
    std::span<const uint8_t> bytes() const noexcept { return {data_, size_}; }
    // Empty for a read-only mapping.
    std::span<uint8_t> mutable_bytes() noexcept {
        return writable_ ? std::span<uint8_t>{data_, size_} : std::span<uint8_t>{};
    }
    // Bytes mapped: the file's size, a multiple of the file system's page.
    uint64_t size() const noexcept { return size_; }
    bool writable() const noexcept { return writable_; }
    // Own file: this call created it (new, or replaced because of its size).
    bool created() const noexcept { return created_; }
    bool hugetlbfs() const noexcept { return hugetlbfs_; }
    const std::string& path() const noexcept { return path_; }
    explicit operator bool() const noexcept { return data_ != nullptr; }

    // The path now names another file, or none: the writer re-created it and
    // readers should re-open. One stat; call it about once a second.
    bool replaced_on_disk() const;

  private:
    void release() noexcept;

    int fd_ = -1;
    uint8_t* data_ = nullptr;
    uint64_t size_ = 0;
    bool writable_ = false;
    bool created_ = false;
    bool hugetlbfs_ = false;
    std::string path_;
};

}  // namespace jitlb
