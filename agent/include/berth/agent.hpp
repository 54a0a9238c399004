// berthd, the node agent: its configuration read from flags, environment and file (the
// struct is in berth/agent/common.hpp), and the daemon that serves the ECS API.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "berth/agent/common.hpp"

namespace berth::agent {

// Reads flags, environment and the config file. A bad key or value is an error naming it.
result<config> load_config(int argc, const char* const* argv,
                           const std::map<std::string, std::string>& environment);

// The running agent. start() returns once it serves; stop() shuts it down cleanly and leaves
// its tasks' containers running.
class daemon {
 public:
  virtual ~daemon() = default;
  virtual void stop() = 0;
  // Blocks until stop() or a SIGTERM/SIGINT handled by the caller.
  virtual void wait() = 0;
};
result<std::unique_ptr<daemon>> start(const config& c);

}  // namespace berth::agent
