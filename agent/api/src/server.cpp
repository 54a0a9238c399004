#include "berth/api/server.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "http_reader.hpp"

namespace berth::agent {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using local = asio::local::stream_protocol;
using tcp = asio::ip::tcp;

http_response too_large(std::uint64_t limit) {
  http_response r;
  r.status = 400;
  r.body = R"({"__type":"ClientException","message":"Request body exceeds the limit of )" +
           std::to_string(limit) + R"( bytes"})";
  return r;
}

http_response malformed(const std::string& why) {
  http_response r;
  r.status = 400;
  r.body = R"({"__type":"ClientException","message":"Malformed HTTP request: )" + why + R"("})";
  return r;
}

class server final : public http_server {
 public:
  server(const server_options& o, http_handler h) : opts_(o), handler_(std::move(h)) {}
  ~server() override { stop(); }

  result<void> start() {
    beast::error_code ec;
    if (!opts_.socket_path.empty()) {
      std::error_code fec;
      std::filesystem::create_directories(std::filesystem::path(opts_.socket_path).parent_path(),
                                          fec);
      if (auto free = socket_unserved(opts_.socket_path); !free) return free;
      std::filesystem::remove(opts_.socket_path, fec);
      unix_.emplace(io_);
      unix_->open(local(), ec);
      if (!ec) unix_->bind(local::endpoint(opts_.socket_path), ec);
      if (!ec) unix_->listen(asio::socket_base::max_listen_connections, ec);
      if (ec) {
        return tl::unexpected(error{"cannot listen on " + opts_.socket_path + ": " + ec.message()});
      }
      // Anyone may connect: the peer's credentials decide what it may call (see daemon.cpp).
      ::chmod(opts_.socket_path.c_str(), 0666);
      threads_.emplace_back([this] { accept_loop(*unix_, unix_live_); });
    }
    if (!opts_.tcp.empty()) {
      const auto colon = opts_.tcp.rfind(':');
      std::string host = opts_.tcp.substr(0, colon);
      if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
      const auto addr = asio::ip::make_address(host, ec);
      if (ec) return tl::unexpected(error{"bad listen address '" + host + "': " + ec.message()});
      unsigned port = 0;
      try {
        port = static_cast<unsigned>(std::stoul(opts_.tcp.substr(colon + 1)));
      } catch (...) {
        return tl::unexpected(error{"bad listen port in '" + opts_.tcp + "'"});
      }
      if (port > 65535) return tl::unexpected(error{"bad listen port in '" + opts_.tcp + "'"});
      tcp_.emplace(io_);
      const tcp::endpoint ep(addr, static_cast<unsigned short>(port));
      tcp_->open(ep.protocol(), ec);
      if (!ec) tcp_->set_option(asio::socket_base::reuse_address(true), ec);
      if (!ec) tcp_->bind(ep, ec);
      if (!ec) tcp_->listen(asio::socket_base::max_listen_connections, ec);
      if (ec) return tl::unexpected(error{"cannot listen on " + opts_.tcp + ": " + ec.message()});
      const auto bound = tcp_->local_endpoint();
      endpoint_ = (bound.address().is_v6() ? "[" + bound.address().to_string() + "]"
                                           : bound.address().to_string()) +
                  ":" + std::to_string(bound.port());
      threads_.emplace_back([this] { accept_loop(*tcp_, tcp_live_); });
    }
    threads_.emplace_back([this] { reaper_loop(); });
    return {};
  }

  void stop() override {
    {
      std::lock_guard lock(mu_);
      if (stopped_) return;
      stopped_ = true;
      beast::error_code ec;
      // shutdown() wakes a blocked accept(); close() alone may not.
      if (unix_) ::shutdown(unix_->native_handle(), SHUT_RDWR);
      if (tcp_) ::shutdown(tcp_->native_handle(), SHUT_RDWR);
      for (const auto& [fd, c] : connections_) ::shutdown(fd, SHUT_RDWR);
    }
    reaper_cv_.notify_all();
    for (auto& t : threads_) t.join();
    threads_.clear();
    std::unique_lock lock(mu_);
    done_.wait(lock, [&] { return live_ == 0; });
    if (!opts_.socket_path.empty()) {
      std::error_code fec;
      std::filesystem::remove(opts_.socket_path, fec);
    }
  }

  std::string tcp_endpoint() const override { return endpoint_; }

 private:
  // A peer's identity as the pools count it, and whether it may use the reserve.
  struct peer_info {
    std::string key;  // "uid:1000" or "tcp:127.0.0.1"
    bool privileged = false;
    http_request base;  // what every request on the connection carries
  };

  static peer_info identify(local::socket& sock, const server_options& o) {
    peer_info p;
    const int fd = sock.native_handle();
    p.base.peer = "unix";
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
      p.base.uid = static_cast<int>(cred.uid);
      p.base.gid = static_cast<int>(cred.gid);
    }
    // ERANGE says how much room the list needs: asked again with that.
    std::vector<gid_t> groups(64);
    socklen_t glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    int rc = ::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen);
    if (rc != 0 && errno == ERANGE) {
      groups.resize(glen / sizeof(gid_t) + 1);
      glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
      rc = ::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen);
    }
    if (rc == 0) {
      for (std::size_t i = 0; i < glen / sizeof(gid_t); ++i) {
        p.base.groups.push_back(static_cast<int>(groups[i]));
      }
    }
    p.key = "uid:" + std::to_string(p.base.uid);
    p.privileged =
        o.privileged && p.base.uid >= 0 && o.privileged(p.base.uid, p.base.gid, p.base.groups);
    p.base.privileged = p.privileged;
    return p;
  }

  static peer_info identify(tcp::socket& sock, const server_options&) {
    peer_info p;
    beast::error_code ec;
    const auto ep = sock.remote_endpoint(ec);
    p.base.tcp = true;
    p.base.peer = ec ? "" : ep.address().to_string();
    p.key = "tcp:" + p.base.peer;
    return p;
  }

  // Past a limit the peer is told why, in one write that cannot block (the socket's buffer is
  // empty), and the connection closes.
  static void refuse(int fd, const std::string& why) {
    const std::string body = R"({"__type":"ThrottlingException","message":")" + why + R"("})";
    const std::string msg =
        "HTTP/1.1 503 Service Unavailable\r\nServer: berthd\r\n"
        "Content-Type: application/x-amz-json-1.1\r\nConnection: close\r\n"
        "Content-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body;
    (void)::send(fd, msg.data(), msg.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  }

  template <class Acceptor>
  void accept_loop(Acceptor& acceptor, int& live) {
    for (;;) {
      beast::error_code ec;
      typename Acceptor::protocol_type::socket sock(io_);
      acceptor.accept(sock, ec);
      {
        std::lock_guard lock(mu_);
        if (stopped_) return;
      }
      if (ec) continue;
      peer_info peer = identify(sock, opts_);
      const int fd = sock.native_handle();
      std::string refused;
      {
        std::lock_guard lock(mu_);
        if (stopped_) return;
        // Each connection is a thread: the pool and the per-peer share bound them. The reserve
        // is the pool's top: only privileged peers are let into it, and they have no share cap.
        const int room = opts_.max_connections - (peer.privileged ? 0 : opts_.reserved);
        if (live >= room) {
          refused = "Too many connections to berthd";
        } else if (!peer.privileged && per_peer_[peer.key] >= opts_.max_per_peer) {
          refused = "Too many connections from this peer (" + peer.key + "; at most " +
                    std::to_string(opts_.max_per_peer) + ")";
        } else {
          ++live;
          ++live_;
          ++per_peer_[peer.key];
          connections_[fd] = connection{std::chrono::steady_clock::time_point::max()};
        }
      }
      if (!refused.empty()) {
        refuse(fd, refused);
        beast::error_code ignored;
        sock.close(ignored);
        continue;
      }
      // A peer that stops reading (an event stream's follower, say) is cut off after 30 s of
      // blocked writes.
      timeval send_tv{30, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_tv, sizeof send_tv);
      try {
        std::thread([this, s = std::move(sock), p = std::move(peer), &live]() mutable {
          session(std::move(s), p, live);
        }).detach();
      } catch (const std::system_error&) {
        // The lambda, and the socket in it, are gone already.
        std::lock_guard lock(mu_);
        release(fd, peer.key, live);
      }
    }
  }

  // Under mu_.
  void release(int fd, const std::string& key, int& live) {
    connections_.erase(fd);
    if (--per_peer_[key] == 0) per_peer_.erase(key);
    --live;
    if (--live_ == 0) done_.notify_all();
  }

  // Sets (or, with max(), clears) the time by which fd's current request must be in whole.
  void set_deadline(int fd, std::chrono::steady_clock::time_point at) {
    std::lock_guard lock(mu_);
    if (auto c = connections_.find(fd); c != connections_.end()) c->second.deadline = at;
  }

  // Cuts off connections whose request did not arrive in time: their blocked read then fails.
  void reaper_loop() {
    std::unique_lock lock(mu_);
    while (!stopped_) {
      reaper_cv_.wait_for(lock, std::chrono::milliseconds(200));
      const auto now = std::chrono::steady_clock::now();
      for (auto& [fd, c] : connections_) {
        if (c.deadline <= now) {
          ::shutdown(fd, SHUT_RDWR);
          c.deadline = std::chrono::steady_clock::time_point::max();
        }
      }
    }
  }

  // Waits until the peer sends something (true) or idle_timeout passes or it goes (false).
  bool wait_for_request(int fd) {
    pollfd p{fd, POLLIN, 0};
    const int ms = static_cast<int>(opts_.idle_timeout.count());
    for (;;) {
      const int rc = ::poll(&p, 1, ms);
      if (rc < 0 && errno == EINTR) continue;
      return rc > 0 && (p.revents & POLLIN) != 0;
    }
  }

  template <class Socket>
  void session(Socket sock, const peer_info& peer, int& live) {
    const int fd = sock.native_handle();
    const http_request& base = peer.base;
    beast::flat_buffer buffer;
    for (;;) {
      beast::error_code ec;
      request_parser parser;
      limit_request_parser(parser, opts_.max_body_bytes);
      if (buffer.size() == 0 && !wait_for_request(fd)) break;
      set_deadline(fd, std::chrono::steady_clock::now() + opts_.request_deadline);
      http::read(sock, buffer, parser, ec);
      set_deadline(fd, std::chrono::steady_clock::time_point::max());
      if (ec == http::error::end_of_stream || ec == asio::error::eof ||
          ec == asio::error::connection_reset || ec == asio::error::operation_aborted) {
        break;
      }
      http_response out;
      bool keep_alive = false;
      unsigned version = 11;
      if (ec == http::error::body_limit) {
        out = too_large(opts_.max_body_bytes);
      } else if (ec) {
        if (buffer.size() == 0 && !parser.got_some()) break;
        out = malformed(ec.message());
      } else {
        const auto& req = parser.get();
        http_request r = to_http_request(req, base);
        keep_alive = req.keep_alive();
        version = req.version();
        try {
          out = handler_(r);
        } catch (...) {
          // A bug in a handler costs this request, never the process.
          out = {};
          out.status = 500;
          out.body = R"({"__type":"ServerException","message":"Internal error"})";
        }
      }
      if (out.stream) {
        stream(sock, out, version);
        break;
      }
      http::response<http::string_body> res{static_cast<http::status>(out.status), version};
      res.set(http::field::server, "berthd");
      res.set(http::field::content_type, out.content_type);
      for (const auto& [k, v] : out.headers) res.set(k, v);
      res.keep_alive(keep_alive);
      res.body() = std::move(out.body);
      res.prepare_payload();
      http::write(sock, res, ec);
      if (ec || !keep_alive) break;
    }
    beast::error_code ignored;
    sock.shutdown(asio::socket_base::shutdown_both, ignored);
    std::lock_guard lock(mu_);
    sock.close(ignored);
    // Gone before the count says so: stop() may return, and io_ go, once it reaches zero.
    { Socket gone = std::move(sock); }
    release(fd, peer.key, live);
  }

  // A chunked response whose body the handler writes as it goes; the connection ends with it.
  template <class Socket>
  void stream(Socket& sock, http_response& out, unsigned version) {
    http::response<http::empty_body> res{static_cast<http::status>(out.status), version};
    res.set(http::field::server, "berthd");
    res.set(http::field::content_type, out.content_type);
    for (const auto& [k, v] : out.headers) res.set(k, v);
    res.keep_alive(false);
    // HTTP/1.0 knows no chunks: the body then simply runs until the connection closes.
    const bool chunked = version >= 11;
    res.chunked(chunked);
    http::response_serializer<http::empty_body> sr{res};
    beast::error_code ec;
    http::write_header(sock, sr, ec);
    if (ec) return;
    struct sink final : stream_sink {
      Socket& s;
      bool chunked;
      bool ok = true;
      sink(Socket& so, bool c) : s(so), chunked(c) {}
      bool write(std::string_view data) override {
        if (!ok || data.empty()) return ok;
        beast::error_code e;
        if (chunked) {
          asio::write(s, http::make_chunk(asio::const_buffer(data.data(), data.size())), e);
        } else {
          asio::write(s, asio::const_buffer(data.data(), data.size()), e);
        }
        ok = !e;
        return ok;
      }
      bool alive() override {
        if (!ok) return false;
        pollfd p{s.native_handle(), POLLIN | POLLRDHUP, 0};
        if (::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
          ok = false;
        }
        return ok;
      }
    } out_sink(sock, chunked);
    out.stream(out_sink);
    if (out_sink.ok && chunked) asio::write(sock, http::make_chunk_last(), ec);
  }

  server_options opts_;
  http_handler handler_;
  asio::io_context io_;
  std::optional<local::acceptor> unix_;
  std::optional<tcp::acceptor> tcp_;
  std::string endpoint_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable done_;
  struct connection {
    std::chrono::steady_clock::time_point deadline;  // max(): not receiving a request
  };
  std::map<int, connection> connections_;
  std::map<std::string, int> per_peer_;
  std::condition_variable reaper_cv_;
  int live_ = 0;  // both pools
  int unix_live_ = 0, tcp_live_ = 0;
  bool stopped_ = false;
};

}  // namespace

result<void> socket_unserved(const std::string& path) {
  // A socket file is stale only when nobody answers on it: a live berthd's is not taken over.
  asio::io_context io;
  local::socket probe(io);
  beast::error_code ec;
  probe.connect(local::endpoint(path), ec);
  if (ec) return {};
  ucred cred{};
  socklen_t len = sizeof cred;
  const std::string who =
      ::getsockopt(probe.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid > 0
          ? "pid " + std::to_string(cred.pid)
          : "another process";
  return tl::unexpected(error{"socket " + path + " is served by " + who +
                              " (another berthd? give this one its own --socket)"});
}

result<std::unique_ptr<http_server>> serve(const server_options& o, http_handler h) {
  auto s = std::make_unique<server>(o, std::move(h));
  if (auto r = s->start(); !r) return tl::unexpected(r.error());
  return std::unique_ptr<http_server>(std::move(s));
}

}  // namespace berth::agent
