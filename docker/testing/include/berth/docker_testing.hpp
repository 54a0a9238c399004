// What the docker tests and benchmarks share: a daemon that answers, and a local image built
// without a registry from the machine's busybox-static.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "berth/docker.hpp"

namespace berth::docker::testing {

// The image every test runs: a root filesystem of Debian's busybox-static, imported.
// The tag names the root filesystem's content: change it when write_busybox_rootfs changes.
inline constexpr const char* test_image = "berth-test/busybox:v2";

// An engine on `socket`. When the socket does not answer, starts dockerd in the background
// (its log in /tmp/berth-dockerd.log) and waits up to a minute for it.
result<std::unique_ptr<engine>> daemon(const std::string& socket = "/var/run/docker.sock");

// Writes a root-filesystem tarball of busybox (with its applets linked) to `tar_path`.
result<void> write_busybox_rootfs(const std::string& tar_path);

// Removes (forced, with their anonymous volumes) every container carrying all of `labels`:
// how tests and benchmarks clean up what they started, pass or fail.
void remove_labelled(engine& e, const std::map<std::string, std::string>& labels);

// Starts `args` (args[0] a path) with stdout and stderr into `log` (truncated): its PID, or -1
// when it could not be started. The caller stops it by that PID and reaps it.
int spawn_logged(const std::vector<std::string>& args, const std::string& log);

// Imports test_image into the engine's daemon unless it is there already.
result<void> ensure_test_image(engine& e);

// A dockerd of the test's own, in a temp dir, in a network namespace of its own (so it cannot
// touch the machine's docker0) with its own containerd namespaces and no /etc/docker/daemon.json.
// It has no bridge network: its containers use network mode none or host. Stopped (SIGTERM, by
// PID, reaped) and its directory removed on destruction.
class private_daemon {
 public:
  private_daemon();
  ~private_daemon();
  private_daemon(const private_daemon&) = delete;
  private_daemon& operator=(const private_daemon&) = delete;
  const std::string& socket() const { return socket_; }
  // Starts it and waits (up to a minute) until it answers.
  bool start();
  void stop();

 private:
  std::string dir_, socket_;
  int pid_ = -1;
};

// Polls `pred` until it holds or `within` passes; whether it held. Tests wait on conditions with
// a deadline, never on a fixed sleep.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds within,
                std::chrono::milliseconds every = std::chrono::milliseconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + within;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(every);
  }
  return pred();
}

}  // namespace berth::docker::testing
