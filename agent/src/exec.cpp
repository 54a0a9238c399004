// BerthV1.ExecuteCommand: see exec.hpp.
#include "exec.hpp"

#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <thread>

namespace berth::agent::exec {

namespace dk = berth::docker;

namespace {

api_error invalid(std::string message) { return {"InvalidParameterException", std::move(message)}; }

// Docker's output, relayed as frames: Docker's own when not on a tty (already in this form),
// else each read wrapped as stdout.
constexpr std::size_t chunk = 16 * 1024;
constexpr std::size_t max_pending = 256 * 1024;  // read no more output while this much waits

void set_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) (void)::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

bool would_block() { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR; }

// Writes what `fd` takes now from the front of `out`; false when the peer is gone.
bool flush(int fd, std::string& out) {
  while (!out.empty()) {
    const ssize_t n = ::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
    if (n < 0) return would_block();
    out.erase(0, static_cast<std::size_t>(n));
  }
  return true;
}

// Writes all of `data` to a peer that reads it within `timeout`; false otherwise.
bool send_within(int fd, std::string data, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!data.empty()) {
    if (!flush(fd, data)) return false;
    if (data.empty()) break;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    pollfd p{fd, POLLOUT, 0};
    (void)::poll(&p, 1, 100);
  }
  return true;
}

constexpr std::size_t max_client_frame = 1 << 20;

// The client's whole frames taken off `from_client`: stdin onto `to_docker`, sizes to `resize`.
// False for what the protocol does not have (an unknown type, a frame over 1 MiB).
bool client_frames(std::string& from_client, std::string& to_docker,
                   const std::function<void(int rows, int cols)>& resize) {
  while (auto f = take_frame(from_client)) {
    if (f->first == frame_stdin) {
      to_docker += f->second;
    } else if (f->first == frame_resize) {
      int rows = 0, cols = 0;
      if (std::sscanf(f->second.c_str(), "%d %d", &rows, &cols) == 2 && rows > 0 && cols > 0 &&
          rows <= 10000 && cols <= 10000) {
        resize(rows, cols);
      }
    } else {
      spdlog::info("execute command: the client sent a frame of unknown type {}", f->first);
      return false;
    }
  }
  const auto* b = reinterpret_cast<const unsigned char*>(from_client.data());
  return from_client.size() < 8 || ((std::size_t{b[4]} << 24) | (std::size_t{b[5]} << 16) |
                                    (std::size_t{b[6]} << 8) | b[7]) <= max_client_frame;
}

// Moves bytes both ways until Docker ends the output (true) or the client goes (false).
bool relay(int client, dk::exec_stream& s, bool tty,
           const std::function<void(int rows, int cols)>& resize) {
  const int docker = s.fd();
  std::string from_client, to_client, to_docker;
  if (std::string early = s.take_early(); !early.empty()) {
    to_client = tty ? frame(frame_stdout, early) : std::move(early);
  }
  bool stdin_open = true;    // the client may still send stdin
  bool stdin_ended = false;  // Docker was told
  char buf[chunk];
  for (;;) {
    if (!stdin_open && to_docker.empty() && !stdin_ended) {
      (void)::shutdown(docker, SHUT_WR);  // the command's stdin ends
      stdin_ended = true;
    }
    pollfd p[2] = {{client, 0, 0}, {docker, 0, 0}};
    if (stdin_open && to_docker.empty()) p[0].events |= POLLIN;
    if (!to_client.empty()) p[0].events |= POLLOUT;
    if (to_client.size() < max_pending) p[1].events |= POLLIN;
    if (!to_docker.empty()) p[1].events |= POLLOUT;
    if (::poll(p, 2, 1000) < 0 && errno != EINTR) return false;
    if ((p[0].revents & (POLLHUP | POLLERR | POLLNVAL)) != 0) return false;
    if ((p[0].revents & POLLIN) != 0) {
      const ssize_t n = ::recv(client, buf, sizeof buf, 0);
      if (n == 0) stdin_open = false;
      if (n < 0 && !would_block()) return false;
      if (n > 0) {
        from_client.append(buf, static_cast<std::size_t>(n));
        if (!client_frames(from_client, to_docker, resize)) return false;
      }
    }
    if ((p[1].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      const ssize_t n = ::recv(docker, buf, sizeof buf, 0);
      if (n == 0 || (n < 0 && !would_block())) {
        // The output's end: what is left goes to the client before the exit frame.
        return send_within(client, std::move(to_client), std::chrono::seconds(10));
      }
      if (n > 0) {
        const std::string_view got(buf, static_cast<std::size_t>(n));
        if (tty) {
          to_client += frame(frame_stdout, got);
        } else {
          to_client.append(got);
        }
      }
    }
    if (!flush(client, to_client)) return false;
    // Stdin a command does not read is dropped with the connection, not an error.
    if (!flush(docker, to_docker)) to_docker.clear();
  }
}

// The exec's exit code once Docker reports it ended (it may report it running a moment after
// the stream closed).
std::optional<int> exit_code(dk::engine& d, const std::string& id) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    auto st = d.inspect_exec(id);
    if (!st) return std::nullopt;
    if (!st->running && st->exit_code) return st->exit_code;
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling Docker, not a test
  }
}

void session(dk::engine& d, const std::string& id, bool tty, int rows, int cols, int client) {
  set_nonblocking(client);
  const auto fail = [&](const std::string& why) {
    spdlog::info("execute command {}: {}", id, why);
    (void)send_within(client, frame(frame_error, why), std::chrono::seconds(5));
  };
  auto s = d.start_exec(id, tty);
  if (!s) return fail("Docker did not start the command: " + s.error().message);
  // The terminal's size, at the start and whenever the client's changes.
  const auto resize = [&](int r, int c) {
    if (!tty) return;
    if (auto done = d.resize_exec(id, r, c); !done) {
      spdlog::debug("execute command {}: resize: {}", id, done.error().message);
    }
  };
  if (rows > 0 && cols > 0) resize(rows, cols);
  if (!relay(client, **s, tty, resize)) {
    spdlog::info("execute command {}: the client went before the command ended", id);
    return;
  }
  s->reset();
  const auto code = exit_code(d, id);
  if (!code) return fail("Docker did not report the command's exit code");
  (void)send_within(client, frame(frame_exit, std::to_string(*code)), std::chrono::seconds(5));
}

tl::expected<std::string, api_error> string_member(const json& r, const char* name, bool required) {
  const auto it = r.find(name);
  if (it == r.end()) {
    if (required) return tl::unexpected(invalid(std::string(name) + " is required"));
    return std::string();
  }
  if (!it->is_string()) {
    return tl::unexpected(
        api_error{"SerializationException", std::string(name) + " must be a string"});
  }
  return it->get<std::string>();
}

}  // namespace

tl::expected<std::vector<std::string>, std::string> split_command(std::string_view text) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == ' ' || c == '\t' || c == '\n') {
      if (in_word) words.push_back(std::exchange(word, {}));
      in_word = false;
      continue;
    }
    in_word = true;
    if (c == '\'') {
      const auto end = text.find('\'', i + 1);
      if (end == std::string_view::npos)
        return tl::unexpected(std::string("an unterminated ' quote"));
      word.append(text.substr(i + 1, end - i - 1));
      i = end;
    } else if (c == '"') {
      for (++i;; ++i) {
        if (i >= text.size()) return tl::unexpected(std::string("an unterminated \" quote"));
        if (text[i] == '"') break;
        if (text[i] == '\\' && i + 1 < text.size() &&
            std::string_view("\"\\$`").find(text[i + 1]) != std::string_view::npos) {
          ++i;
        }
        word.push_back(text[i]);
      }
    } else if (c == '\\' && i + 1 < text.size()) {
      word.push_back(text[++i]);
    } else {
      word.push_back(c);
    }
  }
  if (in_word) words.push_back(std::move(word));
  return words;
}

tl::expected<located, api_error> locate(service& svc, const std::string& cluster,
                                        const std::string& task, const std::string& container,
                                        const std::string& elsewhere) {
  json describe = {{"tasks", json::array({task})}};
  if (!cluster.empty()) describe["cluster"] = cluster;
  BERTH_TRY(found, svc.call("DescribeTasks", describe));
  const json& tasks = found["tasks"];
  if (!tasks.is_array() || tasks.empty()) {
    return tl::unexpected(invalid("The task " + task + " was not found in the cluster"));
  }
  const json& t = tasks[0];
  const std::string arn = t.value("taskArn", task);
  if (t.value("containerInstanceArn", "") != svc.instance_arn()) {
    return tl::unexpected(api_error{"TargetNotConnectedException",
                                    "The task " + arn + " runs on container instance " +
                                        t.value("containerInstanceArn", "") + ", not this one (" +
                                        svc.instance_arn() + "): " + elsewhere +
                                        " that instance's berthd"});
  }
  const json* c = nullptr;
  std::string names;
  const json containers = t.value("containers", json::array());
  for (const json& each : containers) {
    const std::string name = each.value("name", "");
    names += (names.empty() ? "" : ", ") + name;
    if (container.empty() ? containers.size() == 1 : name == container) c = &each;
  }
  if (c == nullptr) {
    return tl::unexpected(
        invalid(container.empty()
                    ? "The task has several containers (" + names + "): name one with container"
                    : "The task has no container named " + container + " (it has " + names + ")"));
  }
  return located{t, *c};
}

tl::expected<std::function<void(int fd)>, api_error> open(service& svc, const json& request) {
  if (!request.is_object()) {
    return tl::unexpected(
        api_error{"SerializationException", "The request body must be a JSON object"});
  }
  BERTH_TRY(task, string_member(request, "task", true));
  BERTH_TRY(command, string_member(request, "command", true));
  BERTH_TRY(cluster, string_member(request, "cluster", false));
  BERTH_TRY(container, string_member(request, "container", false));
  const auto flag = [&](const char* name) -> tl::expected<bool, api_error> {
    const auto it = request.find(name);
    if (it == request.end()) return false;
    if (!it->is_boolean()) {
      return tl::unexpected(
          api_error{"SerializationException", std::string(name) + " must be a boolean"});
    }
    return it->get<bool>();
  };
  BERTH_TRY(interactive, flag("interactive"));
  BERTH_TRY(tty, flag("tty"));
  const auto size = [&](const char* name) -> tl::expected<int, api_error> {
    const auto it = request.find(name);
    if (it == request.end()) return 0;
    if (!it->is_number_integer() || it->get<std::int64_t>() < 0 ||
        it->get<std::int64_t>() > 10000) {
      return tl::unexpected(invalid(std::string(name) + " must be an integer from 0 to 10000"));
    }
    return it->get<int>();
  };
  BERTH_TRY(rows, size("rows"));
  BERTH_TRY(cols, size("cols"));
  if (task.empty()) return tl::unexpected(invalid("task is required"));
  auto words = split_command(command);
  if (!words) return tl::unexpected(invalid("command: " + words.error()));
  if (words->empty()) return tl::unexpected(invalid("command is empty"));

  BERTH_TRY(where, locate(svc, cluster, task, container, "run berthctl execute-command against"));
  const json& t = where.task;
  const std::string arn = t.value("taskArn", task);
  if (t.value("lastStatus", "") != "RUNNING") {
    return tl::unexpected(invalid("The task " + arn + " is " + t.value("lastStatus", "unknown") +
                                  ", not RUNNING: only a running task's containers can be "
                                  "entered"));
  }
  if (!t.value("enableExecuteCommand", false)) {
    return tl::unexpected(
        invalid("The execute command failed because execute command was not enabled when the "
                "task was run. Run a new task with execute command enabled "
                "(--enable-execute-command) and try again."));
  }
  const json* c = &where.container;
  const std::string runtime = c->value("runtimeId", "");
  if (c->value("lastStatus", "") != "RUNNING" || runtime.empty()) {
    return tl::unexpected(invalid("The container " + c->value("name", "") + " is " +
                                  c->value("lastStatus", "unknown") + ", not RUNNING"));
  }
  dk::exec_spec spec;
  spec.cmd = std::move(*words);
  spec.attach_stdin = interactive;
  spec.tty = tty;
  dk::engine& d = svc.docker();
  auto id = d.create_exec(runtime, spec);
  if (!id) {
    if (id.error().code == dk::errc::not_found || id.error().code == dk::errc::conflict) {
      return tl::unexpected(invalid("The container " + c->value("name", "") +
                                    " cannot be entered: " + id.error().message));
    }
    return tl::unexpected(
        api_error{"ServerException", "Docker did not create the exec: " + id.error().message, 500});
  }
  spdlog::info("execute command in {} container {}: exec {}", arn, c->value("name", ""), *id);
  return [&d, exec_id = *id, tty, rows, cols](int fd) { session(d, exec_id, tty, rows, cols, fd); };
}

tl::expected<json, api_error> tail_logs(service& svc, const json& request) {
  if (!request.is_object()) {
    return tl::unexpected(
        api_error{"SerializationException", "The request body must be a JSON object"});
  }
  BERTH_TRY(task, string_member(request, "task", true));
  BERTH_TRY(cluster, string_member(request, "cluster", false));
  BERTH_TRY(container, string_member(request, "container", false));
  std::uint32_t lines = 100;
  if (const auto it = request.find("lines"); it != request.end()) {
    if (!it->is_number_integer() || it->get<std::int64_t>() < 1 ||
        it->get<std::int64_t>() > 10000) {
      return tl::unexpected(invalid("lines must be an integer from 1 to 10000"));
    }
    lines = it->get<std::uint32_t>();
  }
  if (task.empty()) return tl::unexpected(invalid("task is required"));
  BERTH_TRY(where, locate(svc, cluster, task, container, "ask"));
  const std::string name = where.container.value("name", "");
  const std::string runtime = where.container.value("runtimeId", "");
  if (runtime.empty()) {
    return tl::unexpected(invalid("The container " + name + " has not been created (it is " +
                                  where.container.value("lastStatus", "unknown") + ")"));
  }
  auto text = svc.docker().logs(runtime, lines);
  if (!text) {
    if (text.error().code == dk::errc::not_found) {
      return tl::unexpected(invalid("The container " + name +
                                    " is gone (removed after its task stopped): its logs went "
                                    "with it"));
    }
    return tl::unexpected(
        api_error{"ServerException", "Docker did not give the logs: " + text.error().message, 500});
  }
  json out = {{"taskArn", where.task.value("taskArn", task)},
              {"container", name},
              {"lines", json::array()}};
  std::size_t from = 0;
  while (from < text->size()) {
    const auto nl = text->find('\n', from);
    const auto end = nl == std::string::npos ? text->size() : nl;
    out["lines"].push_back(text->substr(from, end - from));
    from = end + 1;
  }
  return out;
}

}  // namespace berth::agent::exec
