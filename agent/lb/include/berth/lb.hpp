// HAProxy's runtime API (its admin socket, one command per connection): the load balancer a
// service's tasks are registered with. A backend named after the service's loadBalancerName
// holds one dynamic server per task, added with a health check, drained before the task stops,
// and deleted once drained.
//
// Where HAProxy listens is written as in haproxy.cfg's `stats socket` line: `ipv4@HOST:PORT`,
// `ipv6@[HOST]:PORT` (numeric addresses: nothing is resolved, so nothing waits on DNS),
// `unix@PATH`, or a bare path (a Unix socket, as before).
//
// Thread-safe: every call opens its own connection; the object holds only the address. Each
// command waits at most `timeout` to connect over TCP (a Unix socket's connect has no deadline,
// as before: the kernel answers it at once unless HAProxy's backlog is full) and at most
// `timeout` for its answer.
#pragma once

#include <chrono>
#include <string>
#include <tl/expected.hpp>
#include <vector>

namespace berth::lb {

struct error {
  std::string message;  // names the command or the socket: it goes to logs and service events
};
template <class T>
using result = tl::expected<T, error>;

class haproxy {
 public:
  // A malformed address is not refused here but by every call (check_address() says so first).
  explicit haproxy(std::string address, std::chrono::milliseconds timeout = std::chrono::seconds(2))
      : socket_(std::move(address)), timeout_(timeout) {}

  // Whether `address` is one of the forms above; the error names it and says what is wrong.
  // For configuration to refuse a bad address at startup.
  static result<void> check_address(const std::string& address);

  struct server {
    std::string name;
    std::string address;  // host:port
    std::string status;   // UP, DOWN, DRAIN, MAINT, "no check", "UP 1/3", ...
    long sessions = 0;    // current sessions (scur)
    std::string check;    // the last check's result: INI (none yet), L4OK, L4CON, L7STS, ...
    // DOWN because a check failed, not because none has run yet (add() starts servers DOWN).
    bool failing() const {
      return status.starts_with("DOWN") && check.find("INI") == std::string::npos &&
             check.find("OK") == std::string::npos;
    }
  };
  result<std::vector<server>> servers(const std::string& backend) const;
  // Adds the server with a health check (every second) and puts it in service. An existing one
  // of that name is an error (callers look first).
  result<void> add(const std::string& backend, const std::string& name,
                   const std::string& address) const;
  // No new sessions; those open finish.
  result<void> drain(const std::string& backend, const std::string& name) const;
  // Ends the sessions it still has (a drain whose time is up).
  result<void> shutdown_sessions(const std::string& backend, const std::string& name) const;
  // Out of service and gone; a server that is not there is fine.
  result<void> remove(const std::string& backend, const std::string& name) const;

  // The address as given (e.g. "ipv4@127.0.0.1:9999", "/run/haproxy/admin.sock").
  const std::string& socket() const noexcept { return socket_; }

 private:
  result<std::string> command(const std::string& line) const;

  std::string socket_;
  std::chrono::milliseconds timeout_;
};

}  // namespace berth::lb
