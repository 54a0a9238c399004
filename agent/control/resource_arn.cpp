// The record an ECS resource ARN names: see resource_arn.hpp.
#include "resource_arn.hpp"

#include <algorithm>

#include "task_definitions.hpp"

namespace berth::agent::control {

std::optional<std::pair<std::string, std::string>> resource_of(const std::string& a,
                                                               const std::string& prefix) {
  if (!a.starts_with(prefix)) return std::nullopt;
  const std::string rest = a.substr(prefix.size());
  const auto kind = [](const char* k, std::string key) {
    return std::optional<std::pair<std::string, std::string>>(std::pair{k, std::move(key)});
  };
  if (rest.starts_with("cluster/")) return kind("cluster", rest.substr(8));
  if (rest.starts_with("task-definition/")) {
    const std::string fr = rest.substr(16);
    const auto colon = fr.rfind(':');
    if (colon == std::string::npos) return std::nullopt;
    try {
      return kind("taskdef", td_key(fr.substr(0, colon), std::stoul(fr.substr(colon + 1))));
    } catch (...) {
      return std::nullopt;
    }
  }
  if (rest.starts_with("task/")) return kind("task", rest.substr(5));
  // A service's name has no colon: "daemon:<name>" is a daemon's record, named by its own ARN.
  if (rest.starts_with("service/")) {
    if (rest.find(':') != std::string::npos) return std::nullopt;
    return kind("service", rest.substr(8));
  }
  if (rest.starts_with("daemon/")) {
    const std::string key = rest.substr(7);
    const auto slash = key.find('/');
    if (slash == std::string::npos || std::count(key.begin(), key.end(), '/') != 1) {
      return std::nullopt;
    }
    return kind("service", key.substr(0, slash + 1) + "daemon:" + key.substr(slash + 1));
  }
  if (rest.starts_with("container-instance/")) {
    // "<cluster>/<id>": the record, never the documents beside it.
    std::string key = rest.substr(19);
    if (std::count(key.begin(), key.end(), '/') != 1) return std::nullopt;
    return kind("instance", std::move(key));
  }
  return std::nullopt;
}

}  // namespace berth::agent::control
