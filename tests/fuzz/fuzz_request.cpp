// Every ECS action's request check (agent/api/src/request_check.cpp): the first byte picks the
// action, the rest is the body, parsed as berthd parses it. The check must answer every body,
// name what it refuses, and pass again whatever it once passed (it removes nulls, nothing else).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

#include "berth/api/request_check.hpp"

namespace {

// The modelled actions, then Place (checked as RunTask) and one the model lacks.
const std::vector<std::string_view>& actions() {
  static const std::vector<std::string_view> all = [] {
    auto a = berth::agent::modelled_actions();
    a.push_back("Place");
    a.push_back("NoSuchAction");
    return a;
  }();
  return all;
}

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_request: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view action = actions()[data[0] % actions().size()];
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  // berthd refuses bodies nesting deeper than 32 before parsing them; so does this target.
  if (berth::agent::json_nesting(body) > 32) return 0;
  nlohmann::json req = nlohmann::json::parse(body, nullptr, false);
  if (req.is_discarded()) return 0;
  const auto verdict = berth::agent::check_request(action, req);
  if (!verdict.type.empty()) {
    check(verdict.type == "SerializationException" || verdict.type == "InvalidParameterException" ||
              verdict.type == "ClientException",
          "a refusal of an unexpected type");
    check(!verdict.message.empty(), "a refusal without a message");
    return 0;
  }
  // Passed: a second look passes too, and changes nothing more.
  const nlohmann::json once = req;
  check(berth::agent::check_request(action, req).type.empty(), "passed once, refused after");
  check(req == once, "the check changed a request it had passed");
  return 0;
}
