// The engine's Docker steps: see docker_steps.hpp.
#include "docker_steps.hpp"

#include <spdlog/spdlog.h>

#include "berth/agent/util.hpp"
#include "berth/engine/task_engine.hpp"

namespace berth::agent::engine {

namespace dk = berth::docker;
using namespace std::chrono_literals;

tl::expected<std::string, dk::error> make_container(
    dk::engine& d, const dk::container_spec& s,
    const std::function<bool(std::chrono::milliseconds)>& pause) {
  auto id = d.create_container(s);
  if (!id && id.error().code == dk::errc::not_found) {
    // Not present: try the registry, which fails fast when there is none.
    auto pulled = d.pull_image(s.image, 60s);
    if (pulled) id = d.create_container(s);
    if (!pulled) id = tl::unexpected(pulled.error());
  }
  if (!id && id.error().code == dk::errc::conflict) {
    // Created before a crash: the name is this task's, take it over. A create cut short by
    // berthd's death may still be under way in dockerd, which then holds the name without
    // showing the container for a moment: asked again, up to 10 s.
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    for (;;) {
      if (auto existing = d.inspect_container(s.name)) return existing->id;
      if (std::chrono::steady_clock::now() >= deadline || !pause(100ms)) break;
    }
  }
  return id;
}

std::vector<std::string> unenforced_limits(const dk::container_spec& s,
                                           const dk::container_info& running) {
  auto cg = dk::read_cgroup(running.pid);
  if (!cg) return {};
  dk::requested_limits asked{s.memory_bytes, s.memory_reservation_bytes, s.cpu_shares, 0, 0};
  return dk::check_limits(asked, *cg);
}

std::vector<std::string> task_volumes(const state::task& task) {
  std::vector<std::string> volumes;
  const ecs::task_definition& td = *task.berth.task_definition;
  if (!td.volumes) return volumes;
  for (const auto& v : *td.volumes) {
    if (v.name && !(v.host && v.host->source_path)) volumes.push_back(*v.name);
  }
  return volumes;
}

bool remove_task_leftovers(dk::engine& d, const std::string& task_arn,
                           const std::map<std::string, std::string>& docker,
                           const std::vector<std::string>& volumes) {
  bool removed = true;
  for (const auto& [name, id] : docker) {
    auto r = d.remove_container(id, {true, true});
    if (!r && r.error().code != dk::errc::not_found) {
      spdlog::warn("task {}: cannot remove container {}: {}", task_arn, id, r.error().message);
      removed = false;
    }
  }
  const std::string prefix = "berth-" + name_of(task_arn).substr(0, 12) + "-";
  for (const auto& v : volumes) {
    auto r = d.remove_volume(prefix + v);
    if (!r && r.error().code != dk::errc::not_found) {
      spdlog::warn("task {}: cannot remove volume {}: {}", task_arn, prefix + v, r.error().message);
      removed = false;
    }
  }
  return removed;
}

result<void> check_unknown_containers(dk::engine& d, const config& c,
                                      const std::string& instance_arn, const std::string& state_dir,
                                      const std::function<bool(const std::string&)>& known) {
  dk::list_filter f;
  f.labels = {{label_cluster, c.cluster}};
  auto all = d.list_containers(f);
  if (!all) return tl::unexpected(error{"docker: listing containers: " + all.error().message});
  std::vector<dk::container_summary> unknown;
  for (const auto& ct : *all) {
    const auto label = [&](const char* k) {
      const auto it = ct.labels.find(k);
      return it == ct.labels.end() ? std::string() : it->second;
    };
    if (label(label_instance) != instance_arn && label(label_state_dir) != state_dir) continue;
    if (known(label(label_task))) continue;
    unknown.push_back(ct);
  }
  if (unknown.empty()) return {};
  std::string names;
  for (std::size_t i = 0; i < unknown.size(); ++i) {
    if (i == 8) {
      names += ", and " + std::to_string(unknown.size() - 8) + " more";
      break;
    }
    const auto task = unknown[i].labels.find(label_task);
    names += (i > 0 ? ", " : "") + unknown[i].name + " (" + unknown[i].state + ", task " +
             (task == unknown[i].labels.end() ? std::string("?") : task->second) + ")";
  }
  const std::string what = std::to_string(unknown.size()) +
                           " container(s) labelled for this instance are not in the store " +
                           state_dir + "/berth.db: " + names;
  if (c.unknown_containers == "remove") {
    for (const auto& ct : unknown) {
      if (auto r = d.remove_container(ct.id, {true, true}); !r) {
        return tl::unexpected(
            error{"removing unknown container " + ct.name + ": " + r.error().message});
      }
      spdlog::warn("removed unknown container {} ({}), as --unknown-containers=remove says",
                   ct.name, ct.id.substr(0, 12));
    }
    return {};
  }
  if (c.unknown_containers == "leave") {
    spdlog::warn("{}; left running, unmanaged, as --unknown-containers=leave says", what);
    return {};
  }
  return tl::unexpected(
      error{what +
            ". Refusing to start as if they did not exist. If the store was lost, restore it; "
            "otherwise start with --unknown-containers=remove to remove them, or "
            "--unknown-containers=leave to leave them running unmanaged."});
}

}  // namespace berth::agent::engine
