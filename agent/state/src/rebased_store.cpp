// A store whose keys under one root live under another in the store beneath: see rebased() in
// berth/state.hpp. Every key in a request is moved from `from` to `to`, every key in an answer
// back; revisions, values and leases pass through as they are.
#include "berth/state.hpp"

namespace berth::state {

namespace {

class rebased_watcher final : public watcher {
 public:
  rebased_watcher(std::unique_ptr<watcher> w, std::function<void(key_value&)> back)
      : w_(std::move(w)), back_(std::move(back)) {}
  result<std::vector<event>> next(std::chrono::steady_clock::time_point deadline) override {
    auto evs = w_->next(deadline);
    if (!evs) return evs;
    for (auto& e : *evs) {
      back_(e.kv);
      if (e.prev_kv) back_(*e.prev_kv);
    }
    return evs;
  }
  revision next_revision() const override { return w_->next_revision(); }
  void cancel() override { w_->cancel(); }

 private:
  std::unique_ptr<watcher> w_;
  std::function<void(key_value&)> back_;
};

class rebased_store final : public store {
 public:
  rebased_store(std::shared_ptr<store> s, std::string from, std::string to)
      : s_(std::move(s)), from_(std::move(from)), to_(std::move(to)) {}

  result<range_result> get(std::string_view key) override {
    auto k = there(std::string(key));
    if (!k) return tl::unexpected(k.error());
    return back(s_->get(*k));
  }
  result<range_result> range(const key_range& r, std::int64_t limit) override {
    auto t = there(r);
    if (!t) return tl::unexpected(t.error());
    return back(s_->range(*t, limit));
  }
  result<revision> put(std::string_view key, std::string_view value, lease_id lease) override {
    auto k = there(std::string(key));
    if (!k) return tl::unexpected(k.error());
    return s_->put(*k, value, lease);
  }
  result<delete_result> del(const key_range& r) override {
    auto t = there(r);
    if (!t) return tl::unexpected(t.error());
    auto d = s_->del(*t);
    if (d) back(d->prev_kvs);
    return d;
  }
  result<txn_result> txn(const txn_request& t) override {
    txn_request moved = t;
    for (auto& c : moved.compares) {
      auto k = there(c.key);
      if (!k) return tl::unexpected(k.error());
      c.key = std::move(*k);
    }
    for (auto* ops : {&moved.success, &moved.failure}) {
      for (auto& op : *ops) {
        auto r = there(op.range);
        if (!r) return tl::unexpected(r.error());
        op.range = std::move(*r);
      }
    }
    auto r = s_->txn(moved);
    if (r) {
      for (auto& o : r->results) {
        back(o.kvs);
        back(o.prev_kvs);
      }
    }
    return r;
  }
  result<std::unique_ptr<watcher>> watch(const watch_request& w) override {
    auto r = there(w.range);
    if (!r) return tl::unexpected(r.error());
    auto inner = s_->watch({std::move(*r), w.start_revision, w.prev_kv});
    if (!inner) return tl::unexpected(inner.error());
    return std::unique_ptr<watcher>(std::make_unique<rebased_watcher>(
        std::move(*inner), [this](key_value& kv) { kv.key = here(kv.key); }));
  }
  result<revision> compact(revision rev) override { return s_->compact(rev); }
  result<revision> current_revision() override { return s_->current_revision(); }
  result<revision> compacted_revision() override { return s_->compacted_revision(); }
  result<lease_grant> grant(std::chrono::seconds ttl) override { return s_->grant(ttl); }
  result<std::chrono::seconds> keep_alive(lease_id id) override { return s_->keep_alive(id); }
  result<void> revoke(lease_id id) override { return s_->revoke(id); }
  result<lease_status> time_to_live(lease_id id) override {
    auto t = s_->time_to_live(id);
    if (t) {
      for (auto& k : t->keys) k = here(k);
    }
    return t;
  }
  result<std::size_t> expire_leases() override { return s_->expire_leases(); }

 private:
  // A key of ours in the store beneath; one outside `from` is refused.
  result<std::string> there(const std::string& key) const {
    if (!key.starts_with(from_)) {
      return tl::unexpected(error{errc::invalid_argument, "key '" + key + "' is outside " + from_});
    }
    return to_ + key.substr(from_.size());
  }
  // A prefix range wider than `from` (the empty one, say) covers all of `to`.
  result<key_range> there(const key_range& r) const {
    if (r.prefix && from_.starts_with(r.key)) return key_range::with_prefix(to_);
    auto k = there(r.key);
    if (!k) return tl::unexpected(k.error());
    return key_range{std::move(*k), r.prefix};
  }
  std::string here(const std::string& key) const {
    return key.starts_with(to_) ? from_ + key.substr(to_.size()) : key;
  }
  void back(std::vector<key_value>& kvs) const {
    for (auto& kv : kvs) kv.key = here(kv.key);
  }
  result<range_result> back(result<range_result> r) const {
    if (r) back(r->kvs);
    return r;
  }

  std::shared_ptr<store> s_;
  std::string from_, to_;
};

}  // namespace

std::shared_ptr<store> rebased(std::shared_ptr<store> s, std::string from, std::string to) {
  return std::make_shared<rebased_store>(std::move(s), std::move(from), std::move(to));
}

}  // namespace berth::state
