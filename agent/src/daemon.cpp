// berthd's wiring: store, Docker, the ECS service, the HTTP listeners and systemd.
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>

#include "berth/agent.hpp"
#include "server.hpp"
#include "service.hpp"
#include "sigv4.hpp"

namespace berth::agent {

namespace {

constexpr std::string_view target_prefix = "AmazonEC2ContainerServiceV20141113.";

std::string request_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char hex[] = "0123456789abcdef";
  std::string id;
  for (int i = 0; i < 36; ++i) {
    id += (i == 8 || i == 13 || i == 18 || i == 23) ? '-' : hex[rng() % 16];
  }
  return id;
}

http_response error_response(const api_error& e) {
  http_response r;
  r.status = e.status;
  r.body = json{{"__type", e.type}, {"message", e.message}}.dump(-1, ' ', false,
                                                                 json::error_handler_t::replace);
  return r;
}

class daemon_impl final : public daemon {
 public:
  daemon_impl(const config& c, std::unique_ptr<service> s, credentials keys)
      : cfg_(c), service_(std::move(s)), keys_(std::move(keys)) {}
  ~daemon_impl() override { stop(); }

  result<void> listen() {
    server_options o;
    o.socket_path = cfg_.socket;
    o.tcp = cfg_.listen_tcp;
    o.max_body_bytes = cfg_.max_body_bytes;
    auto s = serve(o, [this](const http_request& r) { return handle(r); });
    if (!s) return tl::unexpected(s.error());
    server_ = std::move(*s);
    spdlog::info("serving the ECS API on {}{}", cfg_.socket,
                 cfg_.listen_tcp.empty() ? "" : " and " + server_->tcp_endpoint());
    sd_notifyf(0, "READY=1\nSTATUS=serving cluster %s", cfg_.cluster.c_str());
    std::uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
      watchdog_ = std::thread([this, usec] {
        std::unique_lock lock(mu_);
        while (!stopped_) {
          sd_notify(0, "WATCHDOG=1");
          cv_.wait_for(lock, std::chrono::microseconds(usec / 2), [&] { return stopped_; });
        }
      });
    }
    return {};
  }

  void stop() override {
    {
      std::lock_guard lock(mu_);
      if (stopped_) return;
      stopped_ = true;
    }
    sd_notify(0, "STOPPING=1");
    cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    if (server_) server_->stop();
    service_->shutdown();
    spdlog::info("stopped; tasks keep running");
  }

  void wait() override {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return stopped_; });
  }

 private:
  http_response handle(const http_request& r) {
    const std::string id = request_id();
    http_response out = dispatch(r);
    out.headers["x-amzn-RequestId"] = id;
    return out;
  }

  // The deepest nesting of JSON brackets outside strings.
  static int nesting(const std::string& body) {
    int depth = 0, deepest = 0;
    bool in_string = false, escaped = false;
    for (const char c : body) {
      if (in_string) {
        if (escaped) {
          escaped = false;
        } else if (c == '\\') {
          escaped = true;
        } else if (c == '"') {
          in_string = false;
        }
        continue;
      }
      if (c == '"') in_string = true;
      if (c == '{' || c == '[') deepest = std::max(deepest, ++depth);
      if (c == '}' || c == ']') --depth;
    }
    return deepest;
  }

  http_response dispatch(const http_request& r) {
    bool read_only = false;
    std::string who_key;
    if (r.tcp) {
      signed_request sr{r.method, r.target, r.headers, r.body};
      auto who = verify_sigv4(sr, keys_, std::chrono::system_clock::now());
      if (!who) {
        spdlog::info("refused a request from {}: {}", r.peer, who.error().type);
        return error_response({who.error().type, who.error().message, 400});
      }
      who_key = *who;
      read_only = keys_.at(*who).read_only;
    }
    if (r.method != "POST") {
      return error_response(
          {"UnknownOperationException", "Only POST / with X-Amz-Target is served here", 400});
    }
    const auto t = r.headers.find("x-amz-target");
    if (t == r.headers.end() || !t->second.starts_with(target_prefix)) {
      return error_response({"UnknownOperationException",
                             "Missing or foreign X-Amz-Target header; expected " +
                                 std::string(target_prefix) + "<Action>",
                             400});
    }
    const std::string action = t->second.substr(target_prefix.size());
    if (read_only && !(action.starts_with("Describe") || action.starts_with("List"))) {
      return error_response({"AccessDeniedException",
                             "The key " + who_key + " may only call Describe* and List* actions",
                             400});
    }
    // Nesting deeper than any ECS shape is refused before parsing: copying or printing it would
    // recurse that deep.
    if (nesting(r.body) > 32) {
      return error_response({"SerializationException", "The request body nests too deeply", 400});
    }
    json req = r.body.empty() ? json::object() : json::parse(r.body, nullptr, false);
    if (req.is_discarded()) {
      return error_response({"SerializationException", "The request body is not valid JSON", 400});
    }
    auto result = service_->call(action, req);
    if (!result) return error_response(result.error());
    http_response ok;
    ok.body = result->dump(-1, ' ', false, json::error_handler_t::replace);
    return ok;
  }

  config cfg_;
  std::unique_ptr<service> service_;
  credentials keys_;
  std::unique_ptr<http_server> server_;
  std::thread watchdog_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopped_ = false;
};

}  // namespace

result<std::unique_ptr<daemon>> start(const config& c) {
  credentials keys;
  if (!c.listen_tcp.empty()) {
    auto k = load_credentials(c.credentials);
    if (!k) return tl::unexpected(k.error());
    keys = std::move(*k);
  }
  auto st = open_sqlite_store(c.state_dir);
  if (!st) return tl::unexpected(st.error());
  docker::options dopt;
  dopt.socket_path = c.docker_socket;
  auto d = docker::make_engine(dopt);
  if (!d) return tl::unexpected(error{"docker: " + d.error().message});
  auto svc = make_service(c, std::move(*st), std::move(*d));
  if (!svc) return tl::unexpected(svc.error());
  auto dm = std::make_unique<daemon_impl>(c, std::move(*svc), std::move(keys));
  if (auto r = dm->listen(); !r) return tl::unexpected(r.error());
  return std::unique_ptr<daemon>(std::move(dm));
}

}  // namespace berth::agent
