// berthd's wiring: store, Docker, the ECS service, the HTTP listeners and systemd.
#include <grp.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <regex>
#include <set>
#include <thread>

#include "account_settings.hpp"
#include "berth/agent.hpp"
#include "berth/agent/util.hpp"
#include "berth/api/audit.hpp"
#include "berth/api/request_check.hpp"
#include "berth/api/server.hpp"
#include "berth/api/sigv4.hpp"
#include "berth/lb.hpp"
#include "berth/scheduler/scheduler.hpp"
#include "berth/state.hpp"
#include "console_route.hpp"
#include "exec.hpp"
#include "service.hpp"

namespace berth::agent {

namespace {

constexpr std::string_view target_prefix = "AmazonEC2ContainerServiceV20141113.";
// Berth's own actions (the placement query) on the same endpoint.
constexpr std::string_view berth_prefix = "BerthV1.";
constexpr std::string_view exec_protocol = "berth-exec";

http_response error_response(const api_error& e) {
  http_response r;
  r.status = e.status;
  r.body = json{{"__type", e.type}, {"message", e.message}}.dump(-1, ' ', false,
                                                                 json::error_handler_t::replace);
  return r;
}

// The actions anyone may call: they change nothing.
bool read_only_action(const std::string& action) {
  return action.starts_with("Describe") || action.starts_with("List") || action.starts_with("Get");
}

// "a%20b" -> "a b" in a query value; a '%' not followed by two hex digits stays as it is.
std::string url_decode(std::string_view v) {
  const auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (v[i] == '%' && i + 2 < v.size() && hex(v[i + 1]) >= 0 && hex(v[i + 2]) >= 0) {
      out += static_cast<char>(hex(v[i + 1]) * 16 + hex(v[i + 2]));
      i += 2;
    } else {
      out += v[i] == '+' ? ' ' : v[i];
    }
  }
  return out;
}

std::map<std::string, std::string> query_of(const std::string& q) {
  std::map<std::string, std::string> out;
  std::size_t at = 0;
  while (at <= q.size() && !q.empty()) {
    const auto amp = q.find('&', at);
    const std::string part = q.substr(at, amp == std::string::npos ? std::string::npos : amp - at);
    const auto eq = part.find('=');
    if (!part.empty()) {
      out[url_decode(part.substr(0, eq))] =
          eq == std::string::npos ? std::string() : url_decode(part.substr(eq + 1));
    }
    if (amp == std::string::npos) break;
    at = amp + 1;
  }
  return out;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

http_response json_response(int status, const json& body, const std::string& type) {
  http_response r;
  r.status = status;
  r.content_type = type;
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return r;
}

// What one API call was, for the audit log and the metrics.
struct call_record {
  std::string action;  // as sent; empty when the request named none
  json identity = json::object();
  std::string request;  // the request as the audit log shows it (redact_text); empty: none
  bool read_only = false;
};

// A JSON object written member by member, as json::dump would write it: an audit record costs
// one string instead of a tree of nodes per call.
class json_writer {
 public:
  void string(std::string_view key, std::string_view value) {
    name(key);
    append_json_string(out_, value);
  }
  void value(std::string_view key, const json& v) {
    name(key);
    append_json(out_, v);
  }
  // `text`: a JSON value already written.
  void raw(std::string_view key, std::string_view text) {
    name(key);
    out_ += text;
  }
  std::string done() && {
    out_ += out_.empty() ? "{}" : "}";
    return std::move(out_);
  }

 private:
  void name(std::string_view key) {
    out_ += out_.empty() ? '{' : ',';
    append_json_string(out_, key);
    out_ += ':';
  }

  std::string out_;
};

class daemon_impl final : public daemon {
 public:
  daemon_impl(const config& c, credentials keys) : cfg_(c), keys_(std::move(keys)) {
    metrics_.counter("berth_api_calls_total", "ECS API calls, by action and result code");
    metrics_.histogram("berth_api_call_duration_seconds", "Time to answer an API call",
                       {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5});
    metrics_.histogram(
        "berth_docker_call_duration_seconds", "Time Docker took to answer, by operation",
        {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30});
    metrics_.counter("berth_docker_calls_total",
                     "Docker Engine API calls, by operation and status");
    metrics_.gauge("berth_event_subscribers", "Clients following the event stream");
    metrics_.counter("berth_events_published_total", "Events put on the event stream");
    metrics_.on_collect([this](metrics& m) {
      m.set("berth_event_subscribers", {}, static_cast<double>(bus_.subscribers()));
      m.set("berth_events_published_total", {}, static_cast<double>(bus_.published()));
    });
  }
  ~daemon_impl() override { stop(); }

  result<void> open(std::unique_ptr<store> st) {
    if (auto a = audit_.open(cfg_.state_dir + "/audit.log", cfg_.audit_max_bytes, cfg_.audit_keep);
        !a) {
      return a;
    }
    docker::options dopt;
    dopt.socket_path = cfg_.docker_socket;
    dopt.on_call = [this](std::string_view op, long status, std::chrono::nanoseconds took) {
      const std::string o(op);
      metrics_.observe("berth_docker_call_duration_seconds", {{"operation", o}},
                       std::chrono::duration<double>(took).count());
      metrics_.add("berth_docker_calls_total",
                   {{"operation", o}, {"status", std::to_string(status)}});
    };
    auto d = docker::make_engine(dopt);
    if (!d) return tl::unexpected(error{"docker: " + d.error().message});
    // One connection for the whole process (the store holds its file exclusively).
    std::shared_ptr<store> shared = std::move(st);
    auto svc = make_service(cfg_, share(shared), std::move(*d), metrics_, bus_);
    if (!svc) return tl::unexpected(svc.error());
    service_ = std::move(*svc);
    auto sched = make_scheduler(cfg_, share(shared), *service_, bus_, metrics_);
    if (!sched) return tl::unexpected(sched.error());
    scheduler_ = std::move(*sched);
    // A service task that starts, stops or turns unhealthy wakes the scheduler at once.
    service_->on_task_change([s = scheduler_.get()](const state::task& t) {
      if (t.ecs.group.value_or("").starts_with("service:")) s->wake();
    });
    return {};
  }

  result<void> listen() {
    server_options o;
    o.socket_path = cfg_.socket;
    o.tcp = cfg_.listen_tcp;
    o.max_body_bytes = cfg_.max_body_bytes;
    o.request_deadline = cfg_.request_timeout;
    o.privileged = [this](int uid, int gid, const std::vector<int>& groups) {
      return privileged(uid, gid, groups);
    };
    auto s = serve(o, [this](const http_request& r) { return handle(r); });
    if (!s) return tl::unexpected(s.error());
    server_ = std::move(*s);
    spdlog::info("serving the ECS API on {}{}", cfg_.socket,
                 cfg_.listen_tcp.empty() ? "" : " and " + server_->tcp_endpoint());
    sd_notifyf(0, "READY=1\nSTATUS=serving cluster %s", cfg_.cluster.c_str());
    std::uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
      watchdog_ = std::thread([this, usec] {
        std::unique_lock lock(mu_);
        while (!stopped_) {
          sd_notify(0, "WATCHDOG=1");
          cv_.wait_for(lock, std::chrono::microseconds(usec / 2), [&] { return stopped_; });
        }
      });
    }
    return {};
  }

  void stop() override {
    {
      std::lock_guard lock(mu_);
      if (stopped_) return;
      stopped_ = true;
    }
    sd_notify(0, "STOPPING=1");
    cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    bus_.close();
    if (server_) server_->stop();
    if (service_) service_->on_task_change(nullptr);
    if (scheduler_) scheduler_->shutdown();
    if (service_) {
      service_->shutdown();
      spdlog::info("stopped; tasks keep running");
    }
    audit_.flush_refused(std::numeric_limits<std::int64_t>::max());
  }

  void wait() override {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return stopped_; });
  }

 private:
  http_response handle(const http_request& r) {
    const std::string id = uuid();
    if (r.method == "GET") {
      http_response out = get(r);
      out.headers["x-amzn-RequestId"] = id;
      return out;
    }
    const auto began = std::chrono::steady_clock::now();
    call_record rec;
    http_response out = dispatch(r, rec);
    out.headers["x-amzn-RequestId"] = id;
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    std::string code = "200";
    std::string error_type, error_message;
    // 101: BerthV1.ExecuteCommand's session began.
    if (out.status != 200 && out.status != 101) {
      const json e = json::parse(out.body, nullptr, false);
      if (e.is_object()) {
        error_type = e.value("__type", "");
        error_message = e.value("message", "");
      }
      code = error_type.empty() ? std::to_string(out.status) : error_type;
    }
    // Only known actions get their own series: a caller cannot grow the label set at will.
    const std::string series = known_action(rec.action) ? rec.action : "unknown";
    metrics_.add("berth_api_calls_total", {{"action", series}, {"code", code}});
    metrics_.observe("berth_api_call_duration_seconds", {{"action", series}}, took);
    audit(r, rec, out, id, error_type, error_message);
    return out;
  }

  // CloudTrail's record of the call: never a secret, a signature or a whole large response.
  void audit(const http_request& r, const call_record& rec, const http_response& out,
             const std::string& id, const std::string& error_type,
             const std::string& error_message) {
    std::string response = "null";
    if (out.status == 200 && !rec.read_only) {
      const json body = json::parse(out.body, nullptr, false);
      if (!body.is_discarded()) response = redact_text(body, 16 * 1024);
    }
    const auto agent = r.headers.find("user-agent");
    // Members in json's (alphabetical) order, as when the record was built as a json object.
    json_writer w;
    w.string("awsRegion", cfg_.region);
    if (!error_type.empty() || (out.status != 200 && out.status != 101)) {
      w.string("errorCode", error_type.empty() ? std::to_string(out.status) : error_type);
      w.string("errorMessage", error_message);
    }
    w.string("eventCategory", "Management");
    w.string("eventID", uuid());
    w.string("eventName", std::string_view(rec.action).substr(0, 128));
    w.string("eventSource", "ecs.amazonaws.com");
    w.string("eventTime", utc_now());
    w.string("eventType", "AwsApiCall");
    w.string("eventVersion", "1.08");
    w.raw("managementEvent", "true");
    w.raw("readOnly", rec.read_only ? "true" : "false");
    w.string("recipientAccountId", cfg_.account_id);
    w.string("requestID", id);
    w.raw("requestParameters", rec.request.empty() ? "null" : rec.request);
    w.raw("responseElements", response);
    w.string("sourceIPAddress", r.tcp ? r.peer : "unix");
    w.string("userAgent", agent == r.headers.end()
                              ? std::string_view()
                              : std::string_view(agent->second).substr(0, 256));
    w.value("userIdentity", rec.identity);
    std::string record = std::move(w).done();
    // A refusal (not allowed, or not who it claims) is rate-limited per principal: the refused
    // cannot flood the trail. Every allowed call is written.
    static const std::set<std::string> refusals = {
        "AccessDeniedException", "IncompleteSignatureException", "InvalidSignatureException",
        "MissingAuthenticationTokenException", "UnrecognizedClientException"};
    if (refusals.contains(error_type)) {
      std::string principal = r.tcp ? "tcp:" + r.peer : "uid:" + std::to_string(r.uid);
      if (rec.identity.contains("principalId") && rec.identity["principalId"].is_string()) {
        principal = rec.identity["principalId"].get<std::string>();
      }
      // Rare, and held back as json (a coalesced one gains a member): parsed back.
      audit_.append_refused(principal, json::parse(record),
                            static_cast<std::int64_t>(std::time(nullptr)));
    } else {
      audit_.append_line(std::move(record));
    }
  }

  // May this Unix peer change things? Root, berthd's own user, and the admin group's members.
  bool privileged(int uid, int gid, const std::vector<int>& groups) const {
    if (uid == 0 || uid == static_cast<int>(::geteuid())) return true;
    char buf[16384];
    group gr{};
    group* found = nullptr;
    if (::getgrnam_r(cfg_.admin_group.c_str(), &gr, buf, sizeof buf, &found) != 0 ||
        found == nullptr) {
      return false;
    }
    const int admin = static_cast<int>(found->gr_gid);
    return gid == admin || std::find(groups.begin(), groups.end(), admin) != groups.end();
  }

  // The GET endpoints are read-only: open to every peer on the socket and to loopback peers on
  // TCP (as the ECS agent's introspection port); a TCP peer from elsewhere signs, as for POST.
  // The console's assets are open to all: a browser cannot sign the request for its page, and
  // the console's own API calls are signed (see console_route.hpp).
  http_response get(const http_request& r) {
    if (console_path(r.path())) return console_response(r, cfg_.region);
    if (r.tcp && !is_loopback(r.peer)) {
      signed_request sr{r.method, r.target, r.headers, r.body};
      if (auto who =
              verify_sigv4(sr, keys_, std::chrono::system_clock::now(), {cfg_.region, "ecs"});
          !who) {
        return error_response({who.error().type, who.error().message, 403});
      }
    }
    try {
      return read_endpoint(r);
    } catch (const std::exception& e) {
      spdlog::error("GET {} failed: {}", r.target, e.what());
      return json_response(500, {{"__type", "ServerException"}, {"message", e.what()}},
                           "application/json");
    }
  }

  static bool is_loopback(const std::string& address) {
    return address.starts_with("127.") || address == "::1" || address.starts_with("::ffff:127.");
  }

  http_response read_endpoint(const http_request& r) {
    const std::string path = r.path();
    const auto q = query_of(r.query());
    if (path == "/v1/metadata") return json_response(200, service_->metadata(), "application/json");
    if (path == "/v1/tasks") {
      // The ECS agent answers a failed lookup with an empty task, never an error message.
      const json empty = {{"Arn", ""},
                          {"KnownStatus", ""},
                          {"Family", ""},
                          {"Version", ""},
                          {"Containers", nullptr}};
      if (q.contains("dockerid") && q.contains("taskarn")) {
        return json_response(400, empty, "application/json");
      }
      const auto docker_id = q.contains("dockerid") ? q.at("dockerid") : std::string();
      const auto task_arn = q.contains("taskarn") ? q.at("taskarn") : std::string();
      if ((q.contains("dockerid") && docker_id.empty()) ||
          (q.contains("taskarn") && task_arn.empty())) {
        return json_response(400, empty, "application/json");
      }
      auto t = service_->introspect_tasks(docker_id, task_arn);
      if (!t) return json_response(t.error().status, empty, "application/json");
      return json_response(200, *t, "application/json");
    }
    if (path == "/metrics") {
      http_response out;
      out.content_type = "text/plain; version=0.0.4; charset=utf-8";
      out.body = metrics_.render();
      return out;
    }
    if (path == "/v1/events") {
      // Each follower holds a connection: a bounded number, leaving room for API callers.
      if (bus_.subscribers() >= max_followers) {
        return json_response(
            503,
            {{"__type", "ThrottlingException"}, {"message", "Too many event stream followers"}},
            "application/json");
      }
      // Subscribed before the headers go: an event after the client sees them is never missed.
      auto sub = bus_.subscribe();
      http_response out;
      out.content_type = "application/x-ndjson";
      out.stream = [this, sub](stream_sink& sink) {
        while (sink.alive()) {
          if (auto e = sub->next(std::chrono::milliseconds(250))) {
            if (!sink.write(*e + "\n")) break;
          } else if (sub->closed()) {
            break;
          }
        }
        bus_.unsubscribe(sub);
      };
      return out;
    }
    if (path == "/" || path.empty()) {
      return json_response(
          200, {{"AvailableCommands", {"/v1/metadata", "/v1/tasks", "/v1/events", "/metrics"}}},
          "application/json");
    }
    return json_response(404, {{"__type", "NotFound"}, {"message", "No such path: " + path}},
                         "application/json");
  }

  // The access key id an Authorization header names, signed correctly or not.
  static std::string claimed_key(const http_request& r) {
    const auto a = r.headers.find("authorization");
    if (a == r.headers.end()) return {};
    const auto c = a->second.find("Credential=");
    if (c == std::string::npos) return {};
    const auto from = c + 11;
    return a->second.substr(from, std::min<std::size_t>(a->second.find('/', from) - from, 128));
  }

  http_response dispatch(const http_request& r, call_record& rec) {
    const auto t = r.headers.find("x-amz-target");
    if (t != r.headers.end()) {
      const auto dot = t->second.find('.');
      rec.action = dot == std::string::npos ? t->second : t->second.substr(dot + 1);
    }
    rec.read_only = read_only_action(rec.action);
    bool read_only_key = false;
    std::string who_key;
    if (r.tcp) {
      rec.identity = {{"type", "Unknown"}, {"accountId", cfg_.account_id}};
      if (const auto k = claimed_key(r); !k.empty()) rec.identity["accessKeyId"] = k;
      signed_request sr{r.method, r.target, r.headers, r.body};
      auto who = verify_sigv4(sr, keys_, std::chrono::system_clock::now(), {cfg_.region, "ecs"});
      if (!who) {
        spdlog::info("refused a request from {}: {}", r.peer, who.error().type);
        return error_response({who.error().type, who.error().message, 400});
      }
      who_key = *who;
      const credential& cred = keys_.at(*who);
      read_only_key = cred.read_only;
      rec.identity = {{"type", "IAMUser"},
                      {"principalId", who_key},
                      {"arn", "arn:aws:iam::" + cfg_.account_id + ":user/" + cred.profile},
                      {"accountId", cfg_.account_id},
                      {"accessKeyId", who_key},
                      {"userName", cred.profile}};
    } else {
      rec.identity = {{"type", "UnixPeer"},
                      {"principalId", std::to_string(r.uid) + ":" + std::to_string(r.gid)},
                      {"uid", r.uid},
                      {"gid", r.gid},
                      {"accountId", cfg_.account_id}};
      if (!r.user.empty()) rec.identity["userName"] = r.user;
    }
    if (r.method != "POST") {
      return error_response(
          {"UnknownOperationException", "Only POST / with X-Amz-Target is served here", 400});
    }
    const bool ecs = t != r.headers.end() && t->second.starts_with(target_prefix);
    const bool berth = t != r.headers.end() && t->second.starts_with(berth_prefix);
    if (!ecs && !berth) {
      return error_response({"UnknownOperationException",
                             "Missing or foreign X-Amz-Target header; expected " +
                                 std::string(target_prefix) + "<Action>",
                             400});
    }
    // Nesting deeper than any ECS shape is refused before parsing: copying or printing it would
    // recurse that deep.
    if (json_nesting(r.body) > 32) {
      return error_response({"SerializationException", "The request body nests too deeply", 400});
    }
    json req = r.body.empty() ? json::object() : json::parse(r.body, nullptr, false);
    if (req.is_discarded()) {
      return error_response({"SerializationException", "The request body is not valid JSON", 400});
    }
    // As sent (check_request below drops null members), secrets hidden: the audit log's text.
    rec.request = redact_text(req);
    // A placement query that reserves nothing is a read.
    if (berth && rec.action == "Place" && req.is_object()) {
      const auto dry = req.find("dryRun");
      rec.read_only = dry != req.end() && dry->is_boolean() && dry->get<bool>();
    }
    if (!rec.read_only) {
      if (read_only_key) {
        return error_response({"AccessDeniedException",
                               "The key " + who_key + " may only call Describe* and List* actions",
                               400});
      }
      if (!r.tcp && !r.privileged) {
        return error_response({"AccessDeniedException",
                               "User " + std::to_string(r.uid) + " (gid " + std::to_string(r.gid) +
                                   ") may only call Describe* and List* "
                                   "actions: " +
                                   rec.action + " needs root or group " + cfg_.admin_group,
                               400});
      }
    }
    // Every member of the right type, in range and in its enum before a handler reads it.
    if (auto bad = check_request(rec.action, req); !bad.type.empty()) {
      return error_response({bad.type, bad.message, 400});
    }
    if (berth && rec.action == "ExecuteCommand") return execute_command(r, req);
    // Who the caller is and whether it may change anything (the console greys out what it
    // may not press); the audit log's identity, as AWS STS's GetCallerIdentity tells it.
    if (berth && rec.action == "GetCallerIdentity") {
      json who = rec.identity;
      who["readOnly"] = r.tcp ? read_only_key : !r.privileged;
      return json_response(200, who, "application/x-amz-json-1.1");
    }
    // Callers who may not change anything see environment values and secret-looking members
    // hidden, by the audit log's rule: reading a task definition is not reading its secrets.
    const bool admin = r.tcp ? !read_only_key : r.privileged;
    if (!berth && admin) {
      if (auto text = service_->call_serialized(rec.action, req)) {
        if (!*text) return error_response(text->error());
        http_response ok;
        ok.body = std::move(**text);
        return ok;
      }
    }
    // Account settings are the caller's: an IAM user's ARN, or the account's root for the Unix
    // socket's administrators.
    const std::string caller = rec.identity.contains("arn") && rec.identity["arn"].is_string()
                                   ? rec.identity["arn"].get<std::string>()
                                   : "arn:aws:iam::" + cfg_.account_id + ":root";
    tl::expected<json, api_error> result = berth ? berth_call(rec.action, req)
                                           : control::account_settings::serves(rec.action)
                                               ? service_->account_call(rec.action, req, caller)
                                           : scheduler_->serves(rec.action)
                                               ? scheduler_->call(rec.action, req)
                                               : service_->call(rec.action, req);
    if (!result) return error_response(result.error());
    http_response ok;
    ok.body = (admin ? *result : redact(*result, std::numeric_limits<std::size_t>::max()))
                  .dump(-1, ' ', false, json::error_handler_t::replace);
    return ok;
  }

  // BerthV1.ExecuteCommand (exec.hpp): 101, and the session on this connection.
  http_response execute_command(const http_request& r, const json& req) {
    const auto up = r.headers.find("upgrade");
    if (up == r.headers.end() || up->second != exec_protocol) {
      return error_response(
          {"InvalidParameterException",
           "BerthV1.ExecuteCommand carries its session on the request's connection: send it with "
           "Connection: Upgrade and Upgrade: " +
               std::string(exec_protocol) + " (berthctl execute-command does)",
           400});
    }
    auto session = exec::open(*service_, req);
    if (!session) return error_response(session.error());
    http_response out;
    out.status = 101;
    out.content_type = "application/vnd.berth.exec-stream";
    out.headers["Upgrade"] = std::string(exec_protocol);
    out.upgrade = std::move(*session);
    return out;
  }

  // Berth's own actions (X-Amz-Target: BerthV1.<Action>).
  tl::expected<json, api_error> berth_call(const std::string& action, const json& req) {
    if (action == "Place") return service_->place(req);
    if (action == "DescribeTaskUsage") return service_->task_usage(req);
    if (action == "TailContainerLogs") return exec::tail_logs(*service_, req);
    if (action == "DescribeLoadBalancerTargets") return load_balancer_targets(req);
    // CloudTrail's LookupEvents over this agent's audit log (admin only: it is not a Describe).
    if (action == "LookupEvents") {
      auto found = lookup_events(audit_.path(), cfg_.audit_keep, req);
      if (!found)
        return tl::unexpected(api_error{"InvalidParameterException", found.error().message});
      return std::move(*found);
    }
    return tl::unexpected(
        api_error{"UnknownOperationException", "Unknown operation: '" + action + "'"});
  }

  // BerthV1.DescribeLoadBalancerTargets: each named HAProxy backend's servers (one a task,
  // "berth-<task id>") as this berthd's HAProxy has them: address, status (UP, DOWN, DRAIN, MAINT,
  // …), the last health check, sessions. A backend HAProxy does not answer for is a failure.
  tl::expected<json, api_error> load_balancer_targets(const json& req) {
    const json names = req.is_object() ? req.value("loadBalancerNames", json()) : json();
    // A backend name as CreateService allows one: it goes into an HAProxy command line, where
    // ';' would start another command (this is a read: read-only keys may call it).
    static const std::regex backend("[A-Za-z0-9_.:-]{1,32}");
    if (!names.is_array() || names.empty() || names.size() > 10 ||
        !std::all_of(names.begin(), names.end(), [](const json& n) {
          return n.is_string() && std::regex_match(n.get<std::string>(), backend);
        })) {
      return tl::unexpected(api_error{
          "InvalidParameterException",
          "loadBalancerNames must name 1 to 10 backends, each 1 to 32 letters, digits, '_', '.', "
          "':' or '-'"});
    }
    if (cfg_.haproxy_socket.empty()) {
      return tl::unexpected(
          api_error{"InvalidParameterException",
                    "This berthd has no load balancer: start it with --haproxy-socket"});
    }
    const lb::haproxy h(cfg_.haproxy_socket);
    json out = {{"loadBalancers", json::array()}, {"failures", json::array()}};
    for (const auto& n : names) {
      auto servers = h.servers(n.get<std::string>());
      if (!servers) {
        out["failures"].push_back({{"arn", n}, {"reason", servers.error().message}});
        continue;
      }
      json targets = json::array();
      for (const auto& sv : *servers) {
        targets.push_back({{"name", sv.name},
                           {"address", sv.address},
                           {"status", sv.status},
                           {"check", sv.check},
                           {"sessions", sv.sessions}});
      }
      out["loadBalancers"].push_back({{"loadBalancerName", n}, {"targets", std::move(targets)}});
    }
    return out;
  }

  config cfg_;
  credentials keys_;
  metrics metrics_;
  event_bus bus_;
  audit_log audit_;
  std::unique_ptr<service> service_;
  std::unique_ptr<scheduler> scheduler_;  // uses service_: declared after it, destroyed first
  std::unique_ptr<http_server> server_;
  std::thread watchdog_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopped_ = false;
  static constexpr std::size_t max_followers = 64;
};

}  // namespace

namespace {

// The cluster's state: in etcd when endpoints are given, else in SQLite under the state dir.
result<std::unique_ptr<store>> open_state(const config& c) {
  if (c.etcd_endpoints.empty()) return open_sqlite_store(c.state_dir);
  // The state dir keeps what is this agent's alone (its audit log, its pid file).
  std::error_code ec;
  std::filesystem::create_directories(c.state_dir, ec);
  if (ec) return tl::unexpected(error{"cannot make " + c.state_dir + ": " + ec.message()});
  (void)::chmod(c.state_dir.c_str(), 0700);
  state::etcd_options o;
  o.endpoints = c.etcd_endpoints;
  o.cacert = c.etcd_cacert;
  o.cert = c.etcd_cert;
  o.key = c.etcd_key;
  o.user = c.etcd_user;
  o.password = c.etcd_password;
  auto s = state::make_etcd_store(o);
  if (!s) return tl::unexpected(error{"etcd: " + s.error().detail});
  std::shared_ptr<state::store> shared = std::move(*s);
  if (c.etcd_prefix != "/berth")
    shared = state::rebased(std::move(shared), "/berth", c.etcd_prefix);
  spdlog::info("cluster state in etcd at {} under {}", c.etcd_endpoints.front(), c.etcd_prefix);
  // While etcd is unreachable, reads are answered from what was read last (stale, logged).
  // RunTask reads its cluster and its task definition: from memory while nothing changes them.
  return remembering(over_state(std::move(shared)), {"cluster", "taskdef"});
}

}  // namespace

result<std::unique_ptr<daemon>> start(const config& c) {
  credentials keys;
  if (!c.listen_tcp.empty()) {
    auto k = load_credentials(c.credentials);
    if (!k) return tl::unexpected(k.error());
    keys = std::move(*k);
  }
  // Who runs on this state directory: berthd.pid names the process and its socket, so that a
  // second berthd refused on the store can say whom it met.
  if (auto free = socket_unserved(c.socket); !free) return tl::unexpected(free.error());
  const std::string pid_file = c.state_dir + "/berthd.pid";
  auto st = open_state(c);
  if (!st) {
    std::ifstream in(pid_file);
    std::string pid, socket;
    if (in >> pid >> socket) {
      return tl::unexpected(error{st.error().message + " (" + pid_file + ": berthd pid " + pid +
                                  ", socket " + socket + ", state dir " + c.state_dir + ")"});
    }
    return tl::unexpected(st.error());
  }
  {
    const std::string tmp = pid_file + ".tmp";
    std::ofstream(tmp, std::ios::trunc) << ::getpid() << "\n" << c.socket << "\n";
    (void)::chmod(tmp.c_str(), 0600);
    std::error_code ec;
    std::filesystem::rename(tmp, pid_file, ec);
  }
  auto dm = std::make_unique<daemon_impl>(c, std::move(keys));
  if (auto r = dm->open(std::move(*st)); !r) return tl::unexpected(r.error());
  if (auto r = dm->listen(); !r) return tl::unexpected(r.error());
  return std::unique_ptr<daemon>(std::move(dm));
}

}  // namespace berth::agent
