// One checked call of sodium_init() per process. libsodium needs it before its
// random generator is used (randombytes_buf, key generation); every function
// of this library that uses libsodium calls ensure_sodium() first, so callers
// need not remember to.
#pragma once

#include <sodium.h>

#include <cstdio>
#include <cstdlib>

namespace jitlb {

// Thread-safe (a function-local static); aborts with a message if libsodium
// cannot start, which happens only when it cannot reach the kernel's random
// source, and then nothing in jitlb can safely run.
inline void ensure_sodium() noexcept {
    static const bool ready = [] {
        if (sodium_init() < 0) {
            std::fputs(
                "jitlb: sodium_init() failed: libsodium cannot start (is getrandom() or "
                "/dev/urandom available to this process?)\n",
                stderr);
            std::abort();
        }
        return true;
    }();
    (void)ready;
}

}  // namespace jitlb
