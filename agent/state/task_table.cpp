#include "task_table.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <set>

#include "berth/agent/util.hpp"

namespace berth::state {

namespace {

using namespace std::chrono_literals;

agent::error from(const error& e) { return agent::error{e.detail}; }

std::string key_of(const json& task) { return agent::document_key("task", task_key(task)); }

// What the control side decides about a task; the engine owns everything else in a record.
constexpr const char* stop_fields[] = {"desiredStatus", "stopCode", "stoppedReason", "stoppingAt"};

void copy_member(json& to, const json& from, const char* name) {
  if (const auto it = from.find(name); it != from.end()) {
    to[name] = *it;
  } else {
    to.erase(name);
  }
}

// A record of the store that the table can hold: an object naming its task, with bookkeeping.
std::optional<json> parse_record(const key_value& kv) {
  json t = json::parse(kv.value, nullptr, false);
  if (!t.is_object() || !t.contains("taskArn") || !t["taskArn"].is_string() ||
      !t.contains("clusterArn") || !t["clusterArn"].is_string() || !t.contains("_berth")) {
    spdlog::error("store: task record {} is unreadable; skipped", kv.key);
    return std::nullopt;
  }
  return t;
}

}  // namespace

std::string task_key(const json& task) {
  const std::string& cluster = task["clusterArn"].get_ref<const std::string&>();
  return cluster.substr(cluster.rfind('/') + 1) + "/" +
         agent::name_of(task["taskArn"].get<std::string>());
}

// ---- following the store ----

agent::result<std::vector<json>> task_table::open(const std::string& cluster) {
  prefix_ = agent::document_key("task", cluster + "/");
  auto listed = state_->range(key_range::with_prefix(prefix_));
  if (!listed) return tl::unexpected(from(listed.error()));
  std::vector<json> out;
  {
    std::lock_guard lock(mu_);
    for (const auto& kv : listed->kvs) {
      auto t = parse_record(kv);
      if (!t) continue;
      const std::string a = (*t)["taskArn"];
      rows_[a] = *t;
      keys_[kv.key] = known{a, kv.mod_revision, false};
      publish(*t);
      out.push_back(std::move(*t));
    }
  }
  follower_ = std::thread([this, from = listed->header_revision + 1] { follow(from); });
  return out;
}

void task_table::close() {
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
    keys_.erase(k);
    if (row == rows_.end()) return;
    const json last = std::move(row->second);
    rows_.erase(row);
    announce(last, true);
    return;
  }
  auto t = parse_record(e.kv);
  if (!t) return;
  announce(upsert(*t, e.kv.mod_revision), false);
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
    const json last = std::move(row->second);
    rows_.erase(row);
    announce(last, true);
  }
  return listed->header_revision;
}

// ---- writing ----

agent::result<revision> task_table::write(json& task, writer who) {
  const std::string key = key_of(task);
  const std::string arn = task["taskArn"];
  for (int attempt = 0; attempt < 16; ++attempt) {
    const auto k = keys_.find(key);
    const revision known_rev = k == keys_.end() || k->second.erased ? 0 : k->second.rev;
    txn_request t;
    t.compares = {compare::mod_revision_is(key, compare_op::equal, known_rev)};
    t.success = {txn_op::put(key, task.dump())};
    t.failure = {txn_op::get(key_range::one(key))};
    auto r = state_->txn(t);
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
        std::max(task.value("version", std::int64_t{0}), stored->value("version", std::int64_t{0}));
    if (who == writer::control) {
      for (const char* f : stop_fields) copy_member(*stored, task, f);
      copy_member(*stored, task, "tags");
      task = std::move(*stored);
    } else {
      if ((*stored)["desiredStatus"] == "STOPPED" && task["desiredStatus"] != "STOPPED") {
        for (const char* f : stop_fields) copy_member(task, *stored, f);
      }
      copy_member(task, *stored, "tags");
    }
    task["version"] = version;
    keys_[key] = known{arn, now.front().mod_revision, false};
  }
  return tl::unexpected(agent::error{"task " + arn + ": too many concurrent writers"});
}

agent::result<void> task_table::commit(const json& task) {
  json rec = task;
  auto w = write(rec, writer::control);
  if (!w) {
    spdlog::error("store: task {}: {}", task["taskArn"].get<std::string>(), w.error().message);
    return tl::unexpected(w.error());
  }
  announce(upsert(rec, *w), false);
  return {};
}

json& task_table::upsert(const json& task, revision rev) {
  const std::string a = task["taskArn"];
  if (rev != 0) keys_[key_of(task)] = known{a, rev, false};
  // Usually `task` is the table's own row: assigning it to itself would free what callers
  // still hold references into.
  const auto it = rows_.find(a);
  if (it == rows_.end()) return rows_.emplace(a, task).first->second;
  if (&it->second != &task) it->second = task;
  return it->second;
}

agent::result<void> task_table::commit_all(
    const std::vector<json>& tasks, const std::function<agent::result<void>(agent::store&)>& also) {
  auto w = store_.transaction([&](agent::store& st) -> agent::result<void> {
    if (also) {
      if (auto a = also(st); !a) return a;
    }
    for (const json& t : tasks) {
      const std::string k = task_key(t);
      // Read, so that the commit checks it is still absent.
      auto cur = st.get("task", k);
      if (!cur) return tl::unexpected(cur.error());
      if (*cur) return tl::unexpected(agent::error{"task " + k + " exists already"});
      if (auto p = st.put("task", k, t.dump()); !p) return p;
    }
    return {};
  });
  if (!w) {
    spdlog::error("store: new tasks not written: {}", w.error().message);
    return tl::unexpected(w.error());
  }
  // Every row in first: a watcher sees the whole batch in the table.
  for (const json& t : tasks) upsert(t, *w);
  for (const json& t : tasks) announce(rows_.at(t["taskArn"].get<std::string>()), false);
  return {};
}

void task_table::save(const json& task) {
  json& row = upsert(task, 0);
  if (auto w = write(row, writer::engine); w) {
    keys_[key_of(row)] = known{row["taskArn"], *w, false};
  } else {
    spdlog::error("store: task {}: {}", row["taskArn"].get<std::string>(), w.error().message);
  }
  announce(row, false);
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
  const json last = std::move(it->second);
  rows_.erase(it);
  announce(last, true);
  return {};
}

std::uint64_t task_table::watch(std::function<void(const change&)> fn) {
  watchers_.emplace(++last_watch_, std::move(fn));
  return last_watch_;
}

void task_table::unwatch(std::uint64_t id) { watchers_.erase(id); }

void task_table::announce(const json& task, bool erased) {
  if (erased) {
    std::unique_lock lock(pub_mu_);
    pub_.erase(task["taskArn"].get<std::string>());
  } else {
    publish(task);
  }
  // A watcher's failure (a bug) is its own: the others still see the change, and the write
  // that made it stands.
  for (const auto& [id, w] : watchers_) {
    try {
      w(change{task, erased});
    } catch (const std::exception& e) {
      spdlog::error("task {}: a watcher failed: {}", task.value("taskArn", ""), e.what());
    }
  }
  changed_.notify_all();
}

// ---- reading ----

void task_table::publish(const json& task) {
  published p;
  p.record = std::make_shared<const json>(task);
  json view = json::object();
  for (const auto& [k, m] : task.items()) {
    if (k != "_berth" && k != "tags") view[k] = m;
  }
  p.view = std::make_shared<const std::string>(
      view.dump(-1, ' ', false, json::error_handler_t::replace));
  if (const auto tags = task.find("tags"); tags != task.end()) {
    view["tags"] = *tags;
    p.view_with_tags = std::make_shared<const std::string>(
        view.dump(-1, ' ', false, json::error_handler_t::replace));
  } else {
    p.view_with_tags = p.view;
  }
  std::unique_lock lock(pub_mu_);
  pub_[task["taskArn"].get<std::string>()] = std::move(p);
}

std::shared_ptr<const json> task_table::get(const std::string& task_arn) const {
  std::shared_lock lock(pub_mu_);
  const auto it = pub_.find(task_arn);
  return it == pub_.end() ? nullptr : it->second.record;
}

std::shared_ptr<const std::string> task_table::serialized(const std::string& task_arn,
                                                          bool with_tags) const {
  std::shared_lock lock(pub_mu_);
  const auto it = pub_.find(task_arn);
  if (it == pub_.end()) return nullptr;
  return with_tags ? it->second.view_with_tags : it->second.view;
}

std::vector<std::shared_ptr<const json>> task_table::all() const {
  std::vector<std::shared_ptr<const json>> out;
  std::shared_lock lock(pub_mu_);
  out.reserve(pub_.size());
  for (const auto& [a, t] : pub_) out.push_back(t.record);
  return out;
}

}  // namespace berth::state
