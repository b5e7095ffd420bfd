// Creating, checking and mapping region files. Every check is made on the open
// descriptor (fstat, fstatfs), never on the path, so that nothing can swap the
// file between the check and the mapping.
#include "shared_file.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <pwd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace jitlb {
namespace {

// Closes a descriptor unless released.
class FdGuard {
  public:
    explicit FdGuard(int fd) noexcept : fd_(fd) {}
    FdGuard(const FdGuard&) = delete;
    FdGuard& operator=(const FdGuard&) = delete;
    ~FdGuard() {
        if (fd_ >= 0) ::close(fd_);
    }
    int get() const noexcept { return fd_; }
    int release() noexcept { return std::exchange(fd_, -1); }

  private:
    int fd_;
};

std::string user_label(uid_t uid) {
    struct passwd pw {};
    struct passwd* found = nullptr;
    std::vector<char> buf(4096);
    if (getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) == 0 && found != nullptr) {
        return fmt::format("{} ({})", uid, found->pw_name);
    }
    return fmt::format("{}", uid);
}

[[noreturn]] void throw_errno(RegionErrc code, const std::string& path, std::string_view what,
                              int err, std::string_view hint) {
    throw RegionError(code, fmt::format("{}: {}: {}{}{}", path, what, std::strerror(err),
                                        hint.empty() ? "" : ": ", hint));
}

// The writer of a file, for the messages ("jitlb-x.cmd" is jitd's).
std::string_view writer_of(const std::string& path) {
    if (path.ends_with(".cmd")) return "jitd";
    if (path.ends_with(".state")) return "jitlb";
    return "its writer";
}

void check_regular(const struct stat& st, const std::string& path) {
    if (!S_ISREG(st.st_mode)) {
        throw RegionError(RegionErrc::not_regular,
                          fmt::format("{}: not a regular file (mode {:o}): refusing it; remove "
                                      "it and restart {}",
                                      path, st.st_mode, writer_of(path)));
    }
}

void check_not_writable_by_others(const struct stat& st, const std::string& path) {
    if ((st.st_mode & 022) != 0) {
        throw RegionError(
            RegionErrc::writable_by_others,
            fmt::format("{}: writable by group or others (mode {:04o}): anyone with that access "
                        "could forge its contents; refusing it (chmod 0640 {}, or remove it and "
                        "restart {})",
                        path, st.st_mode & 07777, path, writer_of(path)));
    }
}

uint64_t round_up(uint64_t value, uint64_t unit) noexcept {
    return (value + unit - 1) / unit * unit;
}

// The file's page: hugetlbfs maps (and sizes) in huge pages.
uint64_t page_bytes(int fd, bool& hugetlbfs) {
    struct statfs fs {};
    hugetlbfs = fstatfs(fd, &fs) == 0 && static_cast<uint64_t>(fs.f_type) == HUGETLBFS_MAGIC;
    if (hugetlbfs && fs.f_bsize > 0) return static_cast<uint64_t>(fs.f_bsize);
    const long page = sysconf(_SC_PAGESIZE);
    return page > 0 ? static_cast<uint64_t>(page) : 4096;
}

}  // namespace

std::string_view region_errc_name(RegionErrc code) noexcept {
    switch (code) {
        case RegionErrc::io:
            return "io";
        case RegionErrc::bad_argument:
            return "bad_argument";
        case RegionErrc::not_found:
            return "not_found";
        case RegionErrc::symlink:
            return "symlink";
        case RegionErrc::not_regular:
            return "not_regular";
        case RegionErrc::wrong_owner:
            return "wrong_owner";
        case RegionErrc::writable_by_others:
            return "writable_by_others";
        case RegionErrc::too_small:
            return "too_small";
        case RegionErrc::no_hugepages:
            return "no_hugepages";
        case RegionErrc::not_initialised:
            return "not_initialised";
        case RegionErrc::bad_magic:
            return "bad_magic";
        case RegionErrc::bad_abi:
            return "bad_abi";
        case RegionErrc::bad_layout_hash:
            return "bad_layout_hash";
        case RegionErrc::bad_header:
            return "bad_header";
    }
    return "unknown";
}

// --- directories and names ---------------------------------------------------

RegionDirs select_region_dirs(bool hugetlbfs_mounted) {
    if (hugetlbfs_mounted) {
        return {fmt::format("{}/jitd", kHugepagesDir), fmt::format("{}/jitlb", kHugepagesDir), true,
                ""};
    }
    return {std::string(kShmDir), std::string(kShmDir), false,
            fmt::format("warning: hugetlbfs is not mounted at {}: the shared region falls back "
                        "to {} (4 KiB pages: more TLB misses on the grant table); run "
                        "scripts/setup or mount -t hugetlbfs nodev {}",
                        kHugepagesDir, kShmDir, kHugepagesDir)};
}

bool is_hugetlbfs(const std::string& path) noexcept {
    struct statfs fs {};
    return statfs(path.c_str(), &fs) == 0 && static_cast<uint64_t>(fs.f_type) == HUGETLBFS_MAGIC;
}

RegionDirs detect_region_dirs() {
    return select_region_dirs(is_hugetlbfs(std::string(kHugepagesDir)));
}

bool valid_instance_name(std::string_view instance) noexcept {
    if (instance.empty() || instance.size() > 32) return false;
    for (const char c : instance) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c >= '0' && c <= '9') || c == '_' || c == '-';
        if (!ok) return false;
    }
    return true;
}

static std::string region_file_path(std::string_view dir, std::string_view instance,
                                    std::string_view suffix) {
    if (!valid_instance_name(instance)) {
        throw RegionError(RegionErrc::bad_argument,
                          fmt::format("instance name '{}' is not 1 to 32 characters of "
                                      "[A-Za-z0-9_-] (choose another --instance)",
                                      instance));
    }
    std::string_view base = dir;
    while (base.size() > 1 && base.ends_with('/')) base.remove_suffix(1);
    return fmt::format("{}/jitlb-{}.{}", base, instance, suffix);
}

std::string cmd_file_path(std::string_view dir, std::string_view instance) {
    return region_file_path(dir, instance, "cmd");
}

std::string state_file_path(std::string_view dir, std::string_view instance) {
    return region_file_path(dir, instance, "state");
}

std::optional<uid_t> uid_of_user(const std::string& name) {
    struct passwd pw {};
    struct passwd* found = nullptr;
    std::vector<char> buf(4096);
    if (getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
        return std::nullopt;
    }
    return found->pw_uid;
}

// --- SharedFile -----------------------------------------------------------------

SharedFile::SharedFile(SharedFile&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      writable_(other.writable_),
      created_(other.created_),
      hugetlbfs_(other.hugetlbfs_),
      path_(std::move(other.path_)) {}

SharedFile& SharedFile::operator=(SharedFile&& other) noexcept {
    if (this != &other) {
        release();
        fd_ = std::exchange(other.fd_, -1);
        data_ = std::exchange(other.data_, nullptr);
        size_ = std::exchange(other.size_, 0);
        writable_ = other.writable_;
        created_ = other.created_;
        hugetlbfs_ = other.hugetlbfs_;
        path_ = std::move(other.path_);
    }
    return *this;
}

SharedFile::~SharedFile() {
    release();
}

void SharedFile::release() noexcept {
    if (data_ != nullptr) munmap(data_, size_);
    if (fd_ >= 0) ::close(fd_);
    data_ = nullptr;
    fd_ = -1;
    size_ = 0;
}

SharedFile SharedFile::create_or_open_own(const std::string& path, uint64_t size, mode_t mode) {
    if ((mode & ~static_cast<mode_t>(0777)) != 0 || (mode & 022) != 0) {
        throw RegionError(RegionErrc::bad_argument,
                          fmt::format("{}: mode {:04o} would let group or others write the file "
                                      "(use 0640)",
                                      path, mode));
    }
    if (size == 0) {
        throw RegionError(RegionErrc::bad_argument, fmt::format("{}: size 0", path));
    }
    // Two rounds: a file of the wrong size is unlinked and created again.
    for (int round = 0; round < 2; ++round) {
        int raw = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
        const bool created = raw >= 0;
        if (!created) {
            if (errno != EEXIST) {
                throw_errno(RegionErrc::io, path, "cannot create", errno,
                            "does the directory exist and belong to this user? (scripts/setup "
                            "creates /dev/hugepages/jitd and /dev/hugepages/jitlb)");
            }
            FdGuard existing(::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
            if (existing.get() < 0) {
                if (errno == ELOOP) {
                    throw RegionError(RegionErrc::symlink,
                                      fmt::format("{}: is a symbolic link: refusing to follow "
                                                  "it (remove it)",
                                                  path));
                }
                if (errno == ENOENT) continue;  // removed meanwhile: create it
                throw_errno(RegionErrc::io, path, "cannot open own file", errno,
                            "remove it and restart");
            }
            struct stat st {};
            if (fstat(existing.get(), &st) != 0) {
                throw_errno(RegionErrc::io, path, "fstat", errno, "");
            }
            check_regular(st, path);
            if (st.st_uid != geteuid()) {
                throw RegionError(
                    RegionErrc::wrong_owner,
                    fmt::format("{}: owned by uid {}, not by this process's user {}: someone "
                                "else created it; refusing it (remove it and restart)",
                                path, user_label(st.st_uid), user_label(geteuid())));
            }
            check_not_writable_by_others(st, path);
            bool huge = false;
            const uint64_t want = round_up(size, page_bytes(existing.get(), huge));
            if (static_cast<uint64_t>(st.st_size) != want) {
                // Another size: a new file, so that readers of the old one keep a
                // valid mapping instead of faulting on a shrunk one.
                if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
                    throw_errno(RegionErrc::io, path, "cannot replace (file of another size)",
                                errno, "remove it and restart");
                }
                continue;
            }
            raw = existing.release();
        }
        FdGuard fd(raw);
        // The umask must not decide the mode, and a re-used file gets it back.
        if (fchmod(fd.get(), mode) != 0) throw_errno(RegionErrc::io, path, "fchmod", errno, "");

        SharedFile file;
        file.path_ = path;
        file.writable_ = true;
        file.created_ = created;
        const uint64_t bytes = round_up(size, page_bytes(fd.get(), file.hugetlbfs_));
        if (created && ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
            const int err = errno;
            ::unlink(path.c_str());
            throw_errno(RegionErrc::io, path, fmt::format("cannot size to {} bytes", bytes), err,
                        file.hugetlbfs_ ? "are enough 2 MiB hugepages free? (HUGEPAGES=N "
                                          "scripts/setup)"
                                        : "is the file system full?");
        }
        void* map =
            mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
        if (map == MAP_FAILED) {
            const int err = errno;
            if (created) ::unlink(path.c_str());
            if (file.hugetlbfs_ && err == ENOMEM) {
                throw RegionError(
                    RegionErrc::no_hugepages,
                    fmt::format("{}: cannot map {} bytes: not enough free 2 MiB hugepages (see "
                                "HugePages_Free in /proc/meminfo; raise them with "
                                "HUGEPAGES=N scripts/setup)",
                                path, bytes));
            }
            throw_errno(RegionErrc::io, path, fmt::format("cannot map {} bytes", bytes), err, "");
        }
        file.fd_ = fd.release();
        file.data_ = static_cast<uint8_t*>(map);
        file.size_ = bytes;
        return file;
    }
    throw RegionError(RegionErrc::io,
                      fmt::format("{}: the file keeps changing while being created (is another "
                                  "writer running for this instance?)",
                                  path));
}

SharedFile SharedFile::open_peer_readonly(const std::string& path, uid_t expected_uid) {
    // O_NONBLOCK: a FIFO planted at the path must not block the open.
    FdGuard fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    if (fd.get() < 0) {
        const int err = errno;
        if (err == ELOOP) {
            throw RegionError(RegionErrc::symlink,
                              fmt::format("{}: is a symbolic link: refusing to follow it "
                                          "(remove it and restart {})",
                                          path, writer_of(path)));
        }
        if (err == ENOENT) {
            throw RegionError(RegionErrc::not_found,
                              fmt::format("{}: no such file (is {} running for this instance, "
                                          "with the same directory?)",
                                          path, writer_of(path)));
        }
        if (err == EACCES) {
            throw_errno(RegionErrc::io, path, "cannot open", err,
                        "is this user in the writer's group? (scripts/setup adds jitd to group "
                        "jitlb and jitlb to group jitd)");
        }
        throw_errno(RegionErrc::io, path, "cannot open", err, "");
    }
    struct stat st {};
    if (fstat(fd.get(), &st) != 0) throw_errno(RegionErrc::io, path, "fstat", errno, "");
    check_regular(st, path);
    if (st.st_uid != expected_uid) {
        throw RegionError(RegionErrc::wrong_owner,
                          fmt::format("{}: owned by uid {}, expected uid {}: only {} may write "
                                      "this file; refusing it (remove it and restart {})",
                                      path, user_label(st.st_uid), user_label(expected_uid),
                                      writer_of(path), writer_of(path)));
    }
    check_not_writable_by_others(st, path);
    const uint64_t bytes = static_cast<uint64_t>(st.st_size);
    if (bytes < kMinRegionFileBytes) {
        throw RegionError(RegionErrc::too_small,
                          fmt::format("{}: {} bytes, shorter than a header: {} is still "
                                      "creating it (retry in a moment)",
                                      path, bytes, writer_of(path)));
    }
    void* map = mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd.get(), 0);
    if (map == MAP_FAILED) {
        throw_errno(RegionErrc::io, path, fmt::format("cannot map {} bytes read-only", bytes),
                    errno, "");
    }
    SharedFile file;
    file.path_ = path;
    file.fd_ = fd.release();
    file.data_ = static_cast<uint8_t*>(map);
    file.size_ = bytes;
    file.writable_ = false;
    bool huge = false;
    page_bytes(file.fd_, huge);
    file.hugetlbfs_ = huge;
    return file;
}

bool SharedFile::replaced_on_disk() const {
    if (fd_ < 0) return false;
    struct stat now {};
    struct stat mine {};
    if (::lstat(path_.c_str(), &now) != 0) return true;
    if (fstat(fd_, &mine) != 0) return true;
    return now.st_dev != mine.st_dev || now.st_ino != mine.st_ino;
}

}  // namespace jitlb
