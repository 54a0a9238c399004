// What the etcd backend does beyond the store contract (store_contract_test runs that against
// it): several endpoints tried in turn, a watch that misses nothing across etcd's restart, and
// etcd's user/password authentication. Each test starts its own etcd.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <string>

#include "berth/state.hpp"
#include "etcd_testing.hpp"
#include "temp_dir.hpp"

namespace st = berth::state;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

std::string closed_endpoint() {
  return "http://127.0.0.1:" + std::to_string(berth::testing::free_port());
}

TEST(EtcdStoreTest, EndpointsAreTriedInTurnAndNoneAnsweringIsAnError) {
  berth::testing::temp_dir dir;
  berth::testing::etcd_server etcd(dir.path / "etcd");
  st::etcd_options o = etcd.options();
  const std::string dead = closed_endpoint();
  o.endpoints.insert(o.endpoints.begin(), dead);
  auto s = st::make_etcd_store(o);
  ASSERT_TRUE(s) << s.error().detail;
  ASSERT_TRUE((*s)->put("/k", "v"));
  EXPECT_EQ((*s)->get("/k")->kvs.at(0).value, "v");

  st::etcd_options none;
  none.endpoints = {dead, closed_endpoint()};
  auto refused = st::make_etcd_store(none);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, st::errc::io);
  EXPECT_NE(refused.error().detail.find(dead), std::string::npos) << refused.error().detail;
}

TEST(EtcdStoreTest, WatchMissesNothingAcrossARestartOfEtcd) {
  berth::testing::temp_dir dir;
  berth::testing::etcd_server etcd(dir.path / "etcd");
  auto s = st::make_etcd_store(etcd.options());
  ASSERT_TRUE(s) << s.error().detail;
  auto w = (*s)->watch({st::key_range::with_prefix("/w/"), 0});
  ASSERT_TRUE(w) << w.error().detail;
  const st::revision first = *(*s)->put("/w/a", "1");
  auto a = (*w)->next(steady::now() + 10s);
  ASSERT_TRUE(a && a->size() == 1);

  etcd.stop();
  etcd.start();
  // Written before the watcher is back: it must still see them, in order, once.
  ASSERT_TRUE((*s)->put("/w/b", "2"));
  ASSERT_TRUE((*s)->put("/w/c", "3"));
  std::vector<st::event> seen;
  const auto deadline = steady::now() + 20s;
  while (seen.size() < 2 && steady::now() < deadline) {
    auto evs = (*w)->next(deadline);
    ASSERT_TRUE(evs) << evs.error().detail;
    for (auto& e : *evs) seen.push_back(std::move(e));
  }
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].kv.value, "2");
  EXPECT_EQ(seen[0].kv.mod_revision, first + 1);
  EXPECT_EQ(seen[1].kv.value, "3");
  EXPECT_EQ(seen[1].kv.mod_revision, first + 2);
  auto quiet = (*w)->next(steady::now() + 200ms);
  ASSERT_TRUE(quiet);
  EXPECT_TRUE(quiet->empty()) << "an event came twice";
}

TEST(EtcdStoreTest, UserAndPasswordWhenEtcdAuthenticates) {
  berth::testing::temp_dir dir;
  berth::testing::etcd_server etcd(dir.path / "etcd");
  const std::string ctl = "ETCDCTL_API=3 /usr/bin/etcdctl --endpoints=" + etcd.endpoint() + " ";
  ASSERT_EQ(std::system((ctl + "user add root --new-user-password=s3cret >/dev/null").c_str()), 0);
  ASSERT_EQ(std::system((ctl + "user grant-role root root >/dev/null").c_str()), 0);
  ASSERT_EQ(std::system((ctl + "auth enable >/dev/null").c_str()), 0);

  auto anonymous = st::make_etcd_store(etcd.options());
  if (anonymous) {
    auto put = (*anonymous)->put("/k", "v");
    EXPECT_FALSE(put) << "etcd took a write without credentials";
  }
  st::etcd_options o = etcd.options();
  o.user = "root";
  o.password = "wrong";
  auto bad = st::make_etcd_store(o);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().detail.find("authentication failed"), std::string::npos)
      << bad.error().detail;
  o.password = "s3cret";
  auto s = st::make_etcd_store(o);
  ASSERT_TRUE(s) << s.error().detail;
  ASSERT_TRUE((*s)->put("/k", "v"));
  EXPECT_EQ((*s)->get("/k")->kvs.at(0).value, "v");
  auto w = (*s)->watch({st::key_range::with_prefix("/k"), 0});
  ASSERT_TRUE(w) << w.error().detail;
  ASSERT_TRUE((*s)->put("/k", "v2"));
  auto evs = (*w)->next(steady::now() + 10s);
  ASSERT_TRUE(evs && evs->size() == 1) << "an authenticated watch saw nothing";
  EXPECT_EQ(evs->at(0).kv.value, "v2");
}

}  // namespace
