// The API's HTTP request reader (Beast's parser with berthd's limits, then the conversion to
// http_request) over arbitrary bytes, as a connection would send them: pipelined requests one
// after another, and each also cut short, as a read that returned only part of it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "http_reader.hpp"

namespace {

// Small, so that bodies over the limit are common; the header limit stays the server's.
constexpr std::uint64_t max_body = 1024;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_http_request: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  // At most a few requests per input: the server reads as many as a connection sends.
  for (int i = 0; i < 8 && !rest.empty(); ++i) {
    const auto r = berth::agent::read_http_request(rest, max_body);
    if (!r) {
      check(!r.error().message.empty(), "an error without a message");
      return 0;
    }
    if (!*r) return 0;  // incomplete
    const auto& p = **r;
    check(p.consumed > 0 && p.consumed <= rest.size(), "consumed out of range");
    check(p.request.body.size() <= max_body, "a body over the limit");
    for (const auto& [name, value] : p.request.headers) {
      for (const char c : name) check(c < 'A' || c > 'Z', "a header name not lower-cased");
    }
    // The same bytes cut short: the reader must not take a request that is not all there.
    const auto part = berth::agent::read_http_request(rest.substr(0, p.consumed - 1), max_body);
    check(!part || !*part, "a request complete before its last byte");
    rest.remove_prefix(p.consumed);
  }
  return 0;
}
