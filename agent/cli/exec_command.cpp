// berthctl execute-command: see exec_command.hpp.
#include "exec_command.hpp"

#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string_view>

#include "berth/version.hpp"

namespace berthctl {

namespace {

// The local terminal in raw mode for as long as this lives: keys go to the remote one as typed.
class raw_terminal {
 public:
  explicit raw_terminal(int fd) : fd_(fd) {
    if (::tcgetattr(fd_, &saved_) != 0) return;
    termios raw = saved_;
    ::cfmakeraw(&raw);
    active_ = ::tcsetattr(fd_, TCSANOW, &raw) == 0;
  }
  ~raw_terminal() {
    if (active_) (void)::tcsetattr(fd_, TCSANOW, &saved_);
  }
  raw_terminal(const raw_terminal&) = delete;
  raw_terminal& operator=(const raw_terminal&) = delete;

 private:
  int fd_;
  termios saved_{};
  bool active_ = false;
};

bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

bool send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Reads berthd's answer up to the end of its header; the rest stays in `in`. The status, or
// nullopt when the connection ended first.
std::optional<long> read_header(int fd, std::string& in, std::string& header) {
  char buf[4096];
  for (;;) {
    if (const auto end = in.find("\r\n\r\n"); end != std::string::npos) {
      header = in.substr(0, end);
      in.erase(0, end + 4);
      long status = 0;
      if (std::sscanf(header.c_str(), "HTTP/1.%*d %ld", &status) != 1) return std::nullopt;
      return status;
    }
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    in.append(buf, static_cast<std::size_t>(n));
  }
}

}  // namespace

exec_outcome execute_command(const std::string& socket, nlohmann::json request, bool interactive) {
  exec_outcome out;
  const bool tty = interactive && ::isatty(STDIN_FILENO) == 1 && ::isatty(STDOUT_FILENO) == 1;
  request["interactive"] = interactive;
  if (tty) {
    request["tty"] = true;
    winsize ws{};
    if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0) {
      request["rows"] = ws.ws_row;
      request["cols"] = ws.ws_col;
    }
  }
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (fd < 0 || socket.size() >= sizeof addr.sun_path) {
    out.reached = false;
    out.error = "cannot reach berthd at " + socket + ": " +
                (fd < 0 ? std::strerror(errno) : "the socket's path is too long");
    if (fd >= 0) ::close(fd);
    return out;
  }
  std::memcpy(addr.sun_path, socket.c_str(), socket.size() + 1);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    out.reached = false;
    out.error = "cannot reach berthd at " + socket + ": " + std::strerror(errno) +
                " (is berthd running? --socket / BERTH_SOCKET)";
    ::close(fd);
    return out;
  }
  const std::string body = request.dump();
  const std::string head =
      "POST / HTTP/1.1\r\nHost: berth\r\nContent-Type: application/x-amz-json-1.1\r\n"
      "X-Amz-Target: BerthV1.ExecuteCommand\r\nUser-Agent: berthctl/" BERTH_VERSION
      "\r\nConnection: Upgrade\r\nUpgrade: berth-exec\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\n\r\n";
  std::string in, header;
  std::optional<long> status;
  if (send_all(fd, head + body)) status = read_header(fd, in, header);
  if (!status) {
    out.reached = false;
    out.error = "berthd at " + socket + " closed the connection without an answer";
    ::close(fd);
    return out;
  }
  out.status = *status;
  if (*status != 101) {  // refused: the body, as long as its Content-Length says, is its error
    std::string lower = header;
    for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    const auto cl = lower.find("\r\ncontent-length:");
    const std::size_t want =
        cl == std::string::npos ? 0 : std::strtoul(lower.c_str() + cl + 17, nullptr, 10);
    char buf[4096];
    ssize_t n;
    while (in.size() < want && (n = ::recv(fd, buf, sizeof buf, 0)) > 0) {
      in.append(buf, static_cast<std::size_t>(n));
    }
    out.body = std::move(in);
    ::close(fd);
    return out;
  }
  out.started = true;
  std::optional<raw_terminal> raw;
  if (tty) raw.emplace(STDIN_FILENO);
  bool stdin_open = interactive;
  if (!stdin_open) (void)::shutdown(fd, SHUT_WR);
  char buf[16 * 1024];
  for (;;) {
    // Every whole frame received so far.
    while (in.size() >= 8) {
      const auto* b = reinterpret_cast<const unsigned char*>(in.data());
      const std::size_t len = (std::size_t{b[4]} << 24) | (std::size_t{b[5]} << 16) |
                              (std::size_t{b[6]} << 8) | std::size_t{b[7]};
      if (in.size() < 8 + len) break;
      const std::string_view data(in.data() + 8, len);
      switch (b[0]) {
        case 1:
          (void)write_all(STDOUT_FILENO, data);
          break;
        case 2:
          (void)write_all(STDERR_FILENO, data);
          break;
        case 3:
          out.exit_code = std::atoi(std::string(data).c_str());
          ::close(fd);
          return out;
        default:
          out.error = std::string(data);
          ::close(fd);
          return out;
      }
      in.erase(0, 8 + len);
    }
    pollfd p[2] = {{fd, POLLIN, 0}, {STDIN_FILENO, static_cast<short>(stdin_open ? POLLIN : 0), 0}};
    if (::poll(p, stdin_open ? 2 : 1, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if ((p[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      in.append(buf, static_cast<std::size_t>(n));
    }
    if (stdin_open && (p[1].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0 || !send_all(fd, std::string_view(buf, static_cast<std::size_t>(n)))) {
        stdin_open = false;
        (void)::shutdown(fd, SHUT_WR);  // the command's stdin ends
      }
    }
  }
  out.error = "berthd closed the session before the command ended";
  ::close(fd);
  return out;
}

}  // namespace berthctl
