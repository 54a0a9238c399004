// The tasks of instances whose agent has been gone past --instance-lost-after are STOPPED, as
// ECS stops those of a terminated host ("Host EC2 (instance i-...) stopped/terminated"), so
// that services replace them. Any agent may do it: the writes are compared and swapped, and the
// same whoever makes them.
//
// Thread safety: under the task table's mutex. Also DeregisterContainerInstance's force.
#pragma once

#include "berth/agent/common.hpp"
#include "fleet.hpp"
#include "task_table.hpp"

namespace berth::agent::control {

void stop_lost_tasks(const config& cfg, const fleet& instances, state::task_table& table);

// Every task on the instance that is not STOPPED yet, STOPPED in the store with `stop_code` and
// `reason` (its agent, if it still runs, stops the containers when it reads that). Returns how
// many; one that could not be written is logged and counted out.
std::size_t stop_tasks_on(state::task_table& table, const std::string& instance_arn,
                          const std::string& stop_code, const std::string& reason);

}  // namespace berth::agent::control
