// ECS's daemons over DAEMON service records: see daemons.hpp.
#include "daemons.hpp"

#include <algorithm>
#include <cmath>
#include <regex>

#include "berth/agent/util.hpp"
#include "deployments.hpp"

namespace berth::agent::sched {

namespace {

using outcome = tl::expected<json, api_error>;
using control::decode_request;
using control::invalid;

constexpr std::string_view record_prefix = "daemon:";
// ECS's default share of a daemon's instances replaced at once.
constexpr double default_drain_percent = 25;

std::string name_of_daemon(const state::service& s) {
  return s.service_name.substr(record_prefix.size());
}

api_error not_found(const std::string& arn) {
  return {"DaemonNotFoundException", "The daemon does not exist: " + arn};
}

// "arn:aws:ecs:<region>:<account>:<kind>/<p1>/<p2>[/<p3>]": the parts after the kind, `n` of
// them, none empty.
std::optional<std::vector<std::string>> parts_of(const std::string& arn, const std::string& kind,
                                                 std::size_t n) {
  const std::string marker = ":" + kind + "/";
  const auto at = arn.find(marker);
  if (!arn.starts_with("arn:") || at == std::string::npos) return std::nullopt;
  std::vector<std::string> out;
  std::string rest = arn.substr(at + marker.size());
  for (std::size_t from = 0;;) {
    const auto slash = rest.find('/', from);
    out.push_back(rest.substr(from, slash == std::string::npos ? slash : slash - from));
    if (out.back().empty()) return std::nullopt;
    if (slash == std::string::npos) break;
    from = slash + 1;
  }
  if (out.size() != n) return std::nullopt;
  return out;
}

// A capacity provider as named in a request (its name or ARN), as a name.
std::string provider_name(const std::string& ref) {
  const auto at = ref.find(":capacity-provider/");
  return ref.starts_with("arn:") && at != std::string::npos
             ? ref.substr(at + std::char_traits<char>::length(":capacity-provider/"))
             : ref;
}

std::string api_status(const state::service& s) {
  return s.status == "ACTIVE" ? "ACTIVE" : "DELETE_IN_PROGRESS";
}

}  // namespace

bool daemons::serves(const std::string& action) {
  static const std::set<std::string> all = {"CreateDaemon",
                                            "UpdateDaemon",
                                            "DeleteDaemon",
                                            "DescribeDaemon",
                                            "ListDaemons",
                                            "ListDaemonDeployments",
                                            "DescribeDaemonDeployments",
                                            "DescribeDaemonRevisions"};
  return all.contains(action);
}

outcome daemons::call(const std::string& action, const json& body) {
  if (action == "CreateDaemon") return create(body);
  if (action == "UpdateDaemon") return update(body);
  if (action == "DeleteDaemon") return remove(body);
  if (action == "DescribeDaemon") return describe(body);
  if (action == "ListDaemons") return list(body);
  if (action == "ListDaemonDeployments") return list_deployments(body);
  if (action == "DescribeDaemonDeployments") {
    BERTH_TRY(r, decode_request<ecs::describe_daemon_deployments_request>(body));
    return describe_deployments(r.daemon_deployment_arns, false);
  }
  BERTH_TRY(r, decode_request<ecs::describe_daemon_revisions_request>(body));
  return describe_deployments(r.daemon_revision_arns, true);
}

// ---- what the actions share ----

tl::expected<std::pair<std::string, std::vector<std::string>>, api_error> daemons::cluster(
    const std::optional<std::string>& ref) {
  const std::string c = ref ? name_of(*ref) : "default";
  ecs::describe_clusters_request q;
  q.clusters = {c};
  BERTH_TRY(d, ask<ecs::describe_clusters_response>(tasks_, "DescribeClusters", q));
  if (items(d.clusters).empty() || d.clusters->front().status != "ACTIVE") {
    return tl::unexpected(api_error{"ClusterNotFoundException", "Cluster not found."});
  }
  return std::pair{c, items(d.clusters->front().capacity_providers)};
}

tl::expected<state::service, api_error> daemons::find(const std::string& arn) {
  const auto parts = parts_of(arn, "daemon", 2);
  if (!parts) {
    return tl::unexpected(invalid("'" + arn +
                                  "' is not a daemon ARN "
                                  "(arn:aws:ecs:<region>:<account>:daemon/<cluster>/<name>)"));
  }
  auto s = recs_.load((*parts)[0], std::string(record_prefix) + (*parts)[1]);
  if (!s) {
    return tl::unexpected(
        api_error{"ServerException", "The daemon could not be read: " + s.error().message, 500});
  }
  if (!*s || (*s)->status == "INACTIVE" || !is_daemon(**s)) {
    return tl::unexpected(not_found(arn));
  }
  return std::move(**s);
}

tl::expected<std::string, api_error> daemons::task_definition(const std::string& ref) {
  if (ref.empty()) return tl::unexpected(invalid("'daemonTaskDefinitionArn' is required"));
  ecs::describe_daemon_task_definition_request q;
  q.daemon_task_definition = ref;
  BERTH_TRY(d, ask<ecs::describe_daemon_task_definition_response>(
                   tasks_, "DescribeDaemonTaskDefinition", q));
  if (!d.daemon_task_definition || d.daemon_task_definition->status != "ACTIVE") {
    return tl::unexpected(control::client("The daemon task definition is not ACTIVE: " + ref));
  }
  return d.daemon_task_definition->daemon_task_definition_arn.value_or(ref);
}

tl::expected<std::vector<std::string>, api_error> daemons::providers(
    const std::vector<std::string>& given, const std::vector<std::string>& associated,
    const std::string& cluster) {
  if (given.empty()) return tl::unexpected(invalid("capacityProviderArns must name at least one"));
  std::vector<std::string> out;
  for (const auto& ref : given) {
    const std::string name = provider_name(ref);
    if (name == "FARGATE" || name == "FARGATE_SPOT") {
      return tl::unexpected(invalid("Daemons run on container instances, not on " + name));
    }
    if (std::find(associated.begin(), associated.end(), name) == associated.end()) {
      return tl::unexpected(invalid(
          "The capacity provider '" + name + "' is not associated with the cluster " + cluster +
          ": add it with PutClusterCapacityProviders (in Berth, each of a cluster's capacity "
          "providers stands for all its container instances)"));
    }
    if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
  }
  return out;
}

tl::expected<void, api_error> daemons::configure(
    state::service& s, const std::optional<ecs::daemon_deployment_configuration>& given) {
  auto& settings = *s.berth.daemon;
  ecs::daemon_deployment_configuration c = settings.configuration;
  if (given) {
    if (given->drain_percent) c.drain_percent = given->drain_percent;
    if (given->bake_time_in_minutes) c.bake_time_in_minutes = given->bake_time_in_minutes;
    if (given->alarms) c.alarms = given->alarms;
  }
  const double drain = c.drain_percent.value_or(default_drain_percent);
  if (!(drain > 0 && drain <= 100)) {
    return tl::unexpected(
        invalid("drainPercent must be above 0 and at most 100: a daemon's task on an instance "
                "stops before its replacement starts there"));
  }
  if (c.bake_time_in_minutes.value_or(0) < 0) {
    return tl::unexpected(invalid("bakeTimeInMinutes must be at least 0"));
  }
  if (c.alarms && c.alarms->enable.value_or(false)) {
    return tl::unexpected(api_error{
        "UnsupportedFeatureException",
        "Berth has no CloudWatch alarms: a daemon deployment rolls back when its tasks fail to "
        "start (its circuit breaker)."});
  }
  c.drain_percent = drain;
  settings.configuration = c;
  s.deployment_configuration = {ecs::deployment_circuit_breaker{true, true}, 100,
                                100 - static_cast<std::int32_t>(std::floor(drain))};
  return {};
}

std::string daemons::arn_of(const state::service& s, const char* kind,
                            const std::string& id) const {
  return recs_.arn(std::string(kind) + "/" + name_of(s.cluster_arn) + "/" + name_of_daemon(s) +
                   "/" + id.substr(id.rfind('/') + 1));
}

// ---- the actions ----

outcome daemons::create(const json& body) {
  BERTH_TRY(r, decode_request<ecs::create_daemon_request>(body));
  const std::string& name = r.daemon_name;
  if (!std::regex_match(name, std::regex("[A-Za-z0-9_-]{1,255}"))) {
    return tl::unexpected(
        invalid("daemonName may hold up to 255 letters, digits, hyphens and underscores"));
  }
  BERTH_TRY(c, cluster(r.cluster_arn));
  const auto& [cl, associated] = c;
  BERTH_TRY(names, providers(r.capacity_provider_arns, associated, cl));
  BERTH_TRY(td, task_definition(r.daemon_task_definition_arn));
  const std::string tags = r.propagate_tags.value_or("NONE");
  if (tags != "DAEMON" && tags != "NONE") {
    return tl::unexpected(invalid("propagateTags must be DAEMON or NONE"));
  }
  auto old = recs_.load(cl, std::string(record_prefix) + name);
  if (!old) {
    return tl::unexpected(
        api_error{"ServerException", "The daemon could not be read: " + old.error().message, 500});
  }
  if (*old && (*old)->status != "INACTIVE") {
    return tl::unexpected(invalid("The daemon " + name + " already exists in cluster " + cl +
                                  ": UpdateDaemon changes it"));
  }
  const double now = now_seconds();
  state::service s;
  for (const auto& t : items(r.tags)) {
    if (!t.key) return tl::unexpected(invalid("every tag needs a string key and a string value"));
    s.tags.push_back({*t.key, t.value});
  }
  s.service_arn = recs_.arn("daemon/" + cl + "/" + name);
  s.service_name = std::string(record_prefix) + name;
  s.cluster_arn = recs_.arn("cluster/" + cl);
  s.status = "ACTIVE";
  s.scheduling_strategy = "DAEMON";
  s.task_definition = td;
  s.created_at = now;
  s.created_by = recs_.arn("user/berth");
  s.propagate_tags = tags;
  s.enable_ecs_managed_tags = r.enable_ecs_managed_tags.value_or(false);
  s.enable_execute_command = r.enable_execute_command.value_or(false);
  s.berth.daemon = state::daemon_settings{names, {}, now};
  if (auto ok = configure(s, r.deployment_configuration); !ok) return tl::unexpected(ok.error());
  s.deployments = {deployment_of(rc::new_deployment(deployment_id(), td, 0, now))};
  // Over an INACTIVE record of the same name: written at its revision.
  s.berth.revision = *old ? (*old)->berth.revision : 0;
  if (auto w = save_(s); !w) return tl::unexpected(w.error());
  return json{{"daemonArn", s.service_arn},
              {"status", "ACTIVE"},
              {"createdAt", s.created_at},
              {"deploymentArn", arn_of(s, "daemon-deployment", s.deployments.front().id)}};
}

outcome daemons::update(const json& body) {
  BERTH_TRY(r, decode_request<ecs::update_daemon_request>(body));
  BERTH_TRY(s, find(r.daemon_arn));
  if (s.status != "ACTIVE") {
    return tl::unexpected(
        api_error{"DaemonNotActiveException", "The daemon is not ACTIVE: " + r.daemon_arn});
  }
  BERTH_TRY(c, cluster(name_of(s.cluster_arn)));
  BERTH_TRY(names, providers(r.capacity_provider_arns, c.second, c.first));
  BERTH_TRY(td, task_definition(r.daemon_task_definition_arn));
  if (r.propagate_tags) {
    if (*r.propagate_tags != "DAEMON" && *r.propagate_tags != "NONE") {
      return tl::unexpected(invalid("propagateTags must be DAEMON or NONE"));
    }
    s.propagate_tags = *r.propagate_tags;
  }
  if (r.enable_ecs_managed_tags) s.enable_ecs_managed_tags = *r.enable_ecs_managed_tags;
  if (r.enable_execute_command) s.enable_execute_command = *r.enable_execute_command;
  s.berth.daemon->capacity_providers = names;
  if (auto ok = configure(s, r.deployment_configuration); !ok) return tl::unexpected(ok.error());
  // A new revision, deployed: the one before stays ACTIVE until its tasks are replaced.
  const double now = now_seconds();
  for (auto& dep : s.deployments) {
    if (dep.status == "PRIMARY") dep.status = "ACTIVE";
  }
  const auto dep = rc::new_deployment(deployment_id(), td, s.desired_count, now);
  s.deployments.insert(s.deployments.begin(), deployment_of(dep));
  s.task_definition = td;
  s.berth.steady = false;
  s.berth.daemon->updated_at = now;
  records::event(s, rc::started_message(dep));
  if (auto w = save_(s); !w) return tl::unexpected(w.error());
  return json{{"daemonArn", s.service_arn},
              {"status", "ACTIVE"},
              {"createdAt", s.created_at},
              {"updatedAt", now},
              {"deploymentArn", arn_of(s, "daemon-deployment", dep.id)}};
}

outcome daemons::remove(const json& body) {
  BERTH_TRY(r, decode_request<ecs::delete_daemon_request>(body));
  BERTH_TRY(s, find(r.daemon_arn));
  if (s.status != "ACTIVE") {
    return tl::unexpected(
        api_error{"DaemonNotActiveException", "The daemon is not ACTIVE: " + r.daemon_arn});
  }
  const double now = now_seconds();
  s.status = "DRAINING";  // its tasks stop; the loop makes it INACTIVE once they have
  s.desired_count = 0;
  for (auto& dep : s.deployments) dep.desired_count = 0;
  s.berth.daemon->updated_at = now;
  records::event(s, "is being deleted.");
  if (auto w = save_(s); !w) return tl::unexpected(w.error());
  const auto all = all_of(s);
  json out = {{"daemonArn", s.service_arn},
              {"status", "DELETE_IN_PROGRESS"},
              {"createdAt", s.created_at},
              {"updatedAt", now}};
  if (!all.empty()) out["deploymentArn"] = arn_of(s, "daemon-deployment", all.front()->id);
  return out;
}

json daemons::detail(const state::service& s) const {
  json revisions = json::array();
  for (const auto& d : s.deployments) {
    if (d.status != "PRIMARY" && d.running_count == 0) continue;
    json providers = json::array();
    for (const auto& p : s.berth.daemon->capacity_providers) {
      providers.push_back(
          {{"arn", recs_.arn("capacity-provider/" + p)}, {"runningCount", d.running_count}});
    }
    revisions.push_back({{"arn", arn_of(s, "daemon-revision", d.id)},
                         {"capacityProviders", std::move(providers)},
                         {"totalRunningCount", d.running_count}});
  }
  json out = {{"daemonArn", s.service_arn},
              {"clusterArn", s.cluster_arn},
              {"status", api_status(s)},
              {"currentRevisions", std::move(revisions)},
              {"createdAt", s.created_at},
              {"updatedAt", std::max(s.created_at, s.berth.daemon->updated_at)}};
  const auto all = all_of(s);
  if (!all.empty()) out["deploymentArn"] = arn_of(s, "daemon-deployment", all.front()->id);
  return out;
}

outcome daemons::describe(const json& body) {
  BERTH_TRY(r, decode_request<ecs::describe_daemon_request>(body));
  BERTH_TRY(s, find(r.daemon_arn));
  return json{{"daemon", detail(s)}};
}

outcome daemons::list(const json& body) {
  BERTH_TRY(r, decode_request<ecs::list_daemons_request>(body));
  // Without clusterArn, the default cluster's, as ECS.
  BERTH_TRY(c, cluster(r.cluster_arn));
  const std::string prefix = c.first + "/";
  std::set<std::string> wanted;
  for (const auto& p : items(r.capacity_provider_arns)) wanted.insert(provider_name(p));
  auto all = recs_.all(prefix);
  if (!all) {
    return tl::unexpected(api_error{"ServerException", "The store could not list daemons", 500});
  }
  std::vector<json> found;
  for (const auto& s : *all) {
    if (!is_daemon(s) || s.status == "INACTIVE" || !s.berth.daemon) continue;
    const auto& mine = s.berth.daemon->capacity_providers;
    if (!wanted.empty() &&
        std::none_of(mine.begin(), mine.end(), [&](const auto& p) { return wanted.contains(p); })) {
      continue;
    }
    found.push_back({{"daemonArn", s.service_arn},
                     {"status", api_status(s)},
                     {"createdAt", s.created_at},
                     {"updatedAt", std::max(s.created_at, s.berth.daemon->updated_at)}});
  }
  return control::paged(std::move(found), r.next_token, r.max_results.value_or(100), 100,
                        "daemonSummariesList");
}

// ECS's DaemonDeployment (`brief`: DaemonDeploymentSummary) of the i-th of `all`.
json daemons::deployment(const state::service& s, const std::vector<const state::deployment*>& all,
                         std::size_t i, bool brief) const {
  const state::deployment& d = *all[i];
  const state::deployment* newer = i > 0 ? all[i - 1] : nullptr;
  const std::string status = status_of(d, newer);
  json out = {{"daemonDeploymentArn", arn_of(s, "daemon-deployment", d.id)},
              {"clusterArn", s.cluster_arn},
              {"status", status},
              {"createdAt", d.created_at},
              {"startedAt", d.created_at}};
  if (finished(status)) out["finishedAt"] = d.updated_at;
  if (status == "STOPPED" || status.starts_with("ROLLBACK")) out["stoppedAt"] = d.updated_at;
  std::string reason = d.rollout_state_reason;
  if (d.rollout_state == "IN_PROGRESS" && newer != nullptr) {
    reason = "Superseded by deployment " + arn_of(s, "daemon-deployment", newer->id) + ".";
  }
  if (!reason.empty()) out["statusReason"] = reason;
  if (brief) {
    out["daemonArn"] = s.service_arn;
    out["targetDaemonRevisionArn"] = arn_of(s, "daemon-revision", d.id);
    return out;
  }
  const auto revision_detail = [&](const state::deployment& x) {
    json providers = json::array();
    for (const auto& p : s.berth.daemon->capacity_providers) {
      providers.push_back({{"arn", recs_.arn("capacity-provider/" + p)},
                           {"runningInstanceCount", x.running_count},
                           {"drainingInstanceCount", 0}});
    }
    return json{{"arn", arn_of(s, "daemon-revision", x.id)},
                {"capacityProviders", std::move(providers)},
                {"totalRunningInstanceCount", x.running_count},
                {"totalDrainingInstanceCount", 0}};
  };
  out["targetDaemonRevision"] = revision_detail(d);
  out["sourceDaemonRevisions"] = json::array();
  if (i + 1 < all.size()) out["sourceDaemonRevisions"].push_back(revision_detail(*all[i + 1]));
  // The circuit breaker's threshold, as reconcile counts it.
  const std::int32_t threshold = std::max(3, std::min(200, (d.desired_count + 1) / 2));
  out["circuitBreaker"] = {{"status", d.rollout_state == "FAILED" ? "TRIGGERED"
                                      : finished(status)          ? "MONITORING_COMPLETE"
                                                                  : "MONITORING"},
                           {"failureCount", d.failed_tasks},
                           {"threshold", threshold}};
  out["deploymentConfiguration"] = ecs::to_json(s.berth.daemon->configuration);
  if (status.starts_with("ROLLBACK")) {
    out["rollback"] = {
        {"reason", d.rollout_state_reason},
        {"startedAt", newer->created_at},
        {"rollbackTargetDaemonRevisionArn", arn_of(s, "daemon-revision", newer->id)}};
  }
  return out;
}

outcome daemons::list_deployments(const json& body) {
  BERTH_TRY(r, decode_request<ecs::list_daemon_deployments_request>(body));
  auto s = find(r.daemon_arn);
  if (!s) {
    // ECS's model declares no DaemonNotFoundException here.
    if (s.error().type == "DaemonNotFoundException")
      return tl::unexpected(invalid(s.error().message));
    return tl::unexpected(s.error());
  }
  static const std::vector<std::string> statuses = {"PENDING",
                                                    "SUCCESSFUL",
                                                    "STOPPED",
                                                    "STOP_REQUESTED",
                                                    "IN_PROGRESS",
                                                    "ROLLBACK_IN_PROGRESS",
                                                    "ROLLBACK_SUCCESSFUL",
                                                    "ROLLBACK_FAILED"};
  const auto& wanted = items(r.status);
  for (const auto& w : wanted) {
    if (std::find(statuses.begin(), statuses.end(), w) == statuses.end()) {
      return tl::unexpected(invalid("Invalid status '" + w + "'"));
    }
  }
  const auto all = all_of(*s);
  std::vector<json> found;
  for (std::size_t i = 0; i < all.size(); ++i) {
    json d = deployment(*s, all, i, true);
    if (listed(d, all[i]->created_at, wanted, r.created_at)) found.push_back(std::move(d));
  }
  return control::paged(std::move(found), r.next_token, r.max_results.value_or(20), 100,
                        "daemonDeployments");
}

// ECS's DaemonRevision of deployment `d`, with its containers' images.
json daemons::revision(const state::service& s, const state::deployment& d) {
  json images = json::array();
  ecs::describe_daemon_task_definition_request q;
  q.daemon_task_definition = d.task_definition;
  if (auto td = ask<ecs::describe_daemon_task_definition_response>(
          tasks_, "DescribeDaemonTaskDefinition", q);
      td && td->daemon_task_definition) {
    for (const auto& c : items(td->daemon_task_definition->container_definitions)) {
      images.push_back({{"containerName", c.name.value_or("")}, {"image", c.image}});
    }
  }
  return {{"daemonRevisionArn", arn_of(s, "daemon-revision", d.id)},
          {"clusterArn", s.cluster_arn},
          {"daemonArn", s.service_arn},
          {"daemonTaskDefinitionArn", d.task_definition},
          {"createdAt", d.created_at},
          {"containerImages", std::move(images)},
          {"propagateTags", s.propagate_tags},
          {"enableECSManagedTags", s.enable_ecs_managed_tags},
          {"enableExecuteCommand", s.enable_execute_command}};
}

outcome daemons::describe_deployments(const std::vector<std::string>& arns, bool revisions) {
  const char* kind = revisions ? "daemon-revision" : "daemon-deployment";
  if (arns.empty() || arns.size() > 20) {
    return tl::unexpected(
        invalid(std::string(revisions ? "daemonRevisionArns" : "daemonDeploymentArns") +
                " must name between 1 and 20 ARNs"));
  }
  const char* list_name = revisions ? "daemonRevisions" : "daemonDeployments";
  json out = {{list_name, json::array()}, {"failures", json::array()}};
  for (const auto& arn : arns) {
    const auto parts = parts_of(arn, kind, 3);
    std::optional<state::service> s;
    if (parts) {
      auto read = recs_.load((*parts)[0], std::string(record_prefix) + (*parts)[1]);
      if (!read) {
        return tl::unexpected(api_error{
            "ServerException", "The daemon could not be read: " + read.error().message, 500});
      }
      if (*read && is_daemon(**read) && (*read)->berth.daemon) s = std::move(*read);
    }
    const auto all = s ? all_of(*s) : std::vector<const state::deployment*>{};
    std::optional<std::size_t> at;
    for (std::size_t i = 0; i < all.size(); ++i) {
      if (all[i]->id == "ecs-svc/" + (*parts)[2]) at = i;
    }
    if (!at) {
      out["failures"].push_back({{"arn", arn}, {"reason", "MISSING"}});
      continue;
    }
    out[list_name].push_back(revisions ? revision(*s, *all[*at]) : deployment(*s, all, *at, false));
  }
  return out;
}

}  // namespace berth::agent::sched
