// GetTaskProtection and UpdateTaskProtection: see protection.hpp.
#include "protection.hpp"

#include "berth/agent/util.hpp"

namespace berth::agent::sched {

namespace {

using outcome = tl::expected<json, api_error>;
using control::invalid;

api_error stored_failed(const std::string& why) {
  return {"ServerException", "Task protection could not be read or stored: " + why, 500};
}

// The tasks named, described: those found and ECS's failures for the rest (MISSING).
tl::expected<ecs::describe_tasks_response, api_error> described(
    task_api& tasks, const std::string& cluster, const std::vector<std::string>& refs) {
  ecs::describe_tasks_request q;
  q.cluster = cluster;
  q.tasks = refs;
  return ask<ecs::describe_tasks_response>(tasks, "DescribeTasks", q);
}

// ECS's failure for a task protection cannot apply to: one not started by a service, or stopped.
std::optional<json> not_valid(const ecs::task& t) {
  const std::string arn = t.task_arn.value_or("");
  if (!t.group || !t.group->starts_with("service:")) {
    return json{{"arn", arn},
                {"reason", "TASK_NOT_VALID"},
                {"detail",
                 "The task is not part of a service: only a service's tasks are "
                 "protected from its scale-in."}};
  }
  if (t.last_status == "STOPPED" || t.desired_status == "STOPPED") {
    return json{{"arn", arn}, {"reason", "TASK_NOT_VALID"}, {"detail", "The task has stopped."}};
  }
  return std::nullopt;
}

json entry(const std::string& arn, std::optional<rc::seconds> until) {
  json e = {{"taskArn", arn}, {"protectionEnabled", until.has_value()}};
  if (until) e["expirationDate"] = *until;
  return e;
}

}  // namespace

outcome get_task_protection(records& recs, task_api& tasks, const std::string& cluster,
                            const ecs::get_task_protection_request& r) {
  const auto shields = recs.protections(cluster);
  if (!shields) return tl::unexpected(stored_failed("the store did not answer"));
  const rc::seconds now = now_seconds();
  const auto until = [&](const std::string& arn) -> std::optional<rc::seconds> {
    const auto it = shields->find(arn);
    if (it == shields->end() || it->second <= now) return std::nullopt;
    return it->second;
  };
  json out = {{"protectedTasks", json::array()}, {"failures", json::array()}};
  if (!r.tasks) {
    // No tasks named: the cluster's protected ones.
    for (const auto& [arn, end] : *shields) {
      if (end > now) out["protectedTasks"].push_back(entry(arn, end));
    }
    return out;
  }
  if (r.tasks->empty() || r.tasks->size() > 100) {
    return tl::unexpected(invalid("tasks must name between 1 and 100 tasks"));
  }
  BERTH_TRY(d, described(tasks, cluster, *r.tasks));
  for (const auto& t : items(d.tasks)) {
    if (auto bad = not_valid(t)) {
      out["failures"].push_back(std::move(*bad));
      continue;
    }
    out["protectedTasks"].push_back(entry(*t.task_arn, until(*t.task_arn)));
  }
  for (const auto& f : items(d.failures)) out["failures"].push_back(ecs::to_json(f));
  return out;
}

outcome update_task_protection(records& recs, task_api& tasks, const std::string& cluster,
                               const ecs::update_task_protection_request& r) {
  if (r.tasks.empty() || r.tasks.size() > 10) {
    return tl::unexpected(invalid("tasks must name between 1 and 10 tasks"));
  }
  // ECS's default is 2 hours; without protection the duration means nothing.
  const std::int32_t minutes = r.expires_in_minutes.value_or(120);
  if (r.protection_enabled && (minutes < 1 || minutes > 2880)) {
    return tl::unexpected(invalid("expiresInMinutes must be between 1 and 2880"));
  }
  BERTH_TRY(d, described(tasks, cluster, r.tasks));
  json out = {{"protectedTasks", json::array()}, {"failures", json::array()}};
  const std::optional<rc::seconds> until =
      r.protection_enabled ? std::optional<rc::seconds>(now_seconds() + minutes * 60.0)
                           : std::nullopt;
  for (const auto& t : items(d.tasks)) {
    if (auto bad = not_valid(t)) {
      out["failures"].push_back(std::move(*bad));
      continue;
    }
    if (auto w = recs.protect(cluster, *t.task_arn, until); !w) {
      return tl::unexpected(stored_failed(w.error().message));
    }
    out["protectedTasks"].push_back(entry(*t.task_arn, until));
  }
  for (const auto& f : items(d.failures)) out["failures"].push_back(ecs::to_json(f));
  return out;
}

}  // namespace berth::agent::sched
