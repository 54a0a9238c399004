// The change feed. Watchers: recent events stay in a ring in memory; a synced watcher is pushed
// each revision's matching events under the store's mutex, into its own bounded queue. A watcher
// whose queue is full is not waited for: it drops back to "unsynced" and, when it next reads,
// catches up from the ring or, for older revisions, from `log` (as etcd's unsynced watcher group
// does).
#include <algorithm>
#include <iterator>

#include "sqlite_core.hpp"

namespace berth::state::detail {

namespace {

class sqlite_watcher final : public watcher {
 public:
  sqlite_watcher(std::shared_ptr<sqlite_core> core, std::shared_ptr<watch_state> w)
      : core_(std::move(core)), w_(std::move(w)) {}
  ~sqlite_watcher() override { cancel(); }
  result<std::vector<event>> next(steady::time_point deadline) override;
  revision next_revision() const override {
    std::lock_guard lock(w_->mu);
    return w_->delivered_next;
  }
  void cancel() override;

 private:
  std::shared_ptr<sqlite_core> core_;
  std::shared_ptr<watch_state> w_;
};

result<std::vector<event>> sqlite_watcher::next(steady::time_point deadline) {
  for (;;) {
    bool catching_up;
    {
      std::unique_lock lock(w_->mu);
      w_->cv.wait_until(lock, deadline, [&] {
        return !w_->queue.empty() || w_->canceled || w_->failure || !w_->synced;
      });
      if (!w_->queue.empty()) {
        std::vector<event> out(std::make_move_iterator(w_->queue.begin()),
                               std::make_move_iterator(w_->queue.end()));
        w_->queue.clear();
        w_->delivered_next = event_revision(out.back()) + 1;
        if (!w_->prev_kv) {
          for (event& e : out) e.prev_kv.reset();
        }
        return out;
      }
      if (w_->failure) return tl::unexpected(*w_->failure);
      if (w_->canceled) return tl::unexpected(error{errc::canceled, "the watch was cancelled"});
      catching_up = !w_->synced;
      if (!catching_up) return std::vector<event>();  // the deadline passed
    }
    if (auto r = core_->catch_up(w_); !r) {
      std::lock_guard lock(w_->mu);
      w_->failure = r.error();
    }
    // Nothing new before the deadline? Report it rather than spin.
    if (steady::now() >= deadline) {
      std::lock_guard lock(w_->mu);
      if (w_->queue.empty() && !w_->failure) return std::vector<event>();
    }
  }
}

void sqlite_watcher::cancel() { core_->cancel(w_); }

}  // namespace

result<std::unique_ptr<watcher>> sqlite_core::watch(const watch_request& req) {
  if (auto v = check_range(req.range); !v) return tl::unexpected(v.error());
  auto w = std::make_shared<watch_state>();
  w->range = req.range;
  if (req.range.prefix) w->end = prefix_end(req.range.key);
  w->buffer = opt_.watcher_buffer;
  w->prev_kv = req.prev_kv;
  std::lock_guard lock(mu_);
  if (auto c = check_open(); !c) return tl::unexpected(c.error());
  const revision start = req.start_revision > 0 ? req.start_revision : revision_ + 1;
  if (start < compacted_) return tl::unexpected(compacted_error(start));
  w->fetch_from = start;
  w->delivered_next = start;
  // Past history is read by the watcher itself (next()), not here: a long catch-up must not
  // hold up the caller or the writers.
  w->synced = start > revision_;
  if (w->synced) live_.push_back(w);
  return std::unique_ptr<watcher>(std::make_unique<sqlite_watcher>(shared_from_this(), w));
}

void sqlite_core::cancel(const std::shared_ptr<watch_state>& w) {
  std::lock_guard lock(mu_);
  std::erase(live_, w);
  end_watch(*w);
}

// Queues the watcher's next events from the ring or the log: up to its buffer, whole
// revisions. Returns once something was queued or it is synced again.
result<void> sqlite_core::catch_up(const std::shared_ptr<watch_state>& w) {
  // Bounded work per lock: writers get the mutex between pages.
  constexpr revision page = 256;
  for (;;) {
    std::lock_guard lock(mu_);
    if (closed_) return tl::unexpected(error{errc::canceled, "the store is closed"});
    if (w->synced) return {};
    {
      std::lock_guard wl(w->mu);
      if (w->canceled) return {};
    }
    if (w->fetch_from < compacted_) return tl::unexpected(compacted_error(w->fetch_from));
    std::vector<event> found;
    revision upto;  // the last revision looked at
    if (w->fetch_from >= ring_from_) {
      auto it = std::lower_bound(ring_.begin(), ring_.end(), w->fetch_from,
                                 [](const event& e, revision r) { return event_revision(e) < r; });
      upto = revision_;
      for (; it != ring_.end(); ++it) {
        if (!w->matches(it->kv.key)) continue;
        if (found.size() >= w->buffer && event_revision(*it) != event_revision(found.back())) {
          upto = event_revision(found.back());
          break;
        }
        found.push_back(*it);
      }
    } else {
      upto = std::min(revision_, w->fetch_from + page - 1);
      auto r = read_log(*w, w->fetch_from, upto, found);
      if (!r) return tl::unexpected(r.error());
    }
    w->fetch_from = upto + 1;
    std::lock_guard wl(w->mu);
    for (auto& e : found) w->queue.push_back(std::move(e));
    if (w->fetch_from > revision_) {
      w->synced = true;
      live_.push_back(w);
    }
    if (!w->queue.empty() || w->synced) return {};
  }
}

// A committed revision's events: into the ring, and to every synced watcher that wants them.
void sqlite_core::publish(std::vector<event> events) {
  const revision rev = revision_;
  for (auto it = live_.begin(); it != live_.end();) {
    watch_state& w = **it;
    if (rev < w.fetch_from) {
      ++it;
      continue;
    }
    std::vector<const event*> mine;
    for (const auto& e : events) {
      if (w.matches(e.kv.key)) mine.push_back(&e);
    }
    std::lock_guard wl(w.mu);
    if (!mine.empty() && w.queue.size() + mine.size() > w.buffer) {
      // Full: never wait for a reader. It catches up from this revision when it reads.
      w.synced = false;
      w.cv.notify_all();
      it = live_.erase(it);
      continue;
    }
    w.fetch_from = rev + 1;
    for (const event* e : mine) w.queue.push_back(*e);
    if (!mine.empty()) w.cv.notify_all();
    ++it;
  }
  for (auto& e : events) ring_.push_back(std::move(e));
  // Whole revisions leave the ring, so a revision is either all in it or not at all.
  while (ring_.size() > opt_.event_ring) {
    const revision oldest = event_revision(ring_.front());
    while (!ring_.empty() && event_revision(ring_.front()) == oldest) ring_.pop_front();
    ring_from_ = ring_.empty() ? revision_ + 1 : event_revision(ring_.front());
  }
}

// The log's events of revisions [from, to] that the watch wants, in order.
result<void> sqlite_core::read_log(const watch_state& w, revision from, revision to,
                                   std::vector<event>& out) {
  auto s = prepare(
      "SELECT rev, name, created, deleted, create_revision, prev_revision, version, lease, "
      "value, old_value, old_lease FROM log WHERE rev >= ?1 AND rev <= ?2 ORDER BY rev, sub");
  if (!s) return tl::unexpected(s.error());
  stmt_use q(*s);
  q.integer(1, from);
  q.integer(2, to);
  int rc;
  while ((rc = q.step()) == SQLITE_ROW) {
    std::string name = q.column_blob(1);
    if (!w.matches(name)) continue;
    const revision rev = q.column_int(0);
    const bool created = q.column_int(2) != 0;
    const bool deleted = q.column_int(3) != 0;
    key_value stored{name, q.column_blob(8), q.column_int(4),
                     rev,  q.column_int(6),  q.column_int(7)};
    event e;
    if (deleted) {
      e.type = event_type::del;
      e.kv.key = name;
      e.kv.mod_revision = rev;
      e.prev_kv = key_value{std::move(name), q.column_blob(9), stored.create_revision,
                            q.column_int(5), stored.version,   q.column_int(10)};
    } else {
      e.type = event_type::put;
      if (!created) {
        e.prev_kv = key_value{name,
                              q.column_blob(9),
                              stored.create_revision,
                              q.column_int(5),
                              stored.version - 1,
                              q.column_int(10)};
      }
      e.kv = std::move(stored);
    }
    out.push_back(std::move(e));
  }
  if (rc != SQLITE_DONE) return tl::unexpected(fail("read history"));
  return {};
}

void sqlite_core::end_watch(watch_state& w) {
  std::lock_guard wl(w.mu);
  w.canceled = true;
  w.cv.notify_all();
}

}  // namespace berth::state::detail
