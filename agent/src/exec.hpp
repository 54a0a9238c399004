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
// After the 101 the client's bytes are the command's stdin (interactive only); closing its
// sending side (shutdown SHUT_WR) ends the stdin. berthd's bytes are frames as Docker frames an
// exec's output: a type byte, three zero bytes, the length as 32 bits big-endian, the data.
// Types: 1 stdout, 2 stderr (a tty has only 1), then one last frame: 3 the command's exit code
// (decimal text), or 4 why berthd could not carry the session to its end (text).
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "ecs_request.hpp"
#include "service.hpp"

namespace berth::agent::exec {

inline constexpr std::uint8_t frame_stdout = 1;
inline constexpr std::uint8_t frame_stderr = 2;
inline constexpr std::uint8_t frame_exit = 3;
inline constexpr std::uint8_t frame_error = 4;

// Finds the container, checks it may be entered and creates the exec in it (not yet started).
// The function carries the session on the upgraded connection `fd` until the command ends or
// the client goes; it owns nothing of the service but Docker, which must outlive it.
tl::expected<std::function<void(int fd)>, api_error> open(service& svc, const json& request);

// The command's words, as a shell splits them: blanks separate, '...' keeps everything, "..."
// and a backslash escape. An error names an unterminated quote.
tl::expected<std::vector<std::string>, std::string> split_command(std::string_view text);

// One frame's bytes.
std::string frame(std::uint8_t type, std::string_view data);

}  // namespace berth::agent::exec
