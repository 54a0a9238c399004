// Writing to a handed-over descriptor: see fd_send.hpp.
#include "fd_send.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdio>

namespace berth::agent {

bool send_all(int fd, std::string_view data, std::chrono::milliseconds timeout) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      data.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) return false;
    pollfd p{fd, POLLOUT, 0};
    int rc;
    while ((rc = ::poll(&p, 1, static_cast<int>(timeout.count()))) < 0 && errno == EINTR) {
    }
    if (rc <= 0 || (p.revents & (POLLERR | POLLHUP)) != 0) return false;
  }
  return true;
}

bool fd_sink::write(std::string_view data) {
  if (!ok_ || data.empty()) return ok_;
  if (chunked_) {
    char size[24];
    const int n = std::snprintf(size, sizeof size, "%zx\r\n", data.size());
    ok_ = send_all(fd_, std::string_view(size, static_cast<std::size_t>(n)), timeout_) &&
          send_all(fd_, data, timeout_) && send_all(fd_, "\r\n", timeout_);
  } else {
    ok_ = send_all(fd_, data, timeout_);
  }
  return ok_;
}

bool fd_sink::alive() {
  if (!ok_) return false;
  pollfd p{fd_, POLLIN | POLLRDHUP, 0};
  if (::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) ok_ = false;
  return ok_;
}

}  // namespace berth::agent
