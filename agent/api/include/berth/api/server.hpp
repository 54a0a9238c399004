// berthd's HTTP/1.1 server: a Unix socket and, optionally, a TCP listener, served by one fixed
// pool of threads. Requests go to a synchronous handler.
//
// Thread safety: serve() and stop() from one thread that is not a pool thread (a handler must
// never call stop()). The handler is called concurrently from several pool threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "berth/agent/common.hpp"

namespace berth::agent {

struct http_request {
  std::string method;
  std::string target;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  bool tcp = false;
  std::string peer;         // the TCP peer's address, or "unix"
  int uid = -1, gid = -1;   // a Unix-socket peer's credentials (SO_PEERCRED)
  std::vector<int> groups;  // and its supplementary groups (SO_PEERGROUPS)
  std::string user;         // uid's user name, empty when it has none; looked up per connection
  // server_options::privileged's verdict on those credentials, asked once per connection (the
  // credentials are the peer's at connect time and do not change with its requests).
  bool privileged = false;
  std::string query() const {
    const auto q = target.find('?');
    return q == std::string::npos ? std::string() : target.substr(q + 1);
  }
  std::string path() const { return target.substr(0, target.find('?')); }
};

// Where a streamed response goes: write() sends one chunk and is false once the peer is gone;
// alive() says whether the peer is still there without writing.
class stream_sink {
 public:
  virtual ~stream_sink() = default;
  virtual bool write(std::string_view data) = 0;
  virtual bool alive() = 0;
};

struct http_response {
  int status = 200;
  std::string content_type = "application/x-amz-json-1.1";
  std::string body;
  std::map<std::string, std::string> headers;
  // Set: the body is streamed (chunked) by this function until it returns, which it must do
  // soon after the sink reports the peer gone (the server's stop() shuts every peer down). It
  // runs on a thread of its own, not a pool thread: a follower may hold it for hours.
  std::function<void(stream_sink&)> stream;
  // Set (with status 101 and an Upgrade header): once the header is sent, the connection is
  // this function's, both ways, on a thread of its own, until it returns; stop() shuts it down
  // like a stream's. What the peer sent after its request is not kept: it waits for the 101.
  std::function<void(int fd)> upgrade;
};

// Called on a pool thread; may block (a store write, RunTask). Exceptions become a 500.
using http_handler = std::function<http_response(const http_request&)>;

class http_server {
 public:
  virtual ~http_server() = default;
  // Stops accepting, shuts every connection down, waits for handlers in flight and streams to
  // return, and removes the socket file.
  virtual void stop() = 0;
  virtual std::string tcp_endpoint() const = 0;  // host:port actually bound
};

// The pool never has fewer threads than this, however few cores: handlers mostly wait (for the
// store's round trips, for Docker), and RunTasks waiting together share one claim commit: far
// more of them than cores run at once. One thread is kept for I/O (server_options::threads).
inline constexpr unsigned min_server_threads = 16;

struct server_options {
  std::string socket_path;
  std::string tcp;  // host:port, port 0 picks one; empty: none
  std::uint64_t max_body_bytes = 1 << 20;
  // Each listener has its own pool of connections, so a flood on TCP never refuses the socket.
  // One peer (a uid on the socket, an address on TCP) holds at most max_per_peer of them, and
  // the socket keeps `reserved` connections that only privileged peers get.
  int max_connections = 256;
  int max_per_peer = 32;
  int reserved = 32;
  // Which socket peers get the reserve (and no per-peer cap): root and the admin group.
  std::function<bool(int uid, int gid, const std::vector<int>& groups)> privileged;
  // A connection waits this long for its next request; once a request's first byte is in, the
  // whole request must arrive within request_deadline (a slow-loris peer is cut off).
  std::chrono::milliseconds idle_timeout{60'000};
  std::chrono::milliseconds request_deadline{10'000};
  // A peer that stops reading its response is cut off after this long.
  std::chrono::milliseconds send_timeout{30'000};
  // The pool's size; 0: hardware_concurrency, at least min_server_threads. At most threads - 1
  // handlers run at once, so that one thread always accepts, reads, refuses and enforces the
  // deadlines however slow the handlers are; requests read meanwhile wait for a free thread.
  unsigned threads = 0;
};

// An error when a process answers on the Unix socket at `path` (its file must not be replaced).
result<void> socket_unserved(const std::string& path);

// Binds both listeners (removing a stale socket file first) and serves until stop().
result<std::unique_ptr<http_server>> serve(const server_options& o, http_handler h);

}  // namespace berth::agent
