#include "records.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <random>

#include "berth/agent/util.hpp"

namespace berth::agent::sched {

namespace {

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

rc::health health_of(const std::optional<std::string>& h) {
  return h == "HEALTHY"     ? rc::health::healthy
         : h == "UNHEALTHY" ? rc::health::unhealthy
                            : rc::health::unknown;
}

// The record's deployment takes what reconcile decided; what reconcile does not know stays.
void assign(state::deployment& x, const rc::deployment& d) {
  x.id = d.id;
  x.status = word_of(statuses, d.status);
  x.task_definition = d.task_definition;
  x.desired_count = static_cast<std::int32_t>(d.desired_count);
  x.pending_count = static_cast<std::int32_t>(d.pending_count);
  x.running_count = static_cast<std::int32_t>(d.running_count);
  x.failed_tasks = static_cast<std::int32_t>(d.failed_tasks);
  x.created_at = d.created_at;
  x.updated_at = d.updated_at;
  x.rollout_state = word_of(rollouts, d.rollout);
  x.rollout_state_reason = d.rollout_reason;
}

}  // namespace

void records::damaged(const std::string& key, const std::string& why) {
  std::lock_guard lock(damaged_mu_);
  if (damaged_.insert(key).second) spdlog::error("store: {}", why);
}

result<std::optional<state::service>> records::load(const std::string& cluster,
                                                    const std::string& name) {
  const std::string key = cluster + "/" + name;
  auto doc = store_.get("service", key);
  if (!doc) return tl::unexpected(doc.error());
  if (!*doc) return std::nullopt;
  auto s = state::parse<state::service>(**doc, key);
  if (!s) {
    damaged(key, s.error().detail);
    return std::nullopt;
  }
  return std::optional<state::service>(std::move(*s));
}

std::optional<std::vector<state::service>> records::all(const std::string& cluster_prefix) {
  auto list = store_.list("service", cluster_prefix);
  if (!list) return std::nullopt;
  std::vector<state::service> out;
  for (const auto& [k, v] : *list) {
    auto s = state::parse<state::service>(v, k);
    if (s) {
      out.push_back(std::move(*s));
    } else {
      damaged(k, s.error().detail);
    }
  }
  return out;
}

// A protection's document: "protection" <cluster>/<task id> -> {"taskArn", "until"}.
std::optional<std::map<std::string, rc::seconds>> records::protections(const std::string& cluster) {
  auto list = store_.list("protection", cluster + "/");
  if (!list) return std::nullopt;
  std::map<std::string, rc::seconds> out;
  for (const auto& [k, v] : *list) {
    const json j = json::parse(v, nullptr, false);
    if (!j.is_object() || !j.value("taskArn", json()).is_string() ||
        !j.value("until", json()).is_number()) {
      damaged("protection " + k, "a task protection that does not parse");
      continue;
    }
    out[j["taskArn"].get<std::string>()] = j["until"].get<rc::seconds>();
  }
  return out;
}

result<void> records::protect(const std::string& cluster, const std::string& task_arn,
                              std::optional<rc::seconds> until) {
  const std::string key = cluster + "/" + task_arn.substr(task_arn.rfind('/') + 1);
  if (!until) return store_.erase("protection", key);
  return store_.put("protection", key, json{{"taskArn", task_arn}, {"until", *until}}.dump());
}

result<bool> records::commit(state::service& s) {
  const std::string key = name_of(s.cluster_arn) + "/" + s.service_name;
  const std::uint64_t expected = s.berth.revision;
  s.berth.revision = expected + 1;
  const std::string text = state::to_json(s).dump();
  s.berth.revision = expected;
  std::vector<const state::service_event*> fresh;  // events the stored record does not have yet
  bool won = false;
  auto r = store_.transaction([&](store& tx) -> result<void> {
    // The transaction runs this again when what it read changed before its commit: nothing
    // from an earlier run may count (a run that finds another revision writes nothing).
    won = false;
    auto cur = tx.get("service", key);
    if (!cur) return tl::unexpected(cur.error());
    // A record that does not parse is at revision 0: CreateService may write over it.
    std::optional<state::service> old;
    if (*cur) {
      if (auto o = state::parse<state::service>(**cur, key)) old = std::move(*o);
    }
    if ((old ? old->berth.revision : 0) != expected) return {};
    std::set<std::string> known;
    if (old) {
      for (const auto& e : old->events) known.insert(e.id);
    }
    fresh.clear();
    for (const auto& e : s.events) {
      if (!known.contains(e.id)) fresh.push_back(&e);
    }
    if (auto w = tx.put("service", key, text); !w) return w;
    won = true;
    return {};
  });
  if (!r) {
    spdlog::error("store: service {}: {}", key, r.error().message);
    return tl::unexpected(r.error());
  }
  if (!won) return false;
  s.berth.revision = expected + 1;
  // Logged here, oldest first; the event follower (event_follower.hpp) publishes them, as it
  // does the events every writer of the cluster adds.
  for (auto e = fresh.rbegin(); e != fresh.rend(); ++e) spdlog::info("{}", (*e)->message);
  return true;
}

void records::event(state::service& s, const std::string& message) {
  s.events.insert(
      s.events.begin(),
      state::service_event{uuid(), now_seconds(), "(service " + s.service_name + ") " + message});
  if (s.events.size() > 100) s.events.resize(100);
}

api_error undecodable(const std::string& action, const ecs::decode_error& e) {
  spdlog::error("service scheduler: {} answered what ECS's model refuses: {}", action, e.message);
  return {"ServerException", action + " answered: " + e.message, 500};
}

std::string deployment_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string id = "ecs-svc/";
  for (int i = 0; i < 19; ++i) id += static_cast<char>('0' + rng() % 10);
  return id;
}

rc::service to_service(const state::service& s, std::chrono::milliseconds deregistration_delay) {
  rc::service out;
  out.arn = s.service_arn;
  out.name = s.service_name;
  out.deleting = s.status == "DRAINING";
  out.daemon = s.scheduling_strategy == "DAEMON";
  out.external = s.deployment_controller.type == "EXTERNAL";
  out.desired_count = s.desired_count;
  const ecs::deployment_configuration& dc = s.deployment_configuration;
  out.maximum_percent = dc.maximum_percent.value_or(200);
  out.minimum_healthy_percent = dc.minimum_healthy_percent.value_or(100);
  if (dc.deployment_circuit_breaker) {
    out.circuit_breaker = dc.deployment_circuit_breaker->enable;
    out.rollback = dc.deployment_circuit_breaker->rollback;
  }
  out.health_check_grace_period = s.health_check_grace_period_seconds;
  out.deregistration_delay = std::chrono::duration<double>(deregistration_delay).count();
  for (const auto& t : s.tags) {
    if (t.key != "berth:deregistration-delay") continue;
    const std::string v = t.value.value_or("");
    long delay = 0;
    if (std::from_chars(v.data(), v.data() + v.size(), delay).ec == std::errc{}) {
      out.deregistration_delay = static_cast<double>(delay);
    }
  }
  for (const auto& lb : s.load_balancers) {
    out.load_balancers.push_back({lb.load_balancer_name.value_or(""),
                                  lb.container_name.value_or(""), lb.container_port.value_or(0)});
  }
  out.task_definition = s.task_definition;
  out.last_good = s.berth.last_good;
  out.steady = s.berth.steady;
  return out;
}

std::vector<rc::deployment> to_deployments(const state::service& s) {
  std::vector<rc::deployment> out;
  for (const auto& d : s.deployments) {
    out.push_back({.id = d.id,
                   .status = value_of(statuses, d.status, rc::deployment_status::inactive),
                   .task_definition = d.task_definition,
                   .desired_count = d.desired_count,
                   .pending_count = d.pending_count,
                   .running_count = d.running_count,
                   .failed_tasks = d.failed_tasks,
                   .created_at = d.created_at,
                   .updated_at = d.updated_at,
                   .rollout = value_of(rollouts, d.rollout_state, rc::rollout_state::in_progress),
                   .rollout_reason = d.rollout_state_reason});
  }
  return out;
}

rc::task to_task(const ecs::task& t, const std::set<std::string>& checked) {
  rc::task out;
  out.arn = t.task_arn.value_or("");
  out.deployment_id = t.started_by.value_or("");
  out.task_definition = t.task_definition_arn.value_or("");
  out.last_status = t.last_status.value_or("");
  out.desired_status = t.desired_status.value_or("");
  out.container_instance_arn = t.container_instance_arn.value_or("");
  out.health_status = health_of(t.health_status);
  out.created_at = t.created_at.value_or(0.0);
  out.started_at = t.started_at.value_or(0.0);
  out.stop_code = t.stop_code.value_or("");
  out.stopped_reason = t.stopped_reason.value_or("");
  for (const auto& c : items(t.containers)) {
    rc::container x;
    x.name = c.name.value_or("");
    x.has_health_check = checked.contains(x.name);
    x.health_status = health_of(c.health_status);
    for (const auto& b : items(c.network_bindings)) {
      x.bindings.push_back({b.container_port.value_or(-1), b.host_port.value_or(0),
                            b.bind_ip.value_or("127.0.0.1")});
    }
    x.exit_code = c.exit_code;
    out.containers.push_back(std::move(x));
  }
  return out;
}

state::deployment deployment_of(const rc::deployment& d) {
  state::deployment x;
  assign(x, d);
  return x;
}

void write_deployments(state::service& s, const std::vector<rc::deployment>& deps) {
  std::vector<state::deployment> out;
  out.reserve(deps.size());
  for (const auto& d : deps) {
    const auto old = std::find_if(s.deployments.begin(), s.deployments.end(),
                                  [&](const state::deployment& x) { return x.id == d.id; });
    state::deployment x = old != s.deployments.end() ? *old : state::deployment{};
    assign(x, d);
    out.push_back(std::move(x));
  }
  // The deployments that are done with go to the history, newest first.
  for (auto it = s.deployments.rbegin(); it != s.deployments.rend(); ++it) {
    const bool kept = std::any_of(deps.begin(), deps.end(),
                                  [&](const rc::deployment& d) { return d.id == it->id; });
    if (!kept) s.berth.history.insert(s.berth.history.begin(), *it);
  }
  if (s.berth.history.size() > state::max_history) s.berth.history.resize(state::max_history);
  s.deployments = std::move(out);
}

}  // namespace berth::agent::sched
