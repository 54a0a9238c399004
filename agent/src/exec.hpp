// BerthV1.ExecuteCommand: a command in a running task's container, its stdin, stdout and stderr
// carried over the request's own connection once berthd answers 101 Switching Protocols (what
// `berthctl execute-command` speaks; ECS's ExecuteCommand needs AWS's Session Manager instead,
// and berthd answers it with an error that points here).
//
// The request holds ECS's ExecuteCommand members (cluster, task, container, command,
// interactive) and Berth's `tty` (a terminal, `rows` by `cols`). As on ECS, the task must be
// RUNNING and have been started with enableExecuteCommand; here it must also run on this
// instance. The command is split into words as a shell would (quotes, backslashes) but no shell
// runs it: "sh -c '...'" for pipes and variables.
//
// After the 101 both sides send frames (berth/agent/exec_frames.hpp, Docker's framing of an
// exec's output): berthctl the command's stdin (interactive only) and, on a terminal, its new
// size whenever the local one changes; closing its sending side (shutdown SHUT_WR) ends the
// stdin. berthd sends the output (stdout and stderr apart; a tty has only stdout), then one last
// frame: the command's exit code, or why berthd could not carry the session to its end.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "berth/agent/exec_frames.hpp"
#include "ecs_request.hpp"
#include "service.hpp"

namespace berth::agent::exec {

// A task of this instance (DescribeTasks') and one of its containers: `container` names it, or
// is empty for a task's only one. TargetNotConnectedException when the task runs on another
// instance (its message: "…: <elsewhere> that instance's berthd"); InvalidParameterException
// when there is no such task or container.
struct located {
  json task, container;
};
tl::expected<located, api_error> locate(service& svc, const std::string& cluster,
                                        const std::string& task, const std::string& container,
                                        const std::string& elsewhere);

// Finds the container, checks it may be entered and creates the exec in it (not yet started).
// The function carries the session on the upgraded connection `fd` until the command ends or
// the client goes; it owns nothing of the service but Docker, which must outlive it.
tl::expected<std::function<void(int fd)>, api_error> open(service& svc, const json& request);

// BerthV1.TailContainerLogs: the last `lines` (1 to 10,000; 100) lines a container of a task on
// this instance wrote, stdout and stderr interleaved as Docker keeps them: {taskArn, container,
// lines}. An administrator's call (berthd refuses it to read-only keys: logs may hold secrets).
tl::expected<json, api_error> tail_logs(service& svc, const json& request);

// The command's words, as a shell splits them: blanks separate, '...' keeps everything, "..."
// and a backslash escape. An error names an unterminated quote.
tl::expected<std::vector<std::string>, std::string> split_command(std::string_view text);

}  // namespace berth::agent::exec
