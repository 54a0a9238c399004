// Task scale-in protection, as ECS has it: UpdateTaskProtection protects a service's tasks (for
// expiresInMinutes, 1 to 2,880, 120 when not given) from the scale-ins and deployments of their
// service; GetTaskProtection reports it. Kept in the store (records::protections), where the
// loop reads it into each snapshot (rc::task::protected_until), so the leader on any agent
// honours what any agent was told.
#pragma once

#include "records.hpp"

namespace berth::agent::sched {

// Each call's cluster is resolved already (the action's ClusterNotFoundException is the caller's).
tl::expected<json, api_error> get_task_protection(records& recs, task_api& tasks,
                                                  const std::string& cluster,
                                                  const ecs::get_task_protection_request& r);
tl::expected<json, api_error> update_task_protection(records& recs, task_api& tasks,
                                                     const std::string& cluster,
                                                     const ecs::update_task_protection_request& r);

}  // namespace berth::agent::sched
