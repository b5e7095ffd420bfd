// How long a torture test runs: seconds from an environment variable (for
// example JITLB_TORTURE_SECONDS), so that CI and a developer can make it longer.
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>

// The seconds in variable `name`, or `fallback` when it is unset or empty. Anything
// but a non-negative number throws: a typo must not quietly run a 0-second test.
inline double env_seconds(const char* name, double fallback) {
    const char* text = std::getenv(name);
    if (text == nullptr || *text == '\0') return fallback;
    char* end = nullptr;
    errno = 0;
    const double seconds = std::strtod(text, &end);
    if (errno != 0 || *end != '\0' || !std::isfinite(seconds) || seconds < 0) {
        throw std::invalid_argument(std::string(name) + "='" + text +
                                    "': expected a number of seconds, e.g. 30 or 0.5");
    }
    return seconds;
}
