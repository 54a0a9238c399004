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

namespace berth::agent::control {

namespace dk = berth::docker;

instance::instance(config& c, store& s, ipc::ledger& l, dk::engine& d,
                   const state::task_table& tasks)
    : cfg_(c),
      store_(&s),
      ledger_(l),
      docker_(&d),
      tasks_(tasks),
      arn_prefix_("arn:aws:ecs:" + c.region + ":" + c.account_id + ":") {}

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
  const std::string tmp = path + ".new";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return tl::unexpected(error{"cannot write " + tmp + ": " + std::strerror(errno)});
  const std::string line = id + "\n";
  const bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) &&
                  ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    return tl::unexpected(error{"cannot write " + path + ": " + std::strerror(errno)});
  }
  if (*known) (void)store_->erase("self", "instance-id");
  return id;
}

bool instance::is_me(const std::string& ref) const {
  return ref == instance_arn_ || ref == instance_id_ || name_of(ref) == instance_id_;
}

std::pair<std::int64_t, std::int64_t> instance::task_counts() const {
  std::int64_t running = 0, pending = 0;
  for (const auto& t : tasks_.all()) {
    const std::string& last = *t->ecs.last_status;
    running += last == "RUNNING";
    pending += last == "PENDING" || last == "PROVISIONING";
  }
  return {running, pending};
}

result<void> instance::save(const state::container_instance& ci) {
  const std::string key = record_key();
  if (auto w = store_->put("instance", key, state::to_json(ci).dump()); !w) return w;
  return publish_row(ci);
}

void instance::heartbeat() { (void)ledger_.heartbeat(slot_, now_ns()); }

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
  const std::string key = record_key();
  auto doc = store_->get("instance", key);
  if (!doc) return tl::unexpected(doc.error());
  // A record kept from before: its status, registration time, tags and the attributes put
  // through the API stay. A damaged one stops the start rather than be silently replaced.
  state::container_instance ci;
  if (*doc) {
    auto kept = state::parse<state::container_instance>(**doc, key);
    if (!kept) return tl::unexpected(error{kept.error().detail});
    ci = std::move(*kept);
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
  if (auto r = store_->put("instance", key, state::to_json(ci).dump()); !r) return r;
  // A fresh ledger slot: free capacity and claimed ports are then set from the tasks.
  if (auto old = ledger_.claim_slot(ec2_id_)) (void)ledger_.release_slot(*old);
  auto slot = ledger_.claim_slot(ec2_id_);
  if (!slot) return tl::unexpected(error{"ledger: " + ipc::describe(slot.error())});
  slot_ = *slot;
  return publish_row(ci);
}

// The instance's row in the ledger: state, capacity, attributes, running tasks.
result<void> instance::publish_row(const state::container_instance& ci) {
  std::lock_guard lock(row_mu_);
  row_record_ = ci;
  return publish_row_locked();
}

result<void> instance::publish_row_locked() {
  const state::container_instance& ci = *row_record_;
  ipc::row row;
  (void)row.set_id(ec2_id_);
  row.state = ci.status == "ACTIVE" ? ipc::instance_state::active : ipc::instance_state::draining;
  row.registered_at_ns = static_cast<std::uint64_t>(ci.registered_at * 1e9);
  row.registered_cpu = registered_cpu_;
  row.registered_mib = registered_mib_;
  row.registered_dynamic_ports = dynamic_port_count;
  row.running_tasks = running_tasks_;
  for (const auto& a : ci.attributes) {
    auto bit = ledger_.intern(a.value ? a.name + "=" + *a.value : a.name);
    if (!bit) continue;  // the dictionary is full: the attribute cannot be placed on
    row.set_attribute(*bit);
    if (a.name == "ecs.availability-zone") row.availability_zone = *bit + 1;
  }
  if (auto r = ledger_.publish(slot_, row); !r) {
    return tl::unexpected(error{"ledger publish: " + ipc::describe(r.error())});
  }
  (void)ledger_.heartbeat(slot_, now_ns());
  return {};
}

// ---- capacity in state ----

namespace {

// The capacity document: what is left of the instance, and the static ports in use.
struct capacity {
  std::int64_t cpu = 0, mib = 0, dynamic = 0;
  std::set<std::uint16_t> ports;

  static capacity parse(const std::string& text) {
    const json d = json::parse(text, nullptr, false);
    capacity c;
    if (!d.is_object()) return c;
    c.cpu = d.value("cpu", std::int64_t{0});
    c.mib = d.value("memory", std::int64_t{0});
    c.dynamic = d.value("dynamicPorts", std::int64_t{0});
    for (const auto& p : d.value("portsInUse", json::array())) {
      if (p.is_number_unsigned()) c.ports.insert(p.get<std::uint16_t>());
    }
    return c;
  }
  std::string dump() const {
    return json{{"cpu", cpu}, {"memory", mib}, {"dynamicPorts", dynamic}, {"portsInUse", ports}}
        .dump();
  }
  // Adds (sign 1) or takes (sign -1) a task's need.
  void add(const state::task_need& need, int sign) {
    cpu += sign * std::int64_t{need.cpu};
    mib += sign * std::int64_t{need.mib};
    dynamic += sign * std::int64_t{need.dynamic};
    for (const std::uint16_t p : need.ports) {
      if (sign > 0) {
        ports.erase(p);
      } else {
        ports.insert(p);
      }
    }
  }
};

}  // namespace

result<std::optional<std::string>> instance::claim(store& tx, const state::task_need& need,
                                                   std::size_t count) {
  const std::string key = record_key();
  auto doc = tx.get("instance", key);
  if (!doc) return tl::unexpected(doc.error());
  if (!*doc) return std::optional<std::string>("INACTIVE");
  auto ci = state::parse<state::container_instance>(**doc, key);
  if (!ci) return tl::unexpected(error{ci.error().detail});
  if (ci->status != "ACTIVE") return std::optional<std::string>("INACTIVE");
  auto cur = tx.get("capacity", key);
  if (!cur) return tl::unexpected(cur.error());
  if (!*cur) return tl::unexpected(error{"instance " + instance_id_ + " has no capacity record"});
  capacity c = capacity::parse(**cur);
  for (std::size_t i = 0; i < count; ++i) {
    for (const std::uint16_t p : need.ports) {
      if (c.ports.contains(p)) return std::optional<std::string>("RESOURCE:PORTS");
    }
    c.add(need, -1);
  }
  if (c.cpu < 0) return std::optional<std::string>("RESOURCE:CPU");
  if (c.mib < 0) return std::optional<std::string>("RESOURCE:MEMORY");
  if (c.dynamic < 0) return std::optional<std::string>("RESOURCE:PORTS");
  if (auto w = tx.put("capacity", key, c.dump()); !w) return tl::unexpected(w.error());
  return std::optional<std::string>();
}

result<void> instance::give_back(const state::task_need& need) {
  const std::string key = record_key();
  auto r = store_->transaction([&](store& tx) -> result<void> {
    auto cur = tx.get("capacity", key);
    if (!cur) return tl::unexpected(cur.error());
    if (!*cur) return {};  // nothing claimed here to give back
    capacity c = capacity::parse(**cur);
    c.add(need, 1);
    c.cpu = std::min<std::int64_t>(c.cpu, registered_cpu_);
    c.mib = std::min<std::int64_t>(c.mib, registered_mib_);
    c.dynamic = std::min<std::int64_t>(c.dynamic, dynamic_port_count);
    return tx.put("capacity", key, c.dump());
  });
  if (!r) return tl::unexpected(r.error());
  return {};
}

result<void> instance::reset_capacity(const std::vector<state::task_need>& needs) {
  capacity c{registered_cpu_, registered_mib_, dynamic_port_count, {}};
  for (const auto p : cfg_.reserved_ports) c.ports.insert(p);
  for (const state::task_need& n : needs) c.add(n, -1);
  c.cpu = std::max<std::int64_t>(c.cpu, 0);
  c.mib = std::max<std::int64_t>(c.mib, 0);
  c.dynamic = std::max<std::int64_t>(c.dynamic, 0);
  return store_->put("capacity", record_key(), c.dump());
}

result<state::container_instance> instance::record() {
  const std::string key = record_key();
  auto doc = store_->get("instance", key);
  if (!doc) return tl::unexpected(doc.error());
  if (!*doc) return tl::unexpected(error{"container instance record '" + key + "' is missing"});
  auto ci = state::parse<state::container_instance>(**doc, key);
  if (!ci) return tl::unexpected(error{ci.error().detail});
  return std::move(*ci);
}

// DescribeContainerInstances' view: registered and remaining resources from the ledger.
json instance::describe(const state::container_instance& record) {
  json ci = state::response(record);
  std::uint32_t free_cpu = registered_cpu_, free_mib = registered_mib_;
  const ipc::columns cols = ledger_.view();
  if (slot_ < cols.count) {
    free_cpu = static_cast<std::uint32_t>(cols.free[slot_] >> 32);
    free_mib = static_cast<std::uint32_t>(cols.free[slot_]);
  }
  json ports = json::array();
  for (const auto p : cfg_.reserved_ports) ports.push_back(std::to_string(p));
  json used_ports = ports;
  for (const auto& t : tasks_.all()) {
    if (t->ecs.last_status == "STOPPED") continue;
    for (const std::uint16_t p : t->berth.need.ports) used_ports.push_back(std::to_string(p));
  }
  const auto resource = [](const char* name, std::int64_t v) {
    return json{{"name", name},
                {"type", "INTEGER"},
                {"integerValue", v},
                {"doubleValue", 0.0},
                {"longValue", 0}};
  };
  const auto port_resource = [](json list) {
    return json{{"name", "PORTS"},   {"type", "STRINGSET"}, {"stringSetValue", std::move(list)},
                {"integerValue", 0}, {"doubleValue", 0.0},  {"longValue", 0}};
  };
  ci["registeredResources"] = {resource("CPU", registered_cpu_),
                               resource("MEMORY", registered_mib_), port_resource(ports)};
  ci["remainingResources"] = {resource("CPU", free_cpu), resource("MEMORY", free_mib),
                              port_resource(used_ports)};
  const auto [running, pending] = task_counts();
  ci["runningTasksCount"] = running;
  ci["pendingTasksCount"] = pending;
  return ci;
}

void instance::count_running(std::uint32_t n) {
  std::lock_guard lock(row_mu_);
  if (n == running_tasks_) return;
  running_tasks_ = n;
  if (!row_record_) return;  // not registered yet: registration publishes the count
  if (auto r = publish_row_locked(); !r) {
    spdlog::warn("ledger: runningTasksCount {} not published: {}", n, r.error().message);
  }
}

}  // namespace berth::agent::control
