// The task engine: a task's containers stopped, and Docker's events and exits followed
// (task_engine_impl.hpp).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <list>

#include "berth/agent/util.hpp"
#include "container_spec.hpp"
#include "docker_steps.hpp"
#include "task_engine_impl.hpp"

namespace berth::agent::engine {

using namespace std::chrono_literals;

void task_engine_impl::stop_task_containers(const std::string& task_arn, const std::string& code,
                                            const std::string& why, bool claimed) {
  {
    std::lock_guard lock(mu_);
    if (!claimed && !stops_.insert(task_arn).second) return;
  }
  const step_claim done{this, stops_, task_arn};
  std::vector<std::pair<std::string, std::chrono::seconds>> ids;
  {
    std::lock_guard lock(mu_);
    task& t = tasks_.at(task_arn);
    if (t.ecs.last_status == "STOPPED") return;
    t.ecs.desired_status = "STOPPED";
    if (!t.ecs.stopping_at) t.ecs.stopping_at = now_seconds();
    if (!t.ecs.stop_code) t.ecs.stop_code = code;
    if (!t.ecs.stopped_reason) t.ecs.stopped_reason = why;
    save(t);
    const auto grace = std::chrono::duration_cast<std::chrono::seconds>(cfg_.stop_timeout);
    for (const auto& c : t.definitions()) {
      const auto id = t.berth.docker.find(c.name.value_or(""));
      if (id == t.berth.docker.end()) continue;
      ids.emplace_back(id->second, c.stop_timeout ? std::chrono::seconds(*c.stop_timeout) : grace);
    }
  }
  // SIGTERM, then SIGKILL after the grace period: waited for here (die events mark the
  // containers STOPPED), so that shutting berthd down interrupts the wait instead of sitting
  // in a blocking `docker stop`. A stop cut short resumes when berthd starts again.
  const auto all_stopped = [&] {
    for (const auto& c : tasks_.at(task_arn).containers()) {
      if (c.runtime_id && c.last_status != "STOPPED") return false;
    }
    return true;
  };
  // Containers that exited unseen (berthd was down) are marked so first; those that never
  // started go now.
  reconcile(task_arn, true);
  std::chrono::seconds grace{0};
  for (const auto& [id, g] : ids) {
    (void)docker_->kill_container(id, "SIGTERM");
    grace = std::max(grace, g);
  }
  {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, grace, [&] { return stopping_ || all_stopped(); });
    if (stopping_) return;
  }
  for (const auto& [id, g] : ids) (void)docker_->kill_container(id, "SIGKILL");
  {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(10), [&] { return stopping_ || all_stopped(); });
    if (stopping_) return;
    // Its containers have stopped (or Docker did not say so in time).
    task& t = tasks_.at(task_arn);
    if (t.ecs.last_status != "STOPPED") {
      t.ecs.last_status = "DEPROVISIONING";
      t.ecs.version = t.ecs.version.value_or(0) + 1;
      save(t);
      spdlog::info("task {} DEPROVISIONING", task_arn);
    }
  }
  // Exit codes, for the containers whose die event has not come yet.
  std::map<std::string, dk::container_info> infos;
  for (const auto& [id, grace] : ids) {
    if (auto i = docker_->inspect_container(id)) infos[id] = *i;
  }
  std::lock_guard lock(mu_);
  task& t = tasks_.at(task_arn);
  for (auto& c : t.containers()) {
    const std::string id = c.runtime_id.value_or("");
    if (!infos.contains(id) || infos[id].running) continue;
    if (!c.exit_code) c.exit_code = infos[id].exit_code;
    // Docker's oom event can be missed when the kill comes before it watches the cgroup;
    // its record of the kill is the other witness.
    if (infos[id].oom_killed && !c.reason) {
      c.reason = "OutOfMemoryError: Container killed due to memory usage";
      if (t.ecs.stop_code == "EssentialContainerExited") t.ecs.stopped_reason = c.reason;
    }
  }
  finish(t, t.ecs.stop_code.value_or(code), t.ecs.stopped_reason.value_or(why));
  cv_.notify_all();
}

void task_engine_impl::on_docker_event(const dk::event& e) {
  std::unique_lock lock(mu_);
  auto it = container_to_task_.find(e.id);
  if (it == container_to_task_.end()) {
    // A container of ours not yet recorded (its create raced the event): find it by label.
    const auto a = e.attributes.find(label_task);
    if (a == e.attributes.end()) return;
    const auto known = tasks_.find(a->second);
    if (known == tasks_.end() || !mine(known->second)) return;
    it = container_to_task_.emplace(e.id, a->second).first;
  }
  const std::string task_arn = it->second;
  const auto found = tasks_.find(task_arn);
  if (found == tasks_.end()) {  // cleaned up: the container is no longer ours to follow
    container_to_task_.erase(it);
    return;
  }
  task& t = found->second;
  const std::string cname =
      e.attributes.contains(label_container) ? e.attributes.at(label_container) : "";
  ecs::container* c = nullptr;
  for (auto& cc : t.containers()) {
    if (cc.name == cname) c = &cc;
  }
  if (c == nullptr) return;
  if (e.action == "oom") {
    c->reason = "OutOfMemoryError: Container killed due to memory usage";
    save(t);
  } else if (e.action.starts_with("health_status")) {
    const std::string h = e.action.find("unhealthy") != std::string::npos ? "UNHEALTHY"
                          : e.action.find("healthy") != std::string::npos ? "HEALTHY"
                                                                          : "UNKNOWN";
    c->health_status = h;
    // The task is as healthy as its essential containers with checks.
    std::string task_health = "UNKNOWN";
    for (const auto& def : t.definitions()) {
      if (!def.essential.value_or(true) || !def.health_check) continue;
      for (const auto& cc : t.containers()) {
        if (cc.name != def.name) continue;
        const std::string ch = cc.health_status.value_or("UNKNOWN");
        if (ch == "UNHEALTHY")
          task_health = "UNHEALTHY";
        else if (ch == "HEALTHY" && task_health == "UNKNOWN")
          task_health = "HEALTHY";
      }
    }
    t.ecs.health_status = task_health;
    save(t);
    cv_.notify_all();
  } else if (e.action == "die") {
    c->last_status = "STOPPED";
    const auto code = e.attributes.find("exitCode");
    if (code != e.attributes.end()) {
      try {
        c->exit_code = std::stoi(code->second);
      } catch (...) {
      }
    }
    save(t);
    cv_.notify_all();
    bool essential = true;
    for (const auto& def : t.definitions()) {
      if (def.name == cname) essential = def.essential.value_or(true);
    }
    bool all_stopped = true;
    for (const auto& cc : t.containers()) all_stopped &= cc.last_status == "STOPPED";
    if (t.ecs.last_status == "STOPPED") return;
    if (essential || all_stopped) {
      if (t.ecs.desired_status != "STOPPED") {
        const std::string why = c->reason && c->reason->starts_with("OutOfMemory")
                                    ? "OutOfMemoryError: Container killed due to memory usage"
                                    : "Essential container in task exited";
        t.ecs.stop_code = "EssentialContainerExited";
        t.ecs.stopped_reason = why;
        t.ecs.desired_status = "STOPPED";
        save(t);
        // Followed by drive(): the stop starts from the record, as any other.
      }
    }
  }
}

void task_engine_impl::report_exit(const std::string& task_arn, const std::string& name,
                                   const std::string& id, const dk::container_info* info) {
  dk::event e;
  e.id = id;
  e.action = "die";
  e.attributes[label_container] = name;
  e.attributes[label_task] = task_arn;
  if (info != nullptr) {
    e.attributes["exitCode"] = std::to_string(info->exit_code);
    if (info->oom_killed) {
      dk::event oom = e;
      oom.action = "oom";
      on_docker_event(oom);
    }
  }
  on_docker_event(e);
}

}  // namespace berth::agent::engine
