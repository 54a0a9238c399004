// Task sets, the EXTERNAL deployment controller's unit (CreateTaskSet, UpdateTaskSet,
// DeleteTaskSet, DescribeTaskSets, UpdateServicePrimaryTaskSet): what custom deployment tools
// (blue/green) drive. A task set is ECS's TaskSet in the service's record beside a deployment
// of the same id ("ecs-svc/<digits>"), whose desiredCount is the set's computedDesiredCount,
// ceil(desiredCount x scale%); the scheduler keeps each deployment at its count (reconcile's
// external mode) and sync_task_sets() brings the counts back to the sets. A deleted set is
// DRAINING (its deployment INACTIVE) until its tasks are gone, then removed.
#pragma once

#include "records.hpp"

namespace berth::agent::sched {

// The changes to `s` each action makes, checked; the caller saves the record (compare-and-swap)
// and answers. `now` and `id` (a new set's) are the caller's.
tl::expected<ecs::task_set, api_error> create_task_set(state::service& s,
                                                       const ecs::create_task_set_request& r,
                                                       const std::string& task_definition,
                                                       const std::string& id, double now);
tl::expected<ecs::task_set, api_error> update_task_set(state::service& s,
                                                       const std::string& task_set,
                                                       const ecs::scale& scale, double now);
tl::expected<ecs::task_set, api_error> delete_task_set(state::service& s,
                                                       const std::string& task_set, bool force,
                                                       double now);
tl::expected<ecs::task_set, api_error> make_primary(state::service& s, const std::string& task_set,
                                                    double now);
// DescribeTaskSets' answer: the sets named (all when none is), failures for the rest.
json describe_task_sets(const state::service& s, const std::vector<std::string>& names, bool tags);

// The service's desired count changed: each set's computedDesiredCount and deployment follow.
void rescale_task_sets(state::service& s);
// After a pass wrote the deployments: each set's counts and stability from its deployment; a
// DRAINING set whose deployment is gone is removed.
void sync_task_sets(state::service& s, double now);

}  // namespace berth::agent::sched
