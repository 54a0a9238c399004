// The loop: snapshots in, plans out. Each pass reads without the lock (the record, the tasks,
// HAProxy), copies the loop's memory under it, decides outside it, applies outside it, and
// takes it again only to remember what it did.
#include "loop.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <iterator>

#include "berth/agent/util.hpp"
#include "task_sets.hpp"

namespace berth::agent::sched {

namespace {

using namespace std::chrono_literals;
rc::target to_target(const lb::haproxy::server& sv) {
  rc::target t;
  t.name = sv.name;
  t.address = sv.address;
  t.sessions = sv.sessions;
  t.check_failed = sv.failing();
  // "UP" once checks have passed; "UP 1/3" is one HAProxy added but not yet marked DOWN, or one
  // failing its checks: neither counts as up.
  t.state = sv.status == "UP"                ? rc::target_state::up
            : sv.status.starts_with("DRAIN") ? rc::target_state::drain
            : sv.status.starts_with("MAINT") ? rc::target_state::maint
            : sv.status.starts_with("DOWN")  ? rc::target_state::down
                                             : rc::target_state::other;
  return t;
}

}  // namespace

loop::loop(const config& c, records& recs, std::shared_ptr<state::store> st, task_api& tasks,
           metrics& m)
    : cfg_(c), recs_(recs), tasks_(tasks), metrics_(m), st_(st), lead_(c, std::move(st), m) {
  if (!c.haproxy_socket.empty()) lb_.emplace(c.haproxy_socket);
  metrics_.gauge("berth_services", "Services by status");
  metrics_.counter("berth_service_tasks_started_total", "Tasks services started");
  metrics_.counter("berth_service_tasks_stopped_total", "Tasks services stopped");
}

void loop::start() {
  thread_ = std::thread([this] { run(); });
}

void loop::wake() {
  {
    std::lock_guard lock(wake_mu_);
    woken_ = true;
  }
  wake_cv_.notify_all();
}

void loop::shutdown() {
  {
    std::lock_guard lock(wake_mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_cv_.notify_all();
  // A campaign blocks on the store, not on wake_cv_.
  lead_.interrupt();
  if (thread_.joinable()) thread_.join();
}

void loop::changed(const std::string& service_arn) {
  {
    std::lock_guard lock(mu_);
    placement_failures_.erase(service_arn);
  }
  wake();
}

void loop::run() {
  lead_.recover();
  bool was_leading = false;
  for (;;) {
    // Not leading, this blocks in the campaign until the deadline (or a store error).
    const auto deadline = leadership::clock::now() + lead_.interval();
    const bool leading = lead_.lead(deadline);
    if (was_leading && !leading) forget();
    const bool new_leader = leading && !was_leading;
    was_leading = leading;
    {
      // Leading: every second when all is steady; four times as often while something moves
      // (a rollout, a scale, a drain), which is what a rollout's time is made of besides health
      // checks; at once when woken (an API call, a service task's state change) or just
      // elected. Not leading: campaigning again at once when the last campaign ran out its
      // time, else (the store failed) after a second.
      const auto wait = new_leader                             ? 0ms
                        : leading                              ? (busy_ ? 250ms : 1000ms)
                        : leadership::clock::now() >= deadline ? 0ms
                                                               : 1000ms;
      std::unique_lock lock(wake_mu_);
      wake_cv_.wait_for(lock, wait, [&] { return stopping_ || woken_; });
      if (stopping_) break;
      woken_ = false;
    }
    if (!leading) continue;
    try {
      pass_all();
    } catch (const std::exception& e) {
      spdlog::error("service scheduler: {}", e.what());
    }
  }
  lead_.step_down();
}

void loop::forget() {
  {
    std::lock_guard lock(mu_);
    draining_.clear();
    said_.clear();
    placement_failures_.clear();
    left_.clear();
  }
  busy_ = false;
  // The leader reports the services.
  metrics_.clear("berth_services");
}

void loop::pass_all() {
  auto all = recs_.all("");
  if (!all) return;
  pass_reads_.clear();
  std::map<std::string, int> by_status = {{"ACTIVE", 0}, {"DRAINING", 0}};
  bool busy = false;
  // This cluster's services, and those of clusters without agents (whose events then say why
  // nothing runs); another cluster's leader reconciles its own.
  std::map<std::string, bool> led;  // cluster -> by its own agents
  for (auto& s : *all) {
    if (s.status == "INACTIVE") continue;
    if (const std::string c = name_of(s.cluster_arn); c != cfg_.cluster) {
      auto [it, fresh] = led.try_emplace(c, false);
      if (fresh) it->second = led_by_its_own(c);
      if (it->second) continue;
    }
    // Leadership lost in this pass (checked before each plan is applied): no more plans.
    if (!lead_.leading()) return;
    ++by_status[s.status];
    try {
      busy |= pass_one(std::move(s));
    } catch (const std::exception& e) {
      // One service's trouble is its own: the others are reconciled all the same.
      spdlog::error("service reconcile failed: {}", e.what());
    }
  }
  {
    std::lock_guard lock(mu_);
    busy |= !draining_.empty();
  }
  busy_ = busy;
  for (const auto& [st, n] : by_status) metrics_.set("berth_services", {{"status", st}}, n);
}

bool loop::led_by_its_own(const std::string& cluster) {
  auto r = st_->range(state::key_range::with_prefix(leader_election(cluster) + "/"), 1);
  return !r || !r->kvs.empty();
}

bool loop::pass_one(state::service s) {
  auto snap = gather(s);
  if (!snap) return true;  // tried again next pass
  const rc::plan p = rc::reconcile(*snap);
  // The snapshot took a while (the task API, HAProxy): another agent may lead by now, and
  // would start the same tasks.
  if (!lead_.still_leading()) return false;
  const applied a = apply(s, *snap, p);
  remember(*snap, p, a);
  record(std::move(s), p, a);
  return p.busy;
}

std::optional<rc::snapshot> loop::gather(const state::service& s) {
  rc::snapshot snap;
  snap.service = to_service(s, cfg_.deregistration_delay);
  snap.deployments = to_deployments(s);
  auto live = tasks_of(s, false);
  if (!live) return std::nullopt;
  const cluster_reads* reads = reads_of(name_of(s.cluster_arn));
  if (reads == nullptr) return std::nullopt;
  snap.draining_instances = reads->draining;
  if (snap.service.daemon && !snap.service.deleting) {
    auto where = daemon_instances(s);
    if (!where) return std::nullopt;
    snap.daemon_instances = std::move(*where);
    // A daemon's desired count is its instances'.
    snap.service.desired_count = static_cast<std::int64_t>(snap.daemon_instances.size());
    for (auto& d : snap.deployments) {
      if (d.status == rc::deployment_status::primary) d.desired_count = snap.service.desired_count;
    }
  }
  const auto& shields = reads->protections;
  for (const auto& t : *live) {
    snap.tasks.push_back(to_task(t, checked_containers(t.task_definition_arn.value_or(""))));
    if (const auto it = shields.find(snap.tasks.back().arn); it != shields.end()) {
      snap.tasks.back().protected_until = it->second;
    }
  }
  // The circuit breaker counts the primary's failed tasks, while it rolls out.
  bool rolling = false;
  for (const auto& d : snap.deployments) {
    rolling |=
        d.status == rc::deployment_status::primary && d.rollout == rc::rollout_state::in_progress;
  }
  if (rolling && !snap.service.deleting) {
    for (const auto& t : tasks_of(s, true).value_or(std::vector<ecs::task>{})) {
      snap.stopped_tasks.push_back(to_task(t, {}));
    }
  }
  snap.has_load_balancer = lb_.has_value();
  if (lb_) {
    for (const auto& l : snap.service.load_balancers) {
      rc::backend b;
      b.name = l.name;
      if (auto list = lb_->servers(l.name); list) {
        for (const auto& sv : *list) b.targets.push_back(to_target(sv));
      } else {
        b.readable = false;
        b.error = list.error().message;
      }
      snap.backends.push_back(std::move(b));
    }
  }
  snap.next_deployment_id = deployment_id();
  {
    std::lock_guard lock(mu_);
    // An API action on another agent wrote the record (this agent's own call changed() too):
    // what RunTask refused before is tried again at once.
    if (const auto it = left_.find(snap.service.arn);
        it != left_.end() && it->second != s.berth.revision) {
      placement_failures_.erase(snap.service.arn);
    }
    for (const auto& [arn, d] : draining_) {
      if (d.service == snap.service.arn) snap.drains.push_back(d.d);
    }
    if (const auto it = said_.find(snap.service.arn); it != said_.end()) snap.said = it->second;
    if (const auto it = placement_failures_.find(snap.service.arn);
        it != placement_failures_.end()) {
      snap.last_placement_failure = it->second;
    }
  }
  snap.now = now_seconds();
  return snap;
}

// The service's tasks (not yet stopped, or stopped), described. Nothing when any lookup failed:
// a partial list would look like missing tasks.
std::optional<std::vector<ecs::task>> loop::tasks_of(const state::service& s, bool stopped) {
  ecs::list_tasks_request list;
  list.cluster = name_of(s.cluster_arn);
  list.service_name = s.service_name;
  list.desired_status = stopped ? "STOPPED" : "RUNNING";
  list.max_results = 100;
  std::vector<std::string> arns;
  do {
    auto l = ask<ecs::list_tasks_response>(tasks_, "ListTasks", list);
    if (!l) return std::nullopt;
    arns.insert(arns.end(), items(l->task_arns).begin(), items(l->task_arns).end());
    list.next_token = std::move(l->next_token);
  } while (list.next_token);
  std::vector<ecs::task> out;
  for (std::size_t i = 0; i < arns.size(); i += 100) {
    ecs::describe_tasks_request describe;
    describe.cluster = list.cluster;
    describe.tasks.assign(
        arns.begin() + static_cast<std::ptrdiff_t>(i),
        arns.begin() + static_cast<std::ptrdiff_t>(std::min(arns.size(), i + 100)));
    auto d = ask<ecs::describe_tasks_response>(tasks_, "DescribeTasks", describe);
    if (!d) return std::nullopt;
    if (d->tasks) std::move(d->tasks->begin(), d->tasks->end(), std::back_inserter(out));
  }
  return out;
}

// What the services of `cluster` read alike, read at its first service of the pass. Null when a
// lookup failed (tried again at the next service).
const loop::cluster_reads* loop::reads_of(const std::string& cluster) {
  if (const auto it = pass_reads_.find(cluster); it != pass_reads_.end()) return &it->second;
  auto draining = draining_instances(cluster);
  if (!draining) return nullptr;
  auto shields = recs_.protections(cluster);
  if (!shields) return nullptr;
  return &pass_reads_.emplace(cluster, cluster_reads{std::move(*draining), std::move(*shields)})
              .first->second;
}

// The cluster's DRAINING container instances. Nothing when the lookup failed: an instance
// missing from the list would look ACTIVE, and its tasks would stay.
std::optional<std::set<std::string>> loop::draining_instances(const std::string& cluster) {
  ecs::list_container_instances_request list;
  list.cluster = cluster;
  list.status = "DRAINING";
  return instances(std::move(list));
}

// Every instance ListContainerInstances answers `list` with, page by page.
std::optional<std::set<std::string>> loop::instances(ecs::list_container_instances_request list) {
  list.max_results = 100;
  std::set<std::string> out;
  do {
    auto l = ask<ecs::list_container_instances_response>(tasks_, "ListContainerInstances", list);
    if (!l) return std::nullopt;
    out.insert(items(l->container_instance_arns).begin(), items(l->container_instance_arns).end());
    list.next_token = std::move(l->next_token);
  } while (list.next_token);
  return out;
}

// The instances a DAEMON service runs on: those ListContainerInstances' filter matches, which
// are the ones placement would use (ACTIVE, their agent connected), meeting its memberOf
// constraints.
std::optional<std::set<std::string>> loop::daemon_instances(const state::service& s) {
  std::string filter;
  for (const auto& c : s.placement_constraints) {
    if (c.type != "memberOf" || !c.expression) continue;
    filter += (filter.empty() ? "(" : " and (") + *c.expression + ")";
  }
  ecs::list_container_instances_request list;
  list.cluster = name_of(s.cluster_arn);
  list.status = "ACTIVE";
  list.filter = filter.empty() ? "attribute:ecs.os-type exists" : filter;
  return instances(std::move(list));
}

// The containers of a task definition that have a Docker health check (cached by ARN).
const std::set<std::string>& loop::checked_containers(const std::string& td) {
  if (const auto it = checked_.find(td); it != checked_.end()) return it->second;
  static const std::set<std::string> unknown;
  std::set<std::string> names;
  const auto add = [&](const auto& containers) {
    for (const auto& c : items(containers)) {
      if (c.health_check && c.name) names.insert(*c.name);
    }
  };
  // A daemon's tasks run a daemon task definition.
  if (td.find(":daemon-task-definition/") != std::string::npos) {
    ecs::describe_daemon_task_definition_request q;
    q.daemon_task_definition = td;
    auto d = ask<ecs::describe_daemon_task_definition_response>(tasks_,
                                                                "DescribeDaemonTaskDefinition", q);
    if (!d || !d->daemon_task_definition) return unknown;  // asked again next time
    add(d->daemon_task_definition->container_definitions);
    return checked_[td] = names;
  }
  ecs::describe_task_definition_request q;
  q.task_definition = td;
  auto d = ask<ecs::describe_task_definition_response>(tasks_, "DescribeTaskDefinition", q);
  if (!d || !d->task_definition) return unknown;  // asked again next time
  add(d->task_definition->container_definitions);
  return checked_[td] = names;
}

void loop::remember(const rc::snapshot& snap, const rc::plan& p, const applied& a) {
  const std::string& svc = snap.service.arn;
  std::lock_guard lock(mu_);
  for (const auto& arn : p.drains_ended) draining_.erase(arn);
  for (const auto& d : a.drains_begun) draining_[d.task_arn] = {d, svc};
  auto& said = said_[svc];
  // What was said over warn_interval ago is forgotten: messages that carry an error's text
  // would otherwise pile up for the daemon's life.
  std::erase_if(said, [&](const auto& w) { return snap.now - w.second >= rc::warn_interval; });
  for (const auto& e : p.events) {
    if (e.throttled) said[e.message] = snap.now;
  }
  for (const auto& m : a.said) said[m] = snap.now;
  if (said.empty()) said_.erase(svc);
  if (a.placement_failure) {
    placement_failures_[svc] = *a.placement_failure;
  } else if (a.placed) {
    placement_failures_.erase(svc);
  }
  if (p.deleted) placement_failures_.erase(svc);
}

// The plan's record, written by compare-and-swap. When an API call wrote the record since the
// snapshot, only what this pass did is added (its events); the next pass decides afresh on the
// new record.
void loop::record(state::service s, const rc::plan& p, const applied& a) {
  const state::service before = s;
  for (const auto& m : a.events) records::event(s, m);
  for (const auto& e : p.events) records::event(s, e.message);
  write_deployments(s, p.deployments);
  sync_task_sets(s, now_seconds());
  s.running_count = static_cast<std::int32_t>(p.running_count);
  s.pending_count = static_cast<std::int32_t>(p.pending_count);
  if (p.desired_count) s.desired_count = static_cast<std::int32_t>(*p.desired_count);
  if (p.task_definition) s.task_definition = *p.task_definition;
  if (p.last_good) s.berth.last_good = *p.last_good;
  s.berth.steady = p.steady;
  if (p.deleted) s.status = "INACTIVE";
  // The revision this pass leaves; 0 (no record's) when an API action wrote in between, so that
  // the next pass sees that one did.
  const auto leave = [&](std::uint64_t revision) {
    std::lock_guard lock(mu_);
    if (p.deleted) {
      left_.erase(s.service_arn);
    } else {
      left_[s.service_arn] = revision;
    }
  };
  if (s == before) {
    leave(s.berth.revision);
    return;
  }
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto w = recs_.commit(s);
    if (!w) return;  // logged by commit
    if (*w) {
      leave(attempt == 0 ? s.berth.revision : 0);
      return;
    }
    leave(0);
    auto fresh = recs_.load(name_of(s.cluster_arn), s.service_name);
    if (!fresh || !*fresh) return;  // the next pass reads it again
    s = std::move(**fresh);
    if (a.events.empty()) return;
    for (const auto& m : a.events) records::event(s, m);
  }
}

}  // namespace berth::agent::sched
