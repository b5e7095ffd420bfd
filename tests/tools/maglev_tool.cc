// maglev_tool: builds a Maglev table with common/maglev and answers, for each
// flow read from stdin, which backend it goes to; for tests that check the
// choice against an independent model (tests/golden/maglev_model.py).
//
//   maglev_tool M SEED ID[=WEIGHT]...  < flows
//   stdin line:  SRC DST SPORT DPORT PROTO      (IPv4 or IPv6 addresses)
//   stdout: first line "table" and the M entries; then per flow "<hash hex> <backend index>"
#include <arpa/inet.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "flow_hash.h"
#include "maglev.h"

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: maglev_tool M SEED ID[=WEIGHT]... < flows\n");
        return 2;
    }
    const uint64_t m = std::strtoull(argv[1], nullptr, 0);
    const uint64_t seed = std::strtoull(argv[2], nullptr, 0);
    std::vector<std::string> ids;
    std::vector<jitlb::MaglevBackend> backends;
    for (int i = 3; i < argc; ++i) ids.emplace_back(argv[i]);
    for (std::string& id : ids) {
        uint32_t weight = 1;
        if (const auto colon = id.rfind('='); colon != std::string::npos) {
            weight = static_cast<uint32_t>(std::strtoul(id.c_str() + colon + 1, nullptr, 10));
            id.resize(colon);
        }
        backends.push_back({id, weight});
    }
    std::vector<uint32_t> table(m);
    const jitlb::MaglevError e = jitlb::maglev_build(backends, table, {.force = true});
    if (e != jitlb::MaglevError::ok) {
        std::fprintf(stderr, "maglev_tool: %s\n", jitlb::maglev_error_message(e, backends, m).c_str());
        return 1;
    }
    std::string out = "table";
    for (uint32_t v : table) out += " " + std::to_string(v);
    std::puts(out.c_str());
    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::string src, dst;
        unsigned sport, dport, proto;
        if (!(in >> src >> dst >> sport >> dport >> proto)) continue;
        jitlb::FlowTuple t;
        if (inet_pton(AF_INET, src.c_str(), t.src.data()) == 1 &&
            inet_pton(AF_INET, dst.c_str(), t.dst.data()) == 1) {
            t.version = jitlb::IpVersion::v4;
        } else if (inet_pton(AF_INET6, src.c_str(), t.src.data()) == 1 &&
                   inet_pton(AF_INET6, dst.c_str(), t.dst.data()) == 1) {
            t.version = jitlb::IpVersion::v6;
        } else {
            std::fprintf(stderr, "maglev_tool: bad addresses in '%s'\n", line.c_str());
            return 1;
        }
        t.src_port = static_cast<uint16_t>(sport);
        t.dst_port = static_cast<uint16_t>(dport);
        t.proto = static_cast<uint8_t>(proto);
        const uint64_t h = jitlb::flow_hash(t, seed);
        std::printf("%016llx %u\n", static_cast<unsigned long long>(h), jitlb::maglev_lookup(table, h));
    }
    return 0;
}
