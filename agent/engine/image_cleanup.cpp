// Image housekeeping: see image_cleanup.hpp.
#include "image_cleanup.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <vector>

#include "berth/agent/util.hpp"

namespace berth::agent::engine {

namespace dk = berth::docker;
using nlohmann::json;

image_cleanup::image_cleanup(const config& c, docker::engine& d, store& s, metrics& m,
                             std::function<std::set<std::string>()> in_use)
    : cfg_(c), docker_(&d), store_(&s), metrics_(m), in_use_(std::move(in_use)) {}

void image_cleanup::track(const std::string& image_id, const std::string& ref) {
  // Written lately under this name: its lastUsedAt is within the interval of now. Without this,
  // every container made cost two store round trips on the launch path. The interval is at most
  // half the minimum age, so that an image in use is never old enough to go.
  const auto now = std::chrono::steady_clock::now();
  const auto interval =
      std::min<std::chrono::steady_clock::duration>(track_interval, cfg_.image_minimum_age / 2);
  {
    std::lock_guard lock(mu_);
    const auto w = written_.find(image_id);
    if (w != written_.end() && w->second.names.contains(ref) && now - w->second.at < interval) {
      return;
    }
  }
  auto doc = store_->get("image", image_id);
  json im = doc && *doc ? json::parse(**doc, nullptr, false) : json::object();
  if (!im.is_object()) im = json::object();
  im["imageId"] = image_id;
  if (!im.contains("names")) im["names"] = json::array();
  if (std::find(im["names"].begin(), im["names"].end(), ref) == im["names"].end())
    im["names"].push_back(ref);
  im["lastUsedAt"] = now_seconds();
  if (auto w = store_->put("image", image_id, im.dump()); !w) {
    spdlog::error("store: image {}: {}", image_id, w.error().message);
    return;  // tried again at the next container made
  }
  std::lock_guard lock(mu_);
  auto& w = written_[image_id];
  w.names.insert(ref);
  w.at = now;
}

void image_cleanup::clean_up() {
  auto all = store_->list("image", "");
  if (!all) return;
  const std::set<std::string> in_use = in_use_();
  const double now = now_seconds();
  const double age = std::chrono::duration<double>(cfg_.image_minimum_age).count();
  std::vector<std::pair<double, json>> candidates;
  for (const auto& [id, doc] : *all) {
    json im = json::parse(doc, nullptr, false);
    if (!im.is_object() || in_use.contains(id)) continue;
    bool excluded = false;
    for (const auto& n : im.value("names", json::array())) {
      excluded |= std::find(cfg_.image_cleanup_exclude.begin(), cfg_.image_cleanup_exclude.end(),
                            n.get<std::string>()) != cfg_.image_cleanup_exclude.end();
    }
    if (excluded) continue;
    const double last = im.value("lastUsedAt", now);
    if (last + age > now) continue;
    candidates.emplace_back(last, im);
  }
  std::sort(candidates.begin(), candidates.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  unsigned removed = 0;
  metrics_.add("berth_image_cleanups_total", {});
  for (const auto& [last, im] : candidates) {
    if (removed >= cfg_.images_per_cycle) break;
    const std::string id = im["imageId"];
    // A task may have started on it since the list was made.
    if (in_use_().contains(id)) continue;
    // Each name first, then the id: an image under several names cannot go by id alone. A
    // name that has moved on to another image since is left alone.
    bool gone = true;
    for (const auto& n : im["names"]) {
      const auto now_is = docker_->inspect_image(n.get<std::string>());
      if (!now_is || now_is->id != id) continue;
      auto r = docker_->remove_image(n.get<std::string>(), false);
      if (!r && r.error().code != dk::errc::not_found) {
        spdlog::info("image {} ({}) kept: {}", n.get<std::string>(), id, r.error().message);
        gone = false;
        break;
      }
    }
    if (!gone) continue;  // a container still uses it: tried again next cycle
    // Still there under names no task used: someone else's, no longer tracked.
    auto left = docker_->inspect_image(id);
    if (left && left->tags.empty()) {
      auto r = docker_->remove_image(id, false);
      if (!r && r.error().code != dk::errc::not_found) {
        spdlog::info("image {} kept: {}", id, r.error().message);
        continue;
      }
    }
    (void)store_->erase("image", id);
    {
      std::lock_guard lock(mu_);
      written_.erase(id);
    }
    ++removed;
    metrics_.add("berth_images_removed_total", {});
    spdlog::info("image {} removed: unused since {}", id, iso8601(last, false));
  }
}

}  // namespace berth::agent::engine
