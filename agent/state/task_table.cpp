#include "task_table.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <iterator>
#include <set>

#include "berth/agent/util.hpp"

namespace berth::state {

namespace {

using namespace std::chrono_literals;

agent::error from(const error& e) { return agent::error{e.detail}; }

std::string key_of(const task& t) { return agent::document_key("task", task_key(t)); }

// What the control side decides about a task (its stop, and its tags), copied from `from`; the
// engine owns everything else in a record.
void copy_desired(task& to, const task& from) {
  to.ecs.desired_status = from.ecs.desired_status;
  to.ecs.stop_code = from.ecs.stop_code;
  to.ecs.stopped_reason = from.ecs.stopped_reason;
  to.ecs.stopping_at = from.ecs.stopping_at;
}

// A stop `from` holds and `to` lacks, copied: a stop is never undone. Whether it copied one.
bool take_stop(task& to, const task& from) {
  if (from.ecs.desired_status != "STOPPED" || to.ecs.desired_status == "STOPPED") return false;
  copy_desired(to, from);
  return true;
}

// A record of the store that the table can hold (task_record.hpp's strict reading).
std::optional<task> parse_record(const key_value& kv) {
  auto t = parse<task>(kv.value, kv.key);
  if (!t) {
    spdlog::error("store: {}; skipped", t.error().detail);
    return std::nullopt;
  }
  return std::move(*t);
}

std::string text_of(const task& t) {
  return to_json(t).dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace

// ---- following the store ----

agent::result<std::vector<task>> task_table::open(const std::string& cluster) {
  prefix_ = agent::document_key("task", cluster + "/");
  auto listed = state_->range(key_range::with_prefix(prefix_));
  if (!listed) return tl::unexpected(from(listed.error()));
  std::vector<task> out;
  {
    std::lock_guard lock(mu_);
    for (const auto& kv : listed->kvs) {
      auto t = parse_record(kv);
      if (!t) continue;
      const std::string a = t->arn();
      rows_[a] = *t;
      keys_[kv.key] = known{a, kv.mod_revision, false};
      publish(*t);
      out.push_back(std::move(*t));
    }
  }
  follower_ = std::thread([this, from = listed->header_revision + 1] { follow(from); });
  {
    std::lock_guard lock(mu_);
    writing_ = true;
  }
  writer_ = std::thread([this] { write_behind(); });
  return out;
}

void task_table::close() {
  {
    std::lock_guard lock(mu_);
    stop_writing_ = true;
  }
  pending_cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  {
    std::lock_guard lock(follow_mu_);
    closing_ = true;
    if (watcher_ != nullptr) watcher_->cancel();
  }
  follow_cv_.notify_all();
  if (follower_.joinable()) follower_.join();
}

void task_table::follow(revision next) {
  std::unique_ptr<watcher> w;
  // The watch in use is dropped under follow_mu_, so that close() never cancels a dead one.
  auto drop = [&] {
    std::lock_guard lock(follow_mu_);
    watcher_ = nullptr;
    w.reset();
  };
  // After a failure: a pause, cut short by close(). False once closing.
  auto pause = [&] {
    std::unique_lock lock(follow_mu_);
    return !follow_cv_.wait_for(lock, 1s, [&] { return closing_; });
  };
  // After falling behind a compaction: the records as they are now, and a watch from there.
  auto catch_up = [&] {
    std::lock_guard lock(mu_);
    auto r = relist();
    if (!r) {
      spdlog::error("task records: relist failed: {}", r.error().detail);
      return false;
    }
    next = *r + 1;
    return true;
  };
  for (;;) {
    if (!w) {
      auto made = state_->watch(watch_request{key_range::with_prefix(prefix_), next});
      if (!made) {
        const bool retry = made.error().code == errc::compacted ? catch_up() || pause() : pause();
        if (made.error().code != errc::compacted) {
          spdlog::error("task records: watch failed: {}", made.error().detail);
        }
        if (!retry) return;
        continue;
      }
      std::lock_guard lock(follow_mu_);
      if (closing_) return;
      w = std::move(*made);
      watcher_ = w.get();
    }
    auto events = w->next(std::chrono::steady_clock::now() + 60s);
    if (!events) {
      const errc code = events.error().code;
      drop();
      {
        std::lock_guard lock(follow_mu_);
        if (closing_) return;
      }
      if (code == errc::compacted) {
        if (!catch_up() && !pause()) return;
      } else if (code == errc::canceled) {
        return;  // the store is closed
      } else {
        spdlog::error("task records: watch failed: {}", events.error().detail);
        if (!pause()) return;
      }
      continue;
    }
    if (events->empty()) continue;
    {
      std::lock_guard lock(mu_);
      for (const event& e : *events) apply(e);
    }
    next = w->next_revision();
  }
}

void task_table::apply(const event& e) {
  if (!creating_.empty()) {
    if (const auto c = creating_.find(e.kv.key); c != creating_.end()) {
      c->second.push_back(e);  // commit_all's: it applies them once committed (or not)
      return;
    }
  }
  const auto k = keys_.find(e.kv.key);
  // The table's own write (or one it has already seen) comes back: nothing new.
  if (k != keys_.end() && k->second.rev >= e.kv.mod_revision) {
    if (k->second.erased && e.type == event_type::del) keys_.erase(k);
    return;
  }
  if (e.type == event_type::del) {
    if (k == keys_.end() || k->second.erased) {
      if (k != keys_.end()) keys_.erase(k);
      return;
    }
    const auto row = rows_.find(k->second.arn);
    unsave(k->second.arn);
    keys_.erase(k);
    if (row == rows_.end()) return;
    const task last = std::move(row->second);
    rows_.erase(row);
    announce(last, true);
    return;
  }
  auto t = parse_record(e.kv);
  if (!t) return;
  const std::string arn = t->arn();
  if (const auto row = rows_.find(arn); row != rows_.end() && pending(arn)) {
    // The engine's newer observation is not in the store yet: it stays, with what was stored.
    // Often it is the table's own write coming back before the writer saw it land.
    const bool changed = merge_into_pending(row->second, std::move(*t));
    keys_[e.kv.key] = known{arn, e.kv.mod_revision, false};
    if (changed) announce(row->second, false);
    return;
  }
  announce(upsert(std::move(*t), e.kv.mod_revision), false);
}

result<revision> task_table::relist() {
  auto listed = state_->range(key_range::with_prefix(prefix_));
  if (!listed) return tl::unexpected(listed.error());
  std::set<std::string> present;
  for (const auto& kv : listed->kvs) {
    present.insert(kv.key);
    apply(event{event_type::put, kv, std::nullopt});
  }
  // What is gone from the store, the table forgets.
  for (auto k = keys_.begin(); k != keys_.end();) {
    if (present.contains(k->first) || k->second.rev > listed->header_revision) {
      ++k;
      continue;
    }
    const std::string arn = k->second.arn;
    const bool erased = k->second.erased;
    k = keys_.erase(k);
    const auto row = rows_.find(arn);
    if (erased || row == rows_.end()) continue;
    const task last = std::move(row->second);
    rows_.erase(row);
    announce(last, true);
  }
  return listed->header_revision;
}

// ---- writing ----

agent::result<revision> task_table::write(task& t, writer who) {
  const std::string key = key_of(t);
  const std::string arn = t.arn();
  for (int attempt = 0; attempt < 16; ++attempt) {
    const auto k = keys_.find(key);
    const revision known_rev = k == keys_.end() || k->second.erased ? 0 : k->second.rev;
    txn_request tx;
    tx.compares = {compare::mod_revision_is(key, compare_op::equal, known_rev)};
    tx.success = {txn_op::put(key, text_of(t))};
    tx.failure = {txn_op::get(key_range::one(key))};
    auto r = state_->txn(tx);
    if (!r) return tl::unexpected(from(r.error()));
    if (r->succeeded) return r->header_revision;
    // Another writer got there first: merge with what it wrote, by who owns what.
    const auto& now = r->results.at(0).kvs;
    if (now.empty()) return tl::unexpected(agent::error{"task " + arn + " was deleted"});
    if (known_rev == 0 && !rows_.contains(arn)) {
      return tl::unexpected(agent::error{"task " + arn + " exists already"});
    }
    auto stored = parse_record(now.front());
    if (!stored) return tl::unexpected(agent::error{"task " + arn + ": stored record unreadable"});
    const std::int64_t version =
        std::max(t.ecs.version.value_or(0), stored->ecs.version.value_or(0));
    if (who == writer::control && !pending(arn)) {
      // Control's desired fields and tags over the stored record, but a stop stored meanwhile
      // (another agent's StopTask under this one's TagResource) is not undone.
      take_stop(t, *stored);
      copy_desired(*stored, t);
      stored->ecs.tags = std::move(t.ecs.tags);
      t = std::move(*stored);
    } else if (who == writer::control) {
      // The row `t` came from holds the engine's latest observation, which the store lacks.
      take_stop(t, *stored);
    } else {
      merge_into_pending(t, std::move(*stored));
    }
    t.ecs.version = version;
    keys_[key] = known{arn, now.front().mod_revision, false};
  }
  return tl::unexpected(agent::error{"task " + arn + ": too many concurrent writers"});
}

agent::result<void> task_table::commit(const task& t) {
  task rec = t;
  auto w = write(rec, writer::control);
  if (!w) {
    spdlog::error("store: task {}: {}", t.arn(), w.error().message);
    return tl::unexpected(w.error());
  }
  // The whole row is in the store now, the engine's pending observation with it.
  unsave(rec.arn());
  announce(upsert(rec, *w), false);
  return {};
}

task& task_table::upsert(task&& t, revision rev) {
  std::string a = t.arn();
  if (rev != 0) keys_[key_of(t)] = known{a, rev, false};
  auto [it, fresh] = rows_.try_emplace(std::move(a));
  it->second = std::move(t);
  return it->second;
}

task& task_table::upsert(const task& t, revision rev) {
  const std::string a = t.arn();
  if (rev != 0) keys_[key_of(t)] = known{a, rev, false};
  // Usually `t` is the table's own row: assigning it to itself would free what callers still
  // hold references into.
  const auto it = rows_.find(a);
  if (it == rows_.end()) return rows_.emplace(a, t).first->second;
  if (&it->second != &t) it->second = t;
  return it->second;
}

agent::result<revision> task_table::commit_all(
    std::unique_lock<std::mutex>& lock, const std::vector<task>& tasks,
    const std::function<agent::result<void>(agent::store&)>& also) {
  // While the store works the follower may bring these records back: apply() holds their
  // events until the outcome is known, rather than parse what the table is about to have.
  for (const task& t : tasks) creating_.try_emplace(key_of(t));
  const auto held = [&] {  // under mu_: what the follower held, in order
    std::vector<event> out;
    for (const task& t : tasks) {
      const auto c = creating_.find(key_of(t));
      if (c == creating_.end()) continue;
      std::move(c->second.begin(), c->second.end(), std::back_inserter(out));
      creating_.erase(c);
    }
    std::sort(out.begin(), out.end(),
              [](const event& a, const event& b) { return a.kv.mod_revision < b.kv.mod_revision; });
    return out;
  };
  agent::result<std::int64_t> w = tl::unexpected(agent::error{"not committed"});
  try {
    const agent::unlocked during(lock);
    w = store_.transaction([&](agent::store& st) -> agent::result<void> {
      if (also) {
        if (auto a = also(st); !a) return a;
      }
      for (const task& t : tasks) {
        // The commit checks it is still absent.
        if (auto p = st.create("task", task_key(t), text_of(t)); !p) return p;
      }
      return {};
    });
  } catch (...) {
    for (const event& e : held()) apply(e);
    throw;
  }
  const std::vector<event> meanwhile = held();
  if (!w) {  // the caller's to report: a claim `also` refused is no failure of the store
    for (const event& e : meanwhile) apply(e);
    return tl::unexpected(w.error());
  }
  // Every row in first: a watcher sees the whole batch in the table. Then what changed since
  // (the commit's own events are not newer than it: skipped).
  for (const task& t : tasks) upsert(t, *w);
  for (const task& t : tasks) {
    if (const auto row = rows_.find(t.arn()); row != rows_.end()) announce(row->second, false);
  }
  for (const event& e : meanwhile) apply(e);
  return *w;
}

void task_table::save(const task& t, bool defer) {
  task& row = upsert(t, 0);
  if (writing_) {
    const std::string& arn = row.arn();
    if (defer) {
      if (!dirty_.contains(arn) &&
          deferred_.try_emplace(arn, std::chrono::steady_clock::now() + defer_for).second) {
        pending_cv_.notify_one();  // the writer's next wake may be sooner now
      }
      unannounced_.insert(arn);  // announced when written (write_pending)
      return;
    }
    deferred_.erase(arn);
    dirty_.insert(arn);
    pending_cv_.notify_one();
    announce(row, false);
    return;
  }
  if (auto w = write(row, writer::engine); w) {
    keys_[key_of(row)] = known{row.arn(), *w, false};
  } else {
    spdlog::error("store: task {}: {}", row.arn(), w.error().message);
  }
  announce(row, false);
}

// ---- writing behind ----

bool task_table::merge_into_pending(task& local, task stored) {
  bool changed = take_stop(local, stored);
  if (local.ecs.tags != stored.ecs.tags) {
    local.ecs.tags = std::move(stored.ecs.tags);
    changed = true;
  }
  local.ecs.version = std::max(local.ecs.version.value_or(0), stored.ecs.version.value_or(0));
  return changed;
}

bool task_table::undefer(std::chrono::steady_clock::time_point now, bool all) {
  bool any = false;
  for (auto it = deferred_.begin(); it != deferred_.end();) {
    if (!all && it->second > now) {
      ++it;
      continue;
    }
    dirty_.insert(it->first);
    it = deferred_.erase(it);
    any = true;
  }
  return any;
}

void task_table::write_behind() {
  using clock = std::chrono::steady_clock;
  std::unique_lock lock(mu_);
  for (;;) {
    // Until something is dirty, or the earliest deferred save is due, or close().
    for (;;) {
      undefer(clock::now(), stop_writing_);
      if (stop_writing_ || !dirty_.empty()) break;
      if (deferred_.empty()) {
        pending_cv_.wait(lock);
        continue;
      }
      clock::time_point due = clock::time_point::max();
      for (const auto& [arn, at] : deferred_) due = std::min(due, at);
      pending_cv_.wait_until(lock, due);
    }
    if (dirty_.empty()) break;  // closing, and all written
    write_pending(lock);
    if (failed_writes_ == 0) continue;
    if (stop_writing_) {
      spdlog::error(
          "store: {} task record(s) not written at close; the engine writes them again "
          "at the next start",
          dirty_.size());
      break;
    }
    // The store is failing: again after a pause (50 ms, doubling to 800 ms), or at close.
    const auto pause = agent::retry_pause(failed_writes_);
    pending_cv_.wait_for(lock, pause, [&] { return stop_writing_; });
  }
  writing_ = false;
  changed_.notify_all();
}

void task_table::write_pending(std::unique_lock<std::mutex>& lock) {
  // etcd takes at most 128 operations per transaction by default; records are a few KiB.
  constexpr std::size_t most = 64;
  struct item {
    std::string key, arn;
    revision rev;
  };
  std::vector<item> items;
  txn_request tx;
  for (auto it = dirty_.begin(); it != dirty_.end() && items.size() < most;) {
    const std::string arn = *it;
    it = dirty_.erase(it);
    deferred_.erase(arn);  // written now
    const auto row = rows_.find(arn);
    if (row == rows_.end()) continue;
    if (unannounced_.contains(arn)) announce(row->second, false);
    std::string key = key_of(row->second);
    const auto k = keys_.find(key);
    if (k != keys_.end() && k->second.erased) continue;
    const revision rev = k == keys_.end() ? 0 : k->second.rev;
    tx.compares.push_back(compare::mod_revision_is(key, compare_op::equal, rev));
    tx.success.push_back(txn_op::put(key, text_of(row->second)));
    tx.failure.push_back(txn_op::get(key_range::one(key)));
    inflight_.insert(arn);
    items.push_back(item{std::move(key), arn, rev});
  }
  if (items.empty()) return;
  lock.unlock();
  auto r = state_->txn(tx);
  lock.lock();
  for (const item& i : items) inflight_.erase(i.arn);
  if (!r) {
    if (failed_writes_++ == 0) {
      spdlog::error("store: {} task record(s) not written ({}); trying again", items.size(),
                    r.error().detail);
    }
    for (const item& i : items) {
      if (rows_.contains(i.arn)) dirty_.insert(i.arn);
    }
    changed_.notify_all();
    return;
  }
  if (failed_writes_ > 0) spdlog::info("store: task records written again");
  failed_writes_ = 0;
  for (std::size_t n = 0; n < items.size(); ++n) {
    const item& i = items[n];
    if (!rows_.contains(i.arn)) continue;
    auto k = keys_.find(i.key);
    if (k != keys_.end() && k->second.erased) continue;
    if (r->succeeded) {
      // Unless a write made meanwhile (a control commit) is newer.
      if (k == keys_.end()) {
        keys_.emplace(i.key, known{i.arn, r->header_revision, false});
      } else if (k->second.rev < r->header_revision) {
        k->second.rev = r->header_revision;
      }
      continue;
    }
    // One record or more lost a race: those are merged with what the store has, and all are
    // made again.
    const auto& now = r->results.at(n).kvs;
    if (now.empty() && i.rev != 0) continue;  // deleted: the follower forgets it
    if (!now.empty() && (k == keys_.end() || k->second.rev < now.front().mod_revision)) {
      // A stored record that does not parse (logged by parse_record) is written over with the
      // engine's row, which follows Docker whatever the store holds.
      auto stored = parse_record(now.front());
      task& row = rows_.at(i.arn);
      const bool changed = stored && merge_into_pending(row, std::move(*stored));
      keys_[i.key] = known{i.arn, now.front().mod_revision, false};
      if (changed) announce(row, false);
    }
    deferred_.erase(i.arn);
    dirty_.insert(i.arn);
  }
  changed_.notify_all();
}

bool task_table::flush(std::chrono::steady_clock::duration timeout) {
  std::unique_lock lock(mu_);
  if (undefer(std::chrono::steady_clock::now(), true)) pending_cv_.notify_one();
  changed_.wait_for(lock, timeout,
                    [&] { return (dirty_.empty() && inflight_.empty()) || failed_writes_ > 0; });
  return dirty_.empty() && inflight_.empty() && failed_writes_ == 0;
}

agent::result<void> task_table::erase(const std::string& task_arn) {
  const auto it = rows_.find(task_arn);
  if (it == rows_.end()) return {};
  const std::string key = key_of(it->second);
  auto d = state_->del(key_range::one(key));
  if (!d) {
    spdlog::error("store: task {}: {}", task_arn, d.error().detail);
    return tl::unexpected(from(d.error()));
  }
  keys_[key] = known{task_arn, d->header_revision, true};
  unsave(task_arn);
  const task last = std::move(it->second);
  rows_.erase(it);
  announce(last, true);
  return {};
}

std::uint64_t task_table::watch(std::function<void(const change&)> fn) {
  watchers_.emplace(++last_watch_, std::move(fn));
  return last_watch_;
}

void task_table::unwatch(std::uint64_t id) { watchers_.erase(id); }

void task_table::announce(const task& t, bool erased) {
  if (!unannounced_.empty()) unannounced_.erase(t.arn());
  if (erased) {
    std::unique_lock lock(pub_mu_);
    if (const auto it = pub_.find(t.arn()); it != pub_.end()) {
      unindex_record(*it->second.record);
      pub_.erase(it);
    }
  } else {
    publish(t);
  }
  // A watcher's failure (a bug) is its own: the others still see the change, and the write
  // that made it stands.
  for (const auto& [id, w] : watchers_) {
    try {
      w(change{t, erased});
    } catch (const std::exception& e) {
      spdlog::error("task {}: a watcher failed: {}", t.arn(), e.what());
    }
  }
  changed_.notify_all();
}

// ---- reading ----

void task_table::publish(const task& t) {
  published p{std::make_shared<const task>(t), std::make_shared<views>()};
  std::unique_lock lock(pub_mu_);
  auto [it, fresh] = pub_.try_emplace(t.arn());
  if (fresh) {
    index_record(t);
  } else {
    reindex_record(*it->second.record, t);
  }
  it->second = std::move(p);
}

namespace {

const std::string& or_empty(const std::optional<std::string>& s) {
  static const std::string none;
  return s ? *s : none;
}

const std::string& group_of(const task& t) { return or_empty(t.ecs.group); }
const std::string& instance_of(const task& t) { return or_empty(t.ecs.container_instance_arn); }
const std::string& status_of(const task& t) { return or_empty(t.ecs.last_status); }

}  // namespace

void task_table::index_record(const task& t) {
  by_group_[group_of(t)].insert(t.arn());
  if (const std::string& on = instance_of(t); !on.empty()) by_instance_[on].insert(t.arn());
  ++by_status_[status_of(t)];
}

void task_table::drop(index& idx, const std::string& key, const std::string& arn) {
  const auto k = idx.find(key);
  if (k == idx.end()) return;
  k->second.erase(arn);
  if (k->second.empty()) idx.erase(k);
}

void task_table::uncount(const std::string& status) {
  const auto s = by_status_.find(status);
  if (s != by_status_.end() && --s->second == 0) by_status_.erase(s);
}

void task_table::unindex_record(const task& t) {
  drop(by_group_, group_of(t), t.arn());
  drop(by_instance_, instance_of(t), t.arn());
  uncount(status_of(t));
}

void task_table::reindex_record(const task& was, const task& t) {
  // Most changes are a status moving on: the group and the instance stay, and their sets of
  // long ARNs are left alone.
  const std::string &group = group_of(t), &on = instance_of(t);
  const std::string &was_group = group_of(was), &was_on = instance_of(was);
  if (group != was_group) {
    drop(by_group_, was_group, t.arn());
    by_group_[group].insert(t.arn());
  }
  if (on != was_on) {
    drop(by_instance_, was_on, t.arn());
    if (!on.empty()) by_instance_[on].insert(t.arn());
  }
  const std::string &status = status_of(t), &was_status = status_of(was);
  if (status != was_status) {
    uncount(was_status);
    ++by_status_[status];
  }
}

std::map<std::string, std::int64_t> task_table::status_counts() const {
  std::shared_lock lock(pub_mu_);
  return by_status_;
}

std::vector<std::string> task_table::on_instance(const std::string& container_instance_arn) const {
  std::shared_lock lock(pub_mu_);
  const auto it = by_instance_.find(container_instance_arn);
  if (it == by_instance_.end()) return {};
  return {it->second.begin(), it->second.end()};
}

std::shared_ptr<const task> task_table::get(const std::string& task_arn) const {
  std::shared_lock lock(pub_mu_);
  const auto it = pub_.find(task_arn);
  return it == pub_.end() ? nullptr : it->second.record;
}

std::shared_ptr<const std::string> task_table::serialized(const std::string& task_arn,
                                                          bool with_tags) const {
  published p;
  {
    std::shared_lock lock(pub_mu_);
    const auto it = pub_.find(task_arn);
    if (it == pub_.end()) return nullptr;
    p = it->second;
  }
  std::call_once(p.text->made, [&] {
    json view = response(*p.record, true);
    const auto dump = [](const json& j) {
      return j.dump(-1, ' ', false, json::error_handler_t::replace);
    };
    p.text->view_with_tags = dump(view);
    if (const auto tags = view.find("tags"); tags != view.end()) {
      view.erase(tags);
      p.text->view = dump(view);
      p.text->tagged = true;
    }
  });
  // Aliasing pointers: the text lives as long as its views do.
  return {p.text, with_tags || !p.text->tagged ? &p.text->view_with_tags : &p.text->view};
}

std::vector<std::shared_ptr<const task>> task_table::in_group(const std::string& group) const {
  std::vector<std::shared_ptr<const task>> out;
  std::shared_lock lock(pub_mu_);
  const auto g = by_group_.find(group);
  if (g == by_group_.end()) return out;
  out.reserve(g->second.size());
  for (const std::string& a : g->second) {
    if (const auto it = pub_.find(a); it != pub_.end()) out.push_back(it->second.record);
  }
  return out;
}

std::vector<std::shared_ptr<const task>> task_table::all() const {
  std::vector<std::shared_ptr<const task>> out;
  std::shared_lock lock(pub_mu_);
  out.reserve(pub_.size());
  for (const auto& [a, t] : pub_) out.push_back(t.record);
  return out;
}

}  // namespace berth::state
