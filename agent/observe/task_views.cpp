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

// The client's view of a task: without Berth's own bookkeeping.
json view(json t) {
  t.erase("_berth");
  return t;
}

}  // namespace

json task_event(const json& t, const std::string& account_id, const std::string& region) {
  // The stream is open to every reader: overrides' environment values are hidden, as in the
  // audit log.
  json d = redact(view(t), std::numeric_limits<std::size_t>::max());
  d.erase("tags");
  for (const char* k : {"createdAt", "startedAt", "stoppedAt", "stoppingAt", "pullStartedAt",
                        "pullStoppedAt", "connectivityAt", "executionStoppedAt"}) {
    if (d.contains(k) && d[k].is_number()) d[k] = iso8601(d[k].get<double>(), true);
  }
  const double now = now_seconds();
  d["updatedAt"] = iso8601(now, true);
  return {{"version", "0"},
          {"id", uuid()},
          {"detail-type", "ECS Task State Change"},
          {"source", "aws.ecs"},
          {"account", account_id},
          {"time", iso8601(now, false)},
          {"region", region},
          {"resources", {t["taskArn"]}},
          {"detail", d}};
}

json usage_of(const json& t) {
  json out = json::object();
  if (t["lastStatus"] == "STOPPED") return out;
  const json pids = t["_berth"].value("pids", json::object());
  for (const auto& c : t["containers"]) {
    const std::string name = c["name"];
    json u = json::object();
    if (c.contains("memory")) u["memoryLimitMiB"] = std::stoll(c["memory"].get<std::string>());
    if (c.contains("memoryReservation")) {
      u["memoryReservationMiB"] = std::stoll(c["memoryReservation"].get<std::string>());
    }
    const std::string id = c.value("runtimeId", "");
    if (c["lastStatus"] == "RUNNING" && pids.contains(name) && !id.empty()) {
      if (auto got = dk::read_usage(pids[name].get<int>());
          got && got->cgroup.find(id) != std::string::npos) {
        if (got->memory_bytes) u["memoryUsedBytes"] = *got->memory_bytes;
        if (got->cpu_ns) u["cpuUsedNanoseconds"] = *got->cpu_ns;
      }
    }
    out[name] = u;
  }
  return out;
}

json introspect(const json& t) {
  const json& td = t["_berth"]["taskDefinition"];
  json out = {{"Arn", t["taskArn"]},
              {"KnownStatus", backend_status(t["lastStatus"])},
              {"Family", td["family"]},
              {"Version", std::to_string(td["revision"].get<int>())},
              {"Containers", json::array()}};
  const std::string known = out["KnownStatus"];
  const std::string desired = backend_status(t["desiredStatus"]);
  if (!(known == "STOPPED" && desired != "STOPPED") &&
      !(known == "RUNNING" && desired == "PENDING")) {
    out["DesiredStatus"] = desired;
  }
  const json usage = usage_of(t);
  for (const auto& c : t["containers"]) {
    const std::string name = c["name"];
    json cr = {{"DockerId", c.value("runtimeId", "")},
               {"DockerName", "berth-" + name_of(t["taskArn"]).substr(0, 12) + "-" + name},
               {"Name", name},
               {"Image", c.value("image", "")},
               {"ImageID", t["_berth"].value("images", json::object()).value(name, "")}};
    json ports = json::array();
    for (const auto& b : c.value("networkBindings", json::array())) {
      json p = {{"ContainerPort", b.value("containerPort", 0)},
                {"Protocol", b.value("protocol", "tcp")},
                {"HostPort", b.value("hostPort", 0)}};
      ports.push_back(p);
    }
    if (!ports.empty()) cr["Ports"] = ports;
    if (usage.contains(name)) cr["Usage"] = usage[name];
    out["Containers"].push_back(cr);
  }
  return out;
}

std::vector<const json*> tasks_with_container(const std::vector<std::shared_ptr<const json>>& tasks,
                                              const std::string& docker_id) {
  std::vector<const json*> found;
  for (const auto& t : tasks) {
    for (const auto& [name, id] : (*t)["_berth"]["docker"].items()) {
      const auto& i = id.get_ref<const std::string&>();
      if (docker_id.size() > 12 ? i == docker_id : i.starts_with(docker_id)) {
        found.push_back(t.get());
      }
    }
  }
  return found;
}

}  // namespace berth::agent::observe
