// berthd: the Berth node agent.
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <thread>

#include "berth/agent.hpp"

extern char** environ;

int main(int argc, char** argv) {
  std::map<std::string, std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string kv = *e;
    const auto eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  auto cfg = berth::agent::load_config(argc, argv, env);
  if (!cfg) {
    std::fprintf(stderr, "berthd: %s\n", cfg.error().message.c_str());
    return 2;
  }
  if (cfg->show_help) {
    std::fputs(cfg->help_text.c_str(), stdout);
    return 0;
  }
  // Logs go to stderr, as a daemon's do (journald takes both); stdout stays for --help.
  spdlog::set_default_logger(std::make_shared<spdlog::logger>(
      "", std::make_shared<spdlog::sinks::stderr_color_sink_mt>()));
  spdlog::set_level(spdlog::level::from_str(cfg->log_level));
  // Signals are taken by sigwait below, never by a worker thread.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto d = berth::agent::start(*cfg);
  if (!d) {
    spdlog::critical("cannot start: {}", d.error().message);
    return 1;
  }
  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("signal {}: shutting down", sig);
  // Whatever is in flight, berthd is gone within the stop deadline (systemd's TimeoutStopSec
  // is 30 s): a request stuck in a handler or a Docker call must not keep it alive.
  std::thread([deadline = cfg->shutdown_timeout] {
    std::this_thread::sleep_for(deadline);
    spdlog::error("shutdown took longer than {} ms: exiting with work in flight", deadline.count());
    spdlog::shutdown();
    std::_Exit(1);
  }).detach();
  (*d)->stop();
  return 0;
}
