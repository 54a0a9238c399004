// berth::lb::haproxy against a real HAProxy (Debian's /usr/sbin/haproxy, started by each test
// with an empty backend "web"): the same operations over every kind of address its runtime API
// listens on (a Unix socket by path and as unix@, ipv4@, ipv6@), then addresses it cannot use.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "berth/docker_testing.hpp"
#include "berth/lb.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using berth::docker::testing::eventually;
using berth::lb::haproxy;

// A listening TCP socket on the loopback address of `family` (port 0: the kernel picks); -1
// when that family has no loopback here.
int listen_loopback(int family, int backlog = 16) {
  const int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_storage s{};
  socklen_t len = 0;
  if (family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&s);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&s);
    a->sin6_family = AF_INET6;
    a->sin6_addr = in6addr_loopback;
    len = sizeof *a;
  }
  if (::bind(fd, reinterpret_cast<sockaddr*>(&s), len) != 0 || ::listen(fd, backlog) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

int port_of(int fd) {
  sockaddr_storage s{};
  socklen_t len = sizeof s;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&s), &len);
  return ntohs(s.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&s)->sin_port
                                      : reinterpret_cast<sockaddr_in6*>(&s)->sin6_port);
}

// A free port on the loopback address of `family` (bound, read, released); 0 when none.
int free_port(int family) {
  const int fd = listen_loopback(family);
  if (fd < 0) return 0;
  const int port = port_of(fd);
  ::close(fd);
  return port;
}

// A temp dir of the test's own, removed at the end.
class temp_dir {
 public:
  temp_dir() {
    std::string t = (fs::temp_directory_path() / "berth-lb-XXXXXX").string();
    if (::mkdtemp(t.data()) != nullptr) path_ = t;
  }
  ~temp_dir() {
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// HAProxy of the test's own: its runtime API on `stats_address` (haproxy.cfg's syntax), an empty
// backend "web". Stopped (SIGTERM, by PID, reaped) on destruction.
class load_balancer {
 public:
  load_balancer(const fs::path& dir, const std::string& stats_address) : dir_(dir) {
    std::ofstream(dir_ / "haproxy.cfg")
        << "global\n    stats socket " << stats_address << " mode 600 level admin\n"
        << "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n"
        << "    timeout server 10s\n"
        << "backend web\n    balance roundrobin\n";
  }
  ~load_balancer() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
  }

  bool start() {
    std::vector<std::string> args = {"/usr/sbin/haproxy", "-db", "-f",
                                     (dir_ / "haproxy.cfg").string()};
    pid_ = berth::docker::testing::spawn_logged(args, (dir_ / "haproxy.log").string());
    return pid_ > 0;
  }
  std::string log() const {
    std::ifstream in(dir_ / "haproxy.log");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

 private:
  fs::path dir_;
  pid_t pid_ = -1;
};

// How the test reaches HAProxy: what haproxy.cfg says, and what berthd is given.
struct transport {
  std::string name;
  int family;  // AF_UNIX, AF_INET or AF_INET6
  bool unix_prefix = false;
};

void PrintTo(const transport& t, std::ostream* os) { *os << t.name; }

class HaproxyTransportTest : public ::testing::TestWithParam<transport> {};

// The scheduler's round trip, over each transport: a task's server added with its health check,
// seen UP once its port accepts, drained, its sessions shut, deleted; errors come back as errors.
TEST_P(HaproxyTransportTest, RegistersDrainsAndRemovesAServer) {
  const transport t = GetParam();
  temp_dir dir;
  ASSERT_FALSE(dir.path().empty());
  std::string cfg_address;
  std::string client_address;
  if (t.family == AF_UNIX) {
    cfg_address = (dir.path() / "haproxy.sock").string();
    client_address = (t.unix_prefix ? "unix@" : "") + cfg_address;
  } else {
    const int port = free_port(t.family);
    if (port == 0) GTEST_SKIP() << "no loopback for " << t.name << " here";
    cfg_address = t.family == AF_INET ? "ipv4@127.0.0.1:" + std::to_string(port)
                                      : "ipv6@[::1]:" + std::to_string(port);
    client_address = cfg_address;
  }
  ASSERT_TRUE(haproxy::check_address(client_address)) << client_address;
  load_balancer lb(dir.path(), cfg_address);
  ASSERT_TRUE(lb.start());
  const haproxy h(client_address);
  EXPECT_EQ(h.socket(), client_address);
  ASSERT_TRUE(eventually([&] { return h.servers("web").has_value(); }, 10s))
      << "HAProxy not answering at " << client_address
      << " after 10s: " << h.servers("web").error().message << "\n"
      << lb.log();
  EXPECT_TRUE(h.servers("web")->empty());
  // A name carrying a second command is refused before anything reaches HAProxy.
  const auto smuggled = h.servers("web; show info");
  ASSERT_FALSE(smuggled);
  EXPECT_NE(smuggled.error().message.find("';'"), std::string::npos) << smuggled.error().message;

  // The task: a port on 127.0.0.1 that accepts, enough for HAProxy's TCP check.
  const int task = listen_loopback(AF_INET, 128);
  ASSERT_GE(task, 0);
  const std::string task_address = "127.0.0.1:" + std::to_string(port_of(task));
  auto added = h.add("web", "t1", task_address);
  ASSERT_TRUE(added) << added.error().message;
  const auto t1 = [&]() -> haproxy::server {
    auto list = h.servers("web");
    if (list) {
      for (const auto& s : *list) {
        if (s.name == "t1") return s;
      }
    }
    return {};
  };
  EXPECT_EQ(t1().address, task_address);
  ASSERT_TRUE(eventually([&] { return t1().status == "UP"; }, 10s))
      << "t1 is '" << t1().status << "' (check " << t1().check << ") after 10s";
  EXPECT_FALSE(t1().failing());

  // Already there: refused, and the first stays.
  auto again = h.add("web", "t1", task_address);
  ASSERT_FALSE(again);
  EXPECT_NE(again.error().message.find("HAProxy refused 'add server web/t1"), std::string::npos)
      << again.error().message;
  EXPECT_EQ(t1().status, "UP");

  auto drained = h.drain("web", "t1");
  ASSERT_TRUE(drained) << drained.error().message;
  EXPECT_EQ(t1().status, "DRAIN");
  auto shut = h.shutdown_sessions("web", "t1");
  ASSERT_TRUE(shut) << shut.error().message;
  EXPECT_EQ(t1().sessions, 0);

  auto removed = h.remove("web", "t1");
  ASSERT_TRUE(removed) << removed.error().message;
  EXPECT_TRUE(h.servers("web")->empty());
  // Gone already: fine.
  auto removed_again = h.remove("web", "t1");
  EXPECT_TRUE(removed_again) << removed_again.error().message;

  auto unknown = h.servers("nope");
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message.find("backend nope"), std::string::npos)
      << unknown.error().message;
  ::close(task);
}

INSTANTIATE_TEST_SUITE_P(Transports, HaproxyTransportTest,
                         ::testing::Values(transport{"UnixPath", AF_UNIX},
                                           transport{"UnixPrefix", AF_UNIX, true},
                                           transport{"Ipv4", AF_INET}, transport{"Ipv6", AF_INET6}),
                         [](const auto& info) { return info.param.name; });

TEST(HaproxyAddressTest, AcceptsHAProxysForms) {
  for (const std::string a : {"ipv4@127.0.0.1:9999", "ipv4@10.0.0.7:1", "ipv6@[::1]:9999",
                              "ipv6@[fd00::2]:65535", "unix@/run/haproxy/admin.sock",
                              "/run/haproxy/admin.sock", "haproxy.sock", "/tmp/a@b/admin.sock"}) {
    auto r = haproxy::check_address(a);
    EXPECT_TRUE(r) << a << ": " << r.error().message;
  }
}

// A malformed address is refused by name before any connection, by check_address() and by
// every call alike.
TEST(HaproxyAddressTest, MalformedAddressIsAClearError) {
  for (const std::string a :
       {"ipv4@127.0.0.1", "ipv4@127.0.0.1:", "ipv4@127.0.0.1:0", "ipv4@127.0.0.1:65536",
        "ipv4@127.0.0.1:99x", "ipv4@localhost:9999", "ipv4@:9999", "ipv4@::1:9999", "ipv6@::1:9999",
        "ipv6@[::1]", "ipv6@[::1]9999", "ipv6@[127.0.0.1]:9999", "tcp@127.0.0.1:9999",
        "abns@haproxy", "unix@"}) {
    auto checked = haproxy::check_address(a);
    ASSERT_FALSE(checked) << a;
    EXPECT_TRUE(checked.error().message.starts_with("bad HAProxy address '" + a + "': "))
        << checked.error().message;
    auto r = haproxy(a).servers("web");
    ASSERT_FALSE(r) << a;
    EXPECT_EQ(r.error().message, checked.error().message);
  }
  auto port = haproxy::check_address("ipv4@127.0.0.1:65536");
  EXPECT_EQ(port.error().message,
            "bad HAProxy address 'ipv4@127.0.0.1:65536': '65536' is not a port (1-65535)");
  auto host = haproxy::check_address("ipv4@localhost:9999");
  EXPECT_EQ(host.error().message,
            "bad HAProxy address 'ipv4@localhost:9999': 'localhost' is not a numeric IPv4 address");
}

TEST(HaproxyAddressTest, UnixPathTooLongKeepsItsError) {
  const std::string a = "/" + std::string(200, 'x');
  auto r = haproxy(a).servers("web");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "haproxy socket path too long: " + a);
}

// Nothing listens on the port: refused at once, the address named.
TEST(HaproxyUnreachableTest, ClosedPortIsRefusedAtOnce) {
  const int port = free_port(AF_INET);
  ASSERT_NE(port, 0);
  const std::string a = "ipv4@127.0.0.1:" + std::to_string(port);
  const auto start = std::chrono::steady_clock::now();
  auto r = haproxy(a).add("web", "t1", "127.0.0.1:1");
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message,
            "HAProxy refused 'add server web/t1 127.0.0.1:1 check inter 1s "
            "rise 2 fall 3': cannot reach HAProxy at " +
                a + ": Connection refused");
  auto s = haproxy(a).servers("web");
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().message, "cannot reach HAProxy at " + a + ": Connection refused");
  EXPECT_LT(took, 1s);
}

// A listener whose accept queue is full drops the SYN, so connect() would wait for the kernel's
// retries (minutes): the call gives up after its timeout instead.
TEST(HaproxyUnreachableTest, UnansweredConnectTimesOut) {
  const int listener = listen_loopback(AF_INET, 0);
  ASSERT_GE(listener, 0);
  const int port = port_of(listener);
  // Backlog 0 queues one connection; this one fills it (nobody accepts).
  const int filler = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  to.sin_port = htons(static_cast<std::uint16_t>(port));
  ASSERT_EQ(::connect(filler, reinterpret_cast<sockaddr*>(&to), sizeof to), 0);
  const std::string a = "ipv4@127.0.0.1:" + std::to_string(port);
  const auto start = std::chrono::steady_clock::now();
  auto r = haproxy(a, 300ms).servers("web");
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message,
            "cannot reach HAProxy at " + a + ": Connection timed out after 300ms");
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 2s);
  ::close(filler);
  ::close(listener);
}

// Connected, but nothing answers (not HAProxy, or HAProxy stuck): the answer's deadline holds.
TEST(HaproxyUnreachableTest, SilentPeerTimesOut) {
  const int listener = listen_loopback(AF_INET);
  ASSERT_GE(listener, 0);
  const std::string a = "ipv4@127.0.0.1:" + std::to_string(port_of(listener));
  const auto start = std::chrono::steady_clock::now();
  auto r = haproxy(a, 300ms).servers("web");
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "HAProxy at " + a + " did not answer 'show stat web 4 -1' in time");
  EXPECT_LT(took, 2s);
  ::close(listener);
}

}  // namespace
