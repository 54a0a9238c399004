// The service actions of the ECS API: CreateService, UpdateService, DeleteService,
// DescribeServices, ListServices. Each validates, then writes the record by compare-and-swap
// (a pass of the loop that wrote first makes it read again and redo), then wakes the loop,
// which does the work.
#include "actions.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <regex>

#include "berth/agent/util.hpp"

namespace berth::agent::sched {

namespace {

using outcome = tl::expected<json, api_error>;

api_error invalid(std::string m) { return {"InvalidParameterException", std::move(m)}; }
api_error client(std::string m) { return {"ClientException", std::move(m)}; }
api_error not_found() { return {"ServiceNotFoundException", "Service not found."}; }
// A write that lost to another writer: the action runs again on what that one wrote.
constexpr const char* conflict = "berth.Conflict";
constexpr int attempts = 5;

// A member of the wrong type is refused, naming it.
tl::expected<void, api_error> expect_type(const json& req, const char* k, bool (json::*is)() const,
                                          const char* what) {
  const auto it = req.find(k);
  if (it == req.end() || it->is_null() || ((*it).*is)()) return {};
  return tl::unexpected(
      api_error{"SerializationException", std::string("Expected '") + k + "' to be " + what});
}

class actions_impl final : public actions {
 public:
  actions_impl(records& recs, task_api& tasks, bool has_lb,
               std::function<void(const json&)> changed)
      : recs_(recs), tasks_(tasks), has_lb_(has_lb), changed_(std::move(changed)) {}

  bool serves(const std::string& action) const override {
    return action == "CreateService" || action == "UpdateService" || action == "DeleteService" ||
           action == "DescribeServices" || action == "ListServices";
  }

  outcome call(const std::string& action, const json& req) override {
    if (!req.is_object()) {
      return tl::unexpected(
          api_error{"SerializationException", "The request body must be a JSON object"});
    }
    // One action at a time, as before; the loop never waits on this lock.
    std::lock_guard lock(mu_);
    for (int attempt = 1;; ++attempt) {
      auto r = dispatch(action, req);
      if (r || r.error().type != conflict) return r;
      if (attempt == attempts) {
        return tl::unexpected(api_error{
            "ServerException", "The service kept changing while it was updated; try again", 500});
      }
    }
  }

 private:
  outcome dispatch(const std::string& action, const json& req) {
    try {
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

  tl::expected<void, api_error> save(json& s) {
    auto w = recs_.commit(s);
    if (!w) {
      return tl::unexpected(api_error{
          "ServerException", "The service could not be stored: " + w.error().message, 500});
    }
    if (!*w) return tl::unexpected(api_error{conflict, "the record changed meanwhile"});
    return {};
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
      if (!has_lb_) {
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
    const auto old = recs_.load(*cluster, name);
    if (old && (*old)["status"] != "INACTIVE") {
      return tl::unexpected(invalid("Creation of service was not idempotent."));
    }
    auto td = task_definition(req["taskDefinition"]);
    if (!td) return tl::unexpected(td.error());
    auto lbs = load_balancers(req, *td);
    if (!lbs) return tl::unexpected(lbs.error());
    // A backend is one service's: each removes servers of its own kind it does not know.
    if (auto all = recs_.all(""); all) {
      for (const auto& other : *all) {
        if (other.value("status", "") == "INACTIVE") continue;
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
    const std::string cluster_arn = recs_.arn("cluster/" + *cluster);
    json s = {{"serviceArn", recs_.arn("service/" + *cluster + "/" + name)},
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
              {"deployments",
               json::array({to_json(rc::new_deployment(deployment_id(), (*td)["taskDefinitionArn"],
                                                       desired, now_seconds()))})},
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
              {"createdBy", recs_.arn("user/berth")}};
    // Over an INACTIVE record of the same name: written at its revision.
    s["_berth"] = {
        {"lastGood", nullptr}, {"steady", false}, {"revision", old ? revision(*old) : 0}};
    if (auto w = save(s); !w) return tl::unexpected(w.error());
    changed_(s);
    return json{{"service", records::view(s)}};
  }

  tl::expected<json, api_error> find(const json& req, std::string& cluster) {
    auto c = cluster_of(req);
    if (!c) return tl::unexpected(c.error());
    cluster = *c;
    if (!req.contains("service") || !req["service"].is_string()) {
      return tl::unexpected(invalid("'service' is required"));
    }
    auto s = recs_.load(cluster, name_of(req["service"].get<std::string>()));
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
    if (auto w = save(s); !w) return tl::unexpected(w.error());
    changed_(s);
    return json{{"service", records::view(s)}};
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
    const auto dep = rc::new_deployment(deployment_id(), td, s["desiredCount"].get<std::int64_t>(),
                                        now_seconds());
    s["deployments"].insert(s["deployments"].begin(), to_json(dep));
    s["taskDefinition"] = td;
    s["_berth"]["steady"] = false;
    records::event(s, rc::started_message(dep));
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
    records::event(s, "is being deleted.");
    if (auto w = save(s); !w) return tl::unexpected(w.error());
    changed_(s);
    return json{{"service", records::view(s)}};
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
      auto s = recs_.load(*cluster, name_of(ref.get<std::string>()));
      if (!s) {
        out["failures"].push_back({{"arn", ref}, {"reason", "MISSING"}});
        continue;
      }
      json v = records::view(*s);
      if (!tags) v.erase("tags");
      out["services"].push_back(v);
    }
    return out;
  }

  outcome list_services(const json& req) {
    auto cluster = cluster_of(req);
    if (!cluster) return tl::unexpected(cluster.error());
    // The filters ECS has: a launch type, a scheduling strategy (each compared with what the
    // service says; Berth's are EC2 and REPLICA).
    std::map<std::string, std::string> filters;
    for (const auto& [name, allowed] : {std::pair<const char*, std::vector<std::string>>{
                                            "launchType", {"EC2", "FARGATE", "EXTERNAL"}},
                                        {"schedulingStrategy", {"REPLICA", "DAEMON"}}}) {
      const auto it = req.find(name);
      if (it == req.end() || it->is_null()) continue;
      if (!it->is_string()) {
        return tl::unexpected(api_error{"SerializationException",
                                        std::string("Expected '") + name + "' to be a string"});
      }
      if (std::find(allowed.begin(), allowed.end(), it->get<std::string>()) == allowed.end()) {
        std::string valid;
        for (const auto& v : allowed) valid += (valid.empty() ? "" : ", ") + v;
        return tl::unexpected(invalid(std::string("Invalid ") + name + " '" +
                                      it->get<std::string>() + "'. Valid values: " + valid + "."));
      }
      filters[name] = *it;
    }
    auto all = recs_.all(*cluster + "/");
    if (!all)
      return tl::unexpected(api_error{"ServerException", "The store could not list services", 500});
    std::vector<std::string> arns;
    for (const auto& s : *all) {
      if (s.value("status", "") == "INACTIVE") continue;
      const bool kept = std::all_of(filters.begin(), filters.end(), [&](const auto& f) {
        return s.value(f.first, f.first == "launchType" ? "EC2" : "REPLICA") == f.second;
      });
      if (kept) arns.push_back(s["serviceArn"]);
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

  records& recs_;
  task_api& tasks_;
  bool has_lb_;
  std::function<void(const json&)> changed_;
  std::mutex mu_;
};

}  // namespace

std::unique_ptr<actions> make_actions(records& recs, task_api& tasks, bool has_lb,
                                      std::function<void(const json&)> changed) {
  return std::make_unique<actions_impl>(recs, tasks, has_lb, std::move(changed));
}

}  // namespace berth::agent::sched
