// Task definitions: ECS's checks on a registration, revisions per family, and lookups. The
// request arrives typed by ECS's model (its members' JSON types already checked); what is left
// here is what the model cannot say: ranges, names, paths, and what Berth can apply.
#include "task_definitions.hpp"

#include <algorithm>
#include <map>
#include <regex>
#include <set>

#include "berth/agent/util.hpp"
#include "berth/placement.hpp"

namespace berth::agent::control {

namespace pl = berth::placement;

namespace {

// An optional list's items, none when it is absent.
template <class T>
const std::vector<T>& or_none(const std::optional<std::vector<T>>& v) {
  static const std::vector<T> none;
  return v ? *v : none;
}

// An optional integer member within [0, most].
tl::expected<void, api_error> check_range(const std::optional<std::int32_t>& v, const char* member,
                                          const std::string& what, std::int64_t most) {
  if (v && (*v < 0 || *v > most)) {
    return tl::unexpected(invalid(std::string(member) + " of " + what + " must be between 0 and " +
                                  std::to_string(most)));
  }
  return {};
}

// A list's entries that lack a member ECS needs though its model leaves it optional.
template <class T, class Has>
tl::expected<void, api_error> need_each(const std::optional<std::vector<T>>& list,
                                        const std::string& what, const char* member, Has has) {
  for (const T& e : or_none(list)) {
    if (!has(e)) return tl::unexpected(invalid(what + " entries need '" + member + "'"));
  }
  return {};
}

}  // namespace

tl::expected<void, api_error> check_overrides(const ecs::task_override& o) {
  for (const auto& [member, v, cpu] :
       {std::tuple{"cpu", &o.cpu, true}, std::tuple{"memory", &o.memory, false}}) {
    if (*v && !units_of(**v, cpu)) {
      return tl::unexpected(invalid(std::string("overrides.") + member + " is not a valid amount"));
    }
  }
  // ECS's limit, JSON punctuation included.
  if (const auto size = ecs::to_json(o).dump().size(); size > 8192) {
    return tl::unexpected(invalid("Container Overrides length must be at most 8192 (it is " +
                                  std::to_string(size) + ")"));
  }
  for (const auto& c : or_none(o.container_overrides)) {
    if (!c.name) return tl::unexpected(invalid("containerOverrides entries need 'name'"));
    for (const auto& [member, v] : {std::pair{"cpu", &c.cpu}, std::pair{"memory", &c.memory},
                                    std::pair{"memoryReservation", &c.memory_reservation}}) {
      if (auto r = check_range(*v, member, "a container override", 1 << 24); !r) return r;
    }
    // Docker reads a memory of 0 as "no limit": an override cannot lift the limit that way.
    for (const auto& [member, v] :
         {std::pair{"memory", &c.memory}, std::pair{"memoryReservation", &c.memory_reservation}}) {
      if (*v && **v < 6) {
        return tl::unexpected(client(std::string("Invalid '") + member +
                                     "' in a container override: at least 6 MiB."));
      }
    }
    if (auto r = need_each(c.environment, "containerOverrides.environment", "name",
                           [](const ecs::key_value_pair& e) { return e.name.has_value(); });
        !r) {
      return r;
    }
  }
  return {};
}

tl::expected<void, api_error> check_overrides(const json& o) {
  if (!o.is_object()) return tl::unexpected(serialization("Expected 'overrides' to be an object"));
  BERTH_TRY(typed, decode_request<ecs::task_override>(o));
  return check_overrides(typed);
}

std::string td_key(const std::string& family, std::uint64_t revision) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%010llu", static_cast<unsigned long long>(revision));
  return family + ":" + buf;
}

namespace {

api_error bad_tag_key() { return invalid("every tag needs a 'key' of 1-128 characters"); }
api_error bad_tag_value() { return invalid("tag values are strings of at most 256 characters"); }

}  // namespace

tl::expected<std::vector<state::tag>, api_error> tags_of(
    const std::optional<std::vector<ecs::tag>>& tags) {
  std::vector<state::tag> out;
  if (!tags) return out;
  if (tags->size() > 50) return tl::unexpected(invalid("at most 50 tags"));
  for (const auto& t : *tags) {
    if (!t.key || t.key->empty() || t.key->size() > 128) return tl::unexpected(bad_tag_key());
    if (t.value && t.value->size() > 256) return tl::unexpected(bad_tag_value());
    out.push_back({*t.key, t.value.value_or("")});
  }
  return out;
}

tl::expected<json, api_error> tags_of(const json& req) {
  BERTH_TRY(list, reader{req}.list("tags"));
  if (list == nullptr) return json::array();
  std::vector<ecs::tag> tags;
  for (const auto& t : *list) {
    auto d = ecs::decode<ecs::tag>(t);
    if (!d) return tl::unexpected(d.error().path == "value" ? bad_tag_value() : bad_tag_key());
    tags.push_back(std::move(*d));
  }
  BERTH_TRY(out, tags_of(std::optional(std::move(tags))));
  return state::to_json(out);
}

tl::expected<void, api_error> apply_tag_change(const tag_change& change,
                                               std::vector<state::tag>& tags) {
  if (!change.add) {
    const auto& keys = change.remove;
    if (keys.empty()) return tl::unexpected(invalid("tagKeys must not be empty"));
    std::erase_if(tags, [&](const state::tag& e) {
      return std::find(keys.begin(), keys.end(), e.key) != keys.end();
    });
    return {};
  }
  BERTH_TRY(more, tags_of(change.add));
  if (more.empty()) return tl::unexpected(invalid("tags must not be empty"));
  std::vector<state::tag> out = tags;
  for (auto& t : more) {
    std::erase_if(out, [&](const state::tag& e) { return e.key == t.key; });
    out.push_back(std::move(t));
  }
  if (out.size() > 50) return tl::unexpected(invalid("a resource has at most 50 tags"));
  tags = std::move(out);
  return {};
}

namespace {

// linuxParameters: what Berth applies (capabilities, devices, initProcessEnabled,
// sharedMemorySize, tmpfs), checked as ECS checks it; any other member of the model is refused
// rather than stored and silently not applied.
tl::expected<void, api_error> check_linux_parameters(const ecs::linux_parameters& lp,
                                                     const std::string& name) {
  const auto bad = [&](const std::string& m) {
    return tl::unexpected(client("Invalid setting for container '" + name + "'. " + m));
  };
  // In the order of their names, as a JSON object lists them.
  if (lp.max_swap) return bad("linuxParameters.maxSwap is not supported by Berth.");
  if (lp.swappiness) return bad("linuxParameters.swappiness is not supported by Berth.");
  if (lp.capabilities) {
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
    for (const auto& [k, caps] :
         {std::pair{"add", &lp.capabilities->add}, std::pair{"drop", &lp.capabilities->drop}}) {
      for (const auto& cap : or_none(*caps)) {
        if (!known.contains(cap)) {
          return bad(std::string("linuxParameters.capabilities.") + k + " holds '" + cap +
                     "', which is not a valid capability. Valid values are as ECS names them, "
                     "without CAP_: ALL, CHOWN, NET_ADMIN, SYS_ADMIN, SYS_PTRACE, ...");
        }
      }
    }
  }
  for (const auto& d : or_none(lp.devices)) {
    for (const auto& [k, path] : {std::pair{"hostPath", std::optional(d.host_path)},
                                  std::pair{"containerPath", d.container_path}}) {
      if (path && !path->starts_with("/")) {
        return bad(std::string("linuxParameters.devices ") + k + " '" + *path +
                   "' must be an absolute path.");
      }
    }
    for (const auto& p : or_none(d.permissions)) {
      if (p != "read" && p != "write" && p != "mknod") {
        return bad("linuxParameters.devices permissions '" + p +
                   "' is not valid. Valid values: read, write, mknod.");
      }
    }
  }
  if (const auto& shm = lp.shared_memory_size; shm && (*shm < 1 || *shm > (1 << 24))) {
    return bad("linuxParameters.sharedMemorySize must be 1 to 16777216 MiB.");
  }
  // Tmpfs' mountOptions in ECS's model; those taking a value (mode=1777) by their name.
  static const std::set<std::string> options = {
      "defaults",   "ro",          "rw",         "suid",        "nosuid",        "dev",     "nodev",
      "exec",       "noexec",      "sync",       "async",       "dirsync",       "remount", "mand",
      "nomand",     "atime",       "noatime",    "diratime",    "nodiratime",    "bind",    "rbind",
      "unbindable", "runbindable", "private",    "rprivate",    "shared",        "rshared", "slave",
      "rslave",     "relatime",    "norelatime", "strictatime", "nostrictatime", "mode",    "uid",
      "gid",        "nr_inodes",   "nr_blocks",  "mpol"};
  for (const auto& t : or_none(lp.tmpfs)) {
    const std::string& path = t.container_path;
    if (!path.starts_with("/")) {
      return bad("linuxParameters.tmpfs containerPath '" + path + "' must be an absolute path.");
    }
    if (t.size < 1)
      return bad("linuxParameters.tmpfs size of '" + path + "' must be at least 1 MiB.");
    for (const auto& opt : or_none(t.mount_options)) {
      if (!options.contains(opt.substr(0, opt.find('='))) || opt.find(',') != std::string::npos) {
        return bad("linuxParameters.tmpfs mountOptions '" + opt + "' is not valid.");
      }
    }
  }
  return {};
}

// One container definition, as ECS checks it; `task_memory`: the task has a memory of its own.
tl::expected<void, api_error> check_container(const ecs::container_definition& c,
                                              bool task_memory) {
  // ECS's words for a container without a name or an image.
  const std::string name = c.name.value_or("");
  if (name.empty()) return tl::unexpected(client("Container.name should not be null or empty."));
  static const std::regex name_re("^[a-zA-Z0-9_-]{1,255}$");
  if (!std::regex_match(name, name_re)) {
    return tl::unexpected(invalid("Container name '" + name +
                                  "' may hold only letters, numbers, hyphens and underscores"));
  }
  const std::string image = c.image.value_or("");
  if (image.empty()) return tl::unexpected(client("Container.image should not be null or empty."));
  // ECS: up to 255 letters, digits, hyphens, underscores, colons, periods, slashes and number
  // signs (and '@' for a digest).
  if (image.size() > 255 || !std::all_of(image.begin(), image.end(), [](char ch) {
        return std::isalnum(static_cast<unsigned char>(ch)) != 0 ||
               std::string_view("-_:./#@").find(ch) != std::string_view::npos;
      })) {
    return tl::unexpected(client("Invalid 'image' for container '" + name +
                                 "': up to 255 letters, numbers, hyphens, underscores, colons, "
                                 "periods, forward slashes and number signs are allowed."));
  }
  const std::string what = "container '" + name + "'";
  for (const auto& [member, v, most] :
       {std::tuple{"cpu", &c.cpu, 1 << 24}, std::tuple{"memory", &c.memory, 1 << 24},
        std::tuple{"memoryReservation", &c.memory_reservation, 1 << 24},
        std::tuple{"stopTimeout", &c.stop_timeout, 3600},
        std::tuple{"startTimeout", &c.start_timeout, 3600}}) {
    if (auto ok = check_range(*v, member, what, most); !ok) return ok;
  }
  if (auto ok = need_each(c.environment, "environment", "name",
                          [](const ecs::key_value_pair& e) { return e.name.has_value(); });
      !ok) {
    return ok;
  }
  if (auto ok = need_each(c.mount_points, "mountPoints", "sourceVolume",
                          [](const ecs::mount_point& m) { return m.source_volume.has_value(); });
      !ok) {
    return ok;
  }
  if (auto ok = need_each(c.mount_points, "mountPoints", "containerPath",
                          [](const ecs::mount_point& m) { return m.container_path.has_value(); });
      !ok) {
    return ok;
  }
  for (const auto& u : or_none(c.ulimits)) {
    if (u.soft_limit < 0 || u.hard_limit < 0) {
      return tl::unexpected(client("Invalid ulimit for container '" + name +
                                   "': softLimit and hardLimit must be 0 or more."));
    }
    if (u.soft_limit > u.hard_limit) {
      return tl::unexpected(client("Invalid ulimit for container '" + name +
                                   "': softLimit must not exceed hardLimit."));
    }
  }
  if (const auto& h = c.health_check) {
    if (h->command.empty()) return tl::unexpected(invalid("healthCheck needs a command"));
    // ECS's bounds: Docker's zero means "its default", and no retries means never healthy.
    for (const auto& [member, v, lo, hi] :
         {std::tuple{"interval", &h->interval, 5, 300}, std::tuple{"timeout", &h->timeout, 2, 120},
          std::tuple{"retries", &h->retries, 1, 10},
          std::tuple{"startPeriod", &h->start_period, 0, 300}}) {
      if (*v && (**v < lo || **v > hi)) {
        return tl::unexpected(client("Invalid 'healthCheck." + std::string(member) +
                                     "' setting for container '" + name + "'. It must be between " +
                                     std::to_string(lo) + " and " + std::to_string(hi) + "."));
      }
    }
  }
  const auto& mem = c.memory;
  const auto& res = c.memory_reservation;
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
  for (const auto& p : or_none(c.port_mappings)) {
    if (!p.container_port || *p.container_port < 1 || *p.container_port > 65535) {
      return tl::unexpected(
          invalid("portMappings of container '" + name + "' need a containerPort of 1-65535"));
    }
    if (p.host_port && (*p.host_port < 0 || *p.host_port > 65535)) {
      return tl::unexpected(invalid("hostPort of container '" + name + "' must be 0-65535"));
    }
    if (p.protocol && *p.protocol != "tcp" && *p.protocol != "udp") {
      return tl::unexpected(invalid("protocol must be tcp or udp"));
    }
  }
  if (c.linux_parameters) return check_linux_parameters(*c.linux_parameters, name);
  return {};
}

// Whether dependsOn lets every container start after those it depends on: no cycle. The names
// are known to be unique, and every dependency to name one of them.
bool acyclic(const std::vector<ecs::container_definition>& containers) {
  std::set<std::string> placed;
  for (bool more = true; more;) {
    more = false;
    for (const auto& c : containers) {
      if (placed.contains(*c.name)) continue;
      const auto& deps = or_none(c.depends_on);
      if (std::all_of(deps.begin(), deps.end(), [&](const ecs::container_dependency& d) {
            return placed.contains(d.container_name);
          })) {
        placed.insert(*c.name);
        more = true;
      }
    }
  }
  return placed.size() == containers.size();
}

// What a registration leaves to defaults, set as ECS sets them.
ecs::container_definition with_defaults(ecs::container_definition c, const std::string& network) {
  if (!c.essential) c.essential = true;
  if (!c.environment) c.environment.emplace();
  if (!c.port_mappings) c.port_mappings.emplace();
  if (!c.mount_points) c.mount_points.emplace();
  if (!c.volumes_from) c.volumes_from.emplace();
  if (!c.cpu) c.cpu = 0;
  for (auto& p : *c.port_mappings) {
    if (network == "host") p.host_port = p.container_port;
    if (!p.protocol) p.protocol = "tcp";
    if (!p.host_port) p.host_port = 0;
  }
  return c;
}

// The record RegisterTaskDefinition stores for `r`, checked: all but its ARN, revision and time.
tl::expected<state::task_definition, api_error> checked(ecs::register_task_definition_request r) {
  const std::string& family = r.family;
  if (auto ok = not_empty(family, "family"); !ok) return tl::unexpected(ok.error());
  static const std::regex family_re("^[a-zA-Z0-9_-]{1,255}$");
  if (!std::regex_match(family, family_re)) {
    return tl::unexpected(invalid(
        "Family '" + family + "' may hold only letters, numbers, hyphens and underscores (1-255)"));
  }
  auto& containers = r.container_definitions;
  if (containers.empty()) return tl::unexpected(client("Container list cannot be empty."));
  if (containers.size() > 10)
    return tl::unexpected(invalid("at most 10 containers per task definition"));
  const std::string network = r.network_mode.value_or("bridge");
  if (network != "bridge" && network != "host" && network != "none") {
    return tl::unexpected(
        invalid("networkMode '" + network + "' is not supported here (bridge, host or none)"));
  }
  std::optional<std::uint32_t> task_cpu, task_mem;
  if (r.cpu) {
    task_cpu = units_of(*r.cpu, true);
    if (!task_cpu)
      return tl::unexpected(invalid("cpu must be CPU units or vCPUs, e.g. '256' or '0.25 vCPU'"));
  }
  if (r.memory) {
    task_mem = units_of(*r.memory, false);
    if (!task_mem) return tl::unexpected(invalid("memory must be MiB or GB, e.g. '512' or '1 GB'"));
  }
  std::map<std::string, const ecs::container_definition*> by_name;
  bool essential = false;
  for (const auto& c : containers) {
    if (auto ok = check_container(c, task_mem.has_value()); !ok) return tl::unexpected(ok.error());
    if (!by_name.emplace(*c.name, &c).second) {
      return tl::unexpected(client("Container names must be unique: '" + *c.name + "'"));
    }
    essential |= c.essential.value_or(true);
  }
  if (!essential)
    return tl::unexpected(client("Task definition must have at least one essential container."));
  for (const auto& c : containers) {
    for (const auto& d : or_none(c.depends_on)) {
      if (!by_name.contains(d.container_name)) {
        return tl::unexpected(client("dependsOn of '" + *c.name + "' names an unknown container"));
      }
      const std::string& cond = d.condition;
      if (cond != "START" && cond != "COMPLETE" && cond != "SUCCESS" && cond != "HEALTHY") {
        return tl::unexpected(
            invalid("dependsOn condition must be START, COMPLETE, SUCCESS or HEALTHY"));
      }
    }
  }
  // dependsOn: HEALTHY only on a container with a health check, and no cycles.
  for (const auto& c : containers) {
    for (const auto& d : or_none(c.depends_on)) {
      if (d.condition == "HEALTHY" && !by_name[d.container_name]->health_check) {
        return tl::unexpected(client("dependsOn condition HEALTHY needs a healthCheck on '" +
                                     d.container_name + "'"));
      }
    }
  }
  if (!acyclic(containers)) return tl::unexpected(client("dependsOn has a cycle"));
  // The task's namespaces. "task" shares the first container's with the others, as the ECS
  // agent shares its pause container's: that container must be up before and while they run.
  const auto& pid_mode = r.pid_mode;
  const auto& ipc_mode = r.ipc_mode;
  if (pid_mode && *pid_mode != "host" && *pid_mode != "task") {
    return tl::unexpected(
        client("Invalid pidMode value '" + *pid_mode + "'. Valid values: host, task."));
  }
  if (ipc_mode && *ipc_mode != "host" && *ipc_mode != "task" && *ipc_mode != "none") {
    return tl::unexpected(
        client("Invalid ipcMode value '" + *ipc_mode + "'. Valid values: host, task, none."));
  }
  if (pid_mode == "task" || ipc_mode == "task") {
    const auto& first = containers.front();
    if (!first.essential.value_or(true) || (first.depends_on && !first.depends_on->empty())) {
      return tl::unexpected(
          client("pidMode or ipcMode 'task': the task's containers share the namespace of its "
                 "first container, '" +
                 *first.name + "', which must therefore be essential and depend on no other."));
    }
  }
  for (const auto& c : or_none(r.requires_compatibilities)) {
    if (c != "EC2") {
      return tl::unexpected(
          client("Berth runs tasks on the EC2 launch type only: requiresCompatibilities " + c +
                 " is not supported."));
    }
  }
  if (auto ok = need_each(r.volumes, "volumes", "name",
                          [](const ecs::volume& v) { return v.name.has_value(); });
      !ok) {
    return tl::unexpected(ok.error());
  }
  BERTH_TRY(tags, tags_of(r.tags));
  if (const auto& constraints = r.placement_constraints) {
    std::vector<pl::constraint> cons;
    for (const auto& c : *constraints) {
      if (!c.type) return tl::unexpected(invalid("placementConstraints entries need 'type'"));
      cons.push_back({*c.type, c.expression.value_or("")});
    }
    if (auto q = pl::compile({{}, "", cons, {}}); !q) {
      return tl::unexpected(invalid(q.error().message));
    }
  }
  state::task_definition td;
  ecs::task_definition& d = td.def;
  d.family = family;
  d.container_definitions.emplace();
  for (auto& c : containers)
    d.container_definitions->push_back(with_defaults(std::move(c), network));
  d.network_mode = network;
  d.volumes = r.volumes.value_or(std::vector<ecs::volume>{});
  // ECS's default for an EFS volume's root.
  for (auto& v : *d.volumes) {
    if (v.efs_volume_configuration && !v.efs_volume_configuration->root_directory) {
      v.efs_volume_configuration->root_directory = "/";
    }
  }
  d.status = "ACTIVE";
  d.requires_attributes.emplace();
  d.placement_constraints =
      r.placement_constraints.value_or(std::vector<ecs::task_definition_placement_constraint>{});
  d.compatibilities = std::vector<std::string>{"EC2"};
  d.registered_by = "berth";
  if (task_cpu) d.cpu = std::to_string(*task_cpu);
  if (task_mem) d.memory = std::to_string(*task_mem);
  d.task_role_arn = std::move(r.task_role_arn);
  d.execution_role_arn = std::move(r.execution_role_arn);
  d.pid_mode = pid_mode;
  d.ipc_mode = ipc_mode;
  if (r.requires_compatibilities && !r.requires_compatibilities->empty()) {
    d.requires_compatibilities = std::move(r.requires_compatibilities);
  }
  // Kept as the request set them, as ECS answers (Berth's tasks do not act on them).
  d.proxy_configuration = std::move(r.proxy_configuration);
  d.inference_accelerators = std::move(r.inference_accelerators);
  d.ephemeral_storage = std::move(r.ephemeral_storage);
  d.runtime_platform = std::move(r.runtime_platform);
  td.tags = std::move(tags);
  return td;
}

}  // namespace

tl::expected<state::task_definition, api_error> checked_task_definition(
    ecs::register_task_definition_request r) {
  return checked(std::move(r));
}

bool names_revision(const std::string& ref) {
  const auto colon = ref.rfind(':');
  return colon != std::string::npos &&
         !(ref.starts_with("arn:") && colon < ref.find("task-definition/"));
}

task_definitions::task_definitions(store* s, std::string arn_prefix)
    : store_(s), arn_prefix_(std::move(arn_prefix)) {}

outcome task_definitions::register_task_definition(const json& req) {
  // ECS's limit on a task definition as sent.
  if (const auto size = req.dump().size(); size > 65536) {
    return tl::unexpected(client("Actual length: '" + std::to_string(size) +
                                 "'. Max allowed length is '65536' bytes."));
  }
  BERTH_TRY(r, decode_request<ecs::register_task_definition_request>(
                   req, "containerDefinitions", client("Container list cannot be empty.")));
  BERTH_TRY(td, checked(std::move(r)));
  const std::string family = *td.def.family;
  auto rev = store_->next("taskdef:" + family);
  if (!rev) return tl::unexpected(server(rev.error().message));
  td.def.task_definition_arn = arn("task-definition/" + family + ":" + std::to_string(*rev));
  td.def.revision = static_cast<std::int32_t>(*rev);
  td.def.registered_at = now_seconds();
  if (auto w = store_->put("taskdef", td_key(family, *rev), state::to_json(td).dump()); !w) {
    return tl::unexpected(server(w.error().message));
  }
  return json{{"taskDefinition", state::response(td)}, {"tags", state::to_json(td.tags)}};
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
  BERTH_TRY(r, decode_request<ecs::describe_task_definition_request>(req));
  if (auto ok = not_empty(r.task_definition, "taskDefinition"); !ok) {
    return tl::unexpected(ok.error());
  }
  BERTH_TRY(td, find_task_definition(r.task_definition, false));
  json out = {{"taskDefinition", state::response(td)}};
  const auto& include = or_none(r.include);
  if (std::find(include.begin(), include.end(), "TAGS") != include.end()) {
    out["tags"] = state::to_json(td.tags);
  }
  return out;
}

tl::expected<std::vector<state::task_definition>, api_error> task_definitions::stored(
    const std::optional<std::string>& family_prefix, bool exact) {
  auto all = store_->list("taskdef", family_prefix.value_or(""));
  if (!all) return tl::unexpected(server(all.error().message));
  std::vector<state::task_definition> out;
  out.reserve(all->size());
  for (const auto& [k, v] : *all) {
    auto td = state::parse<state::task_definition>(v, k);
    if (!td) return tl::unexpected(server(td.error().detail));
    // The store's prefix is the key's: "web" also lists "webby:...".
    if (family_prefix && !td->def.family->starts_with(*family_prefix)) continue;
    if (family_prefix && exact && *td->def.family != *family_prefix) continue;
    out.push_back(std::move(*td));
  }
  return out;
}

outcome task_definitions::list_task_definitions(const json& req) {
  BERTH_TRY(r, decode_request<ecs::list_task_definitions_request>(req));
  if (r.status && *r.status != "ACTIVE" && *r.status != "INACTIVE" &&
      *r.status != "DELETE_IN_PROGRESS") {
    return tl::unexpected(invalid("status must be ACTIVE, INACTIVE or DELETE_IN_PROGRESS"));
  }
  // ListTaskDefinitions' familyPrefix is a whole family, as ECS reads it ("web" does not list
  // "webby"); ListTaskDefinitionFamilies' is a prefix.
  BERTH_TRY(all, stored(r.family_prefix, true));
  std::vector<std::string> arns;
  for (auto& td : all) {
    if (td.def.status == r.status.value_or("ACTIVE")) {
      arns.push_back(std::move(*td.def.task_definition_arn));
    }
  }
  if (r.sort == "DESC") std::reverse(arns.begin(), arns.end());
  BERTH_TRY(range, page(r.next_token, r.max_results, arns.size(), 100));
  json out = {{"taskDefinitionArns", json::array()}};
  for (std::size_t i = range.first; i < range.second; ++i)
    out["taskDefinitionArns"].push_back(arns[i]);
  add_token(out, range.second, arns.size());
  return out;
}

outcome task_definitions::list_task_definition_families(const json& req) {
  BERTH_TRY(r, decode_request<ecs::list_task_definition_families_request>(req));
  const std::string want = r.status.value_or("ACTIVE");
  if (want != "ACTIVE" && want != "INACTIVE" && want != "ALL") {
    return tl::unexpected(invalid("status must be ACTIVE, INACTIVE or ALL"));
  }
  BERTH_TRY(all, stored(r.family_prefix, false));
  std::map<std::string, bool> families;  // family -> has an ACTIVE revision
  for (const auto& td : all) families[*td.def.family] |= td.def.status == "ACTIVE";
  std::vector<std::string> names;
  for (const auto& [f, active] : families) {
    if (want == "ALL" || (want == "ACTIVE") == active) names.push_back(f);
  }
  BERTH_TRY(range, page(r.next_token, r.max_results, names.size(), 100));
  json out = {{"families", json::array()}};
  for (std::size_t i = range.first; i < range.second; ++i) out["families"].push_back(names[i]);
  add_token(out, range.second, names.size());
  return out;
}

}  // namespace berth::agent::control
