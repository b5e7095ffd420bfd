// What the micro-benchmarks share: the report (one printed line per figure and
// a flat JSON object for docs/bench), the median of repeated timings in this
// thread's CPU time, and a sink the compiler cannot optimise away.
#pragma once

#include <time.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace jitlb::bench {

// The figures of one run, in the order they were measured.
class Report {
  public:
    explicit Report(std::string program) : program_(std::move(program)) {}

    // `key` is the JSON name: snake_case, with the unit in it.
    void add(std::string key, double value, std::string_view text) {
        std::printf("%-40s %s\n", key.c_str(), std::string(text).c_str());
        std::fflush(stdout);
        figures_.push_back({std::move(key), value});
    }

    bool write_json(const char* path) const {
        std::FILE* out = std::fopen(path, "w");
        if (out == nullptr) {
            std::fprintf(stderr, "%s: cannot write %s: %s\n", program_.c_str(), path, std::strerror(errno));
            return false;
        }
        std::fprintf(out, "{\n  \"program\": \"%s\"", program_.c_str());
        for (const Figure& f : figures_) std::fprintf(out, ",\n  \"%s\": %.6g", f.key.c_str(), f.value);
        std::fprintf(out, "\n}\n");
        const bool ok = std::fclose(out) == 0;
        if (!ok) std::fprintf(stderr, "%s: cannot write %s\n", program_.c_str(), path);
        return ok;
    }

  private:
    struct Figure {
        std::string key;
        double value;
    };
    std::string program_;
    std::vector<Figure> figures_;
};

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

// This thread's CPU time: "per core" even when other work shares the machine.
inline double thread_cpu_seconds() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// The median of `runs` timings of `body` in CPU seconds: robust to the odd run
// that an interrupt or a frequency change slowed down.
template <class Body>
double median_seconds(int runs, Body body) {
    std::vector<double> times;
    for (int i = 0; i < runs; ++i) {
        const double start = thread_cpu_seconds();
        body();
        times.push_back(thread_cpu_seconds() - start);
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

// Results are folded into this so that the compiler cannot drop the work.
inline volatile uint64_t g_sink;

}  // namespace jitlb::bench
