// What a launch (RunTask, StartTask, BerthV1.Place) asks of placement, read from the task
// definition and the request: the task's need, its constraints and strategies, and the reason a
// refused ledger reservation stands for in ECS's words.
//
// Thread safety: free functions over values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "berth/ecs_model.hpp"
#include "berth/ipc.hpp"
#include "berth/placement.hpp"
#include "ecs_request.hpp"

namespace berth::agent::control {

namespace pl = berth::placement;

// What a task takes from its instance, as placement asks for it, and its static host ports.
struct task_need {
  pl::requirements req;
  std::vector<std::uint16_t> ports;
};

// The override of the container `name` (the last one naming it), if any.
const ecs::container_override* override_of(const ecs::task_override& o,
                                           const std::optional<std::string>& name);
// Task-level cpu/memory, else the containers' sum (with the overrides); ports and dynamic ports.
task_need need_of(const ecs::task_definition& td, const ecs::task_override& overrides);
// The task definition's placement constraints and the request's, and its strategies.
tl::expected<std::pair<std::vector<pl::constraint>, std::vector<pl::strategy>>, api_error>
placement_of(const ecs::run_task_request& req, const ecs::task_definition& td);
// A refused reservation as a placement failure's reason (RESOURCE:CPU, ..., INACTIVE).
std::string reserve_reason(ipc::error e);

}  // namespace berth::agent::control
