// The Engine API's JSON and the client's types: request bodies, responses read into
// container_info and friends, Docker's stream formats. See wire.hpp.
#include "wire.hpp"

#include <algorithm>
#include <charconv>
#include <cstdio>

namespace berth::docker::detail {

// Percent-encodes a query value or path segment.
std::string escape(std::string_view s) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  for (const unsigned char c : s) {
    if (std::isalnum(c) != 0 || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

// "1.41" < "1.43": compares dotted numbers.
int compare_versions(std::string_view a, std::string_view b) {
  while (!a.empty() || !b.empty()) {
    unsigned x = 0, y = 0;
    auto ra = std::from_chars(a.data(), a.data() + a.size(), x);
    auto rb = std::from_chars(b.data(), b.data() + b.size(), y);
    if (x != y) return x < y ? -1 : 1;
    a.remove_prefix(static_cast<std::size_t>(ra.ptr - a.data()));
    b.remove_prefix(static_cast<std::size_t>(rb.ptr - b.data()));
    if (!a.empty() && a.front() == '.') a.remove_prefix(1);
    if (!b.empty() && b.front() == '.') b.remove_prefix(1);
    if (ra.ec != std::errc{} && rb.ec != std::errc{}) break;
  }
  return 0;
}

// Invalid UTF-8 in a caller's strings becomes U+FFFD rather than an exception.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// A member, or null when absent: safe on const objects, unlike operator[].
const json& member(const json& j, const char* key) {
  static const json null;
  if (!j.is_object()) return null;
  const auto it = j.find(key);
  return it == j.end() ? null : *it;
}

result<json> parse(const response& r) {
  json j = json::parse(r.body, nullptr, false);
  if (j.is_discarded()) {
    return tl::unexpected(error{errc::bad_response,
                                "Docker sent invalid JSON: " + r.body.substr(0, 200),
                                static_cast<int>(r.status)});
  }
  return j;
}

std::string str(const json& j, const char* key) {
  if (!j.is_object()) return {};
  const auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}
std::int64_t num(const json& j, const char* key) {
  if (!j.is_object()) return 0;
  const auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<std::int64_t>() : 0;
}

std::map<std::string, std::string> string_map(const json& j, const char* key) {
  std::map<std::string, std::string> out;
  const auto it = j.find(key);
  if (it == j.end() || !it->is_object()) return out;
  for (const auto& [k, v] : it->items()) {
    if (v.is_string()) out[k] = v.get<std::string>();
  }
  return out;
}

namespace {

// "80/tcp" -> {80, "tcp"}
std::pair<std::uint16_t, std::string> split_port(const std::string& key) {
  const auto slash = key.find('/');
  unsigned port = 0;
  std::from_chars(key.data(), key.data() + (slash == std::string::npos ? key.size() : slash), port);
  return {static_cast<std::uint16_t>(port),
          slash == std::string::npos ? std::string("tcp") : key.substr(slash + 1)};
}

}  // namespace

json label_filters(const std::map<std::string, std::string>& labels) {
  json l = json::array();
  for (const auto& [k, v] : labels) l.push_back(v.empty() ? k : k + "=" + v);
  return l;
}

json create_body(const container_spec& s) {
  json body = {{"Image", s.image}};
  if (!s.entrypoint.empty()) body["Entrypoint"] = s.entrypoint;
  if (!s.command.empty()) body["Cmd"] = s.command;
  if (!s.env.empty()) body["Env"] = s.env;
  body["Labels"] = json::object();
  for (const auto& [k, v] : s.labels) body["Labels"][k] = v;
  if (!s.working_dir.empty()) body["WorkingDir"] = s.working_dir;
  if (!s.user.empty()) body["User"] = s.user;
  if (!s.hostname.empty()) body["Hostname"] = s.hostname;
  if (s.health) {
    body["Healthcheck"] = {{"Test", s.health->test},
                           {"Interval", s.health->interval.count()},
                           {"Timeout", s.health->timeout.count()},
                           {"Retries", s.health->retries},
                           {"StartPeriod", s.health->start_period.count()}};
  }
  json host = json::object();
  if (s.memory_bytes > 0) host["Memory"] = s.memory_bytes;
  if (s.memory_reservation_bytes > 0) host["MemoryReservation"] = s.memory_reservation_bytes;
  if (s.memory_swap_bytes != 0) host["MemorySwap"] = s.memory_swap_bytes;
  if (s.nano_cpus > 0) host["NanoCpus"] = s.nano_cpus;
  if (s.cpu_shares > 0) host["CpuShares"] = s.cpu_shares;
  if (s.pids_limit > 0) host["PidsLimit"] = s.pids_limit;
  if (!s.ports.empty()) {
    json exposed = json::object(), bindings = json::object();
    for (const auto& p : s.ports) {
      const std::string key = std::to_string(p.container_port) + "/" + p.protocol;
      exposed[key] = json::object();
      bindings[key].push_back(
          {{"HostIp", p.host_ip},
           {"HostPort", p.host_port == 0 ? std::string() : std::to_string(p.host_port)}});
    }
    body["ExposedPorts"] = exposed;
    host["PortBindings"] = bindings;
  }
  if (!s.network_mode.empty()) host["NetworkMode"] = s.network_mode;
  json binds = json::array(), mounts = json::array();
  for (const auto& m : s.mounts) {
    if (m.volume) {
      mounts.push_back({{"Type", "volume"},
                        {"Source", m.source},
                        {"Target", m.target},
                        {"ReadOnly", m.read_only}});
    } else {
      binds.push_back(m.source + ":" + m.target + (m.read_only ? ":ro" : ""));
    }
  }
  if (!binds.empty()) host["Binds"] = binds;
  if (!mounts.empty()) host["Mounts"] = mounts;
  if (!s.ulimits.empty()) {
    json u = json::array();
    for (const auto& l : s.ulimits)
      u.push_back({{"Name", l.name}, {"Soft", l.soft}, {"Hard", l.hard}});
    host["Ulimits"] = u;
  }
  if (s.readonly_rootfs) host["ReadonlyRootfs"] = true;
  if (s.privileged) host["Privileged"] = true;
  if (s.init) host["Init"] = *s.init;
  if (!s.cap_add.empty()) host["CapAdd"] = s.cap_add;
  if (!s.cap_drop.empty()) host["CapDrop"] = s.cap_drop;
  if (!s.pid_mode.empty()) host["PidMode"] = s.pid_mode;
  if (!s.ipc_mode.empty()) host["IpcMode"] = s.ipc_mode;
  if (!s.devices.empty()) {
    json d = json::array();
    for (const auto& x : s.devices) {
      d.push_back({{"PathOnHost", x.path_on_host},
                   {"PathInContainer", x.path_in_container},
                   {"CgroupPermissions", x.cgroup_permissions}});
    }
    host["Devices"] = d;
  }
  if (!s.tmpfs.empty()) host["Tmpfs"] = s.tmpfs;
  if (s.shm_size_bytes > 0) host["ShmSize"] = s.shm_size_bytes;
  if (s.log) host["LogConfig"] = {{"Type", s.log->type}, {"Config", s.log->config}};
  body["HostConfig"] = host;
  return body;
}

container_info read_info(const json& j) {
  container_info c;
  c.id = str(j, "Id");
  c.name = str(j, "Name");
  if (!c.name.empty() && c.name.front() == '/') c.name.erase(0, 1);
  c.image_id = str(j, "Image");
  if (const auto it = j.find("Config"); it != j.end() && it->is_object()) {
    c.image = str(*it, "Image");
    c.labels = string_map(*it, "Labels");
  }
  if (const auto it = j.find("State"); it != j.end() && it->is_object()) {
    const json& s = *it;
    c.status = str(s, "Status");
    c.running = s.value("Running", false);
    c.pid = static_cast<int>(num(s, "Pid"));
    c.exit_code = static_cast<int>(num(s, "ExitCode"));
    c.oom_killed = s.value("OOMKilled", false);
    c.error = str(s, "Error");
    c.started_at = str(s, "StartedAt");
    c.finished_at = str(s, "FinishedAt");
    if (const auto h = s.find("Health"); h != s.end() && h->is_object()) {
      const std::string hs = str(*h, "Status");
      c.health = hs == "healthy"     ? health_status::healthy
                 : hs == "unhealthy" ? health_status::unhealthy
                 : hs == "starting"  ? health_status::starting
                                     : health_status::none;
    }
  }
  if (const auto it = j.find("HostConfig"); it != j.end() && it->is_object()) {
    c.memory_bytes = num(*it, "Memory");
    c.memory_reservation_bytes = num(*it, "MemoryReservation");
    c.nano_cpus = num(*it, "NanoCpus");
    c.cpu_shares = num(*it, "CpuShares");
  }
  if (const auto ns = j.find("NetworkSettings"); ns != j.end() && ns->is_object()) {
    if (const auto ports = ns->find("Ports"); ports != ns->end() && ports->is_object()) {
      for (const auto& [key, list] : ports->items()) {
        if (!list.is_array()) continue;
        const auto [port, proto] = split_port(key);
        for (const auto& b : list) {
          unsigned hp = 0;
          const std::string hps = str(b, "HostPort");
          std::from_chars(hps.data(), hps.data() + hps.size(), hp);
          c.ports.push_back({port, proto, str(b, "HostIp"), static_cast<std::uint16_t>(hp)});
        }
      }
    }
  }
  return c;
}

container_summary read_summary(const json& j) {
  container_summary s;
  s.id = str(j, "Id");
  if (const auto it = j.find("Names");
      it != j.end() && it->is_array() && !it->empty() && it->front().is_string()) {
    s.name = it->front().get<std::string>();
    if (!s.name.empty() && s.name.front() == '/') s.name.erase(0, 1);
  }
  s.image = str(j, "Image");
  s.state = str(j, "State");
  s.labels = string_map(j, "Labels");
  return s;
}

image_info read_image(const json& j) {
  image_info i;
  i.id = str(j, "Id");
  if (const auto it = j.find("RepoTags"); it != j.end() && it->is_array()) {
    for (const auto& t : *it) {
      if (t.is_string()) i.tags.push_back(t.get<std::string>());
    }
  }
  i.size = num(j, "Size");
  if (const auto it = j.find("Created"); it != j.end()) {
    i.created = it->is_string() ? it->get<std::string>() : std::to_string(num(j, "Created"));
  }
  return i;
}

// Splits Docker's multiplexed log stream (8-byte frame headers) into plain text.
std::string demultiplex(const std::string& raw) {
  std::string out;
  std::size_t i = 0;
  while (i + 8 <= raw.size() && (raw[i] == 0 || raw[i] == 1 || raw[i] == 2) && raw[i + 1] == 0) {
    const std::size_t n = (std::size_t{static_cast<unsigned char>(raw[i + 4])} << 24) |
                          (std::size_t{static_cast<unsigned char>(raw[i + 5])} << 16) |
                          (std::size_t{static_cast<unsigned char>(raw[i + 6])} << 8) |
                          std::size_t{static_cast<unsigned char>(raw[i + 7])};
    out.append(raw, i + 8, n);
    i += 8 + n;
  }
  // A TTY container's logs are not framed.
  return i == 0 ? raw : out;
}

// Reads a progress stream (import, load, pull): one JSON object per line; the first "error"
// ends it as a failure.
result<std::vector<json>> progress(const response& r) {
  std::vector<json> lines;
  std::size_t start = 0;
  while (start < r.body.size()) {
    std::size_t end = r.body.find('\n', start);
    if (end == std::string::npos) end = r.body.size();
    const std::string_view line(r.body.data() + start, end - start);
    start = end + 1;
    if (line.find_first_not_of(" \r\t") == std::string_view::npos) continue;
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded()) continue;
    if (j.contains("error")) {
      return tl::unexpected(error{errc::server_error, str(j, "error"), static_cast<int>(r.status)});
    }
    lines.push_back(std::move(j));
  }
  return lines;
}

}  // namespace berth::docker::detail
