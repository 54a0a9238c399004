// This agent's container instance: see instance.hpp.
#include "instance.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include "berth/agent/util.hpp"
#include "berth/version.hpp"
#include "capacity.hpp"

namespace berth::agent::control {

namespace dk = berth::docker;

instance::instance(config& c, store& s, dk::engine& d)
    : cfg_(c),
      store_(&s),
      docker_(&d),
      arn_prefix_("arn:aws:ecs:" + c.region + ":" + c.account_id + ":") {}

instance::~instance() {
  {
    std::lock_guard lock(owed_mu_);
    stop_giving_ = true;
  }
  owed_cv_.notify_all();
  if (giver_.joinable()) giver_.join();
}

// The instance's id survives restarts, kept in the state directory: the cluster's store is
// shared by every agent of the cluster. An id an older berthd kept in its store is moved there.
result<std::string> instance::own_instance_id() {
  const std::string path = cfg_.state_dir + "/instance-id";
  if (std::ifstream in(path); in) {
    std::string id;
    std::getline(in, id);
    if (id.size() == 32 && id.find_first_not_of("0123456789abcdef") == std::string::npos) {
      return id;
    }
    return tl::unexpected(error{path + " does not hold an instance id (32 hex digits)"});
  }
  auto known = store_->get("self", "instance-id");
  if (!known) return tl::unexpected(known.error());
  const std::string id = *known ? **known : random_hex(32);
  if (auto w = write_file_atomically(path, id + "\n"); !w) return tl::unexpected(w.error());
  if (*known) (void)store_->erase("self", "instance-id");
  return id;
}

bool instance::is_me(const std::string& ref) const {
  return ref == instance_arn_ || ref == instance_id_ || name_of(ref) == instance_id_;
}

result<void> instance::save(const state::container_instance& ci) {
  return store_->put("instance", record_key(cfg_.cluster, instance_id_), state::to_json(ci).dump());
}

result<void> instance::register_instance(const std::optional<instance_metadata>& ec2) {
  auto res = dk::instance_resources();
  if (!res) return tl::unexpected(error{"instance resources: " + res.error().message});
  auto id = own_instance_id();
  if (!id) return tl::unexpected(id.error());
  instance_id_ = std::move(*id);
  instance_arn_ = arn_prefix_ + ("container-instance/" + cfg_.cluster + "/" + instance_id_);
  ec2_id_ = "i-" + instance_id_.substr(0, 17);
  // EC2's metadata, when read: it overrides the configured type and zone.
  std::string ami = "ami-berth";
  if (ec2) {
    ec2_id_ = ec2->instance_id;
    cfg_.instance_type = ec2->instance_type;
    cfg_.availability_zone = ec2->availability_zone;
    ami = ec2->ami_id;
  }
  const std::uint64_t mib = res->memory_bytes >> 20;
  registered_cpu_ = cfg_.cpu_units != 0 ? cfg_.cpu_units : res->cpus * 1024;
  registered_mib_ = cfg_.memory_mib != 0
                        ? cfg_.memory_mib
                        : static_cast<std::uint32_t>(
                              mib > cfg_.reserved_memory_mib ? mib - cfg_.reserved_memory_mib : 0);
  const std::string key = record_key(cfg_.cluster, instance_id_);
  auto doc = store_->get("instance", key);
  if (!doc) return tl::unexpected(doc.error());
  // A record kept from before: its status, registration time, tags and the attributes put
  // through the API stay. A damaged one stops the start rather than be silently replaced.
  state::container_instance ci;
  if (*doc) {
    auto kept = state::parse<state::container_instance>(**doc, key);
    if (!kept) return tl::unexpected(error{kept.error().detail});
    ci = std::move(*kept);
    // Deregistered (INACTIVE) while its agent was away: registered again, as a new instance.
    if (ci.status == "INACTIVE") {
      ci.status = "ACTIVE";
      ci.registered_at = now_seconds();
    }
  } else {
    ci.status = "ACTIVE";
    ci.registered_at = now_seconds();
  }
  ci.container_instance_arn = instance_arn_;
  ci.ec2_instance_id = ec2_id_;
  ++ci.version;
  ci.agent_connected = true;
  utsname u{};
  ::uname(&u);
  ci.version_info = {BERTH_VERSION, "berth", "DockerVersion: " + docker_->version().engine_version};
  // Built-in attributes, then configured ones, then any put through the API before.
  std::map<std::string, std::optional<std::string>> attrs;
  for (auto& a : ci.attributes) attrs[a.name] = std::move(a.value);
  attrs["ecs.os-type"] = "linux";
  attrs["ecs.cpu-architecture"] = std::string(u.machine) == "aarch64" ? "arm64" : "x86_64";
  attrs["ecs.availability-zone"] = cfg_.availability_zone;
  attrs["ecs.instance-type"] = cfg_.instance_type;
  attrs["ecs.ami-id"] = ami;
  for (const auto& [k, v] : cfg_.attributes) attrs[k] = v;
  ci.attributes.clear();
  for (auto& [k, v] : attrs) ci.attributes.push_back({k, std::move(v)});
  ci.registered_cpu = registered_cpu_;
  ci.registered_mib = registered_mib_;
  ci.reserved_ports = cfg_.reserved_ports;
  return store_->put("instance", key, state::to_json(ci).dump());
}

void instance::give_back(const state::task_need& need) {
  std::lock_guard lock(owed_mu_);
  owed_.push_back(need);
  if (!giver_.joinable() && !stop_giving_) giver_ = std::thread([this] { give_back_behind(); });
  owed_cv_.notify_one();
}

void instance::give_back_behind() {
  int failures = 0;
  std::unique_lock lock(owed_mu_);
  for (;;) {
    owed_cv_.wait(lock, [&] { return stop_giving_ || !owed_.empty(); });
    if (owed_.empty()) return;  // stopping, and nothing owed
    lock.unlock();
    auto r = [&] {
      std::lock_guard give(give_mu_);
      return give_back_owed();
    }();
    lock.lock();
    if (r) {
      if (failures > 0) spdlog::info("capacity given back in state again");
      failures = 0;
      continue;
    }
    if (failures++ == 0) spdlog::error("capacity not given back in state: {}", r.error().message);
    if (stop_giving_) {
      spdlog::error(
          "capacity of {} task(s) not given back at exit: counted again at the next start",
          owed_.size());
      return;
    }
    const auto pause = retry_pause(failures);
    owed_cv_.wait_for(lock, pause, [&] { return stop_giving_; });
  }
}

result<void> instance::settle() {
  std::lock_guard give(give_mu_);
  return give_back_owed();
}

result<void> instance::give_back_owed() {
  std::vector<state::task_need> needs;
  {
    std::lock_guard lock(owed_mu_);
    needs.swap(owed_);
  }
  if (needs.empty()) return {};
  const std::string key = capacity_key(cfg_.cluster, instance_id_);
  auto r = store_->transaction([&](store& tx) -> result<void> {
    auto cur = tx.get("instance", key);
    if (!cur) return tl::unexpected(cur.error());
    if (!*cur) return {};  // nothing claimed here to give back
    capacity c = capacity::parse(**cur);
    for (const state::task_need& need : needs) c.add(need, 1);
    c.cpu = std::min<std::int64_t>(c.cpu, registered_cpu_);
    c.mib = std::min<std::int64_t>(c.mib, registered_mib_);
    c.dynamic = std::min<std::int64_t>(c.dynamic, dynamic_port_count);
    for (const auto p : cfg_.reserved_ports) c.ports.insert(p);
    return tx.put("instance", key, c.dump());
  });
  if (r) return {};
  std::lock_guard lock(owed_mu_);
  owed_.insert(owed_.end(), needs.begin(), needs.end());
  return tl::unexpected(r.error());
}

result<void> instance::reset_capacity(const std::vector<state::task_need>& needs) {
  std::lock_guard give(give_mu_);
  {
    std::lock_guard lock(owed_mu_);
    owed_.clear();
  }
  capacity c{registered_cpu_, registered_mib_, dynamic_port_count, {}};
  for (const auto p : cfg_.reserved_ports) c.ports.insert(p);
  for (const state::task_need& n : needs) c.add(n, -1);
  c.cpu = std::max<std::int64_t>(c.cpu, 0);
  c.mib = std::max<std::int64_t>(c.mib, 0);
  c.dynamic = std::max<std::int64_t>(c.dynamic, 0);
  return store_->put("instance", capacity_key(cfg_.cluster, instance_id_), c.dump());
}

result<state::container_instance> instance::record() {
  const std::string key = record_key(cfg_.cluster, instance_id_);
  auto doc = store_->get("instance", key);
  if (!doc) return tl::unexpected(doc.error());
  if (!*doc) return tl::unexpected(error{"container instance record '" + key + "' is missing"});
  auto ci = state::parse<state::container_instance>(**doc, key);
  if (!ci) return tl::unexpected(error{ci.error().detail});
  return std::move(*ci);
}

// ---- presence ----

result<void> instance::connect() {
  const std::shared_ptr<state::store> st = store_->state();
  // The lease an earlier run of this agent held (kill -9 left it): revoked, so that peers do not
  // see the old presence until it expires, and its keys go with it.
  const std::string lease_file = cfg_.state_dir + "/agent-lease";
  if (std::ifstream in(lease_file); in) {
    state::lease_id old = 0;
    if (in >> old && old != 0) (void)st->revoke(old);
  }
  auto granted = st->grant(cfg_.heartbeat_ttl);
  if (!granted) return tl::unexpected(error{"agent lease: " + granted.error().detail});
  if (auto w = write_file_atomically(lease_file, std::to_string(granted->id) + "\n"); !w) return w;
  const json presence = {
      {"pid", ::getpid()}, {"address", cfg_.instance_address}, {"version", BERTH_VERSION}};
  auto put = st->put(document_key("instance", presence_key(cfg_.cluster, instance_id_)),
                     presence.dump(), granted->id);
  if (!put) return tl::unexpected(error{"agent presence: " + put.error().detail});
  lease_ = granted->id;
  last_keep_alive_ = std::chrono::steady_clock::now();
  return {};
}

void instance::keep_alive() {
  const auto now = std::chrono::steady_clock::now();
  if (lease_ != 0 && now - last_keep_alive_ < cfg_.heartbeat_ttl / 3) return;
  const std::shared_ptr<state::store> st = store_->state();
  if (lease_ != 0) {
    auto kept = st->keep_alive(lease_);
    if (kept) {
      last_keep_alive_ = now;
      return;
    }
    if (kept.error().code != state::errc::lease_not_found) {
      spdlog::warn("agent lease not kept alive: {}", kept.error().detail);
      return;
    }
    // Lost (this agent was stopped, or cut off, longer than its TTL): peers saw it disconnected.
    spdlog::warn("agent lease {} expired: connecting again", lease_);
    lease_ = 0;
  }
  if (auto r = connect(); !r) spdlog::warn("agent not connected: {}", r.error().message);
}

void instance::disconnect() {
  if (lease_ == 0) return;
  (void)store_->state()->revoke(lease_);
  lease_ = 0;
}

}  // namespace berth::agent::control
