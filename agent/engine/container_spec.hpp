// A task's container as Docker is asked to make it, from the task's record and its container
// definition: image, command and overrides, environment, limits, ports, volumes, health check,
// namespaces and Linux parameters, and the labels that make the container the task's.
#pragma once

#include <string>
#include <vector>

#include "berth/docker.hpp"
#include "task_record.hpp"

namespace berth::agent::engine {

// Where the container is made: what its labels and port bindings carry.
struct spec_context {
  std::string cluster;
  std::string instance_arn;
  std::string state_dir;  // absolute
  std::string host_ip;    // where container ports are published
};

// `ns_owner`: the Docker id of the task's first container, whose namespaces pidMode and ipcMode
// "task" share; empty while that one is being made. A pure function of its arguments.
docker::container_spec container_spec(const state::task& task,
                                      const ecs::container_definition& container,
                                      const ecs::task_definition& td, const std::string& ns_owner,
                                      const spec_context& ctx);

// A task definition's containers in an order where each comes after those it depends on
// (dependsOn); shorter than the list when dependsOn has a cycle.
std::vector<const ecs::container_definition*> start_order(
    const std::vector<ecs::container_definition>& containers);

}  // namespace berth::agent::engine
