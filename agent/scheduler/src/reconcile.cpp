// One pass over one service, in the order the decisions depend on each other: drains that are
// over, registration (which tells who is UP), health, the circuit breaker, then the primary's
// starts and stops within maximumPercent, then the stops of old deployments' tasks and of tasks on
// DRAINING instances within minimumHealthyPercent, and last the record (counts, rollout, steady
// state).
#include "berth/scheduler/reconcile.hpp"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>
#include <set>

namespace berth::scheduler {

namespace {

// "arn:aws:ecs:…:task-definition/web:3" → "web:3"; anything else as it is.
std::string name_of(const std::string& s) {
  if (!s.starts_with("arn:")) return s;
  const auto slash = s.rfind('/');
  return slash == std::string::npos ? s : s.substr(slash + 1);
}

bool running(const task& t) { return t.last_status == "RUNNING" && t.desired_status == "RUNNING"; }

// The stoppedReason of a service task moved off a DRAINING instance.
const std::string draining_reason = "Container instance is being drained";

// Every container with a health check says HEALTHY.
bool checks_pass(const task& t) {
  return std::all_of(t.containers.begin(), t.containers.end(), [](const container& c) {
    return !c.has_health_check || c.health_status == health::healthy;
  });
}

// Where the load balancer sends a task's traffic: the host side of containerName:containerPort.
std::optional<std::string> target_of(const task& t, const load_balancer& lb) {
  for (const auto& c : t.containers) {
    if (c.name != lb.container_name) continue;
    for (const auto& b : c.bindings) {
      if (b.container_port == lb.container_port && b.host_port != 0) {
        return b.bind_ip + ":" + std::to_string(b.host_port);
      }
    }
  }
  return std::nullopt;
}

// The pass's working state: what it has decided so far shapes what it decides next (a task it
// drains is gone for the counts that follow; a target it adds is one a stop must drain).
class pass {
 public:
  explicit pass(const snapshot& s) : s_(s), svc_(s.service) {
    for (const auto& d : s.drains) draining_.insert(d.task_arn);
    for (const auto& b : s.backends) {
      if (!b.readable) continue;
      for (const auto& t : b.targets) servers_[b.name][t.name] = t;
    }
  }

  plan run() {
    read_backends();
    finish_drains();
    register_targets();
    replace_unhealthy();
    if (deploy()) return std::move(p_);
    record();
    return std::move(p_);
  }

 private:
  bool gone(const task& t) const {
    return draining_.contains(t.arn) || stopped_now_.contains(t.arn);
  }

  // On a DRAINING instance: replaced elsewhere, then stopped, as an old deployment's task is.
  bool moving(const task& t) const {
    return s_.draining_instances.contains(t.container_instance_arn);
  }

  // A task is healthy when RUNNING, its health checks (if any) say so, and every load balancer
  // has it UP.
  bool healthy(const task& t) const {
    if (!running(t) || gone(t)) return false;
    if (t.health_status == health::unhealthy || !checks_pass(t)) return false;
    if (balanced_) return lb_ok_ && lb_up_.contains(t.arn) && lb_up_.at(t.arn);
    return true;
  }

  // Throttled events are said once per warn_interval.
  void warn(std::string message) {
    if (const auto it = s_.said.find(message);
        it != s_.said.end() && s_.now - it->second < warn_interval) {
      return;
    }
    p_.events.push_back({std::move(message), true});
  }

  void read_backends() {
    balanced_ = !svc_.load_balancers.empty() && s_.has_load_balancer;
    if (!s_.has_load_balancer) return;
    for (const auto& b : s_.backends) {
      if (b.readable) continue;
      lb_ok_ = false;
      warn("is unable to register targets with (load balancer " + b.name + "): " + b.error);
    }
  }

  // Draining tasks stop once their sessions are gone or the delay has passed.
  void finish_drains() {
    for (const auto& d : s_.drains) {
      const auto t = std::find_if(s_.tasks.begin(), s_.tasks.end(),
                                  [&](const task& v) { return v.arn == d.task_arn; });
      const std::string name = server_name(d.task_arn);
      if (t == s_.tasks.end()) {
        // Stopped some other way meanwhile: its target goes, the drain is over.
        if (s_.has_load_balancer) {
          for (const auto& lb : svc_.load_balancers) {
            p_.targets.push_back({target_op::remove, lb.name, name, {}, false});
          }
        }
        end_drain(d.task_arn);
        continue;
      }
      long sessions = 0;
      for (const auto& [backend, names] : servers_) {
        if (const auto sv = names.find(name); sv != names.end()) sessions += sv->second.sessions;
      }
      const bool expired = s_.now - d.since >= svc_.deregistration_delay;
      if (sessions > 0 && !expired) continue;
      if (s_.has_load_balancer) {
        for (const auto& lb : svc_.load_balancers) {
          if (expired)
            p_.targets.push_back({target_op::shutdown_sessions, lb.name, name, {}, false});
          p_.targets.push_back({target_op::remove, lb.name, name, {}, true});
          servers_[lb.name].erase(name);
        }
      }
      end_drain(d.task_arn);
      stop(d.task_arn, d.reason);
    }
  }

  void end_drain(const std::string& arn) {
    draining_.erase(arn);
    p_.drains_ended.push_back(arn);
  }

  // Under scale-in protection: kept by a scale-in and by a deployment.
  bool shielded(const task& t) const { return !svc_.deleting && t.protected_until > s_.now; }
  // A scale-in or deployment that protected tasks held back, in ECS's words (once a while).
  void held_back(std::int64_t n) {
    if (n > 0) {
      warn("was unable to scale in due to (reason " + std::to_string(n) +
           " tasks under protection).");
    }
  }

  void stop(const std::string& arn, const std::string& reason) {
    p_.stops.push_back({arn, reason});
    stopped_now_.insert(arn);
  }

  // Each running (and, with a health check, healthy) task in every backend; targets of tasks
  // gone, out.
  void register_targets() {
    if (!balanced_ || !lb_ok_) return;
    std::set<std::string> wanted;
    for (const auto& t : s_.tasks) {
      if (!running(t) || gone(t)) continue;
      if (t.health_status == health::unhealthy || !checks_pass(t)) continue;
      const std::string name = server_name(t.arn);
      wanted.insert(name);
      bool up = true;
      for (const auto& lb : svc_.load_balancers) {
        auto& names = servers_[lb.name];
        const auto sv = names.find(name);
        if (sv == names.end()) {
          up = false;  // its first check is still to come
          const auto address = target_of(t, lb);
          if (!address) continue;
          p_.targets.push_back({target_op::add, lb.name, name, *address, true});
          names[name] = target{name, *address, target_state::other, false, 0};
        } else if (sv->second.state == target_state::drain) {
          // Draining when berthd went down: the drain goes on.
          if (!draining_.contains(t.arn)) {
            p_.drains.push_back({t.arn, "Scaling activity (a drain resumed after a restart)", {}});
            draining_.insert(t.arn);
          }
          up = false;
        } else if (sv->second.state == target_state::maint) {
          // Added but never put in service: out, and added again next pass.
          p_.targets.push_back({target_op::remove, lb.name, name, {}, false});
          names.erase(sv);
          up = false;
        } else {
          // UP once checks have passed (a target is added DOWN).
          up &= sv->second.state == target_state::up;
        }
      }
      lb_up_[t.arn] = up;
    }
    std::set<std::string> drained;
    for (const auto& arn : draining_) drained.insert(server_name(arn));
    for (auto& [backend, names] : servers_) {
      for (auto it = names.begin(); it != names.end();) {
        const std::string& name = it->first;
        if (!name.starts_with("berth-") || wanted.contains(name) || drained.contains(name)) {
          ++it;
          continue;
        }
        p_.targets.push_back({target_op::remove, backend, name, {}, true});
        it = names.erase(it);
      }
    }
  }

  // Stops a task: drained from its load balancers first when it is registered.
  void retire(const task& t, const std::string& reason) {
    if (gone(t)) return;
    drain_start d{t.arn, reason, {}};
    if (s_.has_load_balancer) {
      for (const auto& lb : svc_.load_balancers) {
        const auto names = servers_.find(lb.name);
        if (names != servers_.end() && names->second.contains(server_name(t.arn))) {
          d.backends.push_back(lb.name);
        }
      }
    }
    if (d.backends.empty()) {
      stop(t.arn, reason);
      return;
    }
    p_.drains.push_back(std::move(d));
    draining_.insert(t.arn);
  }

  // Unhealthy tasks are replaced: those a container health check failed at once, those a
  // load balancer check failed once past the grace period.
  void replace_unhealthy() {
    for (const auto& t : s_.tasks) {
      if (gone(t) || !running(t)) continue;
      if (t.health_status == health::unhealthy) {
        retire(t, "Task failed container health checks");
        continue;
      }
      if (!balanced_ || !lb_ok_ || s_.now - t.started_at <= svc_.health_check_grace_period) {
        continue;
      }
      for (const auto& lb : svc_.load_balancers) {
        const auto& names = servers_[lb.name];
        const auto sv = names.find(server_name(t.arn));
        if (sv != names.end() && sv->second.check_failed) {
          retire(t, "Task failed ELB health checks in (load balancer " + lb.name + ")");
          break;
        }
      }
    }
  }

  deployment* primary() {
    for (auto& d : deps_) {
      if (d.status == deployment_status::primary) return &d;
    }
    return nullptr;
  }

  // The new deployment becomes PRIMARY; the one before is ACTIVE until its tasks are gone.
  void start_deployment(const std::string& td) {
    for (auto& d : deps_) {
      if (d.status == deployment_status::primary) d.status = deployment_status::active;
    }
    deps_.insert(deps_.begin(),
                 new_deployment(s_.next_deployment_id, td, svc_.desired_count, s_.now));
    p_.task_definition = td;
    p_.events.push_back({started_message(deps_.front())});
  }

  // Starts and stops for the deployments. True when a rollback began: the next pass works on
  // the new primary.
  bool deploy() {
    if (svc_.daemon) return deploy_daemon();
    if (svc_.external) return deploy_task_sets();
    deps_ = s_.deployments;
    const std::int64_t desired = svc_.desired_count;
    const std::int64_t most = desired * svc_.maximum_percent / 100;
    const auto fewest = static_cast<std::int64_t>(std::ceil(
        static_cast<double>(desired) * static_cast<double>(svc_.minimum_healthy_percent) / 100.0));
    std::int64_t total = 0, healthy_total = 0;
    for (const auto& t : s_.tasks) {
      if (t.desired_status != "RUNNING") continue;
      ++total;  // draining ones too: they still hold their place
      if (gone(t)) continue;
      by_dep_[t.deployment_id].push_back(&t);
      if (healthy(t)) ++healthy_total;
    }
    counts();

    deployment* prim = primary();
    if (prim != nullptr && prim->rollout == rollout_state::in_progress && !svc_.deleting) {
      if (breaker(*prim, desired)) return true;
    }
    const bool tripped = prim != nullptr && prim->rollout == rollout_state::failed;

    if (prim != nullptr && !tripped && !svc_.deleting) {
      const std::int64_t want = desired - staying(*prim);
      const std::int64_t room = std::max<std::int64_t>(most, desired > 0 ? 1 : 0) - total;
      const std::int64_t n = std::min<std::int64_t>({want, room, start_batch});
      if (n > 0) start(*prim, n);
      if (want < 0 && lb_ok_) scale_down(*prim, -want, healthy_total);
    }

    // Old deployments, tasks of no deployment still known and tasks on DRAINING instances:
    // stopped while minimumHealthyPercent holds, unhealthy (or PENDING) ones at once. Deleting:
    // everything. Not while the load balancer cannot say who is healthy, nor when a tripped
    // deployment halts the rollout.
    const bool hold = !svc_.deleting && (!lb_ok_ || tripped);
    if (hold) return false;
    std::int64_t spare = healthy_total - fewest;
    const std::string reason = svc_.deleting
                                   ? "Service is being deleted"
                                   : "Scaling activity initiated by (deployment " +
                                         (prim != nullptr ? prim->id : std::string()) + ")";
    std::int64_t kept = 0;
    for (const auto& [id, list] : by_dep_) {
      const bool current = prim != nullptr && id == prim->id && !svc_.deleting;
      for (const task* t : list) {
        if (gone(*t) || (current && !moving(*t))) continue;
        if (shielded(*t) && !moving(*t)) {
          ++kept;
          continue;
        }
        const bool counts = healthy(*t);
        if (counts && spare <= 0 && !svc_.deleting) continue;
        if (counts) --spare;
        retire(*t, moving(*t) && !svc_.deleting ? draining_reason : reason);
      }
    }
    held_back(kept);
    return false;
  }

  // The primary's tasks that stay where they are (not on a DRAINING instance).
  std::int64_t staying(const deployment& prim) {
    const auto& mine = by_dep_[prim.id];
    return std::count_if(mine.begin(), mine.end(), [&](const task* t) { return !moving(*t); });
  }

  // The circuit breaker: tasks of the primary deployment that failed. True when it rolled back.
  bool breaker(deployment& prim, std::int64_t desired) {
    std::int64_t failed = 0;
    for (const auto& t : s_.stopped_tasks) {
      if (t.deployment_id != prim.id) continue;
      if (t.stop_code != "UserInitiated" ||
          t.stopped_reason.find("health checks") != std::string::npos) {
        ++failed;
      }
    }
    prim.failed_tasks = failed;
    const std::int64_t threshold =
        std::max<std::int64_t>(3, std::min<std::int64_t>(200, (desired + 1) / 2));
    if (!svc_.circuit_breaker || failed < threshold) return false;
    prim.rollout = rollout_state::failed;
    prim.rollout_reason = "ECS deployment circuit breaker: tasks failed to start.";
    p_.transitions.push_back({prim.id, rollout_state::failed, prim.rollout_reason});
    p_.events.push_back({"deployment " + prim.id + " deployment failed: tasks failed to start."});
    if (!svc_.rollback || !svc_.last_good || *svc_.last_good == prim.task_definition) {
      return false;
    }
    const std::string to = *svc_.last_good;
    start_deployment(to);
    p_.events.push_back({"is rolling back to " + name_of(to) + "."});
    p_.deployments = deps_;
    p_.steady = false;
    p_.busy = true;
    return true;
  }

  // EXTERNAL: each task set at its own count (started, or scaled in as a replica service is),
  // a deleted one's tasks and those of no task set stopped. Deleting: everything.
  bool deploy_task_sets() {
    deps_ = s_.deployments;
    std::int64_t healthy_total = 0;
    for (const auto& t : s_.tasks) {
      if (t.desired_status != "RUNNING" || gone(t)) continue;
      by_dep_[t.deployment_id].push_back(&t);
      if (healthy(t)) ++healthy_total;
    }
    counts();
    std::set<std::string> known;
    for (const auto& d : deps_) {
      known.insert(d.id);
      const bool stopping = svc_.deleting || d.status == deployment_status::inactive;
      const std::int64_t want =
          (stopping ? 0 : d.desired_count) - static_cast<std::int64_t>(by_dep_[d.id].size());
      if (want > 0) start(d, std::min<std::int64_t>(want, start_batch));
      if (want < 0 && lb_ok_) scale_down(d, -want, healthy_total);
    }
    for (const auto& [id, list] : by_dep_) {
      if (known.contains(id)) continue;
      for (const task* t : list) {
        retire(*t, svc_.deleting ? "Service is being deleted" : "Its task set was deleted");
      }
    }
    return false;
  }

  // Start what the primary lacks, unless RunTask could not place its tasks a moment ago.
  // DAEMON: one task of the primary on each of the daemon's instances, none elsewhere (a
  // DRAINING instance's goes at once, as do a second one's). An old deployment's task on an
  // instance goes once the primary's there is healthy; or first, within minimumHealthyPercent,
  // when maximumPercent leaves no room for both (100, the default: the same ports, say).
  bool deploy_daemon() {
    deps_ = s_.deployments;
    const std::int64_t desired = svc_.desired_count;
    const bool room_for_two = svc_.maximum_percent > 100;
    // Without room for two on an instance, one instance's task at least is replaced at a time
    // (else a minimumHealthyPercent above 0 could hold the old tasks forever: 75 of 1 or 3).
    const auto fewest = std::min<std::int64_t>(
        static_cast<std::int64_t>(std::ceil(static_cast<double>(desired) *
                                            static_cast<double>(svc_.minimum_healthy_percent) /
                                            100.0)),
        room_for_two ? desired : desired - 1);
    std::map<std::string, std::vector<const task*>> on;  // by instance, draining ones too
    std::int64_t healthy_total = 0;
    for (const auto& t : s_.tasks) {
      if (t.desired_status != "RUNNING") continue;
      on[t.container_instance_arn].push_back(&t);
      if (gone(t)) continue;
      by_dep_[t.deployment_id].push_back(&t);
      if (healthy(t)) ++healthy_total;
    }
    counts();
    p_.desired_count = desired;
    deployment* prim = primary();
    if (prim != nullptr && prim->rollout == rollout_state::in_progress && !svc_.deleting) {
      if (breaker(*prim, desired)) return true;
    }
    const bool tripped = prim != nullptr && prim->rollout == rollout_state::failed;
    std::int64_t spare = healthy_total - fewest;
    const std::string scaling = "Scaling activity initiated by (deployment " +
                                (prim != nullptr ? prim->id : std::string()) + ")";
    const auto of_primary = [&](const task* t) {
      return prim != nullptr && t->deployment_id == prim->id;
    };
    std::vector<std::string> wanting;  // instances to start one on
    for (const auto& [instance, list] : on) {
      if (svc_.deleting || !s_.daemon_instances.contains(instance)) {
        const std::string& why = svc_.deleting           ? std::string("Service is being deleted")
                                 : moving(*list.front()) ? draining_reason
                                                         : scaling;
        for (const task* t : list) retire(*t, why);
        continue;
      }
      // The primary's task that stays here: a running one before a pending one.
      const task* keep = nullptr;
      for (const task* t : list) {
        if (!gone(*t) && of_primary(t) && (keep == nullptr || (running(*t) && !running(*keep)))) {
          keep = t;
        }
      }
      for (const task* t : list) {
        if (t == keep || gone(*t)) continue;
        if (of_primary(t)) {
          retire(*t, scaling);  // a second one
          continue;
        }
        if (tripped) continue;
        if (keep != nullptr ? !healthy(*keep) : room_for_two) continue;
        const bool counts = healthy(*t);
        if (keep == nullptr && counts && spare <= 0) continue;
        if (keep == nullptr && counts) --spare;
        retire(*t, scaling);
      }
      // Started here once nothing else holds the place (or there is room for two).
      const bool others =
          std::any_of(list.begin(), list.end(), [&](const task* t) { return !of_primary(t); });
      if (keep == nullptr && (room_for_two || !others)) wanting.push_back(instance);
    }
    for (const auto& instance : s_.daemon_instances) {
      if (!on.contains(instance)) wanting.push_back(instance);
    }
    if (prim != nullptr && !tripped && !svc_.deleting && !wanting.empty()) {
      std::sort(wanting.begin(), wanting.end());
      if (wanting.size() > static_cast<std::size_t>(start_batch)) wanting.resize(start_batch);
      const auto n = static_cast<std::int64_t>(wanting.size());
      start(*prim, n, std::move(wanting));
    }
    return false;
  }

  void start(const deployment& prim, std::int64_t n, std::vector<std::string> instances = {}) {
    const auto& f = s_.last_placement_failure;
    if (f && f->deployment_id == prim.id) {
      warn(
          "was unable to place a task because no container instance met all of its "
          "requirements. Reasons:" +
          f->reasons + ".");
      if (s_.now - f->at < placement_retry) return;
    }
    p_.starts.push_back({prim.id, prim.task_definition, n, std::move(instances)});
  }

  // Too many: pending ones first, then unhealthy ones, then, as ECS does, those whose loss keeps
  // the service balanced: from the instance holding most of its tasks, the newest there. Not
  // those on DRAINING instances: they go with the old deployments', within
  // minimumHealthyPercent. Not those under scale-in protection: the service stays above its
  // desired count until their protection ends.
  void scale_down(const deployment& prim, std::int64_t n, std::int64_t& healthy_total) {
    std::vector<const task*> extra;
    std::int64_t kept = 0;
    for (const task* t : by_dep_[prim.id]) {
      if (moving(*t)) continue;
      if (shielded(*t)) {
        ++kept;
        continue;
      }
      extra.push_back(t);
    }
    held_back(std::min<std::int64_t>(kept, n - static_cast<std::int64_t>(extra.size())));
    // The service's tasks that stay, by instance: each stop below takes one away.
    std::map<std::string, std::int64_t> on;
    for (const auto& t : s_.tasks) {
      if (t.desired_status == "RUNNING") ++on[t.container_instance_arn];
    }
    const auto first = [&](const task* a, const task* b) {
      const bool ap = a->last_status != "RUNNING", bp = b->last_status != "RUNNING";
      if (ap != bp) return ap;
      const bool ah = healthy(*a), bh = healthy(*b);
      if (ah != bh) return !ah;
      const std::int64_t an = on[a->container_instance_arn], bn = on[b->container_instance_arn];
      if (an != bn) return an > bn;
      return a->created_at > b->created_at;
    };
    for (; n > 0 && !extra.empty(); --n) {
      const auto it = std::min_element(extra.begin(), extra.end(), first);
      const task& t = **it;
      extra.erase(it);
      --on[t.container_instance_arn];
      if (healthy(t)) --healthy_total;
      retire(t, "Scaling activity initiated by (deployment " + prim.id + ")");
    }
  }

  // Counts, per deployment and in all, of the tasks as they were at the snapshot.
  void counts() {
    for (auto& d : deps_) {
      std::int64_t r = 0, p = 0;
      for (const auto& t : s_.tasks) {
        if (t.deployment_id != d.id || t.desired_status != "RUNNING") continue;
        (t.last_status == "RUNNING" ? r : p) += 1;
      }
      d.running_count = r;
      d.pending_count = p;
      p_.running_count += r;
      p_.pending_count += p;
    }
  }

  void record() {
    // Old deployments without tasks are done with (of task sets, the deleted ones only).
    std::erase_if(deps_, [&](const deployment& d) {
      const bool done = svc_.external ? d.status == deployment_status::inactive
                                      : d.status != deployment_status::primary;
      return done && d.running_count == 0 && d.pending_count == 0;
    });
    p_.steady = svc_.steady;
    if (svc_.deleting) {
      if (s_.tasks.empty() && draining_.empty()) {
        p_.deleted = true;
        p_.events.push_back({"has been deleted."});
      }
      p_.deployments = deps_;
      p_.busy = !p_.deleted;
      return;
    }
    // Task sets: steady when each has its count, all healthy, and no deleted one is left.
    if (svc_.external) {
      bool steady = true;
      for (auto& d : deps_) {
        const auto& mine = by_dep_[d.id];
        const auto good =
            std::count_if(mine.begin(), mine.end(), [&](const task* t) { return healthy(*t); });
        const bool there = d.status != deployment_status::inactive && good == d.desired_count &&
                           static_cast<std::int64_t>(mine.size()) == d.desired_count;
        steady &= there;
        if (there && d.rollout == rollout_state::in_progress) {
          d.rollout = rollout_state::completed;
          d.rollout_reason = "ECS deployment " + d.id + " completed.";
          d.updated_at = s_.now;
          p_.transitions.push_back({d.id, rollout_state::completed, d.rollout_reason});
        }
      }
      // Nor while a task of no task set is left.
      for (const auto& [id, list] : by_dep_) {
        const bool known = std::any_of(deps_.begin(), deps_.end(),
                                       [&](const deployment& d) { return d.id == id; });
        steady &= known || list.empty();
      }
      if (steady && !svc_.steady) p_.events.push_back({"has reached a steady state."});
      p_.steady = steady;
      p_.deployments = deps_;
      p_.busy = !steady || !draining_.empty();
      return;
    }
    // Steady: the primary alone, all its tasks healthy, none on a DRAINING instance.
    if (deployment* prim = primary(); prim != nullptr) {
      const auto& mine = by_dep_[prim->id];
      const auto good =
          std::count_if(mine.begin(), mine.end(), [&](const task* t) { return healthy(*t); });
      const std::int64_t desired = svc_.desired_count;
      const bool steady = deps_.size() == 1 && good == desired &&
                          static_cast<std::int64_t>(mine.size()) == desired &&
                          staying(*prim) == desired;
      if (steady && prim->rollout == rollout_state::in_progress) {
        prim->rollout = rollout_state::completed;
        prim->rollout_reason = "ECS deployment " + prim->id + " completed.";
        p_.transitions.push_back({prim->id, rollout_state::completed, prim->rollout_reason});
        p_.last_good = prim->task_definition;
      }
      if (steady && !svc_.steady) p_.events.push_back({"has reached a steady state."});
      if (svc_.steady != steady) prim->updated_at = s_.now;
      p_.steady = steady;
    }
    p_.deployments = deps_;
    p_.busy = !p_.steady || !draining_.empty();
  }

  const snapshot& s_;
  const service& svc_;
  plan p_;
  std::vector<deployment> deps_;
  std::map<std::string, std::map<std::string, target>> servers_;  // backend -> name -> target
  std::set<std::string> draining_;     // tracked drains, old and begun in this pass
  std::set<std::string> stopped_now_;  // stops decided in this pass
  std::map<std::string, bool> lb_up_;  // task -> every backend has it UP
  std::map<std::string, std::vector<const task*>> by_dep_;  // live tasks not gone, by deployment
  bool balanced_ = false;
  bool lb_ok_ = true;
};

}  // namespace

std::string server_name(const std::string& task_arn) { return "berth-" + name_of(task_arn); }

plan reconcile(const snapshot& s) { return pass(s).run(); }

deployment new_deployment(const std::string& id, const std::string& task_definition,
                          std::int64_t desired_count, seconds now) {
  deployment d;
  d.id = id;
  d.task_definition = task_definition;
  d.desired_count = desired_count;
  d.created_at = d.updated_at = now;
  d.rollout_reason = "ECS deployment " + id + " in progress.";
  return d;
}

std::string started_message(const deployment& d) {
  return "has started a new deployment " + d.id + " of " + name_of(d.task_definition) + ".";
}

}  // namespace berth::scheduler
