// HTTP/1.1 on a Unix socket and, optionally, a TCP listener (Boost.Beast, synchronous: one
// thread per connection, which suits an agent's handful of callers). Requests go to a handler.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "berth/agent.hpp"

namespace berth::agent {

struct http_request {
  std::string method;
  std::string target;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  bool tcp = false;
  std::string peer;        // the TCP peer's address, or "unix"
  int uid = -1, gid = -1;  // a Unix-socket peer's credentials
};

struct http_response {
  int status = 200;
  std::string content_type = "application/x-amz-json-1.1";
  std::string body;
  std::map<std::string, std::string> headers;
};

using http_handler = std::function<http_response(const http_request&)>;

class http_server {
 public:
  virtual ~http_server() = default;
  virtual void stop() = 0;
  virtual std::string tcp_endpoint() const = 0;  // host:port actually bound
};

struct server_options {
  std::string socket_path;
  std::string tcp;  // host:port, port 0 picks one; empty: none
  std::uint64_t max_body_bytes = 1 << 20;
};

// Binds both listeners (removing a stale socket file first) and serves until stop().
result<std::unique_ptr<http_server>> serve(const server_options& o, http_handler h);

}  // namespace berth::agent
