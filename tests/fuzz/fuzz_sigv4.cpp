// SigV4 verification over arbitrary requests, written as HTTP text: "METHOD TARGET", then
// "name: value" header lines (names lower-cased, as the server hands them over), a blank line
// and the body. The Authorization and X-Amz-Date headers are what the parser takes apart; the
// seeds are requests signed with the keys below at `now`, so mutations start from valid ones.
#include <cctype>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "berth/api/sigv4.hpp"

namespace ag = berth::agent;

namespace {

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_sigv4: %s\n", what);
    std::abort();
  }
}

std::string_view next_line(std::string_view& s) {
  const auto nl = s.find('\n');
  std::string_view line = s.substr(0, nl);
  s.remove_prefix(nl == std::string_view::npos ? s.size() : nl + 1);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

ag::signed_request parse(std::string_view s) {
  ag::signed_request r;
  const std::string_view first = next_line(s);
  const auto sp = first.find(' ');
  r.method = std::string(first.substr(0, sp));
  if (sp != std::string_view::npos) r.target = std::string(first.substr(sp + 1));
  while (!s.empty()) {
    const std::string_view line = next_line(s);
    if (line.empty()) break;
    const auto colon = line.find(':');
    std::string name(line.substr(0, colon));
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string_view value =
        colon == std::string_view::npos ? std::string_view() : line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    r.headers[name] = std::string(value);
  }
  r.body = std::string(s);
  return r;
}

const ag::credentials& keys() {
  static const ag::credentials k = [] {
    ag::credentials c;
    c["AKIDEXAMPLE"] = {"default", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", false};
    c["AKIDREADONLY"] = {"auditor", "readonly-secret", true};
    return c;
  }();
  return k;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const ag::signed_request r = parse(std::string_view(reinterpret_cast<const char*>(data), size));
  // 2015-08-30T12:36:00Z, the date of AWS's documented example the seeds share.
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1440938160));
  // The scope berthd expects: us-east-1 and, so that AWS's IAM example seeds reach the
  // signature, iam when the credential names it (ecs otherwise).
  const auto auth = r.headers.find("authorization");
  const bool iam = auth != r.headers.end() && auth->second.find("/iam/") != std::string::npos;
  const ag::sigv4_scope scope{"us-east-1", iam ? "iam" : "ecs"};
  const auto verdict = ag::verify_sigv4(r, keys(), now, scope);
  if (!verdict) {
    check(!verdict.error().type.empty() && !verdict.error().message.empty(),
          "a refusal without a type or message");
    return 0;
  }
  check(keys().contains(*verdict), "accepted under a key that is not there");
  // The signature covers the body: another body must not pass.
  ag::signed_request other = r;
  other.body += 'x';
  check(!ag::verify_sigv4(other, keys(), now, scope), "a signature that does not cover the body");
  return 0;
}
