// How tasks are shown outside the ECS API: the event stream, the ECS agent's introspection
// API, and usage read from cgroups.
#include "task_views.hpp"

#include <limits>

#include "berth/agent/util.hpp"
#include "berth/api/audit.hpp"
#include "berth/docker.hpp"

namespace berth::agent::observe {

namespace dk = berth::docker;

namespace {

// As the ECS agent reports a status: PENDING before RUNNING, RUNNING from then until STOPPED
// (a task whose containers are stopping, DEPROVISIONING here, is still RUNNING to it).
std::string backend_status(const std::string& s) {
  if (s == "RUNNING" || s == "DEPROVISIONING") return "RUNNING";
  return s == "STOPPED" ? s : "PENDING";
}

}  // namespace

json task_event(const state::task& t, const std::string& account_id, const std::string& region) {
  // The stream is open to every reader: overrides' environment values are hidden, as in the
  // audit log.
  json d = redact(state::response(t, false), std::numeric_limits<std::size_t>::max());
  for (const char* k : {"createdAt", "startedAt", "stoppedAt", "stoppingAt", "pullStartedAt",
                        "pullStoppedAt", "connectivityAt", "executionStoppedAt"}) {
    if (d.contains(k) && d[k].is_number()) d[k] = iso8601(d[k].get<double>(), true);
  }
  const double now = now_seconds();
  d["updatedAt"] = iso8601(now, true);
  return {{"version", "0"},      {"id", uuid()},           {"detail-type", "ECS Task State Change"},
          {"source", "aws.ecs"}, {"account", account_id},  {"time", iso8601(now, false)},
          {"region", region},    {"resources", {t.arn()}}, {"detail", d}};
}

json usage_of(const state::task& t) {
  json out = json::object();
  if (t.ecs.last_status == "STOPPED" || !t.ecs.containers) return out;
  for (const ecs::container& c : *t.ecs.containers) {
    const std::string name = c.name.value_or("");
    json u = json::object();
    if (c.memory) u["memoryLimitMiB"] = std::stoll(*c.memory);
    if (c.memory_reservation) u["memoryReservationMiB"] = std::stoll(*c.memory_reservation);
    const std::string id = c.runtime_id.value_or("");
    const auto pid = t.berth.pids.find(name);
    if (c.last_status == "RUNNING" && pid != t.berth.pids.end() && !id.empty()) {
      if (auto got = dk::read_usage(static_cast<int>(pid->second));
          got && got->cgroup.find(id) != std::string::npos) {
        if (got->memory_bytes) u["memoryUsedBytes"] = *got->memory_bytes;
        if (got->cpu_ns) u["cpuUsedNanoseconds"] = *got->cpu_ns;
      }
    }
    out[name] = u;
  }
  return out;
}

json introspect(const state::task& t) {
  const ecs::task_definition& td = *t.berth.task_definition;
  json out = {{"Arn", t.arn()},
              {"KnownStatus", backend_status(t.ecs.last_status.value_or(""))},
              {"Family", td.family.value_or("")},
              {"Version", std::to_string(td.revision.value_or(0))},
              {"Containers", json::array()}};
  const std::string known = out["KnownStatus"];
  const std::string desired = backend_status(t.ecs.desired_status.value_or(""));
  if (!(known == "STOPPED" && desired != "STOPPED") &&
      !(known == "RUNNING" && desired == "PENDING")) {
    out["DesiredStatus"] = desired;
  }
  const json usage = usage_of(t);
  for (const ecs::container& c : t.ecs.containers.value_or(std::vector<ecs::container>{})) {
    const std::string name = c.name.value_or("");
    const auto image = t.berth.images.find(name);
    json cr = {{"DockerId", c.runtime_id.value_or("")},
               {"DockerName", "berth-" + name_of(t.arn()).substr(0, 12) + "-" + name},
               {"Name", name},
               {"Image", c.image.value_or("")},
               {"ImageID", image == t.berth.images.end() ? "" : image->second}};
    json ports = json::array();
    for (const auto& b : c.network_bindings.value_or(std::vector<ecs::network_binding>{})) {
      ports.push_back({{"ContainerPort", b.container_port.value_or(0)},
                       {"Protocol", b.protocol.value_or("tcp")},
                       {"HostPort", b.host_port.value_or(0)}});
    }
    if (!ports.empty()) cr["Ports"] = ports;
    if (usage.contains(name)) cr["Usage"] = usage[name];
    out["Containers"].push_back(cr);
  }
  return out;
}

std::vector<const state::task*> tasks_with_container(
    const std::vector<std::shared_ptr<const state::task>>& tasks, const std::string& docker_id) {
  std::vector<const state::task*> found;
  for (const auto& t : tasks) {
    for (const auto& [name, id] : t->berth.docker) {
      if (docker_id.size() > 12 ? id == docker_id : id.starts_with(docker_id)) {
        found.push_back(t.get());
      }
    }
  }
  return found;
}

}  // namespace berth::agent::observe
