// Container instances registered and deregistered through the API, as ECS's
// RegisterContainerInstance and DeregisterContainerInstance:
// - Deregister makes the instance INACTIVE: nothing is placed or claimed there any more, and
//   ListContainerInstances leaves it out. With tasks not yet STOPPED on it, it is refused unless
//   `force`, which STOPs them (services replace them elsewhere; the instance's agent, if it
//   still runs, stops their containers). Its agent registers it again when it restarts.
// - Register writes the record of an instance whose agent has not started yet (agentConnected
//   false, nothing placed there): the resources and attributes it will offer. The berthd whose
//   <state-dir>/instance-id holds its id takes it over when it starts.
//
// Thread safety: deregister under the task table's mutex (it reads and writes tasks).
#pragma once

#include "berth/agent/common.hpp"
#include "ecs_request.hpp"
#include "fleet.hpp"
#include "store.hpp"
#include "task_table.hpp"

namespace berth::agent::control {

outcome deregister_container_instance(fleet& instances, state::task_table& table, const member& m,
                                      bool force);

// `cluster`: this agent's (the fleet's). `arn_prefix`: "arn:aws:ecs:<region>:<account>:".
outcome register_container_instance(fleet& instances, store& st, const std::string& cluster,
                                    const std::string& arn_prefix,
                                    const ecs::register_container_instance_request& r);

}  // namespace berth::agent::control
