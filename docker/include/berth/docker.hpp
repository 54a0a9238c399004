// The Docker Engine client through which the agent drives containers, and the cgroup checks that
// confirm what Docker was asked for is what the kernel enforces.
//
// Contract:
// - Every call has a deadline (options::timeout, or its own argument); a hung or vanished daemon
//   returns errc::timeout or errc::unavailable, never blocks for ever.
// - An engine is safe to call from several threads at once: each call takes its own connection.
// - Errors carry Docker's own message; no exception leaves this header's functions.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tl/expected.hpp>
#include <vector>

namespace berth::docker {

enum class errc {
  unavailable,   // the socket does not answer, or the daemon went away mid-call
  timeout,       // the call's deadline passed
  not_found,     // 404: no such container or image
  conflict,      // 409: name in use, container running, image in use, ...
  bad_request,   // 400: Docker refused the request's content
  server_error,  // 5xx: Docker failed (a pull with no registry, say)
  bad_response,  // the daemon answered something this client cannot read
  unsupported,   // the daemon's API is older than 1.41 (Docker 20.10)
  cgroup,        // a cgroup could not be found or read
};
std::string_view to_string(errc e) noexcept;

struct error {
  errc code;
  std::string message;  // Docker's own words where it gave some
  int status = 0;       // the HTTP status, when there was one
};
template <class T>
using result = tl::expected<T, error>;

// The oldest Engine API this client speaks: Docker 20.10.
inline constexpr std::string_view minimum_api_version = "1.41";
// The newest it asks for; a newer daemon is spoken to at this version.
inline constexpr std::string_view maximum_api_version = "1.43";

struct options {
  std::string socket_path = "/var/run/docker.sock";
  std::chrono::milliseconds timeout{60'000};  // a call's deadline unless it takes its own
  std::chrono::milliseconds connect_timeout{2'000};
  // Called after every request/response call (not streams) with its operation, the method and
  // path with ids, names and the query left out ("POST /containers/{id}/start"), the HTTP status
  // (0: no answer) and how long it took: what metrics are made of. From the calling thread.
  std::function<void(std::string_view operation, long status, std::chrono::nanoseconds took)>
      on_call;
};

struct version_info {
  std::string api_version;  // the version requests are pinned to
  std::string server_api_version;
  std::string engine_version;
  std::string os, arch, kernel;
};

// ---- containers ----

struct port_binding {
  std::uint16_t container_port = 0;
  std::string protocol = "tcp";
  std::string host_ip;          // empty: every address (as Docker)
  std::uint16_t host_port = 0;  // 0: Docker picks one
};
struct mount {
  std::string source;  // a host path, or a volume name when `volume`
  std::string target;
  bool read_only = false;
  bool volume = false;
};
struct ulimit {
  std::string name;
  std::int64_t soft = 0, hard = 0;
};
struct health_check {
  std::vector<std::string> test;  // {"CMD-SHELL", "..."} or {"CMD", ...} or {"NONE"}
  std::chrono::nanoseconds interval{0}, timeout{0}, start_period{0};
  int retries = 0;
};
struct device {
  std::string path_on_host, path_in_container;
  std::string cgroup_permissions = "rwm";  // some of r (read), w (write), m (mknod)
};
struct log_config {
  std::string type;  // json-file, none, ...
  std::map<std::string, std::string> config;
};

struct container_spec {
  std::string name;  // empty: Docker names it
  std::string image;
  std::vector<std::string> entrypoint, command;
  std::vector<std::string> env;  // KEY=VALUE
  std::map<std::string, std::string> labels;
  std::string working_dir, user, hostname;
  // HostConfig. Zero means unset.
  std::int64_t memory_bytes = 0, memory_reservation_bytes = 0;
  std::int64_t memory_swap_bytes = 0;  // memory + swap; -1: unlimited swap
  std::int64_t nano_cpus = 0, cpu_shares = 0;
  std::int64_t pids_limit = 0;
  std::vector<port_binding> ports;
  std::string network_mode;  // host, bridge, none, or empty for Docker's default
  std::vector<mount> mounts;
  std::vector<ulimit> ulimits;
  bool readonly_rootfs = false, privileged = false;
  std::optional<bool> init;
  std::vector<std::string> cap_add, cap_drop;  // SYS_ADMIN or CAP_SYS_ADMIN, or ALL
  // host, none, shareable, private or container:<id>; empty: Docker's default.
  std::string pid_mode, ipc_mode;
  std::vector<device> devices;
  std::map<std::string, std::string> tmpfs;  // container path -> mount options ("size=64m")
  std::int64_t shm_size_bytes = 0;           // /dev/shm's size; zero: Docker's default
  std::optional<log_config> log;
  std::optional<health_check> health;
};

enum class health_status { none, starting, healthy, unhealthy };
std::string_view to_string(health_status h) noexcept;

struct container_info {
  std::string id, name, image;
  std::string image_id;  // what `image` resolved to when it was created: sha256:...
  std::string status;    // created, running, paused, restarting, removing, exited, dead
  bool running = false;
  int pid = 0;
  int exit_code = 0;
  bool oom_killed = false;
  std::string error;  // Docker's, e.g. why it could not start
  std::string started_at, finished_at;
  health_status health = health_status::none;
  std::map<std::string, std::string> labels;
  std::vector<port_binding> ports;  // the host ports actually bound
  std::int64_t memory_bytes = 0, memory_reservation_bytes = 0, nano_cpus = 0, cpu_shares = 0;
};

struct container_summary {
  std::string id, name, image, state;
  std::map<std::string, std::string> labels;
};

struct list_filter {
  std::map<std::string, std::string> labels;  // every one must match
  bool all = true;                            // stopped ones too
};

struct remove_options {
  bool force = false;    // kill it first if running
  bool volumes = false;  // remove its anonymous volumes
};

struct container_stats {
  std::uint64_t cpu_total_ns = 0, system_cpu_ns = 0;
  std::uint32_t online_cpus = 0;
  std::uint64_t memory_usage = 0, memory_limit = 0;
  std::uint64_t rx_bytes = 0, tx_bytes = 0;
  std::uint64_t block_read = 0, block_write = 0;
  std::uint64_t pids = 0;
};

// ---- images ----

struct image_info {
  std::string id;
  std::vector<std::string> tags;
  std::int64_t size = 0;
  std::string created;
};

// ---- events ----

struct event {
  std::string type, action, id;                   // e.g. container, die, <container id>
  std::map<std::string, std::string> attributes;  // labels, name, exitCode, ...
  std::int64_t time_nano = 0;
};
struct event_filter {
  std::vector<std::string> types{"container"};
  std::vector<std::string> actions;           // empty: all
  std::map<std::string, std::string> labels;  // every one must match
};
struct event_handlers {
  std::function<void(const event&)> on_event;
  // After every connection, first and re-established: the containers that match the filter's
  // labels, so that what happened while disconnected can be reconciled.
  std::function<void(const std::vector<container_summary>&)> on_resync;
  std::function<void(const error&)> on_disconnect;
};

// An open /events stream. It reconnects by itself (with back-off) when the daemon goes away;
// destroying it stops the stream and joins its thread. Handlers run on that thread and should
// return quickly: Docker drops events for a subscriber that stops reading. A handler must not
// destroy its own subscription, and an exception from one is dropped. The engine that made it
// must outlive it.
class subscription {
 public:
  virtual ~subscription() = default;
  virtual bool connected() const noexcept = 0;
  virtual std::uint64_t connections() const noexcept = 0;  // 1 after the first connect
};

// ---- exec ----

struct exec_spec {
  std::vector<std::string> cmd;
  bool attach_stdin = false;  // the command reads what is written to the stream
  bool tty = false;           // on a terminal: one raw stream; else stdout and stderr framed
  std::string user;           // empty: the container's
};

// An exec's connection, taken over from HTTP (Docker's hijacked stream). What is written to
// fd() is the command's stdin, and shutdown(fd(), SHUT_WR) closes it; what is read is its
// output: raw on a tty, else in Docker's frames (1 for stdout or 2 for stderr, three zero
// bytes, the length as 32 bits big-endian, the data). Destroying it closes the connection.
class exec_stream {
 public:
  virtual ~exec_stream() = default;
  virtual int fd() const noexcept = 0;
  // Output that came in with the response's header: it precedes what fd() gives.
  virtual std::string take_early() = 0;
};

struct exec_state {
  bool running = false;
  std::optional<int> exit_code;  // once it has ended
};

// The engine: an interface, so that a fault-injecting stand-in can replace it in tests.
class engine {
 public:
  virtual ~engine() = default;
  virtual const version_info& version() const noexcept = 0;

  virtual result<std::string> create_container(const container_spec& spec) = 0;  // its id
  // Starting a running container, or stopping a stopped one, succeeds.
  virtual result<void> start_container(std::string_view id) = 0;
  virtual result<void> stop_container(std::string_view id, std::chrono::seconds grace) = 0;
  virtual result<void> kill_container(std::string_view id, std::string_view signal) = 0;
  // Removing a container that does not exist succeeds: cleanup is idempotent.
  virtual result<void> remove_container(std::string_view id, remove_options o) = 0;
  virtual result<container_info> inspect_container(std::string_view id) = 0;
  virtual result<std::vector<container_summary>> list_containers(const list_filter& f) = 0;
  // Waits for the container to stop, up to `timeout`; its exit code.
  virtual result<int> wait_container(std::string_view id, std::chrono::milliseconds timeout) = 0;
  virtual result<std::string> logs(std::string_view id, std::uint32_t tail) = 0;
  virtual result<container_stats> stats(std::string_view id) = 0;

  virtual result<image_info> inspect_image(std::string_view ref) = 0;
  virtual result<std::vector<image_info>> list_images() = 0;
  // A root-filesystem tarball as repository:tag; the new image's id.
  virtual result<std::string> import_image(const std::string& tar_path, std::string_view repository,
                                           std::string_view tag) = 0;
  // A `docker save` tarball; the names it loaded.
  virtual result<std::vector<std::string>> load_image(const std::string& tar_path) = 0;
  // Writes a `docker save` tarball of the image to `tar_path`.
  virtual result<void> save_image(std::string_view ref, const std::string& tar_path) = 0;
  virtual result<void> remove_image(std::string_view ref, bool force) = 0;
  // A named volume; not_found when there is none, conflict while a container uses it.
  virtual result<void> remove_volume(std::string_view name) = 0;
  // Fails with Docker's message (server_error or not_found) when no registry answers, or with
  // timeout when the deadline passes first.
  virtual result<void> pull_image(std::string_view ref, std::chrono::milliseconds timeout) = 0;

  // A command to run in a running container (its id); the exec's id. not_found: no such
  // container; conflict: it is not running.
  virtual result<std::string> create_exec(std::string_view container, const exec_spec& s) = 0;
  // Starts it, attached: the stream stays open until the command ends or it is destroyed.
  virtual result<std::unique_ptr<exec_stream>> start_exec(std::string_view exec_id, bool tty) = 0;
  // A tty exec's terminal size.
  virtual result<void> resize_exec(std::string_view exec_id, int rows, int cols) = 0;
  virtual result<exec_state> inspect_exec(std::string_view exec_id) = 0;

  // Fails at once when Docker refuses the filter.
  virtual result<std::unique_ptr<subscription>> subscribe(const event_filter& f,
                                                          event_handlers h) = 0;
};

// Connects and negotiates the API version (/_ping, /version).
result<std::unique_ptr<engine>> make_engine(const options& o = {});

// ---- cgroups (libcgroup) ----

// What the kernel enforces on a process's cgroup, v1 or v2. Absent values could not be read;
// limits with no limit set read as nullopt too (v1's huge numbers and v2's "max").
struct cgroup_reading {
  int version = 0;          // 1 or 2
  std::string memory_path;  // the cgroup's path in the memory hierarchy
  std::optional<std::int64_t> memory_limit, memory_soft_limit, memory_usage;
  std::optional<std::int64_t> cpu_shares;  // v1 cpu.shares
  std::optional<std::int64_t> cpu_weight;  // v2 cpu.weight
  std::optional<std::int64_t> cpu_quota_us, cpu_period_us;
  std::optional<std::int64_t> pids_limit, pids_current;
};
result<cgroup_reading> read_cgroup(int pid);

// What a process's cgroup has used: memory as `docker stats` counts it (usage less inactive
// page cache) and CPU time. Cheap: a handful of small file reads, no Docker call.
struct cgroup_usage {
  std::string cgroup;  // the memory cgroup's path: callers check it names their container
  std::optional<std::int64_t> memory_bytes;
  std::optional<std::int64_t> cpu_ns;
};
result<cgroup_usage> read_usage(int pid);

// What a task asked for; zero: not asked.
struct requested_limits {
  std::int64_t memory_bytes = 0, memory_reservation_bytes = 0;
  std::int64_t cpu_shares = 0, nano_cpus = 0, pids_limit = 0;
};
// Every difference between what was asked and what the kernel enforces, one line each
// ("memory limit: asked 67108864, enforced 134217728"); empty when they agree.
std::vector<std::string> check_limits(const requested_limits& asked, const cgroup_reading& got);

// The machine's CPUs and memory, lowered to the calling process's own cgroup limits (a CPU
// quota, a memory limit) when it runs inside one: what the agent registers.
struct machine_resources {
  std::uint32_t cpus = 0;  // whole CPUs usable
  std::uint64_t memory_bytes = 0;
};
result<machine_resources> instance_resources();

}  // namespace berth::docker
