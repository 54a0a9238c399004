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
// Watchers: recent events stay in a ring in memory; a synced watcher is pushed each revision's
// matching events under the store's mutex, into its own bounded queue. A watcher whose queue is
// full is not waited for: it drops back to "unsynced" and, when it next reads, catches up from
// the ring or, for older revisions, from `log` (as etcd's unsynced watcher group does).
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <thread>
#include <unordered_map>

#include "berth/state.hpp"

namespace berth::state {

namespace {

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

revision event_revision(const event& e) { return e.kv.mod_revision; }

bool in_range(const key_range& r, const std::string& end, std::string_view key) {
  if (!r.prefix) return key == r.key;
  return key >= std::string_view(r.key) && (end.empty() || key < std::string_view(end));
}

// One watch's state, shared by the store (which feeds it) and the watcher (which drains it).
struct watch_state {
  key_range range;
  std::string end;  // prefix_end(range.key) for a prefix
  std::size_t buffer = 0;

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

class sqlite_core;

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

struct lease_entry {
  std::chrono::seconds ttl{0};
  steady::time_point deadline;
};

class sqlite_core : public std::enable_shared_from_this<sqlite_core> {
 public:
  sqlite_core(sqlite3* db, std::string path, const sqlite_options& o)
      : db_(db), path_(std::move(path)), opt_(o) {
    if (!opt_.now) opt_.now = [] { return steady::now(); };
    if (opt_.event_ring == 0) opt_.event_ring = 1;
    if (opt_.watcher_buffer == 0) opt_.watcher_buffer = 1;
  }

  result<void> init() {
    // Taken now, held until close: nobody else writes, or reads half a transaction. A process
    // still exiting has a few seconds to let go.
    if (auto r = exec("PRAGMA busy_timeout=5000"); !r) return r;
    if (auto r = exec("PRAGMA locking_mode=EXCLUSIVE"); !r) return r;
    if (auto r = exec("BEGIN EXCLUSIVE"); !r) {
      if ((sqlite3_errcode(db_.get()) & 0xff) == SQLITE_BUSY) {
        return tl::unexpected(
            error{errc::in_use, "store " + path_ + " is in use by " + lock_holder()});
      }
      return tl::unexpected(
          error{errc::damaged, "store " + path_ + " is damaged: " + sqlite3_errmsg(db_.get())});
    }
    if (auto r = exec("COMMIT"); !r) return r;
    // A damaged file is refused, naming it: starting on it would mean starting with its keys
    // forgotten while what they describe (containers, leases) lives on.
    if (auto r = quick_check(); !r) return r;
    for (const char* sql : {
             "PRAGMA journal_mode=WAL",
             "PRAGMA synchronous=NORMAL",
             "CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, rev INTEGER NOT NULL, "
             "sub INTEGER NOT NULL, name BLOB NOT NULL, created INTEGER NOT NULL, deleted "
             "INTEGER NOT NULL, create_revision INTEGER NOT NULL, prev_revision INTEGER NOT "
             "NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL, value BLOB NOT NULL, "
             "old_value BLOB NOT NULL, old_lease INTEGER NOT NULL)",
             "CREATE UNIQUE INDEX IF NOT EXISTS log_rev ON log (rev, sub)",
             // A rowid table: values (whole documents) are too large for WITHOUT ROWID's pages.
             "CREATE TABLE IF NOT EXISTS kv (name BLOB PRIMARY KEY, value BLOB NOT NULL, "
             "create_revision INTEGER NOT NULL, mod_revision INTEGER NOT NULL, version INTEGER "
             "NOT NULL, lease INTEGER NOT NULL)",
             "CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease) WHERE lease != 0",
             "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) "
             "WITHOUT ROWID",
             "CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL)",
         }) {
      if (auto r = exec(sql); !r) return r;
    }
    auto rev = meta("revision");
    if (!rev) return tl::unexpected(rev.error());
    auto compacted = meta("compacted");
    if (!compacted) return tl::unexpected(compacted.error());
    revision_ = *rev;
    compacted_ = *compacted;
    ring_from_ = revision_ + 1;
    {
      auto s = prepare("SELECT name, value, create_revision, mod_revision, version, lease FROM kv");
      if (!s) return tl::unexpected(s.error());
      stmt_use q(*s);
      int rc;
      while ((rc = q.step()) == SQLITE_ROW) {
        key_value kv;
        read_kv(q, kv);
        std::string k = kv.key;
        current_.emplace(std::move(k), std::move(kv));
      }
      if (rc != SQLITE_DONE) return tl::unexpected(fail("read keys"));
    }
    // Leases restart their TTL: the time the store was closed does not count against them.
    {
      auto s = prepare("SELECT id, ttl FROM leases");
      if (!s) return tl::unexpected(s.error());
      stmt_use q(*s);
      int rc;
      while ((rc = q.step()) == SQLITE_ROW) {
        const std::chrono::seconds ttl(q.column_int(1));
        leases_[q.column_int(0)] = {ttl, opt_.now() + ttl};
      }
      if (rc != SQLITE_DONE) return tl::unexpected(fail("read leases"));
    }
    if (opt_.lease_check_interval.count() > 0) {
      last_compaction_ = opt_.now();
      ticker_ = std::thread([this] { tick_loop(); });
    }
    return {};
  }

  // Ends everything: the ticker, the watchers (errc::canceled), the connection.
  void close() {
    {
      std::lock_guard lock(tick_mu_);
      stopping_ = true;
    }
    tick_cv_.notify_all();
    if (ticker_.joinable()) ticker_.join();
    std::lock_guard lock(mu_);
    {
      std::unique_lock view(view_mu_);
      closed_ = true;
    }
    for (auto& w : live_) end_watch(*w);
    live_.clear();
    stmts_.clear();
    db_.reset();
  }

  // ---- reads ----

  // From the mirror: one revision's state, whatever writers are doing meanwhile.
  result<range_result> range(const key_range& r, std::int64_t limit) {
    if (auto v = check_range(r); !v) return tl::unexpected(v.error());
    std::shared_lock lock(view_mu_);
    if (auto c = check_open(); !c) return tl::unexpected(c.error());
    range_result out;
    out.header_revision = revision_;
    if (!r.prefix) {
      if (auto it = current_.find(r.key); it != current_.end()) out.kvs.push_back(it->second);
      return out;
    }
    const std::string end = prefix_end(r.key);
    for (auto it = current_.lower_bound(r.key);
         it != current_.end() && (end.empty() || it->first < end); ++it) {
      if (limit > 0 && static_cast<std::int64_t>(out.kvs.size()) == limit) {
        out.more = true;
        break;
      }
      out.kvs.push_back(it->second);
    }
    return out;
  }

  result<revision> current_revision() {
    std::shared_lock lock(view_mu_);
    if (auto c = check_open(); !c) return tl::unexpected(c.error());
    return revision_;
  }
  result<revision> compacted_revision() {
    std::lock_guard lock(mu_);
    if (auto c = check_open(); !c) return tl::unexpected(c.error());
    return compacted_;
  }

  // ---- writes ----

  result<txn_result> txn(const txn_request& t) {
    for (const auto& c : t.compares) {
      if (c.key.empty()) return tl::unexpected(error{errc::invalid_argument, "compare: empty key"});
    }
    for (const auto* ops : {&t.success, &t.failure}) {
      for (const auto& op : *ops) {
        if (op.type == txn_op::kind::put && op.range.key.empty()) {
          return tl::unexpected(error{errc::invalid_argument, "put: empty key"});
        }
        if (op.type != txn_op::kind::put) {
          if (auto v = check_range(op.range); !v) return tl::unexpected(v.error());
        }
      }
    }
    std::lock_guard lock(mu_);
    if (auto c = check_open(); !c) return tl::unexpected(c.error());
    return write_txn([&](std::vector<event>& events) -> result<txn_result> {
      txn_result out;
      out.succeeded = true;
      // Compares come before any op: the mirror (stable under mu_) is the state they see.
      static const key_value missing;
      for (const auto& c : t.compares) {
        const auto it = current_.find(c.key);
        if (!holds(c, it == current_.end() ? missing : it->second)) {
          out.succeeded = false;
          break;
        }
      }
      for (const auto& op : out.succeeded ? t.success : t.failure) {
        auto r = apply(op, events);
        if (!r) return tl::unexpected(r.error());
        out.results.push_back(std::move(*r));
      }
      return out;
    });
  }

  result<revision> compact(revision rev) {
    std::lock_guard lock(mu_);
    if (auto c = check_open(); !c) return tl::unexpected(c.error());
    if (rev > revision_) {
      return tl::unexpected(error{errc::future_revision, "compact " + std::to_string(rev) +
                                                             ": the store is at revision " +
                                                             std::to_string(revision_)});
    }
    if (rev <= compacted_) return compacted_;
    if (auto r = exec("BEGIN IMMEDIATE"); !r) return tl::unexpected(r.error());
    auto done = [&]() -> result<void> {
      auto s = prepare("DELETE FROM log WHERE rev < ?1");
      if (!s) return tl::unexpected(s.error());
      stmt_use q(*s);
      q.integer(1, rev);
      if (q.step() != SQLITE_DONE) return tl::unexpected(fail("compact"));
      return set_meta("compacted", rev);
    }();
    if (done) done = exec("COMMIT");
    if (!done) {
      (void)exec("ROLLBACK");
      return tl::unexpected(done.error());
    }
    compacted_ = rev;
    return compacted_;
  }

  // ---- watch ----

  result<std::unique_ptr<watcher>> watch(const watch_request& req) {
    if (auto v = check_range(req.range); !v) return tl::unexpected(v.error());
    auto w = std::make_shared<watch_state>();
    w->range = req.range;
    if (req.range.prefix) w->end = prefix_end(req.range.key);
    w->buffer = opt_.watcher_buffer;
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

  void cancel(const std::shared_ptr<watch_state>& w) {
    std::lock_guard lock(mu_);
    std::erase(live_, w);
    end_watch(*w);
  }

  // Queues the watcher's next events from the ring or the log: up to its buffer, whole
  // revisions. Returns once something was queued or it is synced again.
  result<void> catch_up(const std::shared_ptr<watch_state>& w) {
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
        auto it =
            std::lower_bound(ring_.begin(), ring_.end(), w->fetch_from,
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

  // ---- leases ----

  result<lease_grant> grant(std::chrono::seconds ttl) {
    if (ttl.count() <= 0) {
      return tl::unexpected(error{errc::invalid_argument, "lease TTL must be positive"});
    }
    std::lock_guard lock(mu_);
    if (auto c = check_open(); !c) return tl::unexpected(c.error());
    // Random ids, as etcd's: an id never names two leases, even across a revoke and restart.
    lease_id id;
    do {
      id = static_cast<lease_id>(rng_() >> 1);
    } while (id == 0 || leases_.contains(id));
    auto s = prepare("INSERT INTO leases (id, ttl) VALUES (?1, ?2)");
    if (!s) return tl::unexpected(s.error());
    stmt_use q(*s);
    q.integer(1, id);
    q.integer(2, ttl.count());
    if (q.step() != SQLITE_DONE) return tl::unexpected(fail("grant lease"));
    leases_[id] = {ttl, opt_.now() + ttl};
    return lease_grant{id, ttl};
  }

  result<std::chrono::seconds> keep_alive(lease_id id) {
    std::lock_guard lock(mu_);
    if (auto c = check_open(); !c) return tl::unexpected(c.error());
    auto it = leases_.find(id);
    if (it == leases_.end()) return tl::unexpected(no_lease(id));
    const auto now = opt_.now();
    if (it->second.deadline <= now) {
      // Too late, even if the ticker has not reaped it yet: renewing would resurrect keys
      // others may already have seen as gone.
      if (auto r = revoke_locked(id); !r) return tl::unexpected(r.error());
      return tl::unexpected(no_lease(id));
    }
    it->second.deadline = now + it->second.ttl;
    return it->second.ttl;
  }

  result<void> revoke(lease_id id) {
    std::lock_guard lock(mu_);
    if (auto c = check_open(); !c) return tl::unexpected(c.error());
    return revoke_locked(id);
  }

  result<lease_status> time_to_live(lease_id id) {
    std::lock_guard lock(mu_);
    if (auto c = check_open(); !c) return tl::unexpected(c.error());
    auto it = leases_.find(id);
    if (it == leases_.end()) return tl::unexpected(no_lease(id));
    lease_status out;
    out.id = id;
    out.granted_ttl = it->second.ttl;
    out.remaining = std::max(
        std::chrono::milliseconds(0),
        std::chrono::duration_cast<std::chrono::milliseconds>(it->second.deadline - opt_.now()));
    auto keys = lease_keys(id);
    if (!keys) return tl::unexpected(keys.error());
    out.keys = std::move(*keys);
    return out;
  }

  result<std::size_t> expire_leases() {
    std::lock_guard lock(mu_);
    if (auto c = check_open(); !c) return tl::unexpected(c.error());
    const auto now = opt_.now();
    std::vector<lease_id> due;
    for (const auto& [id, l] : leases_) {
      if (l.deadline <= now) due.push_back(id);
    }
    for (lease_id id : due) {
      if (auto r = revoke_locked(id); !r) return tl::unexpected(r.error());
    }
    return due.size();
  }

 private:
  // ---- helpers: SQL ----

  result<void> exec(const char* sql) {
    char* msg = nullptr;
    if (sqlite3_exec(db_.get(), sql, nullptr, nullptr, &msg) != SQLITE_OK) {
      error e{errc::io, "store " + path_ + ": " + sql + ": " + (msg != nullptr ? msg : "failed")};
      sqlite3_free(msg);
      return tl::unexpected(e);
    }
    return {};
  }

  // Statements are prepared once and kept: a get is then one bind, one step.
  result<sqlite3_stmt*> prepare(const char* sql) {
    auto it = stmts_.find(sql);
    if (it != stmts_.end()) return it->second.get();
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v3(db_.get(), sql, -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr) !=
        SQLITE_OK) {
      return tl::unexpected(fail("prepare"));
    }
    stmts_.emplace(sql, stmt_ptr(s));
    return s;
  }

  error fail(const char* what) const {
    return {errc::io, "store " + path_ + " " + what + ": " + sqlite3_errmsg(db_.get())};
  }

  result<void> quick_check() {
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(db_.get(), "PRAGMA quick_check", -1, &raw, nullptr) != SQLITE_OK) {
      return tl::unexpected(
          error{errc::damaged, "store " + path_ + " is damaged: " + sqlite3_errmsg(db_.get())});
    }
    stmt_ptr s(raw);
    std::string verdict;
    int rc;
    while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
      if (!verdict.empty()) verdict += "; ";
      const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s.get(), 0));
      if (p != nullptr) verdict += p;
    }
    if (rc != SQLITE_DONE) {
      return tl::unexpected(
          error{errc::damaged, "store " + path_ + " is damaged: " + sqlite3_errmsg(db_.get())});
    }
    if (verdict != "ok") {
      return tl::unexpected(
          error{errc::damaged, "store " + path_ + " is damaged: " + verdict.substr(0, 512)});
    }
    return {};
  }

  // Who holds the database's lock, from the kernel's record of it.
  std::string lock_holder() const {
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return "another process";
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    const bool known = ::fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK && fl.l_pid > 0;
    ::close(fd);
    return known ? "pid " + std::to_string(fl.l_pid) : "another process";
  }

  result<std::int64_t> meta(const char* name) {
    auto s = prepare("SELECT value FROM meta WHERE name = ?1");
    if (!s) return tl::unexpected(s.error());
    stmt_use q(*s);
    sqlite3_bind_text(q.get(), 1, name, -1, SQLITE_STATIC);
    const int rc = q.step();
    if (rc == SQLITE_ROW) return q.column_int(0);
    if (rc == SQLITE_DONE) return 0;
    return tl::unexpected(fail("read meta"));
  }
  result<void> set_meta(const char* name, std::int64_t v) {
    auto s = prepare(
        "INSERT INTO meta (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET "
        "value = excluded.value");
    if (!s) return tl::unexpected(s.error());
    stmt_use q(*s);
    sqlite3_bind_text(q.get(), 1, name, -1, SQLITE_STATIC);
    q.integer(2, v);
    if (q.step() != SQLITE_DONE) return tl::unexpected(fail("write meta"));
    return {};
  }

  // ---- helpers: checks and errors ----

  result<void> check_open() const {
    if (closed_) return tl::unexpected(error{errc::canceled, "the store is closed"});
    return {};
  }
  static result<void> check_range(const key_range& r) {
    if (!r.prefix && r.key.empty()) {
      return tl::unexpected(error{errc::invalid_argument, "empty key"});
    }
    return {};
  }
  error compacted_error(revision start) const {
    return {errc::compacted, "revision " + std::to_string(start) +
                                 " is compacted (history starts at " + std::to_string(compacted_) +
                                 ")"};
  }
  static error no_lease(lease_id id) {
    return {errc::lease_not_found, "lease " + std::to_string(id) + " not found"};
  }

  // ---- helpers: kv ----

  static void read_kv(const stmt_use& q, key_value& kv) {
    kv.key = q.column_blob(0);
    kv.value = q.column_blob(1);
    kv.create_revision = q.column_int(2);
    kv.mod_revision = q.column_int(3);
    kv.version = q.column_int(4);
    kv.lease = q.column_int(5);
  }

  result<std::optional<key_value>> read_one(std::string_view key) {
    auto s = prepare(
        "SELECT name, value, create_revision, mod_revision, version, lease FROM kv WHERE name "
        "= ?1");
    if (!s) return tl::unexpected(s.error());
    stmt_use q(*s);
    q.blob(1, key);
    const int rc = q.step();
    if (rc == SQLITE_DONE) return std::optional<key_value>();
    if (rc != SQLITE_ROW) return tl::unexpected(fail("read"));
    key_value kv;
    read_kv(q, kv);
    return std::optional<key_value>(std::move(kv));
  }

  result<std::vector<key_value>> read_range(const key_range& r, std::int64_t limit, bool* more) {
    std::vector<key_value> out;
    if (more != nullptr) *more = false;
    if (!r.prefix) {
      auto one = read_one(r.key);
      if (!one) return tl::unexpected(one.error());
      if (*one) out.push_back(std::move(**one));
      return out;
    }
    const std::string end = prefix_end(r.key);
    // Two statements rather than "?2 IS NULL OR": each bound is then an index range.
    auto s = end.empty() ? prepare(
                               "SELECT name, value, create_revision, mod_revision, version, "
                               "lease FROM kv WHERE name >= ?1 ORDER BY name LIMIT ?3")
                         : prepare(
                               "SELECT name, value, create_revision, mod_revision, version, "
                               "lease FROM kv WHERE name >= ?1 AND name < ?2 ORDER BY name "
                               "LIMIT ?3");
    if (!s) return tl::unexpected(s.error());
    stmt_use q(*s);
    q.blob(1, r.key);
    if (!end.empty()) q.blob(2, end);
    q.integer(3, limit > 0 ? limit + 1 : -1);
    int rc;
    while ((rc = q.step()) == SQLITE_ROW) {
      if (limit > 0 && static_cast<std::int64_t>(out.size()) == limit) {
        if (more != nullptr) *more = true;
        break;
      }
      read_kv(q, out.emplace_back());
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return tl::unexpected(fail("range"));
    return out;
  }

  result<std::vector<std::string>> lease_keys(lease_id id) {
    auto s = prepare("SELECT name FROM kv WHERE lease = ?1 AND lease != 0 ORDER BY name");
    if (!s) return tl::unexpected(s.error());
    stmt_use q(*s);
    q.integer(1, id);
    std::vector<std::string> keys;
    int rc;
    while ((rc = q.step()) == SQLITE_ROW) keys.push_back(q.column_blob(0));
    if (rc != SQLITE_DONE) return tl::unexpected(fail("read lease keys"));
    return keys;
  }

  static bool holds(const compare& c, const key_value& kv) {
    int order;  // <0, 0, >0: kv's side against c's
    if (c.target == compare_target::value) {
      const int m = kv.value.compare(c.value);
      order = m < 0 ? -1 : (m > 0 ? 1 : 0);
    } else {
      std::int64_t have = 0;
      switch (c.target) {
        case compare_target::version:
          have = kv.version;
          break;
        case compare_target::create_revision:
          have = kv.create_revision;
          break;
        case compare_target::mod_revision:
          have = kv.mod_revision;
          break;
        case compare_target::lease:
          have = kv.lease;
          break;
        case compare_target::value:
          break;
      }
      order = have < c.number ? -1 : (have > c.number ? 1 : 0);
    }
    switch (c.op) {
      case compare_op::equal:
        return order == 0;
      case compare_op::not_equal:
        return order != 0;
      case compare_op::less:
        return order < 0;
      case compare_op::greater:
        return order > 0;
    }
    return false;
  }

  // Runs body inside one SQLite transaction. Its writes (the events it appends) make the next
  // revision; memory (revision, ring, watchers) changes only once the commit is durable.
  template <class Body>
  auto write_txn(Body&& body) -> decltype(body(std::declval<std::vector<event>&>())) {
    if (auto r = exec("BEGIN IMMEDIATE"); !r) return tl::unexpected(r.error());
    std::vector<event> events;
    next_sub_ = 0;
    auto out = body(events);
    if (out && !events.empty()) {
      if (auto m = set_meta("revision", revision_ + 1); !m) out = tl::unexpected(m.error());
    }
    if (out) {
      if (auto c = exec("COMMIT"); !c) out = tl::unexpected(c.error());
    }
    if (!out) {
      (void)exec("ROLLBACK");
      return out;
    }
    if (!events.empty()) {
      {
        std::unique_lock view(view_mu_);
        ++revision_;
        // In order: a txn that writes a key twice leaves its last write.
        for (const auto& e : events) {
          if (e.type == event_type::put) {
            current_.insert_or_assign(e.kv.key, e.kv);
          } else {
            current_.erase(e.kv.key);
          }
        }
      }
      publish(std::move(events));
    }
    out->header_revision = revision_;
    return out;
  }

  result<void> log_row(const event& e, bool created) {
    auto s = prepare(
        "INSERT INTO log (rev, sub, name, created, deleted, create_revision, prev_revision, "
        "version, lease, value, old_value, old_lease) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, "
        "?9, ?10, ?11, ?12)");
    if (!s) return tl::unexpected(s.error());
    stmt_use q(*s);
    const bool deleted = e.type == event_type::del;
    // A delete row keeps what was deleted (as prev) so that its event can be rebuilt.
    const key_value& cur = deleted ? *e.prev_kv : e.kv;
    q.integer(1, revision_ + 1);
    q.integer(2, next_sub_++);
    q.blob(3, e.kv.key);
    q.integer(4, created ? 1 : 0);
    q.integer(5, deleted ? 1 : 0);
    q.integer(6, cur.create_revision);
    q.integer(7, e.prev_kv ? e.prev_kv->mod_revision : 0);
    q.integer(8, cur.version);
    q.integer(9, cur.lease);
    q.blob(10, deleted ? std::string_view() : std::string_view(e.kv.value));
    q.blob(11, e.prev_kv ? std::string_view(e.prev_kv->value) : std::string_view());
    q.integer(12, e.prev_kv ? e.prev_kv->lease : 0);
    if (q.step() != SQLITE_DONE) return tl::unexpected(fail("write"));
    return {};
  }

  result<void> put_kv(const key_value& kv) {
    auto s = prepare(
        "INSERT INTO kv (name, value, create_revision, mod_revision, version, lease) VALUES "
        "(?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
        "mod_revision = excluded.mod_revision, version = excluded.version, lease = "
        "excluded.lease");
    if (!s) return tl::unexpected(s.error());
    stmt_use q(*s);
    q.blob(1, kv.key);
    q.blob(2, kv.value);
    q.integer(3, kv.create_revision);
    q.integer(4, kv.mod_revision);
    q.integer(5, kv.version);
    q.integer(6, kv.lease);
    if (q.step() != SQLITE_DONE) return tl::unexpected(fail("write"));
    return {};
  }

  result<void> delete_kv(std::string_view key) {
    auto s = prepare("DELETE FROM kv WHERE name = ?1");
    if (!s) return tl::unexpected(s.error());
    stmt_use q(*s);
    q.blob(1, key);
    if (q.step() != SQLITE_DONE) return tl::unexpected(fail("delete"));
    return {};
  }

  // One op of a write transaction (inside write_txn).
  result<op_result> apply(const txn_op& op, std::vector<event>& events) {
    op_result out;
    const revision rev = revision_ + 1;
    switch (op.type) {
      case txn_op::kind::get: {
        auto kvs = read_range(op.range, op.limit, &out.more);
        if (!kvs) return tl::unexpected(kvs.error());
        out.kvs = std::move(*kvs);
        return out;
      }
      case txn_op::kind::put: {
        if (op.lease != 0 && !leases_.contains(op.lease)) {
          return tl::unexpected(no_lease(op.lease));
        }
        auto prev = read_one(op.range.key);
        if (!prev) return tl::unexpected(prev.error());
        event e;
        e.type = event_type::put;
        e.kv.key = op.range.key;
        e.kv.value = op.value;
        e.kv.create_revision = *prev ? (*prev)->create_revision : rev;
        e.kv.mod_revision = rev;
        e.kv.version = *prev ? (*prev)->version + 1 : 1;
        e.kv.lease = op.lease;
        e.prev_kv = *prev;
        if (auto r = put_kv(e.kv); !r) return tl::unexpected(r.error());
        if (auto r = log_row(e, !*prev); !r) return tl::unexpected(r.error());
        if (*prev) out.prev_kvs.push_back(**prev);
        events.push_back(std::move(e));
        return out;
      }
      case txn_op::kind::del: {
        auto gone = read_range(op.range, 0, nullptr);
        if (!gone) return tl::unexpected(gone.error());
        for (auto& kv : *gone) {
          event e;
          e.type = event_type::del;
          e.kv.key = kv.key;
          e.kv.mod_revision = rev;
          e.prev_kv = kv;
          if (auto r = delete_kv(kv.key); !r) return tl::unexpected(r.error());
          if (auto r = log_row(e, false); !r) return tl::unexpected(r.error());
          events.push_back(std::move(e));
        }
        out.prev_kvs = std::move(*gone);
        return out;
      }
    }
    return out;
  }

  result<void> revoke_locked(lease_id id) {
    if (!leases_.contains(id)) return tl::unexpected(no_lease(id));
    auto keys = lease_keys(id);
    if (!keys) return tl::unexpected(keys.error());
    auto done = write_txn([&](std::vector<event>& events) -> result<txn_result> {
      for (auto& k : *keys) {
        auto r = apply(txn_op::del(key_range::one(std::move(k))), events);
        if (!r) return tl::unexpected(r.error());
      }
      auto s = prepare("DELETE FROM leases WHERE id = ?1");
      if (!s) return tl::unexpected(s.error());
      stmt_use q(*s);
      q.integer(1, id);
      if (q.step() != SQLITE_DONE) return tl::unexpected(fail("revoke lease"));
      return txn_result{};
    });
    if (!done) return tl::unexpected(done.error());
    leases_.erase(id);
    return {};
  }

  // ---- helpers: the change feed ----

  // A committed revision's events: into the ring, and to every synced watcher that wants them.
  void publish(std::vector<event> events) {
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
  result<void> read_log(const watch_state& w, revision from, revision to, std::vector<event>& out) {
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

  static void end_watch(watch_state& w) {
    std::lock_guard wl(w.mu);
    w.canceled = true;
    w.cv.notify_all();
  }

  // ---- the background ticker ----

  void tick_loop() {
    std::unique_lock lock(tick_mu_);
    while (!stopping_) {
      tick_cv_.wait_for(lock, opt_.lease_check_interval, [&] { return stopping_; });
      if (stopping_) break;
      lock.unlock();
      // A failure (disk full) is retried at the next tick; the keys stay until then.
      (void)expire_leases();
      if (opt_.history_revisions > 0 && opt_.now() - last_compaction_ >= opt_.compact_interval) {
        last_compaction_ = opt_.now();
        if (auto rev = current_revision(); rev && *rev - opt_.history_revisions > 0) {
          (void)compact(*rev - opt_.history_revisions);
        }
      }
      lock.lock();
    }
  }

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

// The store handed out: forwards to the core, and closes it when dropped (watchers that outlive
// it keep the core's memory, not its file).
class sqlite_store final : public store {
 public:
  explicit sqlite_store(std::shared_ptr<sqlite_core> c) : core_(std::move(c)) {}
  ~sqlite_store() override { core_->close(); }

  result<range_result> get(std::string_view key) override {
    return core_->range(key_range::one(std::string(key)), 0);
  }
  result<range_result> range(const key_range& r, std::int64_t limit) override {
    return core_->range(r, limit);
  }
  result<revision> put(std::string_view key, std::string_view value, lease_id lease) override {
    txn_request t;
    t.success.push_back(txn_op::put(std::string(key), std::string(value), lease));
    auto r = core_->txn(t);
    if (!r) return tl::unexpected(r.error());
    return r->header_revision;
  }
  result<delete_result> del(const key_range& r) override {
    txn_request t;
    t.success.push_back(txn_op::del(r));
    auto d = core_->txn(t);
    if (!d) return tl::unexpected(d.error());
    return delete_result{std::move(d->results.front().prev_kvs), d->header_revision};
  }
  result<txn_result> txn(const txn_request& t) override { return core_->txn(t); }
  result<std::unique_ptr<watcher>> watch(const watch_request& w) override {
    return core_->watch(w);
  }
  result<revision> compact(revision rev) override { return core_->compact(rev); }
  result<revision> current_revision() override { return core_->current_revision(); }
  result<revision> compacted_revision() override { return core_->compacted_revision(); }
  result<lease_grant> grant(std::chrono::seconds ttl) override { return core_->grant(ttl); }
  result<std::chrono::seconds> keep_alive(lease_id id) override { return core_->keep_alive(id); }
  result<void> revoke(lease_id id) override { return core_->revoke(id); }
  result<lease_status> time_to_live(lease_id id) override { return core_->time_to_live(id); }
  result<std::size_t> expire_leases() override { return core_->expire_leases(); }

 private:
  std::shared_ptr<sqlite_core> core_;
};

error io_error(std::string detail) { return {errc::io, std::move(detail)}; }

}  // namespace

result<std::unique_ptr<store>> make_sqlite_store(const sqlite_options& o) {
  const std::string& dir = o.dir;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return tl::unexpected(io_error("cannot create state directory " + dir + ": " + ec.message()));
  }
  // The state may hold secrets (task definitions' environment): only its owner reads it.
  if (::chmod(dir.c_str(), 0700) != 0) {
    return tl::unexpected(
        io_error("cannot make state directory " + dir + " private: " + std::strerror(errno)));
  }
  const std::string path = dir + "/berth.db";
  // Created 0600 before SQLite sees it (SQLite would use 0644 less the umask); the -wal file
  // takes the database's mode.
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return tl::unexpected(io_error("cannot open " + path + ": " + std::strerror(errno)));
  const int mode_rc = ::fchmod(fd, 0600);
  ::close(fd);
  if (mode_rc != 0) {
    return tl::unexpected(io_error("cannot make " + path + " private: " + std::strerror(errno)));
  }
  for (const char* extra : {"-wal", "-shm", "-journal"}) {
    (void)::chmod((path + extra).c_str(), 0600);
  }
  sqlite3* db = nullptr;
  // NOMUTEX: the core's own mutex serializes every use of the connection.
  if (sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string m = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close_v2(db);
    return tl::unexpected(io_error("cannot open " + path + ": " + m));
  }
  auto core = std::make_shared<sqlite_core>(db, path, o);
  if (auto r = core->init(); !r) {
    core->close();
    return tl::unexpected(r.error());
  }
  return std::unique_ptr<store>(std::make_unique<sqlite_store>(std::move(core)));
}

}  // namespace berth::state
