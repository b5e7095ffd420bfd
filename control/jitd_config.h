// jitd's configuration file (config/jitd.example.toml lists every key): the
// instance whose shared region it drives, where it keeps its state, who may
// connect and administer, its keys, the policy (inline or a file) and the
// services it declares. A bad file is refused whole, with the key and why.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "policy.h"
#include "service_spec.h"

namespace jitlb::control {

class ConfigError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

struct JitdConfig {
    std::string source;  // the file it came from
    std::string instance;
    std::string state_dir;
    std::string socket_path;          // default <state_dir>/jitd.sock
    mode_t socket_mode = 0660;
    std::string socket_group;         // "" = jitd's own group
    std::string issuer_key;           // "" = jitd signs nothing (push only)
    std::string audit_log;            // default <state_dir>/audit.log
    std::string audit_key;            // "" = no signed checkpoints
    std::string audit_public_keys;    // "" = the audit key's own public half
    std::string audit_sink;           // "" = none
    uint64_t audit_checkpoint_lines = 100;
    int64_t audit_checkpoint_ms = 60'000;
    std::string cmd_path;             // default <cmd_dir>/jitlb-<instance>.cmd
    std::string state_path;           // default <state_dir of the region>/jitlb-<instance>.state
    std::string jitlb_user = "jitlb";
    uint32_t cmd_ring_slots = 4096;
    int64_t skew_ms = 2'000;
    int64_t max_grant_ms = 24 * 3'600'000LL;  // jitlb's max_duration: direct grants above it are refused
    double request_rate = 5;    // per second per uid, mutating calls
    double request_burst = 20;
    uint32_t denial_samples_per_s = 10;  // audited; the rest are counted
    std::vector<std::string> admin_users{"root"};
    std::vector<std::string> admin_groups;
    std::string policy_file;  // "" = the [policy] table of this file
    Policy policy;
    std::vector<ServiceSpec> services;
};

// Throws ConfigError ("jitd.toml: state_dir: required (the directory jitd
// keeps its database and audit log in)") or PolicyError for the policy.
JitdConfig load_jitd_config(const std::string& path);
JitdConfig parse_jitd_config(std::string_view text, const std::string& source);

}  // namespace jitlb::control
