// A task's container as Docker is asked to make it: see container_spec.hpp.
#include "container_spec.hpp"

#include <algorithm>

#include "berth/agent/util.hpp"
#include "berth/engine/task_engine.hpp"

namespace berth::agent::engine {

namespace dk = berth::docker;

dk::container_spec container_spec(const json& t, const json& c, const json& td,
                                  const std::string& ns_owner, const spec_context& ctx) {
  const std::string task_arn = t["taskArn"];
  const std::string id = name_of(task_arn);
  dk::container_spec s;
  s.name = "berth-" + id.substr(0, 12) + "-" + c["name"].get<std::string>();
  s.image = c["image"];
  json o = json::object();
  for (const auto& co : t["overrides"].value("containerOverrides", json::array())) {
    if (co.value("name", std::string()) == c["name"]) o = co;
  }
  for (const auto& e : c.value("entryPoint", json::array())) s.entrypoint.push_back(e);
  for (const auto& e : o.value("command", c.value("command", json::array())))
    s.command.push_back(e);
  std::map<std::string, std::string> env;
  for (const auto& e : c.value("environment", json::array()))
    env[e["name"]] = e.value("value", std::string());
  for (const auto& e : o.value("environment", json::array()))
    env[e["name"]] = e.value("value", std::string());
  for (const auto& [k, v] : env) s.env.push_back(k + "=" + v);
  const json labels = c.value("dockerLabels", json::object());  // items() must not outlive it
  for (const auto& [k, v] : labels.items()) {
    if (v.is_string()) s.labels[k] = v.get<std::string>();
  }
  s.labels[label_cluster] = ctx.cluster;
  s.labels[label_task] = task_arn;
  s.labels[label_container] = c["name"];
  s.labels[label_instance] = ctx.instance_arn;
  s.labels[label_state_dir] = ctx.state_dir;
  s.working_dir = c.value("workingDirectory", std::string());
  s.user = c.value("user", std::string());
  s.hostname = c.value("hostname", std::string());
  const auto mem = o.contains("memory") ? o["memory"] : c.value("memory", json());
  const auto res = o.contains("memoryReservation") ? o["memoryReservation"]
                                                   : c.value("memoryReservation", json());
  if (mem.is_number()) s.memory_bytes = mem.get<std::int64_t>() << 20;
  if (res.is_number()) s.memory_reservation_bytes = res.get<std::int64_t>() << 20;
  const std::int64_t cpu = o.value("cpu", c.value("cpu", 0));
  s.cpu_shares = cpu < 2 ? 2 : cpu;  // Docker's minimum, as the ECS agent does
  const std::string network = td["networkMode"];
  s.network_mode = network;
  for (const auto& p : c.value("portMappings", json::array())) {
    s.ports.push_back({static_cast<std::uint16_t>(p["containerPort"].get<int>()),
                       p.value("protocol", std::string("tcp")), ctx.host_ip,
                       static_cast<std::uint16_t>(p.value("hostPort", 0))});
  }
  if (network != "bridge") s.ports.clear();
  for (const auto& m : c.value("mountPoints", json::array())) {
    const std::string vol = m.value("sourceVolume", std::string());
    for (const auto& v : td.value("volumes", json::array())) {
      if (v.value("name", std::string()) != vol) continue;
      if (v.contains("host") && v["host"].contains("sourcePath")) {
        s.mounts.push_back({v["host"]["sourcePath"], m.value("containerPath", std::string()),
                            m.value("readOnly", false), false});
      } else {
        s.mounts.push_back({"berth-" + id.substr(0, 12) + "-" + vol,
                            m.value("containerPath", std::string()), m.value("readOnly", false),
                            true});
      }
    }
  }
  for (const auto& u : c.value("ulimits", json::array())) {
    s.ulimits.push_back(
        {u.value("name", std::string()), u.value("softLimit", 0), u.value("hardLimit", 0)});
  }
  s.readonly_rootfs = c.value("readonlyRootFilesystem", false);
  s.privileged = c.value("privileged", false);
  const std::string pid = td.value("pidMode", ""), ipc = td.value("ipcMode", "");
  if (pid == "host") s.pid_mode = "host";
  if (pid == "task" && !ns_owner.empty()) s.pid_mode = "container:" + ns_owner;
  if (ipc == "host" || ipc == "none") s.ipc_mode = ipc;
  if (ipc == "task") s.ipc_mode = ns_owner.empty() ? "shareable" : "container:" + ns_owner;
  if (const json& lp = member(c, "linuxParameters"); lp.is_object()) {
    const json& caps = member(lp, "capabilities");
    for (const auto& x : member(caps, "add").is_array() ? caps["add"] : json::array())
      s.cap_add.push_back(x);
    for (const auto& x : member(caps, "drop").is_array() ? caps["drop"] : json::array())
      s.cap_drop.push_back(x);
    for (const auto& d : member(lp, "devices").is_array() ? lp["devices"] : json::array()) {
      dk::device dev;
      dev.path_on_host = d["hostPath"];
      dev.path_in_container = d.value("containerPath", dev.path_on_host);
      if (const json& p = member(d, "permissions"); p.is_array() && !p.empty()) {
        // In Docker's order: r, w, m.
        dev.cgroup_permissions.clear();
        for (const auto& [word, letter] :
             {std::pair{"read", 'r'}, std::pair{"write", 'w'}, std::pair{"mknod", 'm'}}) {
          if (std::find(p.begin(), p.end(), word) != p.end()) dev.cgroup_permissions += letter;
        }
      }
      s.devices.push_back(dev);
    }
    if (member(lp, "initProcessEnabled").is_boolean()) s.init = lp["initProcessEnabled"];
    if (member(lp, "sharedMemorySize").is_number_integer())
      s.shm_size_bytes = lp["sharedMemorySize"].get<std::int64_t>() << 20;
    for (const auto& m : member(lp, "tmpfs").is_array() ? lp["tmpfs"] : json::array()) {
      std::string opts;
      for (const auto& o : member(m, "mountOptions").is_array() ? m["mountOptions"] : json::array())
        opts += o.get<std::string>() + ",";
      s.tmpfs[m["containerPath"]] =
          opts + "size=" + std::to_string(m["size"].get<std::int64_t>()) + "m";
    }
  }
  if (c.contains("healthCheck")) {
    const json& h = c["healthCheck"];
    dk::health_check hc;
    for (const auto& x : h.value("command", json::array())) hc.test.push_back(x);
    hc.interval = std::chrono::seconds(h.value("interval", 30));
    hc.timeout = std::chrono::seconds(h.value("timeout", 5));
    hc.retries = h.value("retries", 3);
    hc.start_period = std::chrono::seconds(h.value("startPeriod", 0));
    s.health = hc;
  }
  return s;
}

}  // namespace berth::agent::engine
