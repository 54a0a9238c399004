// What the etcd backend does beyond the store contract (store_contract_test runs that against
// it): several endpoints tried in turn, a watch that misses nothing across etcd's restart, and
// etcd's user/password authentication, TLS with client certificates. Each test starts its own
// etcd.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "berth/state.hpp"
#include "etcd_testing.hpp"
#include "temp_dir.hpp"

// LeakSanitizer (the ASan build) leaves libcrypto's allocations alone in this binary. A client
// etcd refuses (TlsWithAClientCertificate) has its handshakes torn down on gRPC's own threads
// after the store is gone; a process that exits within that time leaves their certificates and
// error strings behind (1 run in 8 here; none when the test lives 3 s longer). It is gRPC's
// teardown at exit, not a leak of a running berthd; gRPC offers nothing to wait for it.
extern "C" const char* __lsan_default_suppressions() { return "leak:libcrypto.so\n"; }

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

// A CA, and a certificate it signed for 127.0.0.1 (IP SAN) with `usage`, made with openssl.
void make_ca(const std::filesystem::path& d) {
  const std::string cmd = "cd " + d.string() +
                          " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem"
                          " -days 1 -subj /CN=berth-test-ca >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
}
void make_cert(const std::filesystem::path& d, const std::string& name, const std::string& usage) {
  const std::string cmd =
      "cd " + d.string() + " && printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=" + usage +
      "\\n' > " + name + ".ext && openssl req -newkey rsa:2048 -nodes -keyout " + name +
      ".key -out " + name + ".csr -subj /CN=" + name +
      " >/dev/null 2>&1 && openssl x509 -req -in " + name +
      ".csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile " + name + ".ext -out " +
      name + ".pem >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
}

TEST(EtcdStoreTest, TlsWithAClientCertificate) {
  berth::testing::temp_dir dir;
  const std::filesystem::path pki = dir.path / "pki";
  std::filesystem::create_directories(pki);
  ASSERT_NO_FATAL_FAILURE(make_ca(pki));
  ASSERT_NO_FATAL_FAILURE(make_cert(pki, "server", "serverAuth"));
  ASSERT_NO_FATAL_FAILURE(make_cert(pki, "client", "clientAuth"));
  berth::testing::etcd_tls tls{pki / "ca.pem", pki / "server.pem", pki / "server.key",
                               pki / "client.pem", pki / "client.key"};
  berth::testing::etcd_server etcd(dir.path / "etcd", 1, tls);
  ASSERT_EQ(etcd.endpoint().rfind("https://", 0), 0u) << etcd.endpoint();

  auto s = st::make_etcd_store(etcd.options());
  ASSERT_TRUE(s) << s.error().detail;
  ASSERT_TRUE((*s)->put("/t", "v"));
  EXPECT_EQ((*s)->get("/t")->kvs.at(0).value, "v");
  auto w = (*s)->watch({st::key_range::with_prefix("/t"), 0});
  ASSERT_TRUE(w) << w.error().detail;
  ASSERT_TRUE((*s)->put("/t", "v2"));
  auto evs = (*w)->next(steady::now() + 10s);
  ASSERT_TRUE(evs && evs->size() == 1) << "a watch over TLS saw nothing";

  // Without the client certificate, or trusting another CA, etcd is not reached.
  st::etcd_options anonymous = etcd.options();
  anonymous.cert.clear();
  anonymous.key.clear();
  anonymous.timeout = 2s;
  EXPECT_FALSE(st::make_etcd_store(anonymous)) << "etcd took a client without a certificate";
  st::etcd_options untrusted = etcd.options();
  untrusted.cacert = (pki / "client.pem").string();
  untrusted.timeout = 2s;
  EXPECT_FALSE(st::make_etcd_store(untrusted)) << "etcd's certificate was trusted without its CA";
  st::etcd_options missing = etcd.options();
  missing.cacert = (pki / "nothing.pem").string();
  auto m = st::make_etcd_store(missing);
  ASSERT_FALSE(m);
  EXPECT_NE(m.error().detail.find("nothing.pem"), std::string::npos) << m.error().detail;
}

}  // namespace
