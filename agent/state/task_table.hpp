// This agent's tasks as state: each task's record (its ECS document with Berth's `_berth`
// bookkeeping), kept in the store and in memory. The control side writes what should be (a new
// task, desiredStatus STOPPED); the task engine follows the records (watch) and writes what it
// observes; API reads see published copies.
//
// Thread safety: writers hold mutex() for a read-modify-write of rows() and call commit() or
// save() with it held; every write is announced, in order and under mutex(), to each watcher,
// and changed() is notified. Readers (get, all) never take mutex(): they see immutable copies
// published by each write, so they never wait behind a writer's store I/O or Docker.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <shared_mutex>
#include <string>
#include <vector>

#include "store.hpp"

namespace berth::state {

using nlohmann::json;

class task_table {
 public:
  // `s` outlives the table; task records are under kind "task", key "<cluster>/<task id>".
  explicit task_table(agent::store& s) : store_(s) {}

  // ---- writers: each call below needs mutex() held ----
  std::mutex& mutex() { return mu_; }
  // Notified after every write (and by whoever else shares mutex() for its waits).
  std::condition_variable& changed() { return changed_; }
  // The records by task ARN. Changes made in place are announced by the save() that follows.
  std::map<std::string, json>& rows() { return rows_; }

  // An action's write: durable first, then in the table. A failed write changes nothing.
  agent::result<void> commit(const json& task);
  // Several new records in one store transaction: all of them or none.
  agent::result<void> commit_all(const std::vector<json>& tasks);
  // The engine's write of what it observed: the table follows Docker whatever the store says;
  // a failed store write is logged, and the next change writes the whole record again.
  void save(const json& task);
  // Forgets a record: from the store first, then from the table.
  agent::result<void> erase(const std::string& task_arn);
  // A record read from the store at start: in the table and published, announced to no one.
  void load(const json& task);

  // One change: the record as written, or (erased) as it was last.
  struct change {
    const json& task;
    bool erased = false;
  };
  // Called under mutex() with every change, in order, until unwatch(id). It must not block, and
  // may change nothing in the table. Both under mutex().
  std::uint64_t watch(std::function<void(const change&)> fn);
  void unwatch(std::uint64_t id);

  // ---- readers: never take mutex() ----
  std::shared_ptr<const json> get(const std::string& task_arn) const;
  std::vector<std::shared_ptr<const json>> all() const;
  // The task as DescribeTasks shows it (the record without Berth's bookkeeping, with or
  // without its tags), serialized once per write: reads copy text instead of building JSON.
  std::shared_ptr<const std::string> serialized(const std::string& task_arn, bool with_tags) const;

 private:
  // The table's row for `task`, set to it.
  json& upsert(const json& task);
  void announce(const json& task, bool erased);
  void publish(const json& task);

  agent::store& store_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::map<std::string, json> rows_;
  std::map<std::uint64_t, std::function<void(const change&)>> watchers_;
  std::uint64_t last_watch_ = 0;
  mutable std::shared_mutex pub_mu_;  // a leaf lock: guards pub_ only
  struct published {
    std::shared_ptr<const json> record;
    std::shared_ptr<const std::string> view, view_with_tags;
  };
  std::map<std::string, published> pub_;
};

// The store key of a task record: "<cluster name>/<task id>".
std::string task_key(const json& task);

}  // namespace berth::state
