// A task's container as Docker is asked to make it, from the task's record and its container
// definition: image, command and overrides, environment, limits, ports, volumes, health check,
// namespaces and Linux parameters, and the labels that make the container the task's.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "berth/docker.hpp"

namespace berth::agent::engine {

using nlohmann::json;

// Where the container is made: what its labels and port bindings carry.
struct spec_context {
  std::string cluster;
  std::string instance_arn;
  std::string state_dir;  // absolute
  std::string host_ip;    // where container ports are published
};

// `ns_owner`: the Docker id of the task's first container, whose namespaces pidMode and ipcMode
// "task" share; empty while that one is being made. A pure function of its arguments.
docker::container_spec container_spec(const json& task, const json& container, const json& td,
                                      const std::string& ns_owner, const spec_context& ctx);

}  // namespace berth::agent::engine
