// The Engine API client: requests pinned to the negotiated version, JSON in and out.
#include <algorithm>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "berth/docker.hpp"
#include "http.hpp"

namespace berth::docker {

using nlohmann::json;

std::string_view to_string(errc e) noexcept {
  switch (e) {
    case errc::unavailable:
      return "unavailable";
    case errc::timeout:
      return "timeout";
    case errc::not_found:
      return "not_found";
    case errc::conflict:
      return "conflict";
    case errc::bad_request:
      return "bad_request";
    case errc::server_error:
      return "server_error";
    case errc::bad_response:
      return "bad_response";
    case errc::unsupported:
      return "unsupported";
    case errc::cgroup:
      return "cgroup";
  }
  return "unknown";
}

std::string_view to_string(health_status h) noexcept {
  switch (h) {
    case health_status::none:
      return "none";
    case health_status::starting:
      return "starting";
    case health_status::healthy:
      return "healthy";
    case health_status::unhealthy:
      return "unhealthy";
  }
  return "none";
}

namespace {

using detail::request;
using detail::response;

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

// "80/tcp" -> {80, "tcp"}
std::pair<std::uint16_t, std::string> split_port(const std::string& key) {
  const auto slash = key.find('/');
  unsigned port = 0;
  std::from_chars(key.data(), key.data() + (slash == std::string::npos ? key.size() : slash), port);
  return {static_cast<std::uint16_t>(port),
          slash == std::string::npos ? std::string("tcp") : key.substr(slash + 1)};
}

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

class subscription_impl;

class engine_impl final : public engine {
 public:
  explicit engine_impl(const options& o) : http_(o) {}

  result<void> negotiate() {
    auto ping = http_.send({"GET", "/_ping"});
    if (!ping) return tl::unexpected(ping.error());
    if (ping->status != 200) return tl::unexpected(detail::status_error(*ping));
    auto v = http_.send({"GET", "/version"});
    if (!v) return tl::unexpected(v.error());
    if (v->status != 200) return tl::unexpected(detail::status_error(*v));
    auto j = parse(*v);
    if (!j) return tl::unexpected(j.error());
    version_.server_api_version = str(*j, "ApiVersion");
    version_.engine_version = str(*j, "Version");
    version_.os = str(*j, "Os");
    version_.arch = str(*j, "Arch");
    version_.kernel = str(*j, "KernelVersion");
    if (compare_versions(version_.server_api_version, minimum_api_version) < 0) {
      return tl::unexpected(
          error{errc::unsupported, "Docker " + version_.engine_version + " speaks Engine API " +
                                       version_.server_api_version + ", older than " +
                                       std::string(minimum_api_version) +
                                       " (Docker 20.10), the oldest Berth supports"});
    }
    version_.api_version = compare_versions(version_.server_api_version, maximum_api_version) > 0
                               ? std::string(maximum_api_version)
                               : version_.server_api_version;
    prefix_ = "/v" + version_.api_version;
    return {};
  }

  const version_info& version() const noexcept override { return version_; }

  result<std::string> create_container(const container_spec& spec) override {
    std::string target = prefix_ + "/containers/create";
    if (!spec.name.empty()) target += "?name=" + escape(spec.name);
    const std::string body = dump(create_body(spec));
    auto r = call({"POST", target, body});
    if (!r) return tl::unexpected(r.error());
    if (r->status != 201) return tl::unexpected(detail::status_error(*r));
    auto j = parse(*r);
    if (!j) return tl::unexpected(j.error());
    std::string id = str(*j, "Id");
    if (id.empty()) return tl::unexpected(error{errc::bad_response, "create returned no Id"});
    return id;
  }

  result<void> start_container(std::string_view id) override {
    return expect({"POST", prefix_ + "/containers/" + escape(id) + "/start"}, {204, 304});
  }

  result<void> stop_container(std::string_view id, std::chrono::seconds grace) override {
    request r{"POST",
              prefix_ + "/containers/" + escape(id) + "/stop?t=" + std::to_string(grace.count())};
    // Docker waits out the grace period before it answers.
    r.timeout = http_.opts().timeout + grace;
    return expect(r, {204, 304});
  }

  result<void> kill_container(std::string_view id, std::string_view signal) override {
    return expect(
        {"POST", prefix_ + "/containers/" + escape(id) + "/kill?signal=" + escape(signal)}, {204});
  }

  result<void> remove_container(std::string_view id, remove_options o) override {
    auto r = expect({"DELETE", prefix_ + "/containers/" + escape(id) + "?force=" +
                                   (o.force ? "1" : "0") + "&v=" + (o.volumes ? "1" : "0")},
                    {204});
    // Gone, or already being removed: either way it will not be there.
    if (!r && (r.error().code == errc::not_found ||
               (r.error().code == errc::conflict &&
                r.error().message.find("already in progress") != std::string::npos))) {
      return {};
    }
    return r;
  }

  result<container_info> inspect_container(std::string_view id) override {
    auto j = get_json(prefix_ + "/containers/" + escape(id) + "/json");
    if (!j) return tl::unexpected(j.error());
    return read_info(*j);
  }

  result<std::vector<container_summary>> list_containers(const list_filter& f) override {
    return list_containers_within(f, std::chrono::milliseconds(0));
  }
  // With its own deadline (0: the default).
  result<std::vector<container_summary>> list_containers_within(const list_filter& f,
                                                                std::chrono::milliseconds timeout) {
    std::string target = prefix_ + "/containers/json?all=" + (f.all ? "1" : "0");
    if (!f.labels.empty()) {
      target += "&filters=" + escape(dump(json{{"label", label_filters(f.labels)}}));
    }
    request rq{"GET", target};
    rq.timeout = timeout;
    auto r = call(rq);
    if (!r) return tl::unexpected(r.error());
    if (r->status != 200) return tl::unexpected(detail::status_error(*r));
    auto j = parse(*r);
    if (!j) return tl::unexpected(j.error());
    std::vector<container_summary> out;
    if (j->is_array()) {
      for (const auto& c : *j) out.push_back(read_summary(c));
    }
    return out;
  }

  result<int> wait_container(std::string_view id, std::chrono::milliseconds timeout) override {
    request rq{"POST", prefix_ + "/containers/" + escape(id) + "/wait"};
    rq.timeout = timeout;
    auto r = call(rq);
    if (!r) return tl::unexpected(r.error());
    if (r->status != 200) return tl::unexpected(detail::status_error(*r));
    auto j = parse(*r);
    if (!j) return tl::unexpected(j.error());
    return static_cast<int>(num(*j, "StatusCode"));
  }

  result<std::string> logs(std::string_view id, std::uint32_t tail) override {
    auto r = call({"GET", prefix_ + "/containers/" + escape(id) +
                              "/logs?stdout=1&stderr=1&tail=" + std::to_string(tail)});
    if (!r) return tl::unexpected(r.error());
    if (r->status != 200) return tl::unexpected(detail::status_error(*r));
    return demultiplex(r->body);
  }

  result<container_stats> stats(std::string_view id) override {
    auto j = get_json(prefix_ + "/containers/" + escape(id) + "/stats?stream=0&one-shot=1");
    if (!j) return tl::unexpected(j.error());
    container_stats s;
    const json& cpu = member(*j, "cpu_stats");
    s.cpu_total_ns = static_cast<std::uint64_t>(num(member(cpu, "cpu_usage"), "total_usage"));
    s.system_cpu_ns = static_cast<std::uint64_t>(num(cpu, "system_cpu_usage"));
    s.online_cpus = static_cast<std::uint32_t>(num(cpu, "online_cpus"));
    const json& mem = member(*j, "memory_stats");
    s.memory_usage = static_cast<std::uint64_t>(num(mem, "usage"));
    s.memory_limit = static_cast<std::uint64_t>(num(mem, "limit"));
    if (const json& nets = member(*j, "networks"); nets.is_object()) {
      for (const auto& [name, n] : nets.items()) {
        s.rx_bytes += static_cast<std::uint64_t>(num(n, "rx_bytes"));
        s.tx_bytes += static_cast<std::uint64_t>(num(n, "tx_bytes"));
      }
    }
    const json& io = member(member(*j, "blkio_stats"), "io_service_bytes_recursive");
    if (io.is_array()) {
      for (const auto& e : io) {
        const std::string op = str(e, "op");
        if (op == "Read" || op == "read")
          s.block_read += static_cast<std::uint64_t>(num(e, "value"));
        if (op == "Write" || op == "write") {
          s.block_write += static_cast<std::uint64_t>(num(e, "value"));
        }
      }
    }
    s.pids = static_cast<std::uint64_t>(num(member(*j, "pids_stats"), "current"));
    return s;
  }

  result<image_info> inspect_image(std::string_view ref) override {
    auto j = get_json(prefix_ + "/images/" + escape(ref) + "/json");
    if (!j) return tl::unexpected(j.error());
    image_info i = read_image(*j);
    return i;
  }

  result<std::vector<image_info>> list_images() override {
    auto j = get_json(prefix_ + "/images/json");
    if (!j) return tl::unexpected(j.error());
    std::vector<image_info> out;
    if (j->is_array()) {
      for (const auto& i : *j) out.push_back(read_image(i));
    }
    return out;
  }

  result<std::string> import_image(const std::string& tar_path, std::string_view repository,
                                   std::string_view tag) override {
    request rq{"POST", prefix_ + "/images/create?fromSrc=-&repo=" + escape(repository) +
                           "&tag=" + escape(tag)};
    rq.upload_path = &tar_path;
    rq.content_type = "application/x-tar";
    auto r = call(rq);
    if (!r) return tl::unexpected(r.error());
    if (r->status != 200) return tl::unexpected(detail::status_error(*r));
    auto lines = progress(*r);
    if (!lines) return tl::unexpected(lines.error());
    for (auto it = lines->rbegin(); it != lines->rend(); ++it) {
      const std::string s = str(*it, "status");
      if (s.starts_with("sha256:")) return s;
    }
    return tl::unexpected(error{errc::bad_response, "import returned no image id"});
  }

  result<std::vector<std::string>> load_image(const std::string& tar_path) override {
    request rq{"POST", prefix_ + "/images/load?quiet=1"};
    rq.upload_path = &tar_path;
    rq.content_type = "application/x-tar";
    auto r = call(rq);
    if (!r) return tl::unexpected(r.error());
    if (r->status != 200) return tl::unexpected(detail::status_error(*r));
    auto lines = progress(*r);
    if (!lines) return tl::unexpected(lines.error());
    std::vector<std::string> names;
    for (const auto& l : *lines) {
      std::string s = str(l, "stream");
      for (const std::string_view p : {"Loaded image: ", "Loaded image ID: "}) {
        if (s.starts_with(p)) {
          s.erase(0, p.size());
          while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
          names.push_back(s);
        }
      }
    }
    return names;
  }

  result<void> save_image(std::string_view ref, const std::string& tar_path) override {
    auto r = call({"GET", prefix_ + "/images/" + escape(ref) + "/get"});
    if (!r) return tl::unexpected(r.error());
    if (r->status != 200) return tl::unexpected(detail::status_error(*r));
    std::FILE* f = std::fopen(tar_path.c_str(), "wb");
    if (f == nullptr) {
      return tl::unexpected(error{errc::bad_request, "cannot write " + tar_path});
    }
    const bool ok = std::fwrite(r->body.data(), 1, r->body.size(), f) == r->body.size();
    if (std::fclose(f) != 0 || !ok) {
      return tl::unexpected(error{errc::bad_request, "cannot write " + tar_path});
    }
    return {};
  }

  result<void> remove_image(std::string_view ref, bool force) override {
    return expect({"DELETE", prefix_ + "/images/" + escape(ref) + "?force=" + (force ? "1" : "0")},
                  {200});
  }

  result<void> remove_volume(std::string_view name) override {
    return expect({"DELETE", prefix_ + "/volumes/" + escape(name)}, {204});
  }

  result<void> pull_image(std::string_view ref, std::chrono::milliseconds timeout) override {
    // name[:tag][@digest]: a digest is the tag; no tag means latest (an empty tag would pull
    // every tag).
    std::string image(ref), tag;
    if (const auto at = image.find('@'); at != std::string::npos) {
      tag = image.substr(at + 1);
      image.erase(at);
    } else {
      const auto colon = image.rfind(':');
      const auto slash = image.rfind('/');
      if (colon != std::string::npos && (slash == std::string::npos || colon > slash)) {
        tag = image.substr(colon + 1);
        image.erase(colon);
      }
    }
    if (tag.empty()) tag = "latest";
    request rq{"POST",
               prefix_ + "/images/create?fromImage=" + escape(image) + "&tag=" + escape(tag)};
    rq.timeout = timeout;
    auto r = call(rq);
    if (!r) return tl::unexpected(r.error());
    if (r->status != 200) return tl::unexpected(detail::status_error(*r));
    auto lines = progress(*r);
    if (!lines) return tl::unexpected(lines.error());
    return {};
  }

  result<std::unique_ptr<subscription>> subscribe(const event_filter& f, event_handlers h) override;

  detail::transport& http() { return http_; }
  const std::string& prefix() const { return prefix_; }

 private:
  result<response> call(const request& r) { return http_.send(r); }

  result<void> expect(const request& r, std::initializer_list<long> ok) {
    auto resp = call(r);
    if (!resp) return tl::unexpected(resp.error());
    if (std::find(ok.begin(), ok.end(), resp->status) == ok.end()) {
      return tl::unexpected(detail::status_error(*resp));
    }
    return {};
  }

  result<json> get_json(const std::string& target) {
    auto r = call({"GET", target});
    if (!r) return tl::unexpected(r.error());
    if (r->status != 200) return tl::unexpected(detail::status_error(*r));
    return parse(*r);
  }

  detail::transport http_;
  version_info version_;
  std::string prefix_;
};

// ---- events ----

// Seconds with a fraction, as /events takes for since and until.
std::string event_time(std::int64_t ns) {
  return std::to_string(ns / 1'000'000'000) + "." +
         std::to_string(1'000'000'000 + ns % 1'000'000'000).substr(1);
}

std::int64_t wall_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string events_filters(const event_filter& f) {
  json filters = json::object();
  if (!f.types.empty()) filters["type"] = f.types;
  if (!f.actions.empty()) filters["event"] = f.actions;
  if (!f.labels.empty()) filters["label"] = label_filters(f.labels);
  return escape(dump(filters));
}

class subscription_impl final : public subscription {
 public:
  subscription_impl(engine_impl& e, event_filter f, event_handlers h)
      : engine_(e), filter_(std::move(f)), handlers_(std::move(h)) {
    thread_ = std::thread([this] { run(); });
  }
  ~subscription_impl() override {
    {
      std::lock_guard lock(mu_);
      stop_.store(true, std::memory_order_release);
    }
    cv_.notify_all();
    // Destroying a subscription from its own handler would join its own thread.
    if (std::this_thread::get_id() == thread_.get_id()) std::terminate();
    thread_.join();
  }
  bool connected() const noexcept override { return connected_.load(std::memory_order_acquire); }
  std::uint64_t connections() const noexcept override {
    return connections_.load(std::memory_order_acquire);
  }

 private:
  // A handler's exception must not unwind through libcurl's C frames: it is dropped here.
  template <class Fn, class... Args>
  static void guarded(const Fn& fn, Args&&... args) {
    if (!fn) return;
    try {
      fn(std::forward<Args>(args)...);
    } catch (...) {
    }
  }

  bool pause(std::chrono::milliseconds d) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, d, [&] { return stop_.load(std::memory_order_acquire); });
  }

  void run() {
    std::chrono::milliseconds backoff{100};
    while (!stop_.load(std::memory_order_acquire)) {
      // Resynchronize first; the stream then starts at the list's time, or a second before the
      // newest event seen (Docker stamps events before it orders them, so a late one may carry
      // an earlier time). Replayed duplicates are dropped. The daemon shares this clock.
      const std::int64_t listed_at = wall_ns();
      list_filter lf;
      lf.labels = filter_.labels;
      // A short deadline: the destructor waits for this call.
      auto listed = engine_.list_containers_within(lf, std::chrono::seconds(5));
      if (!listed) {
        guarded(handlers_.on_disconnect, listed.error());
        if (pause(backoff)) return;
        backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
        continue;
      }
      std::string buffer;
      bool opened = false;
      // Docker sends the status line and headers at once, the body only with the first event:
      // the connection counts from the headers, so a quiet daemon still reads as connected.
      const auto on_open = [&](long status) {
        if (status != 200) return;
        opened = true;
        connected_.store(true, std::memory_order_release);
        connections_.fetch_add(1, std::memory_order_acq_rel);
        guarded(handlers_.on_resync, *listed);
      };
      const auto on_data = [&](std::string_view chunk) {
        buffer.append(chunk);
        if (!opened) return true;  // an error body: reported below
        std::size_t nl;
        while ((nl = buffer.find('\n')) != std::string::npos) {
          deliver(std::string_view(buffer).substr(0, nl));
          buffer.erase(0, nl + 1);
        }
        return true;
      };
      const std::int64_t since = newest_ns_ > 0 ? newest_ns_ - 1'000'000'000 : listed_at;
      auto r = engine_.http().stream(
          {"GET", engine_.prefix() + "/events?filters=" + events_filters(filter_) +
                      "&since=" + event_time(since)},
          on_data, on_open, stop_, std::chrono::milliseconds(100));
      connected_.store(false, std::memory_order_release);
      if (stop_.load(std::memory_order_acquire)) return;
      error why{errc::unavailable, "the event stream ended"};
      if (!r) {
        why = r.error();
      } else if (*r != 200) {
        why = detail::status_error({*r, buffer});
      }
      guarded(handlers_.on_disconnect, why);
      if (opened) backoff = std::chrono::milliseconds(100);
      if (pause(backoff)) return;
      backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
    }
  }

  void deliver(std::string_view line) {
    const json j = json::parse(line, nullptr, false);
    if (!j.is_object()) return;
    event e;
    e.type = str(j, "Type");
    e.action = str(j, "Action");
    if (const auto a = j.find("Actor"); a != j.end() && a->is_object()) {
      e.id = str(*a, "ID");
      e.attributes = string_map(*a, "Attributes");
    }
    if (e.id.empty()) e.id = str(j, "id");
    e.time_nano = num(j, "timeNano");
    // Only exact repeats are dropped (a replay after a reconnect): events may arrive slightly
    // out of time order, and none of those may be lost.
    const std::string key =
        std::to_string(e.time_nano) + "/" + e.type + "/" + e.action + "/" + e.id;
    if (seen_.contains(key)) return;
    seen_.insert(key);
    seen_order_.push_back(key);
    // Docker replays at most its last 256 events: remembering 1024 covers every replay.
    if (seen_order_.size() > 1024) {
      seen_.erase(seen_order_.front());
      seen_order_.pop_front();
    }
    newest_ns_ = std::max(newest_ns_, e.time_nano);
    guarded(handlers_.on_event, e);
  }

  engine_impl& engine_;
  event_filter filter_;
  event_handlers handlers_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> connected_{false};
  std::atomic<std::uint64_t> connections_{0};
  std::int64_t newest_ns_ = 0;
  std::set<std::string> seen_;
  std::deque<std::string> seen_order_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

result<std::unique_ptr<subscription>> engine_impl::subscribe(const event_filter& f,
                                                             event_handlers h) {
  // A filter Docker refuses is the caller's error now, not a reconnect loop later: ask for an
  // empty window (until = since) with it, which Docker answers at once.
  const std::string now = event_time(wall_ns());
  auto probe = call({"GET", prefix_ + "/events?filters=" + events_filters(f) + "&since=" + now +
                                "&until=" + now});
  if (!probe) return tl::unexpected(probe.error());
  if (probe->status != 200) return tl::unexpected(detail::status_error(*probe));
  return std::unique_ptr<subscription>(std::make_unique<subscription_impl>(*this, f, std::move(h)));
}

}  // namespace

result<std::unique_ptr<engine>> make_engine(const options& o) {
  auto e = std::make_unique<engine_impl>(o);
  if (auto r = e->negotiate(); !r) return tl::unexpected(r.error());
  return std::unique_ptr<engine>(std::move(e));
}

}  // namespace berth::docker
