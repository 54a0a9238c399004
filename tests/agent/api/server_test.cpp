// berth::api's server against a real Unix socket, with a handler the test holds: what the pool's
// one I/O thread keeps doing while every handler slot is taken, keep-alive and pipelining, and
// stop() with a stream and a half-sent request outstanding.
#include "berth/api/server.hpp"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

namespace {

namespace ag = berth::agent;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

// A client's descriptor on `path`, or -1.
int connect_unix(const std::string& path) {
  boost::asio::io_context io;
  boost::asio::local::stream_protocol::socket s(io);
  boost::system::error_code ec;
  s.connect(boost::asio::local::stream_protocol::endpoint(path), ec);
  return ec ? -1 : s.release();
}

void send_text(int fd, std::string_view s) {
  ASSERT_EQ(::send(fd, s.data(), s.size(), MSG_NOSIGNAL), static_cast<ssize_t>(s.size()));
}

// What the server sent until it closed, `enough` said so of the text, or the deadline passed.
struct received {
  std::string text;
  bool closed = false;
};
received receive(int fd, steady::time_point deadline,
                 const std::function<bool(const std::string&)>& enough = nullptr) {
  received r;
  while (steady::now() < deadline && !(enough && enough(r.text))) {
    pollfd p{fd, POLLIN, 0};
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now());
    if (::poll(&p, 1, static_cast<int>(std::max<long>(left.count(), 0))) <= 0) continue;
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      r.closed = true;
      break;
    }
    r.text.append(buf, static_cast<std::size_t>(n));
  }
  return r;
}

auto has(std::string_view what) {
  return [what](const std::string& text) { return text.find(what) != std::string::npos; };
}

constexpr std::string_view slow_request = "GET /slow HTTP/1.1\r\nHost: b\r\n\r\n";
constexpr std::string_view fast_request = "GET /fast HTTP/1.1\r\nHost: b\r\n\r\n";

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("berth-server-test-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    opts_.socket_path = (dir_ / "api.sock").string();
    opts_.threads = 4;  // three handler slots
    opts_.max_per_peer = 5;
    opts_.request_deadline = 300ms;
    // The test runs as root: nobody is privileged here, so the share cap applies.
    opts_.privileged = [](int, int, const std::vector<int>&) { return false; };
  }
  void TearDown() override {
    release_slow();
    if (server_) server_->stop();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  void serve() {
    auto s = ag::serve(opts_, [this](const ag::http_request& r) {
      ag::http_response out;
      out.content_type = "application/json";
      if (r.path() == "/slow") {
        std::unique_lock lock(mu_);
        ++slow_running_;
        cv_.notify_all();
        cv_.wait(lock, [&] { return released_; });
      }
      if (r.path() == "/stream") {
        out.stream = [](ag::stream_sink& sink) {
          while (sink.alive() && sink.write("{}\n")) {
          }
        };
      }
      out.body = R"({"path":")" + r.path() + R"("})";
      return out;
    });
    ASSERT_TRUE(s) << s.error().message;
    server_ = std::move(*s);
  }

  bool wait_slow_running(int n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, 5s, [&] { return slow_running_ >= n; });
  }
  void release_slow() {
    std::lock_guard lock(mu_);
    released_ = true;
    cv_.notify_all();
  }

  fs::path dir_;
  ag::server_options opts_;
  std::unique_ptr<ag::http_server> server_;
  std::mutex mu_;
  std::condition_variable cv_;
  int slow_running_ = 0;
  bool released_ = false;
};

// Every handler slot blocked: the I/O thread still refuses a peer past its share with the 503 and
// cuts a half-sent request off at its deadline; a queued request is answered once a slot frees.
TEST_F(ServerTest, BlockedHandlersLeaveAThreadForIo) {
  serve();
  std::vector<int> fds;
  for (int i = 0; i < 3; ++i) {
    fds.push_back(connect_unix(opts_.socket_path));
    send_text(fds.back(), slow_request);
  }
  ASSERT_TRUE(wait_slow_running(3)) << "three slow handlers never ran";
  const int queued = connect_unix(opts_.socket_path);
  send_text(queued, fast_request);
  const int loris = connect_unix(opts_.socket_path);
  send_text(loris, "GET /fast HTTP/1.1\r\nHo");
  fds.push_back(queued);
  fds.push_back(loris);
  // The sixth connection of this uid: refused at once.
  const int extra = connect_unix(opts_.socket_path);
  const auto refused = receive(extra, steady::now() + 5s);
  EXPECT_TRUE(refused.text.starts_with("HTTP/1.1 503")) << refused.text;
  EXPECT_NE(refused.text.find("Too many connections from this peer (uid:0; at most 5)"),
            std::string::npos)
      << refused.text;
  EXPECT_TRUE(refused.closed);
  ::close(extra);
  const auto cut = receive(loris, steady::now() + 5s);
  EXPECT_TRUE(cut.closed) << "a half-sent request outlived its deadline: " << cut.text;
  EXPECT_EQ(cut.text, "");
  // The queued request waits for a slot, not for the I/O thread.
  EXPECT_FALSE(receive(queued, steady::now() + 100ms).closed);
  release_slow();
  const auto answered = receive(queued, steady::now() + 5s, has(R"({"path":"/fast"})"));
  EXPECT_TRUE(answered.text.starts_with("HTTP/1.1 200")) << answered.text;
  EXPECT_NE(answered.text.find(R"({"path":"/fast"})"), std::string::npos) << answered.text;
  for (const int fd : fds) ::close(fd);
}

// Two requests in one write on a kept-alive connection: two answers, in order, and the
// connection stays open until the peer asks it to close.
TEST_F(ServerTest, PipelinedRequestsAreAnsweredInOrderOnOneConnection) {
  serve();
  const int fd = connect_unix(opts_.socket_path);
  send_text(fd, std::string(fast_request) + "GET /second HTTP/1.1\r\nHost: b\r\n\r\n");
  const auto both = receive(fd, steady::now() + 5s, has(R"({"path":"/second"})"));
  const auto first = both.text.find(R"({"path":"/fast"})");
  const auto second = both.text.find(R"({"path":"/second"})");
  ASSERT_NE(first, std::string::npos) << both.text;
  ASSERT_NE(second, std::string::npos) << both.text;
  EXPECT_LT(first, second);
  EXPECT_FALSE(both.closed);
  send_text(fd, "GET /last HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
  const auto last = receive(fd, steady::now() + 5s);
  EXPECT_NE(last.text.find(R"({"path":"/last"})"), std::string::npos) << last.text;
  EXPECT_TRUE(last.closed);
  ::close(fd);
}

// stop() with a stream's follower and a half-sent request connected: both are shut down, stop()
// returns, and the socket file is gone.
TEST_F(ServerTest, StopEndsStreamsAndHeldConnections) {
  opts_.request_deadline = 60s;
  serve();
  const int follower = connect_unix(opts_.socket_path);
  send_text(follower, "GET /stream HTTP/1.1\r\nHost: b\r\n\r\n");
  const auto head = receive(follower, steady::now() + 5s, has("\r\n\r\n"));
  EXPECT_NE(head.text.find("Transfer-Encoding: chunked"), std::string::npos) << head.text;
  const int held = connect_unix(opts_.socket_path);
  send_text(held, "POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 10\r\n\r\nabc");
  const auto began = steady::now();
  server_->stop();
  EXPECT_LT(steady::now() - began, 5s);
  EXPECT_FALSE(fs::exists(opts_.socket_path));
  EXPECT_TRUE(receive(held, steady::now() + 5s).closed);
  ::close(held);
  ::close(follower);
}

}  // namespace
