// berthctl execute-command: a command in a running task's container, through berthd's
// BerthV1.ExecuteCommand (the protocol: agent/src/exec.hpp). With --interactive, berthctl's
// stdin is the command's; on a terminal, the command gets one too (the local one in raw mode
// meanwhile).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace berthctl {

struct exec_outcome {
  bool reached = true;   // false: berthd's socket did not answer (`error` says why)
  bool started = false;  // berthd answered 101 and the session ran
  long status = 0;       // otherwise its answer
  std::string body;
  int exit_code = -1;  // the command's, once it ended
  std::string error;   // why the session ended without an exit code
};

// `request`: ECS's ExecuteCommand members; berthctl adds the terminal's.
exec_outcome execute_command(const std::string& socket, nlohmann::json request, bool interactive);

}  // namespace berthctl
