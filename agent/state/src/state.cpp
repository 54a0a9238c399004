// The contract's small helpers, shared by every backend.
#include "berth/state.hpp"

namespace berth::state {

std::string_view to_string(errc e) noexcept {
  switch (e) {
    case errc::io:
      return "io";
    case errc::damaged:
      return "damaged";
    case errc::in_use:
      return "in_use";
    case errc::compacted:
      return "compacted";
    case errc::future_revision:
      return "future_revision";
    case errc::lease_not_found:
      return "lease_not_found";
    case errc::invalid_argument:
      return "invalid_argument";
    case errc::canceled:
      return "canceled";
    case errc::timeout:
      return "timeout";
    case errc::not_leader:
      return "not_leader";
  }
  return "unknown";
}

std::string prefix_end(std::string_view prefix) {
  // As etcd's GetPrefixRangeEnd: trailing 0xff bytes cannot be incremented, so they go; a
  // prefix of only 0xff bytes (or none) has no end.
  std::string end(prefix);
  while (!end.empty()) {
    auto& last = reinterpret_cast<unsigned char&>(end.back());
    if (last < 0xff) {
      ++last;
      return end;
    }
    end.pop_back();
  }
  return end;
}

}  // namespace berth::state
