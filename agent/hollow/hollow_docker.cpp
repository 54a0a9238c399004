// A Docker engine in memory: see hollow_docker.hpp.
#include "hollow_docker.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <functional>

namespace berth::hollow {

namespace dk = berth::docker;

namespace {

dk::error not_found(std::string_view what, std::string_view ref) {
  return {dk::errc::not_found, "No such " + std::string(what) + ": " + std::string(ref), 404};
}

dk::error unsupported(std::string_view what) {
  return {dk::errc::unsupported, std::string(what) + " is not served by a hollow instance", 501};
}

bool labels_match(const std::map<std::string, std::string>& want,
                  const std::map<std::string, std::string>& have) {
  return std::all_of(want.begin(), want.end(), [&](const auto& kv) {
    const auto it = have.find(kv.first);
    return it != have.end() && it->second == kv.second;
  });
}

}  // namespace

class hollow_docker::subscription_impl final : public dk::subscription {
 public:
  subscription_impl(hollow_docker& d, std::uint64_t id) : docker_(d), id_(id) {}
  ~subscription_impl() override { docker_.unsubscribe(id_); }
  bool connected() const noexcept override { return true; }
  std::uint64_t connections() const noexcept override { return 1; }

 private:
  hollow_docker& docker_;
  std::uint64_t id_;
};

hollow_docker::hollow_docker(std::chrono::milliseconds start_delay)
    : version_{"1.41", "1.41", "hollow", "linux", "x86_64", "hollow"}, start_delay_(start_delay) {
  deliverer_ = std::thread([this] { deliver(); });
}

hollow_docker::~hollow_docker() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  events_cv_.notify_all();
  deliverer_.join();
}

std::size_t hollow_docker::running() const {
  std::lock_guard lock(mu_);
  return running_;
}

hollow_docker::container* hollow_docker::find(std::string_view ref) {
  if (auto it = containers_.find(std::string(ref)); it != containers_.end()) return &it->second;
  if (auto n = names_.find(std::string(ref)); n != names_.end()) {
    if (auto it = containers_.find(n->second); it != containers_.end()) return &it->second;
  }
  return nullptr;
}

void hollow_docker::emit(const container& c, const std::string& action) {
  dk::event e;
  e.type = "container";
  e.action = action;
  e.id = c.info.id;
  e.attributes = c.info.labels;
  e.attributes["name"] = c.info.name;
  e.attributes["image"] = c.info.image;
  if (action == "die") e.attributes["exitCode"] = std::to_string(c.info.exit_code);
  e.time_nano = std::chrono::duration_cast<std::chrono::nanoseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  events_.push_back(std::move(e));
  events_cv_.notify_all();
}

void hollow_docker::deliver() {
  for (;;) {
    std::unique_lock lock(mu_);
    events_cv_.wait(lock, [&] { return stopping_ || !events_.empty() || resync_pending_; });
    if (stopping_) return;
    resync_pending_ = false;
    std::deque<dk::event> batch;
    batch.swap(events_);
    std::vector<std::shared_ptr<subscriber>> subs;
    for (const auto& [id, s] : subscribers_) subs.push_back(s);
    lock.unlock();
    std::lock_guard delivering(deliver_mu_);
    // A new subscriber's resync first, as a real stream's comes before its events.
    for (const auto& s : subs) {
      if (!s->resync || !s->handlers.on_resync) continue;
      auto now = std::move(*s->resync);
      s->resync.reset();
      try {
        s->handlers.on_resync(now);
      } catch (...) {  // dropped, as a real subscription's handler exceptions are
      }
    }
    for (const dk::event& e : batch) {
      for (const auto& s : subs) {
        const auto& f = s->filter;
        if (!f.actions.empty() &&
            std::find(f.actions.begin(), f.actions.end(), e.action) == f.actions.end()) {
          continue;
        }
        if (!labels_match(f.labels, e.attributes) || !s->handlers.on_event) continue;
        try {
          s->handlers.on_event(e);
        } catch (...) {  // dropped, as a real subscription's handler exceptions are
        }
      }
    }
  }
}

void hollow_docker::unsubscribe(std::uint64_t id) {
  {
    std::lock_guard lock(mu_);
    subscribers_.erase(id);
  }
  // A delivery under way with the old subscriber list ends before its handlers go.
  std::lock_guard delivering(deliver_mu_);
}

dk::result<std::string> hollow_docker::create_container(const dk::container_spec& spec) {
  std::lock_guard lock(mu_);
  if (!spec.name.empty() && names_.contains(spec.name)) {
    return tl::unexpected(
        dk::error{dk::errc::conflict,
                  "Conflict. The container name \"/" + spec.name + "\" is already in use", 409});
  }
  char id[65];
  std::snprintf(id, sizeof id, "%08x%056llx", static_cast<unsigned>(::getpid()),
                static_cast<unsigned long long>(++next_id_));
  container c;
  c.spec = spec;
  c.info.id = id;
  c.info.name = spec.name.empty() ? std::string("hollow_") + id : spec.name;
  c.info.image = spec.image;
  c.info.image_id = "sha256:" + std::to_string(std::hash<std::string>{}(spec.image));
  c.info.status = "created";
  c.info.labels = spec.labels;
  c.info.memory_bytes = spec.memory_bytes;
  c.info.memory_reservation_bytes = spec.memory_reservation_bytes;
  c.info.nano_cpus = spec.nano_cpus;
  c.info.cpu_shares = spec.cpu_shares;
  for (dk::port_binding p : spec.ports) {
    if (p.host_port == 0) p.host_port = next_port_ = next_port_ >= 65535 ? 49153 : next_port_ + 1;
    c.info.ports.push_back(p);
  }
  names_[c.info.name] = c.info.id;
  containers_.emplace(c.info.id, std::move(c));
  return std::string(id);
}

dk::result<void> hollow_docker::start_container(std::string_view id) {
  {
    std::lock_guard lock(mu_);
    container* c = find(id);
    if (c == nullptr) return tl::unexpected(not_found("container", id));
    if (c->info.running) return {};
  }
  // What a start takes: the image's layers, namespaces, the process.
  if (start_delay_.count() > 0) std::this_thread::sleep_for(start_delay_);
  std::lock_guard lock(mu_);
  container* c = find(id);
  if (c == nullptr) return tl::unexpected(not_found("container", id));
  if (c->info.running) return {};
  c->info.running = true;
  c->info.status = "running";
  c->info.pid = 0;  // no process: nothing in the kernel to check or sample
  ++running_;
  ++started_;
  emit(*c, "start");
  return {};
}

dk::result<void> hollow_docker::stop_container(std::string_view id, std::chrono::seconds) {
  return kill_container(id, "SIGTERM");
}

dk::result<void> hollow_docker::kill_container(std::string_view id, std::string_view signal) {
  std::lock_guard lock(mu_);
  container* c = find(id);
  if (c == nullptr) return tl::unexpected(not_found("container", id));
  if (!c->info.running) return {};
  c->info.running = false;
  c->info.status = "exited";
  c->info.exit_code = signal == "SIGKILL" || signal == "KILL" ? 137 : 143;
  --running_;
  emit(*c, "die");
  return {};
}

dk::result<void> hollow_docker::remove_container(std::string_view id, dk::remove_options o) {
  std::lock_guard lock(mu_);
  container* c = find(id);
  if (c == nullptr) return {};
  if (c->info.running && !o.force) {
    return tl::unexpected(dk::error{dk::errc::conflict, "container is running", 409});
  }
  if (c->info.running) {
    c->info.running = false;
    --running_;
  }
  names_.erase(c->info.name);
  containers_.erase(c->info.id);
  return {};
}

dk::result<dk::container_info> hollow_docker::inspect_container(std::string_view id) {
  std::lock_guard lock(mu_);
  container* c = find(id);
  if (c == nullptr) return tl::unexpected(not_found("container", id));
  return c->info;
}

dk::result<std::vector<dk::container_summary>> hollow_docker::list_containers(
    const dk::list_filter& f) {
  std::lock_guard lock(mu_);
  std::vector<dk::container_summary> out;
  for (const auto& [id, c] : containers_) {
    if (!f.all && !c.info.running) continue;
    if (!labels_match(f.labels, c.info.labels)) continue;
    out.push_back({id, c.info.name, c.info.image, c.info.status, c.info.labels});
  }
  return out;
}

dk::result<int> hollow_docker::wait_container(std::string_view id,
                                              std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock lock(mu_);
  for (;;) {
    container* c = find(id);
    if (c == nullptr) return tl::unexpected(not_found("container", id));
    if (!c->info.running) return c->info.exit_code;
    if (events_cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
      return tl::unexpected(dk::error{dk::errc::timeout, "container still running", 0});
    }
  }
}

dk::result<std::string> hollow_docker::logs(std::string_view id, std::uint32_t) {
  std::lock_guard lock(mu_);
  if (find(id) == nullptr) return tl::unexpected(not_found("container", id));
  return std::string();
}

dk::result<dk::container_stats> hollow_docker::stats(std::string_view id) {
  std::lock_guard lock(mu_);
  if (find(id) == nullptr) return tl::unexpected(not_found("container", id));
  return dk::container_stats{};
}

dk::result<dk::image_info> hollow_docker::inspect_image(std::string_view ref) {
  // Every image is there: a hollow instance pulls nothing.
  return dk::image_info{
      "sha256:" + std::to_string(std::hash<std::string_view>{}(ref)), {std::string(ref)}, 0, ""};
}

dk::result<std::vector<dk::image_info>> hollow_docker::list_images() {
  return std::vector<dk::image_info>{};
}

dk::result<std::string> hollow_docker::import_image(const std::string&, std::string_view,
                                                    std::string_view) {
  return tl::unexpected(unsupported("image import"));
}

dk::result<std::vector<std::string>> hollow_docker::load_image(const std::string&) {
  return tl::unexpected(unsupported("image load"));
}

dk::result<void> hollow_docker::save_image(std::string_view, const std::string&) {
  return tl::unexpected(unsupported("image save"));
}

dk::result<void> hollow_docker::remove_image(std::string_view, bool) { return {}; }

dk::result<void> hollow_docker::remove_volume(std::string_view name) {
  return tl::unexpected(not_found("volume", name));
}

dk::result<void> hollow_docker::pull_image(std::string_view, std::chrono::milliseconds) {
  return {};
}

dk::result<std::string> hollow_docker::create_exec(std::string_view, const dk::exec_spec&) {
  return tl::unexpected(unsupported("exec"));
}

dk::result<std::unique_ptr<dk::exec_stream>> hollow_docker::start_exec(std::string_view, bool) {
  return tl::unexpected(unsupported("exec"));
}

dk::result<void> hollow_docker::resize_exec(std::string_view, int, int) {
  return tl::unexpected(unsupported("exec"));
}

dk::result<dk::exec_state> hollow_docker::inspect_exec(std::string_view) {
  return tl::unexpected(unsupported("exec"));
}

dk::result<std::unique_ptr<dk::subscription>> hollow_docker::subscribe(const dk::event_filter& f,
                                                                       dk::event_handlers h) {
  auto s = std::make_shared<subscriber>(subscriber{f, std::move(h), std::nullopt});
  std::uint64_t id = 0;
  {
    std::lock_guard lock(mu_);
    id = ++next_subscriber_;
    // The first connection's resync, delivered on the events' thread before any event.
    std::vector<dk::container_summary> now;
    for (const auto& [cid, c] : containers_) {
      if (labels_match(f.labels, c.info.labels)) {
        now.push_back({cid, c.info.name, c.info.image, c.info.status, c.info.labels});
      }
    }
    s->resync = std::move(now);
    subscribers_[id] = s;
    resync_pending_ = true;
  }
  events_cv_.notify_all();
  return std::unique_ptr<dk::subscription>(std::make_unique<subscription_impl>(*this, id));
}

}  // namespace berth::hollow
