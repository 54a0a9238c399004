// What only the SQLite backend promises, beyond the contract: private files, one process at a
// time (naming the holder), and a damaged file refused by name.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "berth/state.hpp"
#include "temp_dir.hpp"

namespace st = berth::state;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

using berth::testing::temp_dir;

st::sqlite_options options(const fs::path& dir) {
  st::sqlite_options o;
  o.dir = dir.string();
  o.lease_check_interval = 0ms;
  return o;
}

mode_t mode_of(const fs::path& p) {
  struct stat s {};
  EXPECT_EQ(::stat(p.c_str(), &s), 0) << p;
  return s.st_mode & 0777;
}

TEST(SqliteStoreTest, StateIsPrivateWhateverTheUmask) {
  temp_dir t;
  const mode_t old = ::umask(0);
  auto s = st::make_sqlite_store(options(t.path / "state"));
  ::umask(old);
  ASSERT_TRUE(s) << s.error().detail;
  ASSERT_TRUE((*s)->put("/k", "secret"));
  EXPECT_EQ(mode_of(t.path / "state"), 0700u);
  EXPECT_EQ(mode_of(t.path / "state" / "berth.db"), 0600u);
  EXPECT_EQ(mode_of(t.path / "state" / "berth.db-wal"), 0600u);
  EXPECT_FALSE(fs::exists(t.path / "state" / "berth.db-shm")) << "the WAL index is in memory";
}

TEST(SqliteStoreTest, SecondProcessIsRefusedNamingTheHolder) {
  temp_dir t;
  auto s = st::make_sqlite_store(options(t.path));
  ASSERT_TRUE(s) << s.error().detail;
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(out[0]);
    auto second = st::make_sqlite_store(options(t.path));
    const std::string said = second ? std::string("opened") : second.error().detail;
    (void)!::write(out[1], said.data(), said.size());
    ::_exit(!second && second.error().code == st::errc::in_use ? 0 : 1);
  }
  ::close(out[1]);
  std::string said;
  char buf[512];
  for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) > 0;) said.append(buf, n);
  ::close(out[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << said;
  EXPECT_NE(said.find("in use by pid " + std::to_string(::getpid())), std::string::npos) << said;
  EXPECT_NE(said.find((t.path / "berth.db").string()), std::string::npos) << said;
}

TEST(SqliteStoreTest, DamagedFileIsRefusedByName) {
  temp_dir t;
  {
    auto s = st::make_sqlite_store(options(t.path));
    ASSERT_TRUE(s) << s.error().detail;
    for (int i = 0; i < 200; ++i)
      ASSERT_TRUE((*s)->put("/k/" + std::to_string(i), std::string(500, 'x')));
  }
  const fs::path db = t.path / "berth.db";
  fs::resize_file(db, fs::file_size(db) / 2);
  {
    std::fstream f(db, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(4096 + 100);
    f << std::string(2000, '\x5a');
  }
  auto s = st::make_sqlite_store(options(t.path));
  ASSERT_FALSE(s) << "opened a damaged store";
  EXPECT_EQ(s.error().code, st::errc::damaged) << s.error().detail;
  EXPECT_NE(s.error().detail.find(db.string()), std::string::npos) << s.error().detail;
}

// A lease past its TTL that the ticker has not reaped yet cannot be renewed: its keys go now.
TEST(SqliteStoreTest, LateRenewalFailsEvenBeforeTheLeaseIsReaped) {
  temp_dir t;
  std::atomic<std::int64_t> now_s{1000};
  auto o = options(t.path);
  o.now = [&] { return std::chrono::steady_clock::time_point(std::chrono::seconds(now_s.load())); };
  auto s = st::make_sqlite_store(o);
  ASSERT_TRUE(s) << s.error().detail;
  auto l = (*s)->grant(10s);
  ASSERT_TRUE(l);
  ASSERT_TRUE((*s)->put("/leased", "x", l->id));
  now_s += 11;
  auto late = (*s)->keep_alive(l->id);
  ASSERT_FALSE(late);
  EXPECT_EQ(late.error().code, st::errc::lease_not_found);
  EXPECT_TRUE((*s)->get("/leased")->kvs.empty());
}

// In production a thread expires leases and compacts old history on its own.
TEST(SqliteStoreTest, BackgroundThreadExpiresLeasesAndCompacts) {
  temp_dir t;
  std::atomic<std::int64_t> now_s{1000};
  auto o = options(t.path);
  o.now = [&] { return std::chrono::steady_clock::time_point(std::chrono::seconds(now_s.load())); };
  o.lease_check_interval = 1ms;
  o.history_revisions = 5;
  o.compact_interval = 60s;
  auto s = st::make_sqlite_store(o);
  ASSERT_TRUE(s) << s.error().detail;
  auto l = (*s)->grant(10s);
  ASSERT_TRUE(l);
  ASSERT_TRUE((*s)->put("/leased", "x", l->id));
  for (int i = 0; i < 20; ++i) ASSERT_TRUE((*s)->put("/k", std::to_string(i)));
  now_s += 61;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  auto done = [&] {
    auto c = (*s)->compacted_revision();
    auto g = (*s)->get("/leased");
    return c && g && *c > 0 && g->kvs.empty();
  };
  while (!done() && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  ASSERT_TRUE(done()) << "no expiry or compaction after 10 s: compacted "
                      << *(*s)->compacted_revision() << ", leased key "
                      << (*s)->get("/leased")->kvs.size();
  const auto rev = *(*s)->current_revision();
  EXPECT_GE(*(*s)->compacted_revision(), rev - 6);
  auto old = (*s)->watch({st::key_range::with_prefix("/"), 1});
  ASSERT_FALSE(old);
  EXPECT_EQ(old.error().code, st::errc::compacted);
}

}  // namespace
