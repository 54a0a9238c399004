// The store on SQLite: WAL mode, synchronous=NORMAL (a crash of berthd loses nothing; a power
// loss may lose the last transactions, never corrupts), one connection behind a mutex.
//
// Exclusive locking: the WAL index lives in this process's heap rather than in a mapped -shm
// file. A -shm file that cannot grow (a full or read-only disk, an immutable file) turned every
// access into SIGBUS; now there is no such file, and a second process gets "database is locked".
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "store.hpp"

namespace berth::agent {

namespace {

struct db_deleter {
  void operator()(sqlite3* d) const noexcept { sqlite3_close_v2(d); }
};
struct stmt_deleter {
  void operator()(sqlite3_stmt* s) const noexcept { sqlite3_finalize(s); }
};
using stmt_ptr = std::unique_ptr<sqlite3_stmt, stmt_deleter>;

class sqlite_store final : public store {
 public:
  sqlite_store(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}

  result<void> init() {
    // Taken now, held until close: nobody else writes, or reads half a transaction. A berthd
    // still exiting has a few seconds to let go.
    if (auto r = exec("PRAGMA busy_timeout=5000"); !r) return r;
    if (auto r = exec("PRAGMA locking_mode=EXCLUSIVE"); !r) return r;
    if (auto r = exec("BEGIN EXCLUSIVE"); !r) {
      if ((sqlite3_errcode(db_.get()) & 0xff) == SQLITE_BUSY) {
        return tl::unexpected(error{"store " + path_ + " is in use by " + lock_holder() +
                                    ": another berthd runs on this state directory"});
      }
      return tl::unexpected(error{"store " + path_ + " is damaged: " + sqlite3_errmsg(db_.get())});
    }
    if (auto r = exec("COMMIT"); !r) return r;
    // A damaged file is refused, naming it: starting on it would mean starting with its tasks
    // forgotten while their containers run.
    {
      auto s = prepare("PRAGMA quick_check");
      if (!s) return tl::unexpected(error{"store " + path_ + " is damaged: " + s.error().message});
      std::string verdict;
      int rc;
      while ((rc = sqlite3_step(s->get())) == SQLITE_ROW) {
        if (!verdict.empty()) verdict += "; ";
        verdict += text(*s, 0);
      }
      if (rc != SQLITE_DONE) {
        return tl::unexpected(
            error{"store " + path_ + " is damaged: " + sqlite3_errmsg(db_.get())});
      }
      if (verdict != "ok") {
        return tl::unexpected(error{"store " + path_ + " is damaged: " + verdict.substr(0, 512)});
      }
    }
    for (const char* sql : {
             "PRAGMA journal_mode=WAL",
             "PRAGMA synchronous=NORMAL",
             "CREATE TABLE IF NOT EXISTS docs (kind TEXT NOT NULL, key TEXT NOT NULL, "
             "value TEXT NOT NULL, PRIMARY KEY (kind, key)) WITHOUT ROWID",
             "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT "
             "NULL) WITHOUT ROWID",
         }) {
      if (auto r = exec(sql); !r) return r;
    }
    return {};
  }

  result<std::optional<std::string>> get(const std::string& kind, const std::string& key) override {
    std::lock_guard lock(mu_);
    auto s = prepare("SELECT value FROM docs WHERE kind = ?1 AND key = ?2");
    if (!s) return tl::unexpected(s.error());
    bind(*s, 1, kind);
    bind(*s, 2, key);
    const int rc = sqlite3_step(s->get());
    if (rc == SQLITE_ROW) return std::optional<std::string>(text(*s, 0));
    if (rc == SQLITE_DONE) return std::optional<std::string>();
    return tl::unexpected(fail("read"));
  }

  result<void> put(const std::string& kind, const std::string& key,
                   const std::string& value) override {
    std::lock_guard lock(mu_);
    auto s = prepare(
        "INSERT INTO docs (kind, key, value) VALUES (?1, ?2, ?3) "
        "ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value");
    if (!s) return tl::unexpected(s.error());
    bind(*s, 1, kind);
    bind(*s, 2, key);
    bind(*s, 3, value);
    if (sqlite3_step(s->get()) != SQLITE_DONE) return tl::unexpected(fail("write"));
    return {};
  }

  result<void> erase(const std::string& kind, const std::string& key) override {
    std::lock_guard lock(mu_);
    auto s = prepare("DELETE FROM docs WHERE kind = ?1 AND key = ?2");
    if (!s) return tl::unexpected(s.error());
    bind(*s, 1, kind);
    bind(*s, 2, key);
    if (sqlite3_step(s->get()) != SQLITE_DONE) return tl::unexpected(fail("delete"));
    return {};
  }

  result<std::vector<std::pair<std::string, std::string>>> list(
      const std::string& kind, const std::string& prefix) override {
    std::lock_guard lock(mu_);
    // A range, not LIKE: keys may hold '%' and '_'.
    auto s = prepare(
        "SELECT key, value FROM docs WHERE kind = ?1 AND key >= ?2 AND key < ?3 ORDER BY key");
    if (!s) return tl::unexpected(s.error());
    bind(*s, 1, kind);
    bind(*s, 2, prefix);
    bind(*s, 3, prefix + "\xff\xff\xff\xff");
    std::vector<std::pair<std::string, std::string>> out;
    int rc;
    while ((rc = sqlite3_step(s->get())) == SQLITE_ROW) out.emplace_back(text(*s, 0), text(*s, 1));
    if (rc != SQLITE_DONE) return tl::unexpected(fail("list"));
    return out;
  }

  result<std::uint64_t> next(const std::string& counter) override {
    std::lock_guard lock(mu_);
    auto s = prepare(
        "INSERT INTO counters (name, value) VALUES (?1, 1) ON CONFLICT (name) DO "
        "UPDATE SET value = value + 1 RETURNING value");
    if (!s) return tl::unexpected(s.error());
    bind(*s, 1, counter);
    if (sqlite3_step(s->get()) != SQLITE_ROW) return tl::unexpected(fail("count"));
    return static_cast<std::uint64_t>(sqlite3_column_int64(s->get(), 0));
  }

  result<void> transaction(const std::function<result<void>(store&)>& fn) override {
    // The transaction holds the store for its length: other threads' writes wait rather than
    // land inside it. The mutex is recursive, so fn's own calls go through.
    std::lock_guard lock(mu_);
    if (auto r = exec("BEGIN IMMEDIATE"); !r) return r;
    auto r = fn(*this);
    if (!r) {
      (void)exec("ROLLBACK");
      return r;
    }
    if (auto c = exec("COMMIT"); !c) {
      (void)exec("ROLLBACK");
      return c;
    }
    return {};
  }

 private:
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

  result<void> exec(const char* sql) {
    char* msg = nullptr;
    if (sqlite3_exec(db_.get(), sql, nullptr, nullptr, &msg) != SQLITE_OK) {
      error e{"store " + path_ + ": " + sql + ": " + (msg != nullptr ? msg : "failed")};
      sqlite3_free(msg);
      return tl::unexpected(e);
    }
    return {};
  }
  result<stmt_ptr> prepare(const char* sql) {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db_.get(), sql, -1, &s, nullptr) != SQLITE_OK) {
      return tl::unexpected(fail("prepare"));
    }
    return stmt_ptr(s);
  }
  static void bind(stmt_ptr& s, int i, const std::string& v) {
    sqlite3_bind_text(s.get(), i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
  static std::string text(stmt_ptr& s, int col) {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s.get(), col));
    return p == nullptr
               ? std::string()
               : std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(s.get(), col)));
  }
  error fail(const char* what) {
    return {"store " + path_ + " " + what + ": " + sqlite3_errmsg(db_.get())};
  }

  std::unique_ptr<sqlite3, db_deleter> db_;
  std::string path_;
  std::recursive_mutex mu_;
};

class shared_store final : public store {
 public:
  explicit shared_store(std::shared_ptr<store> s) : s_(std::move(s)) {}
  result<std::optional<std::string>> get(const std::string& kind, const std::string& key) override {
    return s_->get(kind, key);
  }
  result<void> put(const std::string& kind, const std::string& key,
                   const std::string& value) override {
    return s_->put(kind, key, value);
  }
  result<void> erase(const std::string& kind, const std::string& key) override {
    return s_->erase(kind, key);
  }
  result<std::vector<std::pair<std::string, std::string>>> list(
      const std::string& kind, const std::string& prefix) override {
    return s_->list(kind, prefix);
  }
  result<std::uint64_t> next(const std::string& counter) override { return s_->next(counter); }
  result<void> transaction(const std::function<result<void>(store&)>& fn) override {
    return s_->transaction(fn);
  }

 private:
  std::shared_ptr<store> s_;
};

}  // namespace

result<std::unique_ptr<store>> open_sqlite_store(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return tl::unexpected(error{"cannot create state directory " + dir + ": " + ec.message()});
  // Task definitions hold environment values: only berthd's user reads the state.
  if (::chmod(dir.c_str(), 0700) != 0) {
    return tl::unexpected(
        error{"cannot make state directory " + dir + " private: " + std::strerror(errno)});
  }
  const std::string path = dir + "/berth.db";
  // Created 0600 before SQLite sees it (SQLite would use 0644 less the umask); the -wal file
  // takes the database's mode.
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    return tl::unexpected(error{"cannot open " + path + ": " + std::strerror(errno)});
  }
  const int mode_rc = ::fchmod(fd, 0600);
  ::close(fd);
  if (mode_rc != 0) {
    return tl::unexpected(error{"cannot make " + path + " private: " + std::strerror(errno)});
  }
  for (const char* extra : {"-wal", "-shm", "-journal"}) {
    (void)::chmod((path + extra).c_str(), 0600);
  }
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string m = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close_v2(db);
    return tl::unexpected(error{"cannot open " + path + ": " + m});
  }
  auto s = std::make_unique<sqlite_store>(db, path);
  if (auto r = s->init(); !r) return tl::unexpected(r.error());
  return std::unique_ptr<store>(std::move(s));
}

std::unique_ptr<store> share(std::shared_ptr<store> s) {
  return std::make_unique<shared_store>(std::move(s));
}

}  // namespace berth::agent
