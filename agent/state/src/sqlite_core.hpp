// The store contract on SQLite, log-structured as k3s's kine does it: every write is a row of
// `log` (its revision, the key, created/deleted flags, create and previous revision, lease, value
// and the value it replaced), so a watch can resume from any revision still in the log. Unlike
// kine, current values also live in `kv` (one row per live key) rather than being found by a
// max(id)-per-name scan; both tables change in the same SQLite transaction. And `kv` is mirrored
// in memory, behind its own reader-writer lock: get and range never touch SQLite nor wait for a
// writer's commit (measured with 2 KiB values: ~20 us per get through SQLite, under 1 us here).
// That costs memory the size of the current state, which is records, not blobs. One etcd revision
// may hold many writes (a txn), hence `sub` within a revision.
//
// WAL, synchronous=NORMAL (a crash of the process loses nothing committed; a power loss may lose
// the last transactions, never corrupts), one connection behind a mutex. Exclusive locking: the
// WAL index lives in this process's heap rather than in a mapped -shm file. A -shm file that
// cannot grow (a full or read-only disk, an immutable file) turned every access into SIGBUS; now
// there is no such file, and a second process gets "database is locked".
//
// One class, sqlite_core, its members defined by concern:
//   sqlite_store.cpp   opening, closing, the background ticker, SQL helpers; the store handed out
//   sqlite_kv.cpp      reads from the mirror, txn (compares, put, delete), compaction
//   sqlite_watch.cpp   the change feed: the event ring, watchers, catching up from `log`
//   sqlite_leases.cpp  grant, keep-alive, revoke, expiry
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "berth/state.hpp"

namespace berth::state::detail {

using steady = std::chrono::steady_clock;

struct db_deleter {
  void operator()(sqlite3* d) const noexcept { sqlite3_close_v2(d); }
};
struct stmt_deleter {
  void operator()(sqlite3_stmt* s) const noexcept { sqlite3_finalize(s); }
};
using stmt_ptr = std::unique_ptr<sqlite3_stmt, stmt_deleter>;

// A cached statement in use: reset and unbound when done, ready for the next caller.
class stmt_use {
 public:
  explicit stmt_use(sqlite3_stmt* s) : s_(s) {}
  ~stmt_use() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  stmt_use(const stmt_use&) = delete;
  stmt_use& operator=(const stmt_use&) = delete;
  sqlite3_stmt* get() const { return s_; }
  int step() const { return sqlite3_step(s_); }
  // Keys and values are bound as blobs: bytewise order, NULs kept, and never NULL.
  void blob(int i, std::string_view v) const {
    if (v.empty()) {
      sqlite3_bind_zeroblob(s_, i, 0);
    } else {
      sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    }
  }
  void integer(int i, std::int64_t v) const { sqlite3_bind_int64(s_, i, v); }
  std::string column_blob(int c) const {
    const auto* p = static_cast<const char*>(sqlite3_column_blob(s_, c));
    return p == nullptr ? std::string()
                        : std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(s_, c)));
  }
  std::int64_t column_int(int c) const { return sqlite3_column_int64(s_, c); }

 private:
  sqlite3_stmt* s_;
};

inline revision event_revision(const event& e) { return e.kv.mod_revision; }

inline bool in_range(const key_range& r, const std::string& end, std::string_view key) {
  if (!r.prefix) return key == r.key;
  return key >= std::string_view(r.key) && (end.empty() || key < std::string_view(end));
}

// One watch's state, shared by the store (which feeds it) and the watcher (which drains it).
struct watch_state {
  key_range range;
  std::string end;  // prefix_end(range.key) for a prefix
  std::size_t buffer = 0;
  bool prev_kv = false;  // delivered with each event's previous value

  // Guarded by the store's mutex (and, where written, mu too):
  revision fetch_from = 0;  // the next revision not yet queued
  bool synced = false;      // fed by writers (else it catches up when it next reads)

  // Guarded by mu:
  std::mutex mu;
  std::condition_variable cv;
  std::deque<event> queue;
  bool canceled = false;
  std::optional<error> failure;  // delivered once the queue is drained
  revision delivered_next = 0;   // last delivered revision + 1

  bool matches(std::string_view key) const { return in_range(range, end, key); }
};

struct lease_entry {
  std::chrono::seconds ttl{0};
  steady::time_point deadline;
};

// The store's state and its one connection. Public members lock for themselves (range and
// current_revision take only view_mu_, shared; init runs before the core is shared). Private ones
// expect mu_ held or run from init; tick_loop is the ticker thread's body.
class sqlite_core : public std::enable_shared_from_this<sqlite_core> {
 public:
  sqlite_core(sqlite3* db, std::string path, const sqlite_options& o);

  result<void> init();
  // Ends everything: the ticker, the watchers (errc::canceled), the connection.
  void close();

  // ---- reads and writes (sqlite_kv.cpp) ----

  result<range_result> range(const key_range& r, std::int64_t limit);
  result<revision> current_revision();
  result<revision> compacted_revision();
  result<txn_result> txn(const txn_request& t);
  result<revision> compact(revision rev);

  // ---- watch (sqlite_watch.cpp) ----

  result<std::unique_ptr<watcher>> watch(const watch_request& req);
  void cancel(const std::shared_ptr<watch_state>& w);
  result<void> catch_up(const std::shared_ptr<watch_state>& w);

  // ---- leases (sqlite_leases.cpp) ----

  result<lease_grant> grant(std::chrono::seconds ttl);
  result<std::chrono::seconds> keep_alive(lease_id id);
  result<void> revoke(lease_id id);
  result<lease_status> time_to_live(lease_id id);
  result<std::size_t> expire_leases();

 private:
  // A write transaction's body: appends the events its writes make, returns the txn's result.
  using txn_body = std::function<result<txn_result>(std::vector<event>&)>;

  // ---- helpers: SQL (sqlite_store.cpp) ----

  result<void> exec(const char* sql);
  result<sqlite3_stmt*> prepare(const char* sql);
  error fail(const char* what) const;
  result<void> quick_check();
  std::string lock_holder() const;
  result<std::int64_t> meta(const char* name);
  result<void> set_meta(const char* name, std::int64_t v);

  // ---- helpers: checks and errors (sqlite_store.cpp) ----

  result<void> check_open() const;
  static result<void> check_range(const key_range& r);
  error compacted_error(revision start) const;
  static error no_lease(lease_id id);

  // ---- helpers: kv (sqlite_kv.cpp) ----

  static void read_kv(const stmt_use& q, key_value& kv);
  result<std::optional<key_value>> read_one(std::string_view key);
  result<std::vector<key_value>> read_range(const key_range& r, std::int64_t limit, bool* more);
  static bool holds(const compare& c, const key_value& kv);
  result<txn_result> write_txn(const txn_body& body);
  result<void> log_row(const event& e, bool created);
  result<void> put_kv(const key_value& kv);
  result<void> delete_kv(std::string_view key);
  result<op_result> apply(const txn_op& op, std::vector<event>& events);

  // ---- helpers: leases (sqlite_leases.cpp) ----

  result<std::vector<std::string>> lease_keys(lease_id id);
  result<void> revoke_locked(lease_id id);

  // ---- helpers: the change feed (sqlite_watch.cpp) ----

  void publish(std::vector<event> events);
  result<void> read_log(const watch_state& w, revision from, revision to, std::vector<event>& out);
  static void end_watch(watch_state& w);

  // ---- the background ticker (sqlite_store.cpp) ----

  void tick_loop();

  std::mutex mu_;  // the connection and everything below, except where said
  std::unique_ptr<sqlite3, db_deleter> db_;
  std::string path_;
  sqlite_options opt_;
  std::unordered_map<const char*, stmt_ptr> stmts_;  // keyed by the SQL literal's address
  // closed_, revision_ and current_ change under mu_ and view_mu_ (unique) together, so either
  // lock is enough to read them; readers take only view_mu_ (shared).
  std::shared_mutex view_mu_;
  bool closed_ = false;
  revision revision_ = 0;
  std::map<std::string, key_value, std::less<>> current_;
  revision compacted_ = 0;
  std::int64_t next_sub_ = 0;
  std::deque<event> ring_;
  revision ring_from_ = 1;  // every event of a revision >= this is in ring_
  std::vector<std::shared_ptr<watch_state>> live_;
  std::map<lease_id, lease_entry> leases_;
  std::mt19937_64 rng_{std::random_device{}()};

  std::mutex tick_mu_;
  std::condition_variable tick_cv_;
  bool stopping_ = false;
  steady::time_point last_compaction_;  // the ticker's
  std::thread ticker_;
};

}  // namespace berth::state::detail
