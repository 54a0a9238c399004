// The service scheduler. One mutex guards the services; a reconcile pass holds it throughout
// (the task API it calls answers at once: launches and stops run on berthd's own workers), so
// an API call never interleaves with a half-done pass. Wakeups go through a second, leaf lock,
// so the task engine can wake the scheduler while holding its own.
#include "scheduler.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <regex>
#include <set>
#include <thread>

#include "haproxy.hpp"
#include "util.hpp"

namespace berth::agent {

namespace {

using namespace std::chrono_literals;
using outcome = tl::expected<json, api_error>;

api_error invalid(std::string m) { return {"InvalidParameterException", std::move(m)}; }
api_error client(std::string m) { return {"ClientException", std::move(m)}; }
api_error not_found() { return {"ServiceNotFoundException", "Service not found."}; }

std::string short_id(const std::string& task_arn) { return name_of(task_arn); }

// A member of the wrong type is refused, naming it.
tl::expected<void, api_error> expect_type(const json& req, const char* k, bool (json::*is)() const,
                                          const char* what) {
  const auto it = req.find(k);
  if (it == req.end() || it->is_null() || ((*it).*is)()) return {};
  return tl::unexpected(
      api_error{"SerializationException", std::string("Expected '") + k + "' to be " + what});
}

// A task as the scheduler sees it.
struct task_view {
  std::string arn, deployment, last, desired, health, instance;
  double started = 0;
  json doc;
};

}  // namespace

class scheduler_impl final : public scheduler {
 public:
  scheduler_impl(const config& c, std::unique_ptr<store> st, service& tasks, event_bus& bus,
                 metrics& m)
      : cfg_(c), store_(std::move(st)), tasks_(tasks), bus_(bus), metrics_(m) {
    if (!c.haproxy_socket.empty()) lb_.emplace(c.haproxy_socket);
    metrics_.gauge("berth_services", "Services by status");
    metrics_.counter("berth_service_tasks_started_total", "Tasks services started");
    metrics_.counter("berth_service_tasks_stopped_total", "Tasks services stopped");
  }
  ~scheduler_impl() override { shutdown(); }

  void start() {
    loop_ = std::thread([this] { run(); });
  }

  bool serves(const std::string& action) const override {
    return action == "CreateService" || action == "UpdateService" || action == "DeleteService" ||
           action == "DescribeServices" || action == "ListServices";
  }

  outcome call(const std::string& action, const json& req) override {
    if (!req.is_object()) {
      return tl::unexpected(
          api_error{"SerializationException", "The request body must be a JSON object"});
    }
    try {
      std::lock_guard lock(mu_);
      if (action == "CreateService") return create_service(req);
      if (action == "UpdateService") return update_service(req);
      if (action == "DeleteService") return delete_service(req);
      if (action == "DescribeServices") return describe_services(req);
      if (action == "ListServices") return list_services(req);
      return tl::unexpected(api_error{"UnknownOperationException", "Unknown operation"});
    } catch (const std::exception& e) {
      spdlog::error("{} failed: {}", action, e.what());
      return tl::unexpected(
          api_error{"ServerException", std::string("Internal error: ") + e.what(), 500});
    }
  }

  // Takes only the wake lock, never mu_: the task engine calls it holding its own lock, which
  // the scheduler takes (through its task API calls) while holding mu_.
  void wake() override {
    {
      std::lock_guard lock(wake_mu_);
      woken_ = true;
    }
    wake_cv_.notify_all();
  }

  void shutdown() override {
    {
      std::lock_guard lock(wake_mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    wake_cv_.notify_all();
    if (loop_.joinable()) loop_.join();
  }

 private:
  // ---- names and documents ----

  std::string arn(const std::string& rest) const {
    return "arn:aws:ecs:" + cfg_.region + ":" + cfg_.account_id + ":" + rest;
  }

  // The cluster a request names (default "default"), through the task API: it knows clusters.
  tl::expected<std::string, api_error> cluster_of(const json& req) {
    std::string c = "default";
    if (req.contains("cluster") && !req["cluster"].is_null()) {
      if (!req["cluster"].is_string()) {
        return tl::unexpected(
            api_error{"SerializationException", "Expected 'cluster' to be a string"});
      }
      c = name_of(req["cluster"].get<std::string>());
    }
    auto d = tasks_.call("DescribeClusters", {{"clusters", {c}}});
    if (!d) return tl::unexpected(d.error());
    if ((*d)["clusters"].empty() || (*d)["clusters"][0]["status"] != "ACTIVE") {
      return tl::unexpected(api_error{"ClusterNotFoundException", "Cluster not found."});
    }
    return c;
  }

  std::optional<json> load(const std::string& cluster, const std::string& name) {
    auto doc = store_->get("service", cluster + "/" + name);
    if (!doc || !*doc) return std::nullopt;
    json j = json::parse(**doc, nullptr, false);
    if (!j.is_object()) return std::nullopt;
    return j;
  }

  // Durable, or an error the caller answers with (an action) or logs (a scheduler pass).
  result<void> save(const json& s) {
    const std::string key =
        name_of(s["clusterArn"].get<std::string>()) + "/" + s["serviceName"].get<std::string>();
    if (auto w = store_->put("service", key, s.dump()); !w) {
      spdlog::error("store: service {}: {}", key, w.error().message);
      return w;
    }
    return {};
  }

  // The client's view: without Berth's bookkeeping.
  static json view(json s) {
    s.erase("_berth");
    return s;
  }

  // ECS keeps the newest 100 events, newest first.
  void event(json& s, const std::string& message) {
    json& events = s["events"];
    const json e = {
        {"id", uuid()},
        {"createdAt", now_seconds()},
        {"message", "(service " + s["serviceName"].get<std::string>() + ") " + message}};
    events.insert(events.begin(), e);
    if (events.size() > 100) events.erase(events.begin() + 100, events.end());
    spdlog::info("service {}: {}", s["serviceName"].get<std::string>(), message);
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
                        {"message", events[0]["message"]}}}}
                     .dump());
  }

  // An event that could repeat every pass (a placement failure, HAProxy refusing): once in
  // five minutes.
  void warn(json& s, const std::string& message) {
    const std::string key = s["serviceArn"].get<std::string>() + " " + message;
    const auto now = std::chrono::steady_clock::now();
    const auto it = warned_.find(key);
    if (it != warned_.end() && now - it->second < std::chrono::minutes(5)) return;
    // What was said over five minutes ago is forgotten: messages that carry an error's text
    // would otherwise pile up for the daemon's life.
    std::erase_if(warned_,
                  [&](const auto& w) { return now - w.second >= std::chrono::minutes(5); });
    warned_[key] = now;
    event(s, message);
  }

  static std::string deployment_id() {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    std::string id = "ecs-svc/";
    for (int i = 0; i < 19; ++i) id += static_cast<char>('0' + rng() % 10);
    return id;
  }

  json new_deployment(const std::string& td, std::int64_t desired) {
    const double now = now_seconds();
    const std::string id = deployment_id();
    return {{"id", id},
            {"status", "PRIMARY"},
            {"taskDefinition", td},
            {"desiredCount", desired},
            {"pendingCount", 0},
            {"runningCount", 0},
            {"failedTasks", 0},
            {"createdAt", now},
            {"updatedAt", now},
            {"launchType", "EC2"},
            {"rolloutState", "IN_PROGRESS"},
            {"rolloutStateReason", "ECS deployment " + id + " in progress."}};
  }

  // ---- checks shared by Create and Update ----

  tl::expected<json, api_error> deployment_configuration(const json& req, json current) {
    if (!req.contains("deploymentConfiguration") || req["deploymentConfiguration"].is_null()) {
      return current;
    }
    const json& d = req["deploymentConfiguration"];
    if (!d.is_object()) {
      return tl::unexpected(api_error{"SerializationException",
                                      "Expected 'deploymentConfiguration' to be a structure"});
    }
    for (const char* k : {"maximumPercent", "minimumHealthyPercent"}) {
      if (!d.contains(k)) continue;
      if (!d[k].is_number_integer() || d[k].get<std::int64_t>() < 0 ||
          d[k].get<std::int64_t>() > 1000) {
        return tl::unexpected(invalid(std::string(k) + " must be a whole number of percent"));
      }
      current[k] = d[k];
    }
    if (d.contains("deploymentCircuitBreaker")) {
      const json& cb = d["deploymentCircuitBreaker"];
      if (!cb.is_object() || !cb.contains("enable") || !cb["enable"].is_boolean() ||
          !cb.contains("rollback") || !cb["rollback"].is_boolean()) {
        return tl::unexpected(
            invalid("deploymentCircuitBreaker needs the booleans 'enable' and 'rollback'"));
      }
      current["deploymentCircuitBreaker"] = {{"enable", cb["enable"]},
                                             {"rollback", cb["rollback"]}};
    }
    if (current["minimumHealthyPercent"].get<std::int64_t>() > 100) {
      return tl::unexpected(invalid("minimumHealthyPercent must be at most 100"));
    }
    if (current["maximumPercent"].get<std::int64_t>() < 100 ||
        current["maximumPercent"] <= current["minimumHealthyPercent"]) {
      return tl::unexpected(
          invalid("maximumPercent must be at least 100 and above minimumHealthyPercent"));
    }
    return current;
  }

  // The task definition's ARN, after checking it exists and is ACTIVE.
  tl::expected<json, api_error> task_definition(const std::string& ref) {
    auto d = tasks_.call("DescribeTaskDefinition", {{"taskDefinition", ref}});
    if (!d) return tl::unexpected(d.error());
    const json& td = (*d)["taskDefinition"];
    if (td.value("status", "") != "ACTIVE") {
      return tl::unexpected(client("TaskDefinition is inactive"));
    }
    return td;
  }

  tl::expected<json, api_error> load_balancers(const json& req, const json& td) {
    json out = json::array();
    if (!req.contains("loadBalancers") || req["loadBalancers"].is_null()) return out;
    if (!req["loadBalancers"].is_array()) {
      return tl::unexpected(
          api_error{"SerializationException", "Expected 'loadBalancers' to be a list"});
    }
    for (const auto& lb : req["loadBalancers"]) {
      if (!lb.is_object() || !lb.contains("loadBalancerName") ||
          !lb["loadBalancerName"].is_string() || !lb.contains("containerName") ||
          !lb["containerName"].is_string() || !lb.contains("containerPort") ||
          !lb["containerPort"].is_number_integer()) {
        return tl::unexpected(
            invalid("each load balancer needs loadBalancerName, containerName and containerPort"));
      }
      if (!lb_) {
        return tl::unexpected(
            invalid("loadBalancers need an HAProxy: start berthd with --haproxy-socket"));
      }
      const std::string name = lb["loadBalancerName"];
      if (!std::regex_match(name, std::regex("[A-Za-z0-9_.:-]{1,32}"))) {
        return tl::unexpected(invalid("loadBalancerName '" + name + "' is not a backend name"));
      }
      bool found = false;
      for (const auto& c : td["containerDefinitions"]) {
        if (c["name"] != lb["containerName"]) continue;
        for (const auto& p : c.value("portMappings", json::array())) {
          found |= p.value("containerPort", -1) == lb["containerPort"].get<int>();
        }
      }
      if (!found) {
        return tl::unexpected(invalid("The container " + lb["containerName"].get<std::string>() +
                                      " does not have a container port " +
                                      std::to_string(lb["containerPort"].get<int>()) +
                                      " defined."));
      }
      out.push_back({{"loadBalancerName", name},
                     {"containerName", lb["containerName"]},
                     {"containerPort", lb["containerPort"]}});
    }
    return out;
  }

  // ---- the actions ----

  // ECS: 0 to 2,147,483,647 seconds.
  static tl::expected<void, api_error> grace_period(const json& req) {
    const auto it = req.find("healthCheckGracePeriodSeconds");
    if (it == req.end() || it->is_null()) return {};
    const bool in_range = it->is_number_unsigned()
                              ? it->get<std::uint64_t>() <= 2147483647ull
                              : it->is_number_integer() && it->get<std::int64_t>() >= 0;
    if (!in_range) {
      return tl::unexpected(
          invalid("healthCheckGracePeriodSeconds must be between 0 and 2147483647"));
    }
    return {};
  }

  outcome create_service(const json& req) {
    auto cluster = cluster_of(req);
    if (!cluster) return tl::unexpected(cluster.error());
    for (const char* k : {"serviceName", "taskDefinition"}) {
      if (!req.contains(k) || !req[k].is_string() || req[k].get<std::string>().empty()) {
        return tl::unexpected(invalid(std::string("'") + k + "' is required"));
      }
    }
    if (auto t = expect_type(req, "desiredCount", &json::is_number_integer, "an integer"); !t) {
      return tl::unexpected(t.error());
    }
    if (auto ok = check_launch_type(req); !ok) return tl::unexpected(ok.error());
    if (auto t = expect_type(req, "healthCheckGracePeriodSeconds", &json::is_number_integer,
                             "an integer");
        !t) {
      return tl::unexpected(t.error());
    }
    if (auto g = grace_period(req); !g) return tl::unexpected(g.error());
    const std::string name = req["serviceName"];
    if (!std::regex_match(name, std::regex("[A-Za-z0-9_-]{1,255}"))) {
      return tl::unexpected(
          invalid("serviceName may hold up to 255 letters, digits, hyphens and "
                  "underscores"));
    }
    const std::int64_t desired = req.value("desiredCount", std::int64_t{0});
    if (desired < 0 || desired > 10'000) {
      return tl::unexpected(invalid("desiredCount must be between 0 and 10000"));
    }
    if (req.value("schedulingStrategy", "REPLICA") != "REPLICA") {
      return tl::unexpected(invalid("only the REPLICA scheduling strategy is supported"));
    }
    if (auto old = load(*cluster, name); old && (*old)["status"] != "INACTIVE") {
      return tl::unexpected(invalid("Creation of service was not idempotent."));
    }
    auto td = task_definition(req["taskDefinition"]);
    if (!td) return tl::unexpected(td.error());
    auto lbs = load_balancers(req, *td);
    if (!lbs) return tl::unexpected(lbs.error());
    // A backend is one service's: each removes servers of its own kind it does not know.
    if (auto all = store_->list("service", ""); all) {
      for (const auto& [k, v] : *all) {
        const json other = json::parse(v, nullptr, false);
        if (!other.is_object() || other.value("status", "") == "INACTIVE") continue;
        for (const auto& mine : *lbs) {
          for (const auto& theirs : other.value("loadBalancers", json::array())) {
            if (theirs.value("loadBalancerName", "") == mine["loadBalancerName"]) {
              return tl::unexpected(
                  invalid("load balancer " + mine["loadBalancerName"].get<std::string>() +
                          " already serves service " + other.value("serviceName", std::string())));
            }
          }
        }
      }
    }
    auto dc = deployment_configuration(
        req, {{"maximumPercent", 200},
              {"minimumHealthyPercent", 100},
              {"deploymentCircuitBreaker", {{"enable", false}, {"rollback", false}}}});
    if (!dc) return tl::unexpected(dc.error());
    // Placement as ECS's service default: spread over zones, then instances.
    json strategy = req.value("placementStrategy", json());
    if (strategy.is_null()) {
      strategy = json::array({{{"type", "spread"}, {"field", "attribute:ecs.availability-zone"}},
                              {{"type", "spread"}, {"field", "instanceId"}}});
    }
    json constraints = req.value("placementConstraints", json::array());
    if (auto ok = check_placement(*cluster, (*td)["taskDefinitionArn"], constraints, strategy);
        !ok) {
      return tl::unexpected(ok.error());
    }
    json tags = req.value("tags", json::array());
    if (!tags.is_array()) {
      return tl::unexpected(api_error{"SerializationException", "Expected 'tags' to be a list"});
    }
    for (const auto& t : tags) {
      if (!t.is_object() || !t.contains("key") || !t["key"].is_string() ||
          (t.contains("value") && !t["value"].is_string())) {
        return tl::unexpected(invalid("every tag needs a string key and a string value"));
      }
    }
    const std::string cluster_arn = arn("cluster/" + *cluster);
    json s = {{"serviceArn", arn("service/" + *cluster + "/" + name)},
              {"serviceName", name},
              {"clusterArn", cluster_arn},
              {"loadBalancers", *lbs},
              {"serviceRegistries", json::array()},
              {"status", "ACTIVE"},
              {"desiredCount", desired},
              {"runningCount", 0},
              {"pendingCount", 0},
              {"launchType", "EC2"},
              {"taskDefinition", (*td)["taskDefinitionArn"]},
              {"deploymentConfiguration", *dc},
              {"deployments", json::array({new_deployment((*td)["taskDefinitionArn"], desired)})},
              {"events", json::array()},
              {"createdAt", now_seconds()},
              {"placementConstraints", constraints},
              {"placementStrategy", strategy},
              {"healthCheckGracePeriodSeconds", req.value("healthCheckGracePeriodSeconds", 0)},
              {"schedulingStrategy", "REPLICA"},
              {"deploymentController", {{"type", "ECS"}}},
              {"tags", tags},
              {"enableECSManagedTags", false},
              {"propagateTags", "NONE"},
              {"createdBy", arn("user/berth")}};
    s["_berth"] = {{"lastGood", nullptr}, {"steady", false}};
    if (auto w = save(s); !w) {
      return tl::unexpected(api_error{
          "ServerException", "The service could not be stored: " + w.error().message, 500});
    }
    wake();
    return json{{"service", view(s)}};
  }

  tl::expected<json, api_error> find(const json& req, std::string& cluster) {
    auto c = cluster_of(req);
    if (!c) return tl::unexpected(c.error());
    cluster = *c;
    if (!req.contains("service") || !req["service"].is_string()) {
      return tl::unexpected(invalid("'service' is required"));
    }
    auto s = load(cluster, name_of(req["service"].get<std::string>()));
    if (!s || (*s)["status"] == "INACTIVE") return tl::unexpected(not_found());
    return *s;
  }

  outcome update_service(const json& req) {
    std::string cluster;
    auto found = find(req, cluster);
    if (!found) return tl::unexpected(found.error());
    json s = *found;
    if (s["status"] != "ACTIVE") {
      return tl::unexpected(api_error{"ServiceNotActiveException", "Service was not ACTIVE."});
    }
    for (const char* k : {"desiredCount", "healthCheckGracePeriodSeconds"}) {
      if (auto t = expect_type(req, k, &json::is_number_integer, "an integer"); !t) {
        return tl::unexpected(t.error());
      }
    }
    if (auto t = expect_type(req, "forceNewDeployment", &json::is_boolean, "a boolean"); !t) {
      return tl::unexpected(t.error());
    }
    if (auto g = grace_period(req); !g) return tl::unexpected(g.error());
    auto dc = deployment_configuration(req, s["deploymentConfiguration"]);
    if (!dc) return tl::unexpected(dc.error());
    s["deploymentConfiguration"] = *dc;
    if (req.contains("desiredCount") && !req["desiredCount"].is_null()) {
      const std::int64_t d = req["desiredCount"];
      if (d < 0 || d > 10'000) {
        return tl::unexpected(invalid("desiredCount must be between 0 and 10000"));
      }
      s["desiredCount"] = d;
      for (auto& dep : s["deployments"]) {
        if (dep["status"] == "PRIMARY") dep["desiredCount"] = d;
      }
      s["_berth"]["steady"] = false;
    }
    if (req.contains("healthCheckGracePeriodSeconds") &&
        !req["healthCheckGracePeriodSeconds"].is_null()) {
      s["healthCheckGracePeriodSeconds"] = req["healthCheckGracePeriodSeconds"];
    }
    bool redeploy = req.value("forceNewDeployment", false);
    if (req.contains("taskDefinition") && !req["taskDefinition"].is_null()) {
      if (!req["taskDefinition"].is_string()) {
        return tl::unexpected(
            api_error{"SerializationException", "Expected 'taskDefinition' to be a string"});
      }
      auto td = task_definition(req["taskDefinition"]);
      if (!td) return tl::unexpected(td.error());
      if (!s["loadBalancers"].empty()) {
        json lbreq = {{"loadBalancers", s["loadBalancers"]}};
        if (auto lbs = load_balancers(lbreq, *td); !lbs) return tl::unexpected(lbs.error());
      }
      redeploy |= (*td)["taskDefinitionArn"] != s["taskDefinition"];
      s["taskDefinition"] = (*td)["taskDefinitionArn"];
    }
    // New placement rules apply to the tasks started from now on (forceNewDeployment moves the
    // running ones too), as in ECS; an empty list removes them. Checked by a dry run first.
    const auto given = [&](const char* k) { return req.contains(k) && !req[k].is_null(); };
    if (given("placementConstraints") || given("placementStrategy")) {
      // The request's rule where it gives one, the service's where it does not.
      const auto rule = [&](const char* k) { return given(k) ? req[k] : s[k]; };
      const json constraints = rule("placementConstraints");
      const json strategy = rule("placementStrategy");
      if (auto ok = check_placement(cluster, s["taskDefinition"], constraints, strategy); !ok) {
        return tl::unexpected(ok.error());
      }
      s["placementConstraints"] = constraints;
      s["placementStrategy"] = strategy;
    }
    if (redeploy) start_deployment(s, s["taskDefinition"]);
    if (auto w = save(s); !w) {
      return tl::unexpected(api_error{
          "ServerException", "The service could not be stored: " + w.error().message, 500});
    }
    wake();
    return json{{"service", view(s)}};
  }

  // Placement rules, checked by a dry run of the placement: a bad expression is refused now,
  // not at launch.
  tl::expected<void, api_error> check_placement(const std::string& cluster, const json& td_arn,
                                                const json& constraints, const json& strategy) {
    if (!strategy.is_array() || !constraints.is_array()) {
      return tl::unexpected(
          api_error{"SerializationException", "Expected placement rules to be lists"});
    }
    auto dry = tasks_.place({{"cluster", cluster},
                             {"taskDefinition", td_arn},
                             {"placementConstraints", constraints},
                             {"placementStrategy", strategy},
                             {"dryRun", true}});
    if (!dry) return tl::unexpected(dry.error());
    return {};
  }

  // The new deployment becomes PRIMARY; the one before is ACTIVE until its tasks are gone.
  void start_deployment(json& s, const std::string& td) {
    for (auto& dep : s["deployments"]) {
      if (dep["status"] == "PRIMARY") dep["status"] = "ACTIVE";
    }
    json dep = new_deployment(td, s["desiredCount"]);
    s["deployments"].insert(s["deployments"].begin(), dep);
    s["taskDefinition"] = td;
    s["_berth"]["steady"] = false;
    event(s, "has started a new deployment " + dep["id"].get<std::string>() + " of " + name_of(td) +
                 ".");
  }

  outcome delete_service(const json& req) {
    std::string cluster;
    auto found = find(req, cluster);
    if (!found) return tl::unexpected(found.error());
    json s = *found;
    if (auto t = expect_type(req, "force", &json::is_boolean, "a boolean"); !t) {
      return tl::unexpected(t.error());
    }
    if (s["desiredCount"].get<std::int64_t>() > 0 && !req.value("force", false)) {
      return tl::unexpected(invalid(
          "The service cannot be stopped while it is scaled above 0. Set desiredCount to 0 or "
          "use force."));
    }
    s["status"] = "DRAINING";
    s["desiredCount"] = 0;
    for (auto& dep : s["deployments"]) dep["desiredCount"] = 0;
    event(s, "is being deleted.");
    if (auto w = save(s); !w) {
      return tl::unexpected(api_error{
          "ServerException", "The service could not be stored: " + w.error().message, 500});
    }
    wake();
    return json{{"service", view(s)}};
  }

  outcome describe_services(const json& req) {
    auto cluster = cluster_of(req);
    if (!cluster) return tl::unexpected(cluster.error());
    if (!req.contains("services") || !req["services"].is_array() || req["services"].empty() ||
        req["services"].size() > 10) {
      return tl::unexpected(invalid("services must name 1 to 10 services"));
    }
    json out = {{"services", json::array()}, {"failures", json::array()}};
    const json include = req.value("include", json::array());
    const bool tags =
        include.is_array() && std::find(include.begin(), include.end(), "TAGS") != include.end();
    for (const auto& ref : req["services"]) {
      if (!ref.is_string()) {
        return tl::unexpected(
            api_error{"SerializationException", "Expected every service to be a string"});
      }
      auto s = load(*cluster, name_of(ref.get<std::string>()));
      if (!s) {
        out["failures"].push_back({{"arn", ref}, {"reason", "MISSING"}});
        continue;
      }
      json v = view(*s);
      if (!tags) v.erase("tags");
      out["services"].push_back(v);
    }
    return out;
  }

  outcome list_services(const json& req) {
    auto cluster = cluster_of(req);
    if (!cluster) return tl::unexpected(cluster.error());
    auto all = store_->list("service", *cluster + "/");
    if (!all) return tl::unexpected(api_error{"ServerException", all.error().message, 500});
    std::vector<std::string> arns;
    for (const auto& [k, v] : *all) {
      const json s = json::parse(v, nullptr, false);
      if (s.is_object() && s.value("status", "") != "INACTIVE") arns.push_back(s["serviceArn"]);
    }
    std::int64_t max = 10;
    if (req.contains("maxResults") && !req["maxResults"].is_null()) {
      if (!req["maxResults"].is_number_integer() || req["maxResults"] < 1 ||
          req["maxResults"] > 100) {
        return tl::unexpected(invalid("maxResults must be between 1 and 100"));
      }
      max = req["maxResults"];
    }
    std::size_t from = 0;
    if (req.contains("nextToken") && req["nextToken"].is_string()) {
      try {
        from = std::stoul(req["nextToken"].get<std::string>());
      } catch (...) {
        return tl::unexpected(invalid("Invalid nextToken"));
      }
    }
    json out = {{"serviceArns", json::array()}};
    const std::size_t to = std::min(arns.size(), from + static_cast<std::size_t>(max));
    for (std::size_t i = from; i < to; ++i) out["serviceArns"].push_back(arns[i]);
    if (to < arns.size()) out["nextToken"] = std::to_string(to);
    return out;
  }

  // ---- reconciling ----

  void run() {
    for (;;) {
      {
        // Every second when all is steady; four times as often while something moves (a
        // rollout, a scale, a drain), which is what a rollout's time is made of besides health
        // checks; at once when woken (an API call, a service task's state change).
        std::unique_lock lock(wake_mu_);
        wake_cv_.wait_for(lock, busy_ ? 250ms : 1000ms, [&] { return stopping_ || woken_; });
        if (stopping_) return;
        woken_ = false;
      }
      std::lock_guard lock(mu_);
      try {
        reconcile_all();
      } catch (const std::exception& e) {
        spdlog::error("service scheduler: {}", e.what());
      }
    }
  }

  void reconcile_all() {
    auto all = store_->list("service", "");
    if (!all) return;
    std::map<std::string, int> by_status = {{"ACTIVE", 0}, {"DRAINING", 0}};
    bool busy = !draining_.empty();
    for (const auto& [k, v] : *all) {
      json s = json::parse(v, nullptr, false);
      if (!s.is_object() || s.value("status", "") == "INACTIVE") continue;
      ++by_status[s["status"].get<std::string>()];
      const std::string before = s.dump();
      try {
        reconcile(s);
      } catch (const std::exception& e) {
        // One service's trouble is its own: the others are reconciled all the same.
        spdlog::error("service {}: reconcile failed: {}", k, e.what());
        continue;
      }
      if (s.dump() != before) (void)save(s);
      busy |= s["status"] != "ACTIVE" || !s["_berth"].value("steady", false);
    }
    busy_ = busy;
    for (const auto& [st, n] : by_status) metrics_.set("berth_services", {{"status", st}}, n);
  }

  // The service's tasks (not yet stopped or all), described.
  // Nothing when any lookup failed: a partial list would look like missing tasks.
  std::optional<std::vector<task_view>> tasks_of(const json& s, bool stopped) {
    std::vector<task_view> out;
    const std::string cluster = name_of(s["clusterArn"].get<std::string>());
    std::vector<std::string> arns;
    std::optional<std::string> token;
    do {
      json req = {{"cluster", cluster},
                  {"serviceName", s["serviceName"]},
                  {"desiredStatus", stopped ? "STOPPED" : "RUNNING"},
                  {"maxResults", 100}};
      if (token) req["nextToken"] = *token;
      auto l = tasks_.call("ListTasks", req);
      if (!l) return std::nullopt;
      for (const auto& a : (*l)["taskArns"]) arns.push_back(a);
      token.reset();
      if (l->contains("nextToken")) token = (*l)["nextToken"].get<std::string>();
    } while (token);
    for (std::size_t i = 0; i < arns.size(); i += 100) {
      json batch = json::array();
      for (std::size_t j = i; j < std::min(arns.size(), i + 100); ++j) batch.push_back(arns[j]);
      auto d = tasks_.call("DescribeTasks", {{"cluster", cluster}, {"tasks", batch}});
      if (!d) return std::nullopt;
      for (const auto& t : (*d)["tasks"]) {
        task_view v;
        v.arn = t["taskArn"];
        v.deployment = t.value("startedBy", "");
        v.last = t.value("lastStatus", "");
        v.desired = t.value("desiredStatus", "");
        v.health = t.value("healthStatus", "UNKNOWN");
        v.instance = t.value("containerInstanceArn", "");
        v.started = t.value("startedAt", 0.0);
        v.doc = t;
        out.push_back(std::move(v));
      }
    }
    return out;
  }

  // The containers of a task's definition that have a Docker health check (cached by ARN).
  const std::set<std::string>& checked_containers(const task_view& t) {
    const std::string td = t.doc.value("taskDefinitionArn", "");
    if (const auto it = checked_.find(td); it != checked_.end()) return it->second;
    static const std::set<std::string> unknown;
    auto d = tasks_.call("DescribeTaskDefinition", {{"taskDefinition", td}});
    if (!d) return unknown;  // asked again next time
    std::set<std::string> names;
    for (const auto& c : (*d)["taskDefinition"]["containerDefinitions"]) {
      if (c.contains("healthCheck")) names.insert(c["name"].get<std::string>());
    }
    return checked_[td] = names;
  }

  // Every container with a health check says HEALTHY.
  bool checks_pass(const task_view& t) {
    const auto& checked = checked_containers(t);
    for (const auto& c : t.doc.value("containers", json::array())) {
      if (checked.contains(c.value("name", "")) && c.value("healthStatus", "") != "HEALTHY") {
        return false;
      }
    }
    return true;
  }

  // Where the load balancer sends a task's traffic: the host side of containerName:containerPort.
  static std::optional<std::string> target_of(const task_view& t, const json& lb) {
    for (const auto& c : t.doc.value("containers", json::array())) {
      if (c.value("name", "") != lb["containerName"]) continue;
      for (const auto& b : c.value("networkBindings", json::array())) {
        if (b.value("containerPort", -1) == lb["containerPort"].get<int>() &&
            b.value("hostPort", 0) != 0) {
          return b.value("bindIP", std::string("127.0.0.1")) + ":" +
                 std::to_string(b["hostPort"].get<int>());
        }
      }
    }
    return std::nullopt;
  }

  static std::string server_name(const std::string& task_arn) {
    return "berth-" + short_id(task_arn);
  }

  std::chrono::milliseconds deregistration_delay(const json& s) const {
    for (const auto& t : s.value("tags", json::array())) {
      if (t.value("key", "") != "berth:deregistration-delay") continue;
      try {
        return std::chrono::seconds(std::stol(t.value("value", "")));
      } catch (...) {
      }
    }
    return cfg_.deregistration_delay;
  }

  // Stops a task: drained from its load balancers first when it is registered.
  void retire(json& s, const task_view& t, const std::string& reason,
              std::vector<std::string>& stopped) {
    if (draining_.contains(t.arn)) return;
    bool registered = false;
    if (lb_) {
      for (const auto& lb : s["loadBalancers"]) {
        auto servers = lb_->servers(lb["loadBalancerName"]);
        if (!servers) continue;
        for (const auto& sv : *servers) {
          if (sv.name != server_name(t.arn)) continue;
          if (lb_->drain(lb["loadBalancerName"], sv.name)) registered = true;
        }
      }
    }
    if (registered) {
      draining_[t.arn] = {std::chrono::steady_clock::now(), reason, s["serviceArn"]};
      event(s, "has begun draining connections on 1 tasks.");
      return;
    }
    stop(s, t.arn, reason, stopped);
  }

  void stop(json& s, const std::string& task_arn, const std::string& reason,
            std::vector<std::string>& stopped) {
    auto r = tasks_.call("StopTask", {{"cluster", name_of(s["clusterArn"].get<std::string>())},
                                      {"task", task_arn},
                                      {"reason", reason}});
    if (!r) {
      spdlog::warn("service {}: cannot stop {}: {}", s["serviceName"].get<std::string>(), task_arn,
                   r.error().message);
      return;
    }
    metrics_.add("berth_service_tasks_stopped_total", {});
    stopped.push_back(task_arn);
  }

  void report_stopped(json& s, std::vector<std::string>& stopped) {
    if (stopped.empty()) return;
    std::string ids;
    for (const auto& a : stopped) ids += " (task " + short_id(a) + ")";
    event(s, "has stopped " + std::to_string(stopped.size()) + " running tasks:" + ids + ".");
    stopped.clear();
  }

  void reconcile(json& s) {
    const std::string cluster = name_of(s["clusterArn"].get<std::string>());
    const bool deleting = s["status"] == "DRAINING";
    auto listed = tasks_of(s, false);
    if (!listed) return;  // tried again next pass
    const std::vector<task_view>& live = *listed;
    const double now = now_seconds();
    const double grace = s.value("healthCheckGracePeriodSeconds", 0);
    std::vector<std::string> stopped_now;

    // Load balancers: what each backend holds now.
    std::map<std::string, std::map<std::string, haproxy::server>> servers;  // backend -> name
    bool lb_ok = true;
    if (lb_) {
      for (const auto& lb : s["loadBalancers"]) {
        auto list = lb_->servers(lb["loadBalancerName"]);
        if (!list) {
          lb_ok = false;
          warn(s, "is unable to register targets with (load balancer " +
                      lb["loadBalancerName"].get<std::string>() + "): " + list.error().message);
          continue;
        }
        for (const auto& sv : *list) servers[lb["loadBalancerName"]][sv.name] = sv;
      }
    }
    const bool balanced = !s["loadBalancers"].empty() && lb_.has_value();

    // Draining tasks: stopped once their sessions are gone or the delay has passed.
    for (auto it = draining_.begin(); it != draining_.end();) {
      if (it->second.service != s["serviceArn"]) {
        ++it;
        continue;
      }
      const auto t = std::find_if(live.begin(), live.end(),
                                  [&](const task_view& v) { return v.arn == it->first; });
      if (t == live.end()) {
        // Stopped some other way meanwhile: its server goes, the drain is over.
        for (const auto& lb : s["loadBalancers"]) {
          if (lb_) (void)lb_->remove(lb["loadBalancerName"], server_name(it->first));
        }
        it = draining_.erase(it);
        continue;
      }
      long sessions = 0;
      for (auto& [backend, names] : servers) {
        if (const auto sv = names.find(server_name(it->first)); sv != names.end()) {
          sessions += sv->second.sessions;
        }
      }
      const bool expired =
          std::chrono::steady_clock::now() - it->second.since >= deregistration_delay(s);
      if (sessions > 0 && !expired) {
        ++it;
        continue;
      }
      int removed = 0;
      for (const auto& lb : s["loadBalancers"]) {
        if (lb_ && expired)
          (void)lb_->shutdown_sessions(lb["loadBalancerName"], server_name(it->first));
        if (lb_ && lb_->remove(lb["loadBalancerName"], server_name(it->first))) {
          servers[lb["loadBalancerName"]].erase(server_name(it->first));
          ++removed;
        }
      }
      if (removed > 0) {
        event(s, "deregistered 1 targets in (load balancer " +
                     s["loadBalancers"][0]["loadBalancerName"].get<std::string>() + ")");
      }
      stop(s, it->first, it->second.reason, stopped_now);
      it = draining_.erase(it);
    }
    const auto gone = [&](const task_view& t) {
      return draining_.contains(t.arn) ||
             std::find(stopped_now.begin(), stopped_now.end(), t.arn) != stopped_now.end();
    };

    // Registration: each running (and, with a health check, healthy) task in every backend;
    // servers of tasks gone, out.
    std::map<std::string, bool> lb_up;  // task -> every backend says UP
    if (balanced && lb_ok) {
      std::set<std::string> wanted;
      for (const auto& t : live) {
        if (t.last != "RUNNING" || t.desired != "RUNNING" || gone(t)) continue;
        // Registered once RUNNING and, where there is a health check, healthy.
        if (t.health == "UNHEALTHY" || !checks_pass(t)) continue;
        wanted.insert(server_name(t.arn));
        bool up = true;
        int added = 0;
        std::string backend;
        for (const auto& lb : s["loadBalancers"]) {
          backend = lb["loadBalancerName"];
          auto& names = servers[backend];
          const auto sv = names.find(server_name(t.arn));
          if (sv == names.end()) {
            const auto target = target_of(t, lb);
            if (!target) {
              up = false;
              continue;
            }
            if (auto a = lb_->add(backend, server_name(t.arn), *target); !a) {
              warn(s, "is unable to register targets with (load balancer " + backend +
                          "): " + a.error().message);
              up = false;
              continue;
            }
            ++added;
            up = false;  // its first check is still to come
          } else if (sv->second.status.starts_with("DRAIN")) {
            // Draining when berthd went down: the drain goes on.
            draining_[t.arn] = {std::chrono::steady_clock::now(),
                                "Scaling activity (a drain resumed after a restart)",
                                s["serviceArn"]};
            up = false;
          } else if (sv->second.status.starts_with("MAINT")) {
            // Added but never put in service: out, and added again next pass.
            (void)lb_->remove(backend, server_name(t.arn));
            up = false;
          } else {
            // "UP" once checks have passed (a server is added DOWN; "UP 1/3" is one HAProxy
            // added but not yet marked DOWN, or one failing its checks).
            up &= sv->second.status == "UP";
          }
        }
        if (added > 0) {
          event(s, "registered 1 targets in (load balancer " + backend + ")");
        }
        lb_up[t.arn] = up;
      }
      for (const auto& [backend, names] : servers) {
        for (const auto& [name, sv] : names) {
          if (!name.starts_with("berth-") || wanted.contains(name)) continue;
          bool drained_task = false;
          for (const auto& [arn, d] : draining_) drained_task |= server_name(arn) == name;
          if (drained_task) continue;
          if (lb_->remove(backend, name)) {
            event(s, "deregistered 1 targets in (load balancer " + backend + ")");
          }
        }
      }
    }

    // Health: a task is healthy when RUNNING, its health check (if any) says so, and every
    // load balancer has it UP. Unhealthy ones past the grace period are replaced.
    const auto healthy = [&](const task_view& t) {
      if (t.last != "RUNNING" || t.desired != "RUNNING" || gone(t)) return false;
      if (t.health == "UNHEALTHY" || !checks_pass(t)) return false;
      if (balanced) return lb_ok && lb_up.contains(t.arn) && lb_up[t.arn];
      return true;
    };
    for (const auto& t : live) {
      if (gone(t) || t.last != "RUNNING" || t.desired != "RUNNING") continue;
      if (t.health == "UNHEALTHY") {
        retire(s, t, "Task failed container health checks", stopped_now);
        continue;
      }
      if (balanced && lb_ok && now - t.started > grace) {
        for (const auto& lb : s["loadBalancers"]) {
          const auto& names = servers[lb["loadBalancerName"]];
          const auto sv = names.find(server_name(t.arn));
          if (sv != names.end() && sv->second.failing()) {
            retire(s, t,
                   "Task failed ELB health checks in (load balancer " +
                       lb["loadBalancerName"].get<std::string>() + ")",
                   stopped_now);
            break;
          }
        }
      }
    }

    // Deployments.
    json& deps = s["deployments"];
    json* primary = nullptr;
    for (auto& d : deps) {
      if (d["status"] == "PRIMARY") primary = &d;
    }
    const std::int64_t desired = s["desiredCount"];
    const std::int64_t max_pct = s["deploymentConfiguration"]["maximumPercent"];
    const std::int64_t min_pct = s["deploymentConfiguration"]["minimumHealthyPercent"];
    const std::int64_t most = desired * max_pct / 100;
    const auto fewest = static_cast<std::int64_t>(
        std::ceil(static_cast<double>(desired) * static_cast<double>(min_pct) / 100.0));
    std::map<std::string, std::vector<const task_view*>> by_dep;
    std::int64_t total = 0, healthy_total = 0;
    for (const auto& t : live) {
      if (t.desired != "RUNNING") continue;
      ++total;  // draining ones too: they still hold their place
      if (gone(t)) continue;
      by_dep[t.deployment].push_back(&t);
      if (healthy(t)) ++healthy_total;
    }

    // The circuit breaker: tasks of the primary deployment that failed.
    if (primary != nullptr && (*primary)["rolloutState"] == "IN_PROGRESS" && !deleting) {
      std::int64_t failed = 0;
      for (const auto& t : tasks_of(s, true).value_or(std::vector<task_view>{})) {
        if (t.deployment != (*primary)["id"]) continue;
        const std::string code = t.doc.value("stopCode", "");
        const std::string why = t.doc.value("stoppedReason", "");
        if (code != "UserInitiated" || why.find("health checks") != std::string::npos) ++failed;
      }
      (*primary)["failedTasks"] = failed;
      const json& cb = s["deploymentConfiguration"]["deploymentCircuitBreaker"];
      const std::int64_t threshold =
          std::max<std::int64_t>(3, std::min<std::int64_t>(200, (desired + 1) / 2));
      if (cb.value("enable", false) && failed >= threshold) {
        (*primary)["rolloutState"] = "FAILED";
        (*primary)["rolloutStateReason"] = "ECS deployment circuit breaker: tasks failed to start.";
        event(s, "deployment " + (*primary)["id"].get<std::string>() +
                     " deployment failed: tasks failed to start.");
        const json last_good = s["_berth"].value("lastGood", json());
        if (cb.value("rollback", false) && last_good.is_string() &&
            last_good != (*primary)["taskDefinition"]) {
          report_stopped(s, stopped_now);
          start_deployment(s, last_good);
          event(s, "is rolling back to " + name_of(last_good.get<std::string>()) + ".");
          return;  // the next pass works on the new primary
        }
      }
    }
    const bool tripped = primary != nullptr && (*primary)["rolloutState"] == "FAILED";

    // Start what the primary lacks, within maximumPercent.
    if (primary != nullptr && !tripped && !deleting) {
      const auto& mine = by_dep[(*primary)["id"]];
      const std::int64_t want = desired - static_cast<std::int64_t>(mine.size());
      const std::int64_t room = std::max<std::int64_t>(most, desired > 0 ? 1 : 0) - total;
      const std::int64_t n = std::min<std::int64_t>({want, room, 10});
      if (n > 0) {
        auto r =
            tasks_.call("RunTask", {{"cluster", cluster},
                                    {"taskDefinition", (*primary)["taskDefinition"]},
                                    {"count", n},
                                    {"startedBy", (*primary)["id"]},
                                    {"group", "service:" + s["serviceName"].get<std::string>()},
                                    {"placementConstraints", s["placementConstraints"]},
                                    {"placementStrategy", s["placementStrategy"]}});
        if (r && !(*r)["tasks"].empty()) {
          std::string ids;
          for (const auto& t : (*r)["tasks"]) ids += " (task " + short_id(t["taskArn"]) + ")";
          event(s, "has started " + std::to_string((*r)["tasks"].size()) + " tasks:" + ids + ".");
          metrics_.add("berth_service_tasks_started_total", {},
                       static_cast<double>((*r)["tasks"].size()));
        }
        if (r && !(*r)["failures"].empty()) {
          std::string reasons;
          for (const auto& f : (*r)["failures"]) reasons += " " + f.value("reason", "");
          warn(s,
               "was unable to place a task because no container instance met all of its "
               "requirements. Reasons:" +
                   reasons + ".");
        }
        if (!r) warn(s, "was unable to start tasks: " + r.error().message);
      }
      // Too many: pending ones first, then unhealthy ones, then the newest (this agent's
      // instance holds them all, so none balances placement better than another).
      if (want < 0 && lb_ok) {
        std::vector<const task_view*> extra = mine;
        std::sort(extra.begin(), extra.end(), [&](const task_view* a, const task_view* b) {
          const bool ap = a->last != "RUNNING", bp = b->last != "RUNNING";
          if (ap != bp) return ap;
          const bool ah = healthy(*a), bh = healthy(*b);
          if (ah != bh) return !ah;
          return a->doc.value("createdAt", 0.0) > b->doc.value("createdAt", 0.0);
        });
        std::int64_t n_stop = -want;
        for (const auto* t : extra) {
          if (n_stop-- <= 0) break;
          if (healthy(*t)) --healthy_total;
          retire(s, *t,
                 "Scaling activity initiated by (deployment " +
                     (*primary)["id"].get<std::string>() + ")",
                 stopped_now);
        }
      }
    }

    // Old deployments, and tasks of no deployment still known: stopped while
    // minimumHealthyPercent holds, unhealthy ones at once. Deleting: everything. Not while the
    // load balancer cannot say who is healthy, nor when a tripped deployment halts the rollout.
    std::int64_t spare = healthy_total - fewest;
    std::vector<std::string> retiring;
    for (const auto& [id, list] : by_dep) {
      if (primary != nullptr && id == (*primary)["id"] && !deleting) continue;
      retiring.push_back(id);
    }
    const bool hold = !deleting && (!lb_ok || tripped);
    for (const auto& id : hold ? std::vector<std::string>{} : retiring) {
      for (const auto* t : by_dep[id]) {
        if (gone(*t)) continue;
        const bool counts = healthy(*t);
        if (counts && spare <= 0 && !deleting) continue;
        if (counts) --spare;
        retire(s, *t,
               deleting ? "Service is being deleted"
                        : "Scaling activity initiated by (deployment " +
                              (primary ? (*primary)["id"].get<std::string>() : "") + ")",
               stopped_now);
      }
    }
    report_stopped(s, stopped_now);

    // Counts, per deployment and in all.
    std::int64_t running = 0, pending = 0;
    for (auto& d : deps) {
      std::int64_t r = 0, p = 0;
      for (const auto& t : live) {
        if (t.deployment != d["id"] || t.desired != "RUNNING") continue;
        (t.last == "RUNNING" ? r : p) += 1;
      }
      d["runningCount"] = r;
      d["pendingCount"] = p;
      running += r;
      pending += p;
    }
    s["runningCount"] = running;
    s["pendingCount"] = pending;
    // Old deployments without tasks are done with.
    for (auto it = deps.begin(); it != deps.end();) {
      const bool empty = (*it)["runningCount"] == 0 && (*it)["pendingCount"] == 0;
      if ((*it)["status"] != "PRIMARY" && empty) {
        it = deps.erase(it);
      } else {
        ++it;
      }
    }
    if (deleting) {
      bool drains = false;
      for (const auto& [a, d] : draining_) drains |= d.service == s["serviceArn"];
      if (live.empty() && !drains) {
        s["status"] = "INACTIVE";
        event(s, "has been deleted.");
      }
      return;
    }
    // Steady: the primary alone, all its tasks healthy.
    if (primary != nullptr) {
      std::int64_t good = 0;
      for (const auto* t : by_dep[(*primary)["id"]]) good += healthy(*t) ? 1 : 0;
      const bool alone = deps.size() == 1;
      const bool steady = alone && good == desired &&
                          static_cast<std::int64_t>(by_dep[(*primary)["id"]].size()) == desired;
      if (steady && (*primary)["rolloutState"] == "IN_PROGRESS") {
        (*primary)["rolloutState"] = "COMPLETED";
        (*primary)["rolloutStateReason"] =
            "ECS deployment " + (*primary)["id"].get<std::string>() + " completed.";
        s["_berth"]["lastGood"] = (*primary)["taskDefinition"];
      }
      if (steady && !s["_berth"].value("steady", false)) {
        event(s, "has reached a steady state.");
      }
      if (s["_berth"].value("steady", false) != steady) (*primary)["updatedAt"] = now;
      s["_berth"]["steady"] = steady;
    }
  }

  struct drain {
    std::chrono::steady_clock::time_point since;
    std::string reason;
    std::string service;  // its ARN
  };

  config cfg_;
  std::unique_ptr<store> store_;
  service& tasks_;
  event_bus& bus_;
  metrics& metrics_;
  std::optional<haproxy> lb_;
  std::mutex mu_;       // services, the store, HAProxy: one pass or API call at a time
  std::mutex wake_mu_;  // a leaf lock, held only to read or set the two flags below
  std::condition_variable wake_cv_;
  bool stopping_ = false, woken_ = false;
  std::atomic<bool> busy_ = false;  // the last pass saw a service not yet steady
  std::thread loop_;
  std::map<std::string, drain> draining_;  // task ARN -> since when, and why it stops
  std::map<std::string, std::chrono::steady_clock::time_point> warned_;  // warn()'s memory
  std::map<std::string, std::set<std::string>> checked_;  // task definition -> checked containers
};

result<std::unique_ptr<scheduler>> make_scheduler(const config& c, std::unique_ptr<store> st,
                                                  service& tasks, event_bus& bus, metrics& m) {
  auto s = std::make_unique<scheduler_impl>(c, std::move(st), tasks, bus, m);
  s->start();
  return std::unique_ptr<scheduler>(std::move(s));
}

}  // namespace berth::agent
