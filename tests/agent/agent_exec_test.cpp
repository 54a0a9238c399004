// berthctl execute-command against a real berthd and Docker: a command's output, exit code and
// stdin, a terminal, and the refusals (execute command not enabled, a stopped task, a
// non-administrator, a request that does not upgrade), each in the audit log; a terminal resized
// under berthctl.
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "agent_fixture.hpp"

namespace {

using namespace berth_agent_testing;

// A task started with enableExecuteCommand (or without), once RUNNING.
std::string running_task(agent& a, bool exec_enabled) {
  std::vector<std::string> args = {"run-task", "--cluster", a.cluster(), "--task-definition",
                                   "shell"};
  if (exec_enabled) args.push_back("--enable-execute-command");
  auto run = a.aws(args);
  EXPECT_EQ(run.status, 0) << run.err;
  if (run.status != 0) return {};
  const std::string task = run.body["tasks"][0]["taskArn"];
  EXPECT_TRUE(a.wait_status(task, "RUNNING")) << a.describe_task(task).dump(2);
  return task;
}

TEST_F(AgentTest, ExecuteCommandRunsInATasksContainer) {
  a().register_td("shell", container("sh", {"sleep", "300"}));
  const std::string c = a().cluster();
  const std::string task = running_task(a(), true);
  ASSERT_FALSE(task.empty());
  EXPECT_EQ(a().describe_task(task)["enableExecuteCommand"], true);
  const auto exec = [&](const std::string& command, const std::string& as = "",
                        bool interactive = false) {
    std::vector<std::string> args = {"execute-command", "--cluster", c, "--task", task,
                                     "--command",       command};
    if (interactive) args.push_back("--interactive");
    return a().berthctl(args, as);
  };

  // Its stdout and stderr apart, and its exit code as berthctl's.
  auto r = exec("sh -c 'echo out; echo err >&2; exit 3'");
  EXPECT_EQ(r.status, 3) << r.err;
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "err\n");
  // Words as a shell splits them, without a shell: no expansion.
  r = exec(R"(echo "a  b" 'c $HOME' d\ e)");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "a  b c $HOME d e\n");
  // --interactive: berthctl's stdin is the command's, to its end.
  r = exec("cat", "printf 'hello\\nworld\\n' |", true);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "hello\nworld\n");
  // More than a frame's worth of output and of input arrives whole.
  r = exec("wc -c", "head -c 300000 /dev/zero |", true);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("300000"), std::string::npos) << r.out;
  // On a terminal (script(1) gives berthctl one), the command has one too.
  r = run_shell("printf 'tty; echo $((6 * 7)); exit 5\\n' | script -qec \"" +
                std::string(BERTHCTL) + " --socket " + a().socket() +
                " execute-command --cluster " + c + " --task " + task +
                " --interactive --command sh\" /dev/null");
  EXPECT_EQ(r.status, 5) << r.out;
  EXPECT_NE(r.out.find("/dev/pts/"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("42"), std::string::npos) << r.out;

  // Refused: with ECS's error, nothing run.
  r = exec("sh -c 'unterminated");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("InvalidParameterException"), std::string::npos) << r.err;
  r = a().berthctl({"execute-command", "--cluster", c, "--task", task, "--container", "nope",
                    "--command", "true"});
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("no container named nope"), std::string::npos) << r.err;
  r = exec("true", "setpriv --reuid nobody --regid nogroup --clear-groups");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("AccessDeniedException"), std::string::npos) << r.err;
  // Without the upgrade, the session has nowhere to go.
  const auto [status, body] =
      a().raw("", json{{"task", task}, {"command", "true"}, {"cluster", c}}.dump(),
              "BerthV1.ExecuteCommand");
  EXPECT_EQ(status, 400);
  EXPECT_NE(body.value("message", "").find("Upgrade"), std::string::npos) << body.dump();

  // A task started without enableExecuteCommand is not entered, as on ECS.
  const std::string closed = running_task(a(), false);
  ASSERT_FALSE(closed.empty());
  r = a().berthctl({"execute-command", "--cluster", c, "--task", closed, "--command", "true"});
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("execute command was not enabled"), std::string::npos) << r.err;
  // Nor a stopped one.
  ASSERT_EQ(a().aws({"stop-task", "--cluster", c, "--task", task}).status, 0);
  ASSERT_TRUE(a().wait_status(task, "STOPPED"));
  r = exec("true");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("not RUNNING"), std::string::npos) << r.err;

  // Every session, and every refusal, is in the audit log with its command.
  int sessions = 0, refusals = 0;
  std::ifstream log(a().dir() / "state" / "audit.log");
  for (std::string line; std::getline(log, line);) {
    const json rec = json::parse(line, nullptr, false);
    if (rec.is_discarded() || rec.value("eventName", "") != "ExecuteCommand") continue;
    ASSERT_TRUE(rec["requestParameters"].is_object()) << line;
    EXPECT_TRUE(rec["requestParameters"].contains("command")) << line;
    (rec.contains("errorCode") ? refusals : sessions) += 1;
  }
  EXPECT_EQ(sessions, 5);
  EXPECT_GE(refusals, 5);
}

// berthctl on a terminal of its own, a pseudo-terminal whose other end the test holds: the
// command's terminal has the local one's size, and follows it when it changes (SIGWINCH).
TEST_F(AgentTest, ExecuteCommandFollowsTheTerminalsSize) {
  a().register_td("shell", container("sh", {"sleep", "300"}));
  const std::string task = running_task(a(), true);
  ASSERT_FALSE(task.empty());
  int term = -1, side = -1;
  winsize ws{24, 80, 0, 0};
  ASSERT_EQ(::openpty(&term, &side, nullptr, nullptr, &ws), 0);
  const std::string socket = a().socket(), cluster = a().cluster();
  const pid_t pid = ::fork();
  if (pid == 0) {
    // Its own session, with the pseudo-terminal as its controlling terminal: a resize signals it.
    ::setsid();
    ::ioctl(side, TIOCSCTTY, 0);
    for (int fd = 0; fd < 3; ++fd) ::dup2(side, fd);
    ::close(side);
    ::close(term);
    ::execl(BERTHCTL, "berthctl", "--socket", socket.c_str(), "execute-command", "--cluster",
            cluster.c_str(), "--task", task.c_str(), "--interactive", "--command", "sh",
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(side);
  std::string seen;
  // Types `line` until the terminal shows `want` (the shell may not read it at once), for 30 s.
  const auto type_until = [&](const std::string& line, const std::string& want) {
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    auto next_type = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() < deadline) {
      if (seen.find(want) != std::string::npos) return true;
      if (std::chrono::steady_clock::now() >= next_type) {
        EXPECT_EQ(::write(term, line.data(), line.size()), static_cast<ssize_t>(line.size()));
        next_type = std::chrono::steady_clock::now() + 2s;
      }
      pollfd p{term, POLLIN, 0};
      if (::poll(&p, 1, 200) > 0) {
        char buf[4096];
        const ssize_t n = ::read(term, buf, sizeof buf);
        if (n <= 0) return false;  // berthctl is gone
        seen.append(buf, static_cast<std::size_t>(n));
      }
    }
    return seen.find(want) != std::string::npos;
  };
  EXPECT_TRUE(type_until("stty size\n", "24 80")) << seen;
  seen.clear();
  ws = {40, 120, 0, 0};
  // (EXPECT, not ASSERT: berthctl is stopped below whatever happens.)
  EXPECT_EQ(::ioctl(term, TIOCSWINSZ, &ws), 0);  // the kernel sends berthctl SIGWINCH
  EXPECT_TRUE(type_until("stty size\n", "40 120")) << seen;
  const std::string bye = "exit 7\n";
  EXPECT_EQ(::write(term, bye.data(), bye.size()), static_cast<ssize_t>(bye.size()));
  int status = 0;
  const bool ended = eventually([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, 30s);
  if (!ended) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
  }
  EXPECT_TRUE(ended) << "berthctl did not end with the shell";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 7) << status << ": " << seen;
  ::close(term);
}

}  // namespace
