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

class etcd_server {
 public:
  // Starts etcd with its data in `dir` (created); the same dir again is the same data.
  explicit etcd_server(const std::filesystem::path& dir) : dir_(dir) {
    std::filesystem::create_directories(dir);
    client_ = free_port();
    peer_ = free_port();
    endpoint_ = "http://127.0.0.1:" + std::to_string(client_);
    start();
  }
  ~etcd_server() { stop(); }

  // Stops etcd (SIGTERM, then waits for it); start() brings it back on the same ports and data.
  void stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int status = 0;
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
    }
  }
  void start() {
    const std::string peer_url = "http://127.0.0.1:" + std::to_string(peer_);
    const std::string data = (dir_ / "data").string(), log = (dir_ / "etcd.log").string();
    std::vector<std::string> args = {"/usr/bin/etcd",
                                     "--name=berth-test",
                                     "--data-dir=" + data,
                                     "--listen-client-urls=" + endpoint_,
                                     "--advertise-client-urls=" + endpoint_,
                                     "--listen-peer-urls=" + peer_url,
                                     "--initial-advertise-peer-urls=" + peer_url,
                                     "--initial-cluster=berth-test=" + peer_url,
                                     "--logger=zap",
                                     "--log-level=error"};
    pid_ = ::fork();
    if (pid_ == 0) {
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
    // Until it answers, or exits (reaped at once, not waited for).
    bool exited = false;
    const bool done = docker::testing::eventually(
        [&] {
          int status = 0;
          if (::waitpid(pid_, &status, WNOHANG) == pid_) {
            exited = true;
            pid_ = -1;
            return true;
          }
          return state::make_etcd_store(options()).has_value();
        },
        std::chrono::seconds(20));
    if (exited) ADD_FAILURE() << "etcd exited at start; see " << log;
    if (!done)
      ADD_FAILURE() << "etcd did not answer at " << endpoint_ << " within 20 s; see " << log;
  }
  etcd_server(const etcd_server&) = delete;
  etcd_server& operator=(const etcd_server&) = delete;

  const std::string& endpoint() const { return endpoint_; }
  state::etcd_options options() const {
    state::etcd_options o;
    o.endpoints = {endpoint_};
    return o;
  }

  // The ids of etcd's live leases (POST /v3/lease/leases).
  std::vector<state::lease_id> leases() const {
    std::vector<state::lease_id> out;
    CURL* h = curl_easy_init();
    if (h == nullptr) return out;
    std::string reply;
    const std::string url = endpoint_ + "/v3/lease/leases";
    curl_easy_setopt(h, CURLOPT_URL, url.c_str());
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, "{}");
    curl_easy_setopt(
        h, CURLOPT_WRITEFUNCTION, +[](char* d, std::size_t s, std::size_t n, void* o) {
          static_cast<std::string*>(o)->append(d, s * n);
          return s * n;
        });
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &reply);
    const bool ok = curl_easy_perform(h) == CURLE_OK;
    curl_easy_cleanup(h);
    if (!ok) return out;
    const auto j = nlohmann::json::parse(reply, nullptr, false);
    if (!j.is_object() || !j.contains("leases")) return out;
    for (const auto& l : j["leases"]) out.push_back(std::stoll(l.value("ID", "0")));
    return out;
  }

 private:
  std::filesystem::path dir_;
  int client_ = 0, peer_ = 0;
  pid_t pid_ = -1;
  std::string endpoint_;
};

}  // namespace berth::testing
