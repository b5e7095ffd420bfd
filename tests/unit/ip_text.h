// An IpAddress from its text form, for test tables: a typo in an address
// fails the test that wrote it (REQUIRE) instead of testing the zero address.
// Test-only.
#pragma once

#include <arpa/inet.h>

#include <cstring>

#include <catch2/catch.hpp>

#include "flow.h"

namespace jitlb::test {

inline IpAddress ip(const char* text) {
    IpAddress a;
    if (std::strchr(text, ':') != nullptr) {
        a.version = IpVersion::v6;
        REQUIRE(inet_pton(AF_INET6, text, a.bytes.data()) == 1);
    } else {
        a.version = IpVersion::v4;
        REQUIRE(inet_pton(AF_INET, text, a.bytes.data()) == 1);
    }
    return a;
}

}  // namespace jitlb::test
