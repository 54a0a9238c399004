// HAProxy's runtime API (its admin socket, one command per connection): the load balancer a
// service's tasks are registered with. A backend named after the service's loadBalancerName
// holds one dynamic server per task, added with a health check, drained before the task stops,
// and deleted once drained.
//
// Thread-safe: every call opens its own connection; the object holds only the socket's path.
// Each call blocks for at most its timeout.
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
  explicit haproxy(std::string socket_path,
                   std::chrono::milliseconds timeout = std::chrono::seconds(2))
      : socket_(std::move(socket_path)), timeout_(timeout) {}

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

  const std::string& socket() const noexcept { return socket_; }

 private:
  result<std::string> command(const std::string& line) const;

  std::string socket_;
  std::chrono::milliseconds timeout_;
};

}  // namespace berth::lb
