#include "records.hpp"

#include <spdlog/spdlog.h>

#include <charconv>
#include <random>

#include "berth/agent/util.hpp"

namespace berth::agent::sched {

namespace {

std::string key_of(const json& s) {
  return name_of(s["clusterArn"].get<std::string>()) + "/" + s["serviceName"].get<std::string>();
}

// ECS's words for the reconciler's enums, one table each way.
template <class E>
using words = std::pair<E, const char*>;
constexpr words<rc::deployment_status> statuses[] = {{rc::deployment_status::primary, "PRIMARY"},
                                                     {rc::deployment_status::active, "ACTIVE"},
                                                     {rc::deployment_status::inactive, "INACTIVE"}};
constexpr words<rc::rollout_state> rollouts[] = {{rc::rollout_state::in_progress, "IN_PROGRESS"},
                                                 {rc::rollout_state::completed, "COMPLETED"},
                                                 {rc::rollout_state::failed, "FAILED"}};

template <class E, std::size_t N>
const char* word_of(const words<E> (&table)[N], E v) {
  for (const auto& [e, w] : table) {
    if (e == v) return w;
  }
  return table[N - 1].second;
}

// A word the table lacks (or none) reads as `missing`: as the scheduler always read them, a
// status it does not know is INACTIVE, a rollout state IN_PROGRESS.
template <class E, std::size_t N>
E value_of(const words<E> (&table)[N], const std::string& w, E missing) {
  for (const auto& [e, x] : table) {
    if (w == x) return e;
  }
  return missing;
}

rc::health health_of(const json& j) {
  const std::string h = j.value("healthStatus", "UNKNOWN");
  return h == "HEALTHY"     ? rc::health::healthy
         : h == "UNHEALTHY" ? rc::health::unhealthy
                            : rc::health::unknown;
}

}  // namespace

std::uint64_t revision(const json& s) {
  if (!s.is_object()) return 0;
  const auto b = s.find("_berth");
  if (b == s.end() || !b->is_object()) return 0;
  return b->value("revision", std::uint64_t{0});
}

std::optional<json> records::load(const std::string& cluster, const std::string& name) {
  auto doc = store_.get("service", cluster + "/" + name);
  if (!doc || !*doc) return std::nullopt;
  json j = json::parse(**doc, nullptr, false);
  if (!j.is_object()) return std::nullopt;
  return j;
}

std::optional<std::vector<json>> records::all(const std::string& cluster_prefix) {
  auto list = store_.list("service", cluster_prefix);
  if (!list) return std::nullopt;
  std::vector<json> out;
  for (const auto& [k, v] : *list) {
    json s = json::parse(v, nullptr, false);
    if (s.is_object()) out.push_back(std::move(s));
  }
  return out;
}

result<bool> records::commit(json& s) {
  const std::string key = key_of(s);
  const std::uint64_t expected = revision(s);
  std::vector<json> fresh;  // events the stored record does not have yet
  bool won = false;
  auto r = store_.transaction([&](store& tx) -> result<void> {
    auto cur = tx.get("service", key);
    if (!cur) return tl::unexpected(cur.error());
    const json old = *cur ? json::parse(**cur, nullptr, false) : json();
    if (revision(old) != expected) return {};
    std::set<std::string> known;
    if (old.is_object()) {
      for (const auto& e : old.value("events", json::array())) known.insert(e.value("id", ""));
    }
    fresh.clear();
    for (const auto& e : s.value("events", json::array())) {
      if (!known.contains(e.value("id", ""))) fresh.push_back(e);
    }
    json next = s;
    next["_berth"]["revision"] = expected + 1;
    if (auto w = tx.put("service", key, next.dump()); !w) return w;
    won = true;
    return {};
  });
  if (!r) {
    spdlog::error("store: service {}: {}", key, r.error().message);
    return tl::unexpected(r.error());
  }
  if (!won) return false;
  s["_berth"]["revision"] = expected + 1;
  // Oldest first, as they happened.
  for (auto e = fresh.rbegin(); e != fresh.rend(); ++e) {
    spdlog::info("{}", (*e)["message"].get<std::string>());
    bus_.publish(json{{"version", "0"},
                      {"id", uuid()},
                      {"detail-type", "ECS Service Action"},
                      {"source", "aws.ecs"},
                      {"account", cfg_.account_id},
                      {"region", cfg_.region},
                      {"resources", {s["serviceArn"]}},
                      {"detail",
                       {{"eventType", "INFO"},
                        {"clusterArn", s["clusterArn"]},
                        {"serviceArn", s["serviceArn"]},
                        {"message", (*e)["message"]}}}}
                     .dump());
  }
  return true;
}

void records::event(json& s, const std::string& message) {
  json& events = s["events"];
  if (!events.is_array()) events = json::array();
  events.insert(events.begin(), json{{"id", uuid()},
                                     {"createdAt", now_seconds()},
                                     {"message", "(service " + s["serviceName"].get<std::string>() +
                                                     ") " + message}});
  if (events.size() > 100) events.erase(events.begin() + 100, events.end());
}

std::string deployment_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string id = "ecs-svc/";
  for (int i = 0; i < 19; ++i) id += static_cast<char>('0' + rng() % 10);
  return id;
}

json records::view(json s) {
  s.erase("_berth");
  return s;
}

rc::service to_service(const json& s, std::chrono::milliseconds deregistration_delay) {
  rc::service out;
  out.arn = s.value("serviceArn", "");
  out.name = s.value("serviceName", "");
  out.deleting = s.value("status", "") == "DRAINING";
  out.desired_count = s.value("desiredCount", std::int64_t{0});
  const json dc = s.value("deploymentConfiguration", json::object());
  out.maximum_percent = dc.value("maximumPercent", std::int64_t{200});
  out.minimum_healthy_percent = dc.value("minimumHealthyPercent", std::int64_t{100});
  const json cb = dc.value("deploymentCircuitBreaker", json::object());
  out.circuit_breaker = cb.value("enable", false);
  out.rollback = cb.value("rollback", false);
  out.health_check_grace_period = s.value("healthCheckGracePeriodSeconds", 0.0);
  out.deregistration_delay = std::chrono::duration<double>(deregistration_delay).count();
  for (const auto& t : s.value("tags", json::array())) {
    if (t.value("key", "") != "berth:deregistration-delay") continue;
    const std::string v = t.value("value", "");
    long delay = 0;
    if (std::from_chars(v.data(), v.data() + v.size(), delay).ec == std::errc{}) {
      out.deregistration_delay = static_cast<double>(delay);
    }
  }
  for (const auto& lb : s.value("loadBalancers", json::array())) {
    out.load_balancers.push_back({lb.value("loadBalancerName", ""), lb.value("containerName", ""),
                                  lb.value("containerPort", 0)});
  }
  out.task_definition = s.value("taskDefinition", "");
  const json b = s.value("_berth", json::object());
  if (b.contains("lastGood") && b["lastGood"].is_string()) out.last_good = b["lastGood"];
  out.steady = b.value("steady", false);
  return out;
}

std::vector<rc::deployment> to_deployments(const json& s) {
  std::vector<rc::deployment> out;
  for (const auto& d : s.value("deployments", json::array())) {
    rc::deployment x;
    x.id = d.value("id", "");
    x.status = value_of(statuses, d.value("status", ""), rc::deployment_status::inactive);
    x.task_definition = d.value("taskDefinition", "");
    x.desired_count = d.value("desiredCount", std::int64_t{0});
    x.pending_count = d.value("pendingCount", std::int64_t{0});
    x.running_count = d.value("runningCount", std::int64_t{0});
    x.failed_tasks = d.value("failedTasks", std::int64_t{0});
    x.created_at = d.value("createdAt", 0.0);
    x.updated_at = d.value("updatedAt", 0.0);
    x.rollout = value_of(rollouts, d.value("rolloutState", ""), rc::rollout_state::in_progress);
    x.rollout_reason = d.value("rolloutStateReason", "");
    out.push_back(std::move(x));
  }
  return out;
}

rc::task to_task(const json& t, const std::set<std::string>& checked) {
  rc::task out;
  out.arn = t.value("taskArn", "");
  out.deployment_id = t.value("startedBy", "");
  out.task_definition = t.value("taskDefinitionArn", "");
  out.last_status = t.value("lastStatus", "");
  out.desired_status = t.value("desiredStatus", "");
  out.health_status = health_of(t);
  out.created_at = t.value("createdAt", 0.0);
  out.started_at = t.value("startedAt", 0.0);
  out.stop_code = t.value("stopCode", "");
  out.stopped_reason = t.value("stoppedReason", "");
  for (const auto& c : t.value("containers", json::array())) {
    rc::container x;
    x.name = c.value("name", "");
    x.has_health_check = checked.contains(x.name);
    x.health_status = health_of(c);
    for (const auto& b : c.value("networkBindings", json::array())) {
      x.bindings.push_back({b.value("containerPort", -1), b.value("hostPort", 0),
                            b.value("bindIP", std::string("127.0.0.1"))});
    }
    if (c.contains("exitCode") && c["exitCode"].is_number_integer()) x.exit_code = c["exitCode"];
    out.containers.push_back(std::move(x));
  }
  return out;
}

json to_json(const rc::deployment& d) {
  return {{"id", d.id},
          {"status", word_of(statuses, d.status)},
          {"taskDefinition", d.task_definition},
          {"desiredCount", d.desired_count},
          {"pendingCount", d.pending_count},
          {"runningCount", d.running_count},
          {"failedTasks", d.failed_tasks},
          {"createdAt", d.created_at},
          {"updatedAt", d.updated_at},
          {"launchType", "EC2"},
          {"rolloutState", word_of(rollouts, d.rollout)},
          {"rolloutStateReason", d.rollout_reason}};
}

void write_deployments(json& s, const std::vector<rc::deployment>& deps) {
  json out = json::array();
  for (const auto& d : deps) {
    json j = to_json(d);
    for (const auto& old : s.value("deployments", json::array())) {
      if (old.value("id", "") != d.id) continue;
      // Members reconcile does not model are kept as they were.
      for (const auto& [k, v] : old.items()) {
        if (!j.contains(k)) j[k] = v;
      }
    }
    out.push_back(std::move(j));
  }
  s["deployments"] = std::move(out);
}

}  // namespace berth::agent::sched
