// The task engine: see task_engine.hpp. One state machine per task, driven from its record:
// drive() compares desired and known status and starts a launch or a stop worker; the workers'
// steps are idempotent and write what they observe back through the table.
#include "berth/engine/task_engine.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <list>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_set>
#include <vector>

#include "berth/agent/util.hpp"
#include "container_spec.hpp"
#include "docker_steps.hpp"
#include "image_cleanup.hpp"
#include "workers.hpp"

namespace berth::agent::engine {

namespace {

namespace dk = berth::docker;
using namespace std::chrono_literals;
using state::task;
using state::task_table;

class task_engine_impl final : public task_engine {
 public:
  task_engine_impl(const config& c, std::vector<std::string> instance_arns, std::string state_dir,
                   task_table& table, dk::engine& d, store& s, metrics& m)
      : cfg_(c),
        instances_(instance_arns.begin(), instance_arns.end()),
        state_dir_(std::move(state_dir)),
        table_(table),
        docker_(&d),
        store_(&s),
        metrics_(m) {}

  ~task_engine_impl() override { shutdown(); }

  result<void> start() override {
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

  void shutdown() override {
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

 private:
  bool mine(const task& t) const {
    return t.ecs.container_instance_arn && instances_.contains(*t.ecs.container_instance_arn);
  }

  // The task's state machine, run on every change of its record (under mu_): desired RUNNING
  // and not yet running starts (or resumes) its launch; desired STOPPED and not yet STOPPED
  // starts its stop. At most one launch and one stop per task at a time.
  void drive(const task& t) {
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
        struct unclaim {
          task_engine_impl* e;
          const std::string& arn;
          ~unclaim() {
            std::lock_guard lock(e->mu_);
            e->starts_.erase(arn);
          }
        } done{this, a};
        start_containers(a);
      });
      if (!made) starts_.erase(a);
    }
  }

  void save(const task& t) { table_.save(t); }

  // Kills the containers of a task that is STOPPED already (under mu_).
  void reap(const task& t) {
    std::vector<std::string> ids;
    for (const auto& [name, id] : t.berth.docker) ids.push_back(id);
    if (ids.empty()) return;
    spdlog::warn("task {} was stopped by the cluster ({}): its containers are killed", t.arn(),
                 t.ecs.stopped_reason.value_or(""));
    (void)spawn(t.arn(), [this, ids] {
      for (const auto& id : ids) (void)docker_->kill_container(id, "SIGKILL");
    });
  }

  // A worker for the task (under mu_); false when no thread could be had.
  bool spawn(const std::string& task_arn, std::function<void()> fn) {
    return workers_.spawn(task_arn, std::move(fn));
  }

  // ---- tasks: starting ----

  dk::container_spec spec_of(const task& t, const ecs::container_definition& c,
                             const ecs::task_definition& td, const std::string& ns_owner) const {
    return container_spec(
        t, c, td, ns_owner,
        {cfg_.cluster, t.ecs.container_instance_arn.value_or(""), state_dir_, cfg_.host_ip});
  }

  // Marks the task STOPPED (under mu_); control, watching, gives its resources back.
  void finish(task& t, const std::string& code, const std::string& reason) {
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

  // A failure anywhere in a launch stops the task and gives its resources back.
  void start_containers(const std::string& task_arn) {
    try {
      launch_containers(task_arn);
    } catch (const std::exception& e) {
      spdlog::error("task {}: launch failed: {}", task_arn, e.what());
      fail_task(task_arn, "", "TaskFailedToStart", std::string("Internal error: ") + e.what());
    }
  }

  void launch_containers(const std::string& task_arn) {
    task t;
    {
      std::lock_guard lock(mu_);
      if (!tasks_.contains(task_arn)) return;
      t = tasks_.at(task_arn);
      if (t.ecs.desired_status == "STOPPED") return;
      t.ecs.last_status = "PENDING";
      t.ecs.pull_started_at = now_seconds();
      save(t);
    }
    const ecs::task_definition& td = t.berth.task_definition;
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
        stop_task_containers(
            task_arn, "TaskFailedToStart",
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
        save(tt);
      }
      if (ns_owner.empty()) ns_owner = docker_id;  // the first in start order
      auto made = docker_->inspect_container(docker_id);
      if (made && !made->image_id.empty()) {
        // The image (by id) the task now uses: housekeeping keeps it while the task is known.
        images_.track(made->image_id, s.image);
        std::lock_guard lock(mu_);
        tasks_.at(task_arn).berth.images[name] = made->image_id;
      }
      if (recorded && made && made->status != "created") {
        // Recorded before a restart and already past created: never started twice. One that
        // ran and exited is reported as its die event would have been.
        // One running was started just before the crash: what its start would have recorded
        // (bindings, pid) may be missing, and is recorded now.
        if (!made->running) {
          report_exit(task_arn, name, docker_id, &*made);
        } else {
          std::lock_guard lock(mu_);
          task& tt = tasks_.at(task_arn);
          record_running(tt, name, *made);
          save(tt);
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
      save(tt);
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

  // A started container as the task shows it: RUNNING, its host ports, its pid (for usage).
  // Under mu_.
  void record_running(task& t, const std::string& name, const dk::container_info& info) {
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

  tl::expected<void, error> wait_dependencies(const std::string& task_arn,
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

  void fail_task(const std::string& task_arn, const std::string& container, const std::string& code,
                 const std::string& why) {
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

  // A container that never ran (created; its start failed or never came) gets no grace and
  // sends no die event: it is removed now, and is STOPPED for its task. One already gone is fine.
  void forget_unstarted(const std::string& task_arn, const std::string& docker_id) {
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

  // Stops every container of the task (grace: each container's stopTimeout), then STOPPED.
  // As ECS reports it: the task stays as it was (RUNNING, desired STOPPED) while its containers
  // stop, then is DEPROVISIONING, then STOPPED.
  // `claimed`: drive() has put the task in stops_ for this call. Otherwise the call claims it,
  // and returns at once when another stop of the task is under way.
  void stop_task_containers(const std::string& task_arn, const std::string& code,
                            const std::string& why, bool claimed = false) {
    {
      std::lock_guard lock(mu_);
      if (!claimed && !stops_.insert(task_arn).second) return;
    }
    struct unclaim {
      task_engine_impl* e;
      const std::string& arn;
      ~unclaim() {
        std::lock_guard lock(e->mu_);
        e->stops_.erase(arn);
      }
    } done{this, task_arn};
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
        ids.emplace_back(id->second,
                         c.stop_timeout ? std::chrono::seconds(*c.stop_timeout) : grace);
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

  // ---- tasks: Docker's events ----

  void on_docker_event(const dk::event& e) {
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

  // A container that exited (or vanished: no info) while no event said so, reported as its
  // oom and die events would have been.
  void report_exit(const std::string& task_arn, const std::string& name, const std::string& id,
                   const dk::container_info* info) {
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

  // After Docker's event stream (re)connects: what was missed is read from Docker itself.
  void reconcile_all() {
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

  // With `stopping`, a container created and never started goes (forget_unstarted): its task
  // is stopping, so no launch will start it.
  void reconcile(const std::string& task_arn, bool stopping = false) {
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

  // ---- housekeeping ----

  void housekeeping_loop() {
    auto next_images = std::chrono::steady_clock::now() + cfg_.image_cleanup_interval;
    const auto tick = std::min<std::chrono::milliseconds>(
        std::chrono::seconds(10),
        std::min(cfg_.task_cleanup_wait, cfg_.image_cleanup_interval) / 2);
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

  // Stopped tasks past the cleanup wait: containers removed, then the record.
  void clean_up_tasks() {
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

  // The image ids the tasks known use (a stopped task keeps its containers until cleaned up).
  std::set<std::string> images_in_use() {
    std::set<std::string> in_use;
    std::lock_guard lock(mu_);
    for (const auto& [a, t] : tasks_) {
      for (const auto& [name, id] : t.berth.images) in_use.insert(id);
    }
    return in_use;
  }

  config cfg_;
  std::unordered_set<std::string> instances_;  // the instances whose tasks this engine runs
  std::string state_dir_;
  task_table& table_;
  dk::engine* docker_;
  store* store_;
  metrics& metrics_;
  // The table's lock and records: the engine's own state below is under the same lock.
  std::mutex& mu_ = table_.mutex();
  std::condition_variable& cv_ = table_.changed();
  state::task_table::row_map& tasks_ = table_.rows();
  bool stopping_ = false;
  std::map<std::string, std::string> container_to_task_;
  task_workers workers_;
  std::set<std::string> starts_, stops_;  // tasks with a launch / a stop under way
  std::set<std::string> live_;            // this instance's tasks seen not STOPPED
  std::uint64_t watch_ = 0;               // the table watch that drives the tasks
  std::unique_ptr<dk::subscription> events_;
  std::thread housekeeping_;
  image_cleanup images_{cfg_, *docker_, *store_, metrics_, [this] { return images_in_use(); }};
};

}  // namespace

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
