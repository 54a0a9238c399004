// Applying a plan: HAProxy first (targets, then drains), then the task API (stops, then
// starts). No lock is held: the plan and the snapshot are this pass's own. What each call did
// becomes the service's events, in ECS's words.
#include <spdlog/spdlog.h>

#include <algorithm>

#include "berth/agent/util.hpp"
#include "loop.hpp"

namespace berth::agent::sched {

using control::is_no_instances;
using control::no_instances;

namespace {

std::string task_list(const std::vector<std::string>& arns) {
  std::string ids;
  for (const auto& a : arns) ids += " (task " + name_of(a) + ")";
  return ids;
}

// An event that could repeat every pass is said once per warn_interval.
void warn(const rc::snapshot& snap, std::vector<std::string>& events,
          std::vector<std::string>& said, const std::string& message) {
  if (const auto it = snap.said.find(message);
      it != snap.said.end() && snap.now - it->second < rc::warn_interval) {
    return;
  }
  if (std::find(said.begin(), said.end(), message) != said.end()) return;
  said.push_back(message);
  events.push_back(message);
}

}  // namespace

loop::applied loop::apply(const state::service& s, const rc::snapshot& snap, const rc::plan& p) {
  applied out;
  apply_targets(p, snap, out);
  apply_tasks(s, p, snap, out);
  return out;
}

void loop::apply_targets(const rc::plan& p, const rc::snapshot& snap, applied& out) {
  if (!lb_) return;
  for (const auto& c : p.targets) {
    switch (c.op) {
      case rc::target_op::add:
        if (auto a = lb_->add(c.backend, c.server, c.address); !a) {
          warn(snap, out.events, out.said,
               "is unable to register targets with (load balancer " + c.backend +
                   "): " + a.error().message);
        } else if (c.report) {
          out.events.push_back("registered 1 targets in (load balancer " + c.backend + ")");
        }
        break;
      case rc::target_op::shutdown_sessions:
        (void)lb_->shutdown_sessions(c.backend, c.server);
        break;
      case rc::target_op::remove:
        if (lb_->remove(c.backend, c.server) && c.report) {
          out.events.push_back("deregistered 1 targets in (load balancer " + c.backend + ")");
        }
        break;
    }
  }
}

void loop::apply_tasks(const state::service& s, const rc::plan& p, const rc::snapshot& snap,
                       applied& out) {
  const std::string cluster = name_of(s.cluster_arn);
  std::vector<rc::task_stop> stops = p.stops;
  for (const auto& d : p.drains) {
    bool draining = d.backends.empty();  // HAProxy drains it already: only tracked again
    for (const auto& b : d.backends) {
      if (lb_ && lb_->drain(b, rc::server_name(d.task_arn))) draining = true;
    }
    if (!draining) {
      // HAProxy would not drain it: stopped at once, as a task with no target.
      stops.push_back({d.task_arn, d.reason});
      continue;
    }
    out.drains_begun.push_back({d.task_arn, snap.now, d.reason});
    if (!d.backends.empty()) out.events.push_back("has begun draining connections on 1 tasks.");
  }

  std::vector<std::string> stopped;
  for (const auto& st : stops) {
    auto r = tasks_.call("StopTask",
                         ecs::to_json(ecs::stop_task_request{cluster, st.task_arn, st.reason}));
    if (!r) {
      spdlog::warn("service {}: cannot stop {}: {}", snap.service.name, st.task_arn,
                   r.error().message);
      continue;
    }
    metrics_.add("berth_service_tasks_stopped_total", {});
    stopped.push_back(st.task_arn);
  }
  if (!stopped.empty()) {
    out.events.push_back("has stopped " + std::to_string(stopped.size()) +
                         " running tasks:" + task_list(stopped) + ".");
  }

  for (const auto& st : p.starts) {
    auto r = start_tasks(s, st, snap);
    if (!r && is_no_instances(r.error())) {
      // Said by the next pass's reconcile, in ECS's words, as a placement failure.
      out.placement_failure =
          rc::placement_failure{st.deployment_id, snap.now, " " + std::string(no_instances)};
      continue;
    }
    if (!r) {
      warn(snap, out.events, out.said, "was unable to start tasks: " + r.error().message);
      continue;
    }
    std::vector<std::string> started;
    for (const auto& t : items(r->tasks)) started.push_back(t.task_arn.value_or(""));
    if (!started.empty()) {
      out.events.push_back("has started " + std::to_string(started.size()) +
                           " tasks:" + task_list(started) + ".");
      metrics_.add("berth_service_tasks_started_total", {}, static_cast<double>(started.size()));
    }
    // Said by the next pass's reconcile, which also waits a moment before asking again.
    if (!items(r->failures).empty()) {
      std::string reasons;
      for (const auto& f : *r->failures) reasons.append(" ").append(f.reason.value_or(""));
      out.placement_failure = rc::placement_failure{st.deployment_id, snap.now, reasons};
    } else {
      out.placed = true;
    }
  }
}

// A start: `count` tasks placed (RunTask), or a DAEMON service's one on each instance named
// (StartTask); either answer as RunTask's.
tl::expected<ecs::run_task_response, api_error> loop::start_tasks(const state::service& s,
                                                                  const rc::task_start& st,
                                                                  const rc::snapshot& snap) {
  const std::string cluster = name_of(s.cluster_arn);
  const std::string group = service_group(snap.service.name);
  if (st.instances.empty()) {
    ecs::run_task_request run;
    run.cluster = cluster;
    run.task_definition = st.task_definition;
    run.count = static_cast<std::int32_t>(st.count);
    run.started_by = st.deployment_id;
    run.group = group;
    run.placement_constraints = s.placement_constraints;
    run.placement_strategy = s.placement_strategy;
    run.enable_execute_command = s.enable_execute_command;
    return ask<ecs::run_task_response>(tasks_, "RunTask", run);
  }
  ecs::start_task_request run;
  run.cluster = cluster;
  run.task_definition = st.task_definition;
  run.container_instances = st.instances;
  run.started_by = st.deployment_id;
  run.group = group;
  run.enable_execute_command = s.enable_execute_command;
  const auto r = ask<ecs::start_task_response>(tasks_, "StartTask", run);
  if (!r) return tl::unexpected(r.error());
  ecs::run_task_response out;
  out.tasks = r->tasks;
  out.failures = r->failures;
  return out;
}

}  // namespace berth::agent::sched
