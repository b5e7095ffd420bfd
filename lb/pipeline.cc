// Filled in by the data-plane issue.
namespace jitlb::lb {}
