// AWS Signature Version 4, checked on every TCP request: the keys come from a file in
// ~/.aws/credentials format.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>

#include "berth/agent/common.hpp"

namespace berth::agent {

struct credential {
  std::string profile;
  std::string secret;
  bool read_only = false;  // berth_access = read-only
};
using credentials = std::map<std::string, credential>;  // by access key id

result<credentials> load_credentials(const std::string& path);

// The AWS error a request's signature earns, or nothing when it is valid.
struct auth_failure {
  std::string type;  // MissingAuthenticationTokenException, IncompleteSignatureException, ...
  std::string message;
};

struct signed_request {
  std::string method;
  std::string target;                          // path and query, as sent
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

// Where a signature must be scoped, as AWS checks it: this endpoint's region and service.
struct sigv4_scope {
  std::string region;
  std::string service = "ecs";
};

// On success, the access key id that signed it.
tl::expected<std::string, auth_failure> verify_sigv4(const signed_request& r, const credentials& c,
                                                     std::chrono::system_clock::time_point now,
                                                     const sigv4_scope& expect);

// Lower-case hex SHA-256 and HMAC-SHA-256 (also used by tests to sign).
std::string sha256_hex(const std::string& data);
std::string hmac_sha256(const std::string& key, const std::string& data);
std::string to_hex(const std::string& bytes);

}  // namespace berth::agent
