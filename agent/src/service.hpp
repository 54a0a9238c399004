// The ECS service berthd implements: the API's actions over the store, the ledger, placement and
// Docker, and the task engine that drives containers through their lifecycle.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "berth/agent.hpp"
#include "berth/docker.hpp"
#include "store.hpp"

namespace berth::agent {

using nlohmann::json;

// An ECS error: its __type, message and HTTP status.
struct api_error {
  std::string type;
  std::string message;
  int status = 400;
};

class service {
 public:
  virtual ~service() = default;
  // Runs one action; the response document, or the ECS error.
  virtual tl::expected<json, api_error> call(const std::string& action, const json& request) = 0;
  // Stops the task engine's threads; containers keep running.
  virtual void shutdown() = 0;
};

// Creates the cluster if needed, registers this instance, recovers tasks from the store and
// Docker, and starts the engine.
result<std::unique_ptr<service>> make_service(const config& c, std::unique_ptr<store> s,
                                              std::unique_ptr<docker::engine> d);

}  // namespace berth::agent
