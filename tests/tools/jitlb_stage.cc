// jitlb_stage: stands in for jitd (the control daemon) in data-plane tests and
// for standalone use. It makes issuer keys, signs grants, pushes the commands
// of a JSON script into the cmd file's ring, prints the events jitlb pushes
// back, and shows the state file's header and service map. The contract is
// docs/shared-region.md and docs/grants.md; the code is common/.
//
// jitd is one long-lived process; here one "run of jitd" spans many short
// invocations. So push and events resume the command ring's producer epoch and
// the event consumer index they find in the cmd file, instead of starting a
// new epoch each time (which would drop commands jitlb has not read yet);
// `push --restart` starts a new epoch, as a restarted jitd does. Invocations
// serialise the cmd file's setup with a lock on its directory and hold an
// open-file-description lock on the control line they write (the producer's or
// the event consumer's) for as long as they run, so each index keeps one writer.
#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <variant>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "grant.h"
#include "grant_table.h"
#include "counters.h"
#include "issuer_keys.h"
#include "messages.h"
#include "shared_file.h"
#include "shared_layout.h"
#include "spsc_ring.h"

using namespace jitlb;
using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

namespace {

// --- errors ----------------------------------------------------------------------------------

// Errors carry their exit code: 2 when the command line was wrong, 1 when the
// work failed (files, script, ring, peer).
class StageError : public std::runtime_error {
  public:
    StageError(int exit_code, const std::string& message)
        : std::runtime_error(message), exit_code_(exit_code) {}
    int exit_code() const noexcept { return exit_code_; }

  private:
    int exit_code_;
};

class UsageError : public StageError {
  public:
    explicit UsageError(const std::string& message) : StageError(2, message) {}
};

class Failure : public StageError {
  public:
    explicit Failure(const std::string& message) : StageError(1, message) {}
};

std::string errno_text(int err) {
    return std::strerror(err);
}

// --- small parsers and formatters ------------------------------------------------------------

template <class... F>
struct Overloaded : F... {
    using F::operator()...;
};
template <class... F>
Overloaded(F...) -> Overloaded<F...>;

int hex_value(char c) noexcept {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Hex digits, two per byte; nothing else.
std::optional<std::vector<uint8_t>> parse_hex(std::string_view text) {
    if (text.size() % 2 != 0) return std::nullopt;
    std::vector<uint8_t> bytes;
    bytes.reserve(text.size() / 2);
    for (size_t i = 0; i < text.size(); i += 2) {
        const int hi = hex_value(text[i]);
        const int lo = hex_value(text[i + 1]);
        if (hi < 0 || lo < 0) return std::nullopt;
        bytes.push_back(static_cast<uint8_t>(hi * 16 + lo));
    }
    return bytes;
}

std::optional<GrantId> parse_grant_id(std::string_view text) {
    const auto bytes = parse_hex(text);
    if (!bytes || bytes->size() != GrantId{}.size()) return std::nullopt;
    GrantId id{};
    std::copy(bytes->begin(), bytes->end(), id.begin());
    return id;
}

// One address (no prefix length), by the grant's strict prefix parser.
std::optional<IpAddress> parse_address(std::string_view text, std::string& error) {
    if (text.find('/') != std::string_view::npos) {
        error = fmt::format("'{}' is a prefix: give one address, without '/'", text);
        return std::nullopt;
    }
    const auto prefix = parse_ip_prefix(text, &error);
    if (!prefix) return std::nullopt;
    return IpAddress{prefix->family, prefix->addr};
}

std::string format_address(IpVersion family, const std::array<uint8_t, 16>& bytes) {
    char text[INET6_ADDRSTRLEN] = {};
    const int af = family == IpVersion::v4 ? AF_INET : AF_INET6;
    if (family == IpVersion::none || inet_ntop(af, bytes.data(), text, sizeof text) == nullptr) {
        return "(no address)";
    }
    return text;
}

// "02:00:00:00:00:01".
std::optional<std::array<uint8_t, 6>> parse_mac(std::string_view text) {
    std::array<uint8_t, 6> mac{};
    if (text.size() != 17) return std::nullopt;
    for (size_t i = 0; i < mac.size(); ++i) {
        const int hi = hex_value(text[3 * i]);
        const int lo = hex_value(text[3 * i + 1]);
        if (hi < 0 || lo < 0 || (i < 5 && text[3 * i + 2] != ':')) return std::nullopt;
        mac[i] = static_cast<uint8_t>(hi * 16 + lo);
    }
    return mac;
}

std::string hex64(uint64_t value) {
    return fmt::format("{:016x}", value);
}

// A JSON value as the script wrote it, short enough for an error message.
std::string shown(const json& value) {
    std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
    if (text.size() > 60) text = text.substr(0, 57) + "...";
    return text;
}

std::string join(const std::vector<std::string>& words, std::string_view separator) {
    std::string out;
    for (const std::string& word : words) {
        if (!out.empty()) out += separator;
        out += word;
    }
    return out;
}

// a + seconds * 1000, or a usage error naming the option.
int64_t add_seconds(int64_t base_ms, int64_t seconds, std::string_view option) {
    int64_t ms = 0;
    int64_t sum = 0;
    if (__builtin_mul_overflow(seconds, int64_t{1000}, &ms) ||
        __builtin_add_overflow(base_ms, ms, &sum)) {
        throw UsageError(fmt::format("{} {}: the time overflows", option, seconds));
    }
    return sum;
}

// A user name or a numeric uid.
uid_t resolve_user(const std::string& user, std::string_view option) {
    if (!user.empty() && user.size() <= 9 &&
        std::all_of(user.begin(), user.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return static_cast<uid_t>(std::stoul(user));
    }
    if (const auto uid = uid_of_user(user)) return *uid;
    throw UsageError(fmt::format(
        "{} {}: no such user on this host (give the user jitlb runs as; tests running as "
        "root: {} root)",
        option, user, option));
}

std::string read_text_file(const std::string& path) {
    if (path == "-") return std::string(std::istreambuf_iterator<char>(std::cin), {});
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Failure(fmt::format("{}: cannot open: {}", path, errno_text(errno)));
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) throw Failure(fmt::format("{}: cannot read", path));
    return text.str();
}

void print_json_line(const ordered_json& line) {
    std::fputs(line.dump(-1, ' ', false, json::error_handler_t::replace).c_str(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
}

// Event type names ("grant_activated", ...) from the message catalogue.
std::vector<std::string> event_type_names() {
    std::vector<std::string> names;
    for (uint32_t type = 1; type < 0xFFFF; ++type) {
        const auto t = static_cast<uint16_t>(type);
        if (is_known_type(t) && type_direction(static_cast<MessageType>(t)) == Direction::event) {
            names.emplace_back(message_type_name(t));
        }
    }
    return names;
}

std::optional<RevokeReason> revoke_reason_by_name(std::string_view name) {
    for (uint16_t r = 1; r < 64; ++r) {
        if (revoke_reason_name(static_cast<RevokeReason>(r)) == name) {
            return static_cast<RevokeReason>(r);
        }
    }
    return std::nullopt;
}

std::vector<std::string> revoke_reason_names() {
    std::vector<std::string> names;
    for (uint16_t r = 1; r < 64; ++r) {
        const std::string_view name = revoke_reason_name(static_cast<RevokeReason>(r));
        if (name != "unknown") names.emplace_back(name);
    }
    return names;
}

// --- file descriptors and locks --------------------------------------------------------------

class FdGuard {
  public:
    explicit FdGuard(int fd = -1) noexcept : fd_(fd) {}
    FdGuard(FdGuard&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    FdGuard& operator=(FdGuard&& other) noexcept {
        if (this != &other) {
            reset();
            fd_ = std::exchange(other.fd_, -1);
        }
        return *this;
    }
    FdGuard(const FdGuard&) = delete;
    FdGuard& operator=(const FdGuard&) = delete;
    ~FdGuard() { reset(); }
    int get() const noexcept { return fd_; }
    void reset() noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

  private:
    int fd_;
};

// Serialises the setup of a cmd file (create, check, lay out, start) among
// jitlb_stage processes: a flock on its directory, released on return of the guard.
FdGuard lock_directory_of(const std::string& path) {
    std::filesystem::path dir = std::filesystem::path(path).parent_path();
    if (dir.empty()) dir = ".";
    FdGuard fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (fd.get() < 0) {
        throw Failure(fmt::format("{}: cannot open the directory: {} (does it exist?)",
                                  dir.string(), errno_text(errno)));
    }
    while (::flock(fd.get(), LOCK_EX) != 0) {
        if (errno != EINTR) {
            throw Failure(
                fmt::format("{}: cannot lock the directory: {}", dir.string(), errno_text(errno)));
        }
    }
    return fd;
}

// An open-file-description write lock on a byte range: held until the
// descriptor closes or it is unlocked; false when another process holds it.
bool try_lock_range(int fd, const RegionSection& range, bool lock, const std::string& path) {
    struct flock request {};
    request.l_type = lock ? F_WRLCK : F_UNLCK;
    request.l_whence = SEEK_SET;
    request.l_start = static_cast<off_t>(range.offset);
    request.l_len = static_cast<off_t>(range.bytes);
    if (::fcntl(fd, F_OFD_SETLK, &request) == 0) return true;
    if (errno == EAGAIN || errno == EACCES) return false;
    throw Failure(fmt::format("{}: cannot lock bytes {}..{}: {}", path, range.offset,
                              range.offset + range.bytes, errno_text(errno)));
}

// --- the cmd file, which this process owns ---------------------------------------------------

enum class CmdRole : uint8_t { producer, event_consumer };

std::string_view role_holder(CmdRole role) {
    return role == CmdRole::producer ? "another jitlb_stage push is writing its command ring"
                                     : "another jitlb_stage events is reading its event ring";
}

// The control line a role writes; the offsets do not depend on the ring's size.
RegionSection role_range(CmdRole role) {
    const CmdLayout layout = compute_cmd_layout(CmdSizes{});
    return role == CmdRole::producer ? layout.cmd_producer : layout.event_consumer;
}

// The sizes of a cmd file already there and sound, read before opening it as
// the writer (so that its ring size is kept unless asked otherwise).
std::optional<CmdSizes> existing_cmd_sizes(const std::string& path) {
    try {
        const SharedFile file = SharedFile::open_peer_readonly(path, geteuid());
        return attach_cmd_region(file.bytes(), path).layout.sizes;
    } catch (const RegionError&) {
        return std::nullopt;
    }
}

// create_or_open_own replaces an own file of another size and lays out one
// that is not a sound cmd file: refuse, before that, a file that was never a
// cmd file (a state file, or any file given by mistake), so that a wrong
// --cmd-file cannot destroy it. A cmd file starts with kCmdMagic, or with 0
// while its writer initialises it.
void refuse_foreign_file(const std::string& path) {
    const FdGuard fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    if (fd.get() < 0) return;  // missing (created), or refused by create_or_open_own with why
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return;
    uint64_t magic = 0;
    const ssize_t n = ::pread(fd.get(), &magic, sizeof magic, 0);
    if (n <= 0 || magic == kCmdMagic || magic == 0) return;
    throw Failure(
        fmt::format("{}: exists and is not a cmd file ({}): refusing to replace it "
                    "(check the path; remove the file if it really is a stale cmd file)",
                    path,
                    magic == kStateMagic ? "it is a state file"
                                         : fmt::format("it starts with {:016x}", magic)));
}

// The writable counterpart of a view of our own mapping.
CmdRegion writable_region(SharedFile& file, const CmdRegionView& view) {
    const auto at = [&](const void* p) {
        return file.mutable_data() + (static_cast<const uint8_t*>(p) - file.data());
    };
    CmdRegion region;
    region.layout = view.layout;
    region.header = reinterpret_cast<CmdHeader*>(at(view.header));
    region.cmd_producer = reinterpret_cast<RingProducerControl*>(at(view.cmd_producer));
    region.event_consumer = reinterpret_cast<RingConsumerControl*>(at(view.event_consumer));
    region.cmd_slots = {at(view.cmd_slots.data()), view.cmd_slots.size()};
    return region;
}

class OwnCmdFile {
  public:
    // Creates the cmd file, or re-uses it when it is ours and sound: its
    // producer epoch is resumed unless `new_epoch`, the file is new or its
    // ring has another size (`slots`; by default the size it has, or 4096).
    // Holds the lock on `role`'s control line until destroyed.
    static OwnCmdFile open(const std::string& path, std::optional<uint32_t> slots, CmdRole role,
                           bool new_epoch) {
        const FdGuard setup = lock_directory_of(path);
        refuse_foreign_file(path);
        CmdSizes sizes;
        if (slots) {
            sizes.cmd_ring_slots = *slots;
        } else if (const auto existing = existing_cmd_sizes(path)) {
            sizes = *existing;
        }
        OwnCmdFile own;
        own.path_ = path;
        own.file_ =
            SharedFile::create_or_open_own(path, compute_cmd_layout(sizes).total_bytes, 0640);
        own.lock_fd_ = FdGuard(::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
        if (own.lock_fd_.get() < 0) {
            throw Failure(
                fmt::format("{}: cannot open it to lock it: {}", path, errno_text(errno)));
        }
        if (!own.try_lock(role)) {
            throw Failure(
                fmt::format("{}: {} (each ring index has one writer): wait for it to "
                            "finish",
                            path, role_holder(role)));
        }
        std::optional<CmdRegionView> view;
        if (!own.file_.created()) {
            try {
                view = attach_cmd_region(own.file_.bytes(), path);
            } catch (const RegionError&) {
                // Not sound (another build, half-initialised): laid out afresh below.
            }
        }
        const bool resumable =
            view && view->layout.sizes == sizes && shared_load(view->cmd_producer->epoch) != 0 &&
            shared_load(view->cmd_producer->epoch) == read_epoch(view->header->region);
        if (resumable && !new_epoch) {
            own.region_ = writable_region(own.file_, *view);
        } else {
            start_cmd_region(own.file_.mutable_bytes(), sizes, new_region_epoch(), own.region_);
        }
        return own;
    }

    CmdRegion& region() noexcept { return region_; }
    bool try_lock(CmdRole role) {
        return try_lock_range(lock_fd_.get(), role_range(role), true, path_);
    }
    void unlock(CmdRole role) { try_lock_range(lock_fd_.get(), role_range(role), false, path_); }

  private:
    OwnCmdFile() = default;

    std::string path_;
    SharedFile file_;
    FdGuard lock_fd_;
    CmdRegion region_;
};

// --- the state file, jitlb's -----------------------------------------------------------------

struct PeerStateFile {
    SharedFile file;
    StateRegionView view;
};

bool transient(RegionErrc code) noexcept {
    return code == RegionErrc::not_found || code == RegionErrc::too_small ||
           code == RegionErrc::not_initialised;
}

// Opens jitlb's state file read-only after the owner and mode checks and
// attaches to it; waits up to `wait_ms` while it does not exist yet or jitlb
// is still creating it.
PeerStateFile open_state_file(const std::string& path, uid_t owner, int64_t wait_ms) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(wait_ms);
    for (;;) {
        try {
            PeerStateFile state;
            state.file = SharedFile::open_peer_readonly(path, owner);
            state.view = attach_state_region(state.file.bytes(), path, GrantTable::format_hash());
            return state;
        } catch (const RegionError& e) {
            if (!transient(e.code()) || Clock::now() >= deadline) {
                throw Failure(wait_ms > 0 ? fmt::format("{} (waited {} ms)", e.what(), wait_ms)
                                          : std::string(e.what()));
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

// "jitlb's last heartbeat was 5310 ms ago (stale: is jitlb running?)", for errors.
std::string heartbeat_note(const StateHeader& header) {
    const uint64_t beat = read_heartbeat(header);
    if (beat == 0) return "jitlb has published no heartbeat yet";
    const auto age = static_cast<int64_t>(unix_now_ms() - beat);
    return fmt::format("jitlb's last heartbeat was {} ms ago{}", age,
                       age > 3000 ? " (stale: is jitlb running?)" : "");
}

// --- region options --------------------------------------------------------------------------

struct RegionOptions {
    std::string cmd_file;
    std::string state_file;
    std::string dir;
    std::string instance = "default";
    std::string state_owner = "jitlb";
};

void add_region_options(CLI::App* sub, RegionOptions& o, bool cmd, bool state) {
    CLI::Option* cmd_opt = nullptr;
    CLI::Option* state_opt = nullptr;
    if (cmd) {
        cmd_opt = sub->add_option(
            "--cmd-file", o.cmd_file,
            "the cmd file this process writes (jitd's: <dir>/jitlb-<instance>.cmd)");
    }
    if (state) {
        state_opt =
            sub->add_option("--state-file", o.state_file,
                            "jitlb's state file, mapped read-only (<dir>/jitlb-<instance>.state)");
        sub->add_option("--state-owner", o.state_owner,
                        "the user that must own the state file (name or uid)")
            ->capture_default_str();
    }
    CLI::Option* dir_opt =
        sub->add_option("--dir", o.dir, "directory of both files, instead of the paths above");
    CLI::Option* instance_opt =
        sub->add_option("--instance", o.instance, "instance name, with --dir")
            ->capture_default_str();
    if (cmd_opt != nullptr) dir_opt->excludes(cmd_opt);
    if (state_opt != nullptr) dir_opt->excludes(state_opt);
    instance_opt->needs(dir_opt);
}

std::string from_dir(const RegionOptions& o, bool cmd) {
    if (!valid_instance_name(o.instance)) {
        throw UsageError(fmt::format("--instance '{}': must be 1 to 32 characters of [A-Za-z0-9_-]",
                                     o.instance));
    }
    return cmd ? cmd_file_path(o.dir, o.instance) : state_file_path(o.dir, o.instance);
}

std::string cmd_path(const RegionOptions& o) {
    if (!o.cmd_file.empty()) return o.cmd_file;
    if (!o.dir.empty()) return from_dir(o, true);
    throw UsageError("name the cmd file: --cmd-file PATH, or --dir DIR [--instance NAME]");
}

std::optional<std::string> state_path(const RegionOptions& o) {
    if (!o.state_file.empty()) return o.state_file;
    if (!o.dir.empty()) return from_dir(o, false);
    return std::nullopt;
}

// --- keygen ----------------------------------------------------------------------------------

struct KeygenOptions {
    std::string secret;
    std::string public_file;
    std::string comment;
};

// Appends `line` to the public key file, creating it (0644) if missing; refuses
// a file that is not regular or that group or others may write.
void append_public_line(const std::string& path, const std::string& line) {
    bool created = true;
    FdGuard fd(::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                      0644));
    if (fd.get() < 0 && errno == EEXIST) {
        created = false;
        fd = FdGuard(::open(path.c_str(), O_RDWR | O_APPEND | O_NOFOLLOW | O_CLOEXEC));
    }
    if (fd.get() < 0) throw Failure(fmt::format("{}: cannot open: {}", path, errno_text(errno)));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) {
        throw Failure(fmt::format("{}: fstat: {}", path, errno_text(errno)));
    }
    if (!S_ISREG(st.st_mode)) throw Failure(fmt::format("{}: not a regular file", path));
    if (created && ::fchmod(fd.get(), 0644) != 0) {
        throw Failure(fmt::format("{}: fchmod: {}", path, errno_text(errno)));
    }
    if (!created && (st.st_mode & 022) != 0) {
        throw Failure(
            fmt::format("{}: has mode {:04o}, so others may write it (jitlb refuses "
                        "it): run chmod go-w {}",
                        path, st.st_mode & 07777, path));
    }
    std::string text = line;
    if (!created && st.st_size > 0) {
        char last = '\n';
        if (::pread(fd.get(), &last, 1, st.st_size - 1) != 1) {
            throw Failure(fmt::format("{}: cannot read its end: {}", path, errno_text(errno)));
        }
        if (last != '\n') text.insert(0, "\n");
    }
    size_t done = 0;
    while (done < text.size()) {
        const ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw Failure(fmt::format("{}: cannot write: {}", path, errno_text(errno)));
        done += static_cast<size_t>(n);
    }
    if (::fsync(fd.get()) != 0)
        throw Failure(fmt::format("{}: fsync: {}", path, errno_text(errno)));
}

int run_keygen(const KeygenOptions& o) {
    IssuerSecretKey key = IssuerSecretKey::generate();
    const std::string line = public_key_line(key.public_key(), o.comment);
    // Everything that can be checked first is, so that a refusal leaves no file behind.
    TrustedIssuers check;
    if (const KeyFileError e = parse_public_keys(line, "--comment", check); !e.ok()) {
        throw UsageError(fmt::format("--comment: not usable on a key line ({})", e.message));
    }
    if (std::filesystem::exists(std::filesystem::symlink_status(o.public_file))) {
        TrustedIssuers existing;
        if (const KeyFileError e = read_public_key_file(o.public_file, existing); !e.ok()) {
            throw Failure(
                fmt::format("{} (fix the public key file before adding a key to it)", e.message));
        }
    }
    if (const KeyFileError e = write_secret_key_file(o.secret, key); !e.ok()) {
        throw Failure(e.message);
    }
    try {
        append_public_line(o.public_file, line);
    } catch (const Failure&) {
        ::unlink(o.secret.c_str());  // a secret without its public line helps nobody
        throw;
    }
    TrustedIssuers after;
    if (const KeyFileError e = read_public_key_file(o.public_file, after); !e.ok()) {
        throw Failure(fmt::format("the public key file no longer reads back: {}", e.message));
    }
    if (after.find(key.key_id()) == nullptr) {
        throw Failure(fmt::format("{}: key {} is not in it after appending", o.public_file,
                                  key_id_hex(key.key_id())));
    }
    ordered_json out;
    out["key_id"] = key_id_hex(key.key_id());
    out["public_key"] = public_key_base64(key.public_key());
    out["secret_file"] = o.secret;
    out["public_file"] = o.public_file;
    print_json_line(out);
    return 0;
}

// --- sign ------------------------------------------------------------------------------------

struct SignOptions {
    std::string secret;
    std::string source;
    std::string service;
    std::string subject = "jitlb_stage";
    int64_t not_before_ms = 0;
    int64_t start_in_s = 0;
    int64_t not_after_ms = 0;
    int64_t duration_s = 0;
    int64_t now_ms = 0;
    std::string grant_id;
    CLI::Option* not_before_opt = nullptr;
    CLI::Option* start_in_opt = nullptr;
    CLI::Option* not_after_opt = nullptr;
    CLI::Option* duration_opt = nullptr;
    CLI::Option* now_opt = nullptr;
};

int run_sign(const SignOptions& o) {
    std::string error;
    const auto prefix = parse_ip_prefix(o.source, &error);
    if (!prefix) throw UsageError(fmt::format("--source: {}", error));
    if (!valid_service_name(o.service)) {
        throw UsageError(fmt::format(
            "--service '{}': a service name is 1 to 31 characters of [A-Za-z0-9._-]", o.service));
    }
    if (o.not_after_opt->count() == 0 && o.duration_opt->count() == 0) {
        throw UsageError("give the end of the grant: --not-after-ms MS or --duration-s S");
    }
    const int64_t now = o.now_opt->count() > 0 ? o.now_ms : static_cast<int64_t>(unix_now_ms());

    Grant grant;
    grant.source = *prefix;
    grant.service = o.service;
    grant.subject = o.subject;
    grant.not_before_ms = o.not_before_opt->count() > 0
                              ? o.not_before_ms
                              : add_seconds(now, o.start_in_s, "--start-in-s");
    grant.not_after_ms = o.not_after_opt->count() > 0
                             ? o.not_after_ms
                             : add_seconds(grant.not_before_ms, o.duration_s, "--duration-s");
    if (o.grant_id.empty()) {
        grant.grant_id = random_grant_id();
    } else if (const auto id = parse_grant_id(o.grant_id)) {
        grant.grant_id = *id;
    } else {
        throw UsageError(fmt::format("--grant-id '{}': must be 32 hex digits", o.grant_id));
    }

    std::optional<IssuerSecretKey> key;
    if (const KeyFileError e = read_secret_key_file(o.secret, key); !e.ok()) {
        throw Failure(e.message);
    }
    SignedGrant signed_grant{};
    if (const GrantFormatError e = sign_grant(grant, *key, signed_grant);
        e != GrantFormatError::ok) {
        throw UsageError(
            fmt::format("the grant is not valid: {} ({}; not-before {} ms, "
                        "not-after {} ms)",
                        grant_format_error_message(e), grant_format_error_name(e),
                        grant.not_before_ms, grant.not_after_ms));
    }
    std::fputs((grant_to_text(signed_grant) + "\n").c_str(), stdout);
    return 0;
}

// --- push: the script ------------------------------------------------------------------------

// Everything wrong with a script, each as "script[3].vips[0].port: what".
struct Problems {
    std::vector<std::string> list;
    void add(const std::string& where, const std::string& what) {
        list.push_back(where + ": " + what);
    }
};

// Reads the fields of one JSON object, recording what is wrong under its
// path; finish() reports the fields nobody asked for.
class FieldReader {
  public:
    FieldReader(const json& object, std::string path, Problems& problems)
        : object_(object),
          path_(std::move(path)),
          problems_(problems),
          problems_before_(problems.list.size()) {}

    const std::string& path() const noexcept { return path_; }
    void fail(std::string_view key, const std::string& what) {
        problems_.add(fmt::format("{}.{}", path_, key), what);
    }
    // No problem recorded since this reader was made.
    bool clean() const noexcept { return problems_.list.size() == problems_before_; }
    // A reader for an object inside this one, e.g. "vips[0]".
    FieldReader nested(const json& object, std::string_view name) {
        return FieldReader(object, fmt::format("{}.{}", path_, name), problems_);
    }

    const json* field(std::string_view key, bool required) {
        asked_.emplace_back(key);
        const auto it = object_.find(key);
        if (it == object_.end()) {
            if (required) fail(key, "is required");
            return nullptr;
        }
        return &*it;
    }

    std::optional<std::string> string(std::string_view key, bool required) {
        const json* value = field(key, required);
        if (value == nullptr) return std::nullopt;
        if (!value->is_string()) {
            fail(key, fmt::format("must be a string (got {})", shown(*value)));
            return std::nullopt;
        }
        return value->get<std::string>();
    }

    std::optional<uint64_t> integer(std::string_view key, bool required, uint64_t min,
                                    uint64_t max) {
        const json* value = field(key, required);
        if (value == nullptr) return std::nullopt;
        if (!value->is_number_unsigned() || value->get<uint64_t>() < min ||
            value->get<uint64_t>() > max) {
            fail(key,
                 fmt::format("must be an integer from {} to {} (got {})", min, max, shown(*value)));
            return std::nullopt;
        }
        return value->get<uint64_t>();
    }

    std::optional<bool> boolean(std::string_view key) {
        const json* value = field(key, false);
        if (value == nullptr) return std::nullopt;
        if (!value->is_boolean()) {
            fail(key, fmt::format("must be true or false (got {})", shown(*value)));
            return std::nullopt;
        }
        return value->get<bool>();
    }

    // A required list of min..max elements.
    const json* list(std::string_view key, size_t min, size_t max) {
        const json* value = field(key, true);
        if (value == nullptr) return nullptr;
        if (!value->is_array() || value->size() < min || value->size() > max) {
            fail(key, fmt::format("must be a list of {} to {} entries (got {})", min, max,
                                  value->is_array() ? fmt::format("{} entries", value->size())
                                                    : shown(*value)));
            return nullptr;
        }
        return value;
    }

    // One of `names` (the error lists them).
    template <class T>
    std::optional<T> choice(std::string_view key, bool required,
                            const std::vector<std::pair<std::string, T>>& names) {
        const auto text = string(key, required);
        if (!text) return std::nullopt;
        for (const auto& [name, value] : names) {
            if (name == *text) return value;
        }
        std::vector<std::string> allowed;
        for (const auto& entry : names) allowed.push_back('"' + entry.first + '"');
        fail(key, fmt::format("must be one of {} (got \"{}\")", join(allowed, ", "), *text));
        return std::nullopt;
    }

    void finish(std::string_view what) {
        for (const auto& item : object_.items()) {
            if (std::find(asked_.begin(), asked_.end(), item.key()) == asked_.end()) {
                fail(item.key(),
                     fmt::format("unknown field of {} (its fields: {})", what, join(asked_, ", ")));
            }
        }
    }

  private:
    const json& object_;
    std::string path_;
    Problems& problems_;
    size_t problems_before_;
    std::vector<std::string> asked_;
};

std::string read_service_name(FieldReader& r, std::string_view key) {
    const auto name = r.string(key, true);
    if (name && !valid_service_name(*name)) {
        r.fail(key,
               fmt::format("must be 1 to 31 characters of [A-Za-z0-9._-] (got \"{}\")", *name));
    }
    return name.value_or("");
}

IpAddress read_address(FieldReader& r, std::string_view key) {
    const auto text = r.string(key, true);
    if (!text) return {};
    std::string error;
    const auto address = parse_address(*text, error);
    if (!address) r.fail(key, error);
    return address.value_or(IpAddress{});
}

// Each element of a list field that is an object, with its reader.
template <class F>
void for_each_object(FieldReader& r, const json& list, std::string_view key, std::string_view shape,
                     F&& read) {
    for (size_t i = 0; i < list.size(); ++i) {
        const std::string name = fmt::format("{}[{}]", key, i);
        if (!list[i].is_object()) {
            r.fail(name, fmt::format("must be an object {} (got {})", shape, shown(list[i])));
            continue;
        }
        FieldReader element = r.nested(list[i], name);
        read(element);
    }
}

ServiceSet read_service_set(FieldReader& r) {
    ServiceSet set;
    set.name = read_service_name(r, "name");
    const auto mode = r.choice<ForwardingMode>("mode", true,
                                               {{"ipip", ForwardingMode::ipip},
                                                {"gue", ForwardingMode::gue},
                                                {"l2dsr", ForwardingMode::l2dsr}});
    set.mode = mode.value_or(ForwardingMode::ipip);
    const bool gue = mode == ForwardingMode::gue;
    if (const json* port = r.field("gue_port", gue)) {
        if (!port->is_number_unsigned() || port->get<uint64_t>() > 65535 ||
            (gue && port->get<uint64_t>() == 0)) {
            r.fail("gue_port",
                   fmt::format("must be an integer from 1 to 65535 (got {})", shown(*port)));
        } else if (!gue && port->get<uint64_t>() != 0) {
            r.fail("gue_port", fmt::format("only mode \"gue\" has a port (got {})", shown(*port)));
        } else {
            set.gue_port = static_cast<uint16_t>(port->get<uint64_t>());
        }
    }
    set.maglev_table_size = static_cast<uint32_t>(
        r.integer("table_size", false, kMinMaglevTableSize, kMaxMaglevTableSize)
            .value_or(set.maglev_table_size));
    if (r.boolean("disabled").value_or(false)) set.flags |= kServiceFlagDisabled;
    if (r.boolean("answer_echo").value_or(false)) set.flags |= kServiceFlagAnswerEcho;
    if (const json* vips = r.list("vips", 1, kMaxVips)) {
        for_each_object(
            r, *vips, "vips", "{\"address\", \"port\", \"protocol\"}", [&](FieldReader& v) {
                Vip vip;
                vip.address = read_address(v, "address");
                vip.port = static_cast<uint16_t>(v.integer("port", true, 0, 65535).value_or(0));  // 0: 3-tuple
                vip.protocol =
                    v.choice<L4Protocol>("protocol", true,
                                         {{"tcp", L4Protocol::tcp}, {"udp", L4Protocol::udp}})
                        .value_or(L4Protocol::tcp);
                v.finish("a VIP");
                set.vips.push_back(vip);
            });
    }
    return set;
}

bool valid_backend_id(std::string_view id) {
    return !id.empty() && id.size() <= kMaxBackendIdLen &&
           std::all_of(id.begin(), id.end(), [](char c) { return c >= 0x21 && c <= 0x7e; });
}

BackendSet read_backend_set(FieldReader& r) {
    BackendSet set;
    set.service = read_service_name(r, "service");
    if (const json* backends = r.list("backends", 0, kMaxBackends)) {
        for_each_object(r, *backends, "backends", "{\"id\", \"address\", \"weight\", \"mac\"}",
                        [&](FieldReader& b) {
                            Backend backend;
                            backend.id = b.string("id", true).value_or("");
                            if (b.clean() && !valid_backend_id(backend.id)) {
                                b.fail("id",
                                       fmt::format("must be 1 to {} printable ASCII characters "
                                                   "without spaces (got \"{}\")",
                                                   kMaxBackendIdLen, backend.id));
                            }
                            backend.address = read_address(b, "address");
                            backend.weight = static_cast<uint32_t>(
                                b.integer("weight", false, 0, UINT32_MAX).value_or(backend.weight));
                            if (const auto mac = b.string("mac", false)) {
                                if (const auto bytes = parse_mac(*mac)) {
                                    backend.mac = *bytes;
                                } else {
                                    b.fail("mac", fmt::format("must be six hex bytes like "
                                                              "\"02:00:00:00:00:01\" (got \"{}\")",
                                                              *mac));
                                }
                            }
                            b.finish("a backend");
                            set.backends.push_back(std::move(backend));
                        });
    }
    return set;
}

GrantPush read_grant(FieldReader& r, size_t index) {
    GrantPush push;
    push.push_sequence = r.integer("push_sequence", false, 0, UINT64_MAX).value_or(index);
    const auto text = r.string("text", false);
    const auto raw_hex = r.string("raw_hex", false);
    if (text && raw_hex) {
        r.fail("raw_hex", "give \"text\" or \"raw_hex\", not both");
    } else if (text) {
        SignedGrant bytes{};
        const GrantFormatError e = grant_from_text(*text, bytes);
        if (e != GrantFormatError::ok) {
            r.fail("text", fmt::format("not a grant: {} ({}); to push malformed bytes on "
                                       "purpose, give them as \"raw_hex\"",
                                       grant_format_error_message(e), grant_format_error_name(e)));
        }
        push.grant.assign(bytes.begin(), bytes.end());
    } else if (raw_hex) {
        const auto bytes = parse_hex(*raw_hex);
        if (!bytes || bytes->empty() || bytes->size() > kMaxGrantBytes) {
            r.fail("raw_hex", fmt::format("must be 1 to {} bytes as hex digits, two per byte",
                                          kMaxGrantBytes));
        } else {
            push.grant = *bytes;
        }
    } else if (r.clean()) {
        r.fail("text", "is required (or \"raw_hex\" for bytes that are not a grant)");
    }
    return push;
}

Revoke read_revoke(FieldReader& r) {
    Revoke revoke;
    if (const auto id = r.string("grant_id", true)) {
        if (const auto parsed = parse_grant_id(*id)) {
            revoke.grant_id = *parsed;
        } else {
            r.fail("grant_id", fmt::format("must be 32 hex digits (got \"{}\")", *id));
        }
    }
    revoke.not_after_ms = r.integer("not_after_ms", true, 0, UINT64_MAX).value_or(0);
    if (const auto reason = r.string("reason", false)) {
        if (const auto value = revoke_reason_by_name(*reason)) {
            revoke.reason = *value;
        } else {
            std::vector<std::string> quoted;
            for (const std::string& name : revoke_reason_names())
                quoted.push_back('"' + name + '"');
            r.fail("reason",
                   fmt::format("must be one of {} (got \"{}\")", join(quoted, ", "), *reason));
        }
    }
    return revoke;
}

// A range of grants signed here, one per address from first_source up, for
// benchmarks and scale tests (scripts/bench): {"type": "grant_range",
// "secret": FILE, "service": NAME, "first_source": ADDR, "count": N,
// "duration_s": S} (optional "subject", "not_before_ms"). Instead of
// duration_s, "not_after_ms" with "step_ms": grant n ends at not_after_ms +
// n x step_ms (staggered expiries). "first_grant_id" (32 hex digits): grant n
// gets that id + n, so a script can revoke them without reading ids back.
void read_grant_range(FieldReader& r, size_t index, std::vector<Message>& out) {
    const auto secret = r.string("secret", true);
    const auto service = r.string("service", true);
    const auto first = r.string("first_source", true);
    const auto count = r.integer("count", true, 1, 16u << 20);
    const auto not_after = r.integer("not_after_ms", false, 1, UINT64_MAX / 4);
    const auto duration_s = r.integer("duration_s", !not_after, 1, 366ull * 86400);
    const uint64_t step_ms = r.integer("step_ms", false, 0, 86400000).value_or(0);
    const std::string subject = r.string("subject", false).value_or("bench");
    const auto not_before = r.integer("not_before_ms", false, 0, UINT64_MAX / 4);
    const auto first_id = r.string("first_grant_id", false);
    std::optional<GrantId> id_base;
    if (first_id && !(id_base = parse_grant_id(*first_id))) r.fail("first_grant_id", "must be 32 hex digits");
    if (not_after && duration_s) r.fail("duration_s", "give duration_s or not_after_ms, not both");
    if (!r.clean()) return;
    std::string error;
    const auto base = parse_ip_prefix(*first, &error);
    const unsigned full = base && base->family == IpVersion::v4 ? 32 : 128;
    if (!base || base->prefix_len != full) {
        r.fail("first_source", "must be one address (no prefix length): " + (base ? *first : error));
        return;
    }
    if (!valid_service_name(*service)) {
        r.fail("service", "a service name is 1 to 31 characters of [A-Za-z0-9._-]");
        return;
    }
    std::optional<IssuerSecretKey> key;
    if (const KeyFileError e = read_secret_key_file(*secret, key); !e.ok()) {
        r.fail("secret", e.message);
        return;
    }
    Grant grant;
    grant.service = *service;
    grant.subject = subject;
    grant.not_before_ms = static_cast<int64_t>(not_before.value_or(unix_now_ms()));
    const int64_t first_end = not_after ? static_cast<int64_t>(*not_after)
                                        : grant.not_before_ms + static_cast<int64_t>(*duration_s) * 1000;
    grant.source = *base;
    for (uint64_t n = 0; n < *count; ++n) {
        // The n-th address after first_source (carrying into higher bytes).
        std::array<uint8_t, 16>& a = grant.source.addr;
        a = base->addr;
        uint64_t carry = n;
        for (size_t i = full / 8; i-- > 0 && carry;) {
            const uint64_t v = a[i] + (carry & 0xff);
            a[i] = static_cast<uint8_t>(v);
            carry = (carry >> 8) + (v >> 8);
        }
        if (carry != 0) {
            r.fail("count", "runs past the last address of the family");
            return;
        }
        grant.not_after_ms = first_end + static_cast<int64_t>(n * step_ms);
        if (id_base) {
            grant.grant_id = *id_base;
            uint64_t add = n;
            for (size_t i = grant.grant_id.size(); i-- > 0 && add;) {
                const uint64_t v = grant.grant_id[i] + (add & 0xff);
                grant.grant_id[i] = static_cast<uint8_t>(v);
                add = (add >> 8) + (v >> 8);
            }
        } else {
            grant.grant_id = random_grant_id();
        }
        SignedGrant bytes{};
        if (const GrantFormatError e = sign_grant(grant, *key, bytes); e != GrantFormatError::ok) {
            r.fail("duration_s", fmt::format("the grant is not valid: {}", grant_format_error_message(e)));
            return;
        }
        out.push_back(GrantPush{index + n, std::vector<uint8_t>(bytes.begin(), bytes.end())});
    }
}

// The commands of a script, in order: all of them, or the problems found.
std::vector<Message> read_script(const json& script, Problems& problems) {
    std::vector<Message> messages;
    if (!script.is_array()) {
        problems.add("script", fmt::format("must be a list of commands (got {})", shown(script)));
        return messages;
    }
    static const std::vector<std::string> kTypes = {"service_set", "backend_set",    "grant",      "grant_range",
                                                    "revoke",      "key_reload",     "service_delete"};
    for (size_t i = 0; i < script.size(); ++i) {
        const std::string path = fmt::format("script[{}]", i);
        const json& entry = script[i];
        if (!entry.is_object()) {
            problems.add(path,
                         fmt::format("must be an object with a \"type\" (got {})", shown(entry)));
            continue;
        }
        FieldReader r(entry, path, problems);
        const auto type = r.string("type", true);
        if (!type) continue;
        Message message;
        if (*type == "service_set") {
            message = read_service_set(r);
        } else if (*type == "backend_set") {
            message = read_backend_set(r);
        } else if (*type == "grant") {
            message = read_grant(r, i);
        } else if (*type == "grant_range") {
            std::vector<Message> range;
            read_grant_range(r, i, range);
            r.finish("a grant_range command");
            if (r.clean()) messages.insert(messages.end(), std::make_move_iterator(range.begin()),
                                           std::make_move_iterator(range.end()));
            continue;
        } else if (*type == "revoke") {
            message = read_revoke(r);
        } else if (*type == "key_reload") {
            message = KeyReload{};
        } else if (*type == "service_delete") {
            message = ServiceDelete{read_service_name(r, "name")};
        } else {
            std::vector<std::string> quoted;
            for (const std::string& t : kTypes) quoted.push_back('"' + t + '"');
            r.fail("type",
                   fmt::format("must be one of {} (got \"{}\")", join(quoted, ", "), *type));
            continue;
        }
        r.finish(fmt::format("a {} command", *type));
        if (!r.clean()) continue;
        // The encoder's own rules, as a last word on what the fields above let through.
        if (const MessageFault fault = check_message(message); !fault.ok()) {
            problems.add(path, fmt::format("the message encoder refuses it: {}",
                                           describe_message_fault(fault)));
            continue;
        }
        messages.push_back(std::move(message));
    }
    return messages;
}

std::string_view type_name_of(const Message& message) {
    return message_type_name(static_cast<uint16_t>(message_type(message)));
}

// --- push: the ring --------------------------------------------------------------------------

struct PushOptions {
    RegionOptions region;
    uint32_t cmd_slots = kDefaultCmdRingSlots;
    std::string script;
    bool detached = false;
    bool restart = false;
    bool summary = false;
    int64_t pace_us = 0;
    uint32_t max_in_flight = 0;
    int64_t wait_ms = 5000;
    CLI::Option* cmd_slots_opt = nullptr;
};

// Grants jitlb has answered, activated or rejected (any reason): the totals its
// main lcore publishes in its counter block (docs/counters.md). They lag by up
// to a tick, so pushed - answered over-counts what is still in flight.
uint64_t published_grants_answered(const StateRegionView& view) {
    lb::WorkerCounters total{};
    lb::sum_stats_blocks(view.worker_stats, lb::StatsBlockShape::of(*view.header), total);
    return total.get(lb::Counter::grants_activated) + total.get(lb::Counter::grants_rejected);
}

// Attaches the event ring's consumer (its index is in our cmd file) before
// commands go out, so that jitlb can answer them; skipped when an events
// process holds that line: it attaches itself.
void attach_event_consumer(OwnCmdFile& own, const StateRegionView& state) {
    if (!own.try_lock(CmdRole::event_consumer)) return;
    RingConsumer consumer(state.event_slots, kRingSlotBytes, state.event_producer,
                          own.region().event_consumer);
    std::vector<uint8_t> buffer(consumer.max_record_bytes());
    RingRecord record;
    consumer.peek(buffer, record);  // attaches when jitlb's epoch is new; consumes nothing
    own.unlock(CmdRole::event_consumer);
}

int run_push(const PushOptions& o) {
    const std::string cmd = cmd_path(o.region);
    const std::optional<std::string> state = state_path(o.region);
    if (!state && !o.detached) {
        throw UsageError(
            "push needs jitlb's state file to wait for jitlb to attach to the command ring: give "
            "--state-file PATH (or --dir DIR [--instance NAME]), or --detached to write the "
            "commands without jitlb (jitlb skips what was pushed before it attached)");
    }
    std::optional<uint32_t> slots;
    if (o.cmd_slots_opt->count() > 0) {
        if (const std::string why = check_cmd_sizes(CmdSizes{o.cmd_slots}); !why.empty()) {
            throw UsageError(fmt::format("--cmd-slots {}: {}", o.cmd_slots, why));
        }
        slots = o.cmd_slots;
    }
    const uid_t owner = o.detached ? 0 : resolve_user(o.region.state_owner, "--state-owner");

    // The whole script is checked before anything is written.
    json script;
    const std::string text = read_text_file(o.script);
    try {
        script = json::parse(text);
    } catch (const json::parse_error& e) {
        throw Failure(fmt::format("{}: not JSON: {}", o.script, e.what()));
    }
    Problems problems;
    const std::vector<Message> messages = read_script(script, problems);
    if (!problems.list.empty()) {
        constexpr size_t kShown = 20;
        std::string report =
            fmt::format("{}: {} problem{}, nothing pushed:", o.script, problems.list.size(),
                        problems.list.size() == 1 ? "" : "s");
        for (size_t i = 0; i < std::min(kShown, problems.list.size()); ++i) {
            report += "\n  " + problems.list[i];
        }
        if (problems.list.size() > kShown) {
            report += fmt::format("\n  ... and {} more", problems.list.size() - kShown);
        }
        throw Failure(report);
    }

    const auto deadline = Clock::now() + std::chrono::milliseconds(o.wait_ms);
    OwnCmdFile own = OwnCmdFile::open(cmd, slots, CmdRole::producer, o.detached || o.restart);
    CmdRegion& region = own.region();
    // Detached, nobody consumes: a stand-in consumer at the start of the new epoch.
    RingConsumerControl detached_consumer{};
    std::optional<PeerStateFile> peer;
    const RingConsumerControl* consumer = &detached_consumer;
    if (o.detached) {
        detached_consumer.epoch = shared_load(region.cmd_producer->epoch);
        detached_consumer.index = shared_load(region.cmd_producer->index);
    } else {
        peer = open_state_file(*state, owner, o.wait_ms);
        consumer = peer->view.cmd_consumer;
        attach_event_consumer(own, peer->view);
    }
    RingProducer producer(region.cmd_slots, kRingSlotBytes, region.cmd_producer, consumer);
    for (size_t i = 0; i < messages.size(); ++i) {
        const size_t bytes = encoded_payload_size(messages[i]);
        if (bytes > producer.max_payload_bytes()) {
            throw Failure(
                fmt::format("{}: script[{}] ({}): {} payload bytes, more than a record may "
                            "carry in this {}-slot ring ({}: half the ring); nothing pushed",
                            cmd, i, type_name_of(messages[i]), bytes, producer.slot_count(),
                            producer.max_payload_bytes()));
        }
    }
    while (!producer.attached()) {
        if (Clock::now() >= deadline) {
            throw Failure(fmt::format(
                "{}: jitlb has not attached to the command ring (epoch {}) within {} ms; {}; "
                "does jitlb use this cmd file, and expect it to be owned by uid {}?",
                cmd, hex64(producer.epoch()), o.wait_ms, heartbeat_note(*peer->view.header),
                geteuid()));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    const auto paced_start = Clock::now();
    // Flow control: the grants pushed here that jitlb has not answered yet
    // (in the ring, taken but not verified, or being verified) stay below
    // --max-in-flight, so a full backlog never refuses one as backlog_full,
    // whatever rate jitlb's main lcore verifies at.
    const uint64_t answered_before = peer ? published_grants_answered(peer->view) : 0;
    uint64_t grants_pushed = 0;
    for (size_t i = 0; i < messages.size(); ++i) {
        const bool is_grant = std::holds_alternative<GrantPush>(messages[i]);
        if (o.max_in_flight > 0 && is_grant && peer) {
            const auto flow_deadline = Clock::now() + std::chrono::milliseconds(o.wait_ms);
            while (grants_pushed - std::min(grants_pushed, published_grants_answered(peer->view) - answered_before) >=
                   o.max_in_flight) {
                if (Clock::now() >= flow_deadline)
                    throw Failure(fmt::format("{}: script[{}]: jitlb answered no grant for {} ms ({} in "
                                              "flight); {} of {} commands pushed",
                                              cmd, i, o.wait_ms, o.max_in_flight, i, messages.size()));
                std::this_thread::sleep_for(std::chrono::microseconds(200));
            }
        }
        if (o.pace_us > 0) {
            const auto due = paced_start + std::chrono::microseconds(o.pace_us * static_cast<int64_t>(i));
            if (due - Clock::now() > std::chrono::microseconds(200))
                std::this_thread::sleep_until(due - std::chrono::microseconds(100));
            while (Clock::now() < due) {
            }
        }
        const auto message_deadline = Clock::now() + std::chrono::milliseconds(o.wait_ms);
        SendResult sent;
        for (;;) {
            sent = push_message(producer, messages[i]);
            const bool wait = !o.detached &&
                              (sent.ring.error == RingError::full ||
                               sent.ring.error == RingError::not_attached) &&
                              Clock::now() < message_deadline;
            if (sent.ok() || !sent.message.ok() || !wait) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        if (!sent.ok()) {
            const std::string why = !sent.message.ok() ? describe_message_fault(sent.message)
                                    : sent.ring.error == RingError::corrupt
                                        ? describe_ring_fault(producer.fault())
                                        : describe_push_result(sent.ring, "command ring");
            throw Failure(fmt::format("{}: script[{}] ({}): {}{}; {} of {} commands pushed", cmd, i,
                                      type_name_of(messages[i]), why,
                                      o.detached ? "" : fmt::format(" (waited {} ms)", o.wait_ms),
                                      i, messages.size()));
        }
        if (is_grant) ++grants_pushed;
        if (o.summary) continue;
        // When the command was in the ring (readable by jitlb), as Unix ns.
        const auto written = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
        ordered_json line;
        line["index"] = i;
        line["type"] = type_name_of(messages[i]);
        line["sequence"] = sent.ring.sequence;
        line["written_unix_ns"] = written;
        if (const auto* g = std::get_if<GrantPush>(&messages[i]); g != nullptr && g->grant.size() == kSignedGrantSize) {
            Grant decoded;
            if (decode_grant_record(std::span<const uint8_t>(g->grant).first(kGrantRecordSize), decoded) ==
                GrantFormatError::ok)
                line["grant_id"] = grant_id_hex(decoded.grant_id);
        }
        print_json_line(line);
    }
    if (o.summary) print_json_line(ordered_json{{"pushed", messages.size()}});
    return 0;
}

// --- events ----------------------------------------------------------------------------------

struct EventsOptions {
    RegionOptions region;
    int64_t wait_ms = 0;
    std::string until;
    CLI::Option* wait_opt = nullptr;
};

struct UntilRule {
    std::string type;
    uint64_t count = 1;
};

UntilRule parse_until(const std::string& text) {
    UntilRule rule;
    const size_t colon = text.find(':');
    rule.type = text.substr(0, colon);
    const std::vector<std::string> names = event_type_names();
    if (std::find(names.begin(), names.end(), rule.type) == names.end()) {
        throw UsageError(fmt::format("--until {}: '{}' is not an event type (one of {})", text,
                                     rule.type, join(names, ", ")));
    }
    if (colon != std::string::npos) {
        const std::string count = text.substr(colon + 1);
        const bool digits =
            !count.empty() && count.size() <= 9 &&
            std::all_of(count.begin(), count.end(), [](char c) { return c >= '0' && c <= '9'; });
        if (!digits || std::stoull(count) == 0) {
            throw UsageError(fmt::format("--until {}: the count must be a number from 1", text));
        }
        rule.count = std::stoull(count);
    }
    return rule;
}

ordered_json event_json(const DecodedMessage& decoded) {
    ordered_json j;
    j["type"] = type_name_of(decoded.message);
    std::visit(Overloaded{
                   [&](const GrantActivated& e) {
                       j["grant_id"] = grant_id_hex(e.grant_id);
                       j["service_id"] = e.service_id;
                       j["not_after_ms"] = e.not_after_ms;
                   },
                   [&](const GrantRejected& e) {
                       j["grant_id"] = grant_id_hex(e.grant_id);
                       j["reason"] = grant_reject_reason_name(e.reason);
                       j["text"] = e.text;
                   },
                   [&](const GrantRevoked& e) {
                       j["grant_id"] = grant_id_hex(e.grant_id);
                       j["reason"] = revoke_reason_name(e.reason);
                   },
                   [&](const GrantExpired& e) {
                       j["grant_id"] = grant_id_hex(e.grant_id);
                       j["not_after_ms"] = e.not_after_ms;
                   },
                   [&](const DenialSample& e) {
                       j["family"] = static_cast<unsigned>(e.family);
                       j["protocol"] = e.protocol;
                       j["reason"] = denial_reason_name(e.reason);
                       j["service_id"] = e.service_id;
                       j["source"] = format_address(e.family, e.source);
                       j["vip"] = format_address(e.family, e.vip);
                       j["vip_port"] = e.vip_port;
                       j["count"] = e.count;
                   },
                   [&](const ServiceApplied& e) {
                       j["command_sequence"] = e.command_sequence;
                       j["service_id"] = e.service_id;
                       j["generation"] = e.generation;
                       j["name"] = e.name;
                   },
                   [&](const CommandRejected& e) {
                       j["command_sequence"] = e.command_sequence;
                       j["command_type"] = message_type_name(e.command_type);
                       j["command_type_number"] = e.command_type;
                       j["reason"] = command_reject_reason_name(e.reason);
                       j["text"] = e.text;
                   },
                   [&](const KeysReloaded& e) {
                       j["command_sequence"] = e.command_sequence;
                       j["key_count"] = e.key_count;
                       j["grants_ended"] = e.grants_ended;
                   },
                   [](const auto&) {},  // commands: pop_message(Direction::event) refuses them
               },
               decoded.message);
    j["sequence"] = decoded.sequence;
    return j;
}

int run_events(const EventsOptions& o) {
    const std::string cmd = cmd_path(o.region);
    const std::optional<std::string> state = state_path(o.region);
    if (!state) {
        throw UsageError(
            "name jitlb's state file: --state-file PATH, or --dir DIR [--instance NAME]");
    }
    const std::optional<UntilRule> until =
        o.until.empty() ? std::nullopt : std::optional<UntilRule>(parse_until(o.until));
    const int64_t wait_ms = o.wait_opt->count() > 0 ? o.wait_ms : until ? 5000 : 0;
    const uid_t owner = resolve_user(o.region.state_owner, "--state-owner");

    // The state file first: without it there is nothing to read, and the cmd file is left alone.
    const PeerStateFile peer = open_state_file(*state, owner, wait_ms);
    OwnCmdFile own = OwnCmdFile::open(cmd, std::nullopt, CmdRole::event_consumer, false);
    RingConsumer consumer(peer.view.event_slots, kRingSlotBytes, peer.view.event_producer,
                          own.region().event_consumer);
    std::vector<uint8_t> buffer(consumer.max_record_bytes());
    uint64_t seen = 0;
    bool bad_events = false;
    auto last_event = Clock::now();
    for (;;) {
        DecodedMessage decoded;
        const ReceiveResult got = pop_message(consumer, Direction::event, buffer, decoded);
        if (got.status == ReceiveStatus::ring_corrupt) {
            throw Failure(
                fmt::format("{}: event ring: {}", *state, describe_ring_fault(consumer.fault())));
        }
        if (got.status == ReceiveStatus::empty) {
            if (Clock::now() - last_event >= std::chrono::milliseconds(wait_ms)) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
            continue;
        }
        last_event = Clock::now();
        if (got.status == ReceiveStatus::rejected) {
            // jitlb wrote a record its own decoder refuses: show it, and fail at the end.
            bad_events = true;
            ordered_json line;
            line["type"] = "invalid_event";
            line["record_type"] = got.type;
            line["record_version"] = got.version;
            line["error"] = describe_message_fault(got.fault);
            line["sequence"] = got.sequence;
            print_json_line(line);
            continue;
        }
        print_json_line(event_json(decoded));
        if (until && type_name_of(decoded.message) == until->type && ++seen == until->count) {
            break;
        }
    }
    if (until && seen < until->count) {
        throw Failure(fmt::format("saw {} of {} {} event{}: none came for {} ms; {}", seen,
                                  until->count, until->type, until->count == 1 ? "" : "s", wait_ms,
                                  heartbeat_note(*peer.view.header)));
    }
    if (bad_events) throw Failure("jitlb pushed events that do not decode (see invalid_event)");
    return 0;
}

// --- state -----------------------------------------------------------------------------------

struct StateOptions {
    RegionOptions region;
};

int run_state(const StateOptions& o) {
    const std::optional<std::string> path = state_path(o.region);
    if (!path) {
        throw UsageError(
            "name jitlb's state file: --state-file PATH, or --dir DIR [--instance NAME]");
    }
    const PeerStateFile peer =
        open_state_file(*path, resolve_user(o.region.state_owner, "--state-owner"), 0);
    const StateHeader& h = *peer.view.header;
    const RegionHeader& region = h.region;
    const uint64_t epoch = read_epoch(region);  // acquire: the start fields below are this run's

    ordered_json out;
    out["path"] = *path;
    out["abi_version"] = region.abi_version;
    out["layout_hash"] = hex64(region.layout_hash);
    out["total_bytes"] = region.total_bytes;
    out["file_bytes"] = peer.file.size();
    out["epoch"] = hex64(epoch);
    out["started_unix_ms"] = shared_load(region.started_unix_ms, std::memory_order_relaxed);
    out["writer_pid"] = region.writer_pid;
    out["tsc_hz"] = shared_load(h.tsc_hz, std::memory_order_relaxed);
    const uint64_t heartbeat = read_heartbeat(h);
    out["heartbeat_unix_ms"] = heartbeat;
    out["heartbeat_age_ms"] = static_cast<int64_t>(unix_now_ms() - heartbeat);
    out["clock_offset_ticks"] = read_clock_offset(h);
    out["sizes"] = {
        {"grant_table_bytes", h.grant_table_bytes},
        {"revoked_set_bytes", h.revoked_set_bytes},
        {"service_tables_bytes", h.service_tables_bytes},
        {"event_ring_slots", h.event_ring_slots},
        {"worker_stats_lines", h.worker_stats_lines},
        {"service_capacity", h.service_capacity},
    };
    out["command_ring_consumer"] = {{"index", shared_load(peer.view.cmd_consumer->index)},
                                    {"epoch", hex64(shared_load(peer.view.cmd_consumer->epoch))}};
    out["event_ring_producer"] = {{"index", shared_load(peer.view.event_producer->index)},
                                  {"epoch", hex64(shared_load(peer.view.event_producer->epoch))}};
    out["service_map_generation"] = read_service_map_generation(h);
    ordered_json services = ordered_json::object();
    ordered_json generations = ordered_json::object();
    for (size_t i = 0; i < peer.view.services.size(); ++i) {
        ServiceInfo info;
        int tries = 0;
        while (service_map_read(peer.view.services[i], info) == SeqRead::busy) {
            if (++tries == 100) {
                throw Failure(
                    fmt::format("{}: service map entry {} stayed busy (jitlb kept "
                                "rewriting it); try again",
                                *path, i));
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        if (info.service_id == 0) continue;
        const std::string name(info.name_view());
        services[name] = info.service_id;
        generations[name] = info.generation;
    }
    out["services"] = services;
    out["service_generations"] = generations;
    std::fputs((out.dump(2) + "\n").c_str(), stdout);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "jitlb_stage: stands in for jitd. Issuer keys and signed grants; commands from a JSON "
        "script into the cmd file's ring; jitlb's events and state file as JSON. Exit codes: 0 "
        "done, 1 failed, 2 wrong command line."};
    app.require_subcommand(1);

    KeygenOptions keygen;
    CLI::App* keygen_cmd = app.add_subcommand(
        "keygen",
        "make an issuer key: a secret key file (0600) and its line appended to a "
        "public key file (created 0644 if missing); prints the key id as JSON");
    keygen_cmd
        ->add_option("--secret", keygen.secret, "secret key file to create (never overwritten)")
        ->required();
    keygen_cmd->add_option("--public", keygen.public_file, "public key file to append to")
        ->required();
    keygen_cmd->add_option("--comment", keygen.comment, "comment on the key's line");

    SignOptions sign;
    CLI::App* sign_cmd = app.add_subcommand(
        "sign",
        "sign a grant with an issuer's secret key; prints its text form (jitlb-grant1:...)");
    sign_cmd->add_option("--secret", sign.secret, "the issuer's secret key file")->required();
    sign_cmd->add_option("--source", sign.source, "address or prefix: 198.51.100.0/24, 2001:db8::1")
        ->required();
    sign_cmd->add_option("--service", sign.service, "service name")->required();
    sign_cmd->add_option("--subject", sign.subject, "who asked (UTF-8, 1 to 64 bytes)")
        ->capture_default_str();
    sign.not_before_opt =
        sign_cmd->add_option("--not-before-ms", sign.not_before_ms, "start, Unix ms");
    sign.start_in_opt =
        sign_cmd->add_option("--start-in-s", sign.start_in_s,
                             "start this many seconds from now (default 0; may be negative)");
    sign.not_after_opt = sign_cmd->add_option("--not-after-ms", sign.not_after_ms, "end, Unix ms");
    sign.duration_opt = sign_cmd->add_option("--duration-s", sign.duration_s,
                                             "end this many seconds after the start");
    sign.now_opt = sign_cmd->add_option("--now-ms", sign.now_ms,
                                        "the clock, Unix ms (default: the real time)");
    sign_cmd->add_option("--grant-id", sign.grant_id, "32 hex digits (default: random)");
    sign.not_before_opt->excludes(sign.start_in_opt);
    sign.not_after_opt->excludes(sign.duration_opt);

    PushOptions push;
    CLI::App* push_cmd = app.add_subcommand(
        "push",
        "push the commands of a JSON script into the command ring, after checking all of them; "
        "waits for jitlb to attach and for room in the ring; prints one JSON line per command "
        "with its ring sequence");
    add_region_options(push_cmd, push.region, true, true);
    push.cmd_slots_opt = push_cmd->add_option(
        "--cmd-slots", push.cmd_slots,
        "command ring slots, a power of two from 64 (default: the file's, or 4096 for a new one)");
    push_cmd->add_option("--script", push.script, "JSON list of commands ('-': stdin)")->required();
    push_cmd->add_flag("--detached", push.detached,
                       "no jitlb: start a new epoch and write the commands as if a consumer stood "
                       "at its start (jitlb, attaching later, skips them); for testing the tool");
    push_cmd->add_flag("--restart", push.restart,
                       "start a new producer epoch, as a restarted jitd does");
    push_cmd
        ->add_option("--pace-us", push.pace_us,
                     "write command i at start + i x this many microseconds (a steady rate of commands)")
        ->check(CLI::NonNegativeNumber);
    push_cmd
        ->add_option("--max-in-flight", push.max_in_flight,
                     "keep at most this many grants in the ring and jitlb's verification backlog "
                     "(pushed here and not yet activated or rejected, by its stats), so none is "
                     "refused as backlog_full; at most jitlb's backlog (4096)")
        ->check(CLI::PositiveNumber);
    push_cmd->add_flag("--summary", push.summary,
                       "print one line at the end instead of one per command (large scripts)");
    push_cmd
        ->add_option("--wait-ms", push.wait_ms,
                     "how long to wait for the state file, for jitlb to attach and for room "
                     "in the ring")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);

    EventsOptions events;
    CLI::App* events_cmd = app.add_subcommand(
        "events",
        "print jitlb's events as JSON lines, consuming them from the event ring (its consumer "
        "index is in the cmd file), until none came for --wait-ms, or --until was met");
    add_region_options(events_cmd, events.region, true, true);
    events.wait_opt = events_cmd
                          ->add_option("--wait-ms", events.wait_ms,
                                       "stop after this long without events (default 0, or 5000 "
                                       "with --until); also how long "
                                       "to wait for the state file")
                          ->check(CLI::NonNegativeNumber);
    events_cmd->add_option("--until", events.until,
                           "TYPE[:COUNT]: stop after COUNT events of TYPE (e.g. "
                           "service_applied:2); exit 1 if they do not come");

    StateOptions state;
    CLI::App* state_cmd = app.add_subcommand(
        "state", "print the state file's header, ring indices and service name -> id map as JSON");
    add_region_options(state_cmd, state.region, false, true);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 2;
    }

    std::string name = "?";
    for (const CLI::App* sub : app.get_subcommands()) name = sub->get_name();
    try {
        if (keygen_cmd->parsed()) return run_keygen(keygen);
        if (sign_cmd->parsed()) return run_sign(sign);
        if (push_cmd->parsed()) return run_push(push);
        if (events_cmd->parsed()) return run_events(events);
        if (state_cmd->parsed()) return run_state(state);
    } catch (const UsageError& e) {
        fmt::print(stderr, "jitlb_stage {}: {} (see jitlb_stage {} --help)\n", name, e.what(),
                   name);
        return e.exit_code();
    } catch (const StageError& e) {
        fmt::print(stderr, "jitlb_stage {}: {}\n", name, e.what());
        return e.exit_code();
    } catch (const RegionError& e) {
        fmt::print(stderr, "jitlb_stage {}: {}\n", name, e.what());
        return 1;
    } catch (const std::exception& e) {
        fmt::print(stderr, "jitlb_stage {}: {}\n", name, e.what());
        return 1;
    }
    return 2;
}
