// A task's container as Docker is asked to make it: see container_spec.hpp.
#include "container_spec.hpp"

#include <algorithm>
#include <map>
#include <set>

#include "berth/agent/util.hpp"
#include "berth/engine/task_engine.hpp"

namespace berth::agent::engine {

namespace dk = berth::docker;

namespace {

template <class T>
const std::vector<T>& list_of(const std::optional<std::vector<T>>& l) {
  static const std::vector<T> none;
  return l ? *l : none;
}

}  // namespace

std::vector<const ecs::container_definition*> start_order(
    const std::vector<ecs::container_definition>& containers) {
  std::vector<const ecs::container_definition*> out;
  std::set<std::string> placed;
  for (std::size_t round = 0; round < containers.size(); ++round) {
    for (const auto& c : containers) {
      const std::string name = c.name.value_or("");
      if (placed.contains(name)) continue;
      const auto& deps = list_of(c.depends_on);
      if (!std::all_of(deps.begin(), deps.end(),
                       [&](const auto& d) { return placed.contains(d.container_name); })) {
        continue;
      }
      placed.insert(name);
      out.push_back(&c);
    }
  }
  return out;
}

dk::container_spec container_spec(const state::task& t, const ecs::container_definition& c,
                                  const ecs::task_definition& td, const std::string& ns_owner,
                                  const spec_context& ctx) {
  const std::string& task_arn = t.arn();
  const std::string id = name_of(task_arn);
  const std::string name = c.name.value_or("");
  dk::container_spec s;
  s.name = "berth-" + id.substr(0, 12) + "-" + name;
  s.image = c.image.value_or("");
  const ecs::container_override none;
  const ecs::container_override* o = &none;
  if (t.ecs.overrides) {
    for (const auto& co : list_of(t.ecs.overrides->container_overrides)) {
      if (co.name == name) o = &co;
    }
  }
  s.entrypoint = list_of(c.entry_point);
  s.command = o->command ? *o->command : list_of(c.command);
  std::map<std::string, std::string> env;
  for (const auto& e : list_of(c.environment)) env[e.name.value_or("")] = e.value.value_or("");
  for (const auto& e : list_of(o->environment)) env[e.name.value_or("")] = e.value.value_or("");
  for (const auto& [k, v] : env) s.env.push_back(k + "=" + v);
  if (c.docker_labels) s.labels = *c.docker_labels;
  s.labels[label_cluster] = ctx.cluster;
  s.labels[label_task] = task_arn;
  s.labels[label_container] = name;
  s.labels[label_instance] = ctx.instance_arn;
  s.labels[label_state_dir] = ctx.state_dir;
  s.working_dir = c.working_directory.value_or("");
  s.user = c.user.value_or("");
  s.hostname = c.hostname.value_or("");
  const auto mem = o->memory ? o->memory : c.memory;
  const auto res = o->memory_reservation ? o->memory_reservation : c.memory_reservation;
  if (mem) s.memory_bytes = std::int64_t{*mem} << 20;
  if (res) s.memory_reservation_bytes = std::int64_t{*res} << 20;
  const std::int64_t cpu = o->cpu ? *o->cpu : c.cpu.value_or(0);
  s.cpu_shares = cpu < 2 ? 2 : cpu;  // Docker's minimum, as the ECS agent does
  const std::string network = td.network_mode.value_or("");
  s.network_mode = network;
  for (const auto& p : list_of(c.port_mappings)) {
    s.ports.push_back({static_cast<std::uint16_t>(p.container_port.value_or(0)),
                       p.protocol.value_or("tcp"), ctx.host_ip,
                       static_cast<std::uint16_t>(p.host_port.value_or(0))});
  }
  if (network != "bridge") s.ports.clear();
  for (const auto& m : list_of(c.mount_points)) {
    const std::string vol = m.source_volume.value_or("");
    for (const auto& v : list_of(td.volumes)) {
      if (v.name.value_or("") != vol) continue;
      if (v.host && v.host->source_path) {
        s.mounts.push_back({*v.host->source_path, m.container_path.value_or(""),
                            m.read_only.value_or(false), false});
      } else {
        s.mounts.push_back({"berth-" + id.substr(0, 12) + "-" + vol, m.container_path.value_or(""),
                            m.read_only.value_or(false), true});
      }
    }
  }
  for (const auto& u : list_of(c.ulimits))
    s.ulimits.push_back({u.name, u.soft_limit, u.hard_limit});
  s.readonly_rootfs = c.readonly_root_filesystem.value_or(false);
  s.privileged = c.privileged.value_or(false);
  const std::string pid = td.pid_mode.value_or(""), ipc = td.ipc_mode.value_or("");
  if (pid == "host") s.pid_mode = "host";
  if (pid == "task" && !ns_owner.empty()) s.pid_mode = "container:" + ns_owner;
  if (ipc == "host" || ipc == "none") s.ipc_mode = ipc;
  if (ipc == "task") s.ipc_mode = ns_owner.empty() ? "shareable" : "container:" + ns_owner;
  if (const auto& lp = c.linux_parameters) {
    if (lp->capabilities) {
      s.cap_add = list_of(lp->capabilities->add);
      s.cap_drop = list_of(lp->capabilities->drop);
    }
    for (const auto& d : list_of(lp->devices)) {
      dk::device dev;
      dev.path_on_host = d.host_path;
      dev.path_in_container = d.container_path.value_or(dev.path_on_host);
      if (const auto& p = list_of(d.permissions); !p.empty()) {
        // In Docker's order: r, w, m.
        dev.cgroup_permissions.clear();
        for (const auto& [word, letter] :
             {std::pair{"read", 'r'}, std::pair{"write", 'w'}, std::pair{"mknod", 'm'}}) {
          if (std::find(p.begin(), p.end(), word) != p.end()) dev.cgroup_permissions += letter;
        }
      }
      s.devices.push_back(dev);
    }
    if (lp->init_process_enabled) s.init = *lp->init_process_enabled;
    if (lp->shared_memory_size) s.shm_size_bytes = std::int64_t{*lp->shared_memory_size} << 20;
    for (const auto& m : list_of(lp->tmpfs)) {
      std::string opts;
      for (const auto& mo : list_of(m.mount_options)) opts += mo + ",";
      s.tmpfs[m.container_path] = opts + "size=" + std::to_string(m.size) + "m";
    }
  }
  if (const auto& h = c.health_check) {
    dk::health_check hc;
    hc.test = h->command;
    hc.interval = std::chrono::seconds(h->interval.value_or(30));
    hc.timeout = std::chrono::seconds(h->timeout.value_or(5));
    hc.retries = h->retries.value_or(3);
    hc.start_period = std::chrono::seconds(h->start_period.value_or(0));
    s.health = hc;
  }
  return s;
}

}  // namespace berth::agent::engine
