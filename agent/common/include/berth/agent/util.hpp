// Small helpers the agent's parts share: the time, ids, names out of ARNs, reading records
// (JSON documents) that may lack a member, and small files written whole.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "berth/agent/common.hpp"

namespace berth::agent {

using nlohmann::json;

// Lets `lock` go for a scope (a store round trip, say) and takes it again when the scope ends,
// by return or by exception.
class unlocked {
 public:
  explicit unlocked(std::unique_lock<std::mutex>& lock) : lock_(lock) { lock_.unlock(); }
  ~unlocked() { lock_.lock(); }
  unlocked(const unlocked&) = delete;
  unlocked& operator=(const unlocked&) = delete;

 private:
  std::unique_lock<std::mutex>& lock_;
};

// Seconds since the epoch, as ECS's timestamps (JSON numbers) carry them: to the millisecond, as
// AWS's. Finer, a timestamp's JSON text (nlohmann's Grisu2) is not always the shortest one for
// its value, and the AWS SDK for JavaScript then reads it as a big decimal and refuses it as a
// timestamp; a whole number of milliseconds prints as its shortest form.
inline double now_seconds() {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::system_clock::now().time_since_epoch());
  return static_cast<double>(ms.count()) / 1000.0;
}

// "2026-11-25T14:07:46.123Z" (with milliseconds) or without the fraction.
inline std::string iso8601(double seconds, bool millis) {
  const auto whole = static_cast<std::time_t>(seconds);
  std::tm tm{};
  gmtime_r(&whole, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::string out = buf;
  if (millis) {
    char ms[8];
    std::snprintf(ms, sizeof ms, ".%03d",
                  static_cast<int>((seconds - static_cast<double>(whole)) * 1000) % 1000);
    out += ms;
  }
  return out + "Z";
}

inline std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

// n random lowercase hex digits (not for secrets: a per-thread Mersenne twister).
// The pause before trying a failing write again, after `failures` (1 or more) in a row: 50 ms,
// doubling to 800 ms.
inline std::chrono::milliseconds retry_pause(int failures) {
  return std::chrono::milliseconds(50 << std::clamp(failures - 1, 0, 4));
}

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

// The task group of a service record's tasks: "service:<name>", as ECS's; a daemon's record
// (named "daemon:<name>", agent/scheduler/src/daemons.hpp) is its own group.
inline std::string service_group(const std::string& record_name) {
  return record_name.starts_with("daemon:") ? record_name : "service:" + record_name;
}

// j[k], or null when j is not an object or has no k.
inline const json& member(const json& j, const char* k) {
  static const json null;
  const auto it = j.find(k);
  return it == j.end() ? null : *it;
}

// A task definition's containers in an order where each comes after those it depends on
// (dependsOn); shorter than the list when dependsOn has a cycle.
inline std::vector<const json*> start_order(const json& containers) {
  std::vector<const json*> out;
  std::set<std::string> placed;
  for (std::size_t round = 0; round < containers.size(); ++round) {
    for (const auto& c : containers) {
      if (placed.contains(c["name"])) continue;
      bool ready = true;
      for (const auto& d : member(c, "dependsOn").is_array() ? c["dependsOn"] : json::array()) {
        ready &= placed.contains(d["containerName"]);
      }
      if (!ready) continue;
      placed.insert(c["name"]);
      out.push_back(&c);
    }
  }
  return out;
}

// Writes `text` to `path` whole or not at all (mode 0600): a temporary file, fsynced, renamed
// over it, and the directory fsynced so that the rename survives a crash too.
inline result<void> write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  const auto failed = [](const std::string& what) {
    return tl::unexpected(error{what + ": " + std::strerror(errno)});
  };
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return failed("open " + tmp);
  const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  const bool synced = written && ::fsync(fd) == 0;
  ::close(fd);
  if (!synced || ::rename(tmp.c_str(), path.c_str()) != 0) {
    auto e = failed((written ? synced ? "rename " : "fsync " : "write ") + tmp);
    ::unlink(tmp.c_str());
    return e;
  }
  const std::string dir = std::filesystem::path(path).parent_path().string();
  if (const int d = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      d >= 0) {
    (void)::fsync(d);
    ::close(d);
  }
  return {};
}

}  // namespace berth::agent
