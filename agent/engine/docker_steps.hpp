// The task engine's steps against Docker that need nothing of its state: a container made (or
// taken over after a crash), the limits the kernel enforces checked, a stopped task's leftovers
// removed, and the containers no record knows found at start.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <tl/expected.hpp>
#include <vector>

#include "berth/agent/common.hpp"
#include "berth/docker.hpp"
#include "task_record.hpp"

namespace berth::agent::engine {

// Makes the container `s` describes: pulled first when its image is missing (which fails fast
// without a registry); one of that name already there (made before a crash, or still being
// made by dockerd) is taken over, asked for up to 10 s. `pause(d)` waits d between asks and
// returns false when the engine stops. Returns the container's id.
tl::expected<std::string, docker::error> make_container(
    docker::engine& d, const docker::container_spec& s,
    const std::function<bool(std::chrono::milliseconds)>& pause);

// What the kernel's cgroup shows that differs from what Docker was asked for (one line each).
std::vector<std::string> unenforced_limits(const docker::container_spec& s,
                                           const docker::container_info& running);

// The Docker volumes a task owns: its task definition's volumes without a host path.
std::vector<std::string> task_volumes(const state::task& task);

// Removes a stopped task's containers (`docker`: container name -> id) and volumes. False when
// something is left (logged): tried again later.
bool remove_task_leftovers(docker::engine& d, const std::string& task_arn,
                           const std::map<std::string, std::string>& docker,
                           const std::vector<std::string>& volumes);

// Containers labelled for this instance (or made by a berthd with this state directory) whose
// task `known` does not know: a store lost, emptied or restored from an old copy while tasks
// ran. Never passed over in silence: refused (an error naming them), removed or left, as
// `c.unknown_containers` says.
result<void> check_unknown_containers(docker::engine& d, const config& c,
                                      const std::string& instance_arn, const std::string& state_dir,
                                      const std::function<bool(const std::string&)>& known);

}  // namespace berth::agent::engine
