// Task definitions: ECS's checks on a registration, revisions per family, and lookups.
#include "task_definitions.hpp"

#include <algorithm>
#include <map>
#include <regex>
#include <set>

#include "berth/agent/util.hpp"
#include "berth/placement.hpp"

namespace berth::agent::control {

namespace pl = berth::placement;

tl::expected<void, api_error> check_objects(const json& j, const std::string& what,
                                            std::initializer_list<const char*> strings,
                                            std::initializer_list<const char*> integers,
                                            std::initializer_list<const char*> required,
                                            std::initializer_list<const char*> booleans) {
  if (j.is_null()) return {};
  if (!j.is_array()) return tl::unexpected(serialization("Expected '" + what + "' to be a list"));
  for (const auto& e : j) {
    if (!e.is_object()) {
      return tl::unexpected(serialization("Expected every item of '" + what + "' to be an object"));
    }
    for (const char* k : required) {
      if (!e.contains(k)) return tl::unexpected(invalid(what + " entries need '" + k + "'"));
    }
    for (const char* k : strings) {
      if (e.contains(k) && !e[k].is_string()) {
        return tl::unexpected(serialization("Expected '" + what + "." + k + "' to be a string"));
      }
    }
    for (const char* k : integers) {
      if (e.contains(k) && !e[k].is_number_integer()) {
        return tl::unexpected(serialization("Expected '" + what + "." + k + "' to be an integer"));
      }
    }
    for (const char* k : booleans) {
      if (e.contains(k) && !e[k].is_boolean()) {
        return tl::unexpected(serialization("Expected '" + what + "." + k + "' to be a boolean"));
      }
    }
  }
  return {};
}

namespace {

tl::expected<void, api_error> check_strings(const json& j, const std::string& what) {
  if (j.is_null()) return {};
  if (!j.is_array() ||
      !std::all_of(j.begin(), j.end(), [](const json& x) { return x.is_string(); })) {
    return tl::unexpected(serialization("Expected '" + what + "' to be a list of strings"));
  }
  return {};
}

// Integer members within [0, most].
tl::expected<void, api_error> check_range(const json& j, const std::string& what,
                                          std::initializer_list<const char*> keys,
                                          std::int64_t most) {
  for (const char* k : keys) {
    const json& v = member(j, k);
    if (v.is_null()) continue;
    if (!v.is_number_integer()) {
      return tl::unexpected(serialization("Expected '" + std::string(k) + "' to be an integer"));
    }
    if (v.get<std::int64_t>() < 0 || v.get<std::int64_t>() > most) {
      return tl::unexpected(invalid(std::string(k) + " of " + what + " must be between 0 and " +
                                    std::to_string(most)));
    }
  }
  return {};
}

// RunTask's overrides: only what the model allows, typed as it says.
}  // namespace

tl::expected<void, api_error> check_overrides(const json& o) {
  if (!o.is_object()) return tl::unexpected(serialization("Expected 'overrides' to be an object"));
  for (const char* k : {"cpu", "memory"}) {
    if (o.contains(k) && !o[k].is_string()) {
      return tl::unexpected(
          serialization(std::string("Expected 'overrides.") + k + "' to be a string"));
    }
    if (o.contains(k) && !units_of(o[k], std::string(k) == "cpu")) {
      return tl::unexpected(invalid(std::string("overrides.") + k + " is not a valid amount"));
    }
  }
  // ECS's limit, JSON punctuation included.
  if (const auto size = o.dump().size(); size > 8192) {
    return tl::unexpected(invalid("Container Overrides length must be at most 8192 (it is " +
                                  std::to_string(size) + ")"));
  }
  const json& list = member(o, "containerOverrides");
  if (auto r = check_objects(list, "containerOverrides", {"name"}, {}, {"name"}); !r) return r;
  for (const auto& c : list.is_array() ? list : json::array()) {
    if (auto r =
            check_range(c, "a container override", {"cpu", "memory", "memoryReservation"}, 1 << 24);
        !r) {
      return r;
    }
    // Docker reads a memory of 0 as "no limit": an override cannot lift the limit that way.
    for (const char* k : {"memory", "memoryReservation"}) {
      const json& v = member(c, k);
      if (v.is_number_integer() && v.get<std::int64_t>() < 6) {
        return tl::unexpected(
            client(std::string("Invalid '") + k + "' in a container override: at least 6 MiB."));
      }
    }
    if (auto r = check_strings(member(c, "command"), "containerOverrides.command"); !r) return r;
    if (auto r = check_objects(member(c, "environment"), "containerOverrides.environment",
                               {"name", "value"}, {}, {"name"});
        !r) {
      return r;
    }
  }
  return {};
}

std::string td_key(const std::string& family, std::uint64_t revision) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%010llu", static_cast<unsigned long long>(revision));
  return family + ":" + buf;
}

// The request's tags, checked: at most 50, keys of 1-128 characters, values of at most 256.
tl::expected<json, api_error> tags_of(const json& req) {
  BERTH_TRY(list, reader{req}.list("tags"));
  json out = json::array();
  if (list == nullptr) return out;
  if (list->size() > 50) return tl::unexpected(invalid("at most 50 tags"));
  for (const auto& t : *list) {
    if (!t.is_object() || !t.contains("key") || !t["key"].is_string() ||
        t["key"].get<std::string>().empty() || t["key"].get<std::string>().size() > 128) {
      return tl::unexpected(invalid("every tag needs a 'key' of 1-128 characters"));
    }
    if (t.contains("value") &&
        (!t["value"].is_string() || t["value"].get<std::string>().size() > 256)) {
      return tl::unexpected(invalid("tag values are strings of at most 256 characters"));
    }
    out.push_back({{"key", t["key"]}, {"value", t.value("value", std::string())}});
  }
  return out;
}

namespace {

// linuxParameters: what Berth applies (capabilities, devices, initProcessEnabled,
// sharedMemorySize, tmpfs), checked as ECS checks it; any other member is refused rather than
// stored and silently not applied.
tl::expected<void, api_error> check_linux_parameters(const json& lp, const std::string& name) {
  if (lp.is_null()) return {};
  if (!lp.is_object()) {
    return tl::unexpected(serialization("Expected 'linuxParameters' to be an object"));
  }
  const auto bad = [&](const std::string& m) {
    return tl::unexpected(client("Invalid setting for container '" + name + "'. " + m));
  };
  for (const auto& [k, v] : lp.items()) {
    if (k != "capabilities" && k != "devices" && k != "initProcessEnabled" &&
        k != "sharedMemorySize" && k != "tmpfs") {
      return bad("linuxParameters." + k + " is not supported by Berth.");
    }
  }
  reader r{lp};
  if (const json& caps = member(lp, "capabilities"); !caps.is_null()) {
    if (!caps.is_object()) {
      return tl::unexpected(
          serialization("Expected 'linuxParameters.capabilities' to be an object"));
    }
    // KernelCapabilities' valid values in ECS's model (botocore's service-2.json).
    static const std::set<std::string> known = {
        "ALL",        "AUDIT_CONTROL",   "AUDIT_WRITE",      "BLOCK_SUSPEND",
        "CHOWN",      "DAC_OVERRIDE",    "DAC_READ_SEARCH",  "FOWNER",
        "FSETID",     "IPC_LOCK",        "IPC_OWNER",        "KILL",
        "LEASE",      "LINUX_IMMUTABLE", "MAC_ADMIN",        "MAC_OVERRIDE",
        "MKNOD",      "NET_ADMIN",       "NET_BIND_SERVICE", "NET_BROADCAST",
        "NET_RAW",    "SETFCAP",         "SETGID",           "SETPCAP",
        "SETUID",     "SYS_ADMIN",       "SYS_BOOT",         "SYS_CHROOT",
        "SYS_MODULE", "SYS_NICE",        "SYS_PACCT",        "SYS_PTRACE",
        "SYS_RAWIO",  "SYS_RESOURCE",    "SYS_TIME",         "SYS_TTY_CONFIG",
        "SYSLOG",     "WAKE_ALARM"};
    for (const char* k : {"add", "drop"}) {
      const std::string what = std::string("linuxParameters.capabilities.") + k;
      if (auto ok = check_strings(member(caps, k), what); !ok) return tl::unexpected(ok.error());
      for (const auto& cap : member(caps, k).is_array() ? caps[k] : json::array()) {
        if (!known.contains(cap.get<std::string>())) {
          return bad(what + " holds '" + cap.get<std::string>() +
                     "', which is not a valid capability. Valid values are as ECS names them, "
                     "without CAP_: ALL, CHOWN, NET_ADMIN, SYS_ADMIN, SYS_PTRACE, ...");
        }
      }
    }
  }
  BERTH_TRY(devices, r.list("devices"));
  if (devices != nullptr) {
    if (auto ok = check_objects(*devices, "linuxParameters.devices", {"hostPath", "containerPath"},
                                {}, {"hostPath"});
        !ok) {
      return tl::unexpected(ok.error());
    }
    for (const auto& d : *devices) {
      for (const char* k : {"hostPath", "containerPath"}) {
        if (d.contains(k) && !d[k].get<std::string>().starts_with("/")) {
          return bad(std::string("linuxParameters.devices ") + k + " '" + d[k].get<std::string>() +
                     "' must be an absolute path.");
        }
      }
      const json& perms = member(d, "permissions");
      if (auto ok = check_strings(perms, "linuxParameters.devices.permissions"); !ok) {
        return tl::unexpected(ok.error());
      }
      for (const auto& p : perms.is_array() ? perms : json::array()) {
        if (p != "read" && p != "write" && p != "mknod") {
          return bad("linuxParameters.devices permissions '" + p.get<std::string>() +
                     "' is not valid. Valid values: read, write, mknod.");
        }
      }
    }
  }
  if (lp.contains("initProcessEnabled") && !lp["initProcessEnabled"].is_null() &&
      !lp["initProcessEnabled"].is_boolean()) {
    return tl::unexpected(
        serialization("Expected 'linuxParameters.initProcessEnabled' to be a boolean"));
  }
  BERTH_TRY(shm, r.integer("sharedMemorySize"));
  if (shm && (*shm < 1 || *shm > (1 << 24))) {
    return bad("linuxParameters.sharedMemorySize must be 1 to 16777216 MiB.");
  }
  BERTH_TRY(tmpfs, r.list("tmpfs"));
  if (tmpfs != nullptr) {
    if (auto ok = check_objects(*tmpfs, "linuxParameters.tmpfs", {"containerPath"}, {"size"},
                                {"containerPath", "size"});
        !ok) {
      return tl::unexpected(ok.error());
    }
    // Tmpfs' mountOptions in ECS's model; those taking a value (mode=1777) by their name.
    static const std::set<std::string> options = {
        "defaults",      "ro",         "rw",          "suid",
        "nosuid",        "dev",        "nodev",       "exec",
        "noexec",        "sync",       "async",       "dirsync",
        "remount",       "mand",       "nomand",      "atime",
        "noatime",       "diratime",   "nodiratime",  "bind",
        "rbind",         "unbindable", "runbindable", "private",
        "rprivate",      "shared",     "rshared",     "slave",
        "rslave",        "relatime",   "norelatime",  "strictatime",
        "nostrictatime", "mode",       "uid",         "gid",
        "nr_inodes",     "nr_blocks",  "mpol"};
    for (const auto& t : *tmpfs) {
      const std::string path = t["containerPath"];
      if (!path.starts_with("/")) {
        return bad("linuxParameters.tmpfs containerPath '" + path + "' must be an absolute path.");
      }
      if (t["size"].get<std::int64_t>() < 1) {
        return bad("linuxParameters.tmpfs size of '" + path + "' must be at least 1 MiB.");
      }
      const json& opts = member(t, "mountOptions");
      if (auto ok = check_strings(opts, "linuxParameters.tmpfs.mountOptions"); !ok) {
        return tl::unexpected(ok.error());
      }
      for (const auto& o : opts.is_array() ? opts : json::array()) {
        const std::string opt = o;
        if (!options.contains(opt.substr(0, opt.find('='))) || opt.find(',') != std::string::npos) {
          return bad("linuxParameters.tmpfs mountOptions '" + opt + "' is not valid.");
        }
      }
    }
  }
  return {};
}

}  // namespace

task_definitions::task_definitions(store* s, std::string arn_prefix)
    : store_(s), arn_prefix_(std::move(arn_prefix)) {}

tl::expected<void, api_error> task_definitions::check_container(const json& c, bool task_memory) {
  if (!c.is_object()) return tl::unexpected(serialization("containerDefinitions holds objects"));
  reader r{c};
  BERTH_TRY(name, r.required_str("name"));
  static const std::regex name_re("^[a-zA-Z0-9_-]{1,255}$");
  if (!std::regex_match(name, name_re)) {
    return tl::unexpected(invalid("Container name '" + name +
                                  "' may hold only letters, numbers, hyphens and underscores"));
  }
  BERTH_TRY(image, r.required_str("image"));
  // ECS: up to 255 letters, digits, hyphens, underscores, colons, periods, slashes and number
  // signs (and '@' for a digest).
  if (image.empty() || image.size() > 255 || !std::all_of(image.begin(), image.end(), [](char ch) {
        return std::isalnum(static_cast<unsigned char>(ch)) != 0 ||
               std::string_view("-_:./#@").find(ch) != std::string_view::npos;
      })) {
    return tl::unexpected(client("Invalid 'image' for container '" + name +
                                 "': up to 255 letters, numbers, hyphens, underscores, colons, "
                                 "periods, forward slashes and number signs are allowed."));
  }
  if (auto ok = check_range(c, "container '" + name + "'", {"cpu", "memory", "memoryReservation"},
                            1 << 24);
      !ok) {
    return tl::unexpected(ok.error());
  }
  if (auto ok = check_range(c, "container '" + name + "'", {"stopTimeout", "startTimeout"}, 3600);
      !ok) {
    return tl::unexpected(ok.error());
  }
  for (const char* k : {"workingDirectory", "user", "hostname"}) {
    BERTH_TRY(v, r.str(k));
    (void)v;
  }
  const auto shape = [](tl::expected<void, api_error> ok) { return ok; };
  for (const auto& ok :
       {shape(check_objects(member(c, "environment"), "environment", {"name", "value"}, {},
                            {"name"})),
        shape(check_objects(member(c, "mountPoints"), "mountPoints",
                            {"sourceVolume", "containerPath"}, {},
                            {"sourceVolume", "containerPath"}, {"readOnly"})),
        shape(check_objects(member(c, "ulimits"), "ulimits", {"name"}, {"softLimit", "hardLimit"},
                            {"name", "softLimit", "hardLimit"})),
        shape(check_objects(member(c, "dependsOn"), "dependsOn", {"containerName", "condition"}, {},
                            {"containerName", "condition"}))}) {
    if (!ok) return tl::unexpected(ok.error());
  }
  for (const auto& u : member(c, "ulimits").is_array() ? member(c, "ulimits") : json::array()) {
    const json& soft = member(u, "softLimit");
    const json& hard = member(u, "hardLimit");
    if (!soft.is_number_integer() || !hard.is_number_integer() || soft.get<std::int64_t>() < 0 ||
        hard.get<std::int64_t>() < 0) {
      return tl::unexpected(client("Invalid ulimit for container '" + name +
                                   "': softLimit and hardLimit must be 0 or more."));
    }
    if (soft.get<std::int64_t>() > hard.get<std::int64_t>()) {
      return tl::unexpected(client("Invalid ulimit for container '" + name +
                                   "': softLimit must not exceed hardLimit."));
    }
  }
  if (const json& labels = member(c, "dockerLabels"); !labels.is_null()) {
    if (!labels.is_object() ||
        !std::all_of(labels.begin(), labels.end(), [](const json& v) { return v.is_string(); })) {
      return tl::unexpected(serialization("Expected 'dockerLabels' to map strings to strings"));
    }
  }
  if (const json& h = member(c, "healthCheck"); !h.is_null()) {
    if (!h.is_object())
      return tl::unexpected(serialization("Expected 'healthCheck' to be an object"));
    if (auto ok = check_strings(member(h, "command"), "healthCheck.command"); !ok) {
      return tl::unexpected(ok.error());
    }
    if (member(h, "command").empty()) return tl::unexpected(invalid("healthCheck needs a command"));
    // ECS's bounds: Docker's zero means "its default", and no retries means never healthy.
    struct bound {
      const char* key;
      std::int64_t lo, hi;
    };
    for (const bound& b : {bound{"interval", 5, 300}, bound{"timeout", 2, 120},
                           bound{"retries", 1, 10}, bound{"startPeriod", 0, 300}}) {
      const json& v = member(h, b.key);
      if (v.is_null()) continue;
      if (!v.is_number_integer()) {
        return tl::unexpected(
            serialization("Expected 'healthCheck." + std::string(b.key) + "' to be an integer"));
      }
      if (v.get<std::int64_t>() < b.lo || v.get<std::int64_t>() > b.hi) {
        return tl::unexpected(client("Invalid 'healthCheck." + std::string(b.key) +
                                     "' setting for container '" + name + "'. It must be between " +
                                     std::to_string(b.lo) + " and " + std::to_string(b.hi) + "."));
      }
    }
  }
  for (const char* k : {"cpu"}) {
    BERTH_TRY(v, r.integer(k));
    if (v && *v < 0)
      return tl::unexpected(
          invalid(std::string(k) + " of container '" + name + "' must not be negative"));
  }
  BERTH_TRY(mem, r.integer("memory"));
  BERTH_TRY(res, r.integer("memoryReservation"));
  if (!task_memory && !mem && !res) {
    return tl::unexpected(
        client("Invalid setting for container '" + name +
               "'. At least one of 'memory' or 'memoryReservation' must be specified."));
  }
  if (mem && res && *res > *mem) {
    return tl::unexpected(client("Invalid setting for container '" + name +
                                 "'. 'memoryReservation' must be less than or equal to 'memory'."));
  }
  if (mem && *mem < 6) {
    return tl::unexpected(client("Invalid setting for container '" + name +
                                 "'. The 'memory' must be at least 6 MiB."));
  }
  for (const char* k : {"essential", "readonlyRootFilesystem", "privileged"}) {
    if (c.contains(k) && !c[k].is_boolean()) {
      return tl::unexpected(serialization(std::string("Expected '") + k + "' to be a boolean"));
    }
  }
  for (const char* k : {"entryPoint", "command"}) {
    BERTH_TRY(v, r.strings(k));
    (void)v;
  }
  BERTH_TRY(pm, r.list("portMappings"));
  if (pm != nullptr) {
    for (const auto& p : *pm) {
      if (!p.is_object() || !p.contains("containerPort") ||
          !p["containerPort"].is_number_unsigned() ||
          p["containerPort"].get<std::uint64_t>() == 0 ||
          p["containerPort"].get<std::uint64_t>() > 65535) {
        return tl::unexpected(
            invalid("portMappings of container '" + name + "' need a containerPort of 1-65535"));
      }
      if (p.contains("hostPort") &&
          (!p["hostPort"].is_number_unsigned() || p["hostPort"].get<std::uint64_t>() > 65535)) {
        return tl::unexpected(invalid("hostPort of container '" + name + "' must be 0-65535"));
      }
      if (p.contains("protocol") && p["protocol"] != "tcp" && p["protocol"] != "udp") {
        return tl::unexpected(invalid("protocol must be tcp or udp"));
      }
    }
  }
  BERTH_TRY(env, r.list("environment"));
  if (env != nullptr) {
    for (const auto& e : *env) {
      if (!e.is_object() || !e.contains("name") || !e["name"].is_string()) {
        return tl::unexpected(invalid("environment entries need a 'name'"));
      }
    }
  }
  return check_linux_parameters(member(c, "linuxParameters"), name);
}

outcome task_definitions::register_task_definition(const json& req) {
  // ECS's limit on a task definition as sent.
  if (const auto size = req.dump().size(); size > 65536) {
    return tl::unexpected(client("Actual length: '" + std::to_string(size) +
                                 "'. Max allowed length is '65536' bytes."));
  }
  reader r{req};
  BERTH_TRY(family, r.required_str("family"));
  static const std::regex family_re("^[a-zA-Z0-9_-]{1,255}$");
  if (!std::regex_match(family, family_re)) {
    return tl::unexpected(invalid(
        "Family '" + family + "' may hold only letters, numbers, hyphens and underscores (1-255)"));
  }
  BERTH_TRY(containers, r.list("containerDefinitions"));
  if (containers == nullptr || containers->empty()) {
    return tl::unexpected(client("Container list cannot be empty."));
  }
  if (containers->size() > 10)
    return tl::unexpected(invalid("at most 10 containers per task definition"));
  BERTH_TRY(mode, r.str("networkMode"));
  const std::string network = mode.value_or("bridge");
  if (network != "bridge" && network != "host" && network != "none") {
    return tl::unexpected(
        invalid("networkMode '" + network + "' is not supported here (bridge, host or none)"));
  }
  std::optional<std::uint32_t> task_cpu, task_mem;
  if (req.contains("cpu") && !req["cpu"].is_null()) {
    task_cpu = units_of(req["cpu"], true);
    if (!task_cpu)
      return tl::unexpected(invalid("cpu must be CPU units or vCPUs, e.g. '256' or '0.25 vCPU'"));
  }
  if (req.contains("memory") && !req["memory"].is_null()) {
    task_mem = units_of(req["memory"], false);
    if (!task_mem) return tl::unexpected(invalid("memory must be MiB or GB, e.g. '512' or '1 GB'"));
  }
  std::set<std::string> names;
  bool essential = false;
  for (const auto& c : *containers) {
    if (auto ok = check_container(c, task_mem.has_value()); !ok) return tl::unexpected(ok.error());
    if (!names.insert(c["name"].get<std::string>()).second) {
      return tl::unexpected(
          client("Container names must be unique: '" + c["name"].get<std::string>() + "'"));
    }
    essential |= c.value("essential", true);
  }
  if (!essential)
    return tl::unexpected(client("Task definition must have at least one essential container."));
  for (const auto& c : *containers) {
    if (!c.contains("dependsOn")) continue;
    for (const auto& d : c["dependsOn"]) {
      if (!d.is_object() || !names.contains(d.value("containerName", std::string()))) {
        return tl::unexpected(client("dependsOn of '" + c["name"].get<std::string>() +
                                     "' names an unknown container"));
      }
      const std::string cond = d.value("condition", std::string());
      if (cond != "START" && cond != "COMPLETE" && cond != "SUCCESS" && cond != "HEALTHY") {
        return tl::unexpected(
            invalid("dependsOn condition must be START, COMPLETE, SUCCESS or HEALTHY"));
      }
    }
  }
  // dependsOn: no cycles, and HEALTHY only on a container with a health check.
  {
    std::map<std::string, const json*> by_name;
    for (const auto& c : *containers) by_name[c["name"]] = &c;
    for (const auto& c : *containers) {
      for (const auto& d : member(c, "dependsOn").is_array() ? c["dependsOn"] : json::array()) {
        if (d["condition"] == "HEALTHY" && !by_name[d["containerName"]]->contains("healthCheck")) {
          return tl::unexpected(client("dependsOn condition HEALTHY needs a healthCheck on '" +
                                       d["containerName"].get<std::string>() + "'"));
        }
      }
    }
    if (start_order(*containers).size() != containers->size()) {
      return tl::unexpected(client("dependsOn has a cycle"));
    }
  }
  // The task's namespaces. "task" shares the first container's with the others, as the ECS
  // agent shares its pause container's: that container must be up before and while they run.
  BERTH_TRY(pid_mode, r.str("pidMode"));
  BERTH_TRY(ipc_mode, r.str("ipcMode"));
  if (pid_mode && *pid_mode != "host" && *pid_mode != "task") {
    return tl::unexpected(
        client("Invalid pidMode value '" + *pid_mode + "'. Valid values: host, task."));
  }
  if (ipc_mode && *ipc_mode != "host" && *ipc_mode != "task" && *ipc_mode != "none") {
    return tl::unexpected(
        client("Invalid ipcMode value '" + *ipc_mode + "'. Valid values: host, task, none."));
  }
  if (pid_mode == "task" || ipc_mode == "task") {
    const json& first = (*containers)[0];
    if (!first.value("essential", true) || !member(first, "dependsOn").empty()) {
      return tl::unexpected(
          client("pidMode or ipcMode 'task': the task's containers share the namespace of its "
                 "first container, '" +
                 first["name"].get<std::string>() +
                 "', which must therefore be essential and depend on no other."));
    }
  }
  BERTH_TRY(compatibilities, r.strings("requiresCompatibilities"));
  for (const auto& c : compatibilities) {
    if (c != "EC2") {
      return tl::unexpected(
          client("Berth runs tasks on the EC2 launch type only: requiresCompatibilities " + c +
                 " is not supported."));
    }
  }
  BERTH_TRY(volumes, r.list("volumes"));
  if (volumes != nullptr) {
    if (auto ok = check_objects(*volumes, "volumes", {"name"}, {}, {"name"}); !ok) {
      return tl::unexpected(ok.error());
    }
    for (const auto& v : *volumes) {
      const json& host = member(v, "host");
      if (!host.is_null() &&
          (!host.is_object() || (host.contains("sourcePath") && !host["sourcePath"].is_string()))) {
        return tl::unexpected(serialization("Expected 'volumes.host.sourcePath' to be a string"));
      }
    }
  }
  BERTH_TRY(tags, tags_of(req));
  BERTH_TRY(constraints, r.list("placementConstraints"));
  if (constraints != nullptr) {
    if (auto ok = check_objects(*constraints, "placementConstraints", {"type", "expression"}, {},
                                {"type"});
        !ok) {
      return tl::unexpected(ok.error());
    }
    std::vector<pl::constraint> cons;
    for (const auto& c : *constraints) cons.push_back({c["type"], c.value("expression", "")});
    if (auto q = pl::compile({{}, "", cons, {}}); !q) {
      return tl::unexpected(invalid(q.error().message));
    }
  }
  auto rev = store_->next("taskdef:" + family);
  if (!rev) return tl::unexpected(server(rev.error().message));
  json td = {{"taskDefinitionArn", arn("task-definition/" + family + ":" + std::to_string(*rev))},
             {"family", family},
             {"revision", *rev},
             {"containerDefinitions", json::array()},
             {"networkMode", network},
             {"volumes", volumes != nullptr ? *volumes : json::array()},
             {"status", "ACTIVE"},
             {"requiresAttributes", json::array()},
             {"placementConstraints", constraints != nullptr ? *constraints : json::array()},
             {"compatibilities", {"EC2"}},
             {"registeredAt", now_seconds()},
             {"registeredBy", "berth"},
             {"tags", tags}};
  for (auto c : *containers) {
    if (!c.contains("essential")) c["essential"] = true;
    for (const char* k : {"portMappings", "environment", "mountPoints", "volumesFrom"}) {
      if (!c.contains(k)) c[k] = json::array();
    }
    if (!c.contains("cpu")) c["cpu"] = 0;
    if (network == "host" && c.contains("portMappings")) {
      for (auto& p : c["portMappings"]) p["hostPort"] = p["containerPort"];
    }
    for (auto& p : c["portMappings"]) {
      if (!p.contains("protocol")) p["protocol"] = "tcp";
      if (!p.contains("hostPort")) p["hostPort"] = 0;
    }
    td["containerDefinitions"].push_back(c);
  }
  if (task_cpu) td["cpu"] = std::to_string(*task_cpu);
  if (task_mem) td["memory"] = std::to_string(*task_mem);
  for (const char* k : {"taskRoleArn", "executionRoleArn"}) {
    if (req.contains(k)) td[k] = req[k];
  }
  if (pid_mode) td["pidMode"] = *pid_mode;
  if (ipc_mode) td["ipcMode"] = *ipc_mode;
  if (!compatibilities.empty()) td["requiresCompatibilities"] = compatibilities;
  if (auto w = store_->put("taskdef", td_key(family, *rev), td.dump()); !w) {
    return tl::unexpected(server(w.error().message));
  }
  json out_td = td;
  out_td.erase("tags");
  return json{{"taskDefinition", out_td}, {"tags", tags}};
}

// "family", "family:3" or an ARN; the family's latest ACTIVE revision when none is given.
tl::expected<state::task_definition, api_error> task_definitions::find_task_definition(
    const std::string& ref, bool active_only) {
  std::string fr = ref;
  if (ref.starts_with("arn:")) {
    const auto slash = ref.find("task-definition/");
    if (slash == std::string::npos)
      return tl::unexpected(client("Unable to describe task definition."));
    fr = ref.substr(slash + 16);
  }
  const auto colon = fr.rfind(':');
  if (colon != std::string::npos) {
    std::uint64_t rev = 0;
    try {
      rev = std::stoull(fr.substr(colon + 1));
    } catch (...) {
      return tl::unexpected(client("Unable to describe task definition."));
    }
    const std::string key = td_key(fr.substr(0, colon), rev);
    auto doc = store_->get("taskdef", key);
    if (!doc) return tl::unexpected(server(doc.error().message));
    if (!*doc) return tl::unexpected(client("Unable to describe task definition."));
    auto td = state::parse<state::task_definition>(**doc, key);
    if (!td) return tl::unexpected(server(td.error().detail));
    if (active_only && td->def.status != "ACTIVE") {
      return tl::unexpected(client("TaskDefinition is inactive"));
    }
    return std::move(*td);
  }
  auto all = store_->list("taskdef", fr + ":");
  if (!all) return tl::unexpected(server(all.error().message));
  for (auto it = all->rbegin(); it != all->rend(); ++it) {
    auto td = state::parse<state::task_definition>(it->second, it->first);
    if (!td) return tl::unexpected(server(td.error().detail));
    if (td->def.status == "ACTIVE") return std::move(*td);
  }
  return tl::unexpected(client("Unable to describe task definition."));
}

outcome task_definitions::describe_task_definition(const json& req) {
  BERTH_TRY(ref, reader{req}.required_str("taskDefinition"));
  BERTH_TRY(td, find_task_definition(ref, false));
  json out = {{"taskDefinition", state::response(td)}};
  BERTH_TRY(include, reader{req}.strings("include"));
  if (std::find(include.begin(), include.end(), "TAGS") != include.end()) {
    out["tags"] = state::to_json(td.tags);
  }
  return out;
}

outcome task_definitions::list_task_definitions(const json& req) {
  reader r{req};
  BERTH_TRY(prefix, r.str("familyPrefix"));
  BERTH_TRY(status, r.str("status"));
  BERTH_TRY(sort, r.str("sort"));
  if (status && *status != "ACTIVE" && *status != "INACTIVE") {
    return tl::unexpected(invalid("status must be ACTIVE or INACTIVE"));
  }
  auto all = store_->list("taskdef", prefix.value_or(""));
  if (!all) return tl::unexpected(server(all.error().message));
  std::vector<std::string> arns;
  for (const auto& [k, v] : *all) {
    const json td = json::parse(v);
    if (prefix && td["family"].get<std::string>().rfind(*prefix, 0) != 0) continue;
    if (td["status"] == status.value_or("ACTIVE")) arns.push_back(td["taskDefinitionArn"]);
  }
  if (sort == "DESC") std::reverse(arns.begin(), arns.end());
  BERTH_TRY(range, page(r, arns.size(), 100));
  json out = {{"taskDefinitionArns", json::array()}};
  for (std::size_t i = range.first; i < range.second; ++i)
    out["taskDefinitionArns"].push_back(arns[i]);
  add_token(out, range.second, arns.size());
  return out;
}

outcome task_definitions::list_task_definition_families(const json& req) {
  reader r{req};
  BERTH_TRY(prefix, r.str("familyPrefix"));
  BERTH_TRY(status, r.str("status"));
  const std::string want = status.value_or("ACTIVE");
  if (want != "ACTIVE" && want != "INACTIVE" && want != "ALL") {
    return tl::unexpected(invalid("status must be ACTIVE, INACTIVE or ALL"));
  }
  auto all = store_->list("taskdef", prefix.value_or(""));
  if (!all) return tl::unexpected(server(all.error().message));
  std::map<std::string, bool> families;  // family -> has an ACTIVE revision
  for (const auto& [k, v] : *all) {
    const json td = json::parse(v);
    families[td["family"]] |= td["status"] == "ACTIVE";
  }
  std::vector<std::string> names;
  for (const auto& [f, active] : families) {
    if (want == "ALL" || (want == "ACTIVE") == active) names.push_back(f);
  }
  BERTH_TRY(range, page(r, names.size(), 100));
  json out = {{"families", json::array()}};
  for (std::size_t i = range.first; i < range.second; ++i) out["families"].push_back(names[i]);
  add_token(out, range.second, names.size());
  return out;
}

outcome task_definitions::deregister_task_definition(const json& req) {
  BERTH_TRY(ref, reader{req}.required_str("taskDefinition"));
  if (ref.find(':') == std::string::npos ||
      (ref.starts_with("arn:") && ref.rfind(':') < ref.find("task-definition/"))) {
    return tl::unexpected(
        client("The specified task definition does not exist or is not a revision: give "
               "family:revision or an ARN."));
  }
  BERTH_TRY(td, find_task_definition(ref, false));
  td.def.status = "INACTIVE";
  td.def.deregistered_at = now_seconds();
  const std::string key = td_key(*td.def.family, static_cast<std::uint64_t>(*td.def.revision));
  if (auto w = store_->put("taskdef", key, state::to_json(td).dump()); !w) {
    return tl::unexpected(server(w.error().message));
  }
  return json{{"taskDefinition", state::response(td)}};
}

}  // namespace berth::agent::control
