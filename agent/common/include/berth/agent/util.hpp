// Small helpers the agent's parts share: the time, ids, and names out of ARNs.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>

namespace berth::agent {

// Seconds since the epoch, as ECS's timestamps (JSON numbers) carry them.
inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

inline std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

// n random lowercase hex digits (not for secrets: a per-thread Mersenne twister).
inline std::string random_hex(std::size_t n) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) out += hex[rng() % 16];
  return out;
}

// A random id shaped 8-4-4-4-12, as ECS's request and event ids.
inline std::string uuid() {
  std::string h = random_hex(32);
  for (const std::size_t at : {8, 13, 18, 23}) h.insert(at, 1, '-');
  return h;
}

// The last path part of an ARN ("arn:aws:ecs:…:service/default/web" → "web"), or the name
// itself.
inline std::string name_of(const std::string& s) {
  if (!s.starts_with("arn:")) return s;
  const auto slash = s.rfind('/');
  return slash == std::string::npos ? s : s.substr(slash + 1);
}

}  // namespace berth::agent
