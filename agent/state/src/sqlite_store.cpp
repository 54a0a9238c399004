// Opening and closing the SQLite store: the file's checks and schema, the mirror and leases
// loaded at start, the background ticker; the SQL helpers the rest of sqlite_core uses; and the
// store handed out by make_sqlite_store. The design is in sqlite_core.hpp.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "sqlite_core.hpp"

namespace berth::state {

namespace detail {

sqlite_core::sqlite_core(sqlite3* db, std::string path, const sqlite_options& o)
    : db_(db), path_(std::move(path)), opt_(o) {
  if (!opt_.now) opt_.now = [] { return steady::now(); };
  if (opt_.event_ring == 0) opt_.event_ring = 1;
  if (opt_.watcher_buffer == 0) opt_.watcher_buffer = 1;
}

result<void> sqlite_core::init() {
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

void sqlite_core::close() {
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

result<void> sqlite_core::exec(const char* sql) {
  char* msg = nullptr;
  if (sqlite3_exec(db_.get(), sql, nullptr, nullptr, &msg) != SQLITE_OK) {
    error e{errc::io, "store " + path_ + ": " + sql + ": " + (msg != nullptr ? msg : "failed")};
    sqlite3_free(msg);
    return tl::unexpected(e);
  }
  return {};
}

// Statements are prepared once and kept: a get is then one bind, one step.
result<sqlite3_stmt*> sqlite_core::prepare(const char* sql) {
  auto it = stmts_.find(sql);
  if (it != stmts_.end()) return it->second.get();
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v3(db_.get(), sql, -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr) != SQLITE_OK) {
    return tl::unexpected(fail("prepare"));
  }
  stmts_.emplace(sql, stmt_ptr(s));
  return s;
}

error sqlite_core::fail(const char* what) const {
  return {errc::io, "store " + path_ + " " + what + ": " + sqlite3_errmsg(db_.get())};
}

result<void> sqlite_core::quick_check() {
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
std::string sqlite_core::lock_holder() const {
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "another process";
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  const bool known = ::fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK && fl.l_pid > 0;
  ::close(fd);
  return known ? "pid " + std::to_string(fl.l_pid) : "another process";
}

result<std::int64_t> sqlite_core::meta(const char* name) {
  auto s = prepare("SELECT value FROM meta WHERE name = ?1");
  if (!s) return tl::unexpected(s.error());
  stmt_use q(*s);
  sqlite3_bind_text(q.get(), 1, name, -1, SQLITE_STATIC);
  const int rc = q.step();
  if (rc == SQLITE_ROW) return q.column_int(0);
  if (rc == SQLITE_DONE) return 0;
  return tl::unexpected(fail("read meta"));
}

result<void> sqlite_core::set_meta(const char* name, std::int64_t v) {
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

result<void> sqlite_core::check_open() const {
  if (closed_) return tl::unexpected(error{errc::canceled, "the store is closed"});
  return {};
}

result<void> sqlite_core::check_range(const key_range& r) {
  if (!r.prefix && r.key.empty()) {
    return tl::unexpected(error{errc::invalid_argument, "empty key"});
  }
  return {};
}

error sqlite_core::compacted_error(revision start) const {
  return {errc::compacted, "revision " + std::to_string(start) +
                               " is compacted (history starts at " + std::to_string(compacted_) +
                               ")"};
}

error sqlite_core::no_lease(lease_id id) {
  return {errc::lease_not_found, "lease " + std::to_string(id) + " not found"};
}

void sqlite_core::tick_loop() {
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

}  // namespace detail

namespace {

using detail::sqlite_core;

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
