// The cluster's tasks as state: each task's record (state::task: ECS's Task with Berth's
// bookkeeping; task_record.hpp), kept in the store and mirrored in memory. JSON text is only
// the store's edge (and the serialized views DescribeTasks copies). The control side writes what
// should be (a new task, desiredStatus STOPPED); the task engine follows the records and writes
// what it observes; API reads see published copies.
//
// The store is the authority: the table follows it by watching every task key of its cluster,
// so a record written by anyone (another agent sharing the store, a tool) reaches the table and
// its watchers as the table's own writes do. Every write is a compare-and-swap on the record's
// revision; a write that lost a race to another writer is merged by ownership: the control side
// owns what a task should be (desiredStatus, the stop's code, reason and time, tags), the engine
// owns the rest (what it observed).
//
// The engine's writes are written behind: save() changes the row and announces it at once, and
// the table's writer thread puts every row saved since its last write in one store transaction
// (compared per record, merged by ownership as above when one lost). Under load that is one
// transaction for many tasks' changes instead of one each, and no engine thread waits for the
// store under mutex(). A save may be deferred (bookkeeping no one waits for: a container's Docker
// id, when its pull began): it is written with the task's next save that is not, or within
// `defer_for` (or at flush() and close()), so that a task started in less than that is written
// once, when it is RUNNING, instead of at each step; it is announced (and readers see it) when
// it is written or with that next save. A record the engine has changed and the store does not
// have yet is pending: changes the table follows from the store are merged into it, never over it.
// The control side's writes (commit, commit_all, erase) stay durable before they return.
//
// Thread safety: writers hold mutex() for a read-modify-write of rows() and call commit() or
// save() with it held; every change, the table's own and those it follows, is announced in
// order and under mutex() to each watcher, and changed() is notified. Readers (get, all) never
// take mutex(): they see immutable copies published by each change, so they never wait behind
// a writer's store I/O or Docker.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "berth/state.hpp"
#include "store.hpp"
#include "task_record.hpp"

namespace berth::state {

class task_table {
 public:
  // `s` outlives the table; task records are under kind "task", key "<cluster>/<task id>".
  explicit task_table(agent::store& s) : store_(s), state_(s.state()) {}
  ~task_table() { close(); }
  task_table(const task_table&) = delete;
  task_table& operator=(const task_table&) = delete;

  // Reads every task record of `cluster` into the table (published, announced to no one; an
  // unreadable one is logged and skipped) and from then on follows the store's changes to
  // them. Returns the records read. Once, before any write.
  agent::result<std::vector<task>> open(const std::string& cluster);
  // Writes what is pending, then stops following the store (idempotent; the destructor does
  // it). Saves after it are written at once.
  void close();
  // Waits until every save() made before the call is in the store (or the deadline passed, or
  // a write failed: it is retried, and flush() says false). Without mutex() held.
  bool flush(std::chrono::steady_clock::duration timeout = std::chrono::seconds(10));

  // ---- writers: each call below needs mutex() held ----
  std::mutex& mutex() { return mu_; }
  // Notified after every change (and by whoever else shares mutex() for its waits).
  std::condition_variable& changed() { return changed_; }
  // The records by task ARN (hashed, in no order: ARNs share their first 50 characters, and
  // every change looks one up). Changes made in place are announced by the save() that follows.
  using row_map = std::unordered_map<std::string, task>;
  row_map& rows() { return rows_; }

  // The control side's write (a new record, or what a task should be): durable first, then in
  // the table. A failed write changes nothing; one that lost a race is made again on the
  // stored record, with this one's desired fields.
  agent::result<void> commit(const task& t);
  // New records in one store transaction with `also` (a claim's other writes; its reads are
  // compared at the commit, and it runs again on fresh reads when they changed): all of it or
  // none. A record that exists already fails the commit. `lock` holds mutex(); it is let go for
  // the store's round trip (the table follows the store meanwhile, and the caller's peers go
  // on; changes to the new records that come back meanwhile are applied after them). Returns
  // the store's revision of the commit.
  agent::result<revision> commit_all(
      std::unique_lock<std::mutex>& lock, const std::vector<task>& tasks,
      const std::function<agent::result<void>(agent::store&)>& also = nullptr);
  // The engine's write of what it observed: the table follows Docker whatever the store says.
  // Written behind (above) once open(), at once before; a failed store write is logged and made
  // again. One that lost a race keeps the stored record's desired fields.
  // `defer`: written and announced with the next save of this record that is not deferred, or
  // within defer_for (above); pending meanwhile, as any save.
  void save(const task& t, bool defer = false);
  static constexpr std::chrono::milliseconds defer_for{1000};
  // Forgets a record: from the store first, then from the table.
  agent::result<void> erase(const std::string& task_arn);

  // One change: the record as written, or (erased) as it was last.
  struct change {
    const state::task& task;
    bool erased = false;
  };
  // Called under mutex() with every change, in order, until unwatch(id). It must not block, and
  // may change nothing in the table. Both under mutex().
  std::uint64_t watch(std::function<void(const change&)> fn);
  void unwatch(std::uint64_t id);

  // ---- readers: never take mutex() ----
  std::shared_ptr<const task> get(const std::string& task_arn) const;
  std::vector<std::shared_ptr<const task>> all() const;  // in no order
  // The tasks of one group ("service:<name>", "family:<name>", ...): a service's tasks without
  // a walk over every task of the cluster.
  std::vector<std::shared_ptr<const task>> in_group(const std::string& group) const;
  // The ARNs of the tasks placed on one container instance (any status): a lost or deregistered
  // instance's tasks without a walk over every task.
  std::vector<std::string> on_instance(const std::string& container_instance_arn) const;
  // How many tasks have each lastStatus, kept as records change: DescribeClusters' counts and
  // the berth_tasks metric without a walk over every task.
  std::map<std::string, std::int64_t> status_counts() const;
  // The task as DescribeTasks shows it (the record without Berth's bookkeeping, with or
  // without its tags), serialized at most once per write (at its first read): reads copy text.
  std::shared_ptr<const std::string> serialized(const std::string& task_arn, bool with_tags) const;

 private:
  // Who writes: control's desired fields win over the stored record's, or the stored record's
  // desired fields win over the engine's observation.
  enum class writer { control, engine };
  // Whether the engine's latest observation of `arn` is in the table only (saved, not yet
  // written, or being written).
  bool pending(const std::string& arn) const {
    return dirty_.contains(arn) || inflight_.contains(arn) || deferred_.contains(arn);
  }
  // The row's saves not yet written are moot (the whole row is stored, or it is gone).
  void unsave(const std::string& arn) {
    dirty_.erase(arn);
    deferred_.erase(arn);
  }
  // Deferred saves due by `now` (all of them with `all`) become dirty: written next. Whether
  // any did.
  bool undefer(std::chrono::steady_clock::time_point now, bool all = false);
  // `stored` (a record another writer made) into `local`, the engine's newer observation (a
  // pending row, or an engine write that lost its race): the engine's fields stay, a stop stored
  // is taken, and the control side's tags are the stored ones. Whether that changed `local`
  // (more than its version).
  static bool merge_into_pending(task& local, task stored);
  // The writer thread's loop, and one transaction of it (under mu_, which it releases for the
  // store's round trip).
  void write_behind();
  void write_pending(std::unique_lock<std::mutex>& lock);
  // Writes `task` over the stored record with a compare on the revision the table knows; on a
  // lost race merges the stored record into `task` and tries again. Returns the revision.
  agent::result<revision> write(task& t, writer who);
  // The table's row for `task`, set to it (at revision `rev`, unless 0).
  task& upsert(const task& t, revision rev);
  task& upsert(task&& t, revision rev);  // a record parsed from the store: moved in
  void announce(const task& t, bool erased);
  void publish(const task& t);
  // Following the store: the loop of the follower thread, one event, and a relist after the
  // watch fell behind a compaction. Under mu_ except follow().
  void follow(revision from);
  void apply(const event& e);
  result<revision> relist();

  agent::store& store_;
  std::shared_ptr<store> state_;
  std::string prefix_;  // the store keys of the cluster's task records
  std::mutex mu_;
  std::condition_variable changed_;
  row_map rows_;
  // Each record's store key: its task, the revision the table has, and whether the table erased
  // it (a tombstone until the store's delete event comes back). The follower skips any event
  // not newer than what the table has.
  struct known {
    std::string arn;
    revision rev = 0;
    bool erased = false;
  };
  std::unordered_map<std::string, known> keys_;  // hashed: looked up at every change
  // The keys commit_all is creating, with the events the follower brought for them meanwhile.
  std::unordered_map<std::string, std::vector<event>> creating_;
  std::map<std::uint64_t, std::function<void(const change&)>> watchers_;
  std::uint64_t last_watch_ = 0;
  // The follower: its thread and the watch it reads (follow_mu_ guards watcher_ and closing_).
  std::mutex follow_mu_;
  std::condition_variable follow_cv_;
  std::thread follower_;
  watcher* watcher_ = nullptr;
  bool closing_ = false;
  // Written behind (under mu_): the rows saved and not yet written, those being written, how many
  // writes failed in a row, and the writer thread (running_ while it takes saves).
  std::unordered_set<std::string> dirty_, inflight_;
  // Saved with `defer`, not yet dirty: when each is due (the writer wakes for the earliest).
  std::unordered_map<std::string, std::chrono::steady_clock::time_point> deferred_;
  // Rows changed by a deferred save and not announced since: announced when written.
  std::unordered_set<std::string> unannounced_;
  int failed_writes_ = 0;
  std::condition_variable pending_cv_;
  std::thread writer_;
  bool writing_ = false, stop_writing_ = false;
  mutable std::shared_mutex pub_mu_;  // a leaf lock: guards pub_ only
  // DescribeTasks' text of one published record, made at its first read (a record changes
  // several times before anyone reads it, and every agent follows every record: made at each
  // write, it was most of what following the store cost).
  struct views {
    std::once_flag made;
    std::string view_with_tags, view;  // view: only when the record has tags
    bool tagged = false;
  };
  struct published {
    std::shared_ptr<const task> record;
    std::shared_ptr<views> text;
  };
  // Hashed: every change looks its task up, and ARNs share their first 50 characters (a tree
  // compared them at each of its levels). all() is in no order.
  std::unordered_map<std::string, published> pub_;
  // Indexes of pub_ (under pub_mu_): group -> its tasks' ARNs, container instance -> its
  // tasks' ARNs, lastStatus -> how many tasks.
  using index = std::unordered_map<std::string, std::set<std::string>>;
  index by_group_, by_instance_;
  std::map<std::string, std::int64_t> by_status_;
  // Under pub_mu_: a record into the indexes, out of them, or moved from `was` (its last).
  void index_record(const task& t);
  void unindex_record(const task& t);
  void reindex_record(const task& was, const task& t);
  static void drop(index& idx, const std::string& key, const std::string& arn);
  void uncount(const std::string& status);
};

}  // namespace berth::state
