// jitd: the control daemon. Listens on a Unix stream socket for JSON calls
// (docs/api.md: one request line, one response line per connection),
// identifies each caller by SO_PEERCRED, and drives jitlb through the shared
// region. One thread: a poll loop over the listening socket and the clients,
// with a 10 ms tick for the data-plane link, expiry and scheduled pushes.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <iostream>
#include <map>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "jitd_core.h"
#include "shared_layout.h"
#include "sodium_init.h"

using namespace jitlb;
using namespace jitlb::control;

namespace {

volatile sig_atomic_t g_stop = 0;
volatile sig_atomic_t g_reload = 0;

void on_stop(int) { g_stop = 1; }
void on_hup(int) { g_reload = 1; }

constexpr size_t kMaxRequestBytes = 64 * 1024;
constexpr int64_t kClientTimeoutMs = 5000;
constexpr size_t kMaxClients = 128;

int64_t now_ms() {
    return static_cast<int64_t>(unix_now_ms());
}

void say(const std::string& line) {
    std::cerr << "jitd: " << line << std::endl;
}

struct Client {
    int fd = -1;
    Caller caller;
    std::string in;
    std::string out;
    size_t sent = 0;
    int64_t started_ms = 0;
    bool replying = false;
};

int listen_on(const JitdConfig& c) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) throw std::runtime_error(fmt::format("socket: {}", std::strerror(errno)));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (c.socket_path.size() >= sizeof addr.sun_path) {
        throw std::runtime_error(fmt::format("{}: socket: path longer than {} bytes", c.source,
                                             sizeof addr.sun_path - 1));
    }
    std::strcpy(addr.sun_path, c.socket_path.c_str());
    struct stat st {};
    if (::lstat(c.socket_path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            throw std::runtime_error(fmt::format("{} exists and is not a socket: refusing to "
                                                 "replace it (check socket in {})",
                                                 c.socket_path, c.source));
        }
        ::unlink(c.socket_path.c_str());  // stale socket of an earlier run
    }
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        throw std::runtime_error(fmt::format("bind {}: {}", c.socket_path, std::strerror(errno)));
    }
    if (!c.socket_group.empty()) {
        struct group* g = ::getgrnam(c.socket_group.c_str());
        if (!g) {
            throw std::runtime_error(fmt::format("{}: socket_group: no group '{}' on this host",
                                                 c.source, c.socket_group));
        }
        if (::chown(c.socket_path.c_str(), static_cast<uid_t>(-1), g->gr_gid) != 0) {
            throw std::runtime_error(fmt::format("chown {}: {}", c.socket_path, std::strerror(errno)));
        }
    }
    if (::chmod(c.socket_path.c_str(), c.socket_mode) != 0) {
        throw std::runtime_error(fmt::format("chmod {}: {}", c.socket_path, std::strerror(errno)));
    }
    if (::listen(fd, 64) != 0) {
        throw std::runtime_error(fmt::format("listen {}: {}", c.socket_path, std::strerror(errno)));
    }
    return fd;
}

std::optional<IssuerSecretKey> read_key(const std::string& path, const char* what) {
    if (path.empty()) return std::nullopt;
    std::optional<IssuerSecretKey> key;
    const KeyFileError e = read_secret_key_file(path, key);
    if (!e.ok()) throw std::runtime_error(fmt::format("{}: {}", what, e.message));
    return key;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"jitd: the jitlb control daemon (requests, policy, approvals, grants, audit)"};
    std::string config_path;
    bool check_only = false;
    app.add_option("-c,--config", config_path, "jitd.toml")->required();
    app.add_flag("--check", check_only, "check the config and policy, then exit");
    bool open_damaged = false;
    app.add_flag("--open-damaged-audit-log", open_damaged,
                 "start even though the audit log is damaged or shorter than the head jitd stored: "
                 "the chain continues and an audit.recovered line records the damage (save a copy "
                 "of the log first)");
    CLI11_PARSE(app, argc, argv);

    try {
        ensure_sodium();
        JitdConfig config = load_jitd_config(config_path);
        if (check_only) {
            std::cout << fmt::format("{}: ok ({} policy rules, {} services)\n", config_path,
                                     config.policy.rules().size(), config.services.size());
            return 0;
        }
        ::mkdir(config.state_dir.c_str(), 0750);
        auto store = std::make_unique<Store>(config.state_dir + "/jitd.db");
        std::optional<IssuerSecretKey> issuer = read_key(config.issuer_key, "issuer_key");
        static std::optional<IssuerSecretKey> audit_key;  // outlives the AuditLog
        audit_key = read_key(config.audit_key, "audit_key");
        AuditOptions aopts;
        aopts.checkpoint_every_lines = config.audit_checkpoint_lines;
        aopts.checkpoint_every_ms = config.audit_checkpoint_ms;
        aopts.sink_path = config.audit_sink;
        aopts.open_damaged = open_damaged;
        if (const auto head = store->audit_head()) {
            if (const auto hash = parse_audit_hash_hex(head->hash_hex)) {
                aopts.expected_head = AuditHead{head->seq, *hash};
            }
        }
        auto audit = std::make_unique<AuditLog>(
            AuditLog::open(config.audit_log, audit_key ? &*audit_key : nullptr, aopts, now_ms()));
        if (audit->recovered_bytes() > 0) {
            say(fmt::format("{}: cut a torn last line of {} bytes (recorded in the log)",
                            config.audit_log, audit->recovered_bytes()));
        }
        const auto jitlb_uid = uid_of_user(config.jitlb_user);
        if (!jitlb_uid) {
            throw std::runtime_error(fmt::format("{}: jitlb_user: no user '{}' on this host (run "
                                                 "scripts/setup, or set jitlb_user)",
                                                 config_path, config.jitlb_user));
        }
        auto link = std::make_unique<RegionLink>(RegionLinkOptions{
            config.cmd_path, config.state_path, *jitlb_uid, config.cmd_ring_slots});
        const int listen_fd = listen_on(config);
        Jitd jitd(std::move(config), std::move(issuer), std::move(store), std::move(audit),
                  std::move(link), now_ms);
        jitd.log = say;
        say(fmt::format("instance {}: listening on {}, cmd file {}, pid {}", jitd.config().instance,
                        jitd.config().socket_path, jitd.config().cmd_path, getpid()));

        struct sigaction sa {};
        sa.sa_handler = on_stop;
        sigaction(SIGINT, &sa, nullptr);
        sigaction(SIGTERM, &sa, nullptr);
        sa.sa_handler = on_hup;
        sigaction(SIGHUP, &sa, nullptr);
        signal(SIGPIPE, SIG_IGN);

        std::map<int, Client> clients;
        int64_t last_tick = 0;
        while (!g_stop) {
            if (g_reload) {
                g_reload = 0;
                const std::string why = jitd.reload_policy("signal:SIGHUP");
                say(why.empty() ? "policy reloaded" : "policy reload refused, old policy kept: " + why);
            }
            std::vector<pollfd> fds;
            fds.push_back({listen_fd, POLLIN, 0});
            for (auto& [fd, cl] : clients) {
                fds.push_back({fd, static_cast<short>(cl.replying ? POLLOUT : POLLIN), 0});
            }
            ::poll(fds.data(), fds.size(), 10);
            const int64_t now = now_ms();
            if (fds[0].revents & POLLIN) {
                for (;;) {
                    const int cfd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
                    if (cfd < 0) break;
                    if (clients.size() >= kMaxClients) {
                        ::close(cfd);  // the caller sees the connection closed and retries
                        continue;
                    }
                    ucred cred{};
                    socklen_t len = sizeof cred;
                    if (::getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
                        ::close(cfd);
                        continue;
                    }
                    Client cl;
                    cl.fd = cfd;
                    cl.caller = caller_of(cred.uid, cred.gid);
                    cl.started_ms = now;
                    clients[cfd] = std::move(cl);
                }
            }
            for (size_t i = 1; i < fds.size(); ++i) {
                auto it = clients.find(fds[i].fd);
                if (it == clients.end()) continue;
                Client& cl = it->second;
                bool done = false;
                if (!cl.replying && (fds[i].revents & (POLLIN | POLLHUP | POLLERR))) {
                    char buf[8192];
                    const ssize_t n = ::read(cl.fd, buf, sizeof buf);
                    if (n <= 0 && !(n < 0 && errno == EAGAIN)) {
                        if (cl.in.empty()) done = true;
                        else cl.in += '\n';  // a call without its newline, then EOF
                    } else if (n > 0) {
                        cl.in.append(buf, static_cast<size_t>(n));
                    }
                    const size_t nl = cl.in.find('\n');
                    nlohmann::ordered_json reply;
                    bool answer = false;
                    if (cl.in.size() > kMaxRequestBytes) {
                        reply = {{"ok", false}, {"error", {{"code", "too_large"},
                                 {"message", fmt::format("a call is at most {} bytes", kMaxRequestBytes)}}}};
                        answer = true;
                    } else if (nl != std::string::npos) {
                        const auto req = nlohmann::json::parse(cl.in.substr(0, nl), nullptr, false);
                        if (req.is_discarded()) {
                            reply = {{"ok", false}, {"error", {{"code", "bad_json"},
                                     {"message", "the call is not valid JSON (one JSON object, then a newline)"}}}};
                        } else {
                            reply = jitd.handle(req, cl.caller);
                        }
                        answer = true;
                    }
                    if (answer && !done) {
                        cl.out = reply.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
                        cl.replying = true;
                    }
                }
                if (cl.replying && (fds[i].revents & POLLOUT)) {
                    const ssize_t n = ::write(cl.fd, cl.out.data() + cl.sent, cl.out.size() - cl.sent);
                    if (n > 0) cl.sent += static_cast<size_t>(n);
                    if (n < 0 && errno != EAGAIN) done = true;
                    if (cl.sent == cl.out.size()) done = true;
                }
                if (now - cl.started_ms > kClientTimeoutMs) done = true;
                if (done) {
                    ::close(cl.fd);
                    clients.erase(it);
                }
            }
            if (now - last_tick >= 10) {
                last_tick = now;
                jitd.tick();
            }
        }
        jitd.shutdown();
        for (auto& [fd, cl] : clients) ::close(fd);
        ::close(listen_fd);
        ::unlink(jitd.config().socket_path.c_str());
        say("stopped");
        return 0;
    } catch (const std::exception& e) {
        say(fmt::format("error: {}", e.what()));
        return 1;
    }
}
