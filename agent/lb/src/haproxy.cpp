#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <utility>

#include "berth/lb.hpp"

namespace berth::lb {

namespace {

std::vector<std::string> split(const std::string& line, char sep) {
  std::vector<std::string> out;
  std::string part;
  std::stringstream in(line);
  while (std::getline(in, part, sep)) out.push_back(part);
  if (!line.empty() && line.back() == sep) out.emplace_back();
  return out;
}

// HAProxy answers a command it refused with a sentence; these are its ways of saying yes.
bool refused(const std::string& reply) {
  std::string r = reply;
  while (!r.empty() && (r.back() == '\n' || r.back() == ' ')) r.pop_back();
  return !r.empty() && r != "New server registered." && r != "Server deleted.";
}

// The one owner of a connection's descriptor: closed on every way out of command().
class owned_fd {
 public:
  explicit owned_fd(int fd) noexcept : fd_(fd) {}
  owned_fd(owned_fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  owned_fd& operator=(owned_fd&&) = delete;
  ~owned_fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const noexcept { return fd_; }

 private:
  int fd_;
};

// Where HAProxy listens, ready for connect().
struct endpoint {
  sockaddr_storage addr{};
  socklen_t len = 0;
  bool tcp = false;
};

// HAProxy's address syntax, the part berthd uses: ipv4@HOST:PORT, ipv6@[HOST]:PORT, unix@PATH,
// or a bare path. Hosts are numeric: a name would need DNS, which no deadline bounds.
result<endpoint> parse_address(const std::string& address) {
  const auto bad = [&](const std::string& why) {
    return tl::unexpected(error{"bad HAProxy address '" + address + "': " + why});
  };
  // A family is lower-case letters and digits before the first '@'; anything else (a path,
  // even one with an '@' further on) is a Unix socket's path, as before.
  std::string family;
  std::string rest = address;
  if (const auto at = address.find('@'); at != std::string::npos && at > 0) {
    const std::string head = address.substr(0, at);
    if (head.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789") == std::string::npos) {
      family = head;
      rest = address.substr(at + 1);
    }
  }
  endpoint e;
  if (family.empty() || family == "unix") {
    if (family == "unix" && rest.empty()) return bad("no path after unix@");
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (rest.size() >= sizeof a.sun_path) {
      return tl::unexpected(error{"haproxy socket path too long: " + address});
    }
    std::memcpy(a.sun_path, rest.c_str(), rest.size() + 1);
    std::memcpy(&e.addr, &a, sizeof a);
    e.len = sizeof a;
    return e;
  }
  std::string host;
  std::string port;
  if (family == "ipv4") {
    const auto colon = rest.rfind(':');
    if (colon == std::string::npos) return bad("expected ipv4@HOST:PORT");
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  } else if (family == "ipv6") {
    const auto close = rest.find(']');
    if (rest.empty() || rest[0] != '[' || close == std::string::npos ||
        rest.compare(close + 1, 1, ":") != 0) {
      return bad("expected ipv6@[HOST]:PORT");
    }
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    return bad("unknown family '" + family + "@': expected ipv4@, ipv6@, unix@ or a path");
  }
  unsigned p = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (port.empty() || ec != std::errc{} || end != port.data() + port.size() || p == 0 ||
      p > 65535) {
    return bad("'" + port + "' is not a port (1-65535)");
  }
  e.tcp = true;
  if (family == "ipv4") {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(p));
    if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) {
      return bad("'" + host + "' is not a numeric IPv4 address");
    }
    std::memcpy(&e.addr, &a, sizeof a);
    e.len = sizeof a;
  } else {
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(static_cast<std::uint16_t>(p));
    if (::inet_pton(AF_INET6, host.c_str(), &a.sin6_addr) != 1) {
      return bad("'" + host + "' is not a numeric IPv6 address");
    }
    std::memcpy(&e.addr, &a, sizeof a);
    e.len = sizeof a;
  }
  return e;
}

// A connected socket. Over TCP the connect is non-blocking and waits at most `timeout` (a host
// that drops SYNs would otherwise hold the caller for minutes); a Unix socket connects as it
// always has. Either way the socket comes back blocking: the exchange is the same for both.
result<owned_fd> connect_to(const std::string& address, std::chrono::milliseconds timeout) {
  auto e = parse_address(address);
  if (!e) return tl::unexpected(e.error());
  const auto fail = [&](int err) {
    return tl::unexpected(error{"cannot reach HAProxy at " + address + ": " + std::strerror(err)});
  };
  owned_fd fd(
      ::socket(e->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | (e->tcp ? SOCK_NONBLOCK : 0), 0));
  if (fd.get() < 0) {
    return tl::unexpected(
        error{"cannot reach HAProxy at " + address + ": socket: " + std::strerror(errno)});
  }
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&e->addr), e->len) == 0) return fd;
  if (!e->tcp || errno != EINPROGRESS) return fail(errno);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    // Rounded up: poll() counts whole milliseconds, and giving up early is not a timeout.
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return tl::unexpected(error{"cannot reach HAProxy at " + address + ": " +
                                  std::strerror(ETIMEDOUT) + " after " +
                                  std::to_string(timeout.count()) + "ms"});
    }
    pollfd p{fd.get(), POLLOUT, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left.count()));
    if (n > 0) break;
    if (n < 0 && errno != EINTR) return fail(errno);
  }
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err != 0) return fail(err);
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) return fail(errno);
  return fd;
}

}  // namespace

result<void> haproxy::check_address(const std::string& address) {
  auto e = parse_address(address);
  if (!e) return tl::unexpected(e.error());
  return {};
}

result<std::string> haproxy::command(const std::string& line) const {
  // One command a line: ';' or a line break would let a name carry another command.
  if (line.find_first_of(";\n\r") != std::string::npos) {
    return tl::unexpected(error{"refused an HAProxy command holding ';' or a line break"});
  }
  auto conn = connect_to(socket_, timeout_);
  if (!conn) return tl::unexpected(conn.error());
  const int fd = conn->get();
  const std::string out = line + "\n";
  std::size_t sent = 0;
  while (sent < out.size()) {
    const ssize_t n = ::send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return tl::unexpected(error{"HAProxy at " + socket_ + " closed the admin socket"});
    sent += static_cast<std::size_t>(n);
  }
  // Without "prompt" HAProxy answers and closes.
  std::string reply;
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
      return tl::unexpected(
          error{"HAProxy at " + socket_ + " did not answer '" + line + "' in time"});
    }
    char buf[8192];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    reply.append(buf, static_cast<std::size_t>(n));
  }
  return reply;
}

result<std::vector<haproxy::server>> haproxy::servers(const std::string& backend) const {
  // "show stat <backend> 4 -1": the CSV of the backend's servers (type 4), its header first.
  auto r = command("show stat " + backend + " 4 -1");
  if (!r) return tl::unexpected(r.error());
  std::stringstream in(*r);
  std::string line;
  std::vector<std::string> header;
  std::vector<server> out;
  while (std::getline(in, line)) {
    if (line.starts_with("# ")) {
      header = split(line.substr(2), ',');
      continue;
    }
    if (line.empty() || header.empty()) continue;
    const auto cells = split(line, ',');
    const auto cell = [&](const std::string& name) -> std::string {
      for (std::size_t i = 0; i < header.size() && i < cells.size(); ++i) {
        if (header[i] == name) return cells[i];
      }
      return {};
    };
    if (cell("pxname") != backend) continue;
    server s;
    s.name = cell("svname");
    s.address = cell("addr");
    s.status = cell("status");
    s.check = cell("check_status");
    // An empty or odd cell (a backend HAProxy has not counted yet) reads as no sessions.
    const std::string scur = cell("scur");
    if (std::from_chars(scur.data(), scur.data() + scur.size(), s.sessions).ec != std::errc{}) {
      s.sessions = 0;
    }
    out.push_back(s);
  }
  if (header.empty()) {
    std::string why = *r;
    while (!why.empty() && why.back() == '\n') why.pop_back();
    return tl::unexpected(error{"HAProxy: backend " + backend + ": " + why});
  }
  return out;
}

result<void> haproxy::add(const std::string& backend, const std::string& name,
                          const std::string& address) const {
  const std::string id = backend + "/" + name;
  // Checked every second; two passes bring it UP, three failures take it DOWN. HAProxy takes a
  // server it adds for UP before any check ("UP 1/3") and sends it traffic, maybe before the
  // task listens: it is marked DOWN as soon as it is in service (HAProxy ignores the mark in
  // maintenance), so only passed checks bring traffic to it.
  for (const std::string& cmd :
       {"add server " + id + " " + address + " check inter 1s rise 2 fall 3", "enable health " + id,
        "enable server " + id, "set server " + id + " health down"}) {
    auto r = command(cmd);
    std::string why = r ? *r : r.error().message;
    if (r && !refused(*r)) continue;
    while (!why.empty() && why.back() == '\n') why.pop_back();
    // Half added (in maintenance, never checked): taken out again, so a retry starts clean.
    if (!cmd.starts_with("add ")) (void)remove(backend, name);
    return tl::unexpected(error{"HAProxy refused '" + cmd + "': " + why});
  }
  return {};
}

result<void> haproxy::drain(const std::string& backend, const std::string& name) const {
  auto r = command("set server " + backend + "/" + name + " state drain");
  if (!r) return tl::unexpected(r.error());
  if (refused(*r)) return tl::unexpected(error{"HAProxy refused to drain " + name + ": " + *r});
  return {};
}

result<void> haproxy::shutdown_sessions(const std::string& backend, const std::string& name) const {
  auto r = command("shutdown sessions server " + backend + "/" + name);
  if (!r) return tl::unexpected(r.error());
  return {};
}

result<void> haproxy::remove(const std::string& backend, const std::string& name) const {
  const std::string id = backend + "/" + name;
  auto m = command("set server " + id + " state maint");
  if (!m) return tl::unexpected(m.error());
  if (m->find("No such server") != std::string::npos) return {};
  auto r = command("del server " + id);
  if (!r) return tl::unexpected(r.error());
  if (r->find("No such server") != std::string::npos) return {};
  if (refused(*r)) return tl::unexpected(error{"HAProxy refused to delete " + id + ": " + *r});
  return {};
}

}  // namespace berth::lb
