// The ECS actions over the task table, the ledger and placement: clusters, container
// instances and attributes, tags, RunTask/StartTask (placement and the records' commit),
// StopTask (a record's desiredStatus), ListTasks, DescribeTasks and the placement query.
//
// Locking: the task table's mutex (mu_) guards the records, the placer's task groups, holding_
// and the event stream's bookkeeping; the instance's lock is taken before it. Reads (Describe*,
// List*, introspection) use the table's published copies and take neither. The task engine
// (agent/engine) follows the records; nothing here calls it.
#include "service.hpp"

#include <spdlog/spdlog.h>
#include <sys/utsname.h>

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <limits>
#include <list>
#include <mutex>
#include <regex>
#include <set>
#include <shared_mutex>
#include <thread>

#include "audit.hpp"
#include "berth/ipc.hpp"
#include "berth/placement.hpp"
#include "berth/version.hpp"
#include "ecs_request.hpp"
#include "instance.hpp"
#include "task_definitions.hpp"
#include "task_engine.hpp"
#include "task_table.hpp"
#include "task_views.hpp"
#include "util.hpp"

namespace berth::agent {

namespace {

namespace dk = berth::docker;
namespace pl = berth::placement;
using namespace control;
using namespace std::chrono_literals;

// ---- the service ----

class service_impl final : public service {
 public:
  service_impl(const config& c, std::unique_ptr<store> s, std::unique_ptr<dk::engine> d,
               ipc::ledger l, metrics& m, event_bus& bus)
      : cfg_(c),
        store_(std::move(s)),
        docker_(std::move(d)),
        ledger_(std::move(l)),
        placer_(ledger_),
        metrics_(m),
        bus_(bus) {}

  ~service_impl() override { shutdown(); }

  result<void> start() {
    if (auto r = ensure_cluster(cfg_.cluster); !r) return r;
    if (auto r = inst_.register_instance(); !r) return r;
    if (auto r = recover(); !r) return r;
    {
      std::lock_guard lock(mu_);
      table_.watch([this](const state::task_table::change& c) { on_record(c); });
    }
    declare_metrics();  // before the engine's housekeeping counts anything
    engine_ = engine::make_task_engine(cfg_, inst_.arn(), state_dir_, table_, *docker_, *store_,
                                       metrics_);
    if (auto r = engine_->start(); !r) return r;
    heartbeat_ = std::thread([this] { heartbeat_loop(); });
    return {};
  }

  void on_task_change(std::function<void(const json& task)> fn) override {
    std::lock_guard lock(mu_);
    on_change_ = std::move(fn);
  }

  void shutdown() override {
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    cv_.notify_all();
    if (heartbeat_.joinable()) heartbeat_.join();
    if (engine_) engine_->shutdown();
  }

  outcome call(const std::string& action, const json& req) override {
    using handler = outcome (service_impl::*)(const json&);
    static const std::map<std::string, handler> actions = {
        {"CreateCluster", &service_impl::create_cluster},
        {"ListClusters", &service_impl::list_clusters},
        {"DescribeClusters", &service_impl::describe_clusters},
        {"DeleteCluster", &service_impl::delete_cluster},
        {"ListContainerInstances", &service_impl::list_container_instances},
        {"DescribeContainerInstances", &service_impl::describe_container_instances},
        {"UpdateContainerInstancesState", &service_impl::update_container_instances_state},
        {"PutAttributes", &service_impl::put_attributes},
        {"DeleteAttributes", &service_impl::delete_attributes},
        {"ListAttributes", &service_impl::list_attributes},
        {"RegisterTaskDefinition", &service_impl::register_task_definition},
        {"DescribeTaskDefinition", &service_impl::describe_task_definition},
        {"ListTaskDefinitions", &service_impl::list_task_definitions},
        {"ListTaskDefinitionFamilies", &service_impl::list_task_definition_families},
        {"DeregisterTaskDefinition", &service_impl::deregister_task_definition},
        {"RunTask", &service_impl::run_task},
        {"StartTask", &service_impl::start_task},
        {"StopTask", &service_impl::stop_task},
        {"ListTasks", &service_impl::list_tasks},
        {"DescribeTasks", &service_impl::describe_tasks},
        {"TagResource", &service_impl::tag_resource},
        {"UntagResource", &service_impl::untag_resource},
        {"ListTagsForResource", &service_impl::list_tags_for_resource},
    };
    const auto it = actions.find(action);
    if (it == actions.end()) {
      return tl::unexpected(
          api_error{"UnknownOperationException", "Unknown operation: '" + action + "'"});
    }
    if (!req.is_object())
      return tl::unexpected(serialization("The request body must be a JSON object"));
    try {
      return (this->*(it->second))(req);
    } catch (const std::exception& e) {
      // A bug, not bad input: report it as AWS does, log it, and keep serving.
      spdlog::error("{} failed: {}", action, e.what());
      return tl::unexpected(server(std::string("Internal error: ") + e.what()));
    }
  }

 private:
  // ---- ARNs and store keys ----

  std::string arn(const std::string& rest) const {
    return "arn:aws:ecs:" + cfg_.region + ":" + cfg_.account_id + ":" + rest;
  }
  std::string cluster_arn(const std::string& name) const { return arn("cluster/" + name); }

  // A cluster named or ARNed in a request (default "default"), if it exists.
  tl::expected<json, api_error> find_cluster(const json& req) {
    BERTH_TRY(c, reader{req}.str("cluster"));
    const std::string name = name_of(c.value_or("default"));
    auto doc = store_->get("cluster", name);
    if (!doc) return tl::unexpected(server(doc.error().message));
    if (!*doc) return tl::unexpected(cluster_not_found());
    json j = json::parse(**doc);
    if (j["status"] != "ACTIVE") return tl::unexpected(cluster_not_found());
    return j;
  }

  result<void> ensure_cluster(const std::string& name) {
    auto doc = store_->get("cluster", name);
    if (!doc) return tl::unexpected(doc.error());
    if (*doc && json::parse(**doc)["status"] == "ACTIVE") return {};
    json c = {{"clusterArn", cluster_arn(name)},
              {"clusterName", name},
              {"status", "ACTIVE"},
              {"tags", json::array()},
              {"settings", json::array()}};
    return store_->put("cluster", name, c.dump());
  }

  // ---- the instance ----

  void heartbeat_loop() {
    std::unique_lock lock(mu_);
    while (!stopping_) {
      inst_.heartbeat();
      cv_.wait_for(lock, 1s, [&] { return stopping_; });
    }
  }

  // This agent's tasks RUNNING, and PENDING or PROVISIONING.
  // This instance's tasks running and pending: every task berthd knows runs here.
  std::pair<std::int64_t, std::int64_t> count_tasks() const { return inst_.task_counts(); }

  std::pair<std::int64_t, std::int64_t> count_tasks_locked() const {
    std::int64_t running = 0, pending = 0;
    for (const auto& [arn, t] : tasks_) {
      const std::string last = t.value("lastStatus", "");
      running += last == "RUNNING";
      pending += last == "PENDING" || last == "PROVISIONING";
    }
    return {running, pending};
  }

  // ---- clusters ----

  outcome create_cluster(const json& req) {
    reader r{req};
    BERTH_TRY(name, r.str("clusterName"));
    const std::string n = name.value_or("default");
    if (n.empty() || n.size() > 255 || !std::all_of(n.begin(), n.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '_';
        })) {
      return tl::unexpected(invalid(
          "Cluster name must be 1-255 letters, numbers, hyphens and underscores: '" + n + "'"));
    }
    BERTH_TRY(tags, tags_of(req));
    auto doc = store_->get("cluster", n);
    if (!doc) return tl::unexpected(server(doc.error().message));
    json c;
    if (*doc && json::parse(**doc)["status"] == "ACTIVE") {
      c = json::parse(**doc);  // idempotent, as ECS
    } else {
      c = {{"clusterArn", cluster_arn(n)},
           {"clusterName", n},
           {"status", "ACTIVE"},
           {"tags", tags},
           {"settings", json::array()}};
      if (auto w = store_->put("cluster", n, c.dump()); !w) {
        return tl::unexpected(server(w.error().message));
      }
    }
    return json{{"cluster", cluster_view(c)}};
  }

  json cluster_view(json c) {
    const std::string name = c["clusterName"];
    std::int64_t running = 0, pending = 0, instances = 0;
    if (name == cfg_.cluster) {
      instances = 1;
      std::tie(running, pending) = count_tasks();
    }
    c["registeredContainerInstancesCount"] = instances;
    c["runningTasksCount"] = running;
    c["pendingTasksCount"] = pending;
    c["activeServicesCount"] = 0;
    c["statistics"] = json::array();
    return c;
  }

  outcome list_clusters(const json& req) {
    auto all = store_->list("cluster", "");
    if (!all) return tl::unexpected(server(all.error().message));
    std::vector<std::string> arns;
    for (const auto& [k, v] : *all) {
      const json c = json::parse(v);
      if (c["status"] == "ACTIVE") arns.push_back(c["clusterArn"]);
    }
    BERTH_TRY(range, page(reader{req}, arns.size(), 100));
    json out = {{"clusterArns", json::array()}};
    for (std::size_t i = range.first; i < range.second; ++i) out["clusterArns"].push_back(arns[i]);
    add_token(out, range.second, arns.size());
    return out;
  }

  outcome describe_clusters(const json& req) {
    BERTH_TRY(names, reader{req}.strings("clusters"));
    if (names.empty()) names.push_back("default");
    if (names.size() > 100) return tl::unexpected(invalid("clusters can list at most 100"));
    json out = {{"clusters", json::array()}, {"failures", json::array()}};
    for (const auto& n : names) {
      auto doc = store_->get("cluster", name_of(n));
      if (!doc) return tl::unexpected(server(doc.error().message));
      if (!*doc) {
        out["failures"].push_back(
            {{"arn", n.starts_with("arn:") ? n : cluster_arn(n)}, {"reason", "MISSING"}});
        continue;
      }
      out["clusters"].push_back(cluster_view(json::parse(**doc)));
    }
    return out;
  }

  outcome delete_cluster(const json& req) {
    BERTH_TRY(n, reader{req}.required_str("cluster"));
    const std::string name = name_of(n);
    auto doc = store_->get("cluster", name);
    if (!doc) return tl::unexpected(server(doc.error().message));
    if (!*doc || json::parse(**doc)["status"] != "ACTIVE") {
      return tl::unexpected(cluster_not_found());
    }
    if (name == cfg_.cluster) {
      return tl::unexpected(api_error{
          "ClusterContainsContainerInstancesException",
          "The Cluster cannot be deleted while Container Instances are active or draining."});
    }
    json c = json::parse(**doc);
    c["status"] = "INACTIVE";
    if (auto w = store_->put("cluster", name, c.dump()); !w) {
      return tl::unexpected(server(w.error().message));
    }
    return json{{"cluster", cluster_view(c)}};
  }

  // ---- container instances and attributes ----

  outcome list_container_instances(const json& req) {
    BERTH_TRY(c, find_cluster(req));
    BERTH_TRY(status, reader{req}.str("status"));
    BERTH_TRY(filter, reader{req}.str("filter"));
    std::vector<std::string> arns;
    if (c["clusterName"] == cfg_.cluster) {
      const json ci = inst_.doc();
      bool keep = !status || ci["status"] == *status;
      if (keep && filter && !filter->empty()) {
        auto q = pl::compile({{}, "", {{"memberOf", *filter}}, {}});
        if (!q) return tl::unexpected(invalid(q.error().message));
        pl::task_groups g;
        pl::place_options o;
        o.dry_run = true;
        std::lock_guard lock(mu_);
        auto out = placer_.place(*q, {}, g, o);
        keep = out && !out->slots.empty();
      }
      if (keep) arns.push_back(inst_.arn());
    }
    BERTH_TRY(range, page(reader{req}, arns.size(), 100));
    json out = {{"containerInstanceArns", json::array()}};
    for (std::size_t i = range.first; i < range.second; ++i) {
      out["containerInstanceArns"].push_back(arns[i]);
    }
    add_token(out, range.second, arns.size());
    return out;
  }

  outcome describe_container_instances(const json& req) {
    BERTH_TRY(c, find_cluster(req));
    BERTH_TRY(refs, reader{req}.strings("containerInstances"));
    if (refs.empty()) return tl::unexpected(invalid("containerInstances must not be empty"));
    json out = {{"containerInstances", json::array()}, {"failures", json::array()}};
    for (const auto& ref : refs) {
      if (c["clusterName"] == cfg_.cluster && inst_.is_me(ref)) {
        out["containerInstances"].push_back(inst_.describe(inst_.doc()));
      } else {
        out["failures"].push_back({{"arn", ref}, {"reason", "MISSING"}});
      }
    }
    return out;
  }

  outcome update_container_instances_state(const json& req) {
    BERTH_TRY(c, find_cluster(req));
    BERTH_TRY(refs, reader{req}.strings("containerInstances"));
    BERTH_TRY(status, reader{req}.required_str("status"));
    if (status != "ACTIVE" && status != "DRAINING") {
      return tl::unexpected(invalid("status must be ACTIVE or DRAINING, not '" + status + "'"));
    }
    json out = {{"containerInstances", json::array()}, {"failures", json::array()}};
    // The instance document and its ledger row change together, one writer at a time.
    std::lock_guard instance_lock(inst_.mutex());
    for (const auto& ref : refs) {
      if (c["clusterName"] != cfg_.cluster || !inst_.is_me(ref)) {
        out["failures"].push_back({{"arn", ref}, {"reason", "MISSING"}});
        continue;
      }
      json ci = inst_.doc();
      ci["status"] = status;
      ci["version"] = ci.value("version", 0) + 1;
      if (auto w = store_->put("instance", cfg_.cluster + "/" + inst_.id(), ci.dump()); !w) {
        return tl::unexpected(server(w.error().message));
      }
      if (auto p = inst_.publish_row(ci); !p) return tl::unexpected(server(p.error().message));
      out["containerInstances"].push_back(inst_.describe(ci));
    }
    return out;
  }

  // Attributes on container instances (the only target type ECS has).
  tl::expected<std::vector<json>, api_error> attribute_list(const json& req) {
    BERTH_TRY(list, reader{req}.list("attributes"));
    if (list == nullptr || list->empty())
      return tl::unexpected(invalid("attributes must not be empty"));
    if (list->size() > 10) return tl::unexpected(invalid("at most 10 attributes per call"));
    std::vector<json> out;
    static const std::regex name_re("^[a-zA-Z0-9_.\\-/]{1,128}$");
    static const std::regex value_re("^[a-zA-Z0-9_.\\-/ :@]{1,128}$");
    for (const auto& a : *list) {
      if (!a.is_object() || !a.contains("name") || !a["name"].is_string()) {
        return tl::unexpected(invalid("every attribute needs a 'name' string"));
      }
      const std::string name = a["name"];
      if (!std::regex_match(name, name_re)) {
        return tl::unexpected(invalid("attribute name '" + name + "' is not valid"));
      }
      if (a.contains("value") && !a["value"].is_null()) {
        if (!a["value"].is_string() || !std::regex_match(a["value"].get<std::string>(), value_re)) {
          return tl::unexpected(invalid("attribute value for '" + name + "' is not valid"));
        }
      }
      if (a.contains("targetType") && a["targetType"] != "container-instance") {
        return tl::unexpected(invalid("targetType must be container-instance"));
      }
      out.push_back(a);
    }
    return out;
  }

  outcome change_attributes(const json& req, bool put) {
    BERTH_TRY(c, find_cluster(req));
    BERTH_TRY(attrs, attribute_list(req));
    std::lock_guard instance_lock(inst_.mutex());
    json ci = inst_.doc();
    for (const auto& a : attrs) {
      const std::string target = a.value("targetId", std::string());
      if (target.empty() || c["clusterName"] != cfg_.cluster || !inst_.is_me(target)) {
        return tl::unexpected(
            api_error{"TargetNotFoundException", "Could not find the target '" + target + "'"});
      }
    }
    for (const auto& a : attrs) {
      const std::string name = a["name"];
      if (name.starts_with("ecs.")) {
        return tl::unexpected(invalid("attribute names starting with 'ecs.' are reserved"));
      }
      json kept = json::array();
      for (const auto& e : ci["attributes"]) {
        if (e["name"] != name) kept.push_back(e);
      }
      if (put) {
        json e = {{"name", name}};
        if (a.contains("value") && !a["value"].is_null()) e["value"] = a["value"];
        kept.push_back(e);
      }
      ci["attributes"] = kept;
    }
    if (auto w = store_->put("instance", cfg_.cluster + "/" + inst_.id(), ci.dump()); !w) {
      return tl::unexpected(server(w.error().message));
    }
    if (auto p = inst_.publish_row(ci); !p) return tl::unexpected(server(p.error().message));
    json out = {{"attributes", json::array()}};
    for (auto a : attrs) {
      a["targetType"] = "container-instance";
      a["targetId"] = inst_.arn();
      out["attributes"].push_back(a);
    }
    return out;
  }
  outcome put_attributes(const json& req) { return change_attributes(req, true); }
  outcome delete_attributes(const json& req) { return change_attributes(req, false); }

  outcome list_attributes(const json& req) {
    BERTH_TRY(c, find_cluster(req));
    reader r{req};
    BERTH_TRY(type, r.required_str("targetType"));
    if (type != "container-instance") {
      return tl::unexpected(invalid("targetType must be container-instance"));
    }
    BERTH_TRY(name, r.str("attributeName"));
    BERTH_TRY(value, r.str("attributeValue"));
    if (value && !name) return tl::unexpected(invalid("attributeValue needs attributeName"));
    std::vector<json> all;
    if (c["clusterName"] == cfg_.cluster) {
      const json ci = inst_.doc();  // not a temporary: the loop reads into it
      for (const auto& a : ci["attributes"]) {
        if (name && a["name"] != *name) continue;
        if (value && a.value("value", std::string()) != *value) continue;
        json e = a;
        e["targetType"] = "container-instance";
        e["targetId"] = inst_.arn();
        all.push_back(e);
      }
    }
    BERTH_TRY(range, page(r, all.size(), 100));
    json out = {{"attributes", json::array()}};
    for (std::size_t i = range.first; i < range.second; ++i) out["attributes"].push_back(all[i]);
    add_token(out, range.second, all.size());
    return out;
  }

  // ---- tags ----

  // The store document an ARN names: its kind and key.
  std::optional<std::pair<std::string, std::string>> resource_of(const std::string& a) {
    const std::string prefix = arn("");
    if (!a.starts_with(prefix)) return std::nullopt;
    const std::string rest = a.substr(prefix.size());
    if (rest.starts_with("cluster/")) return std::pair{std::string("cluster"), rest.substr(8)};
    if (rest.starts_with("task-definition/")) {
      const std::string fr = rest.substr(16);
      const auto colon = fr.rfind(':');
      if (colon == std::string::npos) return std::nullopt;
      try {
        return std::pair{std::string("taskdef"),
                         td_key(fr.substr(0, colon), std::stoul(fr.substr(colon + 1)))};
      } catch (...) {
        return std::nullopt;
      }
    }
    if (rest.starts_with("task/")) return std::pair{std::string("task"), rest.substr(5)};
    if (rest.starts_with("container-instance/")) {
      return std::pair{std::string("instance"), rest.substr(19)};
    }
    return std::nullopt;
  }

  outcome change_tags(const json& req, bool add) {
    reader r{req};
    BERTH_TRY(a, r.required_str("resourceArn"));
    auto res = resource_of(a);
    if (!res) return tl::unexpected(invalid("resourceArn '" + a + "' is not a Berth resource"));
    // Lock order: inst_.mutex() before mu_, everywhere.
    std::unique_lock instance_lock(inst_.mutex(), std::defer_lock);
    if (res->first == "instance") instance_lock.lock();
    std::lock_guard lock(mu_);
    auto doc = store_->get(res->first, res->second);
    if (!doc) return tl::unexpected(server(doc.error().message));
    if (!*doc) {
      return tl::unexpected(
          api_error{"ResourceNotFoundException", "The specified resource was not found: " + a});
    }
    json d = json::parse(**doc);
    if (!d.contains("tags")) d["tags"] = json::array();
    if (add) {
      BERTH_TRY(tags, tags_of(req));
      if (tags.empty()) return tl::unexpected(invalid("tags must not be empty"));
      for (const auto& t : tags) {
        json kept = json::array();
        for (const auto& e : d["tags"]) {
          if (e["key"] != t["key"]) kept.push_back(e);
        }
        kept.push_back(t);
        d["tags"] = kept;
      }
      if (d["tags"].size() > 50) return tl::unexpected(invalid("a resource has at most 50 tags"));
    } else {
      BERTH_TRY(keys, r.strings("tagKeys"));
      if (keys.empty()) return tl::unexpected(invalid("tagKeys must not be empty"));
      json kept = json::array();
      for (const auto& e : d["tags"]) {
        if (std::find(keys.begin(), keys.end(), e["key"].get<std::string>()) == keys.end()) {
          kept.push_back(e);
        }
      }
      d["tags"] = kept;
    }
    if (auto w = store_->put(res->first, res->second, d.dump()); !w) {
      return tl::unexpected(server(w.error().message));
    }
    if (res->first == "task" && tasks_.contains(a)) {
      tasks_[a]["tags"] = d["tags"];
      table_.save(tasks_[a]);
    }
    return json::object();
  }
  outcome tag_resource(const json& req) { return change_tags(req, true); }
  outcome untag_resource(const json& req) { return change_tags(req, false); }

  outcome list_tags_for_resource(const json& req) {
    BERTH_TRY(a, reader{req}.required_str("resourceArn"));
    auto res = resource_of(a);
    if (!res) return tl::unexpected(invalid("resourceArn '" + a + "' is not a Berth resource"));
    auto doc = store_->get(res->first, res->second);
    if (!doc) return tl::unexpected(server(doc.error().message));
    if (!*doc) {
      return tl::unexpected(
          api_error{"ResourceNotFoundException", "The specified resource was not found: " + a});
    }
    const json d = json::parse(**doc);
    return json{{"tags", d.value("tags", json::array())}};
  }

  // ---- task definitions ----

  outcome register_task_definition(const json& req) { return tds_.register_task_definition(req); }
  outcome describe_task_definition(const json& req) { return tds_.describe_task_definition(req); }
  outcome list_task_definitions(const json& req) { return tds_.list_task_definitions(req); }
  outcome list_task_definition_families(const json& req) {
    return tds_.list_task_definition_families(req);
  }
  outcome deregister_task_definition(const json& req) {
    return tds_.deregister_task_definition(req);
  }
  tl::expected<json, api_error> find_task_definition(const std::string& ref, bool active_only) {
    return tds_.find_task_definition(ref, active_only);
  }

  // ---- tasks: placement ----

  struct task_need {
    pl::requirements req;
    std::vector<std::uint16_t> ports;
  };

  // What a task takes from its instance: task-level cpu/memory, else the containers' sum.
  static task_need need_of(const json& td, const json& overrides) {
    task_need n;
    std::uint32_t cpu = 0, mib = 0;
    for (const auto& c : td["containerDefinitions"]) {
      json o = json::object();
      for (const auto& co : overrides.value("containerOverrides", json::array())) {
        if (co.value("name", std::string()) == c["name"]) o = co;
      }
      cpu += static_cast<std::uint32_t>(o.value("cpu", c.value("cpu", 0)));
      const auto mem = o.contains("memory") ? o["memory"] : c.value("memory", json());
      const auto res = o.contains("memoryReservation") ? o["memoryReservation"]
                                                       : c.value("memoryReservation", json());
      mib += static_cast<std::uint32_t>(res.is_number()   ? res.get<std::int64_t>()
                                        : mem.is_number() ? mem.get<std::int64_t>()
                                                          : 0);
      for (const auto& p : c["portMappings"]) {
        const auto hp = p.value("hostPort", 0);
        if (hp != 0) {
          n.ports.push_back(static_cast<std::uint16_t>(hp));
        } else if (td["networkMode"] == "bridge") {
          ++n.req.dynamic_ports;
        }
      }
    }
    if (td.contains("cpu")) cpu = *units_of(td["cpu"], true);
    if (td.contains("memory")) mib = *units_of(td["memory"], false);
    if (overrides.contains("cpu")) cpu = units_of(overrides["cpu"], true).value_or(cpu);
    if (overrides.contains("memory")) mib = units_of(overrides["memory"], false).value_or(mib);
    n.req.cpu = cpu;
    n.req.mib = mib;
    std::sort(n.ports.begin(), n.ports.end());
    n.ports.erase(std::unique(n.ports.begin(), n.ports.end()), n.ports.end());
    n.req.static_ports = n.ports;
    return n;
  }

  tl::expected<std::pair<std::vector<pl::constraint>, std::vector<pl::strategy>>, api_error>
  placement_of(const json& req, const json& td) {
    std::vector<pl::constraint> cons;
    std::vector<pl::strategy> strat;
    const auto add_constraints = [&](const json& list) -> tl::expected<void, api_error> {
      if (!list.is_array())
        return tl::unexpected(serialization("Expected 'placementConstraints' to be a list"));
      for (const auto& c : list) {
        if (!c.is_object() || !c.contains("type") || !c["type"].is_string()) {
          return tl::unexpected(invalid("every placement constraint needs a 'type'"));
        }
        if (c.contains("expression") && !c["expression"].is_string()) {
          return tl::unexpected(serialization("Expected 'expression' to be a string"));
        }
        cons.push_back({c["type"], c.value("expression", std::string())});
      }
      return {};
    };
    if (td.contains("placementConstraints")) {
      if (auto r = add_constraints(td["placementConstraints"]); !r)
        return tl::unexpected(r.error());
    }
    if (req.contains("placementConstraints")) {
      if (auto r = add_constraints(req["placementConstraints"]); !r)
        return tl::unexpected(r.error());
    }
    if (req.contains("placementStrategy")) {
      if (!req["placementStrategy"].is_array()) {
        return tl::unexpected(serialization("Expected 'placementStrategy' to be a list"));
      }
      for (const auto& s : req["placementStrategy"]) {
        if (!s.is_object() || !s.contains("type") || !s["type"].is_string()) {
          return tl::unexpected(invalid("every placement strategy needs a 'type'"));
        }
        if (s.contains("field") && !s["field"].is_string()) {
          return tl::unexpected(serialization("Expected 'field' to be a string"));
        }
        strat.push_back({s["type"], s.value("field", std::string())});
      }
    }
    return std::pair{cons, strat};
  }

  // ---- tasks: the table ----

  // The client's view of a task: without Berth's own bookkeeping.
  static json view(json t) {
    t.erase("_berth");
    return t;
  }

  // Every change of a record, under mu_: announced on the event stream; a task that reached
  // STOPPED gives its capacity back (once: holding_ says whose capacity is still held).
  void on_record(const state::task_table::change& c) {
    const std::string a = c.task["taskArn"];
    if (c.erased) {
      published_.erase(a);
      return;
    }
    announce(c.task);
    if (c.task["lastStatus"] == "STOPPED" && holding_.erase(a) > 0) release(c.task);
  }

  // Gives a task's claim back: its ledger capacity and ports, and its place in its group.
  void release(const json& t) {
    const json& n = t["_berth"]["need"];
    std::vector<std::uint16_t> ports;
    for (const auto& p : n["ports"]) ports.push_back(p.get<std::uint16_t>());
    const ipc::demand dm{{n["cpu"].get<std::uint32_t>(), n["mib"].get<std::uint32_t>(), 0,
                          n["dynamic"].get<std::uint32_t>()},
                         ports};
    if (auto r = ledger_.release(inst_.slot(), dm); !r) {
      spdlog::error("task {}: ledger release failed: {}", t["taskArn"].get<std::string>(),
                    ipc::describe(r.error()));
    }
    groups_.remove(t["group"].get<std::string>(), inst_.slot(), placed_attributes(t));
  }

  // The instance's attribute words when the task was placed: what task_groups counted it under.
  static std::array<std::uint64_t, ipc::attribute_words> placed_attributes(const json& t) {
    std::array<std::uint64_t, ipc::attribute_words> a{};
    const json& words = t["_berth"].value("attributes", json::array());
    for (std::size_t w = 0; w < a.size() && w < words.size(); ++w) {
      if (words[w].is_number_unsigned()) a[w] = words[w].get<std::uint64_t>();
    }
    return a;
  }

  // A slot's attribute words as the ledger has them now.
  std::array<std::uint64_t, ipc::attribute_words> attributes_of(std::uint32_t slot) const {
    std::array<std::uint64_t, ipc::attribute_words> a{};
    const ipc::columns c = ledger_.view();
    if (slot < c.count) {
      for (std::uint32_t w = 0; w < ipc::attribute_words; ++w) a[w] = c.attributes[w][slot];
    }
    return a;
  }

  outcome run_task(const json& req) { return launch(req, false); }
  outcome start_task(const json& req) { return launch(req, true); }

  // What RunTask, StartTask and the placement query read alike, checked.
  struct launch_request {
    json cluster, td, overrides;
    std::int64_t count = 1;
    std::string group;
    task_need need;
    std::vector<pl::constraint> constraints;
    std::vector<pl::strategy> strategies;
  };

  tl::expected<launch_request, api_error> read_launch(const json& req) {
    launch_request l;
    BERTH_TRY(cluster, find_cluster(req));
    if (auto ok = check_launch_type(req); !ok) return tl::unexpected(ok.error());
    reader r{req};
    BERTH_TRY(ref, r.required_str("taskDefinition"));
    // The request's own values first, then what they refer to.
    BERTH_TRY(count_opt, r.integer("count"));
    l.count = count_opt.value_or(1);
    if (l.count < 1 || l.count > 10) {
      return tl::unexpected(invalid("count must be between 1 and 10"));
    }
    BERTH_TRY(td, find_task_definition(ref, true));
    BERTH_TRY(group_opt, r.str("group"));
    l.overrides = req.value("overrides", json::object());
    if (auto ok = check_overrides(l.overrides); !ok) return tl::unexpected(ok.error());
    for (const auto& co : member(l.overrides, "containerOverrides").is_array()
                              ? l.overrides["containerOverrides"]
                              : json::array()) {
      bool known = false;
      for (const auto& c : td["containerDefinitions"]) known |= c["name"] == co["name"];
      if (!known) {
        return tl::unexpected(
            invalid("containerOverrides names no container of the task "
                    "definition: '" +
                    co["name"].get<std::string>() + "'"));
      }
    }
    l.group = group_opt.value_or("family:" + td["family"].get<std::string>());
    BERTH_TRY(rules, placement_of(req, td));
    l.constraints = std::move(rules.first);
    l.strategies = std::move(rules.second);
    l.need = need_of(td, l.overrides);
    l.cluster = std::move(cluster);
    l.td = std::move(td);
    return l;
  }

  outcome launch(const json& req, bool explicit_instances) {
    BERTH_TRY(l, read_launch(req));
    reader r{req};
    BERTH_TRY(started_by, r.str("startedBy"));
    if (started_by && started_by->size() > 128)
      return tl::unexpected(invalid("startedBy is at most 128 characters"));
    BERTH_TRY(tags, tags_of(req));
    const json& cluster = l.cluster;
    const json& td = l.td;
    const json& overrides = l.overrides;
    const std::string& group = l.group;
    const std::int64_t count = l.count;
    const task_need& need = l.need;
    const bool mine = cluster["clusterName"] == cfg_.cluster;
    json out = {{"tasks", json::array()}, {"failures", json::array()}};
    if (explicit_instances) {
      BERTH_TRY(refs, r.strings("containerInstances"));
      if (refs.empty() || refs.size() > 10) {
        return tl::unexpected(invalid("containerInstances must name 1 to 10 instances"));
      }
      for (const auto& ci : refs) {
        if (!mine || !inst_.is_me(ci)) {
          out["failures"].push_back({{"arn", ci}, {"reason", "MISSING"}});
        }
      }
      if (!out["failures"].empty()) return out;
    } else if (!mine) {
      return tl::unexpected(invalid("No Container Instances were found in your cluster."));
    }
    pl::request preq{need.req, group,
                     explicit_instances ? std::vector<pl::constraint>{} : l.constraints,
                     explicit_instances ? std::vector<pl::strategy>{} : l.strategies};
    auto q = pl::compile(preq);
    if (!q) return tl::unexpected(invalid(q.error().message));
    std::lock_guard lock(mu_);
    if (stopping_) return tl::unexpected(server("berthd is shutting down"));
    pl::place_options o;
    o.count = static_cast<std::uint32_t>(explicit_instances ? 1 : count);
    o.seed = now_ns();
    o.now_ns = now_ns();
    o.heartbeat_timeout_ns = 10'000'000'000;  // an agent silent for 10 s is not placed on
    std::vector<std::uint32_t> slots;
    if (explicit_instances) {
      // The custom scheduler chose: reserve there or fail, no placement.
      for (std::int64_t i = 0; i < count; ++i) {
        const ipc::demand dm{{need.req.cpu, need.req.mib, need.req.gpus, need.req.dynamic_ports},
                             need.req.static_ports};
        if (auto rv = ledger_.reserve(inst_.slot(), dm); !rv) {
          out["failures"].push_back({{"arn", inst_.arn()}, {"reason", reserve_reason(rv.error())}});
          break;
        }
        groups_.add(group, inst_.slot(), attributes_of(inst_.slot()));
        slots.push_back(inst_.slot());
      }
    } else {
      auto placed = placer_.place(*q, need.req, groups_, o);
      if (!placed) return tl::unexpected(invalid(placed.error().message));
      count_placement(*placed, static_cast<std::size_t>(count));
      // Only this agent runs containers: a slot of another instance in the shared ledger (a
      // peer, or one whose agent is gone) is given back and reported.
      for (const std::uint32_t slot : placed->slots) {
        if (slot == inst_.slot()) {
          slots.push_back(slot);
          continue;
        }
        (void)ledger_.release(
            slot, ipc::demand{{need.req.cpu, need.req.mib, need.req.gpus, need.req.dynamic_ports},
                              need.req.static_ports});
        groups_.remove(group, slot, attributes_of(slot));
        out["failures"].push_back(
            {{"arn", arn("container-instance/" + cfg_.cluster + "/slot-" + std::to_string(slot))},
             {"reason", "AGENT"}});
      }
      if (placed->slots.size() < static_cast<std::size_t>(count)) {
        // Why the first task that did not fit was refused; this agent's instance is the only
        // one in its ledger, so every count is its.
        for (std::size_t why = 0; why < pl::reason_count; ++why) {
          if (placed->failures[why] == 0) continue;
          out["failures"].push_back(
              {{"arn", inst_.arn()},
               {"reason", std::string(pl::to_string(static_cast<pl::reason>(why)))}});
        }
        if (out["failures"].empty()) {
          out["failures"].push_back({{"arn", inst_.arn()}, {"reason", "RESOURCE:CPU"}});
        }
      }
    }
    // Every new task is committed in one transaction before anything starts: a store that
    // cannot write gets a 5xx, and the capacity goes back.
    std::vector<json> made;
    for (std::size_t i = 0; i < slots.size(); ++i) {
      made.push_back(new_task(td, cluster, group, started_by, overrides, tags, need));
    }
    for (const json& t : made) holding_.insert(t["taskArn"].get<std::string>());
    if (auto w = table_.commit_all(made); !w) {
      for (const json& t : made) holding_.erase(t["taskArn"].get<std::string>());
      for (const std::uint32_t slot : slots) {
        (void)ledger_.release(
            slot, ipc::demand{{need.req.cpu, need.req.mib, need.req.gpus, need.req.dynamic_ports},
                              need.req.static_ports});
        groups_.remove(group, slot, attributes_of(slot));
      }
      return tl::unexpected(server("The task could not be stored: " + w.error().message));
    }
    // The engine, watching the table, starts them.
    for (const json& t : made) out["tasks"].push_back(view(t));
    return out;
  }

  static std::string reserve_reason(ipc::error e) {
    switch (e.code) {
      case ipc::errc::insufficient_cpu:
        return "RESOURCE:CPU";
      case ipc::errc::insufficient_memory:
        return "RESOURCE:MEMORY";
      case ipc::errc::insufficient_gpu:
        return "RESOURCE:GPU";
      case ipc::errc::insufficient_ports:
      case ipc::errc::port_in_use:
        return "RESOURCE:PORTS";
      default:
        return "INACTIVE";
    }
  }

  json new_task(const json& td, const json& cluster, const std::string& group,
                const std::optional<std::string>& started_by, const json& overrides,
                const json& tags, const task_need& need) {
    const std::string id = random_hex(32);
    const std::string cname = cluster["clusterName"];
    const std::string task_arn = arn("task/" + cname + "/" + id);
    json t = {
        {"taskArn", task_arn},
        {"clusterArn", cluster["clusterArn"]},
        {"taskDefinitionArn", td["taskDefinitionArn"]},
        {"containerInstanceArn", inst_.arn()},
        {"overrides", overrides.empty() ? json{{"containerOverrides", json::array()}} : overrides},
        {"lastStatus", "PROVISIONING"},
        {"desiredStatus", "RUNNING"},
        {"cpu", std::to_string(need.req.cpu)},
        {"memory", std::to_string(need.req.mib)},
        {"containers", json::array()},
        {"version", 1},
        {"createdAt", now_seconds()},
        {"group", group},
        {"launchType", "EC2"},
        {"attachments", json::array()},
        {"availabilityZone", cfg_.availability_zone},
        {"tags", tags},
        {"healthStatus", "UNKNOWN"}};
    if (!overrides.contains("containerOverrides"))
      t["overrides"]["containerOverrides"] = json::array();
    if (started_by) t["startedBy"] = *started_by;
    for (const auto& c : td["containerDefinitions"]) {
      t["containers"].push_back(
          {{"containerArn", arn("container/" + cname + "/" + id + "/" + random_hex(32))},
           {"taskArn", task_arn},
           {"name", c["name"]},
           {"image", c["image"]},
           {"lastStatus", "PENDING"},
           {"networkBindings", json::array()},
           {"networkInterfaces", json::array()},
           {"healthStatus", "UNKNOWN"},
           {"cpu", std::to_string(c.value("cpu", 0))}});
      if (c.contains("memory"))
        t["containers"].back()["memory"] = std::to_string(c["memory"].get<int>());
      if (c.contains("memoryReservation")) {
        t["containers"].back()["memoryReservation"] =
            std::to_string(c["memoryReservation"].get<int>());
      }
    }
    t["_berth"] = {{"need",
                    {{"cpu", need.req.cpu},
                     {"mib", need.req.mib},
                     {"dynamic", need.req.dynamic_ports},
                     {"ports", need.ports}}},
                   {"taskDefinition", td},
                   {"attributes", attributes_of(inst_.slot())},
                   {"docker", json::object()},
                   {"events", json::array()}};
    return t;
  }

  // ---- tasks: recovery after a restart ----

  // The records as the store has them, and the capacity their tasks hold; the engine resumes
  // them (engine::task_engine::start).
  result<void> recover() {
    auto all = store_->list("task", cfg_.cluster + "/");
    if (!all) return tl::unexpected(all.error());
    std::uint32_t cpu = 0, mib = 0, dyn = 0;
    std::vector<std::uint16_t> ports(cfg_.reserved_ports.begin(), cfg_.reserved_ports.end());
    {
      std::lock_guard lock(mu_);
      for (const auto& [k, v] : *all) {
        json t = json::parse(v, nullptr, false);
        if (!t.is_object() || !t.contains("taskArn") || !t.contains("_berth")) {
          spdlog::error("store: task document {} is unreadable; skipped", k);
          continue;
        }
        const std::string a = t["taskArn"];
        table_.load(t);
        if (t["lastStatus"] == "STOPPED") continue;
        // Another instance's task (this one's ARN changed: its region or account did) takes
        // nothing here, and the engine does not drive it.
        if (t.value("containerInstanceArn", "") != inst_.arn()) {
          spdlog::warn("task {} is on instance {}, not this one ({}): left alone", a,
                       t.value("containerInstanceArn", ""), inst_.arn());
          continue;
        }
        holding_.insert(a);
        const json& n = t["_berth"]["need"];
        cpu += n["cpu"].get<std::uint32_t>();
        mib += n["mib"].get<std::uint32_t>();
        dyn += n["dynamic"].get<std::uint32_t>();
        for (const auto& p : n["ports"]) ports.push_back(p.get<std::uint16_t>());
        groups_.add(t["group"].get<std::string>(), inst_.slot(), placed_attributes(t));
      }
      // Capacity as the surviving tasks leave it; their ports and the reserved ones claimed.
      (void)ledger_.set_free(inst_.slot(),
                             {inst_.registered_cpu() > cpu ? inst_.registered_cpu() - cpu : 0,
                              inst_.registered_mib() > mib ? inst_.registered_mib() - mib : 0, 0,
                              dynamic_port_count > dyn ? dynamic_port_count - dyn : 0});
      std::sort(ports.begin(), ports.end());
      ports.erase(std::unique(ports.begin(), ports.end()), ports.end());
      // One port at a time: a port that cannot be claimed must not cost the others.
      for (const std::uint16_t p : ports) {
        const std::uint16_t one[] = {p};
        if (auto r = ledger_.reserve(inst_.slot(), ipc::demand{{0, 0, 0, 0}, one}); !r) {
          spdlog::warn("ledger: port {} not claimed: {}", p, ipc::describe(r.error()));
        }
      }
    }
    return {};
  }

  // ---- tasks: the other actions ----

  outcome stop_task(const json& req) {
    BERTH_TRY(cluster, find_cluster(req));
    reader r{req};
    BERTH_TRY(ref, r.required_str("task"));
    BERTH_TRY(reason, r.str("reason"));
    if (reason && reason->size() > 255)
      return tl::unexpected(invalid("reason is at most 255 characters"));
    const std::string key =
        arn("task/" + cluster["clusterName"].get<std::string>() + "/" + name_of(ref));
    std::lock_guard lock(mu_);
    const auto it = tasks_.find(key);
    if (it == tasks_.end()) return tl::unexpected(invalid("The referenced task was not found."));
    if (it->second["desiredStatus"] != "STOPPED") {
      json t = it->second;
      t["desiredStatus"] = "STOPPED";
      t["stopCode"] = "UserInitiated";
      t["stoppedReason"] = reason.value_or("Task stopped by user");
      t["stoppingAt"] = now_seconds();
      t["version"] = t.value("version", 0) + 1;
      if (auto w = table_.commit(t); !w) {
        return tl::unexpected(server("The task's stop could not be stored: " + w.error().message));
      }
    }
    return json{{"task", view(it->second)}};
  }

  outcome list_tasks(const json& req) {
    BERTH_TRY(cluster, find_cluster(req));
    reader r{req};
    BERTH_TRY(instance, r.str("containerInstance"));
    BERTH_TRY(family, r.str("family"));
    BERTH_TRY(started_by, r.str("startedBy"));
    BERTH_TRY(service_name, r.str("serviceName"));
    BERTH_TRY(desired, r.str("desiredStatus"));
    BERTH_TRY(launch_type, r.str("launchType"));
    if (desired && *desired != "RUNNING" && *desired != "PENDING" && *desired != "STOPPED") {
      return tl::unexpected(invalid("desiredStatus must be RUNNING, PENDING or STOPPED"));
    }
    if (launch_type && *launch_type != "EC2" && *launch_type != "FARGATE" &&
        *launch_type != "EXTERNAL") {
      return tl::unexpected(invalid("launchType must be EC2, FARGATE or EXTERNAL"));
    }
    if (instance && !inst_.is_me(*instance)) {
      return json{{"taskArns", json::array()}};
    }
    std::vector<std::pair<double, std::string>> found;
    {
      for (const auto& tp : table_.all()) {
        const json& t = *tp;
        const std::string& a = t["taskArn"].get_ref<const std::string&>();
        if (t["clusterArn"] != cluster["clusterArn"]) continue;
        const std::string want = desired.value_or("RUNNING");
        const std::string have = t["desiredStatus"];
        if (want == "STOPPED" ? have != "STOPPED" : have == "STOPPED") continue;
        if (family && t["_berth"]["taskDefinition"]["family"] != *family) continue;
        if (started_by && t.value("startedBy", std::string()) != *started_by) continue;
        if (service_name && t.value("group", std::string()) != "service:" + *service_name) continue;
        if (launch_type && *launch_type != "EC2") continue;
        found.emplace_back(t.value("createdAt", 0.0), a);
      }
    }
    std::sort(found.begin(), found.end());
    BERTH_TRY(range, page(r, found.size(), 100));
    json out = {{"taskArns", json::array()}};
    for (std::size_t i = range.first; i < range.second; ++i)
      out["taskArns"].push_back(found[i].second);
    add_token(out, range.second, found.size());
    return out;
  }

  // DescribeTasks, written from each task's serialized view: no JSON is built per call.
  tl::expected<std::string, api_error> describe_tasks_text(const json& req) {
    BERTH_TRY(cluster, find_cluster(req));
    reader r{req};
    BERTH_TRY(refs, r.strings("tasks"));
    if (refs.empty()) return tl::unexpected(invalid("Tasks cannot be empty."));
    if (refs.size() > 100) return tl::unexpected(invalid("tasks can list at most 100"));
    BERTH_TRY(include, r.strings("include"));
    const bool with_tags = std::find(include.begin(), include.end(), "TAGS") != include.end();
    std::string out = "{\"tasks\":[";
    json failures = json::array();
    bool first = true;
    for (const auto& ref : refs) {
      const auto t = table_.serialized(
          arn("task/" + cluster["clusterName"].get<std::string>() + "/" + name_of(ref)), with_tags);
      if (!t) {
        failures.push_back({{"arn", ref}, {"reason", "MISSING"}});
        continue;
      }
      if (!first) out += ',';
      out += *t;
      first = false;
    }
    out += "],\"failures\":";
    out += failures.dump(-1, ' ', false, json::error_handler_t::replace);
    out += '}';
    return out;
  }

  outcome describe_tasks(const json& req) {
    BERTH_TRY(text, describe_tasks_text(req));
    return json::parse(text);
  }

  std::optional<tl::expected<std::string, api_error>> call_serialized(const std::string& action,
                                                                      const json& req) override {
    if (action != "DescribeTasks" || !req.is_object()) return std::nullopt;
    try {
      return describe_tasks_text(req);
    } catch (const std::exception& e) {
      spdlog::error("{} failed: {}", action, e.what());
      return tl::unexpected(server(std::string("Internal error: ") + e.what()));
    }
  }

  // BerthV1.DescribeTaskUsage: Berth's own view of tasks beside DescribeTasks, which holds only
  // ECS's members: per container the memory and CPU used now, read from its cgroup, beside the
  // allocation, and the events Berth recorded (limits the kernel does not enforce).
  outcome task_usage(const json& req) override {
    if (!req.is_object())
      return tl::unexpected(serialization("The request body must be a JSON object"));
    BERTH_TRY(cluster, find_cluster(req));
    reader r{req};
    BERTH_TRY(refs, r.strings("tasks"));
    if (refs.empty()) return tl::unexpected(invalid("Tasks cannot be empty."));
    if (refs.size() > 100) return tl::unexpected(invalid("tasks can list at most 100"));
    json out = {{"tasks", json::array()}, {"failures", json::array()}};
    for (const auto& ref : refs) {
      const auto t =
          table_.get(arn("task/" + cluster["clusterName"].get<std::string>() + "/" + name_of(ref)));
      if (!t) {
        out["failures"].push_back({{"arn", ref}, {"reason", "MISSING"}});
        continue;
      }
      json u = {{"taskArn", (*t)["taskArn"]},
                {"memoryAllocatedMiB", std::stoll(t->value("memory", "0"))},
                {"containers", json::array()},
                {"events", (*t)["_berth"].value("events", json::array())}};
      const json usage = observe::usage_of(*t);
      std::int64_t used = 0;
      for (const auto& [name, cu] : usage.items()) {
        json c = cu;
        c["name"] = name;
        used += cu.value("memoryUsedBytes", std::int64_t{0});
        u["containers"].push_back(std::move(c));
      }
      if (!usage.empty()) u["memoryUsedBytes"] = used;
      out["tasks"].push_back(std::move(u));
    }
    return out;
  }

  // ---- the event stream ----

  // Publishes the task's state when it differs from what was last announced. Under mu_.
  void announce(const json& t) {
    const std::string state = t.value("lastStatus", "") + "/" + t.value("desiredStatus", "") + "/" +
                              t.value("healthStatus", "");
    std::string& last = published_[t["taskArn"].get<std::string>()];
    if (last == state) return;
    last = state;
    bus_.publish(observe::task_event(t, cfg_.account_id, cfg_.region)
                     .dump(-1, ' ', false, json::error_handler_t::replace));
    inst_.count_running(static_cast<std::uint32_t>(count_tasks_locked().first));
    if (on_change_) on_change_(t);
  }

  // ---- metrics ----

  void declare_metrics() {
    metrics_.counter("berth_placements_total", "Tasks placed on an instance");
    metrics_.counter("berth_placement_failures_total",
                     "Tasks not placed, by the first reason of each rejected instance");
    metrics_.gauge("berth_tasks", "Tasks known to this agent, by lastStatus");
    metrics_.gauge("berth_ledger_free_cpu_units", "Free CPU units per instance in the ledger");
    metrics_.gauge("berth_ledger_free_memory_mib", "Free memory per instance in the ledger");
    metrics_.gauge("berth_ledger_registered_cpu_units", "Registered CPU units per instance");
    metrics_.gauge("berth_ledger_registered_memory_mib", "Registered memory per instance");
    metrics_.counter("berth_tasks_cleaned_up_total", "Stopped tasks whose containers were removed");
    metrics_.counter("berth_images_removed_total", "Unused images removed by housekeeping");
    metrics_.counter("berth_image_cleanups_total", "Image cleanup cycles run");
    metrics_.on_collect([this](metrics& m) {
      std::map<std::string, int> by_state;
      for (const char* st : {"PROVISIONING", "PENDING", "ACTIVATING", "RUNNING", "DEACTIVATING",
                             "STOPPING", "DEPROVISIONING", "STOPPED"}) {
        by_state[st] = 0;
      }
      {
        std::lock_guard lock(mu_);
        for (const auto& [a, t] : tasks_) ++by_state[t.value("lastStatus", "UNKNOWN")];
      }
      for (const auto& [st, n] : by_state) m.set("berth_tasks", {{"state", st}}, n);
      // Instances gone from the ledger leave no series behind.
      for (const char* f :
           {"berth_ledger_free_cpu_units", "berth_ledger_free_memory_mib",
            "berth_ledger_registered_cpu_units", "berth_ledger_registered_memory_mib"}) {
        m.clear(f);
      }
      const ipc::columns c = ledger_.view();
      for (std::uint32_t slot = 0; slot < c.count; ++slot) {
        if (c.state[slot] == 0) continue;
        auto row = ledger_.read(slot);
        if (!row) continue;
        const metrics::labels l = {{"instance", std::string(row->published.id())}};
        m.set("berth_ledger_free_cpu_units", l, row->free.cpu);
        m.set("berth_ledger_free_memory_mib", l, row->free.mib);
        m.set("berth_ledger_registered_cpu_units", l, row->published.registered_cpu);
        m.set("berth_ledger_registered_memory_mib", l, row->published.registered_mib);
      }
    });
  }

  void count_placement(const pl::outcome& o, std::size_t wanted) {
    metrics_.add("berth_placements_total", {}, static_cast<double>(o.slots.size()));
    if (o.slots.size() >= wanted) return;
    for (std::size_t why = 0; why < pl::reason_count; ++why) {
      if (o.failures[why] == 0) continue;
      metrics_.add("berth_placement_failures_total",
                   {{"reason", std::string(pl::to_string(static_cast<pl::reason>(why)))}},
                   o.failures[why]);
    }
  }

  // ---- the placement query ----

  // An instance of the ledger as the placement query reports it.
  json instance_ref(std::uint32_t slot) const {
    json i = {{"slot", slot}};
    if (auto row = ledger_.read(slot)) i["ec2InstanceId"] = std::string(row->published.id());
    if (slot == inst_.slot()) i["containerInstanceArn"] = inst_.arn();
    return i;
  }

  outcome place(const json& req) override {
    if (!req.is_object())
      return tl::unexpected(serialization("The request body must be a JSON object"));
    try {
      const auto dry = req.find("dryRun");
      if (dry != req.end() && !dry->is_boolean() && !dry->is_null()) {
        return tl::unexpected(serialization("Expected 'dryRun' to be a boolean"));
      }
      if (dry == req.end() || !dry->is_boolean() || !dry->get<bool>()) return launch(req, false);
      return place_dry_run(req);
    } catch (const std::exception& e) {
      spdlog::error("Place failed: {}", e.what());
      return tl::unexpected(server(std::string("Internal error: ") + e.what()));
    }
  }

  outcome place_dry_run(const json& req) {
    BERTH_TRY(l, read_launch(req));
    if (l.cluster["clusterName"] != cfg_.cluster) {
      return tl::unexpected(invalid("No Container Instances were found in your cluster."));
    }
    const task_need& need = l.need;
    const std::int64_t count = l.count;
    auto q = pl::compile({need.req, l.group, l.constraints, l.strategies});
    if (!q) return tl::unexpected(invalid(q.error().message));
    std::lock_guard lock(mu_);
    pl::place_options o;
    o.count = static_cast<std::uint32_t>(count);
    o.dry_run = true;
    o.explain = true;
    o.seed = now_ns();
    o.now_ns = now_ns();
    o.heartbeat_timeout_ns = 10'000'000'000;
    auto placed = placer_.place(*q, need.req, groups_, o);
    if (!placed) return tl::unexpected(invalid(placed.error().message));
    json out = {{"dryRun", true},
                {"taskDefinitionArn", l.td["taskDefinitionArn"]},
                {"group", l.group},
                {"requirements",
                 {{"cpu", need.req.cpu},
                  {"memory", need.req.mib},
                  {"gpus", need.req.gpus},
                  {"hostPorts", need.ports},
                  {"dynamicPorts", need.req.dynamic_ports}}},
                {"placements", json::array()},
                {"rejected", json::array()},
                {"failures", json::array()}};
    for (const std::uint32_t slot : placed->slots) out["placements"].push_back(instance_ref(slot));
    for (const auto& [slot, why] : placed->rejected) {
      json i = instance_ref(slot);
      i["reason"] = std::string(pl::to_string(why));
      out["rejected"].push_back(i);
    }
    if (placed->slots.size() < static_cast<std::size_t>(count)) {
      for (std::size_t why = 0; why < pl::reason_count; ++why) {
        if (placed->failures[why] == 0) continue;
        out["failures"].push_back(
            {{"reason", std::string(pl::to_string(static_cast<pl::reason>(why)))},
             {"count", placed->failures[why]}});
      }
    }
    return out;
  }

  // ---- introspection (the ECS agent's /v1 API) ----

  json metadata() override {
    return {{"Cluster", cfg_.cluster},
            {"ContainerInstanceArn", inst_.arn()},
            {"Version", "Amazon ECS Agent - v" BERTH_VERSION " (berth)"}};
  }

  tl::expected<json, api_error> introspect_tasks(const std::string& docker_id,
                                                 const std::string& task_arn) override {
    if (!task_arn.empty()) {
      const auto t = table_.get(task_arn);
      if (!t) return tl::unexpected(api_error{"NotFound", "no such task", 404});
      return observe::introspect(*t);
    }
    const auto all = table_.all();
    if (!docker_id.empty()) {
      // The full id, or a prefix of at most 12 characters (Docker's short id), as the ECS agent.
      std::vector<const json*> found;
      for (const auto& t : all) {
        for (const auto& [name, id] : (*t)["_berth"]["docker"].items()) {
          const auto& i = id.get_ref<const std::string&>();
          if (docker_id.size() > 12 ? i == docker_id : i.starts_with(docker_id)) {
            found.push_back(t.get());
          }
        }
      }
      if (found.empty()) return tl::unexpected(api_error{"NotFound", "no such container", 404});
      if (found.size() > 1) {
        return tl::unexpected(
            api_error{"BadRequest", "multiple tasks found with short id " + docker_id, 400});
      }
      return observe::introspect(*found.front());
    }
    json out = {{"Tasks", json::array()}};
    for (const auto& t : all) out["Tasks"].push_back(observe::introspect(*t));
    return out;
  }

  config cfg_;
  // The state directory, absolute: what label_state_dir carries.
  std::string state_dir_ =
      std::filesystem::weakly_canonical(std::filesystem::absolute(cfg_.state_dir)).string();
  std::unique_ptr<store> store_;
  task_definitions tds_{store_.get(), "arn:aws:ecs:" + cfg_.region + ":" + cfg_.account_id + ":"};
  std::unique_ptr<dk::engine> docker_;
  ipc::ledger ledger_;
  pl::placer placer_;
  pl::task_groups groups_;
  // The tasks, shared with the engine. Its lock (mu_) also guards the placer's groups_,
  // holding_, published_, on_change_ and stopping_.
  state::task_table table_{*store_};
  // This instance; its lock is taken before mu_.
  instance inst_{cfg_, *store_, ledger_, *docker_, table_};
  std::mutex& mu_ = table_.mutex();
  std::condition_variable& cv_ = table_.changed();
  std::map<std::string, json>& tasks_ = table_.rows();
  bool stopping_ = false;
  std::set<std::string> holding_;  // tasks whose capacity is claimed: not yet STOPPED
  std::unique_ptr<engine::task_engine> engine_;
  std::thread heartbeat_;
  metrics& metrics_;
  event_bus& bus_;
  std::map<std::string, std::string> published_;  // task ARN -> the state last announced
  std::function<void(const json&)> on_change_;    // under mu_
};

}  // namespace

tl::expected<void, api_error> check_launch_type(const json& request) {
  reader r{request};
  BERTH_TRY(launch_type, r.str("launchType"));
  if (launch_type == "FARGATE" || launch_type == "EXTERNAL") {
    return tl::unexpected(invalid("Berth runs tasks on the EC2 launch type only: launchType " +
                                  *launch_type + " is not supported."));
  }
  if (launch_type && *launch_type != "EC2") {
    return tl::unexpected(invalid("Invalid launchType '" + *launch_type +
                                  "'. Valid values: EC2, FARGATE, EXTERNAL."));
  }
  if (const json& cps = member(request, "capacityProviderStrategy");
      !cps.is_null() && !(cps.is_array() && cps.empty())) {
    return tl::unexpected(
        invalid("Berth has no capacity providers: it runs tasks on the EC2 launch type only, "
                "and capacityProviderStrategy is not supported."));
  }
  return {};
}

result<std::unique_ptr<service>> make_service(const config& c, std::unique_ptr<store> s,
                                              std::unique_ptr<dk::engine> d, metrics& m,
                                              event_bus& events) {
  ipc::options lo;
  lo.cluster = c.cluster;
  lo.slots = 4096;
  auto l = ipc::ledger::open_or_create(lo);
  if (!l)
    return tl::unexpected(
        error{"ledger for cluster " + c.cluster + ": " + ipc::describe(l.error())});
  auto svc =
      std::make_unique<service_impl>(c, std::move(s), std::move(d), std::move(*l), m, events);
  if (auto r = svc->start(); !r) return tl::unexpected(r.error());
  return std::unique_ptr<service>(std::move(svc));
}

}  // namespace berth::agent
