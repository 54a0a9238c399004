// The task engine: a task's containers made and started, in dependency order
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

dk::container_spec task_engine_impl::spec_of(const task& t, const ecs::container_definition& c,
                                             const ecs::task_definition& td,
                                             const std::string& ns_owner) const {
  return container_spec(
      t, c, td, ns_owner,
      {cfg_.cluster, t.ecs.container_instance_arn.value_or(""), state_dir_, cfg_.host_ip});
}

void task_engine_impl::start_containers(const std::string& task_arn) {
  try {
    launch_containers(task_arn);
  } catch (const std::exception& e) {
    spdlog::error("task {}: launch failed: {}", task_arn, e.what());
    fail_task(task_arn, "", "TaskFailedToStart", std::string("Internal error: ") + e.what());
  }
}

void task_engine_impl::launch_containers(const std::string& task_arn) {
  task t;
  {
    std::lock_guard lock(mu_);
    if (!tasks_.contains(task_arn)) return;
    t = tasks_.at(task_arn);
    if (t.ecs.desired_status == "STOPPED") return;
    // Placed PENDING, the task is written next when it is RUNNING (or within a second, or
    // when a container fails); a record placed PROVISIONING (by an older berthd) says at
    // once that this agent has it.
    const bool placed_pending = t.ecs.last_status == "PENDING";
    t.ecs.last_status = "PENDING";
    t.ecs.pull_started_at = now_seconds();
    save(t, placed_pending);
  }
  const ecs::task_definition& td = *t.berth.task_definition;
  std::string ns_owner;
  for (const ecs::container_definition* cp : start_order(t.definitions())) {
    const ecs::container_definition& c = *cp;
    const std::string name = c.name.value_or("");
    // dependsOn: wait for each condition, bounded by the container's startTimeout.
    if (auto ok = wait_dependencies(task_arn, c); !ok) {
      {
        // Shutting down: the launch resumes when berthd starts again.
        std::lock_guard lock(mu_);
        if (stopping_) return;
      }
      stop_task_containers(task_arn, "TaskFailedToStart",
                           *ok.error().message.c_str() ? ok.error().message : "dependency failed");
      return;
    }
    const dk::container_spec s = spec_of(t, c, td, ns_owner);
    std::string docker_id;
    {
      std::lock_guard lock(mu_);
      const task& now = tasks_.at(task_arn);
      if (const auto k = now.berth.docker.find(name); k != now.berth.docker.end()) {
        docker_id = k->second;
      }
      if (now.ecs.desired_status == "STOPPED") return;
    }
    const bool recorded = !docker_id.empty();
    if (!recorded) {
      auto id = make_container(*docker_, s, [this](std::chrono::milliseconds d) {
        std::unique_lock lock(mu_);
        return !cv_.wait_for(lock, d, [&] { return stopping_; });
      });
      if (!id) {
        {
          // Shutting down: the launch resumes when berthd starts again.
          std::lock_guard lock(mu_);
          if (stopping_) return;
        }
        const std::string why =
            (id.error().code == dk::errc::conflict ? "CannotCreateContainerError: "
                                                   : "CannotPullContainerError: ") +
            id.error().message;
        fail_task(task_arn, name, "TaskFailedToStart", why);
        return;
      }
      docker_id = *id;
      std::lock_guard lock(mu_);
      task& tt = tasks_.at(task_arn);
      tt.berth.docker[name] = docker_id;
      container_to_task_[docker_id] = task_arn;
      for (auto& cc : tt.containers()) {
        if (cc.name == name) cc.runtime_id = docker_id;
      }
      // A crash before it is written is safe: the container, named for the task, is taken
      // over at the next start (make_container), and not started twice (below).
      save(tt, true);
    }
    if (ns_owner.empty()) ns_owner = docker_id;  // the first in start order
    auto made = docker_->inspect_container(docker_id);
    if (made && !made->image_id.empty()) {
      // The image (by id) the task now uses: housekeeping keeps it while the task is known.
      images_.track(made->image_id, s.image);
      std::lock_guard lock(mu_);
      tasks_.at(task_arn).berth.images[name] = made->image_id;
    }
    if (made && made->status != "created") {
      // Made before a restart (recorded, or taken over by its name) and already past created:
      // never started twice. One that ran and exited is reported as its die event would have
      // been.
      // One running was started just before the crash: what its start would have recorded
      // (bindings, pid) may be missing, and is recorded now.
      if (!made->running) {
        report_exit(task_arn, name, docker_id, &*made);
      } else {
        std::lock_guard lock(mu_);
        task& tt = tasks_.at(task_arn);
        record_running(tt, name, *made);
        save(tt, true);
      }
      continue;
    }
    bool stopped = false;
    {
      std::lock_guard lock(mu_);
      stopped = tasks_.at(task_arn).ecs.desired_status == "STOPPED";
    }
    if (stopped) {
      // Stopped while the container was being made: it is not started, and goes.
      forget_unstarted(task_arn, docker_id);
      return;
    }
    if (auto st = docker_->start_container(docker_id); !st) {
      // It never ran: the task stops at once, with no grace and no die event to wait for.
      forget_unstarted(task_arn, docker_id);
      {
        // Stopped meanwhile (that stop may have removed it): the stop's reason stands.
        std::lock_guard lock(mu_);
        if (tasks_.at(task_arn).ecs.desired_status == "STOPPED") return;
      }
      fail_task(task_arn, name, "TaskFailedToStart",
                "CannotStartContainerError: " + st.error().message);
      return;
    }
    auto info = docker_->inspect_container(docker_id);
    std::lock_guard lock(mu_);
    task& tt = tasks_.at(task_arn);
    if (info) {
      record_running(tt, name, *info);
    } else {
      for (auto& cc : tt.containers()) {
        if (cc.name == name && cc.last_status != "STOPPED") cc.last_status = "RUNNING";
      }
    }
    // The kernel enforces what Docker was asked for, or the task says it does not.
    if (info && info->running) {
      for (const auto& d : unenforced_limits(s, *info)) {
        tt.berth.events.push_back({now_seconds(), "container " + name + ": cgroup " + d});
        spdlog::warn("task {} container {}: cgroup {}", task_arn, name, d);
      }
    }
    save(tt, true);  // the task's RUNNING, once every container is, writes it
  }
  std::lock_guard lock(mu_);
  task& tt = tasks_.at(task_arn);
  if (tt.ecs.last_status == "PENDING" && tt.ecs.desired_status == "RUNNING") {
    const double now = now_seconds();
    tt.ecs.last_status = "RUNNING";
    tt.ecs.started_at = now;
    tt.ecs.pull_stopped_at = now;
    tt.ecs.connectivity = "CONNECTED";
    tt.ecs.connectivity_at = now;
    tt.ecs.version = tt.ecs.version.value_or(0) + 1;
    save(tt);
    spdlog::info("task {} RUNNING", task_arn);
  }
}

void task_engine_impl::record_running(task& t, const std::string& name,
                                      const dk::container_info& info) {
  for (auto& cc : t.containers()) {
    if (cc.name != name) continue;
    if (cc.last_status != "STOPPED") cc.last_status = "RUNNING";
    cc.network_bindings.emplace();
    for (const auto& p : info.ports) {
      cc.network_bindings->push_back({cfg_.instance_address,
                                      static_cast<std::int32_t>(p.container_port),
                                      static_cast<std::int32_t>(p.host_port), p.protocol});
    }
  }
  if (info.running) t.berth.pids[name] = info.pid;
}

tl::expected<void, error> task_engine_impl::wait_dependencies(const std::string& task_arn,
                                                              const ecs::container_definition& c) {
  for (const auto& d : c.depends_on.value_or(std::vector<ecs::container_dependency>{})) {
    const std::string& other = d.container_name;
    const std::string& cond = d.condition;
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(c.start_timeout.value_or(300));
    std::unique_lock lock(mu_);
    const bool met = cv_.wait_until(lock, deadline, [&] {
      task& t = tasks_.at(task_arn);
      if (stopping_ || t.ecs.desired_status == "STOPPED") return true;
      for (const auto& cc : t.containers()) {
        if (cc.name != other) continue;
        const std::string st = cc.last_status.value_or("");
        if (cond == "START") return st == "RUNNING" || st == "STOPPED";
        if (cond == "COMPLETE") return st == "STOPPED";
        if (cond == "SUCCESS") return st == "STOPPED" && cc.exit_code.value_or(-1) == 0;
        if (cond == "HEALTHY") return cc.health_status == "HEALTHY";
      }
      return false;
    });
    if (stopping_) return tl::unexpected(error{"berthd is shutting down"});
    if (!met) {
      return tl::unexpected(error{"dependency " + other + " did not reach " + cond + " in time"});
    }
    if (cond == "SUCCESS") {
      for (const auto& cc : tasks_.at(task_arn).containers()) {
        if (cc.name == other && cc.exit_code.value_or(-1) != 0) {
          return tl::unexpected(error{"dependency " + other + " exited with " +
                                      std::to_string(cc.exit_code.value_or(-1))});
        }
      }
    }
  }
  return {};
}

void task_engine_impl::fail_task(const std::string& task_arn, const std::string& container,
                                 const std::string& code, const std::string& why) {
  {
    std::lock_guard lock(mu_);
    task& t = tasks_.at(task_arn);
    for (auto& c : t.containers()) {
      if (c.name == container) c.reason = why;
    }
    t.ecs.stop_code = code;
    t.ecs.stopped_reason = why;
    save(t);
  }
  stop_task_containers(task_arn, code, why);
}

void task_engine_impl::forget_unstarted(const std::string& task_arn, const std::string& docker_id) {
  if (auto r = docker_->remove_container(docker_id, {true, false});
      !r && r.error().code != dk::errc::not_found) {
    spdlog::warn("task {}: cannot remove container {}, never started: {}", task_arn, docker_id,
                 r.error().message);
  }
  std::lock_guard lock(mu_);
  const auto it = tasks_.find(task_arn);
  if (it == tasks_.end()) return;
  for (auto& c : it->second.containers()) {
    if (c.runtime_id == docker_id) c.last_status = "STOPPED";
  }
  save(it->second);
  cv_.notify_all();
}

}  // namespace berth::agent::engine
