// Service events onto the event stream from the store's watch: see event_follower.hpp.
#include "event_follower.hpp"

#include <spdlog/spdlog.h>

#include "berth/agent/util.hpp"
#include "service_record.hpp"
#include "store.hpp"

namespace berth::agent::sched {

using namespace std::chrono_literals;

event_follower::event_follower(const config& c, std::shared_ptr<state::store> st, event_bus& bus)
    : cfg_(c),
      store_(std::move(st)),
      bus_(bus),
      prefix_(document_key("service", c.cluster + "/")) {}

result<void> event_follower::start() {
  auto from = relist(false);
  if (!from) return tl::unexpected(from.error());
  thread_ = std::thread([this, next = *from + 1] { follow(next); });
  return {};
}

void event_follower::stop() {
  {
    std::lock_guard lock(mu_);
    closing_ = true;
    if (watcher_) watcher_->cancel();
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void event_follower::seen(const std::string& key, const std::optional<std::string>& text,
                          bool publish) {
  if (!text) {
    ids_.erase(key);
    return;
  }
  auto s = state::parse<state::service>(*text, key);
  if (!s) return;  // the scheduler logs damaged records
  std::set<std::string>& known = ids_[key];
  std::set<std::string> now;
  // Newest first in the record: published oldest first, as they happened.
  for (auto e = s->events.rbegin(); e != s->events.rend(); ++e) {
    now.insert(e->id);
    if (!publish || known.contains(e->id)) continue;
    bus_.publish(json{{"version", "0"},
                      {"id", uuid()},
                      {"detail-type", "ECS Service Action"},
                      {"source", "aws.ecs"},
                      {"account", cfg_.account_id},
                      {"region", cfg_.region},
                      {"resources", {s->service_arn}},
                      {"detail",
                       {{"eventType", "INFO"},
                        {"clusterArn", s->cluster_arn},
                        {"serviceArn", s->service_arn},
                        {"message", e->message}}}}
                     .dump(-1, ' ', false, json::error_handler_t::replace));
  }
  known = std::move(now);
}

result<state::revision> event_follower::relist(bool publish) {
  auto listed = store_->range(state::key_range::with_prefix(prefix_));
  if (!listed) return tl::unexpected(error{listed.error().detail});
  std::set<std::string> present;
  for (const state::key_value& kv : listed->kvs) {
    present.insert(kv.key);
    seen(kv.key, kv.value, publish);
  }
  std::erase_if(ids_, [&](const auto& e) { return !present.contains(e.first); });
  return listed->header_revision;
}

void event_follower::follow(state::revision next) {
  const auto pause = [&] {
    std::unique_lock lock(mu_);
    return !cv_.wait_for(lock, 1s, [&] { return closing_; });
  };
  for (;;) {
    state::watcher* w = nullptr;
    {
      std::lock_guard lock(mu_);
      if (closing_) return;
      w = watcher_.get();
    }
    if (w == nullptr) {
      auto made = store_->watch({state::key_range::with_prefix(prefix_), next});
      if (!made) {
        if (made.error().code == state::errc::compacted) {
          if (auto r = relist(true)) next = *r + 1;
        } else {
          spdlog::warn("service events: watch failed: {}", made.error().detail);
        }
        if (!pause()) return;
        continue;
      }
      std::lock_guard lock(mu_);
      if (closing_) return;
      watcher_ = std::move(*made);
      continue;
    }
    auto events = w->next(std::chrono::steady_clock::now() + 60s);
    if (!events) {
      const state::errc code = events.error().code;
      {
        std::lock_guard lock(mu_);
        watcher_.reset();
      }
      if (code == state::errc::canceled) return;
      if (code == state::errc::compacted) {
        if (auto r = relist(true)) next = *r + 1;
      } else {
        spdlog::warn("service events: watch failed: {}", events.error().detail);
        if (!pause()) return;
      }
      continue;
    }
    next = w->next_revision();
    for (const state::event& e : *events) {
      if (e.type == state::event_type::put) {
        seen(e.kv.key, e.kv.value, true);
      } else {
        seen(e.kv.key, std::nullopt, true);
      }
    }
  }
}

}  // namespace berth::agent::sched
