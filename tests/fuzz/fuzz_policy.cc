// libFuzzer target: the policy parser (parse_policy_text) on arbitrary text.
// A refusal is a PolicyError, never a crash or another exception; an accepted
// policy then decides a few fixed requests without throwing.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "policy.h"

using namespace jitlb;
using namespace jitlb::control;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        const Policy p = parse_policy_text(text, "fuzz.toml");
        RequestFacts f;
        f.user = "alice";
        f.groups = {"dev"};
        f.service = "web";
        f.source = *parse_ip_prefix("198.51.100.7");
        f.duration_ms = 600'000;
        f.has_reason = true;
        f.active_count = [](std::string_view) { return 1u; };
        (void)p.evaluate(f);
        f.source = *parse_ip_prefix("2001:db8::/64");
        f.start_offset_ms = 3'600'000;
        (void)p.evaluate(f);
        for (const Rule& r : p.rules()) (void)p.may_approve(r.name, "bob", {"ops"}, "alice");
    } catch (const PolicyError&) {
    }
    return 0;
}
