#include "server.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <filesystem>
#include <mutex>
#include <optional>
#include <set>
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
      threads_.emplace_back([this] { accept_loop(*unix_); });
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
      threads_.emplace_back([this] { accept_loop(*tcp_); });
    }
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
      for (const int fd : connections_) ::shutdown(fd, SHUT_RDWR);
    }
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
  template <class Acceptor>
  void accept_loop(Acceptor& acceptor) {
    for (;;) {
      beast::error_code ec;
      typename Acceptor::protocol_type::socket sock(io_);
      acceptor.accept(sock, ec);
      {
        std::lock_guard lock(mu_);
        if (stopped_) return;
        if (ec) continue;
        // A bounded number of connections, each a thread: past it, new ones are closed.
        constexpr int most = 256;
        if (live_ >= most) {
          beast::error_code ignored;
          sock.close(ignored);
          continue;
        }
        ++live_;
        connections_.insert(sock.native_handle());
      }
      // An idle connection is closed after a minute without a request; a peer that stops
      // reading (an event stream's follower, say) after 30 s of blocked writes.
      timeval tv{60, 0};
      ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      timeval send_tv{30, 0};
      ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &send_tv, sizeof send_tv);
      const int fd = sock.native_handle();
      try {
        std::thread([this, s = std::move(sock)]() mutable { session(std::move(s)); }).detach();
      } catch (const std::system_error&) {
        // The lambda, and the socket in it, are gone already.
        std::lock_guard lock(mu_);
        connections_.erase(fd);
        if (--live_ == 0) done_.notify_all();
      }
    }
  }

  template <class Socket>
  void session(Socket sock) {
    const int fd = sock.native_handle();
    http_request base;
    if constexpr (std::is_same_v<Socket, tcp::socket>) {
      beast::error_code ec;
      const auto ep = sock.remote_endpoint(ec);
      base.tcp = true;
      base.peer = ec ? "" : ep.address().to_string();
    } else {
      base.peer = "unix";
      ucred cred{};
      socklen_t len = sizeof cred;
      if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
        base.uid = static_cast<int>(cred.uid);
        base.gid = static_cast<int>(cred.gid);
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
          base.groups.push_back(static_cast<int>(groups[i]));
        }
      }
    }
    beast::flat_buffer buffer;
    for (;;) {
      beast::error_code ec;
      request_parser parser;
      limit_request_parser(parser, opts_.max_body_bytes);
      http::read(sock, buffer, parser, ec);
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
    connections_.erase(fd);
    sock.close(ignored);
    // Gone before the count says so: stop() may return, and io_ go, once it reaches zero.
    { Socket gone = std::move(sock); }
    if (--live_ == 0) done_.notify_all();
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
  std::set<int> connections_;
  int live_ = 0;
  bool stopped_ = false;
};

}  // namespace

result<std::unique_ptr<http_server>> serve(const server_options& o, http_handler h) {
  auto s = std::make_unique<server>(o, std::move(h));
  if (auto r = s->start(); !r) return tl::unexpected(r.error());
  return std::unique_ptr<http_server>(std::move(s));
}

}  // namespace berth::agent
