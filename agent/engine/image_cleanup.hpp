// Image housekeeping, as the ECS agent's: images tasks used are tracked (in the store, kind
// "image"), and those no known task uses, unused for --image-minimum-age, go least recently used
// first, at most --images-per-cycle per cycle; never one in use or listed in
// --image-cleanup-exclude. Called from the engine's housekeeping thread only.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>

#include "berth/agent/common.hpp"
#include "berth/docker.hpp"
#include "metrics.hpp"
#include "store.hpp"

namespace berth::agent::engine {

class image_cleanup {
 public:
  // `in_use`: the image ids known tasks use now; asked again before each removal.
  image_cleanup(const config& c, docker::engine& d, store& s, metrics& m,
                std::function<std::set<std::string>()> in_use);
  // A task used the image `image_id` under the name `ref`, now: written to the store when the
  // name is new to this process or its last write is older than track_interval (a minute), or
  // half the image minimum age when that is shorter. Thread-safe.
  void track(const std::string& image_id, const std::string& ref);
  static constexpr std::chrono::seconds track_interval{60};
  // One cycle.
  void clean_up();

 private:
  const config& cfg_;
  docker::engine* docker_;
  store* store_;
  metrics& metrics_;
  std::function<std::set<std::string>()> in_use_;
  struct written {
    std::set<std::string> names;
    std::chrono::steady_clock::time_point at{};
  };
  std::mutex mu_;                           // a leaf: guards written_
  std::map<std::string, written> written_;  // image id -> what track() last wrote, and when
};

}  // namespace berth::agent::engine
