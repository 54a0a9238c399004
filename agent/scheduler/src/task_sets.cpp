// Task sets: see task_sets.hpp.
#include "task_sets.hpp"

#include <algorithm>
#include <cmath>

#include "berth/agent/util.hpp"

namespace berth::agent::sched {

namespace {

using control::invalid;

api_error not_found(const std::string& ref) {
  return {"TaskSetNotFoundException", "The specified task set does not exist: " + ref};
}

// ceil(desiredCount x scale%), as ECS computes it.
std::int32_t computed(const state::service& s, const ecs::task_set& t) {
  const double pct = t.scale && t.scale->value ? *t.scale->value : 100.0;
  return static_cast<std::int32_t>(std::ceil(s.desired_count * pct / 100.0 - 1e-9));
}

tl::expected<ecs::scale, api_error> checked(const std::optional<ecs::scale>& given) {
  ecs::scale out{100.0, "PERCENT"};
  if (!given) return out;
  if (given->unit && *given->unit != "PERCENT") {
    return tl::unexpected(invalid("scale.unit must be PERCENT"));
  }
  if (given->value) {
    if (!(*given->value >= 0.0 && *given->value <= 100.0)) {
      return tl::unexpected(invalid("scale.value must be between 0 and 100"));
    }
    out.value = *given->value;
  }
  return out;
}

// The set `ref` names (its id or ARN).
ecs::task_set* find_set(state::service& s, const std::string& ref) {
  for (auto& t : s.task_sets) {
    if (t.id == ref || t.task_set_arn == ref) return &t;
  }
  return nullptr;
}

state::deployment* deployment_of_set(state::service& s, const ecs::task_set& t) {
  for (auto& d : s.deployments) {
    if (d.id == t.id) return &d;
  }
  return nullptr;
}

// The set's count, on it and on its deployment.
void apply_scale(state::service& s, ecs::task_set& t, double now) {
  t.computed_desired_count = computed(s, t);
  t.updated_at = now;
  if (auto* d = deployment_of_set(s, t)) {
    d->desired_count = *t.computed_desired_count;
    d->updated_at = now;
    if (d->rollout_state == "COMPLETED") d->rollout_state = "IN_PROGRESS";
  }
  s.berth.steady = false;
}

}  // namespace

tl::expected<ecs::task_set, api_error> create_task_set(state::service& s,
                                                       const ecs::create_task_set_request& r,
                                                       const std::string& task_definition,
                                                       const std::string& id, double now) {
  if (s.deployment_controller.type != "EXTERNAL") {
    return tl::unexpected(invalid(
        "Task sets are for services whose deploymentController is EXTERNAL; this one's is " +
        s.deployment_controller.type + "."));
  }
  BERTH_TRY(scale, checked(r.scale));
  ecs::task_set t;
  t.id = id;
  t.task_set_arn = s.service_arn.substr(0, s.service_arn.find(":service/") + 1) + "task-set/" +
                   name_of(s.cluster_arn) + "/" + s.service_name + "/" + id;
  t.service_arn = s.service_arn;
  t.cluster_arn = s.cluster_arn;
  t.external_id = r.external_id;
  // The first set is the service's primary; the rest wait for UpdateServicePrimaryTaskSet.
  t.status = s.task_sets.empty() ? "PRIMARY" : "ACTIVE";
  t.task_definition = task_definition;
  t.scale = scale;
  t.pending_count = 0;
  t.running_count = 0;
  t.created_at = now;
  t.launch_type = "EC2";
  t.load_balancers = s.load_balancers;
  t.stability_status = "STABILIZING";
  t.stability_status_at = now;
  if (r.tags) t.tags = r.tags;
  state::deployment d;
  d.id = id;
  d.status = *t.status;
  d.task_definition = task_definition;
  d.created_at = d.updated_at = now;
  d.rollout_state = "IN_PROGRESS";
  d.rollout_state_reason = "ECS deployment " + id + " in progress.";
  s.deployments.insert(s.deployments.begin(), d);
  if (*t.status == "PRIMARY") s.task_definition = task_definition;
  s.task_sets.push_back(t);
  apply_scale(s, s.task_sets.back(), now);
  records::event(s, "has started a new task set " + id + " of " +
                        task_definition.substr(task_definition.rfind('/') + 1) + ".");
  return s.task_sets.back();
}

tl::expected<ecs::task_set, api_error> update_task_set(state::service& s,
                                                       const std::string& task_set,
                                                       const ecs::scale& scale, double now) {
  ecs::task_set* t = find_set(s, task_set);
  if (t == nullptr || t->status == "DRAINING") return tl::unexpected(not_found(task_set));
  BERTH_TRY(checked_scale, checked(scale));
  t->scale = checked_scale;
  apply_scale(s, *t, now);
  return *t;
}

tl::expected<ecs::task_set, api_error> delete_task_set(state::service& s,
                                                       const std::string& task_set, bool force,
                                                       double now) {
  ecs::task_set* t = find_set(s, task_set);
  if (t == nullptr || t->status == "DRAINING") return tl::unexpected(not_found(task_set));
  if (t->status == "PRIMARY" && !force) {
    return tl::unexpected(invalid(
        "The task set is the service's primary: make another one primary first, or use force."));
  }
  if (t->scale && t->scale->value.value_or(0) > 0 && !force) {
    return tl::unexpected(
        invalid("The task set is scaled above 0: scale it to 0 first (UpdateTaskSet), or use "
                "force."));
  }
  t->status = "DRAINING";
  t->updated_at = now;
  if (auto* d = deployment_of_set(s, *t)) {
    d->status = "INACTIVE";
    d->desired_count = 0;
    d->updated_at = now;
  }
  s.berth.steady = false;
  records::event(s, "is deleting task set " + t->id.value_or("") + ".");
  return *t;
}

tl::expected<ecs::task_set, api_error> make_primary(state::service& s, const std::string& task_set,
                                                    double now) {
  ecs::task_set* t = find_set(s, task_set);
  if (t == nullptr || t->status == "DRAINING") return tl::unexpected(not_found(task_set));
  for (auto& other : s.task_sets) {
    if (other.status == "PRIMARY") other.status = "ACTIVE";
  }
  for (auto& d : s.deployments) {
    if (d.status == "PRIMARY") d.status = "ACTIVE";
    if (d.id == t->id) d.status = "PRIMARY";
  }
  t->status = "PRIMARY";
  t->updated_at = now;
  s.task_definition = t->task_definition.value_or("");
  return *t;
}

json describe_task_sets(const state::service& s, const std::vector<std::string>& names, bool tags) {
  json out = {{"taskSets", json::array()}, {"failures", json::array()}};
  const auto shown = [&](const ecs::task_set& t) {
    json j = ecs::to_json(t);
    if (!tags) j.erase("tags");
    out["taskSets"].push_back(std::move(j));
  };
  if (names.empty()) {
    for (const auto& t : s.task_sets) shown(t);
    return out;
  }
  for (const auto& ref : names) {
    const auto it = std::find_if(s.task_sets.begin(), s.task_sets.end(), [&](const auto& t) {
      return t.id == ref || t.task_set_arn == ref;
    });
    if (it == s.task_sets.end()) {
      out["failures"].push_back({{"arn", ref}, {"reason", "MISSING"}});
    } else {
      shown(*it);
    }
  }
  return out;
}

void rescale_task_sets(state::service& s) {
  const double now = now_seconds();
  for (auto& t : s.task_sets) {
    if (t.status != "DRAINING") apply_scale(s, t, now);
  }
}

void sync_task_sets(state::service& s, double now) {
  std::erase_if(s.task_sets, [&](ecs::task_set& t) {
    const state::deployment* d = deployment_of_set(s, t);
    if (d == nullptr) return t.status == "DRAINING";
    t.running_count = d->running_count;
    t.pending_count = d->pending_count;
    const std::string stability =
        d->running_count == t.computed_desired_count.value_or(0) && d->pending_count == 0
            ? "STEADY_STATE"
            : "STABILIZING";
    if (t.stability_status != stability) {
      t.stability_status = stability;
      t.stability_status_at = now;
    }
    return false;
  });
}

}  // namespace berth::agent::sched
