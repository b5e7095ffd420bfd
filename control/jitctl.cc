// jitctl: the command line of jitlb's control plane. Most commands are calls
// to jitd over its Unix socket (docs/api.md); keygen, sign, inspect, `audit
// verify --file`, `policy check` and stats work offline. Human output by
// default, --json for scripts. Exit codes: 0 ok, 1 jitd refused the call or
// the work failed, 2 bad command line, 3 jitd unreachable, 4 verification
// failed (audit verify, inspect), 5 a service change jitd saved that jitlb did
// not confirm in time (--wait).
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "audit_log.h"
#include "duration.h"
#include "grant.h"
#include "issuer_keys.h"
#include "policy.h"
#include "service_spec.h"
#include "shared_file.h"
#include "shared_layout.h"
#include "sodium_init.h"
#include "stats_view.h"

using namespace jitlb;
using namespace jitlb::control;
using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

namespace {

// Errors carry their exit code.
class CtlError : public std::runtime_error {
  public:
    CtlError(int code, const std::string& message) : std::runtime_error(message), code_(code) {}
    int code() const noexcept { return code_; }

  private:
    int code_;
};

struct Globals {
    std::string socket;
    bool json_out = false;
};

std::string default_socket() {
    if (const char* s = std::getenv("JITD_SOCKET"); s && *s) return s;
    return "/run/jitd/jitd.sock";
}

// One call to jitd: the request line out, the response line back.
ordered_json call(const Globals& g, const ordered_json& request) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw CtlError(3, fmt::format("socket: {}", std::strerror(errno)));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (g.socket.size() >= sizeof addr.sun_path) throw CtlError(2, "--socket: path too long");
    std::strcpy(addr.sun_path, g.socket.c_str());
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        const int err = errno;
        ::close(fd);
        throw CtlError(3, fmt::format("cannot reach jitd at {}: {} ({})", g.socket,
                                      std::strerror(err),
                                      err == EACCES
                                          ? "you may not connect: jitd's socket_mode and "
                                            "socket_group decide who may; ask to be added to "
                                            "that group, then log in again"
                                          : "is jitd running? give --socket or JITD_SOCKET"));
    }
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    const std::string line = request.dump() + "\n";
    size_t sent = 0;
    while (sent < line.size()) {
        // MSG_NOSIGNAL: a jitd that died mid-call is exit 3, not a death by SIGPIPE.
        const ssize_t n = ::send(fd, line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
        if (n <= 0) {
            ::close(fd);
            throw CtlError(3, fmt::format("writing to jitd at {}: {}", g.socket, std::strerror(errno)));
        }
        sent += static_cast<size_t>(n);
    }
    std::string reply;
    char buf[8192];
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        reply.append(buf, static_cast<size_t>(n));
    }
    ::close(fd);
    auto j = ordered_json::parse(reply, nullptr, false);  // not const: moved out on return
    if (j.is_discarded() || !j.is_object() || !j.contains("ok")) {
        throw CtlError(3, fmt::format("jitd at {} sent no valid answer (it may have closed the "
                                      "connection: too many clients?)",
                                      g.socket));
    }
    return j;
}

// Calls and, on {"ok": false}, throws with jitd's message (exit 1); with
// --json the whole answer is printed first.
ordered_json call_ok(const Globals& g, const ordered_json& request) {
    ordered_json reply = call(g, request);
    if (!reply.value("ok", false)) {
        if (g.json_out) std::cout << reply.dump(2) << "\n";
        const auto& e = reply["error"];
        throw CtlError(1, fmt::format("{} ({})", e.value("message", "refused"), e.value("code", "?")));
    }
    return reply;
}

// After a service or backend call: waits until jitlb applied the commands
// jitd pushed for it (op service_sync), up to `seconds` (0: no wait). Adds
// "applied" (and "applied_ms") to the reply and returns the phrase for people.
// jitlb rejecting the change is exit 1, no answer in time exit 5; either way
// jitd has stored the change.
std::string wait_applied(const Globals& g, ordered_json& reply, double seconds) {
    if (!reply.contains("sync")) return "";
    const ordered_json sync = reply["sync"];
    reply.erase("sync");
    if (!sync.value("jitlb_attached", false) || sync["sequences"].empty()) {
        reply["applied"] = "not_attached";
        return "stored; jitlb is not attached: it gets this when it attaches";
    }
    if (seconds <= 0) {
        reply["applied"] = "not_waited";
        return "sent to jitlb";
    }
    const auto t0 = std::chrono::steady_clock::now();
    for (;;) {
        const ordered_json s = call_ok(
            g, {{"op", "service_sync"}, {"session", sync["session"]}, {"sequences", sync["sequences"]}});
        const std::string state = s.value("state", "");
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (state == "applied") {
            reply["applied"] = "applied";
            reply["applied_ms"] = std::round(ms * 10) / 10;
            return fmt::format("applied by jitlb within {:.0f} ms", std::ceil(ms));
        }
        if (state == "rejected") {
            throw CtlError(1, fmt::format("jitd stored the change but jitlb rejected it: {}", s.value("detail", "")));
        }
        if (state == "resent") {
            reply["applied"] = "resent";
            return "jitlb re-attached meanwhile and was sent every service again";
        }
        if (ms > seconds * 1000) {
            throw CtlError(5, fmt::format("jitd stored the change, but jitlb did not confirm it within {} s "
                                          "(see jitctl status); jitd sends it again when jitlb re-attaches",
                                          seconds));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
}

int64_t duration_option(const std::string& text, const char* option) {
    std::string why;
    const auto d = parse_duration_ms(text, &why);
    if (!d) throw CtlError(2, fmt::format("{}: {}", option, why));
    return *d;
}

std::string read_all(std::istream& in) {
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::string grant_text_arg(const std::string& arg) {
    std::string text = arg;
    if (arg == "-") text = read_all(std::cin);
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
    return text;
}

void print_json(const ordered_json& j) {
    std::cout << j.dump(2) << "\n";
}

void print_grant(const ordered_json& g) {
    fmt::print("grant {}  {}  {} -> {}  {} .. {}  subject {}\n", g.value("id", ""),
               g.value("state", ""), g.value("source", ""), g.value("service", ""),
               g.value("not_before", ""), g.value("not_after", ""), g.value("subject", ""));
    if (!g.value("state_reason", "").empty()) fmt::print("  ({})\n", g.value("state_reason", ""));
}

void print_request(const ordered_json& r) {
    fmt::print("request {}  {}  {} asks {} for {} from {} (start {})  rule {}\n", r.value("id", ""),
               r.value("state", ""), r.value("user", ""), r.value("service", ""),
               r.value("duration", ""), r.value("source", ""), r.value("not_before", ""),
               r.value("rule", ""));
    if (!r.value("reason", "").empty()) fmt::print("  reason: {}\n", r.value("reason", ""));
    if (!r.value("decided_by", "").empty()) {
        fmt::print("  decided by {}: {}\n", r.value("decided_by", ""), r.value("decision_reason", ""));
    }
}

// "203.0.113.10:80/tcp", "[2001:db8::10]:443/udp" (protocol defaults to tcp);
// without a port, "203.0.113.10/udp" or "[2001:db8::10]/udp": the 3-tuple mode.
ordered_json parse_vip(const std::string& text) {
    std::string rest = text, proto = "tcp";
    if (const auto slash = rest.rfind('/'); slash != std::string::npos) {
        proto = rest.substr(slash + 1);
        rest = rest.substr(0, slash);
    }
    std::string addr, port;
    if (!rest.empty() && rest.front() == '[' && rest.back() == ']') {
        addr = rest.substr(1, rest.size() - 2);
        port = "0";
    } else if (!rest.empty() && rest.front() == '[') {
        const auto close = rest.find("]:");
        if (close == std::string::npos) throw CtlError(2, fmt::format("--vip {}: write [IPV6]:PORT/PROTO or [IPV6]/PROTO", text));
        addr = rest.substr(1, close - 1);
        port = rest.substr(close + 2);
    } else if (rest.find(':') == std::string::npos) {
        addr = rest;
        port = "0";
    } else if (rest.find(':') != rest.rfind(':')) {
        throw CtlError(2, fmt::format("--vip {}: write an IPv6 VIP in brackets: [IPV6]:PORT/PROTO or [IPV6]/PROTO", text));
    } else {
        const auto colon = rest.rfind(':');
        if (colon == std::string::npos) throw CtlError(2, fmt::format("--vip {}: write ADDR:PORT/PROTO, e.g. 203.0.113.10:80/tcp", text));
        addr = rest.substr(0, colon);
        port = rest.substr(colon + 1);
    }
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) {
        throw CtlError(2, fmt::format("--vip {}: port '{}' is not a number 1..65535", text, port));
    }
    if (std::stoul(port) > 65535 || (std::stoul(port) == 0 && port != "0"))
        throw CtlError(2, fmt::format("--vip {}: port '{}' is not a number 1..65535", text, port));
    return {{"address", addr}, {"port", std::stoul(port)}, {"protocol", proto}};
}

int64_t start_option(const std::string& text) {
    if (text.empty()) return 0;
    std::string why;
    const auto t = parse_start_time_ms(text, static_cast<int64_t>(unix_now_ms()), &why);
    if (!t) throw CtlError(2, "--start: " + why);
    return *t;
}

}  // namespace

int main(int argc, char** argv) {
    ensure_sodium();
    CLI::App app{"jitctl: ask for, grant, see, revoke and audit just-in-time access through jitlb"};
    app.require_subcommand(1);
    Globals g;
    g.socket = default_socket();
    app.add_option("--socket", g.socket, "jitd's socket (env JITD_SOCKET)")->capture_default_str();
    app.add_flag("--json", g.json_out, "machine-readable output");
    app.footer("Exit codes: 0 ok, 1 refused or failed, 2 bad command line, 3 jitd unreachable, 4 verification failed.");

    int rc = 0;
    auto run = [&](auto fn) { return [&rc, fn]() { rc = fn(); }; };

    // keygen
    auto* keygen = app.add_subcommand("keygen", "make an Ed25519 key pair (issuer or audit key)");
    std::string key_out, key_comment;
    keygen->add_option("--out", key_out, "secret key file to create (0600); the public key goes to FILE.pub")->required();
    keygen->add_option("--comment", key_comment, "comment on the public key line");
    keygen->callback(run([&] {
        IssuerSecretKey key = IssuerSecretKey::generate();
        if (KeyFileError e = write_secret_key_file(key_out, key); !e.ok()) throw CtlError(1, e.message);
        if (KeyFileError e = write_public_key_file(key_out + ".pub", key.public_key(), key_comment); !e.ok()) {
            throw CtlError(1, e.message);
        }
        if (g.json_out) {
            print_json({{"secret", key_out}, {"public", key_out + ".pub"}, {"key_id", key_id_hex(key.key_id())},
                        {"public_key", public_key_base64(key.public_key())}});
        } else {
            fmt::print("key {} written: secret {}, public {}\n", key_id_hex(key.key_id()), key_out, key_out + ".pub");
        }
        return 0;
    }));

    // request
    auto* request = app.add_subcommand("request", "ask for access to a service");
    std::string r_service, r_source, r_for, r_start, r_reason;
    request->add_option("SERVICE", r_service, "service name")->required();
    request->add_option("--source", r_source, "your address or prefix, e.g. 198.51.100.7")->required();
    request->add_option("--for", r_for, "how long, e.g. 15m, 1h30m")->required();
    request->add_option("--start", r_start, "when: now (default), +10m, or 2026-12-06T14:00:00Z");
    request->add_option("--reason", r_reason, "why (policy may require one)");
    request->callback(run([&] {
        ordered_json req{{"op", "request"}, {"service", r_service}, {"source", r_source},
                         {"duration_ms", duration_option(r_for, "--for")}, {"reason", r_reason}};
        if (!r_start.empty()) req["start_ms"] = start_option(r_start);
        const ordered_json reply = call_ok(g, req);
        if (g.json_out) return print_json(reply), 0;
        print_request(reply["request"]);
        if (reply.contains("grant")) {
            print_grant(reply["grant"]);
            fmt::print("{}\n", reply["grant"].value("text", ""));
        } else {
            fmt::print("{}\n", reply.value("message", ""));
        }
        return 0;
    }));

    // withdraw, approve, deny
    std::string d_id, d_reason;
    for (const char* name : {"withdraw", "approve", "deny"}) {
        const std::string op = name;
        auto* sub = app.add_subcommand(op, op == "withdraw" ? "withdraw your request (revokes its grant)"
                                           : op == "approve" ? "approve a pending request"
                                                             : "deny a pending request");
        sub->add_option("ID", d_id, "request id")->required();
        auto* reason = sub->add_option("--reason", d_reason, "why");
        if (op == "deny") reason->required();
        sub->callback(run([&, op] {
            const ordered_json reply = call_ok(g, {{"op", op}, {"id", d_id}, {"reason", d_reason}});
            if (g.json_out) return print_json(reply), 0;
            print_request(reply["request"]);
            if (reply.contains("grant")) print_grant(reply["grant"]);
            return 0;
        }));
    }

    // ls
    auto* ls = app.add_subcommand("ls", "list requests or grants");
    std::string ls_what;
    bool ls_all = false;
    ls->add_option("WHAT", ls_what, "requests or grants")->required()->check(CLI::IsMember({"requests", "grants"}));
    ls->add_flag("--all", ls_all, "include history (ended grants, decided requests)");
    ls->callback(run([&] {
        const ordered_json reply = call_ok(g, {{"op", "ls_" + ls_what}, {"all", ls_all}});
        if (g.json_out) return print_json(reply), 0;
        const auto& list = reply[ls_what];
        if (list.empty()) fmt::print("no {}{}\n", ls_all ? "" : "open ", ls_what);
        for (const auto& e : list) ls_what == "grants" ? print_grant(e) : print_request(e);
        return 0;
    }));

    // revoke
    auto* revoke = app.add_subcommand("revoke", "end a grant now (established flows included)");
    std::string v_id, v_reason;
    revoke->add_option("GRANT_ID", v_id, "grant id")->required();
    revoke->add_option("--reason", v_reason, "why")->required();
    revoke->callback(run([&] {
        const ordered_json reply = call_ok(g, {{"op", "revoke"}, {"grant_id", v_id}, {"reason", v_reason}});
        if (g.json_out) return print_json(reply), 0;
        print_grant(reply["grant"]);
        return 0;
    }));

    // grant (direct)
    auto* grant = app.add_subcommand("grant", "issue a grant directly (administrators)");
    std::string gr_service, gr_source, gr_for, gr_start, gr_subject, gr_reason;
    grant->add_option("SERVICE", gr_service)->required();
    grant->add_option("--source", gr_source)->required();
    grant->add_option("--for", gr_for)->required();
    grant->add_option("--start", gr_start);
    grant->add_option("--subject", gr_subject, "who the grant is for (default: you)");
    grant->add_option("--reason", gr_reason);
    grant->callback(run([&] {
        ordered_json req{{"op", "grant"}, {"service", gr_service}, {"source", gr_source},
                         {"duration_ms", duration_option(gr_for, "--for")}, {"subject", gr_subject},
                         {"reason", gr_reason}};
        if (!gr_start.empty()) req["start_ms"] = start_option(gr_start);
        const ordered_json reply = call_ok(g, req);
        if (g.json_out) return print_json(reply), 0;
        print_grant(reply["grant"]);
        fmt::print("{}\n", reply["grant"].value("text", ""));
        return 0;
    }));

    // sign (offline)
    auto* sign = app.add_subcommand("sign", "sign a grant offline with an issuer key file");
    std::string s_key, s_service, s_source, s_for, s_start, s_subject;
    sign->add_option("--key", s_key, "issuer secret key file")->required();
    sign->add_option("--service", s_service)->required();
    sign->add_option("--source", s_source)->required();
    sign->add_option("--for", s_for)->required();
    sign->add_option("--start", s_start);
    sign->add_option("--subject", s_subject)->required();
    sign->callback(run([&] {
        std::optional<IssuerSecretKey> key;
        if (KeyFileError e = read_secret_key_file(s_key, key); !e.ok()) throw CtlError(1, e.message);
        std::string why;
        const auto source = parse_ip_prefix(s_source, &why);
        if (!source) throw CtlError(2, "--source: " + why);
        Grant gr;
        gr.grant_id = random_grant_id();
        gr.subject = s_subject;
        gr.source = *source;
        gr.service = s_service;
        gr.not_before_ms = s_start.empty() ? static_cast<int64_t>(unix_now_ms()) : start_option(s_start);
        gr.not_after_ms = gr.not_before_ms + duration_option(s_for, "--for");
        SignedGrant out{};
        if (GrantFormatError e = sign_grant(gr, *key, out); e != GrantFormatError::ok) {
            throw CtlError(1, fmt::format("cannot sign: {}", grant_format_error_message(e)));
        }
        if (g.json_out) {
            print_json({{"grant_id", grant_id_hex(gr.grant_id)}, {"text", grant_to_text(out)}});
        } else {
            fmt::print("{}\n", grant_to_text(out));
        }
        return 0;
    }));

    // push
    auto* push = app.add_subcommand("push", "hand jitd a grant signed elsewhere (administrators)");
    std::string p_text;
    push->add_option("GRANT_TEXT", p_text, "the grant's text, or - to read it from stdin")->required();
    push->callback(run([&] {
        const ordered_json reply = call_ok(g, {{"op", "push"}, {"text", grant_text_arg(p_text)}});
        if (g.json_out) return print_json(reply), 0;
        print_grant(reply["grant"]);
        return 0;
    }));

    // inspect (offline)
    auto* inspect = app.add_subcommand("inspect", "decode a grant and verify it offline");
    std::string i_text, i_keys;
    inspect->add_option("GRANT_TEXT", i_text, "the grant's text, or -")->required();
    inspect->add_option("--keys", i_keys, "public key file to verify the signature against");
    inspect->callback(run([&] {
        const std::string text = grant_text_arg(i_text);
        SignedGrant bytes{};
        if (GrantFormatError e = grant_from_text(text, bytes); e != GrantFormatError::ok) {
            throw CtlError(4, fmt::format("not a grant: {} ({})", grant_format_error_message(e),
                                          grant_format_error_name(e)));
        }
        ParsedSignedGrant parsed;
        parse_signed_grant(bytes, parsed);
        const Grant& gr = parsed.grant;
        const auto now = static_cast<int64_t>(unix_now_ms());
        ordered_json j{{"grant_id", grant_id_hex(gr.grant_id)}, {"issuer_key_id", key_id_hex(gr.issuer_key_id)},
                       {"subject", gr.subject}, {"service", gr.service}, {"source", format_ip_prefix(gr.source)},
                       {"not_before", format_unix_ms(gr.not_before_ms)}, {"not_after", format_unix_ms(gr.not_after_ms)},
                       {"not_before_ms", gr.not_before_ms}, {"not_after_ms", gr.not_after_ms}};
        int code = 0;
        if (!i_keys.empty()) {
            TrustedIssuers issuers;
            if (KeyFileError e = read_public_key_file(i_keys, issuers); !e.ok()) throw CtlError(1, e.message);
            const VerifyResult v = verify_grant(bytes, issuers, VerifyPolicy{}, now);
            j["verify"] = verify_status_name(v.status);
            j["verify_text"] = describe_verify_result(v, now);
            if (!v.ok()) code = 4;
        }
        if (g.json_out) {
            print_json(j);
        } else {
            for (auto& [k, v] : j.items()) fmt::print("{:14} {}\n", k, v.is_string() ? v.get<std::string>() : v.dump());
        }
        return code;
    }));

    // service
    double wait_s = 5;
    const auto add_wait = [&](CLI::App* sub) {
        sub->add_option("--wait", wait_s,
                        "seconds to wait until jitlb confirms it applied the change (0: do not wait)")
            ->capture_default_str()
            ->check(CLI::Range(0.0, 600.0));
    };
    auto* service = app.add_subcommand("service", "define services (administrators)");
    service->require_subcommand(1);
    auto* s_add = service->add_subcommand("add", "add (or --replace) a service");
    std::string sa_name, sa_mode = "ipip";
    std::vector<std::string> sa_vips;
    uint16_t sa_gue_port = 0;
    uint32_t sa_table = 65537;
    bool sa_echo = false, sa_replace = false;
    s_add->add_option("NAME", sa_name)->required();
    add_wait(s_add);
    s_add->add_option("--vip", sa_vips, "ADDR:PORT/PROTO, e.g. 203.0.113.10:80/tcp or [2001:db8::10]:443/tcp; "
                                        "without a port (203.0.113.10/udp): every packet of the protocol to the "
                                        "address, fragments too, hashed on source, VIP and protocol")->required();
    s_add->add_option("--mode", sa_mode, "ipip, gue or l2dsr")->capture_default_str();
    s_add->add_option("--gue-port", sa_gue_port, "outer UDP port for gue (default 6080)");
    s_add->add_option("--table-size", sa_table, "Maglev table size (prime)")->capture_default_str();
    s_add->add_flag("--answer-echo", sa_echo, "answer ICMP echo to the VIPs");
    s_add->add_flag("--replace", sa_replace, "replace a service of that name (keeps nothing of it)");
    s_add->callback(run([&] {
        ordered_json spec{{"name", sa_name}, {"mode", sa_mode}, {"table_size", sa_table}, {"answer_echo", sa_echo},
                          {"vips", ordered_json::array()}};
        if (sa_gue_port) spec["gue_port"] = sa_gue_port;
        for (const auto& v : sa_vips) spec["vips"].push_back(parse_vip(v));
        ordered_json reply = call_ok(g, {{"op", "service_add"}, {"service", spec}, {"replace", sa_replace}});
        const std::string applied = wait_applied(g, reply, wait_s);
        if (g.json_out) return print_json(reply), 0;
        fmt::print("service {} set ({})\n", sa_name, applied);
        return 0;
    }));
    auto* s_rm = service->add_subcommand("rm", "remove a service");
    std::string sr_name;
    s_rm->add_option("NAME", sr_name)->required();
    add_wait(s_rm);
    s_rm->callback(run([&] {
        ordered_json reply = call_ok(g, {{"op", "service_rm"}, {"service", sr_name}});
        const std::string applied = wait_applied(g, reply, wait_s);
        if (g.json_out) return print_json(reply), 0;
        fmt::print("service {} removed ({})\n", sr_name, applied);
        return 0;
    }));
    auto* s_ls = service->add_subcommand("ls", "list services");
    s_ls->callback(run([&] {
        const ordered_json reply = call_ok(g, {{"op", "service_ls"}});
        if (g.json_out) return print_json(reply), 0;
        for (const auto& s : reply["services"]) {
            std::string vips;
            for (const auto& v : s["vips"]) {
                const std::string a = v.value("address", "");
                vips += fmt::format("{}{}:{}/{}", vips.empty() ? "" : ", ",
                                    a.find(':') != std::string::npos ? "[" + a + "]" : a, v.value("port", 0),
                                    v.value("protocol", ""));
            }
            fmt::print("{}  {}  {}  {} backends\n", s.value("name", ""), s.value("mode", ""), vips, s["backends"].size());
        }
        return 0;
    }));

    // backend
    auto* backend = app.add_subcommand("backend", "a service's backends (administrators)");
    backend->require_subcommand(1);
    std::string b_service, b_id, b_address, b_mac;
    uint32_t b_weight = 1;
    auto* b_add = backend->add_subcommand("add", "add a backend");
    b_add->add_option("SERVICE", b_service)->required();
    b_add->add_option("ID", b_id, "backend id (the Maglev id: keep it stable)")->required();
    b_add->add_option("ADDRESS", b_address)->required();
    b_add->add_option("--weight", b_weight)->capture_default_str();
    b_add->add_option("--mac", b_mac, "the backend's MAC (L2 DSR)");
    add_wait(b_add);
    b_add->callback(run([&] {
        ordered_json b{{"id", b_id}, {"address", b_address}, {"weight", b_weight}};
        if (!b_mac.empty()) b["mac"] = b_mac;
        ordered_json reply = call_ok(g, {{"op", "backend_add"}, {"service", b_service}, {"backend", b}});
        const std::string applied = wait_applied(g, reply, wait_s);
        if (g.json_out) return print_json(reply), 0;
        fmt::print("backend {} added to {} ({})\n", b_id, b_service, applied);
        return 0;
    }));
    bool b_undo = false;
    for (const char* name : {"rm", "drain"}) {
        const std::string op = name;
        auto* sub = backend->add_subcommand(op, op == "rm" ? "remove a backend (its flows move)"
                                                           : "drain a backend: established flows stay, new ones avoid it");
        sub->add_option("SERVICE", b_service)->required();
        sub->add_option("ID", b_id)->required();
        if (op == "drain") sub->add_flag("--undo", b_undo, "take new flows again");
        add_wait(sub);
        sub->callback(run([&, op] {
            ordered_json reply =
                call_ok(g, {{"op", "backend_" + op}, {"service", b_service}, {"id", b_id}, {"undrain", b_undo}});
            const std::string applied = wait_applied(g, reply, wait_s);
            if (g.json_out) return print_json(reply), 0;
            fmt::print("backend {} of {}: {} ({})\n", b_id, b_service,
                       op == "rm" ? "removed" : b_undo ? "takes new flows again" : "draining", applied);
            return 0;
        }));
    }
    auto* b_w = backend->add_subcommand("weight", "set a backend's weight");
    b_w->add_option("SERVICE", b_service)->required();
    b_w->add_option("ID", b_id)->required();
    b_w->add_option("WEIGHT", b_weight)->required();
    add_wait(b_w);
    b_w->callback(run([&] {
        ordered_json reply =
            call_ok(g, {{"op", "backend_weight"}, {"service", b_service}, {"id", b_id}, {"weight", b_weight}});
        const std::string applied = wait_applied(g, reply, wait_s);
        if (g.json_out) return print_json(reply), 0;
        fmt::print("backend {} of {}: weight {} ({})\n", b_id, b_service, b_weight, applied);
        return 0;
    }));
    auto* b_ls = backend->add_subcommand("ls", "list a service's backends");
    b_ls->add_option("SERVICE", b_service)->required();
    b_ls->callback(run([&] {
        const ordered_json reply = call_ok(g, {{"op", "service_ls"}});
        for (const auto& s : reply["services"]) {
            if (s.value("name", "") != b_service) continue;
            if (g.json_out) return print_json({{"ok", true}, {"backends", s["backends"]}}), 0;
            for (const auto& b : s["backends"]) {
                fmt::print("{}  {}  weight {}{}{}\n", b.value("id", ""), b.value("address", ""), b.value("weight", 0),
                           b.contains("mac") ? "  mac " + b.value("mac", "") : "",
                           b.value("draining", false) ? "  draining" : "");
            }
            return 0;
        }
        throw CtlError(1, fmt::format("no service named '{}'", b_service));
    }));

    // status
    auto* status = app.add_subcommand("status", "jitd, jitlb's heartbeat and epoch, grants active");
    status->callback(run([&] {
        const ordered_json reply = call_ok(g, {{"op", "status"}});
        if (g.json_out) return print_json(reply), 0;
        const auto& lb = reply["jitlb"];
        fmt::print("jitd: up {} (pid {}), instance {}, {} policy rules, {} services\n",
                   format_duration_ms(reply.value("uptime_ms", int64_t{0}) / 1000 * 1000), reply.value("jitd_pid", 0),
                   reply.value("instance", ""), reply.value("policy_rules", 0), reply.value("services", 0));
        if (lb.value("state_open", false)) {
            fmt::print("jitlb: pid {}, epoch {}, heartbeat {} ms ago, {}\n", lb.value("pid", 0), lb.value("epoch", ""),
                       lb.value("heartbeat_age_ms", int64_t{-1}),
                       lb.value("attached", false) ? "attached to the command ring" : "not attached yet");
        } else {
            fmt::print("jitlb: not reachable: {}\n", lb.value("problem", ""));
        }
        const auto& gr = reply["grants"];
        fmt::print("grants: {} active, {} pushed, {} ready, {} scheduled, {} superseded; {} requests pending\n",
                   gr.value("active", 0), gr.value("pushed", 0), gr.value("ready", 0), gr.value("scheduled", 0),
                   gr.value("superseded", 0), reply.value("pending_requests", 0));
        fmt::print("audit: head {}:{}\n", reply["audit"].value("seq", 0), reply["audit"].value("hash", ""));
        return 0;
    }));

    // stats (offline: reads jitlb's state file)
    auto* stats = app.add_subcommand("stats", "jitlb's counters, read from its state file");
    std::string st_file, st_owner = "jitlb";
    bool st_watch = false;
    int st_count = 0;
    stats->add_option("--state-file", st_file, "jitlb's state file (default from --instance)");
    std::string st_instance = "default";
    stats->add_option("--instance", st_instance, "instance name")->capture_default_str();
    stats->add_option("--owner", st_owner, "user jitlb runs as")->capture_default_str();
    stats->add_flag("--watch", st_watch, "print rates every second");
    stats->add_option("--count", st_count, "with --watch: stop after N seconds (0: never)");
    stats->callback(run([&] {
        if (st_file.empty()) st_file = state_file_path(detect_region_dirs().state_dir, st_instance);
        return run_stats(st_file, st_owner, st_watch, st_count, g.json_out);
    }));

    // audit
    auto* audit = app.add_subcommand("audit", "the tamper-evident audit log");
    audit->require_subcommand(1);
    auto* a_tail = audit->add_subcommand("tail", "the last lines (through jitd)");
    int a_lines = 20;
    bool a_follow = false;
    a_tail->add_option("-n,--lines", a_lines)->capture_default_str();
    a_tail->add_flag("-f,--follow", a_follow, "keep printing new lines");
    a_tail->callback(run([&] {
        std::string last;
        for (;;) {
            const ordered_json reply = call_ok(g, {{"op", "audit_tail"}, {"lines", a_follow ? 1000 : a_lines}});
            const auto& lines = reply["lines"];
            size_t start = 0;
            if (!last.empty()) {
                for (size_t i = 0; i < lines.size(); ++i) {
                    if (lines[i].get<std::string>() == last) start = i + 1;
                }
            } else if (lines.size() > static_cast<size_t>(a_lines)) {
                start = lines.size() - static_cast<size_t>(a_lines);
            }
            if (g.json_out && !a_follow) {
                ordered_json out = ordered_json::array();
                for (size_t i = start; i < lines.size(); ++i) {
                    out.push_back(ordered_json::parse(lines[i].get<std::string>(), nullptr, false));
                }
                print_json({{"ok", true}, {"lines", out}});
                return 0;
            }
            // -f (also with --json): one JSON line per audit line, as written.
            for (size_t i = start; i < lines.size(); ++i) std::cout << lines[i].get<std::string>() << "\n";
            std::cout.flush();
            if (!lines.empty()) last = lines.back().get<std::string>();
            if (!a_follow) return 0;
            std::this_thread::sleep_for(std::chrono::milliseconds(500));
        }
    }));
    auto* a_verify = audit->add_subcommand("verify", "check the hash chain and checkpoint signatures");
    std::string av_file, av_keys, av_head;
    a_verify->add_option("--file", av_file, "verify this log file offline (default: ask jitd)");
    a_verify->add_option("--keys", av_keys, "with --file: public key file of the audit key");
    a_verify->add_option("--head", av_head, "with --file: the expected head SEQ:HASH (from jitctl status)");
    a_verify->callback(run([&] {
        ordered_json j;
        if (av_file.empty()) {
            j = call_ok(g, {{"op", "audit_verify"}});
        } else {
            std::optional<TrustedIssuers> keys;
            if (!av_keys.empty()) {
                keys.emplace();
                if (KeyFileError e = read_public_key_file(av_keys, *keys); !e.ok()) throw CtlError(1, e.message);
            }
            std::optional<AuditHead> head;
            if (!av_head.empty()) {
                std::string why;
                head = parse_audit_head(av_head, &why);
                if (!head) throw CtlError(2, "--head: " + why);
            }
            const AuditVerifyReport r = verify_audit_log(av_file, keys ? &*keys : nullptr, head);
            j = {{"verified", r.ok}, {"lines", r.lines}, {"checkpoints", r.checkpoints},
                 {"signatures_verified", r.signatures_verified}, {"first_bad_line", r.first_bad_line},
                 {"problem", r.problem}, {"head", format_audit_head(r.head)}};
        }
        if (g.json_out) {
            print_json(j);
        } else if (j.value("verified", false)) {
            fmt::print("audit log verifies: {} lines, {} checkpoints\n", j.value("lines", 0), j.value("checkpoints", 0));
        } else {
            fmt::print("audit log does NOT verify: {}\n", j.value("problem", ""));
        }
        return j.value("verified", false) ? 0 : 4;
    }));

    // policy
    auto* policy = app.add_subcommand("policy", "check or reload the access policy");
    policy->require_subcommand(1);
    auto* p_check = policy->add_subcommand("check", "validate a policy file offline");
    std::string pc_file;
    p_check->add_option("FILE", pc_file)->required();
    p_check->callback(run([&] {
        try {
            const Policy p = load_policy_file(pc_file);
            if (g.json_out) {
                ordered_json rules = ordered_json::array();
                for (const Rule& r : p.rules()) rules.push_back(r.name);
                print_json({{"ok", true}, {"rules", rules}});
            } else {
                fmt::print("{}: ok, {} rules\n", pc_file, p.rules().size());
            }
            return 0;
        } catch (const PolicyError& e) {
            throw CtlError(1, e.what());
        }
    }));
    auto* p_reload = policy->add_subcommand("reload", "make jitd re-read its policy");
    p_reload->callback(run([&] {
        const ordered_json reply = call_ok(g, {{"op", "policy_reload"}});
        if (g.json_out) return print_json(reply), 0;
        fmt::print("policy reloaded: {} rules\n", reply.value("rules", 0));
        return 0;
    }));

    try {
        app.parse(argc, argv);
        return rc;
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 2;
    } catch (const CtlError& e) {
        std::cerr << "jitctl: " << e.what() << "\n";
        return e.code();
    } catch (const std::exception& e) {
        std::cerr << "jitctl: " << e.what() << "\n";
        return 1;
    }
}
