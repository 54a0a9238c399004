// The service actions of the ECS API: CreateService, UpdateService, DeleteService,
// DescribeServices, ListServices. Each reads its request with ECS's model, validates, then
// writes the record by compare-and-swap (a pass of the loop that wrote first makes it read
// again and redo), then wakes the loop, which does the work.
#include "actions.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <mutex>
#include <regex>
#include <tuple>

#include "berth/agent/util.hpp"
#include "daemons.hpp"
#include "deployments.hpp"
#include "protection.hpp"
#include "task_sets.hpp"

namespace berth::agent::sched {

namespace {

using outcome = tl::expected<json, api_error>;
using control::client;
using control::decode_request;
using control::invalid;
using control::is_no_instances;

api_error not_found() { return {"ServiceNotFoundException", "Service not found."}; }
// A write that lost to another writer: the action runs again on what that one wrote.
constexpr const char* conflict = "berth.Conflict";
constexpr int attempts = 5;

// A filter of ListServices: absent, or one of the values ECS has.
tl::expected<void, api_error> check_filter(const char* name, const std::optional<std::string>& v,
                                           const std::vector<std::string>& allowed) {
  if (!v || std::find(allowed.begin(), allowed.end(), *v) != allowed.end()) return {};
  std::string valid;
  for (const auto& a : allowed) valid += (valid.empty() ? "" : ", ") + a;
  return tl::unexpected(
      invalid(std::string("Invalid ") + name + " '" + *v + "'. Valid values: " + valid + "."));
}

// ECS: 0 to 2,147,483,647 seconds (the model's integer already stops at the top).
tl::expected<void, api_error> check_grace_period(const std::optional<std::int32_t>& seconds) {
  if (seconds && *seconds < 0) {
    return tl::unexpected(
        invalid("healthCheckGracePeriodSeconds must be between 0 and 2147483647"));
  }
  return {};
}

tl::expected<std::int32_t, api_error> check_desired_count(std::int32_t n) {
  if (n < 0 || n > 10'000) {
    return tl::unexpected(invalid("desiredCount must be between 0 and 10000"));
  }
  return n;
}

// What a DAEMON service refuses, in CreateService and UpdateService alike: a count (its
// instances make it) and placement strategies (it is placed by instance).
template <class Request>
tl::expected<void, api_error> check_daemon(bool daemon, const Request& req) {
  if (!daemon) return {};
  if (req.desired_count) {
    return tl::unexpected(
        invalid("desiredCount is not supported with the DAEMON scheduling strategy: the "
                "service runs one task on every instance that meets its constraints"));
  }
  if (req.placement_strategy && !req.placement_strategy->empty()) {
    return tl::unexpected(
        invalid("Placement strategies are not supported with the DAEMON scheduling strategy"));
  }
  return {};
}

class actions_impl final : public actions {
 public:
  actions_impl(records& recs, task_api& tasks, bool has_lb,
               std::function<void(const state::service&)> changed)
      : recs_(recs), tasks_(tasks), has_lb_(has_lb), changed_(std::move(changed)) {}

  bool serves(const std::string& action) const override {
    return action == "CreateService" || action == "UpdateService" || action == "DeleteService" ||
           action == "DescribeServices" || action == "ListServices" ||
           action == "GetTaskProtection" || action == "UpdateTaskProtection" ||
           action == "ListServiceDeployments" || action == "DescribeServiceDeployments" ||
           action == "DescribeServiceRevisions" || action == "StopServiceDeployment" ||
           action == "CreateTaskSet" || action == "UpdateTaskSet" || action == "DeleteTaskSet" ||
           action == "DescribeTaskSets" || action == "UpdateServicePrimaryTaskSet" ||
           daemons::serves(action);
  }

  outcome call(const std::string& action, const json& body) override {
    if (!body.is_object()) {
      return tl::unexpected(
          api_error{"SerializationException", "The request body must be a JSON object"});
    }
    // One action at a time, as before; the loop never waits on this lock.
    std::lock_guard lock(mu_);
    for (int attempt = 1;; ++attempt) {
      auto r = dispatch(action, body);
      if (r || r.error().type != conflict) return r;
      if (attempt == attempts) {
        return tl::unexpected(api_error{
            "ServerException", "The service kept changing while it was updated; try again", 500});
      }
    }
  }

 private:
  outcome dispatch(const std::string& action, const json& body) {
    try {
      if (daemons::serves(action)) return daemons_.call(action, body);
      if (action == "CreateService") return create_service(body);
      if (action == "UpdateService") return update_service(body);
      if (action == "DeleteService") return delete_service(body);
      if (action == "DescribeServices") return describe_services(body);
      if (action == "ListServices") return list_services(body);
      if (action == "ListServiceDeployments") {
        BERTH_TRY(r, decode_request<ecs::list_service_deployments_request>(body));
        BERTH_TRY(cluster, cluster_of(r.cluster));
        BERTH_TRY(s, find(cluster, r.service));
        return list_service_deployments(s, r);
      }
      if (action == "DescribeServiceDeployments") {
        BERTH_TRY(r, decode_request<ecs::describe_service_deployments_request>(body));
        return describe_service_deployments(recs_, r.service_deployment_arns, false);
      }
      if (action == "DescribeServiceRevisions") {
        BERTH_TRY(r, decode_request<ecs::describe_service_revisions_request>(body));
        return describe_service_deployments(recs_, r.service_revision_arns, true);
      }
      if (action == "StopServiceDeployment") return stop_service_deployment(body);
      if (action == "CreateTaskSet" || action == "UpdateTaskSet" || action == "DeleteTaskSet" ||
          action == "DescribeTaskSets" || action == "UpdateServicePrimaryTaskSet") {
        return task_set_call(action, body);
      }
      if (action == "GetTaskProtection") {
        BERTH_TRY(r, decode_request<ecs::get_task_protection_request>(body));
        BERTH_TRY(cluster, cluster_of(r.cluster));
        return get_task_protection(recs_, tasks_, cluster, r);
      }
      if (action == "UpdateTaskProtection") {
        BERTH_TRY(r, decode_request<ecs::update_task_protection_request>(body));
        BERTH_TRY(cluster, cluster_of(r.cluster));
        return update_task_protection(recs_, tasks_, cluster, r);
      }
      return tl::unexpected(api_error{"UnknownOperationException", "Unknown operation"});
    } catch (const std::exception& e) {
      spdlog::error("{} failed: {}", action, e.what());
      return tl::unexpected(
          api_error{"ServerException", std::string("Internal error: ") + e.what(), 500});
    }
  }

  // Writes the record, then tells the loop; the answer is the record as ECS's Service.
  outcome save(state::service& s) {
    auto w = recs_.commit(s);
    if (!w) {
      return tl::unexpected(api_error{
          "ServerException", "The service could not be stored: " + w.error().message, 500});
    }
    if (!*w) return tl::unexpected(api_error{conflict, "the record changed meanwhile"});
    changed_(s);
    return json{{"service", state::response(s)}};
  }

  // The cluster a request names (default "default"), through the task API: it knows clusters.
  tl::expected<std::string, api_error> cluster_of(const std::optional<std::string>& ref) {
    const std::string c = ref ? name_of(*ref) : "default";
    ecs::describe_clusters_request q;
    q.clusters = {c};
    BERTH_TRY(d, ask<ecs::describe_clusters_response>(tasks_, "DescribeClusters", q));
    if (items(d.clusters).empty() || d.clusters->front().status != "ACTIVE") {
      return tl::unexpected(api_error{"ClusterNotFoundException", "Cluster not found."});
    }
    return c;
  }

  // ---- checks shared by Create and Update ----

  // `current` with what the request changes, checked whole.
  static tl::expected<ecs::deployment_configuration, api_error> deployment_configuration(
      const std::optional<ecs::deployment_configuration>& given,
      ecs::deployment_configuration current) {
    if (!given) return current;
    for (const auto& [k, from, to] :
         {std::tuple{"maximumPercent", &given->maximum_percent, &current.maximum_percent},
          std::tuple{"minimumHealthyPercent", &given->minimum_healthy_percent,
                     &current.minimum_healthy_percent}}) {
      if (!*from) continue;
      if (**from < 0 || **from > 1000) {
        return tl::unexpected(invalid(std::string(k) + " must be a whole number of percent"));
      }
      *to = *from;
    }
    if (given->deployment_circuit_breaker) {
      current.deployment_circuit_breaker = given->deployment_circuit_breaker;
    }
    const std::int32_t max = current.maximum_percent.value_or(200);
    const std::int32_t min = current.minimum_healthy_percent.value_or(100);
    if (min > 100) return tl::unexpected(invalid("minimumHealthyPercent must be at most 100"));
    if (max < 100 || max <= min) {
      return tl::unexpected(
          invalid("maximumPercent must be at least 100 and above minimumHealthyPercent"));
    }
    return current;
  }

  // The task definition `ref` names, after checking it exists and is ACTIVE.
  tl::expected<ecs::task_definition, api_error> task_definition(const std::string& ref) {
    ecs::describe_task_definition_request q;
    q.task_definition = ref;
    BERTH_TRY(d, ask<ecs::describe_task_definition_response>(tasks_, "DescribeTaskDefinition", q));
    if (!d.task_definition || d.task_definition->status != "ACTIVE") {
      return tl::unexpected(client("TaskDefinition is inactive"));
    }
    return std::move(*d.task_definition);
  }

  // The load balancers as the record keeps them, each checked against HAProxy's backend names
  // and the task definition's ports.
  tl::expected<std::vector<ecs::load_balancer>, api_error> load_balancers(
      const std::vector<ecs::load_balancer>& given, const ecs::task_definition& td) {
    std::vector<ecs::load_balancer> out;
    for (const auto& lb : given) {
      if (!lb.load_balancer_name || !lb.container_name || !lb.container_port) {
        return tl::unexpected(
            invalid("each load balancer needs loadBalancerName, containerName and containerPort"));
      }
      if (!has_lb_) {
        return tl::unexpected(
            invalid("loadBalancers need an HAProxy: start berthd with --haproxy-socket"));
      }
      const std::string& name = *lb.load_balancer_name;
      if (!std::regex_match(name, std::regex("[A-Za-z0-9_.:-]{1,32}"))) {
        return tl::unexpected(invalid("loadBalancerName '" + name + "' is not a backend name"));
      }
      bool found = false;
      for (const auto& c : items(td.container_definitions)) {
        if (c.name != lb.container_name) continue;
        for (const auto& p : items(c.port_mappings)) found |= p.container_port == lb.container_port;
      }
      if (!found) {
        return tl::unexpected(invalid("The container " + *lb.container_name +
                                      " does not have a container port " +
                                      std::to_string(*lb.container_port) + " defined."));
      }
      out.push_back({std::nullopt, name, lb.container_name, lb.container_port});
    }
    return out;
  }

  // A backend is one service's: each removes servers of its own kind it does not know.
  tl::expected<void, api_error> backends_free(const std::vector<ecs::load_balancer>& mine) {
    if (mine.empty()) return {};
    auto all = recs_.all("");
    if (!all) return {};
    for (const auto& other : *all) {
      if (other.status == "INACTIVE") continue;
      for (const auto& lb : mine) {
        for (const auto& theirs : other.load_balancers) {
          if (theirs.load_balancer_name == lb.load_balancer_name) {
            return tl::unexpected(invalid("load balancer " + *lb.load_balancer_name +
                                          " already serves service " + other.service_name));
          }
        }
      }
    }
    return {};
  }

  // Placement rules, checked by a dry run of the placement: a bad expression is refused now,
  // not at launch.
  tl::expected<void, api_error> check_placement(
      const std::string& cluster, const std::string& td_arn,
      const std::vector<ecs::placement_constraint>& constraints,
      const std::vector<ecs::placement_strategy>& strategy) {
    ecs::run_task_request q;
    q.cluster = cluster;
    q.task_definition = td_arn;
    q.placement_constraints = constraints;
    q.placement_strategy = strategy;
    json dry = ecs::to_json(q);
    dry["dryRun"] = true;  // BerthV1.Place's own member
    // A cluster without instances yet is no reason to refuse: the service waits for some, and
    // its events say why it has no tasks, as ECS's.
    if (auto r = tasks_.place(dry); !r && !is_no_instances(r.error())) {
      return tl::unexpected(r.error());
    }
    return {};
  }

  // ---- the actions ----

  outcome create_service(const json& body) {
    BERTH_TRY(req, decode_request<ecs::create_service_request>(body));
    // The launch type before the cluster, as ECS checks them.
    const bool providers =
        req.capacity_provider_strategy && !req.capacity_provider_strategy->empty();
    if (auto ok = check_launch_type(req.launch_type, providers); !ok) {
      return tl::unexpected(ok.error());
    }
    BERTH_TRY(cluster, cluster_of(req.cluster));
    if (req.service_name.empty()) return tl::unexpected(invalid("'serviceName' is required"));
    // EXTERNAL: a deployment tool's task sets (CreateTaskSet) run the tasks; the service needs
    // no task definition of its own.
    const std::string controller =
        req.deployment_controller ? req.deployment_controller->type : "ECS";
    if (controller != "ECS" && controller != "EXTERNAL") {
      return tl::unexpected(api_error{
          "UnsupportedFeatureException",
          "Berth's deployment controllers are ECS (rolling updates) and EXTERNAL (task sets); "
          "CODE_DEPLOY needs AWS CodeDeploy."});
    }
    const bool external = controller == "EXTERNAL";
    if (!external && (!req.task_definition || req.task_definition->empty())) {
      return tl::unexpected(invalid("'taskDefinition' is required"));
    }
    if (external && req.scheduling_strategy == "DAEMON") {
      return tl::unexpected(
          invalid("The DAEMON scheduling strategy needs the ECS deployment controller"));
    }
    if (external && !req.task_definition && req.load_balancers && !req.load_balancers->empty()) {
      return tl::unexpected(
          invalid("loadBalancers need the taskDefinition they are checked against"));
    }
    if (auto g = check_grace_period(req.health_check_grace_period_seconds); !g) {
      return tl::unexpected(g.error());
    }
    const std::string& name = req.service_name;
    if (!std::regex_match(name, std::regex("[A-Za-z0-9_-]{1,255}"))) {
      return tl::unexpected(
          invalid("serviceName may hold up to 255 letters, digits, hyphens and "
                  "underscores"));
    }
    BERTH_TRY(desired, check_desired_count(req.desired_count.value_or(0)));
    // DAEMON: one task on every instance that meets the constraints; its count is theirs.
    const bool daemon = req.scheduling_strategy == "DAEMON";
    if (auto ok = check_daemon(daemon, req); !ok) return tl::unexpected(ok.error());
    BERTH_TRY(old, loaded(cluster, name));
    if (old && old->status != "INACTIVE") {
      return tl::unexpected(invalid("Creation of service was not idempotent."));
    }
    ecs::task_definition td;
    if (req.task_definition) {
      BERTH_TRY(found, task_definition(*req.task_definition));
      td = std::move(found);
    }
    const std::string td_arn = td.task_definition_arn.value_or("");
    BERTH_TRY(lbs, load_balancers(items(req.load_balancers), td));
    if (auto free = backends_free(lbs); !free) return tl::unexpected(free.error());
    // ECS's defaults: 200/100 for a replica service; 100/0 for a daemon (its task stops before
    // its replacement starts on the instance).
    BERTH_TRY(dc, deployment_configuration(req.deployment_configuration,
                                           {ecs::deployment_circuit_breaker{false, false},
                                            daemon ? 100 : 200, daemon ? 0 : 100}));
    // Placement as ECS's service default: spread over zones, then instances (a daemon's tasks
    // are placed by instance).
    const auto strategy =
        daemon ? std::vector<ecs::placement_strategy>{}
               : req.placement_strategy.value_or(std::vector<ecs::placement_strategy>{
                     {"spread", "attribute:ecs.availability-zone"}, {"spread", "instanceId"}});
    const auto& constraints = items(req.placement_constraints);
    if (auto ok = td_arn.empty() ? tl::expected<void, api_error>{}
                                 : check_placement(cluster, td_arn, constraints, strategy);
        !ok) {
      return tl::unexpected(ok.error());
    }
    state::service s;
    for (const auto& t : items(req.tags)) {
      if (!t.key) return tl::unexpected(invalid("every tag needs a string key and a string value"));
      s.tags.push_back({*t.key, t.value});
    }
    s.service_arn = recs_.arn("service/" + cluster + "/" + name);
    s.service_name = name;
    s.cluster_arn = recs_.arn("cluster/" + cluster);
    s.load_balancers = std::move(lbs);
    s.status = "ACTIVE";
    s.scheduling_strategy = daemon ? "DAEMON" : "REPLICA";
    s.desired_count = desired;
    s.task_definition = td_arn;
    s.deployment_configuration = std::move(dc);
    s.deployment_controller = {controller};
    if (!external) {
      s.deployments = {
          deployment_of(rc::new_deployment(deployment_id(), td_arn, desired, now_seconds()))};
    }
    s.created_at = now_seconds();
    s.placement_constraints = constraints;
    s.placement_strategy = strategy;
    s.health_check_grace_period_seconds = req.health_check_grace_period_seconds.value_or(0);
    s.enable_execute_command = req.enable_execute_command.value_or(false);
    s.created_by = recs_.arn("user/berth");
    // Over an INACTIVE record of the same name: written at its revision.
    s.berth.revision = old ? old->berth.revision : 0;
    return save(s);
  }

  // The task set actions: the service found and ACTIVE, the set changed, the record saved.
  outcome task_set_call(const std::string& action, const json& body) {
    const auto service_named =
        [&](const std::string& c,
            const std::string& svc) -> tl::expected<state::service, api_error> {
      BERTH_TRY(cluster, cluster_of(c));
      BERTH_TRY(s, find(cluster, svc));
      if (s.status != "ACTIVE") {
        return tl::unexpected(api_error{"ServiceNotActiveException", "Service was not ACTIVE."});
      }
      return s;
    };
    const auto saved = [&](state::service& s,
                           const tl::expected<ecs::task_set, api_error>& t) -> outcome {
      if (!t) return tl::unexpected(t.error());
      BERTH_TRY(written, save(s));
      (void)written;
      return json{{"taskSet", ecs::to_json(*t)}};
    };
    const double now = now_seconds();
    if (action == "CreateTaskSet") {
      BERTH_TRY(r, decode_request<ecs::create_task_set_request>(body));
      BERTH_TRY(s, service_named(r.cluster, r.service));
      BERTH_TRY(td, task_definition(r.task_definition));
      auto t = create_task_set(s, r, td.task_definition_arn.value_or(""), deployment_id(), now);
      return saved(s, t);
    }
    if (action == "UpdateTaskSet") {
      BERTH_TRY(r, decode_request<ecs::update_task_set_request>(body));
      BERTH_TRY(s, service_named(r.cluster, r.service));
      auto t = update_task_set(s, r.task_set, r.scale, now);
      return saved(s, t);
    }
    if (action == "DeleteTaskSet") {
      BERTH_TRY(r, decode_request<ecs::delete_task_set_request>(body));
      BERTH_TRY(s, service_named(r.cluster, r.service));
      auto t = delete_task_set(s, r.task_set, r.force.value_or(false), now);
      return saved(s, t);
    }
    if (action == "UpdateServicePrimaryTaskSet") {
      BERTH_TRY(r, decode_request<ecs::update_service_primary_task_set_request>(body));
      BERTH_TRY(s, service_named(r.cluster, r.service));
      auto t = make_primary(s, r.primary_task_set, now);
      return saved(s, t);
    }
    BERTH_TRY(r, decode_request<ecs::describe_task_sets_request>(body));
    BERTH_TRY(s, service_named(r.cluster, r.service));
    const auto& include = items(r.include);
    return describe_task_sets(s, items(r.task_sets),
                              std::find(include.begin(), include.end(), "TAGS") != include.end());
  }

  outcome stop_service_deployment(const json& body) {
    BERTH_TRY(req, decode_request<ecs::stop_service_deployment_request>(body));
    const std::string& arn = req.service_deployment_arn;
    if (req.stop_type.value_or("ROLLBACK") != "ROLLBACK") {
      return tl::unexpected(
          api_error{"UnsupportedFeatureException",
                    "Berth stops a service deployment by rolling it back (stopType ROLLBACK)."});
    }
    const auto of = service_of_deployment(arn);
    std::optional<state::service> s;
    if (of) {
      BERTH_TRY(read, loaded(of->first, of->second));
      s = std::move(read);
    }
    if (!s || s->status != "ACTIVE") {
      return tl::unexpected(api_error{"ServiceDeploymentNotFoundException",
                                      "The service deployment does not exist: " + arn});
    }
    if (auto ok = stop_deployment(*s, arn, deployment_id()); !ok) {
      return tl::unexpected(ok.error());
    }
    BERTH_TRY(saved, save(*s));
    (void)saved;
    return json{{"serviceDeploymentArn", arn}};
  }

  // The service's record (none when there is none), or ServerException when the store could
  // not be read: a service is not "not found" because etcd is away.
  tl::expected<std::optional<state::service>, api_error> loaded(const std::string& cluster,
                                                                const std::string& name) {
    // A daemon's record is no service (a service's name has no colon).
    if (name.starts_with("daemon:")) return std::nullopt;
    auto s = recs_.load(cluster, name);
    if (!s) {
      return tl::unexpected(
          api_error{"ServerException", "The service could not be read: " + s.error().message, 500});
    }
    return std::move(*s);
  }

  // The service a request names, unless it is gone.
  tl::expected<state::service, api_error> find(const std::string& cluster,
                                               const std::string& service) {
    BERTH_TRY(s, loaded(cluster, name_of(service)));
    if (!s || s->status == "INACTIVE") return tl::unexpected(not_found());
    return std::move(*s);
  }

  outcome update_service(const json& body) {
    BERTH_TRY(req, decode_request<ecs::update_service_request>(body));
    BERTH_TRY(cluster, cluster_of(req.cluster));
    BERTH_TRY(s, find(cluster, req.service));
    if (s.status != "ACTIVE") {
      return tl::unexpected(api_error{"ServiceNotActiveException", "Service was not ACTIVE."});
    }
    if (auto g = check_grace_period(req.health_check_grace_period_seconds); !g) {
      return tl::unexpected(g.error());
    }
    BERTH_TRY(dc,
              deployment_configuration(req.deployment_configuration, s.deployment_configuration));
    s.deployment_configuration = std::move(dc);
    const bool daemon = s.scheduling_strategy == "DAEMON";
    if (auto ok = check_daemon(daemon, req); !ok) return tl::unexpected(ok.error());
    const bool external = s.deployment_controller.type == "EXTERNAL";
    if (external && (req.task_definition || req.force_new_deployment.value_or(false))) {
      return tl::unexpected(
          invalid("The service's deployment controller is EXTERNAL: deploy a task definition with "
                  "CreateTaskSet and UpdateServicePrimaryTaskSet"));
    }
    if (req.desired_count) {
      BERTH_TRY(d, check_desired_count(*req.desired_count));
      s.desired_count = d;
      for (auto& dep : s.deployments) {
        if (dep.status == "PRIMARY") dep.desired_count = d;
      }
      // Each task set's share of the new count.
      if (external) rescale_task_sets(s);
      s.berth.steady = false;
    }
    if (req.health_check_grace_period_seconds) {
      s.health_check_grace_period_seconds = *req.health_check_grace_period_seconds;
    }
    // Its tasks started from now on follow (ECS: with a new deployment to replace the others).
    if (req.enable_execute_command) s.enable_execute_command = *req.enable_execute_command;
    bool redeploy = req.force_new_deployment.value_or(false);
    if (req.task_definition) {
      BERTH_TRY(td, task_definition(*req.task_definition));
      if (!s.load_balancers.empty()) {
        if (auto lbs = load_balancers(s.load_balancers, td); !lbs) {
          return tl::unexpected(lbs.error());
        }
      }
      const std::string td_arn = td.task_definition_arn.value_or("");
      redeploy |= td_arn != s.task_definition;
      s.task_definition = td_arn;
    }
    // New placement rules apply to the tasks started from now on (forceNewDeployment moves the
    // running ones too), as in ECS; an empty list removes them. Checked by a dry run first:
    // the request's rule where it gives one, the service's where it does not.
    if (req.placement_constraints || req.placement_strategy) {
      auto constraints = req.placement_constraints.value_or(s.placement_constraints);
      auto strategy = req.placement_strategy.value_or(s.placement_strategy);
      if (auto ok = check_placement(cluster, s.task_definition, constraints, strategy); !ok) {
        return tl::unexpected(ok.error());
      }
      s.placement_constraints = std::move(constraints);
      s.placement_strategy = std::move(strategy);
    }
    if (redeploy) start_deployment(s);
    return save(s);
  }

  // A new deployment of the service's task definition becomes PRIMARY; the one before is
  // ACTIVE until its tasks are gone.
  static void start_deployment(state::service& s) {
    for (auto& dep : s.deployments) {
      if (dep.status == "PRIMARY") dep.status = "ACTIVE";
    }
    const auto dep =
        rc::new_deployment(deployment_id(), s.task_definition, s.desired_count, now_seconds());
    s.deployments.insert(s.deployments.begin(), deployment_of(dep));
    s.berth.steady = false;
    records::event(s, rc::started_message(dep));
  }

  outcome delete_service(const json& body) {
    BERTH_TRY(req, decode_request<ecs::delete_service_request>(body));
    BERTH_TRY(cluster, cluster_of(req.cluster));
    BERTH_TRY(s, find(cluster, req.service));
    // A daemon is not scaled: it goes without force.
    if (s.scheduling_strategy != "DAEMON" && s.desired_count > 0 && !req.force.value_or(false)) {
      return tl::unexpected(invalid(
          "The service cannot be stopped while it is scaled above 0. Set desiredCount to 0 or "
          "use force."));
    }
    s.status = "DRAINING";
    s.desired_count = 0;
    for (auto& dep : s.deployments) dep.desired_count = 0;
    records::event(s, "is being deleted.");
    return save(s);
  }

  outcome describe_services(const json& body) {
    BERTH_TRY(req, decode_request<ecs::describe_services_request>(body));
    BERTH_TRY(cluster, cluster_of(req.cluster));
    if (req.services.empty() || req.services.size() > 10) {
      return tl::unexpected(invalid("services must name 1 to 10 services"));
    }
    const auto& include = items(req.include);
    const bool tags = std::find(include.begin(), include.end(), "TAGS") != include.end();
    json out = {{"services", json::array()}, {"failures", json::array()}};
    for (const auto& ref : req.services) {
      BERTH_TRY(s, loaded(cluster, name_of(ref)));
      if (!s) {
        out["failures"].push_back(ecs::to_json(ecs::failure{ref, "MISSING", std::nullopt}));
        continue;
      }
      json v = state::response(*s);
      if (!tags) v.erase("tags");
      out["services"].push_back(std::move(v));
    }
    return out;
  }

  outcome list_services(const json& body) {
    BERTH_TRY(req, decode_request<ecs::list_services_request>(body));
    BERTH_TRY(cluster, cluster_of(req.cluster));
    // The filters ECS has: a launch type, a scheduling strategy (each compared with what the
    // service says; Berth's are EC2 and REPLICA).
    if (auto ok = check_filter("launchType", req.launch_type, {"EC2", "FARGATE", "EXTERNAL"});
        !ok) {
      return tl::unexpected(ok.error());
    }
    if (auto ok =
            check_filter("schedulingStrategy", req.scheduling_strategy, {"REPLICA", "DAEMON"});
        !ok) {
      return tl::unexpected(ok.error());
    }
    auto all = recs_.all(cluster + "/");
    if (!all) {
      return tl::unexpected(api_error{"ServerException", "The store could not list services", 500});
    }
    std::vector<std::string> arns;
    for (const auto& s : *all) {
      if (s.status == "INACTIVE" || is_daemon(s)) continue;
      if (req.launch_type && s.launch_type != *req.launch_type) continue;
      if (req.scheduling_strategy && s.scheduling_strategy != *req.scheduling_strategy) continue;
      arns.push_back(s.service_arn);
    }
    // Ten a page unless maxResults says otherwise (at most 100).
    const std::optional<std::int64_t> max = req.max_results.value_or(10);
    BERTH_TRY(range, control::page(req.next_token, max, arns.size(), 100));
    const auto [from, to] = range;
    json out = {{"serviceArns", json::array()}};
    for (std::size_t i = from; i < to; ++i) out["serviceArns"].push_back(arns[i]);
    control::add_token(out, to, arns.size());
    return out;
  }

  records& recs_;
  task_api& tasks_;
  bool has_lb_;
  std::function<void(const state::service&)> changed_;
  std::mutex mu_;
  daemons daemons_{recs_, tasks_, [this](state::service& s) -> tl::expected<void, api_error> {
                     if (auto w = save(s); !w) return tl::unexpected(w.error());
                     return {};
                   }};
};

}  // namespace

std::unique_ptr<actions> make_actions(records& recs, task_api& tasks, bool has_lb,
                                      std::function<void(const state::service&)> changed) {
  return std::make_unique<actions_impl>(recs, tasks, has_lb, std::move(changed));
}

}  // namespace berth::agent::sched
