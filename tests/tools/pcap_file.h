// Minimal classic pcap (little-endian, microsecond or nanosecond) reader and
// writer for the test tools. Ethernet link type only.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace jitlb::tools {

class PcapReader {
  public:
    explicit PcapReader(const char* path) : path_(path), f_(std::fopen(path, "rb")) {
        if (f_ == nullptr) {
            error_ = path_ + ": cannot open";
            return;
        }
        uint8_t global[24];
        if (std::fread(global, 1, sizeof global, f_) != sizeof global) {
            error_ = path_ + ": too short for a pcap header";
            return;
        }
        uint32_t magic;
        std::memcpy(&magic, global, 4);
        if (magic != 0xa1b2c3d4 && magic != 0xa1b23c4d) error_ = path_ + ": not a little-endian pcap file";
    }
    ~PcapReader() {
        if (f_ != nullptr) std::fclose(f_);
    }
    PcapReader(const PcapReader&) = delete;
    PcapReader& operator=(const PcapReader&) = delete;

    const std::string& error() const { return error_; }

    // Reads the next frame; false at the end or on error (see error()).
    bool next(std::vector<uint8_t>& frame) {
        if (!error_.empty()) return false;
        uint8_t rec[16];
        const size_t got = std::fread(rec, 1, sizeof rec, f_);
        if (got == 0) return false;
        uint32_t caplen;
        std::memcpy(&caplen, rec + 8, 4);
        if (got != sizeof rec || caplen > 262144) {
            error_ = path_ + ": bad record header";
            return false;
        }
        frame.resize(caplen);
        if (std::fread(frame.data(), 1, caplen, f_) != caplen) {
            error_ = path_ + ": truncated frame";
            return false;
        }
        return true;
    }

  private:
    std::string path_;
    std::FILE* f_;
    std::string error_;
};

class PcapWriter {
  public:
    explicit PcapWriter(const char* path) : f_(std::fopen(path, "wb")) {
        if (f_ == nullptr) return;
        const uint32_t global[6] = {0xa1b2c3d4, 0x00040002, 0, 0, 262144, 1 /* Ethernet */};
        std::fwrite(global, sizeof global, 1, f_);
    }
    ~PcapWriter() {
        if (f_ != nullptr) std::fclose(f_);
    }
    PcapWriter(const PcapWriter&) = delete;
    PcapWriter& operator=(const PcapWriter&) = delete;

    bool ok() const { return f_ != nullptr; }
    void write(const uint8_t* data, size_t len) {
        const uint32_t rec[4] = {0, 0, static_cast<uint32_t>(len), static_cast<uint32_t>(len)};
        std::fwrite(rec, sizeof rec, 1, f_);
        std::fwrite(data, 1, len, f_);
    }

  private:
    std::FILE* f_;
};

}  // namespace jitlb::tools
