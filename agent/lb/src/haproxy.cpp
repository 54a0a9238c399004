#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <sstream>

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

}  // namespace

result<std::string> haproxy::command(const std::string& line) const {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return tl::unexpected(error{std::string("socket: ") + std::strerror(errno)});
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (socket_.size() >= sizeof a.sun_path) {
    ::close(fd);
    return tl::unexpected(error{"haproxy socket path too long: " + socket_});
  }
  std::memcpy(a.sun_path, socket_.c_str(), socket_.size() + 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    return tl::unexpected(error{"cannot reach HAProxy at " + socket_ + ": " + why});
  }
  const std::string out = line + "\n";
  std::size_t sent = 0;
  while (sent < out.size()) {
    const ssize_t n = ::send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      ::close(fd);
      return tl::unexpected(error{"HAProxy closed the admin socket"});
    }
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
      ::close(fd);
      return tl::unexpected(error{"HAProxy did not answer '" + line + "' in time"});
    }
    char buf[8192];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    reply.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
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
