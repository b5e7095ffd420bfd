// libFuzzer target: the audit log reader (verify_audit_text) on arbitrary
// text, without and with an expected head taken from the input's first
// bytes. It must never crash, and a report must be self-consistent: ok
// exactly when no fault and no bad line.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "audit_log.h"

using namespace jitlb::control;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    const AuditVerifyReport r = verify_audit_text(text, nullptr, std::nullopt);
    if (r.ok != (r.fault == AuditFault::none) || r.ok != (r.first_bad_line == 0)) std::abort();
    if (size >= 40) {
        AuditHead head;
        std::memcpy(&head.seq, data, 8);
        head.seq %= 1000;
        std::memcpy(head.hash.data(), data + 8, 32);
        const AuditVerifyReport h = verify_audit_text(text.substr(40), nullptr, head);
        if (h.ok != (h.fault == AuditFault::none)) std::abort();
    }
    return 0;
}
