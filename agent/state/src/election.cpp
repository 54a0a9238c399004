// Leader election written only against the store contract (txn + range + watch), as etcd's
// client/v3/concurrency/election.go, so every backend shares it.
#include <algorithm>
#include <cstdio>

#include "berth/state.hpp"

namespace berth::state {

namespace {

using steady = std::chrono::steady_clock;

// The live candidate with the lowest create_revision: the first to arrive leads.
std::optional<key_value> first_of(const std::vector<key_value>& kvs) {
  auto it = std::min_element(kvs.begin(), kvs.end(), [](const key_value& a, const key_value& b) {
    return a.create_revision < b.create_revision;
  });
  if (it == kvs.end()) return std::nullopt;
  return *it;
}

std::string lease_hex(lease_id lease) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(lease));
  return buf;
}

class leader_observer final : public election::observer {
 public:
  leader_observer(store& s, std::string prefix) : store_(s), prefix_(std::move(prefix)) {}

  result<std::optional<key_value>> next(steady::time_point deadline) override {
    for (;;) {
      if (!watch_) {
        // Relist, then follow from just after what the relist saw: nothing in between is lost.
        auto now = store_.range(key_range::with_prefix(prefix_));
        if (!now) return tl::unexpected(now.error());
        auto w = store_.watch({key_range::with_prefix(prefix_), now->header_revision + 1});
        if (!w) return tl::unexpected(w.error());
        watch_ = std::move(*w);
        if (auto l = changed(first_of(now->kvs))) return l;
      }
      auto evs = watch_->next(deadline);
      if (!evs) {
        if (evs.error().code != errc::compacted) return tl::unexpected(evs.error());
        watch_.reset();
        continue;
      }
      if (evs->empty()) return std::optional<key_value>();
      // Any change among the candidates may change the leader: ask the store who leads now.
      auto now = store_.range(key_range::with_prefix(prefix_));
      if (!now) return tl::unexpected(now.error());
      if (auto l = changed(first_of(now->kvs))) return l;
    }
  }

  void cancel() override {
    if (watch_) watch_->cancel();
  }

 private:
  // The leader if it differs from the last one reported (another key, or a new value).
  std::optional<key_value> changed(const std::optional<key_value>& l) {
    if (!l) return std::nullopt;
    if (last_ && last_->key == l->key && last_->create_revision == l->create_revision &&
        last_->value == l->value) {
      return std::nullopt;
    }
    last_ = l;
    return l;
  }

  store& store_;
  std::string prefix_;
  std::unique_ptr<watcher> watch_;
  std::optional<key_value> last_;
};

}  // namespace

election::election(store& s, std::string name) : store_(s), prefix_(std::move(name) + "/") {}

election::~election() = default;

result<void> election::campaign(lease_id lease, std::string value, steady::time_point deadline) {
  const std::string key = prefix_ + lease_hex(lease);
  // Create the key if it is not there; if it is (this lease campaigned before), keep its place.
  txn_request t;
  t.compares.push_back(compare::create_revision_is(key, compare_op::equal, 0));
  t.success.push_back(txn_op::put(key, value, lease));
  t.failure.push_back(txn_op::get(key_range::one(key)));
  auto r = store_.txn(t);
  if (!r) return tl::unexpected(r.error());
  key_ = key;
  lease_ = lease;
  if (r->succeeded) {
    key_revision_ = r->header_revision;
  } else {
    const auto& kvs = r->results.front().kvs;
    if (kvs.empty()) {  // deleted in between: its lease just ended
      key_.clear();
      return tl::unexpected(error{errc::lease_not_found, "campaign: key " + key + " vanished"});
    }
    key_revision_ = kvs.front().create_revision;
    if (kvs.front().value != value) {
      if (auto p = proclaim(value); !p) return p;
    }
  }
  // Wait until no candidate older than this one is left, re-reading after every deletion.
  for (;;) {
    auto now = store_.range(key_range::with_prefix(prefix_));
    if (!now) return tl::unexpected(now.error());
    const auto mine = std::find_if(now->kvs.begin(), now->kvs.end(),
                                   [&](const key_value& kv) { return kv.key == key_; });
    if (mine == now->kvs.end() || mine->create_revision != key_revision_) {
      key_.clear();
      return tl::unexpected(
          error{errc::lease_not_found, "campaign: key " + key + " deleted (its lease ended)"});
    }
    const bool older_left = std::any_of(now->kvs.begin(), now->kvs.end(), [&](const key_value& kv) {
      return kv.create_revision < key_revision_;
    });
    if (!older_left) return {};
    auto w = store_.watch({key_range::with_prefix(prefix_), now->header_revision + 1});
    if (!w) return tl::unexpected(w.error());
    for (bool deleted = false; !deleted;) {
      auto evs = (*w)->next(deadline);
      if (!evs) {
        if (evs.error().code == errc::compacted) break;  // relist
        return tl::unexpected(evs.error());
      }
      if (evs->empty() && steady::now() >= deadline) {
        (void)resign();
        return tl::unexpected(error{errc::timeout, "campaign for " + prefix_ + ": not leader"});
      }
      deleted = std::any_of(evs->begin(), evs->end(),
                            [](const event& e) { return e.type == event_type::del; });
    }
  }
}

result<void> election::proclaim(std::string value) {
  if (key_.empty()) return tl::unexpected(error{errc::not_leader, "proclaim: not campaigning"});
  txn_request t;
  t.compares.push_back(compare::create_revision_is(key_, compare_op::equal, key_revision_));
  t.success.push_back(txn_op::put(key_, std::move(value), lease_));
  auto r = store_.txn(t);
  if (!r) return tl::unexpected(r.error());
  if (!r->succeeded) {
    return tl::unexpected(error{errc::not_leader, "proclaim: key " + key_ + " is gone"});
  }
  return {};
}

result<void> election::resign() {
  if (key_.empty()) return {};
  // Only the key this candidate created: a later candidate with the same lease is not deleted.
  txn_request t;
  t.compares.push_back(compare::create_revision_is(key_, compare_op::equal, key_revision_));
  t.success.push_back(txn_op::del(key_range::one(key_)));
  auto r = store_.txn(t);
  if (!r) return tl::unexpected(r.error());
  key_.clear();
  key_revision_ = 0;
  return {};
}

result<std::optional<key_value>> election::leader() {
  auto now = store_.range(key_range::with_prefix(prefix_));
  if (!now) return tl::unexpected(now.error());
  return first_of(now->kvs);
}

result<std::unique_ptr<election::observer>> election::observe() {
  return std::unique_ptr<observer>(std::make_unique<leader_observer>(store_, prefix_));
}

}  // namespace berth::state
