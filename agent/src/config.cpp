// berthd's configuration: flags over environment over file over defaults, every value checked.
#include "config.hpp"

#include <CLI/CLI.hpp>
#include <charconv>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "berth/agent.hpp"
#include "berth/lb.hpp"

namespace berth::agent {

namespace {

// One setting: its flag, its BERTH_ key, the ECS agent's key when there is one, and its help.
struct setting {
  const char* flag;
  const char* key;
  const char* ecs_key;
  const char* help;
};

constexpr setting settings[] = {
    {"--cluster", "BERTH_CLUSTER", "ECS_CLUSTER", "cluster to join (created if needed)"},
    {"--state-dir", "BERTH_STATE_DIR", "ECS_DATADIR", "where the store (SQLite) lives"},
    {"--socket", "BERTH_SOCKET", nullptr, "the API's Unix socket"},
    {"--listen-tcp", "BERTH_LISTEN_TCP", nullptr,
     "also serve the API on HOST:PORT (loopback unless you say otherwise); needs --credentials"},
    {"--credentials", "BERTH_CREDENTIALS", nullptr,
     "keys allowed on TCP, in ~/.aws/credentials format (SigV4 checked)"},
    {"--docker-socket", "BERTH_DOCKER_SOCKET", nullptr, "dockerd's socket"},
    {"--config", "BERTH_CONFIG", nullptr, "KEY=VALUE file (BERTH_* and ECS_* keys)"},
    {"--instance-address", "BERTH_INSTANCE_ADDRESS", nullptr,
     "address that tasks' network bindings report"},
    {"--host-ip", "BERTH_HOST_IP", nullptr, "address container ports are published on"},
    {"--imds-endpoint", "BERTH_IMDS_ENDPOINT", nullptr,
     "EC2 instance metadata service URL (off unless given)"},
    {"--region", "BERTH_REGION", "AWS_DEFAULT_REGION", "region in ARNs"},
    {"--account-id", "BERTH_ACCOUNT_ID", nullptr, "account id in ARNs"},
    {"--availability-zone", "BERTH_AVAILABILITY_ZONE", nullptr,
     "ecs.availability-zone attribute (default: <region>a)"},
    {"--instance-type", "BERTH_INSTANCE_TYPE", nullptr, "ecs.instance-type attribute"},
    {"--reserved-memory", "BERTH_RESERVED_MEMORY", "ECS_RESERVED_MEMORY",
     "MiB kept back from tasks"},
    {"--reserved-ports", "BERTH_RESERVED_PORTS", "ECS_RESERVED_PORTS",
     "host ports kept back from tasks, a JSON list"},
    {"--cpu-units", "BERTH_CPU_UNITS", nullptr,
     "CPU units this instance offers (default: 1024 per core the kernel reports)"},
    {"--memory-mib", "BERTH_MEMORY_MIB", nullptr,
     "memory this instance offers, MiB (default: the machine's, less --reserved-memory)"},
    {"--ledger-name", "BERTH_LEDGER_NAME", nullptr,
     "shared-memory ledger this agent mirrors the cluster into (default: the cluster's name)"},
    {"--ledger-slots", "BERTH_LEDGER_SLOTS", nullptr,
     "instances the ledger has rows for, 64 to 1048576, when it is made (default 65536)"},
    {"--heartbeat-ttl", "BERTH_HEARTBEAT_TTL", nullptr,
     "the agent's lease: peers see it disconnected this long after it stops (default 10s)"},
    {"--instance-lost-after", "BERTH_INSTANCE_LOST_AFTER", nullptr,
     "a disconnected instance is lost past this, its tasks stopped (default 5m)"},
    {"--attributes", "BERTH_INSTANCE_ATTRIBUTES", "ECS_INSTANCE_ATTRIBUTES",
     "custom instance attributes, a JSON object"},
    {"--stop-timeout", "BERTH_CONTAINER_STOP_TIMEOUT", "ECS_CONTAINER_STOP_TIMEOUT",
     "grace before SIGKILL when a task stops, e.g. 30s"},
    {"--log-level", "BERTH_LOG_LEVEL", "ECS_LOGLEVEL", "trace, debug, info, warn, error"},
    {"--admin-group", "BERTH_ADMIN_GROUP", nullptr,
     "group whose members may change things over the socket (others may only read)"},
    {"--audit-max-bytes", "BERTH_AUDIT_MAX_BYTES", nullptr,
     "rotate <state-dir>/audit.log past this size (0: never)"},
    {"--audit-keep", "BERTH_AUDIT_KEEP", nullptr, "rotated audit logs kept"},
    {"--task-cleanup-wait", "BERTH_TASK_CLEANUP_WAIT", "ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION",
     "how long a stopped task stays describable before its containers go, e.g. 3h"},
    {"--image-cleanup", "BERTH_IMAGE_CLEANUP", nullptr,
     "remove images tasks no longer use: true or false"},
    {"--image-cleanup-interval", "BERTH_IMAGE_CLEANUP_INTERVAL", "ECS_IMAGE_CLEANUP_INTERVAL",
     "how often unused images are looked for, e.g. 30m"},
    {"--image-minimum-age", "BERTH_IMAGE_MINIMUM_CLEANUP_AGE", "ECS_IMAGE_MINIMUM_CLEANUP_AGE",
     "an image unused for less than this stays, e.g. 1h"},
    {"--image-cleanup-exclude", "BERTH_IMAGE_CLEANUP_EXCLUDE", "ECS_EXCLUDE_UNTRACKED_IMAGE",
     "images (name:tag, comma-separated) never removed, e.g. ones no registry can give back"},
    {"--haproxy-socket", "BERTH_HAPROXY_SOCKET", nullptr,
     "HAProxy's runtime API, as haproxy.cfg's stats socket says it: a Unix socket's path (or "
     "unix@PATH), ipv4@HOST:PORT or ipv6@[HOST]:PORT; services' loadBalancers are its backends"},
    {"--deregistration-delay", "BERTH_DEREGISTRATION_DELAY", nullptr,
     "how long a draining target may keep sessions before its task stops, e.g. 300s"},
    {"--request-timeout", "BERTH_REQUEST_TIMEOUT", nullptr,
     "a request must arrive whole within this of its first byte, e.g. 10s"},
    {"--shutdown-timeout", "BERTH_SHUTDOWN_TIMEOUT", nullptr,
     "on SIGTERM, exit within this whatever is in flight, e.g. 20s"},
    {"--etcd-endpoints", "BERTH_ETCD_ENDPOINTS", nullptr,
     "keep the cluster's state in etcd: client URLs, comma-separated (default: SQLite in "
     "--state-dir)"},
    {"--etcd-prefix", "BERTH_ETCD_PREFIX", nullptr, "the cluster's keys in etcd start with this"},
    {"--etcd-cacert", "BERTH_ETCD_CACERT", nullptr, "CA bundle that signed etcd's certificate"},
    {"--etcd-cert", "BERTH_ETCD_CERT", nullptr, "client certificate for etcd (PEM)"},
    {"--etcd-key", "BERTH_ETCD_KEY", nullptr, "client certificate's key for etcd (PEM)"},
    {"--etcd-user", "BERTH_ETCD_USER", nullptr, "etcd user, or user:password as etcdctl takes it"},
    {"--etcd-password", "BERTH_ETCD_PASSWORD", nullptr,
     "etcd user's password (better in the environment or berth.conf than on the command line)"},
    {"--unknown-containers", "BERTH_UNKNOWN_CONTAINERS", nullptr,
     "containers labelled for this instance that the store does not know: refuse (to start), "
     "remove, or leave (running, unmanaged)"},
    {"--images-per-cycle", "BERTH_NUM_IMAGES_DELETE_PER_CYCLE", "ECS_NUM_IMAGES_DELETE_PER_CYCLE",
     "most images removed in one cleanup"},
};

std::string trim(std::string s) {
  const auto b = s.find_first_not_of(" \t\r");
  const auto e = s.find_last_not_of(" \t\r");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

// The ECS agent's ECS_DISABLE_IMAGE_CLEANUP says the opposite of BERTH_IMAGE_CLEANUP.
std::string inverted(const std::string& v) {
  if (v == "true") return "false";
  if (v == "false") return "true";
  return v;  // refused when applied, naming BERTH_IMAGE_CLEANUP
}

const setting* by_key(const std::string& k) {
  for (const auto& s : settings) {
    if (k == s.key || (s.ecs_key != nullptr && k == s.ecs_key)) return &s;
  }
  return nullptr;
}

}  // namespace

result<std::map<std::string, std::string>> parse_config_text(std::string_view text,
                                                             const std::string& path) {
  std::map<std::string, std::string> out;
  std::istringstream in{std::string(text)};
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    const auto eq = line.find('=');
    if (eq == std::string::npos) {
      return tl::unexpected(
          error{path + ":" + std::to_string(n) + ": expected KEY=VALUE, got '" + line + "'"});
    }
    const std::string k = trim(line.substr(0, eq));
    std::string v = trim(line.substr(eq + 1));
    if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front()) {
      v = v.substr(1, v.size() - 2);
    }
    if (k == "ECS_DISABLE_IMAGE_CLEANUP") {
      out["BERTH_IMAGE_CLEANUP"] = inverted(v);
      continue;
    }
    const setting* s = by_key(k);
    if (s == nullptr) {
      // The ECS agent's other keys are accepted and ignored; ours must be known.
      if (k.starts_with("BERTH_")) {
        return tl::unexpected(error{path + ":" + std::to_string(n) + ": unknown key " + k});
      }
      continue;
    }
    out[s->key] = v;
  }
  return out;
}

namespace {

result<std::map<std::string, std::string>> read_file(const std::string& path, bool required) {
  std::ifstream in(path);
  if (!in) {
    if (required) return tl::unexpected(error{"cannot read config file " + path});
    return std::map<std::string, std::string>{};
  }
  std::stringstream text;
  text << in.rdbuf();
  return parse_config_text(text.str(), path);
}

result<std::uint64_t> unsigned_of(const std::string& key, const std::string& v) {
  std::uint64_t x = 0;
  const auto r = std::from_chars(v.data(), v.data() + v.size(), x);
  if (r.ec != std::errc{} || r.ptr != v.data() + v.size()) {
    return tl::unexpected(error{key + ": '" + v + "' is not a whole number"});
  }
  return x;
}

// Go's duration syntax as the ECS agent reads it ("3h", "1h30m", "500ms"), or a bare number of
// seconds.
result<std::chrono::milliseconds> duration_of(const std::string& key, const std::string& v) {
  const char* p = v.data();
  const char* end = v.data() + v.size();
  std::uint64_t x = 0;
  auto r = std::from_chars(p, end, x);
  if (r.ec != std::errc{}) return tl::unexpected(error{key + ": '" + v + "' is not a duration"});
  if (r.ptr == end) return std::chrono::milliseconds(x * 1000);
  std::uint64_t total = 0;
  for (;;) {
    const char* u = r.ptr;
    while (r.ptr != end && std::isalpha(static_cast<unsigned char>(*r.ptr)) != 0) ++r.ptr;
    const std::string unit(u, r.ptr);
    std::uint64_t scale = 0;
    if (unit == "ms") scale = 1;
    if (unit == "s") scale = 1000;
    if (unit == "m") scale = 60'000;
    if (unit == "h") scale = 3'600'000;
    if (scale == 0) {
      return tl::unexpected(error{key + ": unknown unit in '" + v + "' (use ms, s, m or h)"});
    }
    total += x * scale;
    if (r.ptr == end) return std::chrono::milliseconds(total);
    r = std::from_chars(r.ptr, end, x);
    if (r.ec != std::errc{} || r.ptr == end) {
      return tl::unexpected(error{key + ": '" + v + "' is not a duration"});
    }
  }
}

result<bool> boolean_of(const std::string& key, const std::string& v) {
  if (v == "true" || v == "1" || v == "yes") return true;
  if (v == "false" || v == "0" || v == "no") return false;
  return tl::unexpected(error{key + ": '" + v + "' is not true or false"});
}

result<void> apply(config& c, const std::string& key, const std::string& v) {
  if (key == "BERTH_CLUSTER") {
    if (v.empty() || v.size() > 255) {
      return tl::unexpected(error{key + ": a cluster name is 1 to 255 characters"});
    }
    for (const char ch : v) {
      if (std::isalnum(static_cast<unsigned char>(ch)) == 0 && ch != '-' && ch != '_') {
        return tl::unexpected(
            error{key + ": '" + v + "' may hold only letters, digits, hyphens and underscores"});
      }
    }
    c.cluster = v;
  } else if (key == "BERTH_STATE_DIR") {
    c.state_dir = v;
  } else if (key == "BERTH_SOCKET") {
    c.socket = v;
  } else if (key == "BERTH_LISTEN_TCP") {
    if (!v.empty() && v.rfind(':') == std::string::npos) {
      return tl::unexpected(error{key + ": '" + v + "' is not HOST:PORT"});
    }
    c.listen_tcp = v;
  } else if (key == "BERTH_CREDENTIALS") {
    c.credentials = v;
  } else if (key == "BERTH_DOCKER_SOCKET") {
    c.docker_socket = v.starts_with("unix://") ? v.substr(7) : v;
  } else if (key == "BERTH_CONFIG") {
    c.config_file = v;
  } else if (key == "BERTH_INSTANCE_ADDRESS") {
    c.instance_address = v;
  } else if (key == "BERTH_HOST_IP") {
    c.host_ip = v;
  } else if (key == "BERTH_IMDS_ENDPOINT") {
    c.imds_endpoint = v;
  } else if (key == "BERTH_REGION") {
    c.region = v;
  } else if (key == "BERTH_ACCOUNT_ID") {
    if (v.size() != 12 || v.find_first_not_of("0123456789") != std::string::npos) {
      return tl::unexpected(error{key + ": an account id is 12 digits"});
    }
    c.account_id = v;
  } else if (key == "BERTH_AVAILABILITY_ZONE") {
    c.availability_zone = v;
  } else if (key == "BERTH_INSTANCE_TYPE") {
    c.instance_type = v;
  } else if (key == "BERTH_RESERVED_MEMORY") {
    auto x = unsigned_of(key, v);
    if (!x) return tl::unexpected(x.error());
    c.reserved_memory_mib = *x;
  } else if (key == "BERTH_CPU_UNITS" || key == "BERTH_MEMORY_MIB") {
    auto x = unsigned_of(key, v);
    if (!x) return tl::unexpected(x.error());
    if (*x == 0 || *x > 0xffffffffull) {
      return tl::unexpected(error{key + ": '" + v + "' is not between 1 and 4294967295"});
    }
    (key == "BERTH_CPU_UNITS" ? c.cpu_units : c.memory_mib) = static_cast<std::uint32_t>(*x);
  } else if (key == "BERTH_LEDGER_NAME") {
    c.ledger_name = v;
  } else if (key == "BERTH_LEDGER_SLOTS") {
    auto x = unsigned_of(key, v);
    if (!x) return tl::unexpected(x.error());
    if (*x < 64 || *x > 1048576) {
      return tl::unexpected(error{key + ": '" + v + "' is not between 64 and 1048576"});
    }
    c.ledger_slots = static_cast<std::uint32_t>(*x);
  } else if (key == "BERTH_HEARTBEAT_TTL" || key == "BERTH_INSTANCE_LOST_AFTER") {
    auto d = duration_of(key, v);
    if (!d) return tl::unexpected(d.error());
    if (*d < std::chrono::seconds(1)) return tl::unexpected(error{key + ": at least 1s"});
    (key == "BERTH_HEARTBEAT_TTL" ? c.heartbeat_ttl : c.instance_lost_after) =
        std::chrono::duration_cast<std::chrono::seconds>(*d);
  } else if (key == "BERTH_RESERVED_PORTS") {
    const auto j = nlohmann::json::parse(v, nullptr, false);
    if (!j.is_array()) {
      return tl::unexpected(error{key + ": '" + v + "' is not a JSON list of ports"});
    }
    c.reserved_ports.clear();
    for (const auto& p : j) {
      if (!p.is_number_unsigned() || p.get<std::uint64_t>() == 0 ||
          p.get<std::uint64_t>() > 65535) {
        return tl::unexpected(error{key + ": " + p.dump() + " is not a port (1-65535)"});
      }
      c.reserved_ports.push_back(p.get<std::uint16_t>());
    }
  } else if (key == "BERTH_INSTANCE_ATTRIBUTES") {
    const auto j = nlohmann::json::parse(v, nullptr, false);
    if (!j.is_object()) {
      return tl::unexpected(error{key + ": '" + v + "' is not a JSON object of strings"});
    }
    for (const auto& [k, val] : j.items()) {
      if (!val.is_string()) {
        return tl::unexpected(error{key + ": the value of '" + k + "' is not a string"});
      }
      c.attributes[k] = val.get<std::string>();
    }
  } else if (key == "BERTH_CONTAINER_STOP_TIMEOUT") {
    auto d = duration_of(key, v);
    if (!d) return tl::unexpected(d.error());
    c.stop_timeout = *d;
  } else if (key == "BERTH_ADMIN_GROUP") {
    c.admin_group = v;
  } else if (key == "BERTH_AUDIT_MAX_BYTES") {
    auto x = unsigned_of(key, v);
    if (!x) return tl::unexpected(x.error());
    c.audit_max_bytes = *x;
  } else if (key == "BERTH_AUDIT_KEEP") {
    auto x = unsigned_of(key, v);
    if (!x) return tl::unexpected(x.error());
    if (*x > 1000) return tl::unexpected(error{key + ": at most 1000 files"});
    c.audit_keep = static_cast<unsigned>(*x);
  } else if (key == "BERTH_TASK_CLEANUP_WAIT") {
    auto d = duration_of(key, v);
    if (!d) return tl::unexpected(d.error());
    if (*d < std::chrono::seconds(1)) return tl::unexpected(error{key + ": at least 1s"});
    c.task_cleanup_wait = *d;
  } else if (key == "BERTH_IMAGE_CLEANUP") {
    auto b = boolean_of(key, v);
    if (!b) return tl::unexpected(b.error());
    c.image_cleanup = *b;
  } else if (key == "BERTH_IMAGE_CLEANUP_INTERVAL") {
    auto d = duration_of(key, v);
    if (!d) return tl::unexpected(d.error());
    if (*d < std::chrono::seconds(1)) return tl::unexpected(error{key + ": at least 1s"});
    c.image_cleanup_interval = *d;
  } else if (key == "BERTH_IMAGE_MINIMUM_CLEANUP_AGE") {
    auto d = duration_of(key, v);
    if (!d) return tl::unexpected(d.error());
    c.image_minimum_age = *d;
  } else if (key == "BERTH_IMAGE_CLEANUP_EXCLUDE") {
    c.image_cleanup_exclude.clear();
    std::stringstream in(v);
    std::string name;
    while (std::getline(in, name, ',')) {
      if (!trim(name).empty()) c.image_cleanup_exclude.push_back(trim(name));
    }
  } else if (key == "BERTH_HAPROXY_SOCKET") {
    // Empty: no load balancer. Anything else must be an address berth::lb can connect to.
    if (auto ok = lb::haproxy::check_address(v); !v.empty() && !ok) {
      return tl::unexpected(error{key + ": " + ok.error().message});
    }
    c.haproxy_socket = v;
  } else if (key == "BERTH_DEREGISTRATION_DELAY") {
    auto d = duration_of(key, v);
    if (!d) return tl::unexpected(d.error());
    c.deregistration_delay = *d;
  } else if (key == "BERTH_NUM_IMAGES_DELETE_PER_CYCLE") {
    auto x = unsigned_of(key, v);
    if (!x) return tl::unexpected(x.error());
    if (*x < 1 || *x > 1000) return tl::unexpected(error{key + ": between 1 and 1000"});
    c.images_per_cycle = static_cast<unsigned>(*x);
  } else if (key == "BERTH_REQUEST_TIMEOUT") {
    auto d = duration_of(key, v);
    if (!d) return tl::unexpected(d.error());
    if (*d < std::chrono::milliseconds(100)) return tl::unexpected(error{key + ": at least 100ms"});
    c.request_timeout = *d;
  } else if (key == "BERTH_SHUTDOWN_TIMEOUT") {
    auto d = duration_of(key, v);
    if (!d) return tl::unexpected(d.error());
    if (*d < std::chrono::seconds(1)) return tl::unexpected(error{key + ": at least 1s"});
    c.shutdown_timeout = *d;
  } else if (key == "BERTH_ETCD_ENDPOINTS") {
    c.etcd_endpoints.clear();
    std::stringstream in(v);
    std::string url;
    while (std::getline(in, url, ',')) {
      url = trim(url);
      if (url.empty()) continue;
      if (!url.starts_with("http://") && !url.starts_with("https://")) {
        return tl::unexpected(error{key + ": '" + url + "' is not an http:// or https:// URL"});
      }
      while (url.ends_with("/")) url.pop_back();
      c.etcd_endpoints.push_back(url);
    }
  } else if (key == "BERTH_ETCD_PREFIX") {
    if (!v.starts_with("/") || v.size() < 2 || v.ends_with("/")) {
      return tl::unexpected(error{key + ": '" + v + "' must start with / and not end with it"});
    }
    c.etcd_prefix = v;
  } else if (key == "BERTH_ETCD_CACERT") {
    c.etcd_cacert = v;
  } else if (key == "BERTH_ETCD_CERT") {
    c.etcd_cert = v;
  } else if (key == "BERTH_ETCD_KEY") {
    c.etcd_key = v;
  } else if (key == "BERTH_ETCD_USER") {
    const auto colon = v.find(':');
    c.etcd_user = v.substr(0, colon);
    if (colon != std::string::npos) c.etcd_password = v.substr(colon + 1);
  } else if (key == "BERTH_ETCD_PASSWORD") {
    c.etcd_password = v;
  } else if (key == "BERTH_UNKNOWN_CONTAINERS") {
    if (v != "refuse" && v != "remove" && v != "leave") {
      return tl::unexpected(error{key + ": '" + v + "' is not refuse, remove or leave"});
    }
    c.unknown_containers = v;
  } else if (key == "BERTH_LOG_LEVEL") {
    static const char* levels[] = {"trace", "debug", "info", "warn", "error", "crit"};
    if (std::find(std::begin(levels), std::end(levels), v) == std::end(levels)) {
      return tl::unexpected(error{key + ": unknown level '" + v + "'"});
    }
    c.log_level = v;
  }
  return {};
}

}  // namespace

result<void> apply_settings(config& c, const std::map<std::string, std::string>& settings) {
  for (const auto& [k, v] : settings) {
    if (auto r = apply(c, k, v); !r) return r;
  }
  return {};
}

result<config> load_config(int argc, const char* const* argv,
                           const std::map<std::string, std::string>& environment) {
  config c;
  CLI::App app{
      "berthd: the Berth node agent. Speaks the Amazon ECS API on a Unix socket (and, "
      "with --listen-tcp, on TCP with SigV4), runs tasks on Docker.\n"
      "Every flag is also a KEY=VALUE in the config file or the environment (the "
      "BERTH_* key shown; the ECS agent's ECS_* key where one exists)."};
  app.set_help_flag("-h,--help", "print this help and exit");
  std::map<std::string, std::string> from_flags;
  std::vector<std::string> raw(std::size(settings));
  for (std::size_t i = 0; i < std::size(settings); ++i) {
    const setting& s = settings[i];
    std::string help = std::string(s.help) + " [" + s.key;
    if (s.ecs_key != nullptr) help += ", " + std::string(s.ecs_key);
    help += "]";
    // Given twice, the last wins: a wrapper's default can be overridden.
    app.add_option(s.flag, raw[i], help)->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    c.show_help = true;
    c.help_text = app.help();
    return c;
  } catch (const CLI::ParseError& e) {
    return tl::unexpected(error{e.what()});
  }
  for (std::size_t i = 0; i < std::size(settings); ++i) {
    if (app.count(settings[i].flag) > 0) from_flags[settings[i].key] = raw[i];
  }
  std::map<std::string, std::string> from_env;
  for (const auto& [k, v] : environment) {
    if (k == "ECS_DISABLE_IMAGE_CLEANUP") from_env["BERTH_IMAGE_CLEANUP"] = inverted(v);
    if (const setting* s = by_key(k)) from_env[s->key] = v;
  }
  // The file is named by flag or environment, or the default (optional when defaulted).
  std::string file = c.config_file;
  bool required = false;
  if (from_env.contains("BERTH_CONFIG")) file = from_env["BERTH_CONFIG"], required = true;
  if (from_flags.contains("BERTH_CONFIG")) file = from_flags["BERTH_CONFIG"], required = true;
  auto from_file = read_file(file, required);
  if (!from_file) return tl::unexpected(from_file.error());
  std::map<std::string, std::string> merged = *from_file;
  for (const auto& [k, v] : from_env) merged[k] = v;
  for (const auto& [k, v] : from_flags) merged[k] = v;
  merged["BERTH_CONFIG"] = file;
  if (auto r = apply_settings(c, merged); !r) return tl::unexpected(r.error());
  if (c.availability_zone.empty()) c.availability_zone = c.region + "a";
  if (c.ledger_name.empty()) c.ledger_name = c.cluster;
  if (c.instance_lost_after < c.heartbeat_ttl) {
    return tl::unexpected(error{"--instance-lost-after must be at least --heartbeat-ttl"});
  }
  if (!c.listen_tcp.empty() && c.credentials.empty()) {
    return tl::unexpected(error{"--listen-tcp needs --credentials: TCP requests are signed"});
  }
  return c;
}

}  // namespace berth::agent
