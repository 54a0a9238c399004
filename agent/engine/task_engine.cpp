// The task engine: see task_engine.hpp and task_engine_impl.hpp.
#include "berth/engine/task_engine.hpp"

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

result<void> task_engine_impl::start() {
  {
    std::lock_guard lock(mu_);
    for (const auto& [a, t] : tasks_) {
      if (!mine(t)) continue;
      for (const auto& [name, id] : t.berth.docker) container_to_task_[id] = a;
    }
  }
  // Containers no record knows are refused, removed or left, never passed over in silence.
  for (const std::string& instance_arn : instances_) {
    if (auto r = check_unknown_containers(*docker_, cfg_, instance_arn, state_dir_,
                                          [this](const std::string& task_arn) {
                                            std::lock_guard lock(mu_);
                                            return tasks_.contains(task_arn);
                                          });
        !r) {
      return r;
    }
  }
  // Subscribed before any recovered task is acted on: no die event falls between the two.
  dk::event_filter f;
  f.labels = {{label_cluster, cfg_.cluster}};
  f.actions = {"start", "die", "oom", "health_status"};
  dk::event_handlers h;
  h.on_event = [this](const dk::event& e) { on_docker_event(e); };
  h.on_resync = [this](const std::vector<dk::container_summary>&) { reconcile_all(); };
  h.on_disconnect = [](const dk::error& e) {
    spdlog::warn("docker event stream lost: {}", e.message);
  };
  auto sub = docker_->subscribe(f, std::move(h));
  if (!sub) return tl::unexpected(error{"docker events: " + sub.error().message});
  events_ = std::move(*sub);
  // From here on every write to a record drives it; the records already there are driven
  // now. Those RUNNING are checked against Docker (they may have exited while berthd was
  // down), which drive() alone would not do.
  std::vector<std::string> check;
  {
    std::lock_guard lock(mu_);
    watch_ = table_.watch([this](const task_table::change& c) {
      if (!c.erased) drive(c.task);
    });
    // Tasks the cluster stopped while this agent was gone (its instance was lost): their
    // containers, still running here, are killed.
    for (const auto& [a, t] : tasks_) {
      if (mine(t) && t.ecs.last_status == "STOPPED" && t.ecs.stop_code == "TerminationNotice") {
        reap(t);
      }
    }
    std::size_t resumed = 0;
    for (const auto& [a, t] : tasks_) {
      if (!mine(t)) continue;
      if (t.ecs.last_status == "RUNNING" && t.ecs.desired_status == "RUNNING") {
        check.push_back(a);
      } else if (t.ecs.last_status != "STOPPED") {
        drive(t);
        ++resumed;
      }
    }
    spdlog::info("recovered {} tasks ({} resumed, {} to check)", tasks_.size(), resumed,
                 check.size());
  }
  for (const auto& a : check) reconcile(a);
  housekeeping_ = std::thread([this] { housekeeping_loop(); });
  return {};
}

void task_engine_impl::shutdown() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    // No change reaches this engine once it is gone.
    if (watch_ != 0) table_.unwatch(watch_);
  }
  cv_.notify_all();
  if (housekeeping_.joinable()) housekeeping_.join();
  events_.reset();
  workers_.join_all();
}

bool task_engine_impl::mine(const task& t) const {
  return t.ecs.container_instance_arn && instances_.contains(*t.ecs.container_instance_arn);
}

void task_engine_impl::drive(const task& t) {
  if (stopping_ || !mine(t)) return;
  const std::string a = t.arn();
  if (t.ecs.last_status == "STOPPED") {
    // Stopped by someone else than this engine (a peer, after this instance was lost while
    // this agent was stopped or cut off): its containers must not run on.
    if (live_.erase(a) != 0) reap(t);
    return;
  }
  live_.insert(a);
  if (t.ecs.desired_status == "STOPPED") {
    if (!stops_.insert(a).second) return;
    // Not started (no thread to be had): unclaimed, so that the next change tries again.
    if (!spawn(a, [this, a, code = t.ecs.stop_code.value_or("UserInitiated"),
                   why = t.ecs.stopped_reason.value_or("Task stopped by user")] {
          stop_task_containers(a, code, why, true);
        })) {
      stops_.erase(a);
    }
    return;
  }
  const std::string last = t.ecs.last_status.value_or("");
  if ((last == "PROVISIONING" || last == "PENDING") && starts_.insert(a).second) {
    const bool made = spawn(a, [this, a] {
      const step_claim done{this, starts_, a};
      start_containers(a);
    });
    if (!made) starts_.erase(a);
  }
}

void task_engine_impl::reap(const task& t) {
  std::vector<std::string> ids;
  for (const auto& [name, id] : t.berth.docker) ids.push_back(id);
  if (ids.empty()) return;
  spdlog::warn("task {} was stopped by the cluster ({}): its containers are killed", t.arn(),
               t.ecs.stopped_reason.value_or(""));
  (void)spawn(t.arn(), [this, ids] {
    for (const auto& id : ids) (void)docker_->kill_container(id, "SIGKILL");
  });
}

bool task_engine_impl::spawn(const std::string& task_arn, std::function<void()> fn) {
  return workers_.spawn(task_arn, std::move(fn));
}

void task_engine_impl::finish(task& t, const std::string& code, const std::string& reason) {
  if (t.ecs.last_status == "STOPPED") return;
  live_.erase(t.arn());  // stopped by this engine: nothing to reap
  const double now = now_seconds();
  t.ecs.last_status = "STOPPED";
  t.ecs.desired_status = "STOPPED";
  if (!t.ecs.stop_code) t.ecs.stop_code = code;
  if (!t.ecs.stopped_reason) t.ecs.stopped_reason = reason;
  if (!t.ecs.stopping_at) t.ecs.stopping_at = now;
  t.ecs.stopped_at = now;
  t.ecs.execution_stopped_at = now;
  t.ecs.version = t.ecs.version.value_or(0) + 1;
  for (auto& c : t.containers()) {
    if (c.last_status != "STOPPED") c.last_status = "STOPPED";
  }
  save(t);
  spdlog::info("task {} STOPPED ({}: {})", t.arn(), code, reason);
}

void task_engine_impl::reconcile_all() {
  std::vector<std::string> active;
  {
    std::lock_guard lock(mu_);
    for (const auto& [a, t] : tasks_) {
      // Another instance's containers are on its host: not finding them here says nothing.
      if (mine(t) && t.ecs.last_status != "STOPPED" && !t.berth.docker.empty()) {
        active.push_back(a);
      }
    }
  }
  for (const auto& a : active) reconcile(a);
}

void task_engine_impl::reconcile(const std::string& task_arn, bool stopping) {
  std::map<std::string, std::string> docker;
  {
    std::lock_guard lock(mu_);
    const auto it = tasks_.find(task_arn);
    if (it == tasks_.end() || !mine(it->second)) return;
    docker = it->second.berth.docker;
  }
  for (const auto& [name, id] : docker) {
    auto info = docker_->inspect_container(id);
    if (stopping && info && info->status == "created") {
      forget_unstarted(task_arn, id);
      continue;
    }
    // Created and not yet started is alive: its launch worker is about to start it (a resync
    // racing a launch saw such containers as exited, and stopped their tasks).
    if (info && (info->running || info->status == "created" || info->status == "paused" ||
                 info->status == "restarting")) {
      continue;
    }
    // Only a container Docker says is gone or has exited is dead: a slow answer is not.
    if (!info && info.error().code != dk::errc::not_found) continue;
    report_exit(task_arn, name, id, info ? &*info : nullptr);
  }
}

void task_engine_impl::housekeeping_loop() {
  auto next_images = std::chrono::steady_clock::now() + cfg_.image_cleanup_interval;
  const auto tick = std::min<std::chrono::milliseconds>(
      std::chrono::seconds(10), std::min(cfg_.task_cleanup_wait, cfg_.image_cleanup_interval) / 2);
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, std::max<std::chrono::milliseconds>(tick, 100ms),
                   [&] { return stopping_; });
      if (stopping_) return;
    }
    try {
      clean_up_tasks();
      if (cfg_.image_cleanup && std::chrono::steady_clock::now() >= next_images) {
        images_.clean_up();
        next_images = std::chrono::steady_clock::now() + cfg_.image_cleanup_interval;
      }
    } catch (const std::exception& e) {
      spdlog::error("housekeeping failed: {}", e.what());
    }
  }
}

void task_engine_impl::clean_up_tasks() {
  const double now = now_seconds();
  const double wait = std::chrono::duration<double>(cfg_.task_cleanup_wait).count();
  struct due_task {
    std::string arn;
    std::map<std::string, std::string> docker;
    std::vector<std::string> volumes;
  };
  std::vector<due_task> due;
  {
    std::lock_guard lock(mu_);
    for (const auto& [a, t] : tasks_) {
      // Another instance's task is its own agent's to clean up: its containers are not here.
      if (!mine(t) || t.ecs.last_status != "STOPPED" || workers_.busy(a)) continue;
      if (t.ecs.stopped_at.value_or(now) + wait > now) continue;
      due.push_back({a, t.berth.docker, task_volumes(t)});
    }
  }
  for (const auto& [a, docker, volumes] : due) {
    if (!remove_task_leftovers(*docker_, a, docker, volumes)) continue;  // tried next time
    std::lock_guard lock(mu_);
    const auto it = tasks_.find(a);
    // Unchanged since it was chosen, and no worker of its own: only then forgotten.
    if (it == tasks_.end() || workers_.busy(a) || it->second.ecs.last_status != "STOPPED" ||
        it->second.berth.docker != docker) {
      continue;
    }
    if (!table_.erase(a)) continue;
    for (const auto& [name, id] : docker) container_to_task_.erase(id);
    metrics_.add("berth_tasks_cleaned_up_total", {});
    spdlog::info("task {} cleaned up: containers removed", a);
  }
}

std::set<std::string> task_engine_impl::images_in_use() {
  std::set<std::string> in_use;
  std::lock_guard lock(mu_);
  for (const auto& [a, t] : tasks_) {
    for (const auto& [name, id] : t.berth.images) in_use.insert(id);
  }
  return in_use;
}

std::unique_ptr<task_engine> make_task_engine(const config& c, std::string instance_arn,
                                              std::string state_dir, state::task_table& table,
                                              docker::engine& d, store& s, metrics& m) {
  return make_task_engine(c, std::vector<std::string>{std::move(instance_arn)},
                          std::move(state_dir), table, d, s, m);
}

std::unique_ptr<task_engine> make_task_engine(const config& c,
                                              std::vector<std::string> instance_arns,
                                              std::string state_dir, state::task_table& table,
                                              docker::engine& d, store& s, metrics& m) {
  return std::make_unique<task_engine_impl>(c, std::move(instance_arns), std::move(state_dir),
                                            table, d, s, m);
}

}  // namespace berth::agent::engine
