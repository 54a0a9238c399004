// Service events onto the event stream from the store's watch: see event_follower.hpp.
#include "event_follower.hpp"

#include "berth/agent/util.hpp"
#include "service_record.hpp"
#include "store.hpp"

namespace berth::agent::sched {

event_follower::event_follower(const config& c, std::shared_ptr<state::store> st, event_bus& bus)
    : cfg_(c),
      store_(std::move(st)),
      bus_(bus),
      prefix_(document_key("service", c.cluster + "/")) {}

result<void> event_follower::start() {
  auto from = relist(false);
  if (!from) return tl::unexpected(from.error());
  state::prefix_follower::callbacks cb;
  cb.on_events = [this](const std::vector<state::event>& events) {
    for (const state::event& e : events) {
      if (e.type == state::event_type::put) {
        seen(e.kv.key, e.kv.value, true);
      } else {
        seen(e.kv.key, std::nullopt, true);
      }
    }
  };
  cb.relist = [this]() -> state::result<state::revision> {
    auto r = relist(true);
    if (!r) return tl::unexpected(state::error{state::errc::io, r.error().message});
    return *r;
  };
  follower_.emplace(store_, prefix_, "service events", std::move(cb));
  follower_->start(*from + 1);
  return {};
}

void event_follower::stop() { follower_.reset(); }

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

}  // namespace berth::agent::sched
