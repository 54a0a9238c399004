// The Engine API client: requests pinned to the negotiated version, JSON in and out.
#include <algorithm>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>
#include <utility>

#include "berth/docker.hpp"
#include "http.hpp"
#include "wire.hpp"

namespace berth::docker {

using nlohmann::json;

std::string_view to_string(errc e) noexcept {
  switch (e) {
    case errc::unavailable:
      return "unavailable";
    case errc::timeout:
      return "timeout";
    case errc::not_found:
      return "not_found";
    case errc::conflict:
      return "conflict";
    case errc::bad_request:
      return "bad_request";
    case errc::server_error:
      return "server_error";
    case errc::bad_response:
      return "bad_response";
    case errc::unsupported:
      return "unsupported";
    case errc::cgroup:
      return "cgroup";
  }
  return "unknown";
}

std::string_view to_string(health_status h) noexcept {
  switch (h) {
    case health_status::none:
      return "none";
    case health_status::starting:
      return "starting";
    case health_status::healthy:
      return "healthy";
    case health_status::unhealthy:
      return "unhealthy";
  }
  return "none";
}

namespace {

using detail::compare_versions;
using detail::create_body;
using detail::demultiplex;
using detail::dump;
using detail::escape;
using detail::label_filters;
using detail::member;
using detail::num;
using detail::parse;
using detail::progress;
using detail::read_image;
using detail::read_info;
using detail::read_summary;
using detail::request;
using detail::response;
using detail::str;
using detail::string_map;

class subscription_impl;

class engine_impl final : public engine {
 public:
  explicit engine_impl(const options& o) : http_(o) {}

  result<void> negotiate() {
    auto ping = http_.send({"GET", "/_ping"});
    if (!ping) return tl::unexpected(ping.error());
    if (ping->status != 200) return tl::unexpected(detail::status_error(*ping));
    auto v = http_.send({"GET", "/version"});
    if (!v) return tl::unexpected(v.error());
    if (v->status != 200) return tl::unexpected(detail::status_error(*v));
    auto j = parse(*v);
    if (!j) return tl::unexpected(j.error());
    version_.server_api_version = str(*j, "ApiVersion");
    version_.engine_version = str(*j, "Version");
    version_.os = str(*j, "Os");
    version_.arch = str(*j, "Arch");
    version_.kernel = str(*j, "KernelVersion");
    if (compare_versions(version_.server_api_version, minimum_api_version) < 0) {
      return tl::unexpected(
          error{errc::unsupported, "Docker " + version_.engine_version + " speaks Engine API " +
                                       version_.server_api_version + ", older than " +
                                       std::string(minimum_api_version) +
                                       " (Docker 20.10), the oldest Berth supports"});
    }
    version_.api_version = compare_versions(version_.server_api_version, maximum_api_version) > 0
                               ? std::string(maximum_api_version)
                               : version_.server_api_version;
    prefix_ = "/v" + version_.api_version;
    return {};
  }

  const version_info& version() const noexcept override { return version_; }

  result<std::string> create_container(const container_spec& spec) override {
    std::string target = prefix_ + "/containers/create";
    if (!spec.name.empty()) target += "?name=" + escape(spec.name);
    const std::string body = dump(create_body(spec));
    auto r = call({"POST", target, body});
    if (!r) return tl::unexpected(r.error());
    if (r->status != 201) return tl::unexpected(detail::status_error(*r));
    auto j = parse(*r);
    if (!j) return tl::unexpected(j.error());
    std::string id = str(*j, "Id");
    if (id.empty()) return tl::unexpected(error{errc::bad_response, "create returned no Id"});
    return id;
  }

  result<void> start_container(std::string_view id) override {
    return expect({"POST", prefix_ + "/containers/" + escape(id) + "/start"}, {204, 304});
  }

  result<void> stop_container(std::string_view id, std::chrono::seconds grace) override {
    request r{"POST",
              prefix_ + "/containers/" + escape(id) + "/stop?t=" + std::to_string(grace.count())};
    // Docker waits out the grace period before it answers.
    r.timeout = http_.opts().timeout + grace;
    return expect(r, {204, 304});
  }

  result<void> kill_container(std::string_view id, std::string_view signal) override {
    return expect(
        {"POST", prefix_ + "/containers/" + escape(id) + "/kill?signal=" + escape(signal)}, {204});
  }

  result<void> remove_container(std::string_view id, remove_options o) override {
    auto r = expect({"DELETE", prefix_ + "/containers/" + escape(id) + "?force=" +
                                   (o.force ? "1" : "0") + "&v=" + (o.volumes ? "1" : "0")},
                    {204});
    // Gone, or already being removed: either way it will not be there.
    if (!r && (r.error().code == errc::not_found ||
               (r.error().code == errc::conflict &&
                r.error().message.find("already in progress") != std::string::npos))) {
      return {};
    }
    return r;
  }

  result<container_info> inspect_container(std::string_view id) override {
    auto j = get_json(prefix_ + "/containers/" + escape(id) + "/json");
    if (!j) return tl::unexpected(j.error());
    return read_info(*j);
  }

  result<std::vector<container_summary>> list_containers(const list_filter& f) override {
    return list_containers_within(f, std::chrono::milliseconds(0));
  }
  // With its own deadline (0: the default).
  result<std::vector<container_summary>> list_containers_within(const list_filter& f,
                                                                std::chrono::milliseconds timeout) {
    std::string target = prefix_ + "/containers/json?all=" + (f.all ? "1" : "0");
    if (!f.labels.empty()) {
      target += "&filters=" + escape(dump(json{{"label", label_filters(f.labels)}}));
    }
    request rq{"GET", target};
    rq.timeout = timeout;
    auto r = call(rq);
    if (!r) return tl::unexpected(r.error());
    if (r->status != 200) return tl::unexpected(detail::status_error(*r));
    auto j = parse(*r);
    if (!j) return tl::unexpected(j.error());
    std::vector<container_summary> out;
    if (j->is_array()) {
      for (const auto& c : *j) out.push_back(read_summary(c));
    }
    return out;
  }

  result<int> wait_container(std::string_view id, std::chrono::milliseconds timeout) override {
    request rq{"POST", prefix_ + "/containers/" + escape(id) + "/wait"};
    rq.timeout = timeout;
    auto r = call(rq);
    if (!r) return tl::unexpected(r.error());
    if (r->status != 200) return tl::unexpected(detail::status_error(*r));
    auto j = parse(*r);
    if (!j) return tl::unexpected(j.error());
    return static_cast<int>(num(*j, "StatusCode"));
  }

  result<std::string> logs(std::string_view id, std::uint32_t tail) override {
    auto r = call({"GET", prefix_ + "/containers/" + escape(id) +
                              "/logs?stdout=1&stderr=1&tail=" + std::to_string(tail)});
    if (!r) return tl::unexpected(r.error());
    if (r->status != 200) return tl::unexpected(detail::status_error(*r));
    return demultiplex(r->body);
  }

  result<container_stats> stats(std::string_view id) override {
    auto j = get_json(prefix_ + "/containers/" + escape(id) + "/stats?stream=0&one-shot=1");
    if (!j) return tl::unexpected(j.error());
    container_stats s;
    const json& cpu = member(*j, "cpu_stats");
    s.cpu_total_ns = static_cast<std::uint64_t>(num(member(cpu, "cpu_usage"), "total_usage"));
    s.system_cpu_ns = static_cast<std::uint64_t>(num(cpu, "system_cpu_usage"));
    s.online_cpus = static_cast<std::uint32_t>(num(cpu, "online_cpus"));
    const json& mem = member(*j, "memory_stats");
    s.memory_usage = static_cast<std::uint64_t>(num(mem, "usage"));
    s.memory_limit = static_cast<std::uint64_t>(num(mem, "limit"));
    if (const json& nets = member(*j, "networks"); nets.is_object()) {
      for (const auto& [name, n] : nets.items()) {
        s.rx_bytes += static_cast<std::uint64_t>(num(n, "rx_bytes"));
        s.tx_bytes += static_cast<std::uint64_t>(num(n, "tx_bytes"));
      }
    }
    const json& io = member(member(*j, "blkio_stats"), "io_service_bytes_recursive");
    if (io.is_array()) {
      for (const auto& e : io) {
        const std::string op = str(e, "op");
        if (op == "Read" || op == "read")
          s.block_read += static_cast<std::uint64_t>(num(e, "value"));
        if (op == "Write" || op == "write") {
          s.block_write += static_cast<std::uint64_t>(num(e, "value"));
        }
      }
    }
    s.pids = static_cast<std::uint64_t>(num(member(*j, "pids_stats"), "current"));
    return s;
  }

  result<image_info> inspect_image(std::string_view ref) override {
    auto j = get_json(prefix_ + "/images/" + escape(ref) + "/json");
    if (!j) return tl::unexpected(j.error());
    image_info i = read_image(*j);
    return i;
  }

  result<std::vector<image_info>> list_images() override {
    auto j = get_json(prefix_ + "/images/json");
    if (!j) return tl::unexpected(j.error());
    std::vector<image_info> out;
    if (j->is_array()) {
      for (const auto& i : *j) out.push_back(read_image(i));
    }
    return out;
  }

  result<std::string> import_image(const std::string& tar_path, std::string_view repository,
                                   std::string_view tag) override {
    request rq{"POST", prefix_ + "/images/create?fromSrc=-&repo=" + escape(repository) +
                           "&tag=" + escape(tag)};
    rq.upload_path = &tar_path;
    rq.content_type = "application/x-tar";
    auto r = call(rq);
    if (!r) return tl::unexpected(r.error());
    if (r->status != 200) return tl::unexpected(detail::status_error(*r));
    auto lines = progress(*r);
    if (!lines) return tl::unexpected(lines.error());
    for (auto it = lines->rbegin(); it != lines->rend(); ++it) {
      const std::string s = str(*it, "status");
      if (s.starts_with("sha256:")) return s;
    }
    return tl::unexpected(error{errc::bad_response, "import returned no image id"});
  }

  result<std::vector<std::string>> load_image(const std::string& tar_path) override {
    request rq{"POST", prefix_ + "/images/load?quiet=1"};
    rq.upload_path = &tar_path;
    rq.content_type = "application/x-tar";
    auto r = call(rq);
    if (!r) return tl::unexpected(r.error());
    if (r->status != 200) return tl::unexpected(detail::status_error(*r));
    auto lines = progress(*r);
    if (!lines) return tl::unexpected(lines.error());
    std::vector<std::string> names;
    for (const auto& l : *lines) {
      std::string s = str(l, "stream");
      for (const std::string_view p : {"Loaded image: ", "Loaded image ID: "}) {
        if (s.starts_with(p)) {
          s.erase(0, p.size());
          while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
          names.push_back(s);
        }
      }
    }
    return names;
  }

  result<void> save_image(std::string_view ref, const std::string& tar_path) override {
    auto r = call({"GET", prefix_ + "/images/" + escape(ref) + "/get"});
    if (!r) return tl::unexpected(r.error());
    if (r->status != 200) return tl::unexpected(detail::status_error(*r));
    std::FILE* f = std::fopen(tar_path.c_str(), "wb");
    if (f == nullptr) {
      return tl::unexpected(error{errc::bad_request, "cannot write " + tar_path});
    }
    const bool ok = std::fwrite(r->body.data(), 1, r->body.size(), f) == r->body.size();
    if (std::fclose(f) != 0 || !ok) {
      return tl::unexpected(error{errc::bad_request, "cannot write " + tar_path});
    }
    return {};
  }

  result<void> remove_image(std::string_view ref, bool force) override {
    return expect({"DELETE", prefix_ + "/images/" + escape(ref) + "?force=" + (force ? "1" : "0")},
                  {200});
  }

  result<void> remove_volume(std::string_view name) override {
    return expect({"DELETE", prefix_ + "/volumes/" + escape(name)}, {204});
  }

  result<void> pull_image(std::string_view ref, std::chrono::milliseconds timeout) override {
    // name[:tag][@digest]: a digest is the tag; no tag means latest (an empty tag would pull
    // every tag).
    std::string image(ref), tag;
    if (const auto at = image.find('@'); at != std::string::npos) {
      tag = image.substr(at + 1);
      image.erase(at);
    } else {
      const auto colon = image.rfind(':');
      const auto slash = image.rfind('/');
      if (colon != std::string::npos && (slash == std::string::npos || colon > slash)) {
        tag = image.substr(colon + 1);
        image.erase(colon);
      }
    }
    if (tag.empty()) tag = "latest";
    request rq{"POST",
               prefix_ + "/images/create?fromImage=" + escape(image) + "&tag=" + escape(tag)};
    rq.timeout = timeout;
    auto r = call(rq);
    if (!r) return tl::unexpected(r.error());
    if (r->status != 200) return tl::unexpected(detail::status_error(*r));
    auto lines = progress(*r);
    if (!lines) return tl::unexpected(lines.error());
    return {};
  }

  result<std::unique_ptr<subscription>> subscribe(const event_filter& f, event_handlers h) override;

  detail::transport& http() { return http_; }
  const std::string& prefix() const { return prefix_; }

  result<std::string> create_exec(std::string_view container, const exec_spec& e) override {
    json body = {{"AttachStdin", e.attach_stdin},
                 {"AttachStdout", true},
                 {"AttachStderr", true},
                 {"Tty", e.tty},
                 {"Cmd", e.cmd}};
    if (!e.user.empty()) body["User"] = e.user;
    auto r = call({"POST", prefix_ + "/containers/" + escape(container) + "/exec", dump(body)});
    if (!r) return tl::unexpected(r.error());
    if (r->status != 201) return tl::unexpected(detail::status_error(*r));
    auto j = parse(*r);
    if (!j) return tl::unexpected(j.error());
    std::string id = str(*j, "Id");
    if (id.empty()) return tl::unexpected(error{errc::bad_response, "exec create returned no Id"});
    return id;
  }

  result<std::unique_ptr<exec_stream>> start_exec(std::string_view exec_id, bool tty) override {
    class stream final : public exec_stream {
     public:
      explicit stream(detail::transport::hijacked h) : h_(std::move(h)) {}
      int fd() const noexcept override { return h_.fd; }
      std::string take_early() override { return std::exchange(h_.early, {}); }

     private:
      detail::transport::hijacked h_;
    };
    const std::string body = dump(json{{"Detach", false}, {"Tty", tty}});
    auto h = http_.hijack({"POST", prefix_ + "/exec/" + escape(exec_id) + "/start", body});
    if (!h) return tl::unexpected(h.error());
    return std::make_unique<stream>(std::move(*h));
  }

  result<void> resize_exec(std::string_view exec_id, int rows, int cols) override {
    return expect({"POST", prefix_ + "/exec/" + escape(exec_id) +
                               "/resize?h=" + std::to_string(rows) + "&w=" + std::to_string(cols)},
                  {200, 201});
  }

  result<exec_state> inspect_exec(std::string_view exec_id) override {
    auto j = get_json(prefix_ + "/exec/" + escape(exec_id) + "/json");
    if (!j) return tl::unexpected(j.error());
    exec_state out;
    out.running = j->value("Running", false);
    if (!out.running) {
      if (const auto c = j->find("ExitCode"); c != j->end() && c->is_number_integer()) {
        out.exit_code = c->get<int>();
      }
    }
    return out;
  }

 private:
  result<response> call(const request& r) { return http_.send(r); }

  result<void> expect(const request& r, std::initializer_list<long> ok) {
    auto resp = call(r);
    if (!resp) return tl::unexpected(resp.error());
    if (std::find(ok.begin(), ok.end(), resp->status) == ok.end()) {
      return tl::unexpected(detail::status_error(*resp));
    }
    return {};
  }

  result<json> get_json(const std::string& target) {
    auto r = call({"GET", target});
    if (!r) return tl::unexpected(r.error());
    if (r->status != 200) return tl::unexpected(detail::status_error(*r));
    return parse(*r);
  }

  detail::transport http_;
  version_info version_;
  std::string prefix_;
};

// ---- events ----

// Seconds with a fraction, as /events takes for since and until.
std::string event_time(std::int64_t ns) {
  return std::to_string(ns / 1'000'000'000) + "." +
         std::to_string(1'000'000'000 + ns % 1'000'000'000).substr(1);
}

std::int64_t wall_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string events_filters(const event_filter& f) {
  json filters = json::object();
  if (!f.types.empty()) filters["type"] = f.types;
  if (!f.actions.empty()) filters["event"] = f.actions;
  if (!f.labels.empty()) filters["label"] = label_filters(f.labels);
  return escape(dump(filters));
}

class subscription_impl final : public subscription {
 public:
  subscription_impl(engine_impl& e, event_filter f, event_handlers h)
      : engine_(e), filter_(std::move(f)), handlers_(std::move(h)) {
    thread_ = std::thread([this] { run(); });
  }
  ~subscription_impl() override {
    {
      std::lock_guard lock(mu_);
      stop_.store(true, std::memory_order_release);
    }
    cv_.notify_all();
    // Destroying a subscription from its own handler would join its own thread.
    if (std::this_thread::get_id() == thread_.get_id()) std::terminate();
    thread_.join();
  }
  bool connected() const noexcept override { return connected_.load(std::memory_order_acquire); }
  std::uint64_t connections() const noexcept override {
    return connections_.load(std::memory_order_acquire);
  }

 private:
  // A handler's exception must not unwind through libcurl's C frames: it is dropped here.
  template <class Fn, class... Args>
  static void guarded(const Fn& fn, Args&&... args) {
    if (!fn) return;
    try {
      fn(std::forward<Args>(args)...);
    } catch (...) {
    }
  }

  bool pause(std::chrono::milliseconds d) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, d, [&] { return stop_.load(std::memory_order_acquire); });
  }

  void run() {
    std::chrono::milliseconds backoff{100};
    while (!stop_.load(std::memory_order_acquire)) {
      // Resynchronize first; the stream then starts at the list's time, or a second before the
      // newest event seen (Docker stamps events before it orders them, so a late one may carry
      // an earlier time). Replayed duplicates are dropped. The daemon shares this clock.
      const std::int64_t listed_at = wall_ns();
      list_filter lf;
      lf.labels = filter_.labels;
      // A short deadline: the destructor waits for this call.
      auto listed = engine_.list_containers_within(lf, std::chrono::seconds(5));
      if (!listed) {
        guarded(handlers_.on_disconnect, listed.error());
        if (pause(backoff)) return;
        backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
        continue;
      }
      std::string buffer;
      bool opened = false;
      // Docker sends the status line and headers at once, the body only with the first event:
      // the connection counts from the headers, so a quiet daemon still reads as connected.
      const auto on_open = [&](long status) {
        if (status != 200) return;
        opened = true;
        connected_.store(true, std::memory_order_release);
        connections_.fetch_add(1, std::memory_order_acq_rel);
        guarded(handlers_.on_resync, *listed);
      };
      const auto on_data = [&](std::string_view chunk) {
        buffer.append(chunk);
        if (!opened) return true;  // an error body: reported below
        std::size_t nl;
        while ((nl = buffer.find('\n')) != std::string::npos) {
          deliver(std::string_view(buffer).substr(0, nl));
          buffer.erase(0, nl + 1);
        }
        return true;
      };
      const std::int64_t since = newest_ns_ > 0 ? newest_ns_ - 1'000'000'000 : listed_at;
      auto r = engine_.http().stream(
          {"GET", engine_.prefix() + "/events?filters=" + events_filters(filter_) +
                      "&since=" + event_time(since)},
          on_data, on_open, stop_, std::chrono::milliseconds(100));
      connected_.store(false, std::memory_order_release);
      if (stop_.load(std::memory_order_acquire)) return;
      error why{errc::unavailable, "the event stream ended"};
      if (!r) {
        why = r.error();
      } else if (*r != 200) {
        why = detail::status_error({*r, buffer});
      }
      guarded(handlers_.on_disconnect, why);
      if (opened) backoff = std::chrono::milliseconds(100);
      if (pause(backoff)) return;
      backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
    }
  }

  void deliver(std::string_view line) {
    const json j = json::parse(line, nullptr, false);
    if (!j.is_object()) return;
    event e;
    e.type = str(j, "Type");
    e.action = str(j, "Action");
    if (const auto a = j.find("Actor"); a != j.end() && a->is_object()) {
      e.id = str(*a, "ID");
      e.attributes = string_map(*a, "Attributes");
    }
    if (e.id.empty()) e.id = str(j, "id");
    e.time_nano = num(j, "timeNano");
    // Only exact repeats are dropped (a replay after a reconnect): events may arrive slightly
    // out of time order, and none of those may be lost.
    const std::string key =
        std::to_string(e.time_nano) + "/" + e.type + "/" + e.action + "/" + e.id;
    if (seen_.contains(key)) return;
    seen_.insert(key);
    seen_order_.push_back(key);
    // Docker replays at most its last 256 events: remembering 1024 covers every replay.
    if (seen_order_.size() > 1024) {
      seen_.erase(seen_order_.front());
      seen_order_.pop_front();
    }
    newest_ns_ = std::max(newest_ns_, e.time_nano);
    guarded(handlers_.on_event, e);
  }

  engine_impl& engine_;
  event_filter filter_;
  event_handlers handlers_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> connected_{false};
  std::atomic<std::uint64_t> connections_{0};
  std::int64_t newest_ns_ = 0;
  std::set<std::string> seen_;
  std::deque<std::string> seen_order_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

result<std::unique_ptr<subscription>> engine_impl::subscribe(const event_filter& f,
                                                             event_handlers h) {
  // A filter Docker refuses is the caller's error now, not a reconnect loop later: ask for an
  // empty window (until = since) with it, which Docker answers at once.
  const std::string now = event_time(wall_ns());
  auto probe = call({"GET", prefix_ + "/events?filters=" + events_filters(f) + "&since=" + now +
                                "&until=" + now});
  if (!probe) return tl::unexpected(probe.error());
  if (probe->status != 200) return tl::unexpected(detail::status_error(*probe));
  return std::unique_ptr<subscription>(std::make_unique<subscription_impl>(*this, f, std::move(h)));
}

}  // namespace

result<std::unique_ptr<engine>> make_engine(const options& o) {
  auto e = std::make_unique<engine_impl>(o);
  if (auto r = e->negotiate(); !r) return tl::unexpected(r.error());
  return std::unique_ptr<engine>(std::move(e));
}

}  // namespace berth::docker
