// The server is one io_context run by a fixed pool of threads, for both listeners. Each
// connection is a chain of steps on its own strand: wait for a request's first byte
// (idle_timeout), read it whole (request_deadline), call the handler, write the response
// (send_timeout), and again while the peer keeps the connection alive. A step that can go on at
// once does, on the same thread; only waiting goes through the reactor. One steady_timer per
// connection enforces whichever limit its current step has.
//
// Handlers are synchronous and may block, so they run on pool threads through a gate that lets at
// most threads - 1 run at once: one thread always remains to accept, read, refuse and cut off, so
// a few slow handlers (RunTask, a store write) delay only the requests that queue behind them for
// a handler, never the reading or refusing of others. Streamed responses (the event stream) can
// last hours, so each gets a thread of its own, bounded by the caller (max_followers).
#include "berth/api/server.hpp"

#include <poll.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "fd_send.hpp"
#include "http_reader.hpp"

namespace berth::agent {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using local = asio::local::stream_protocol;
using tcp = asio::ip::tcp;
// A connection's socket, whichever listener accepted it: one connection type, compiled once.
using stream_socket = asio::basic_stream_socket<asio::generic::stream_protocol,
                                                asio::strand<asio::io_context::executor_type>>;
using steady = std::chrono::steady_clock;

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

unsigned pool_size(unsigned asked) {
  // Two at the least even when asked for fewer: one for I/O, one for handlers.
  if (asked > 0) return std::max(asked, 2u);
  return std::max(std::thread::hardware_concurrency(), min_server_threads);
}

// Lets at most `limit` handlers run at once; the others wait in arrival order, each to run on its
// connection's strand once a slot frees.
class handler_gate {
 public:
  explicit handler_gate(unsigned limit) : limit_(limit) {}

  // Takes a slot when one is free: the caller runs its handler now, then calls leave().
  bool try_enter() {
    std::lock_guard lock(mu_);
    if (running_ >= limit_) return false;
    ++running_;
    return true;
  }

  // Runs job on `ex` once a slot is free (at once when one freed since try_enter()); the slot is
  // the job's, which calls leave().
  template <class Executor>
  void queue(const Executor& ex, std::function<void()> job) {
    {
      std::lock_guard lock(mu_);
      if (running_ >= limit_) {
        waiting_.push_back([ex, job = std::move(job)] { asio::post(ex, job); });
        return;
      }
      ++running_;
    }
    asio::post(ex, std::move(job));
  }

  // Gives the slot back, or to the next waiting job.
  void leave() {
    std::function<void()> next;
    {
      std::lock_guard lock(mu_);
      if (waiting_.empty()) {
        --running_;
        return;
      }
      next = std::move(waiting_.front());
      waiting_.pop_front();
    }
    next();
  }

 private:
  std::mutex mu_;
  const unsigned limit_;
  unsigned running_ = 0;
  std::deque<std::function<void()>> waiting_;
};

// A peer's identity as the pools count it, and whether it may use the reserve.
struct peer_info {
  std::string key;  // "uid:1000" or "tcp:127.0.0.1"
  bool privileged = false;
  http_request base;  // what every request on the connection carries
};

std::string user_name(int uid) {
  char buf[4096];
  passwd pw{};
  passwd* found = nullptr;
  if (uid >= 0 && ::getpwuid_r(static_cast<uid_t>(uid), &pw, buf, sizeof buf, &found) == 0 &&
      found != nullptr) {
    return found->pw_name;
  }
  return {};
}

template <class Socket>
peer_info identify_unix(Socket& sock, const server_options& o) {
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
  p.base.user = user_name(p.base.uid);
  p.key = "uid:" + std::to_string(p.base.uid);
  p.privileged =
      o.privileged && p.base.uid >= 0 && o.privileged(p.base.uid, p.base.gid, p.base.groups);
  p.base.privileged = p.privileged;
  return p;
}

template <class Socket>
peer_info identify_tcp(Socket& sock) {
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
void refuse(int fd, const std::string& why) {
  const std::string body = R"({"__type":"ThrottlingException","message":")" + why + R"("})";
  const std::string msg =
      "HTTP/1.1 503 Service Unavailable\r\nServer: berthd\r\n"
      "Content-Type: application/x-amz-json-1.1\r\nConnection: close\r\n"
      "Content-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  (void)::send(fd, msg.data(), msg.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
}

class server final : public http_server {
 public:
  server(const server_options& o, http_handler h)
      : opts_(o),
        handler_(std::move(h)),
        threads_wanted_(pool_size(o.threads)),
        io_(static_cast<int>(threads_wanted_)),
        gate_(threads_wanted_ - 1) {}
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
      auto& a = unix_->acceptor;
      a.open(local(), ec);
      if (!ec) a.bind(local::endpoint(opts_.socket_path), ec);
      if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
      if (ec) {
        return tl::unexpected(error{"cannot listen on " + opts_.socket_path + ": " + ec.message()});
      }
      // Anyone may connect: the peer's credentials decide what it may call (see daemon.cpp).
      ::chmod(opts_.socket_path.c_str(), 0666);
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
      auto& a = tcp_->acceptor;
      const tcp::endpoint ep(addr, static_cast<unsigned short>(port));
      a.open(ep.protocol(), ec);
      if (!ec) a.set_option(asio::socket_base::reuse_address(true), ec);
      if (!ec) a.bind(ep, ec);
      if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
      if (ec) return tl::unexpected(error{"cannot listen on " + opts_.tcp + ": " + ec.message()});
      const auto bound = a.local_endpoint();
      endpoint_ = (bound.address().is_v6() ? "[" + bound.address().to_string() + "]"
                                           : bound.address().to_string()) +
                  ":" + std::to_string(bound.port());
    }
    if (unix_) accept(*unix_);
    if (tcp_) accept(*tcp_);
    try {
      for (unsigned i = 0; i < threads_wanted_; ++i) threads_.emplace_back([this] { run(); });
    } catch (const std::system_error& e) {
      return tl::unexpected(error{std::string("cannot start the server's threads: ") + e.what()});
    }
    return {};
  }

  void stop() override {
    {
      std::lock_guard lock(mu_);
      if (stopped_) return;
      stopped_ = true;
      // Wakes every connection's pending wait, read or write (and a stream's next poll): each
      // then ends itself. Descriptors are closed only under mu_, so none here is reused.
      for (const int fd : fds_) ::shutdown(fd, SHUT_RDWR);
    }
    // The acceptors are touched only on their strands: closed there, their pending accepts end.
    const bool serving = !threads_.empty();
    if (unix_ && serving) close_listener(*unix_);
    if (tcp_ && serving) close_listener(*tcp_);
    {
      std::unique_lock lock(mu_);
      done_.wait(lock, [&] {
        return live_ == 0 && (!serving || ((!unix_ || unix_->closed) && (!tcp_ || tcp_->closed)));
      });
    }
    // Nothing is served any more.
    io_.stop();
    for (auto& t : threads_) t.join();
    threads_.clear();
    // What was still queued runs once more, here: an accept that completed just as its listener
    // closed would otherwise hold its connection open until the server is destroyed (admit()
    // closes it now), and timers' cancellations find their connections done.
    io_.restart();
    io_.poll();
    if (!opts_.socket_path.empty()) {
      std::error_code fec;
      std::filesystem::remove(opts_.socket_path, fec);
    }
  }

  std::string tcp_endpoint() const override { return endpoint_; }

 private:
  template <class Acceptor>
  struct listener {
    explicit listener(asio::io_context& io)
        : strand(asio::make_strand(io)), acceptor(strand), retry(strand) {}
    asio::strand<asio::io_context::executor_type> strand;
    Acceptor acceptor;
    asio::steady_timer retry;
    int live = 0;         // this listener's pool, under mu_
    bool closed = false;  // under mu_
  };
  using unix_listener = listener<local::acceptor>;
  using tcp_listener = listener<tcp::acceptor>;

  class connection;

  void run() {
    // The work guard keeps run() from returning while a listener merely waits; only stop() ends
    // it. A handler never throws (call() catches): anything else is a bug, logged, and served on.
    auto work = asio::make_work_guard(io_);
    for (;;) {
      try {
        io_.run();
        return;
      } catch (const std::exception& e) {
        spdlog::error("http server: {}", e.what());
      }
    }
  }

  template <class Listener>
  void close_listener(Listener& l) {
    asio::post(l.strand, [this, &l] {
      beast::error_code ignored;
      l.acceptor.close(ignored);
      l.retry.cancel();
      std::lock_guard lock(mu_);
      l.closed = true;
      done_.notify_all();
    });
  }

  bool stopped() {
    std::lock_guard lock(mu_);
    return stopped_;
  }

  template <class Listener>
  void accept(Listener& l) {
    if (stopped()) return;
    l.acceptor.async_accept([this, &l](beast::error_code ec, auto sock) {
      if (ec) {
        if (stopped()) return;
        // Out of descriptors, say: tried again shortly instead of spinning.
        l.retry.expires_after(std::chrono::milliseconds(100));
        l.retry.async_wait([this, &l](beast::error_code e) {
          if (!e) accept(l);
        });
        return;
      }
      admit(l, std::move(sock));
      accept(l);
    });
  }

  template <class Listener, class Socket>
  void admit(Listener& l, Socket sock) {
    constexpr bool on_unix = std::is_same_v<Listener, unix_listener>;
    peer_info peer;
    if constexpr (on_unix) {
      peer = identify_unix(sock, opts_);
    } else {
      peer = identify_tcp(sock);
    }
    // Once the peer is known, the listener's protocol no longer matters. Each connection gets a
    // strand of its own: its socket and timer are touched only there.
    beast::error_code ec;
    const asio::generic::stream_protocol protocol(sock.local_endpoint(ec).protocol());
    const int fd = ec ? -1 : sock.release(ec);
    if (fd < 0) return;  // still sock's, which closes it
    stream_socket conn_sock(asio::make_strand(io_));
    if (conn_sock.assign(protocol, fd, ec); ec) {
      ::close(fd);
      return;
    }
    std::string refused;
    {
      std::lock_guard lock(mu_);
      if (stopped_) return;
      // The pool and the per-peer share bound the connections. The reserve is the pool's top:
      // only privileged peers are let into it, and they have no share cap.
      const int room = opts_.max_connections - (peer.privileged ? 0 : opts_.reserved);
      if (l.live >= room) {
        refused = "Too many connections to berthd";
      } else if (!peer.privileged && per_peer_[peer.key] >= opts_.max_per_peer) {
        refused = "Too many connections from this peer (" + peer.key + "; at most " +
                  std::to_string(opts_.max_per_peer) + ")";
      } else {
        ++l.live;
        ++live_;
        ++per_peer_[peer.key];
        fds_.insert(fd);
      }
    }
    if (!refused.empty()) {
      refuse(fd, refused);
      conn_sock.close(ec);
      return;
    }
    auto c = std::make_shared<connection>(*this, std::move(conn_sock), std::move(peer), l.live);
    c->start();
  }

  http_response call(const http_request& r) {
    try {
      return handler_(r);
    } catch (const std::exception& e) {
      spdlog::error("http server: a handler failed on {}: {}", r.target, e.what());
    } catch (...) {
      spdlog::error("http server: a handler failed on {}", r.target);
    }
    {
      // A bug in a handler costs this request, never the process.
      http_response out;
      out.status = 500;
      out.body = R"({"__type":"ServerException","message":"Internal error"})";
      return out;
    }
  }

  // Closes fd (through `close`, under mu_) and gives its place in the pools back. The last
  // thing a connection does with the server: stop() may return once live_ reaches zero.
  template <class Close>
  void release(int fd, const std::string& key, int& pool, Close close) {
    std::lock_guard lock(mu_);
    close();
    fds_.erase(fd);
    if (--per_peer_[key] == 0) per_peer_.erase(key);
    --pool;
    if (--live_ == 0) done_.notify_all();
  }

  // A stream's thread: the header, then the handler's body, on a descriptor it owns.
  void run_stream(int fd, http_response& out, const std::string& head, bool chunked) {
    if (!send_all(fd, head, opts_.send_timeout)) return;
    if (out.upgrade) {
      try {
        out.upgrade(fd);
      } catch (...) {
        spdlog::error("http server: an upgraded connection failed");
      }
      return;
    }
    fd_sink sink(fd, chunked, opts_.send_timeout);
    try {
      out.stream(sink);
    } catch (...) {
      spdlog::error("http server: a streamed response failed");
      return;
    }
    if (sink.ok() && chunked) (void)send_all(fd, "0\r\n\r\n", opts_.send_timeout);
  }

  server_options opts_;
  http_handler handler_;
  const unsigned threads_wanted_;
  // Declared before everything that holds its handlers or objects: destroyed last.
  asio::io_context io_;
  handler_gate gate_;
  std::optional<unix_listener> unix_;
  std::optional<tcp_listener> tcp_;
  std::string endpoint_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable done_;
  std::set<int> fds_;  // every live connection's descriptor
  std::map<std::string, int> per_peer_;
  int live_ = 0;  // both pools
  bool stopped_ = false;
};

class server::connection : public std::enable_shared_from_this<connection> {
 public:
  connection(server& s, stream_socket sock, peer_info peer, int& pool)
      : s_(s),
        sock_(std::move(sock)),
        timer_(sock_.get_executor()),
        peer_(std::move(peer)),
        pool_(pool),
        fd_(sock_.native_handle()) {}

  void start() {
    // Reads and writes are tried at once and wait in the reactor only when the socket is not
    // ready, so most requests and responses cost one system call each.
    beast::error_code ignored;
    sock_.non_blocking(true, ignored);
    asio::post(sock_.get_executor(), [self = shared_from_this()] {
      self->next_request();
      self->serve();
    });
  }

 private:
  // Request after request on this thread for as long as each is ready: a kept-alive connection
  // costs no post, no other thread woken and no recursion per request. Returns once the
  // connection waits (for bytes, a handler slot or the peer taking a response: what it waits on
  // calls serve() again) or has ended.
  void serve() {
    while (read_request() && answer()) {
    }
  }

  // A new request: the peer may idle for idle_timeout before its first byte, unless a pipelined
  // one is buffered already.
  void next_request() {
    parser_.emplace();
    limit_request_parser(*parser_, s_.opts_.max_body_bytes);
    parser_->eager(true);  // the body in the same pass as the header, as http::read
    in_request_ = buffer_.size() > 0;
    set_deadline(steady::now() + (in_request_ ? s_.opts_.request_deadline : s_.opts_.idle_timeout));
  }

  // Feeds the buffered bytes to the parser, reading more as it needs them. True once a whole
  // request is parsed; false when the connection waits for bytes, has answered an error, or ended.
  bool read_request() {
    for (;;) {
      if (buffer_.size() > 0) {
        beast::error_code ec;
        const std::size_t used = parser_->put(buffer_.data(), ec);
        buffer_.consume(used);
        if (ec == http::error::body_limit) return reject(too_large(s_.opts_.max_body_bytes));
        if (ec && ec != http::error::need_more) return reject(malformed(ec.message()));
        if (parser_->is_done()) return true;
        if (!ec && used > 0 && buffer_.size() > 0) continue;
      }
      if (!read_now()) return false;
    }
  }

  // Reads what the socket holds. When it holds nothing yet the reactor reads, and serve() goes
  // on from there; a read that asio completed at once would instead be posted to another
  // thread, woken for it.
  bool read_now() {
    beast::error_code ec;
    const std::size_t n = sock_.read_some(buffer_.prepare(read_size), ec);
    if (ec != asio::error::would_block && ec != asio::error::try_again) return took(ec, n);
    sock_.async_read_some(buffer_.prepare(read_size),
                          [self = shared_from_this()](beast::error_code e, std::size_t got) {
                            if (self->cut_) return self->finish();
                            if (self->took(e, got)) self->serve();
                          });
    return false;
  }

  // True when the read brought bytes; false when the connection ended or answered the peer.
  bool took(beast::error_code ec, std::size_t n) {
    if (ec == asio::error::eof) return at_eof();
    if (ec) {
      finish();
      return false;
    }
    // From the first byte on, the whole request must be in within request_deadline.
    if (!in_request_) {
      in_request_ = true;
      set_deadline(steady::now() + s_.opts_.request_deadline);
    }
    buffer_.commit(n);
    return true;
  }

  // The peer closed its side: between requests it is done; within one, what came is malformed.
  bool at_eof() {
    if (!parser_->got_some()) {
      finish();
      return false;
    }
    beast::error_code ec;
    parser_->put_eof(ec);
    return reject(malformed(ec ? ec.message() : "partial message"));
  }

  // An error answer, after which the connection closes.
  bool reject(http_response out) {
    send(std::move(out), false, 11);
    return false;
  }

  // Calls the handler here when a slot is free, else queues the request for one. True once the
  // response is written and the next request may follow.
  bool answer() {
    set_deadline(steady::time_point::max());  // the handler's time is not the peer's
    const auto& req = parser_->get();
    const bool keep_alive = req.keep_alive();
    const unsigned version = req.version();
    http_request r = to_http_request(req, peer_.base);
    parser_.reset();
    if (!s_.gate_.try_enter()) {
      s_.gate_.queue(sock_.get_executor(),
                     [self = shared_from_this(), r = std::move(r), keep_alive, version] {
                       http_response out = self->s_.call(r);
                       self->s_.gate_.leave();
                       if (self->send(std::move(out), keep_alive, version)) self->serve();
                     });
      return false;
    }
    http_response out = s_.call(r);
    s_.gate_.leave();
    return send(std::move(out), keep_alive, version);
  }

  // Writes what the socket takes now; the rest waits in the reactor. True once the whole
  // response is written and the connection is kept alive.
  bool send(http_response out, bool keep_alive, unsigned version) {
    if (out.stream || out.upgrade) {
      stream(std::move(out), version);
      return false;
    }
    auto& res = res_.emplace(static_cast<http::status>(out.status), version);
    res.set(http::field::server, "berthd");
    res.set(http::field::content_type, out.content_type);
    for (const auto& [k, v] : out.headers) res.set(k, v);
    res.keep_alive(keep_alive);
    res.body() = std::move(out.body);
    res.prepare_payload();
    keep_alive_ = keep_alive;
    auto& sr = sr_.emplace(res);
    beast::error_code ec;
    http::write(sock_, sr, ec);  // what the socket takes now; the serializer keeps its place
    if (ec != asio::error::would_block && ec != asio::error::try_again) return written(ec);
    // A peer that stops reading is cut off after send_timeout.
    set_deadline(steady::now() + s_.opts_.send_timeout);
    http::async_write(sock_, sr, [self = shared_from_this()](beast::error_code e, std::size_t) {
      if (self->written(e)) self->serve();
    });
    return false;
  }

  bool written(beast::error_code ec) {
    sr_.reset();
    res_.reset();
    if (ec || cut_ || !keep_alive_) {
      finish();
      return false;
    }
    next_request();
    return true;
  }

  // A chunked response whose body the handler writes as it goes (or an upgraded connection),
  // on a thread of its own that takes the descriptor over; the connection ends with it.
  void stream(http_response out, unsigned version) {
    http::response<http::empty_body> res{static_cast<http::status>(out.status), version};
    res.set(http::field::server, "berthd");
    res.set(http::field::content_type, out.content_type);
    for (const auto& [k, v] : out.headers) res.set(k, v);
    res.keep_alive(false);
    if (out.upgrade) res.set(http::field::connection, "Upgrade");
    // HTTP/1.0 knows no chunks: the body then simply runs until the connection closes.
    const bool chunked = version >= 11 && !out.upgrade;
    res.chunked(chunked);
    std::ostringstream head;
    head << res.base();
    beast::error_code ec;
    const int fd = sock_.release(ec);
    if (ec) return finish();
    done_ = true;  // the descriptor is the stream's now
    timer_.cancel();
    server& s = s_;
    int& pool = pool_;
    std::string key = peer_.key;
    try {
      std::thread([&s, &pool, fd, key, out = std::move(out), head = head.str(), chunked]() mutable {
        s.run_stream(fd, out, head, chunked);
        out = {};  // the handler's state goes before the server may
        s.release(fd, key, pool, [fd] { ::close(fd); });
      }).detach();
    } catch (const std::system_error&) {
      s.release(fd, key, pool, [fd] { ::close(fd); });
    }
  }

  // The current step must end by `at` (max(): no limit), or the connection is cut off. The timer
  // is moved only when the limit comes earlier than it is set for; otherwise it fires early and
  // sets itself again, so a busy kept-alive connection costs no timer call per request.
  void set_deadline(steady::time_point at) {
    deadline_ = at;
    if (at >= armed_) return;
    armed_ = at;
    timer_.expires_at(at);
    timer_.async_wait([self = shared_from_this(), step = ++step_](beast::error_code ec) {
      self->on_timer(ec, step);
    });
  }

  void on_timer(beast::error_code ec, std::uint64_t step) {
    // A stale expiry (the timer moved since, its handler already queued) cuts nothing.
    if (ec || step != step_ || done_) return;
    armed_ = steady::time_point::max();
    if (steady::now() < deadline_) {
      if (deadline_ != steady::time_point::max()) set_deadline(deadline_);
      return;
    }
    cut_ = true;
    beast::error_code ignored;
    sock_.cancel(ignored);  // the pending read or write fails: finish() follows
  }

  void finish() {
    if (done_) return;
    done_ = true;
    timer_.cancel();
    beast::error_code ignored;
    sock_.shutdown(asio::socket_base::shutdown_both, ignored);
    s_.release(fd_, peer_.key, pool_, [this] {
      beast::error_code e;
      sock_.close(e);
    });
  }

  static constexpr std::size_t read_size = 4096;  // most requests whole in one read

  server& s_;
  stream_socket sock_;
  asio::steady_timer timer_;
  peer_info peer_;
  int& pool_;
  const int fd_;
  beast::flat_buffer buffer_;
  std::optional<request_parser> parser_;
  std::optional<http::response<http::string_body>> res_;  // outlives sr_, which points into it
  std::optional<http::response_serializer<http::string_body>> sr_;
  steady::time_point deadline_ = steady::time_point::max();
  steady::time_point armed_ = steady::time_point::max();  // when the timer fires next
  std::uint64_t step_ = 0;                                // which of the timer's waits counts
  bool in_request_ = false;                               // the current request's first byte is in
  bool keep_alive_ = false;
  bool cut_ = false;   // a deadline passed
  bool done_ = false;  // released, or handed to a stream
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
