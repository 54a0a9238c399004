// The frames of a BerthV1.ExecuteCommand session (agent/src/exec.hpp), both ways, as Docker
// frames an exec's output: a type byte, three zero bytes, the data's length as 32 bits
// big-endian, the data. berthd (agent/src/exec.cpp) and berthctl (agent/cli/exec_command.cpp)
// both write and read them through this header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace berth::agent::exec {

// berthctl to berthd: the command's stdin, and the terminal's new size ("rows cols").
inline constexpr std::uint8_t frame_stdin = 0;
inline constexpr std::uint8_t frame_resize = 5;
// berthd to berthctl: the command's output, then one last frame: its exit code (decimal text),
// or why berthd could not carry the session to its end (text).
inline constexpr std::uint8_t frame_stdout = 1;
inline constexpr std::uint8_t frame_stderr = 2;
inline constexpr std::uint8_t frame_exit = 3;
inline constexpr std::uint8_t frame_error = 4;

// One frame's bytes.
inline std::string frame(std::uint8_t type, std::string_view data) {
  std::string out(8, '\0');
  out[0] = static_cast<char>(type);
  const auto n = static_cast<std::uint32_t>(data.size());
  out[4] = static_cast<char>(n >> 24);
  out[5] = static_cast<char>(n >> 16);
  out[6] = static_cast<char>(n >> 8);
  out[7] = static_cast<char>(n);
  out.append(data);
  return out;
}

// The first whole frame of `in` (its type and data), taken off it; nothing while `in` holds
// less than one frame.
inline std::optional<std::pair<std::uint8_t, std::string>> take_frame(std::string& in) {
  if (in.size() < 8) return std::nullopt;
  const auto* b = reinterpret_cast<const unsigned char*>(in.data());
  const std::size_t len = (std::size_t{b[4]} << 24) | (std::size_t{b[5]} << 16) |
                          (std::size_t{b[6]} << 8) | std::size_t{b[7]};
  if (in.size() < 8 + len) return std::nullopt;
  std::pair<std::uint8_t, std::string> out{b[0], in.substr(8, len)};
  in.erase(0, 8 + len);
  return out;
}

}  // namespace berth::agent::exec
