// reconcile(), table by table: given a service's deployments, tasks, load balancer targets and
// the time, the plan's starts, stops, drains, target changes, events and rollout transitions.
// Each row builds its snapshot from a few helpers; the plan is rendered as short lines, so a
// failing row shows the whole difference.
#include "berth/scheduler/reconcile.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace {

namespace rc = berth::scheduler;

constexpr rc::seconds t0 = 1'000'000;  // the snapshot's now
const std::string td1 = "arn:aws:ecs:us-east-1:000000000000:task-definition/web:1";
const std::string td2 = "arn:aws:ecs:us-east-1:000000000000:task-definition/web:2";
const std::string td3 = "arn:aws:ecs:us-east-1:000000000000:task-definition/web:3";
// Deployment ids: newer ones sort after older ones, as ECS's do not promise but ours happen to.
const std::string d1 = "ecs-svc/1000000000000000001";
const std::string d2 = "ecs-svc/1000000000000000002";
const std::string d3 = "ecs-svc/1000000000000000003";
const std::string next_id = "ecs-svc/9999999999999999999";

std::string arn(const std::string& id) {
  return "arn:aws:ecs:us-east-1:000000000000:task/default/" + id;
}

// A task of deployment `dep`, RUNNING since `age` seconds, its port 8080 on a host port.
rc::task task(const std::string& id, const std::string& dep, rc::seconds age = 100) {
  rc::task t;
  t.arn = arn(id);
  t.deployment_id = dep;
  t.task_definition = dep == d1 ? td1 : dep == d2 ? td2 : td3;
  t.last_status = t.desired_status = "RUNNING";
  t.created_at = t.started_at = t0 - age;
  rc::container c;
  c.name = "web";
  c.bindings.push_back({8080, 32000 + static_cast<int>(std::hash<std::string>{}(id) % 1000)});
  t.containers.push_back(c);
  return t;
}

rc::task pending(const std::string& id, const std::string& dep) {
  rc::task t = task(id, dep, 1);
  t.last_status = "PENDING";
  t.started_at = 0;
  t.containers[0].bindings.clear();
  return t;
}

rc::target target(const std::string& id, rc::target_state st = rc::target_state::up,
                  long sessions = 0) {
  return {"berth-" + id, "127.0.0.1:1", st, false, sessions};
}

rc::target failing(const std::string& id) {
  rc::target t = target(id, rc::target_state::down);
  t.check_failed = true;
  return t;
}

rc::deployment deployment(const std::string& id, const std::string& td, rc::deployment_status st,
                          rc::rollout_state ro) {
  rc::deployment d = rc::new_deployment(id, td, 3, t0 - 1000);
  d.status = st;
  d.rollout = ro;
  return d;
}

// A service of `desired` tasks behind load balancer "web" (container web, port 8080), one
// deployment (d2, web:2) rolled out; tasks and targets are each row's.
rc::snapshot service(std::int64_t desired) {
  rc::snapshot s;
  s.service.arn = "arn:aws:ecs:us-east-1:000000000000:service/default/web";
  s.service.name = "web";
  s.service.desired_count = desired;
  s.service.load_balancers = {{"web", "web", 8080}};
  s.service.task_definition = td2;
  s.service.last_good = td2;
  s.service.steady = true;
  s.deployments = {
      deployment(d2, td2, rc::deployment_status::primary, rc::rollout_state::completed)};
  s.has_load_balancer = true;
  s.backends = {{"web", true, "", {}}};
  s.next_deployment_id = next_id;
  s.now = t0;
  return s;
}

// n tasks of d2 (t1, t2, ...), each UP in the backend.
rc::snapshot serving(std::int64_t desired, int n, const std::string& dep = d2) {
  rc::snapshot s = service(desired);
  for (int i = 1; i <= n; ++i) {
    // Appended, not "t" + to_string(i): GCC 12's -Wrestrict misreads that inlined here.
    std::string id = dep == d2 ? "t" : "o";
    id += std::to_string(i);
    s.tasks.push_back(task(id, dep, 100 + n - i));  // t1 the oldest
    s.backends[0].targets.push_back(target(id));
  }
  return s;
}

// A rollout from d1 (web:1, ACTIVE) to d2 (web:2, PRIMARY, IN_PROGRESS): `old` tasks of d1 UP.
rc::snapshot rolling(std::int64_t desired, int old, std::int64_t min_pct, std::int64_t max_pct) {
  rc::snapshot s = serving(desired, old, d1);
  s.service.minimum_healthy_percent = min_pct;
  s.service.maximum_percent = max_pct;
  s.service.steady = false;
  s.service.last_good = td1;
  s.deployments = {
      deployment(d2, td2, rc::deployment_status::primary, rc::rollout_state::in_progress),
      deployment(d1, td1, rc::deployment_status::active, rc::rollout_state::completed)};
  return s;
}

// Three tasks serving, t2's target failing its checks since it started 101 s ago.
rc::snapshot failing_check(rc::seconds grace_period) {
  rc::snapshot s = serving(3, 3);
  s.service.health_check_grace_period = grace_period;
  s.backends[0].targets[1] = failing("t2");
  return s;
}

// A rollout of d2 whose three tasks stopped with `stop_code`, the breaker on.
rc::snapshot tripping(bool rollback, const std::string& stop_code) {
  rc::snapshot s = rolling(3, 3, 100, 200);
  s.service.circuit_breaker = true;
  s.service.rollback = rollback;
  for (const std::string id : {"f1", "f2", "f3"}) {
    rc::task f = task(id, d2);
    f.last_status = f.desired_status = "STOPPED";
    f.stop_code = stop_code;
    s.stopped_tasks.push_back(f);
  }
  return s;
}

// Two tasks serving; t3 in its backend as `st` with `sessions`, tracked as draining since
// `since` (unless nullopt: not tracked, berthd restarted).
rc::snapshot draining(rc::target_state st, long sessions, std::optional<rc::seconds> since) {
  rc::snapshot s = serving(2, 2);
  s.tasks.push_back(task("t3", d2));
  s.backends[0].targets.push_back(target("t3", st, sessions));
  if (since)
    s.drains = {{arn("t3"), *since, "Scaling activity initiated by (deployment " + d2 + ")"}};
  return s;
}

// No task placed: RunTask refused d2's at `failed_at`; the event last said at `said_at`.
rc::snapshot no_capacity(rc::seconds failed_at, std::optional<rc::seconds> said_at);

const std::string instance_a = "arn:aws:ecs:us-east-1:000000000000:container-instance/default/a";
const std::string instance_c = "arn:aws:ecs:us-east-1:000000000000:container-instance/default/c";

// `s` with the tasks `ids` on instance c, the others on a; c DRAINING when `draining`.
rc::snapshot on_c(rc::snapshot s, const std::vector<std::string>& ids, bool draining = true) {
  for (auto& t : s.tasks) {
    const bool there = std::any_of(ids.begin(), ids.end(),
                                   [&](const std::string& id) { return arn(id) == t.arn; });
    t.container_instance_arn = there ? instance_c : instance_a;
  }
  if (draining) s.draining_instances = {instance_c};
  return s;
}

// Three tasks serving, t3 on c; `replaced`: t4 (started after c began draining) UP on a.
rc::snapshot with_replacement(bool replaced) {
  rc::snapshot s = serving(3, 3);
  if (replaced) {
    s.tasks.push_back(task("t4", d2, 10));
    s.backends[0].targets.push_back(target("t4"));
  }
  return s;
}

const std::string instance_b = "arn:aws:ecs:us-east-1:000000000000:container-instance/default/b";

// A DAEMON service (100/0, as ECS's default) on instances a, b and c; the tasks `where` says
// (task id -> instance), of d2 ("t…") or of an older d1 ("o…"); without a load balancer.
rc::snapshot daemon(const std::map<std::string, std::string>& where, bool rolling = false) {
  rc::snapshot s = service(3);
  s.service.daemon = true;
  s.service.maximum_percent = 100;
  s.service.minimum_healthy_percent = 0;
  s.service.load_balancers.clear();
  s.backends.clear();
  s.has_load_balancer = false;
  s.daemon_instances = {instance_a, instance_b, instance_c};
  for (const auto& [id, instance] : where) {
    rc::task t = task(id, id[0] == 'o' ? d1 : d2);
    t.container_instance_arn = instance;
    s.tasks.push_back(t);
  }
  if (rolling) {
    s.service.steady = false;
    s.deployments = {
        deployment(d2, td2, rc::deployment_status::primary, rc::rollout_state::in_progress),
        deployment(d1, td1, rc::deployment_status::active, rc::rollout_state::completed)};
  }
  return s;
}

// An EXTERNAL service's task sets: d2 (PRIMARY, `primary` tasks wanted) and d1 (ACTIVE,
// `other` wanted); `tasks` of each UP behind "web" ("t…" of d2, "o…" of d1).
rc::snapshot task_sets(std::int64_t primary, std::int64_t other, int t, int o) {
  rc::snapshot s = serving(primary + other, t);
  s.service.external = true;
  for (int i = 1; i <= o; ++i) {
    std::string id = "o";
    id += std::to_string(i);
    s.tasks.push_back(task(id, d1, 200 - i));
    s.backends[0].targets.push_back(target(id));
  }
  s.deployments = {
      deployment(d2, td2, rc::deployment_status::primary, rc::rollout_state::completed),
      deployment(d1, td1, rc::deployment_status::active, rc::rollout_state::completed)};
  s.deployments[0].desired_count = primary;
  s.deployments[1].desired_count = other;
  return s;
}

// ---- the plan, as lines ----

std::string id_of(const std::string& task_arn) { return task_arn.substr(task_arn.rfind('/') + 1); }

struct rendered {
  std::vector<std::string> starts = {}, stops = {}, drains = {}, targets = {}, events = {},
                           transitions = {};
};

rendered render(const rc::plan& p) {
  rendered r;
  for (const auto& s : p.starts) {
    std::string line = s.deployment_id + " " + id_of(s.task_definition) + " x";
    line += std::to_string(s.count);
    if (!s.instances.empty()) line += " on";
    for (const auto& i : s.instances) line.append(" ").append(id_of(i));
    r.starts.push_back(std::move(line));
  }
  for (const auto& s : p.stops) r.stops.push_back(id_of(s.task_arn) + ": " + s.reason);
  for (const auto& d : p.drains) {
    std::string on;
    for (const auto& b : d.backends) on += " " + b;
    r.drains.push_back(id_of(d.task_arn) + (on.empty() ? " (resumed)" : " on" + on) + ": " +
                       d.reason);
  }
  for (const auto& t : p.targets) {
    const char* op = t.op == rc::target_op::add                 ? "add "
                     : t.op == rc::target_op::shutdown_sessions ? "shutdown "
                                                                : "remove ";
    r.targets.push_back(op + t.backend + "/" + t.server + (t.report ? "" : " (quiet)"));
  }
  for (const auto& e : p.events) r.events.push_back(e.message + (e.throttled ? " [again]" : ""));
  for (const auto& t : p.transitions) {
    r.transitions.push_back(t.deployment_id +
                            (t.to == rc::rollout_state::completed ? " COMPLETED" : " FAILED"));
  }
  return r;
}

struct row {
  row(std::string n, std::function<rc::snapshot()> g, rendered w, bool st = false)
      : name(std::move(n)), given(std::move(g)), want(std::move(w)), steady(st) {}
  std::string name;
  std::function<rc::snapshot()> given;
  rendered want;
  bool steady;  // the service is steady after the pass
};

std::string scaling(const std::string& dep) {
  return "Scaling activity initiated by (deployment " + dep + ")";
}
const std::string no_room =
    "was unable to place a task because no container instance met all of its requirements. "
    "Reasons: RESOURCE:MEMORY. [again]";

rc::snapshot no_capacity(rc::seconds failed_at, std::optional<rc::seconds> said_at) {
  rc::snapshot s = service(2);
  s.service.steady = false;
  s.last_placement_failure = {{d2, failed_at, " RESOURCE:MEMORY"}};
  if (said_at)
    s.said[no_room.substr(0, no_room.size() - std::string(" [again]").size())] = *said_at;
  return s;
}

const std::string drained = "Container instance is being drained";

const std::vector<row>& rows() {
  static const std::vector<row> all = {
      {"SteadyStateIsAnEmptyPlan", [] { return serving(3, 3); }, {}, true},
      {"ReachingSteadyStateCompletesTheRollout",
       [] {
         auto s = serving(3, 3);
         s.service.steady = false;
         s.deployments[0].rollout = rc::rollout_state::in_progress;
         return s;
       },
       {.events = {"has reached a steady state."}, .transitions = {d2 + " COMPLETED"}},
       true},
      {"NewTasksAreRegistered",
       [] {
         auto s = serving(2, 2);
         s.tasks.push_back(task("t3", d2, 5));
         s.service.desired_count = 3;
         return s;
       },
       {.targets = {"add web/berth-t3"}}},
      {"ScaleUpStartsWhatIsMissing", [] { return serving(5, 3); }, {.starts = {d2 + " web:2 x2"}}},
      {"ScaleUpStartsTenAtATime", [] { return serving(30, 3); }, {.starts = {d2 + " web:2 x10"}}},
      {"ScaleDownDrainsTheNewest",
       [] { return serving(2, 3); },
       {.drains = {"t3 on web: " + scaling(d2)}}},
      // t1 and t2 on a, t3 on c: the newest on a goes, leaving one on each.
      {"ScaleDownKeepsTheServiceBalancedOverInstances",
       [] { return on_c(serving(2, 3), {"t3"}, false); },
       {.drains = {"t2 on web: " + scaling(d2)}}},
      // t3 (the newest) and t2 protected: t1 goes; the second stop waits for their protection.
      {"ScaleDownSparesProtectedTasks",
       [] {
         auto s = serving(1, 3);
         s.tasks[1].protected_until = s.tasks[2].protected_until = t0 + 60;
         return s;
       },
       {.drains = {"t1 on web: " + scaling(d2)},
        .events = {"was unable to scale in due to (reason 1 tasks under protection). [again]"}}},
      {"ProtectionThatEndedProtectsNothing",
       [] {
         auto s = serving(2, 3);
         s.tasks[2].protected_until = t0 - 1;
         return s;
       },
       {.drains = {"t3 on web: " + scaling(d2)}}},
      // The new deployment is up; the old one's protected task stays until its protection ends.
      {"ADeploymentKeepsAnOldProtectedTask",
       [] {
         auto s = rolling(2, 2, 100, 200);
         s.tasks[0].protected_until = t0 + 60;
         for (const std::string id : {"t1", "t2"}) {
           s.tasks.push_back(task(id, d2, 50));
           s.backends[0].targets.push_back(target(id));
         }
         return s;
       },
       {.drains = {"o2 on web: " + scaling(d2)},
        .events = {"was unable to scale in due to (reason 1 tasks under protection). [again]"}}},
      {"DeleteStopsProtectedTasksToo",
       [] {
         auto s = serving(0, 1);
         s.service.deleting = true;
         s.tasks[0].protected_until = t0 + 60;
         return s;
       },
       {.drains = {"t1 on web: Service is being deleted"}},
       true},
      {"ADaemonStartsOneOnEachInstance",
       [] { return daemon({}); },
       {.starts = {d2 + " web:2 x3 on a b c"}}},
      {"ADaemonOnEveryInstanceIsSteady",
       [] {
         return daemon({{"t1", instance_a}, {"t2", instance_b}, {"t3", instance_c}});
       },
       {},
       true},
      {"ADaemonStartsOnAnInstanceThatJoined",
       [] {
         return daemon({{"t1", instance_a}, {"t2", instance_b}});
       },
       {.starts = {d2 + " web:2 x1 on c"}}},
      {"ADaemonLeavesADrainingInstanceAndKeepsOneAnInstance",
       [] {
         auto s = daemon(
             {{"t1", instance_a}, {"t2", instance_b}, {"t3", instance_c}, {"t4", instance_a}});
         s.daemon_instances.erase(instance_c);
         s.draining_instances = {instance_c};
         return s;
       },
       {.stops = {"t4: " + scaling(d2), "t3: Container instance is being drained"}}},
      // 100/0: an instance's old task stops first; its new one starts once it is gone.
      {"ADaemonUpdateStopsTheOldTaskFirst",
       [] {
         return daemon({{"o1", instance_a}, {"o2", instance_b}, {"t3", instance_c}}, true);
       },
       {.stops = {"o1: " + scaling(d2), "o2: " + scaling(d2)}}},
      // 100/75 (a daemon's drainPercent 25) on three instances: one instance at a time, not
      // none (75% of 3 rounds up to all of them).
      {"ADaemonUpdateReplacesOneInstanceAtATimeAtLeast",
       [] {
         auto s = daemon({{"o1", instance_a}, {"o2", instance_b}, {"o3", instance_c}}, true);
         s.service.minimum_healthy_percent = 75;
         return s;
       },
       {.stops = {"o1: " + scaling(d2)}}},
      {"ADaemonUpdateStartsWhereTheOldTaskIsGone",
       [] {
         return daemon({{"o2", instance_b}, {"t3", instance_c}}, true);
       },
       {.starts = {d2 + " web:2 x1 on a"}, .stops = {"o2: " + scaling(d2)}}},
      {"TaskSetsAreEachKeptAtTheirOwnCount",
       [] { return task_sets(2, 1, 1, 2); },
       {.starts = {d2 + " web:2 x1"}, .drains = {"o2 on web: " + scaling(d1)}}},
      {"TaskSetsAtTheirCountsAreSteady", [] { return task_sets(2, 1, 2, 1); }, {}, true},
      {"ADeletedTaskSetsTasksStop",
       [] {
         auto s = task_sets(2, 0, 2, 1);
         s.deployments[1].status = rc::deployment_status::inactive;
         return s;
       },
       {.drains = {"o1 on web: " + scaling(d1)}}},
      {"ATaskOfNoTaskSetStops",
       [] {
         auto s = task_sets(2, 1, 2, 1);
         s.deployments.pop_back();
         return s;
       },
       {.drains = {"o1 on web: Its task set was deleted"}}},
      {"AStoppedTaskIsReplacedAndDeregistered",
       [] {
         auto s = serving(3, 3);
         s.tasks.pop_back();  // t3 stopped: no longer listed as RUNNING
         return s;
       },
       {.starts = {d2 + " web:2 x1"}, .targets = {"remove web/berth-t3"}}},
      {"AnUnhealthyContainerIsReplacedAtOnce",
       [] {
         auto s = serving(3, 3);
         s.tasks[1].health_status = rc::health::unhealthy;
         return s;
       },
       {.starts = {d2 + " web:2 x1"},
        .stops = {"t2: Task failed container health checks"},
        .targets = {"remove web/berth-t2"}}},
      {"FailingTargetPastTheGracePeriodIsReplaced",
       [] { return failing_check(30); },
       {.starts = {d2 + " web:2 x1"},
        .drains = {"t2 on web: Task failed ELB health checks in (load balancer web)"}}},
      {"FailingTargetWithinTheGracePeriodIsKept", [] { return failing_check(300); }, {}},
      {"RollingUpdate100To200StartsAllNewFirst",
       [] { return rolling(3, 3, 100, 200); },
       {.starts = {d2 + " web:2 x3"}}},
      {"RollingUpdate100To200StopsOldOnceNewAreUp",
       [] {
         auto s = rolling(3, 3, 100, 200);
         for (const std::string id : {"t1", "t2", "t3"}) {
           s.tasks.push_back(task(id, d2, 50));
           s.backends[0].targets.push_back(target(id));
         }
         return s;
       },
       {.drains = {"o1 on web: " + scaling(d2), "o2 on web: " + scaling(d2),
                   "o3 on web: " + scaling(d2)}}},
      {"RollingUpdate100To200WaitsForNewTargetsToComeUp",
       [] {
         auto s = rolling(3, 3, 100, 200);
         for (const std::string id : {"t1", "t2", "t3"}) {
           s.tasks.push_back(task(id, d2, 5));
           s.backends[0].targets.push_back(target(id, rc::target_state::down));
         }
         return s;
       },
       {}},
      {"RollingUpdate50To100StopsHalfFirst",
       [] { return rolling(4, 4, 50, 100); },
       {.drains = {"o1 on web: " + scaling(d2), "o2 on web: " + scaling(d2)}}},
      {"RollingUpdate0To100StopsEverythingFirst",
       [] { return rolling(3, 3, 0, 100); },
       {.drains = {"o1 on web: " + scaling(d2), "o2 on web: " + scaling(d2),
                   "o3 on web: " + scaling(d2)}}},
      {"RollingUpdate0To100StartsOnceTheOldAreGone",
       [] {
         auto s = rolling(3, 0, 0, 100);
         return s;
       },
       {.starts = {d2 + " web:2 x3"}}},
      {"DrainingWithSessionsWaits",
       [] { return draining(rc::target_state::drain, 5, t0 - 10); },
       {},
       true},
      {"DrainedWithoutSessionsStopsAtOnce",
       [] { return draining(rc::target_state::drain, 0, t0 - 10); },
       {.stops = {"t3: " + scaling(d2)}, .targets = {"remove web/berth-t3"}},
       true},
      {"DrainPastTheDelayEndsItsSessions",
       [] { return draining(rc::target_state::drain, 5, t0 - 301); },
       {.stops = {"t3: " + scaling(d2)},
        .targets = {"shutdown web/berth-t3 (quiet)", "remove web/berth-t3"}},
       true},
      {"ADrainAfterARestartResumes",
       [] { return draining(rc::target_state::drain, 5, std::nullopt); },
       {.drains = {"t3 (resumed): Scaling activity (a drain resumed after a restart)"}},
       true},
      {"CircuitBreakerTripsAndRollsBack",
       [] { return tripping(true, "EssentialContainerExited"); },
       {.events = {"deployment " + d2 + " deployment failed: tasks failed to start.",
                   "has started a new deployment " + next_id + " of web:1.",
                   "is rolling back to web:1."},
        .transitions = {d2 + " FAILED"}}},
      {"CircuitBreakerTripsWithoutRollback",
       [] { return tripping(false, "TaskFailedToStart"); },
       {.events = {"deployment " + d2 + " deployment failed: tasks failed to start."},
        .transitions = {d2 + " FAILED"}}},
      {"StopsAUserAskedForDoNotTripTheBreaker",
       [] { return tripping(true, "UserInitiated"); },
       {.starts = {d2 + " web:2 x3"}}},
      {"ADeploymentReplacedMidRolloutLosesItsTasks",
       [] {
         // d3 replaced d2 before d2's tasks came up; d1's still serve.
         auto s = rolling(3, 3, 100, 200);
         s.deployments = {
             deployment(d3, td3, rc::deployment_status::primary, rc::rollout_state::in_progress),
             deployment(d2, td2, rc::deployment_status::active, rc::rollout_state::in_progress),
             deployment(d1, td1, rc::deployment_status::active, rc::rollout_state::completed)};
         s.tasks.push_back(pending("m1", d2));
         s.tasks.push_back(pending("m2", d2));
         return s;
       },
       {.starts = {d3 + " web:3 x1"}, .stops = {"m1: " + scaling(d3), "m2: " + scaling(d3)}}},
      {"AnEmptyClusterSaysWhyItCannotPlace",
       [] { return no_capacity(t0 - 1, std::nullopt); },
       {.events = {no_room}}},
      {"ThePlacementFailureIsSaidOnceInFiveMinutes",
       [] { return no_capacity(t0 - 1, t0 - 60); },
       {}},
      {"PlacementIsTriedAgainAfterAMoment",
       [] { return no_capacity(t0 - 5, t0 - 301); },
       {.starts = {d2 + " web:2 x2"}, .events = {no_room}}},
      {"AnUnreadableLoadBalancerHoldsTheRollout",
       [] {
         auto s = rolling(3, 3, 100, 200);
         for (const std::string id : {"t1", "t2", "t3"}) s.tasks.push_back(task(id, d2, 50));
         s.backends[0] = {"web", false, "cannot reach HAProxy", {}};
         return s;
       },
       {.events = {"is unable to register targets with (load balancer web): cannot reach "
                   "HAProxy [again]"}}},
      {"ADrainingInstanceFirstGetsReplacementsWithin200Percent",
       [] { return on_c(with_replacement(false), {"t3"}); },
       {.starts = {d2 + " web:2 x1"}}},
      {"ADrainingInstancesTaskStopsOnceItsReplacementIsUp",
       [] { return on_c(with_replacement(true), {"t3"}); },
       {.drains = {"t3 on web: " + drained}}},
      {"ADrainingInstancesTaskWaitsForItsReplacementToComeUp",
       [] {
         auto s = on_c(with_replacement(true), {"t3"});
         s.backends[0].targets.back().state = rc::target_state::down;
         return s;
       },
       {}},
      {"ADrainingInstance50To100StopsHalfFirst",
       [] {
         auto s = on_c(serving(4, 4), {"t1", "t2", "t3", "t4"});
         s.service.minimum_healthy_percent = 50;
         s.service.maximum_percent = 100;
         return s;
       },
       {.drains = {"t1 on web: " + drained, "t2 on web: " + drained}}},
      {"ADrainingInstance50To100StartsOnceHalfIsGone",
       [] {
         auto s = on_c(serving(4, 4), {"t3", "t4"});
         s.tasks.erase(s.tasks.begin(), s.tasks.begin() + 2);  // t1 and t2 stopped
         s.backends[0].targets.erase(s.backends[0].targets.begin(),
                                     s.backends[0].targets.begin() + 2);
         s.service.minimum_healthy_percent = 50;
         s.service.maximum_percent = 100;
         return s;
       },
       {.starts = {d2 + " web:2 x2"}}},
      {"APendingTaskOnADrainingInstanceStopsAtOnce",
       [] {
         auto s = serving(3, 2);
         s.tasks.push_back(pending("t3", d2));
         return on_c(s, {"t3"});
       },
       {.starts = {d2 + " web:2 x1"}, .stops = {"t3: " + drained}}},
      {"AnOldDeploymentsTaskOnADrainingInstanceGoesAsAnOldOne",
       [] {
         auto s = rolling(3, 3, 100, 200);
         for (const std::string id : {"t1", "t2", "t3"}) {
           s.tasks.push_back(task(id, d2, 50));
           s.backends[0].targets.push_back(target(id));
         }
         return on_c(s, {"o3"});
       },
       {.drains = {"o1 on web: " + scaling(d2), "o2 on web: " + scaling(d2),
                   "o3 on web: " + drained}}},
      {"ActiveAgainStopsNothingMore",
       [] { return on_c(with_replacement(false), {"t3"}, false); },
       {},
       true},
      {"ActiveAgainMidDrainKeepsTheInstancesTask",
       [] { return on_c(with_replacement(true), {"t3"}, false); },
       {.drains = {"t4 on web: " + scaling(d2)}}},
      {"DeletingStopsEverything",
       [] {
         auto s = serving(0, 2);
         s.service.deleting = true;
         return s;
       },
       {.drains = {"t1 on web: Service is being deleted", "t2 on web: Service is being deleted"}},
       true},
      {"DeletedOnceNothingIsLeft",
       [] {
         auto s = service(0);
         s.service.deleting = true;
         return s;
       },
       {.events = {"has been deleted."}},
       true},
  };
  return all;
}

// ctest lists a row by its name, not its bytes.
void PrintTo(const row& r, std::ostream* os) { *os << r.name; }

class ReconcileTest : public testing::TestWithParam<row> {};

TEST_P(ReconcileTest, Plan) {
  const row& r = GetParam();
  const rc::snapshot s = r.given();
  const rc::plan p = rc::reconcile(s);
  const rendered got = render(p);
  EXPECT_EQ(got.starts, r.want.starts);
  EXPECT_EQ(got.stops, r.want.stops);
  EXPECT_EQ(got.drains, r.want.drains);
  EXPECT_EQ(got.targets, r.want.targets);
  EXPECT_EQ(got.events, r.want.events);
  EXPECT_EQ(got.transitions, r.want.transitions);
  EXPECT_EQ(p.steady, r.steady);
  // Pure: the same snapshot, the same plan.
  EXPECT_EQ(render(rc::reconcile(s)).events, got.events);
}

INSTANTIATE_TEST_SUITE_P(Rows, ReconcileTest, testing::ValuesIn(rows()),
                         [](const testing::TestParamInfo<row>& i) { return i.param.name; });

// The rollback's record: the new primary first, on the last good revision; the tripped one
// ACTIVE and FAILED; the service's task definition back.
TEST(ReconcileRecordTest, RollbackMakesANewPrimaryFromTheLastGoodRevision) {
  const rc::plan p = rc::reconcile(tripping(true, "EssentialContainerExited"));
  ASSERT_EQ(p.deployments.size(), 3u);
  EXPECT_EQ(p.deployments[0].id, next_id);
  EXPECT_EQ(p.deployments[0].status, rc::deployment_status::primary);
  EXPECT_EQ(p.deployments[0].task_definition, td1);
  EXPECT_EQ(p.deployments[0].rollout, rc::rollout_state::in_progress);
  EXPECT_EQ(p.deployments[0].created_at, t0);
  EXPECT_EQ(p.deployments[1].id, d2);
  EXPECT_EQ(p.deployments[1].status, rc::deployment_status::active);
  EXPECT_EQ(p.deployments[1].rollout, rc::rollout_state::failed);
  EXPECT_EQ(p.deployments[1].failed_tasks, 3);
  EXPECT_EQ(p.deployments[1].rollout_reason,
            "ECS deployment circuit breaker: tasks failed to start.");
  EXPECT_EQ(p.task_definition, td1);
  EXPECT_FALSE(p.steady);
  EXPECT_TRUE(p.busy);
}

// Counts per deployment, old deployments without tasks dropped, the last good revision kept.
TEST(ReconcileRecordTest, CountsAndFinishedDeployments) {
  rc::snapshot s = rolling(3, 0, 100, 200);
  for (const std::string id : {"t1", "t2", "t3"}) {
    s.tasks.push_back(task(id, d2, 50));
    s.backends[0].targets.push_back(target(id));
  }
  s.tasks.push_back(pending("t4", d2));  // one too many: stopped, but counted this pass
  const rc::plan p = rc::reconcile(s);
  ASSERT_EQ(p.deployments.size(), 1u);  // d1 had no tasks left
  EXPECT_EQ(p.deployments[0].running_count, 3);
  EXPECT_EQ(p.deployments[0].pending_count, 1);
  EXPECT_EQ(p.running_count, 3);
  EXPECT_EQ(p.pending_count, 1);
  EXPECT_EQ(render(p).stops, std::vector<std::string>{"t4: " + scaling(d2)});
  // Not steady while the extra one is still there.
  EXPECT_FALSE(p.steady);
  EXPECT_FALSE(p.last_good.has_value());
}

}  // namespace
