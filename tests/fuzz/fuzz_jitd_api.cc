// libFuzzer target: jitd's API on arbitrary bytes, as a caller on the control
// socket would send them. The input's first byte picks the caller (an admin,
// a requester the policy names, an approver, a stranger); the rest is parsed
// as JSON (as jitd.cc does) and handed to Jitd::handle, which must answer an
// object with "ok" and never throw; each call also ticks with the clock a
// second later, so that expiry, scheduled pushes and retries run on what the
// calls created. The store and audit log live in a temporary directory.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "jitd_core.h"

namespace {

using namespace jitlb;
using namespace jitlb::control;

constexpr const char* kConfig = R"(
instance = "fuzz"
state_dir = "/nonexistent"
jitlb_user = "root"
request_rate = 100000
request_burst = 100000
[policy]
pending_timeout = "10m"
[[policy.rule]]
name = "web-auto"
services = ["web", "db"]
users = ["alice"]
sources = ["198.51.100.0/24", "2001:db8::/64"]
max_duration = "30m"
max_concurrent = 5
[[policy.rule]]
name = "db-approve"
services = ["db"]
groups = ["dev"]
sources = ["0.0.0.0/0", "::/0"]
max_duration = "8h"
approval = "approver"
approvers = ["ops"]
[[service]]
name = "web"
vips = [{address = "203.0.113.10", port = 80, protocol = "tcp"}]
backends = [{id = "w1", address = "10.0.0.1"}]
)";

int64_t g_now = 1'800'000'000'000;

Jitd& fuzz_jitd() {
    static Jitd* jitd = [] {
        char dir[] = "/tmp/fuzz_jitd.XXXXXX";
        if (::mkdtemp(dir) == nullptr) std::abort();
        const std::string d = dir;
        JitdConfig config = parse_jitd_config(kConfig, "fuzz.toml");
        config.state_dir = d;
        AuditOptions options;
        options.fsync = false;
        auto store = std::make_unique<Store>(d + "/jitd.db", false);
        auto audit = std::make_unique<AuditLog>(AuditLog::open(d + "/audit.log", nullptr, options, g_now));
        return new Jitd(std::move(config), IssuerSecretKey::generate(), std::move(store), std::move(audit),
                        nullptr, [] { return g_now; });
    }();
    return *jitd;
}

const Caller kCallers[] = {
    {0, 0, "root", {"root"}},
    {1001, 1001, "alice", {"alice", "dev"}},
    {1002, 1002, "bob", {"bob", "ops"}},
    {1003, 1003, "mallory", {"mallory"}},
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    Jitd& jitd = fuzz_jitd();
    const Caller& caller = kCallers[data[0] % 4];
    const auto request = nlohmann::json::parse(data + 1, data + size, nullptr, false);
    if (request.is_discarded()) return 0;  // jitd answers bad_json without reaching the core
    const nlohmann::ordered_json reply = jitd.handle(request, caller);
    if (!reply.is_object() || !reply.contains("ok") || !reply["ok"].is_boolean()) std::abort();
    if (!reply["ok"].get<bool>() && (!reply.contains("error") || !reply["error"].contains("code"))) std::abort();
    g_now += 1000;
    jitd.tick();
    return 0;
}
