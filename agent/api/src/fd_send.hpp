// Writing to a connection's descriptor once the server has handed it over (a stream's or an
// upgraded connection's thread owns it): non-blocking sends with a bound on waiting.
#pragma once

#include <chrono>
#include <string_view>

#include "berth/api/server.hpp"

namespace berth::agent {

// Sends all of `data` on a non-blocking descriptor, waiting at most `timeout` for the peer to make
// room each time its buffer is full. False once the peer is gone or too slow.
bool send_all(int fd, std::string_view data, std::chrono::milliseconds timeout);

// A streamed body on a descriptor the stream's thread owns: chunked on HTTP/1.1, raw on 1.0.
class fd_sink final : public stream_sink {
 public:
  fd_sink(int fd, bool chunked, std::chrono::milliseconds timeout)
      : fd_(fd), chunked_(chunked), timeout_(timeout) {}
  bool write(std::string_view data) override;
  bool alive() override;
  bool ok() const { return ok_; }

 private:
  int fd_;
  bool chunked_;
  std::chrono::milliseconds timeout_;
  bool ok_ = true;
};

}  // namespace berth::agent
