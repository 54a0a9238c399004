// How tasks are shown outside the ECS API, from a task's record (state::task: ECS's Task with
// Berth's bookkeeping): the event stream's events, the ECS agent's introspection API, and what
// each container uses now, read from its cgroup. Pure functions of the record, but for the
// cgroup reads; callable from any thread.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "task_record.hpp"

namespace berth::agent::observe {

using nlohmann::json;

// EventBridge's "ECS Task State Change": detail is the task as DescribeTasks shows it, with
// times as ISO strings and environment values hidden.
json task_event(const state::task& task, const std::string& account_id, const std::string& region);

// The ECS agent's /v1/tasks entry for a task.
json introspect(const state::task& task);

// The tasks with a container whose Docker id is `docker_id`, or starts with it when it has at
// most 12 characters (Docker's short id), as the ECS agent's ?dockerid= finds them.
std::vector<const state::task*> tasks_with_container(
    const std::vector<std::shared_ptr<const state::task>>& tasks, const std::string& docker_id);

// Per container name: memory and CPU used, read from the container's cgroup (found from its pid,
// checked to still be the container's), beside its limits. Empty for a STOPPED task.
json usage_of(const state::task& task);

}  // namespace berth::agent::observe
