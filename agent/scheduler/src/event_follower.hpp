// Every service event of the cluster onto this agent's event stream, as the store gets it,
// whoever wrote the record: this agent's loop or API, or a peer sharing the store (etcd). So
// `berthctl watch` on any agent shows every service's events, as the task table's watch already
// shows every task's changes. An event is one the record gained since this follower last saw it
// (events carry ids); records read at start publish nothing, and a relist after the watch fell
// behind a compaction publishes only what is new.
//
// Thread safety: start() and stop() from one thread; the follower runs on its own.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "berth/agent/common.hpp"
#include "berth/state.hpp"
#include "events.hpp"

namespace berth::agent::sched {

class event_follower {
 public:
  // `bus` outlives the follower.
  event_follower(const config& c, std::shared_ptr<state::store> st, event_bus& bus);
  ~event_follower() { stop(); }
  event_follower(const event_follower&) = delete;
  event_follower& operator=(const event_follower&) = delete;

  // Reads the cluster's service records (publishing nothing), then follows them.
  result<void> start();
  // Idempotent; the destructor does it.
  void stop();

 private:
  // One record's text as the store has it now (nullopt: deleted): its new events published.
  void seen(const std::string& key, const std::optional<std::string>& text, bool publish);
  result<state::revision> relist(bool publish);

  config cfg_;
  std::shared_ptr<state::store> store_;
  event_bus& bus_;
  std::string prefix_;                                // /berth/service/<cluster>/
  std::map<std::string, std::set<std::string>> ids_;  // key -> the event ids seen; follower's
  std::optional<state::prefix_follower> follower_;
};

}  // namespace berth::agent::sched
