// The tasks of instances whose agent has been gone past --instance-lost-after are STOPPED, as
// ECS stops those of a terminated host ("Host EC2 (instance i-...) stopped/terminated"), so
// that services replace them. Any agent may do it: the writes are compared and swapped, and the
// same whoever makes them.
//
// Thread safety: under the task table's mutex.
#pragma once

#include "berth/agent/common.hpp"
#include "fleet.hpp"
#include "task_table.hpp"

namespace berth::agent::control {

void stop_lost_tasks(const config& cfg, const fleet& instances, state::task_table& table);

}  // namespace berth::agent::control
