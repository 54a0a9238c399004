// A private etcd for a test: Debian's /usr/bin/etcd on two free loopback ports, its data in a
// directory the test owns, stopped (by its pid) when the object goes. Ready when the
// constructor returns, or the test fails.
#pragma once

#include <curl/curl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "berth/docker_testing.hpp"
#include "berth/state.hpp"

namespace berth::testing {

// A loopback port nobody listens on right now.
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    return 0;
  }
  const int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

// TLS for etcd's client URLs (PEM files): its certificate and key, and the CA it trusts for
// client certificates (required when set); the client's files, for options().
struct etcd_tls {
  std::filesystem::path ca, server_cert, server_key, client_cert, client_key;
};

class etcd_server {
 public:
  // Starts etcd with its data in `dir` (created); the same dir again is the same data. With
  // `members` > 1, a cluster of that many members on loopback ports (etcd's own failure). With
  // `tls`, clients speak https and show a certificate.
  explicit etcd_server(const std::filesystem::path& dir, std::size_t members = 1,
                       std::optional<etcd_tls> tls = std::nullopt)
      : dir_(dir), tls_(std::move(tls)) {
    std::filesystem::create_directories(dir);
    for (std::size_t i = 0; i < members; ++i) {
      member m;
      m.name = members == 1 ? "berth-test" : "berth-test-" + std::to_string(i);
      m.data = members == 1 ? dir / "data" : dir / m.name;
      members_.push_back(std::move(m));
    }
    bool fresh = true;
    for (const member& m : members_) fresh = fresh && !std::filesystem::exists(m.data);
    // A port free_port() found may be taken by a parallel test before etcd binds it: on fresh
    // data, new ports and again.
    for (int attempt = 1;; ++attempt) {
      for (member& m : members_) {
        m.client = free_port();
        m.peer = free_port();
      }
      endpoint_ = client_url(members_.front().client);
      if (start(fresh && attempt < 3)) break;
      stop();
      for (const member& m : members_) std::filesystem::remove_all(m.data);
      std::filesystem::remove(dir_ / "etcd.log");
    }
  }
  ~etcd_server() { stop(); }

  // Stops every member (SIGTERM, then waits for it); start() brings them back on the same ports
  // and data.
  void stop() {
    for (std::size_t i = 0; i < members_.size(); ++i) stop_member(i, SIGTERM);
  }
  // Stops member i with `sig` (SIGKILL: a member lost), reaped.
  void stop_member(std::size_t i, int sig) {
    member& m = members_.at(i);
    if (m.pid > 0) {
      ::kill(m.pid, sig);
      int status = 0;
      ::waitpid(m.pid, &status, 0);
      m.pid = -1;
    }
  }
  // False only when `retry_if_busy` and a member exited because its port was taken (nothing
  // reported then); otherwise true, with any failure to come up reported to the test.
  bool start(bool retry_if_busy = false) {
    std::string cluster;
    for (const member& m : members_) {
      // Appended, not concatenated from a literal: GCC 12's -Wrestrict misfires on the latter.
      if (!cluster.empty()) cluster += ',';
      cluster += m.name;
      cluster += '=';
      cluster += url(m.peer);
    }
    for (member& m : members_) launch(m, cluster);
    // Until it answers (a linearizable read needs the quorum), or a member exits.
    bool exited = false;
    const bool done = docker::testing::eventually(
        [&] {
          for (member& m : members_) {
            int status = 0;
            if (m.pid > 0 && ::waitpid(m.pid, &status, WNOHANG) == m.pid) {
              exited = true;
              m.pid = -1;
              return true;
            }
          }
          auto st = state::make_etcd_store(options());
          return st && (*st)->current_revision().has_value();
        },
        std::chrono::seconds(30));
    if (exited && retry_if_busy &&
        log_tail(200).find("address already in use") != std::string::npos) {
      return false;
    }
    if (exited) ADD_FAILURE() << "etcd exited at start; its log ends:\n" << log_tail();
    if (!done)
      ADD_FAILURE() << "etcd did not answer at " << endpoints() << " within 30 s; its log ends:\n"
                    << log_tail();
    return true;
  }
  // The last lines etcd wrote (its log is the test's only clue when it does not come up).
  std::string log_tail(std::size_t lines = 20) const {
    std::ifstream in(dir_ / "etcd.log");
    std::vector<std::string> last;
    for (std::string line; std::getline(in, line);) {
      last.push_back(std::move(line));
      if (last.size() > lines) last.erase(last.begin());
    }
    std::string out;
    for (const auto& l : last) out += l + '\n';
    return out.empty() ? "(empty)\n" : out;
  }
  etcd_server(const etcd_server&) = delete;
  etcd_server& operator=(const etcd_server&) = delete;

  // The first member's client URL, and every member's, comma-separated (--etcd-endpoints).
  const std::string& endpoint() const { return endpoint_; }
  std::string endpoints() const {
    std::string out;
    for (const member& m : members_) {
      if (!out.empty()) out += ',';
      out += client_url(m.client);
    }
    return out;
  }
  state::etcd_options options() const {
    state::etcd_options o;
    for (const member& m : members_) o.endpoints.push_back(client_url(m.client));
    if (tls_) {
      o.cacert = tls_->ca.string();
      o.cert = tls_->client_cert.string();
      o.key = tls_->client_key.string();
    }
    return o;
  }

  // The ids of etcd's live leases (POST /v3/lease/leases to the first member).
  std::vector<state::lease_id> leases() const {
    std::vector<state::lease_id> out;
    const auto j = post(endpoint_ + "/v3/lease/leases");
    if (!j.is_object() || !j.contains("leases")) return out;
    for (const auto& l : j["leases"]) out.push_back(std::stoll(l.value("ID", "0")));
    return out;
  }

  // The member that leads the cluster now (etcd's maintenance status), or -1.
  int leader() const {
    for (std::size_t i = 0; i < members_.size(); ++i) {
      if (members_[i].pid <= 0) continue;
      const auto j = post(client_url(members_[i].client) + "/v3/maintenance/status");
      if (!j.is_object() || !j.contains("header")) continue;
      if (j.value("leader", "") == j["header"].value("member_id", "-")) return static_cast<int>(i);
    }
    return -1;
  }

 private:
  // POSTs an empty JSON object to `url`: the reply, or null.
  static nlohmann::json post(const std::string& url) {
    CURL* h = curl_easy_init();
    if (h == nullptr) return nullptr;
    std::string reply;
    curl_easy_setopt(h, CURLOPT_URL, url.c_str());
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, "{}");
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(
        h, CURLOPT_WRITEFUNCTION, +[](char* d, std::size_t s, std::size_t n, void* o) {
          static_cast<std::string*>(o)->append(d, s * n);
          return s * n;
        });
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &reply);
    const bool ok = curl_easy_perform(h) == CURLE_OK;
    curl_easy_cleanup(h);
    if (!ok) return nullptr;
    return nlohmann::json::parse(reply, nullptr, false);
  }

  struct member {
    std::string name;
    int client = 0, peer = 0;
    std::filesystem::path data;
    pid_t pid = -1;
  };
  static std::string url(int port) { return "http://127.0.0.1:" + std::to_string(port); }
  std::string client_url(int port) const {
    return (tls_ ? "https://127.0.0.1:" : "http://127.0.0.1:") + std::to_string(port);
  }
  void launch(member& m, const std::string& cluster) {
    const std::string log = (dir_ / "etcd.log").string();
    std::vector<std::string> args = {"/usr/bin/etcd",
                                     "--name=" + m.name,
                                     "--data-dir=" + m.data.string(),
                                     "--listen-client-urls=" + client_url(m.client),
                                     "--advertise-client-urls=" + client_url(m.client),
                                     "--listen-peer-urls=" + url(m.peer),
                                     "--initial-advertise-peer-urls=" + url(m.peer),
                                     "--initial-cluster=" + cluster,
                                     "--initial-cluster-token=" + dir_.filename().string(),
                                     "--logger=zap",
                                     "--log-level=warn"};
    if (tls_) {
      args.push_back("--cert-file=" + tls_->server_cert.string());
      args.push_back("--key-file=" + tls_->server_key.string());
      args.push_back("--trusted-ca-file=" + tls_->ca.string());
      args.push_back("--client-cert-auth");
    }
    m.pid = ::fork();
    if (m.pid == 0) {
      std::FILE* out = std::fopen(log.c_str(), "a");
      if (out != nullptr) {
        ::dup2(::fileno(out), 1);
        ::dup2(::fileno(out), 2);
      }
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }

  std::filesystem::path dir_;
  std::optional<etcd_tls> tls_;
  std::vector<member> members_;
  std::string endpoint_;
};

}  // namespace berth::testing
