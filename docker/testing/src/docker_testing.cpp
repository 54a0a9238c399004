#include "berth/docker_testing.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

extern char** environ;

namespace berth::docker::testing {

namespace fs = std::filesystem;

int spawn_logged(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

result<std::unique_ptr<engine>> daemon(const std::string& socket) {
  options o;
  o.socket_path = socket;
  auto e = make_engine(o);
  if (e || socket != "/var/run/docker.sock") return e;
  // Not answering: start the machine's dockerd, detached, and wait for it.
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/tmp/berth-dockerd.log", O_WRONLY | O_CREAT | O_APPEND,
                                   0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawnattr_t at;
  posix_spawnattr_init(&at);
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSID);
  pid_t pid = 0;
  char arg0[] = "dockerd";
  char* argv[] = {arg0, nullptr};
  const int rc = posix_spawnp(&pid, "dockerd", &fa, &at, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  if (rc != 0) {
    return tl::unexpected(error{errc::unavailable,
                                "dockerd is not running and could not be "
                                "started (is docker.io installed?)"});
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    e = make_engine(o);
    if (e) return e;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // polling a daemon's start
  }
  return tl::unexpected(error{errc::unavailable, "dockerd started but " + socket +
                                                     " did not answer within 60 s; see "
                                                     "/tmp/berth-dockerd.log"});
}

result<void> write_busybox_rootfs(const std::string& tar_path) {
  std::string busybox;
  for (const char* p : {"/bin/busybox", "/usr/bin/busybox"}) {
    if (fs::exists(p)) busybox = p;
  }
  if (busybox.empty()) {
    return tl::unexpected(error{errc::not_found, "no busybox binary: install busybox-static"});
  }
  std::error_code ec;
  const fs::path root = fs::temp_directory_path() / ("berth-rootfs-" + std::to_string(::getpid()));
  fs::remove_all(root, ec);
  fs::create_directories(root / "bin", ec);
  fs::create_directories(root / "tmp", ec);
  fs::create_directories(root / "proc", ec);
  fs::copy_file(busybox, root / "bin" / "busybox", fs::copy_options::overwrite_existing, ec);
  if (ec) return tl::unexpected(error{errc::not_found, "cannot copy busybox: " + ec.message()});
  for (const char* applet :
       {"sh",   "ls",    "cat",   "echo",   "sleep", "true",     "false", "test", "touch",
        "rm",   "mkdir", "httpd", "nc",     "dd",    "head",     "tail",  "wc",   "env",
        "kill", "ps",    "yes",   "printf", "id",    "hostname", "pwd"}) {
    fs::create_symlink("busybox", root / "bin" / applet, ec);
  }
  const std::string cmd = "tar -C '" + root.string() + "' -cf '" + tar_path + "' .";
  const int rc = std::system(cmd.c_str());
  fs::remove_all(root, ec);
  if (rc != 0) return tl::unexpected(error{errc::bad_request, "tar failed: " + cmd});
  return {};
}

void remove_labelled(engine& e, const std::map<std::string, std::string>& labels) {
  list_filter f;
  f.labels = labels;
  if (auto list = e.list_containers(f)) {
    for (const auto& c : *list) (void)e.remove_container(c.id, {true, true});
  }
}

result<void> ensure_test_image(engine& e) {
  if (e.inspect_image(test_image)) return {};
  const std::string tar =
      (fs::temp_directory_path() / ("berth-busybox-" + std::to_string(::getpid()) + ".tar"))
          .string();
  if (auto w = write_busybox_rootfs(tar); !w) return w;
  const std::string ref = test_image;
  auto id = e.import_image(tar, ref.substr(0, ref.find(':')), ref.substr(ref.find(':') + 1));
  std::error_code ec;
  fs::remove(tar, ec);
  if (!id) return tl::unexpected(id.error());
  return {};
}

private_daemon::private_daemon() {
  char tmpl[] = "/tmp/bdXXXXXX";
  if (const char* d = ::mkdtemp(tmpl)) dir_ = d;
  socket_ = dir_ + "/sock";
  if (!dir_.empty()) std::ofstream(dir_ + "/daemon.json") << "{}\n";
}

private_daemon::~private_daemon() {
  stop();
  std::error_code ec;
  // Overlay mounts under data-root are gone with the daemon; leave nothing behind.
  fs::remove_all(dir_, ec);
}

bool private_daemon::start() {
  if (dir_.empty()) return false;
  const std::string ns = "berth-test-" + std::to_string(::getpid());
  std::vector<std::string> args = {"unshare",
                                   "--net",
                                   "dockerd",
                                   "--data-root=" + dir_ + "/data",
                                   "--exec-root=" + dir_ + "/exec",
                                   "--pidfile=" + dir_ + "/pid",
                                   "--host=unix://" + socket_,
                                   "--bridge=none",
                                   "--iptables=false",
                                   "--ip6tables=false",
                                   "--config-file=" + dir_ + "/daemon.json",
                                   "--containerd-namespace=" + ns,
                                   "--containerd-plugins-namespace=" + ns + "-plugins"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  const std::string log = dir_ + "/log";
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, "unshare", &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return false;
  pid_ = pid;
  return eventually(
      [&] {
        options o;
        o.socket_path = socket_;
        return make_engine(o).has_value();
      },
      std::chrono::seconds(60));
}

void private_daemon::stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (::waitpid(pid_, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // its exit, bounded
  }
  pid_ = -1;
}

}  // namespace berth::docker::testing
