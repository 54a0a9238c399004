// berthctl execute-command: see exec_command.hpp.
#include "exec_command.hpp"

#include <poll.h>
#include <signal.h>
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

#include "berth/agent/exec_frames.hpp"
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

namespace ex = berth::agent::exec;

// SIGWINCH noted for the session's loop (poll returns EINTR: the handler does not restart it),
// for as long as this lives.
volatile sig_atomic_t resized = 0;
class resize_watch {
 public:
  resize_watch() {
    struct sigaction sa {};
    sa.sa_handler = [](int) { resized = 1; };
    sigemptyset(&sa.sa_mask);
    active_ = ::sigaction(SIGWINCH, &sa, &saved_) == 0;
  }
  ~resize_watch() {
    if (active_) (void)::sigaction(SIGWINCH, &saved_, nullptr);
  }
  resize_watch(const resize_watch&) = delete;
  resize_watch& operator=(const resize_watch&) = delete;

 private:
  struct sigaction saved_ {};
  bool active_ = false;
};

// The local terminal's size as a resize frame's data ("rows cols"), or nothing.
std::optional<std::string> terminal_size() {
  winsize ws{};
  if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) != 0 || ws.ws_row == 0 || ws.ws_col == 0) {
    return std::nullopt;
  }
  return std::to_string(ws.ws_row) + " " + std::to_string(ws.ws_col);
}

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
  std::optional<resize_watch> watch;
  if (tty) {
    raw.emplace(STDIN_FILENO);
    watch.emplace();
  }
  bool stdin_open = interactive;
  if (!stdin_open) (void)::shutdown(fd, SHUT_WR);
  char buf[16 * 1024];
  for (;;) {
    // Every whole frame received so far.
    while (auto f = ex::take_frame(in)) {
      const auto& [type, data] = *f;
      if (type == ex::frame_stdout) {
        (void)write_all(STDOUT_FILENO, data);
      } else if (type == ex::frame_stderr) {
        (void)write_all(STDERR_FILENO, data);
      } else {
        if (type == ex::frame_exit) {
          out.exit_code = std::atoi(data.c_str());
        } else {
          out.error = data;
        }
        ::close(fd);
        return out;
      }
    }
    // The local terminal's new size, for the remote one (a session whose stdin ended has no
    // terminal left to resize).
    if (resized != 0) {
      resized = 0;
      if (auto size = terminal_size(); size && stdin_open) {
        (void)send_all(fd, ex::frame(ex::frame_resize, *size));
      }
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
      if (n <= 0 || !send_all(fd, ex::frame(ex::frame_stdin,
                                            std::string_view(buf, static_cast<std::size_t>(n))))) {
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
