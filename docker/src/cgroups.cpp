// cgroup checks through libcgroup: what the kernel enforces on a process, v1 or v2, found from
// /proc/<pid>/cgroup; and the machine's resources as the agent's own cgroup limits them.
//
// The agent's own limits are read at startup from the files under the hierarchies' mount points
// (/proc/self/mountinfo), not through libcgroup: cgroup_init() fills tables in libcgroup's
// 2.4 MB of static data, 820 KiB of which then stay resident for the life of an idle berthd. It
// is called the first time a task's cgroup is checked instead.
#include <libcgroup.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "berth/docker.hpp"

namespace berth::docker {

namespace {

int init_result() {
  static std::once_flag once;
  static int rc = 0;
  std::call_once(once, [] { rc = cgroup_init(); });
  return rc;
}

// controller -> path, from /proc/<pid>/cgroup. v2's single line is under "".
std::optional<std::map<std::string, std::string>> cgroup_paths(const std::string& proc_file) {
  std::ifstream in(proc_file);
  if (!in) return std::nullopt;
  std::map<std::string, std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    const auto a = line.find(':');
    const auto b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    const std::string path = line.substr(b + 1);
    if (controllers.empty()) {
      out[""] = path;
      continue;
    }
    std::stringstream names(controllers);
    std::string name;
    while (std::getline(names, name, ',')) out[name] = path;
  }
  return out;
}

// Where each controller's hierarchy is mounted ("" for cgroup v2's) and which cgroup its mount
// shows as its root, from a mountinfo file.
struct hierarchy {
  std::string point, root;
};
std::map<std::string, hierarchy> mounted_hierarchies(const std::string& mountinfo) {
  std::map<std::string, hierarchy> out;
  std::ifstream in(mountinfo);
  std::string line;
  while (std::getline(in, line)) {
    // id parent major:minor root point options [optional...] - fstype source super-options
    std::stringstream f(line);
    std::string id, parent, dev, root, point, word;
    f >> id >> parent >> dev >> root >> point;
    while (f >> word && word != "-") {
    }
    std::string fstype, source, options;
    f >> fstype >> source >> options;
    if (fstype == "cgroup2") {
      out.try_emplace("", hierarchy{point, root});
    } else if (fstype == "cgroup") {
      std::stringstream opts(options);
      while (std::getline(opts, word, ',')) out.try_emplace(word, hierarchy{point, root});
    }
  }
  return out;
}

// One file of a controller's cgroup, read from the hierarchy's mount.
std::optional<std::string> read_mounted(const std::map<std::string, hierarchy>& mounts,
                                        const std::string& controller, const std::string& path,
                                        const std::string& file) {
  const auto it = mounts.find(controller);
  if (it == mounts.end()) return std::nullopt;
  const std::string& root = it->second.root;
  std::string rel = path;
  if (root != "/") {
    if (!path.starts_with(root)) return std::nullopt;  // outside what this mount shows
    rel = path.substr(root.size());
  }
  std::ifstream in(it->second.point + (rel.empty() || rel == "/" ? "" : rel) + "/" + file);
  if (!in) return std::nullopt;
  std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// One file of a controller's cgroup, read through libcgroup.
std::optional<std::string> read_value(const std::string& controller, const std::string& path,
                                      const std::string& file) {
  void* handle = nullptr;
  char buffer[4096];
  std::string name = file;
  int rc = cgroup_read_value_begin(controller.c_str(), path.c_str(), name.data(), &handle, buffer,
                                   sizeof buffer);
  if (rc != 0) {
    if (handle != nullptr) cgroup_read_value_end(&handle);
    return std::nullopt;
  }
  std::string out = buffer;
  while (cgroup_read_value_next(&handle, buffer, sizeof buffer) == 0) out += buffer;
  cgroup_read_value_end(&handle);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// A limit: "max" and v1's "no limit" values (≥ 2^62) read as nullopt.
std::optional<std::int64_t> limit_of(const std::optional<std::string>& v) {
  if (!v || *v == "max") return std::nullopt;
  std::int64_t x = 0;
  const auto r = std::from_chars(v->data(), v->data() + v->size(), x);
  if (r.ec != std::errc{}) return std::nullopt;
  if (x >= (std::int64_t{1} << 62)) return std::nullopt;
  return x;
}
std::optional<std::int64_t> number_of(const std::optional<std::string>& v) {
  if (!v) return std::nullopt;
  std::int64_t x = 0;
  const auto r = std::from_chars(v->data(), v->data() + v->size(), x);
  if (r.ec != std::errc{}) return std::nullopt;
  return x;
}

// runc's mappings of CPU shares [2, 262144] to cgroup v2's weight [1, 10000]: linear up to
// runc 1.1, logarithmic from 1.2. Either is what the kernel was asked for.
std::int64_t shares_to_weight_linear(std::int64_t shares) {
  if (shares == 0) return 0;
  return 1 + ((shares - 2) * 9999) / 262142;
}
std::int64_t shares_to_weight_log(std::int64_t shares) {
  if (shares <= 2) return 1;
  if (shares >= 262144) return 10000;
  const double l = std::log2(static_cast<double>(shares));
  const double exponent = (l * l + 125 * l) / 612.0 - 7.0 / 34.0;
  return static_cast<std::int64_t>(std::ceil(std::pow(10, exponent)));
}

result<cgroup_reading> read_paths(const std::map<std::string, std::string>& paths) {
  if (const int rc = init_result(); rc != 0) {
    return tl::unexpected(
        error{errc::cgroup, std::string("libcgroup could not initialise: ") + cgroup_strerror(rc)});
  }
  cgroup_reading r;
  if (paths.contains("memory")) {
    r.version = 1;
    const std::string& mem = paths.at("memory");
    r.memory_path = mem;
    r.memory_limit = limit_of(read_value("memory", mem, "memory.limit_in_bytes"));
    r.memory_soft_limit = limit_of(read_value("memory", mem, "memory.soft_limit_in_bytes"));
    r.memory_usage = number_of(read_value("memory", mem, "memory.usage_in_bytes"));
    if (paths.contains("cpu")) {
      const std::string& cpu = paths.at("cpu");
      r.cpu_shares = number_of(read_value("cpu", cpu, "cpu.shares"));
      const auto quota = number_of(read_value("cpu", cpu, "cpu.cfs_quota_us"));
      if (quota && *quota > 0) r.cpu_quota_us = quota;
      r.cpu_period_us = number_of(read_value("cpu", cpu, "cpu.cfs_period_us"));
    }
    if (paths.contains("pids")) {
      const std::string& pids = paths.at("pids");
      r.pids_limit = limit_of(read_value("pids", pids, "pids.max"));
      r.pids_current = number_of(read_value("pids", pids, "pids.current"));
    }
  } else if (paths.contains("")) {
    r.version = 2;
    const std::string& p = paths.at("");
    r.memory_path = p;
    r.memory_limit = limit_of(read_value("memory", p, "memory.max"));
    r.memory_soft_limit = limit_of(read_value("memory", p, "memory.low"));
    if (r.memory_soft_limit == 0) r.memory_soft_limit.reset();
    r.memory_usage = number_of(read_value("memory", p, "memory.current"));
    r.cpu_weight = number_of(read_value("cpu", p, "cpu.weight"));
    if (const auto max = read_value("cpu", p, "cpu.max")) {
      std::stringstream in(*max);
      std::string quota, period;
      in >> quota >> period;
      if (quota != "max") r.cpu_quota_us = number_of(quota);
      r.cpu_period_us = number_of(period);
    }
    r.pids_limit = limit_of(read_value("pids", p, "pids.max"));
    r.pids_current = number_of(read_value("pids", p, "pids.current"));
  } else {
    return tl::unexpected(error{errc::cgroup, "no memory controller and no cgroup v2 path"});
  }
  if (!r.memory_usage) {
    return tl::unexpected(error{errc::cgroup, "cannot read the memory cgroup at " + r.memory_path});
  }
  return r;
}

}  // namespace

// A live process's cgroup paths by controller.
result<std::map<std::string, std::string>> paths_of(int pid) {
  if (pid <= 0)
    return tl::unexpected(error{errc::cgroup, "no process (pid " + std::to_string(pid) + ")"});
  auto paths = cgroup_paths("/proc/" + std::to_string(pid) + "/cgroup");
  if (!paths) {
    return tl::unexpected(
        error{errc::cgroup, "cannot read /proc/" + std::to_string(pid) + "/cgroup"});
  }
  return std::move(*paths);
}

result<cgroup_reading> read_cgroup(int pid) {
  auto paths = paths_of(pid);
  if (!paths) return tl::unexpected(paths.error());
  return read_paths(*paths);
}

result<cgroup_usage> read_usage(int pid) {
  const auto paths = paths_of(pid);
  if (!paths) return tl::unexpected(paths.error());
  if (const int rc = init_result(); rc != 0) {
    return tl::unexpected(
        error{errc::cgroup, std::string("libcgroup could not initialise: ") + cgroup_strerror(rc)});
  }
  // One counter of a memory.stat text.
  const auto stat = [](const std::optional<std::string>& text, const std::string& key) {
    std::optional<std::int64_t> out;
    if (!text) return out;
    std::stringstream in(*text);
    std::string k;
    std::int64_t v = 0;
    while (in >> k >> v) {
      if (k == key) out = v;
    }
    return out;
  };
  cgroup_usage u;
  std::optional<std::int64_t> inactive;
  if (paths->contains("memory")) {
    const std::string& mem = paths->at("memory");
    u.cgroup = mem;
    u.memory_bytes = number_of(read_value("memory", mem, "memory.usage_in_bytes"));
    inactive = stat(read_value("memory", mem, "memory.stat"), "total_inactive_file");
    const std::string cpu = paths->contains("cpuacct") ? paths->at("cpuacct") : mem;
    u.cpu_ns = number_of(read_value("cpuacct", cpu, "cpuacct.usage"));
  } else if (paths->contains("")) {
    const std::string& p = paths->at("");
    u.cgroup = p;
    u.memory_bytes = number_of(read_value("memory", p, "memory.current"));
    inactive = stat(read_value("memory", p, "memory.stat"), "inactive_file");
    if (auto usec = stat(read_value("cpu", p, "cpu.stat"), "usage_usec")) u.cpu_ns = *usec * 1000;
  } else {
    return tl::unexpected(error{errc::cgroup, "no memory controller and no cgroup v2 path"});
  }
  if (u.memory_bytes && inactive && *inactive < *u.memory_bytes) *u.memory_bytes -= *inactive;
  return u;
}

std::vector<std::string> check_limits(const requested_limits& asked, const cgroup_reading& got) {
  std::vector<std::string> out;
  const auto differ = [&](const char* what, std::int64_t want, std::optional<std::int64_t> have) {
    if (have == want) return;
    out.push_back(std::string(what) + ": asked " + std::to_string(want) + ", enforced " +
                  (have ? std::to_string(*have) : std::string("none")));
  };
  if (asked.memory_bytes > 0) differ("memory limit", asked.memory_bytes, got.memory_limit);
  if (asked.memory_reservation_bytes > 0) {
    differ("memory reservation", asked.memory_reservation_bytes, got.memory_soft_limit);
  }
  if (asked.cpu_shares > 0) {
    if (got.version == 2) {
      const std::int64_t linear = shares_to_weight_linear(asked.cpu_shares);
      const std::int64_t log = shares_to_weight_log(asked.cpu_shares);
      if (got.cpu_weight != linear && got.cpu_weight != log) {
        differ("cpu weight (from shares)", linear, got.cpu_weight);
      }
    } else {
      differ("cpu shares", asked.cpu_shares, got.cpu_shares);
    }
  }
  if (asked.nano_cpus > 0) {
    // Docker sets quota = nano * period / 1e9, truncated: compare in the kernel's terms.
    if (!got.cpu_quota_us || !got.cpu_period_us) {
      differ("cpu quota (us)", asked.nano_cpus / 10'000, std::nullopt);
    } else {
      differ("cpu quota (us)", asked.nano_cpus * *got.cpu_period_us / 1'000'000'000,
             got.cpu_quota_us);
    }
  }
  if (asked.pids_limit > 0) differ("pids limit", asked.pids_limit, got.pids_limit);
  return out;
}

namespace {
// cgroup v2 alone: /proc/<pid>/cgroup has only its "0::" line.
bool v2_only(const std::map<std::string, std::string>& paths) {
  return paths.size() == 1 && paths.contains("");
}
}  // namespace

result<machine_resources> instance_resources() {
  machine_resources m;
  cpu_set_t set;
  CPU_ZERO(&set);
  m.cpus = sched_getaffinity(0, sizeof set, &set) == 0
               ? static_cast<std::uint32_t>(CPU_COUNT(&set))
               : std::max(1u, std::thread::hardware_concurrency());
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return tl::unexpected(error{errc::cgroup, "sysconf failed"});
  m.memory_bytes = static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page);
  const auto paths = cgroup_paths("/proc/self/cgroup");
  const auto mounts = mounted_hierarchies("/proc/self/mountinfo");
  if (!paths || mounts.empty()) return m;  // no cgroups: the machine is all there is
  const auto read_value = [&](const std::string& controller, const std::string& path,
                              const std::string& file) {
    return read_mounted(mounts, v2_only(*paths) ? "" : controller, path, file);
  };
  // A limit on any ancestor binds too: walk up the path.
  const auto lower = [&](const std::string& controller, const std::string& path, auto&& fn) {
    std::string p = path;
    for (;;) {
      fn(p);
      if (p.empty() || p == "/") break;
      const auto slash = p.rfind('/');
      p = slash == 0 || slash == std::string::npos ? "/" : p.substr(0, slash);
    }
    (void)controller;
  };
  const bool v1 = paths->contains("memory");
  const std::string mem = v1 ? paths->at("memory") : (paths->contains("") ? paths->at("") : "");
  const std::string cpu = v1 ? (paths->contains("cpu") ? paths->at("cpu") : "") : mem;
  lower("memory", mem, [&](const std::string& p) {
    const auto l = limit_of(read_value("memory", p, v1 ? "memory.limit_in_bytes" : "memory.max"));
    if (l && *l > 0) m.memory_bytes = std::min(m.memory_bytes, static_cast<std::uint64_t>(*l));
  });
  if (!cpu.empty()) {
    lower("cpu", cpu, [&](const std::string& p) {
      std::optional<std::int64_t> quota, period;
      if (v1) {
        quota = number_of(read_value("cpu", p, "cpu.cfs_quota_us"));
        period = number_of(read_value("cpu", p, "cpu.cfs_period_us"));
      } else if (const auto max = read_value("cpu", p, "cpu.max")) {
        std::stringstream in(*max);
        std::string q, per;
        in >> q >> per;
        if (q != "max") quota = number_of(q);
        period = number_of(per);
      }
      if (quota && period && *quota > 0 && *period > 0) {
        const auto whole =
            static_cast<std::uint32_t>(std::max<std::int64_t>(1, (*quota + *period - 1) / *period));
        m.cpus = std::min(m.cpus, whole);
      }
    });
  }
  return m;
}

}  // namespace berth::docker
