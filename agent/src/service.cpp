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

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <list>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <thread>
#include <type_traits>
#include <unordered_map>

#include "account_settings.hpp"
#include "berth/agent/util.hpp"
#include "berth/api/audit.hpp"
#include "berth/engine/task_engine.hpp"
#include "berth/ipc.hpp"
#include "berth/placement.hpp"
#include "berth/version.hpp"
#include "clusters.hpp"
#include "daemon_task_definitions.hpp"
#include "ecs_request.hpp"
#include "imds.hpp"
#include "instance.hpp"
#include "lost_instances.hpp"
#include "not_served.hpp"
#include "registration.hpp"
#include "resource_arn.hpp"
#include "service_record.hpp"
#include "task_definitions.hpp"
#include "task_table.hpp"
#include "task_views.hpp"
#include "tasks.hpp"

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
        metrics_(m),
        bus_(bus) {}

  ~service_impl() override { shutdown(); }

  result<void> start() {
    if (auto r = clusters_.ensure(cfg_.cluster); !r) return r;
    // EC2's metadata, only when asked for.
    std::optional<instance_metadata> ec2;
    if (!cfg_.imds_endpoint.empty()) {
      auto md = read_imds(cfg_.imds_endpoint);
      if (!md) return tl::unexpected(md.error());
      ec2 = std::move(*md);
    }
    if (auto r = inst_.register_instance(ec2); !r) return r;
    // Every instance of the cluster (this one's record included) into the ledger, then the
    // tasks, counted on their instances.
    if (auto r = fleet_.open(); !r) return r;
    if (auto r = task_actions_.recover(); !r) return r;
    {
      std::lock_guard lock(mu_);
      for (const auto& t : table_.all()) fleet_.count(*t, false);
      table_.watch([this](const state::task_table::change& c) {
        fleet_.count(c.task, c.erased);
        task_actions_.on_record(c);
        if (c.erased) {
          published_.erase(c.task.arn());
          return;
        }
        announce(c.task);
      });
    }
    // Peers see this instance connected, and place on it, from here on.
    if (auto r = inst_.connect(); !r) return r;
    declare_metrics();  // before the engine's housekeeping counts anything
    engine_ = engine::make_task_engine(cfg_, inst_.arn(), state_dir_, table_, *docker_, *store_,
                                       metrics_);
    if (auto r = engine_->start(); !r) return r;
    heartbeat_ = std::thread([this] { heartbeat_loop(); });
    return {};
  }

  void on_task_change(std::function<void(const state::task& task)> fn) override {
    std::lock_guard lock(mu_);
    on_change_ = std::move(fn);
  }

  void shutdown() override {
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    // Nothing the store says reaches the watchers below once they start to go.
    table_.close();
    task_actions_.stop();
    cv_.notify_all();
    if (heartbeat_.joinable()) heartbeat_.join();
    if (engine_) engine_->shutdown();
    fleet_.close();
    inst_.disconnect();
  }

  outcome call(const std::string& action, const json& req) override {
    using handler = outcome (service_impl::*)(const json&);
    static const std::map<std::string, handler> actions = {
        {"CreateCluster", &service_impl::create_cluster},
        {"ListClusters", &service_impl::list_clusters},
        {"DescribeClusters", &service_impl::describe_clusters},
        {"DeleteCluster", &service_impl::delete_cluster},
        {"UpdateCluster", &service_impl::update_cluster},
        {"UpdateClusterSettings", &service_impl::update_cluster_settings},
        {"PutClusterCapacityProviders", &service_impl::put_cluster_capacity_providers},
        {"ListContainerInstances", &service_impl::list_container_instances},
        {"DescribeContainerInstances", &service_impl::describe_container_instances},
        {"UpdateContainerInstancesState", &service_impl::update_container_instances_state},
        {"RegisterContainerInstance", &service_impl::register_container_instance},
        {"DeregisterContainerInstance", &service_impl::deregister_container_instance},
        {"PutAttributes", &service_impl::put_attributes},
        {"DeleteAttributes", &service_impl::delete_attributes},
        {"ListAttributes", &service_impl::list_attributes},
        {"RegisterTaskDefinition", &service_impl::register_task_definition},
        {"DescribeTaskDefinition", &service_impl::describe_task_definition},
        {"ListTaskDefinitions", &service_impl::list_task_definitions},
        {"ListTaskDefinitionFamilies", &service_impl::list_task_definition_families},
        {"DeregisterTaskDefinition", &service_impl::deregister_task_definition},
        {"DeleteTaskDefinitions", &service_impl::delete_task_definitions},
        {"RegisterDaemonTaskDefinition", &service_impl::register_daemon_task_definition},
        {"DescribeDaemonTaskDefinition", &service_impl::describe_daemon_task_definition},
        {"ListDaemonTaskDefinitions", &service_impl::list_daemon_task_definitions},
        {"DeleteDaemonTaskDefinition", &service_impl::delete_daemon_task_definition},
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
      if (action == "DescribeCapacityProviders") return control::describe_capacity_providers(req);
      if (auto answer = control::not_served(action)) return tl::unexpected(*answer);
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
  // ---- tasks (control/tasks) ----

  outcome run_task(const json& req) { return task_actions_.run_task(req); }
  outcome start_task(const json& req) { return task_actions_.start_task(req); }
  outcome stop_task(const json& req) { return task_actions_.stop_task(req); }
  outcome list_tasks(const json& req) { return task_actions_.list_tasks(req); }
  outcome describe_tasks(const json& req) { return task_actions_.describe_tasks(req); }
  outcome task_usage(const json& req) override {
    return guarded("DescribeTaskUsage", req, [&] { return task_actions_.task_usage(req); });
  }
  outcome place(const json& req) override { return task_actions_.place(req); }
  outcome account_call(const std::string& action, const json& req,
                       const std::string& caller) override {
    if (!req.is_object()) {
      return tl::unexpected(serialization("The request body must be a JSON object"));
    }
    return account_.call(action, req, caller);
  }

  std::optional<tl::expected<std::string, api_error>> call_serialized(const std::string& action,
                                                                      const json& req) override {
    if (action != "DescribeTasks" || !req.is_object()) return std::nullopt;
    try {
      return task_actions_.describe_tasks_text(req);
    } catch (const std::exception& e) {
      spdlog::error("{} failed: {}", action, e.what());
      return tl::unexpected(server(std::string("Internal error: ") + e.what()));
    }
  }

  // A Berth action: the body must be an object; a bug is a 500, logged, and berthd serves on.
  template <class Fn>
  outcome guarded(const char* action, const json& req, Fn fn) {
    if (!req.is_object())
      return tl::unexpected(serialization("The request body must be a JSON object"));
    try {
      return fn();
    } catch (const std::exception& e) {
      spdlog::error("{} failed: {}", action, e.what());
      return tl::unexpected(server(std::string("Internal error: ") + e.what()));
    }
  }

  // ---- ARNs and store keys ----

  std::string arn(const std::string& rest) const {
    return "arn:aws:ecs:" + cfg_.region + ":" + cfg_.account_id + ":" + rest;
  }

  tl::expected<state::cluster, api_error> find_cluster(const std::optional<std::string>& ref) {
    return clusters_.find(ref);
  }

  // ---- the instance ----

  // The agent's lease kept alive, and the instances lost for longer than
  // --instance-lost-after have their tasks stopped.
  void heartbeat_loop() {
    std::unique_lock lock(mu_);
    for (unsigned beat = 1; !stopping_; ++beat) {
      lock.unlock();
      inst_.keep_alive();
      // Deleted task definitions nothing uses any more go, as ECS's periodic check does.
      if (beat % 10 == 0) {
        if (auto p = tds_.purge_deleted(); !p) {
          spdlog::warn("purging deleted task definitions: {}", p.error().message);
        }
      }
      lock.lock();
      control::stop_lost_tasks(cfg_, fleet_, table_);
      cv_.wait_for(lock, 1s, [&] { return stopping_; });
    }
  }

  // The cluster's tasks RUNNING, and PENDING or PROVISIONING.
  std::pair<std::int64_t, std::int64_t> count_tasks() const {
    const auto n = table_.status_counts();
    const auto of = [&](const char* s) {
      const auto it = n.find(s);
      return it == n.end() ? std::int64_t{0} : it->second;
    };
    return {of("RUNNING"), of("PENDING") + of("PROVISIONING")};
  }

  // ---- clusters (control/clusters) ----

  outcome create_cluster(const json& req) { return clusters_.create(req); }
  outcome list_clusters(const json& req) { return clusters_.list(req); }
  outcome describe_clusters(const json& req) { return clusters_.describe(req); }
  outcome delete_cluster(const json& req) { return clusters_.remove(req); }
  outcome update_cluster(const json& req) { return clusters_.update(req); }
  outcome update_cluster_settings(const json& req) { return clusters_.update_settings(req); }
  outcome put_cluster_capacity_providers(const json& req) {
    return clusters_.put_capacity_providers(req);
  }

  // ---- container instances and attributes ----

  outcome list_container_instances(const json& req) {
    BERTH_TRY(r, decode_request<ecs::list_container_instances_request>(req));
    BERTH_TRY(c, find_cluster(r.cluster));
    const auto& status = r.status;
    const auto& filter = r.filter;
    std::vector<std::string> arns;
    if (c.cluster_name == cfg_.cluster) {
      std::optional<std::vector<std::uint32_t>> slots;  // sorted
      if (filter && !filter->empty()) {
        BERTH_TRY(m, task_actions_.instances_matching(*filter));
        slots = std::move(m);
      }
      arns = fleet_.arns([&](const control::member& m) {
        // Deregistered ones only when asked for by status, as ECS lists them.
        if (status ? m.record.status != *status : m.record.status == "INACTIVE") return false;
        return !slots || std::binary_search(slots->begin(), slots->end(), m.slot);
      });
    }
    BERTH_TRY(range, page(r.next_token, r.max_results, arns.size(), 100));
    json out = {{"containerInstanceArns", json::array()}};
    for (std::size_t i = range.first; i < range.second; ++i) {
      out["containerInstanceArns"].push_back(arns[i]);
    }
    add_token(out, range.second, arns.size());
    return out;
  }

  // The instance a request names (ARN or id) in the cluster `c`, if it is this agent's cluster.
  std::optional<control::member> instance_in(const state::cluster& c, const std::string& ref) {
    if (c.cluster_name != cfg_.cluster) return std::nullopt;
    return fleet_.find(ref);
  }

  // An instance's record changed (fleet::change), or ServerException.
  tl::expected<state::container_instance, api_error> change_instance(
      const control::member& m, const std::function<void(state::container_instance&)>& change) {
    auto ci = fleet_.change(m.id, change);
    if (!ci) return tl::unexpected(server(ci.error().message));
    return std::move(*ci);
  }

  outcome describe_container_instances(const json& req) {
    const api_error none = client("Container Instances cannot be empty.");  // ECS's words
    BERTH_TRY(r, decode_request<ecs::describe_container_instances_request>(
                     req, "containerInstances", none));
    BERTH_TRY(c, find_cluster(r.cluster));
    const auto& refs = r.container_instances;
    if (refs.empty()) return tl::unexpected(none);
    json out = {{"containerInstances", json::array()}, {"failures", json::array()}};
    for (const auto& ref : refs) {
      if (auto m = instance_in(c, ref)) {
        out["containerInstances"].push_back(fleet_.describe(*m));
      } else {
        out["failures"].push_back({{"arn", ref}, {"reason", "MISSING"}});
      }
    }
    return out;
  }

  outcome update_container_instances_state(const json& req) {
    BERTH_TRY(r, decode_request<ecs::update_container_instances_state_request>(req));
    BERTH_TRY(c, find_cluster(r.cluster));
    const auto& refs = r.container_instances;
    const std::string& status = r.status;
    if (auto ok = not_empty(status, "status"); !ok) return tl::unexpected(ok.error());
    if (status != "ACTIVE" && status != "DRAINING") {
      return tl::unexpected(invalid("status must be ACTIVE or DRAINING, not '" + status + "'"));
    }
    json out = {{"containerInstances", json::array()}, {"failures", json::array()}};
    for (const auto& ref : refs) {
      auto m = instance_in(c, ref);
      if (!m) {
        out["failures"].push_back({{"arn", ref}, {"reason", "MISSING"}});
        continue;
      }
      BERTH_TRY(ci, change_instance(*m, [&](state::container_instance& ci) {
                  ci.status = status;
                  ++ci.version;
                }));
      m->record = std::move(ci);
      out["containerInstances"].push_back(fleet_.describe(*m));
    }
    return out;
  }

  outcome register_container_instance(const json& req) {
    BERTH_TRY(r, decode_request<ecs::register_container_instance_request>(req));
    BERTH_TRY(c, find_cluster(r.cluster));
    (void)c;
    return control::register_container_instance(fleet_, *store_, cfg_.cluster, arn(""), r);
  }
  outcome deregister_container_instance(const json& req) {
    BERTH_TRY(r, decode_request<ecs::deregister_container_instance_request>(req));
    BERTH_TRY(c, find_cluster(r.cluster));
    auto m = instance_in(c, r.container_instance);
    if (!m) {
      return tl::unexpected(invalid("The referenced container instance " + r.container_instance +
                                    " is not an instance of cluster " + c.cluster_name + "."));
    }
    std::lock_guard lock(mu_);
    return control::deregister_container_instance(fleet_, table_, *m, r.force.value_or(false));
  }

  // PutAttributes' and DeleteAttributes' requests, which are the same.
  template <class Request>
  outcome change_attributes(const json& req, bool put) {
    const api_error none = invalid("attributes must not be empty");
    BERTH_TRY(r, decode_request<Request>(req, "attributes", none));
    BERTH_TRY(c, find_cluster(r.cluster));
    if (r.attributes.empty()) return tl::unexpected(none);
    BERTH_TRY(attrs, attribute_list(std::move(r.attributes)));
    // The attributes by the instance they are on, each instance changed in one write.
    std::map<std::string, std::pair<control::member, std::vector<const attribute_change*>>> on;
    for (const auto& a : attrs) {
      auto m = a.target_id.empty() ? std::nullopt : instance_in(c, a.target_id);
      if (!m) {
        return tl::unexpected(api_error{"TargetNotFoundException",
                                        "Could not find the target '" + a.target_id + "'"});
      }
      if (a.name.starts_with("ecs.")) {
        return tl::unexpected(invalid("attribute names starting with 'ecs.' are reserved"));
      }
      auto& [member, list] =
          on.try_emplace(m->id, *m, std::vector<const attribute_change*>{}).first->second;
      list.push_back(&a);
    }
    json out = {{"attributes", json::array()}};
    for (const auto& [id, m_list] : on) {
      const auto& [m, list] = m_list;
      BERTH_TRY(ci, change_instance(m, [&](state::container_instance& ci) {
                  for (const attribute_change* a : list) {
                    std::erase_if(ci.attributes,
                                  [&](const state::attribute& e) { return e.name == a->name; });
                    if (put) ci.attributes.push_back({a->name, a->value});
                  }
                }));
      for (const attribute_change* a : list) {
        out["attributes"].push_back(
            state::response(state::attribute{a->name, a->value}, ci.container_instance_arn));
      }
    }
    return out;
  }
  outcome put_attributes(const json& req) {
    return change_attributes<ecs::put_attributes_request>(req, true);
  }
  outcome delete_attributes(const json& req) {
    return change_attributes<ecs::delete_attributes_request>(req, false);
  }

  outcome list_attributes(const json& req) {
    BERTH_TRY(r, decode_request<ecs::list_attributes_request>(req));
    BERTH_TRY(c, find_cluster(r.cluster));
    if (auto ok = not_empty(r.target_type, "targetType"); !ok) return tl::unexpected(ok.error());
    if (r.target_type != "container-instance") {
      return tl::unexpected(invalid("targetType must be container-instance"));
    }
    const auto& name = r.attribute_name;
    const auto& value = r.attribute_value;
    if (value && !name) return tl::unexpected(invalid("attributeValue needs attributeName"));
    std::vector<json> all;
    if (c.cluster_name == cfg_.cluster) {
      for (const control::member& m : fleet_.all()) {
        for (const auto& a : m.record.attributes) {
          if (name && a.name != *name) continue;
          if (value && a.value.value_or("") != *value) continue;
          all.push_back(state::response(a, m.record.container_instance_arn));
        }
      }
    }
    BERTH_TRY(range, page(r.next_token, r.max_results, all.size(), 100));
    json out = {{"attributes", json::array()}};
    for (std::size_t i = range.first; i < range.second; ++i) out["attributes"].push_back(all[i]);
    add_token(out, range.second, all.size());
    return out;
  }

  // ---- tags ----

  // A record stored as `text` under `key`, with its tags changed: the text to store. A service's
  // revision goes up with them, so that the scheduler's next compare-and-swap of the record
  // (which checks the revision) reads it again rather than write the old tags back.
  template <class Record>
  static tl::expected<std::string, api_error> retag(const std::string& text, const std::string& key,
                                                    const tag_change& change) {
    auto r = state::parse<Record>(text, key);
    if (!r) return tl::unexpected(server(r.error().detail));
    if (auto c = apply_tag_change(change, r->tags); !c) return tl::unexpected(c.error());
    if constexpr (std::is_same_v<Record, state::service>) ++r->berth.revision;
    return state::to_json(*r).dump();
  }

  // A task record's tags.
  static std::vector<state::tag> task_tags(const state::task& t) {
    std::vector<state::tag> out;
    for (const auto& tag : t.ecs.tags.value_or(std::vector<ecs::tag>{})) {
      if (tag.key) out.push_back({*tag.key, tag.value});
    }
    return out;
  }

  // `change` made to a task record's tags (ECS's list of key and value).
  static tl::expected<void, api_error> retag(state::task& t, const tag_change& change) {
    std::vector<state::tag> tags = task_tags(t);
    if (auto c = apply_tag_change(change, tags); !c) return tl::unexpected(c.error());
    t.ecs.tags.emplace();
    for (const state::tag& tag : tags) t.ecs.tags->push_back({tag.key, tag.value});
    return {};
  }
  // A task of this agent's table, retagged through the table's compare-and-swap. Under mu_.
  outcome retag_own_task(const std::string& arn, const tag_change& change) {
    state::task t = tasks_.at(arn);
    if (auto c = retag(t, change); !c) return tl::unexpected(c.error());
    if (auto w = table_.commit(t); !w) return tl::unexpected(server(w.error().message));
    return json::object();
  }
  // Any other task's record (stored as `text`) with its tags changed.
  static tl::expected<std::string, api_error> retag_task(const std::string& text,
                                                         const std::string& key,
                                                         const tag_change& change) {
    auto t = state::parse<state::task>(text, key);
    if (!t) return tl::unexpected(server(t.error().detail));
    if (auto c = retag(*t, change); !c) return tl::unexpected(c.error());
    return state::to_json(*t).dump();
  }

  // What a tag call on a resource that does not exist answers.
  static api_error not_found_for(const std::string& kind, const std::string& a) {
    if (kind == "cluster") return cluster_not_found();
    return {"ResourceNotFoundException", "The specified resource was not found: " + a};
  }

  // The record of `kind` under `key` changed by `fn` (text to text, or a refusal) in one
  // transaction: a writer that got there first makes `fn` run again on its record, not undone.
  outcome rewrite(
      const std::string& kind, const std::string& key, const std::string& a,
      const std::function<tl::expected<std::string, api_error>(const std::string&)>& fn) {
    std::optional<api_error> refused;
    auto w = store_->transaction([&](store& tx) -> result<void> {
      refused.reset();
      auto doc = tx.get(kind, key);
      if (!doc) return tl::unexpected(doc.error());
      auto text = *doc ? fn(**doc)
                       : tl::expected<std::string, api_error>(tl::unexpect, not_found_for(kind, a));
      if (!text) {
        refused = text.error();
        return tl::unexpected(error{refused->message});
      }
      return tx.put(kind, key, *text);
    });
    if (refused) return tl::unexpected(*refused);
    if (!w) return tl::unexpected(server(w.error().message));
    return json::object();
  }

  // The kind and store key of the resource an ARN names (resource_of), or why there is none.
  tl::expected<std::pair<std::string, std::string>, api_error> resource_named(
      const std::string& a) {
    if (auto ok = not_empty(a, "resourceArn"); !ok) return tl::unexpected(ok.error());
    auto res = control::resource_of(a, arn(""));
    if (!res) return tl::unexpected(invalid("resourceArn '" + a + "' is not a Berth resource"));
    return std::move(*res);
  }

  // The document of the resource `a`, stored under `kind` and `key`.
  tl::expected<std::string, api_error> resource_doc(const std::string& kind, const std::string& key,
                                                    const std::string& a) {
    auto doc = store_->get(kind, key);
    if (!doc) return tl::unexpected(server(doc.error().message));
    if (!*doc) return tl::unexpected(not_found_for(kind, a));
    return std::move(**doc);
  }

  outcome change_tags(const std::string& a, const tag_change& change) {
    BERTH_TRY(res, resource_named(a));
    const auto& [kind, key] = res;
    // Lock order: inst_.mutex() before mu_, everywhere.
    std::unique_lock instance_lock(inst_.mutex(), std::defer_lock);
    if (kind == "instance") instance_lock.lock();
    std::lock_guard lock(mu_);
    if (kind == "task" && tasks_.contains(a)) return retag_own_task(a, change);
    return rewrite(kind, key, a, [&](const std::string& text) {
      return kind == "cluster"    ? retag<state::cluster>(text, key, change)
             : kind == "instance" ? retag<state::container_instance>(text, key, change)
             : kind == "taskdef"  ? retag<state::task_definition>(text, key, change)
             : kind == "service"  ? retag<state::service>(text, key, change)
                                  : retag_task(text, key, change);
    });
  }
  outcome tag_resource(const json& req) {
    BERTH_TRY(r, decode_request<ecs::tag_resource_request>(req, "tags",
                                                           invalid("tags must not be empty")));
    return change_tags(r.resource_arn, {std::move(r.tags), {}});
  }
  outcome untag_resource(const json& req) {
    BERTH_TRY(r, decode_request<ecs::untag_resource_request>(req, "tagKeys",
                                                             invalid("tagKeys must not be empty")));
    return change_tags(r.resource_arn, {std::nullopt, std::move(r.tag_keys)});
  }

  outcome list_tags_for_resource(const json& req) {
    BERTH_TRY(r, decode_request<ecs::list_tags_for_resource_request>(req));
    const std::string& a = r.resource_arn;
    BERTH_TRY(res, resource_named(a));
    const auto& [kind, key] = res;
    BERTH_TRY(doc, resource_doc(kind, key, a));
    const auto tags_in = [](auto parsed) -> tl::expected<std::vector<state::tag>, api_error> {
      if (!parsed) return tl::unexpected(server(parsed.error().detail));
      return std::move(parsed->tags);
    };
    const auto task_tags_in =
        [](const std::string& text,
           const std::string& k) -> tl::expected<std::vector<state::tag>, api_error> {
      auto t = state::parse<state::task>(text, k);
      if (!t) return tl::unexpected(server(t.error().detail));
      return task_tags(*t);
    };
    BERTH_TRY(tags, kind == "cluster" ? tags_in(state::parse<state::cluster>(doc, key))
                    : kind == "instance"
                        ? tags_in(state::parse<state::container_instance>(doc, key))
                    : kind == "taskdef" ? tags_in(state::parse<state::task_definition>(doc, key))
                    : kind == "service" ? tags_in(state::parse<state::service>(doc, key))
                                        : task_tags_in(doc, key));
    return json{{"tags", state::to_json(tags)}};
  }

  // ---- task definitions ----

  outcome register_task_definition(const json& req) { return tds_.register_task_definition(req); }
  outcome describe_task_definition(const json& req) { return tds_.describe_task_definition(req); }
  outcome list_task_definitions(const json& req) { return tds_.list_task_definitions(req); }
  outcome list_task_definition_families(const json& req) {
    return tds_.list_task_definition_families(req);
  }
  outcome delete_task_definitions(const json& req) { return tds_.delete_task_definitions(req); }
  outcome register_daemon_task_definition(const json& req) {
    return daemon_tds_.register_daemon_task_definition(req);
  }
  outcome describe_daemon_task_definition(const json& req) {
    return daemon_tds_.describe_daemon_task_definition(req);
  }
  outcome list_daemon_task_definitions(const json& req) {
    return daemon_tds_.list_daemon_task_definitions(req);
  }
  outcome delete_daemon_task_definition(const json& req) {
    return daemon_tds_.delete_daemon_task_definition(req);
  }
  outcome deregister_task_definition(const json& req) {
    return tds_.deregister_task_definition(req);
  }

  // ---- the event stream ----

  // Publishes the task's state when it differs from what was last announced. Under mu_.
  void announce(const state::task& t) {
    const std::string state = t.ecs.last_status.value_or("") + "/" +
                              t.ecs.desired_status.value_or("") + "/" +
                              t.ecs.health_status.value_or("");
    std::string& last = published_[t.arn()];
    if (last == state) return;
    last = state;
    bus_.publish([&] {
      return observe::task_event(t, cfg_.account_id, cfg_.region)
          .dump(-1, ' ', false, json::error_handler_t::replace);
    });
    if (on_change_) on_change_(t);
  }

  // ---- metrics ----

  void declare_metrics() {
    metrics_.counter("berth_placements_total", "Tasks placed on an instance");
    metrics_.counter("berth_placement_failures_total",
                     "Tasks not placed, by the first reason of each rejected instance");
    metrics_.counter("berth_claim_commits_total",
                     "Store transactions committing new tasks with their capacity claims");
    metrics_.counter("berth_claim_refusals_total",
                     "Capacity claims refused by the store (a peer claimed the instance first): "
                     "their tasks were placed again");
    metrics_.histogram("berth_claim_commit_launches",
                       "RunTask and StartTask calls (placement rounds) per claim commit",
                       {1, 2, 4, 8, 16});
    metrics_.gauge("berth_tasks", "Tasks known to this agent, by lastStatus");
    metrics_.counter("berth_tasks_cleaned_up_total", "Stopped tasks whose containers were removed");
    metrics_.counter("berth_images_removed_total", "Unused images removed by housekeeping");
    metrics_.counter("berth_image_cleanups_total", "Image cleanup cycles run");
    fleet_.report(metrics_);
    metrics_.on_collect([this](metrics& m) {
      std::map<std::string, int> by_state;
      for (const char* st : {"PROVISIONING", "PENDING", "ACTIVATING", "RUNNING", "DEACTIVATING",
                             "STOPPING", "DEPROVISIONING", "STOPPED"}) {
        by_state[st] = 0;
      }
      for (const auto& [st, n] : table_.status_counts()) {
        by_state[st.empty() ? "UNKNOWN" : st] += static_cast<int>(n);
      }
      for (const auto& [st, n] : by_state) m.set("berth_tasks", {{"state", st}}, n);
    });
  }

  // ---- introspection (the ECS agent's /v1 API) ----

  json metadata() override {
    return {{"Cluster", cfg_.cluster},
            {"ContainerInstanceArn", inst_.arn()},
            {"Version", "Amazon ECS Agent - v" BERTH_VERSION " (berth)"}};
  }

  dk::engine& docker() override { return *docker_; }
  std::string instance_arn() const override { return inst_.arn(); }

  tl::expected<json, api_error> introspect_tasks(const std::string& docker_id,
                                                 const std::string& task_arn) override {
    if (!task_arn.empty()) {
      const auto t = table_.get(task_arn);
      if (!t) return tl::unexpected(api_error{"NotFound", "no such task", 404});
      return observe::introspect(*t);
    }
    const auto all = table_.all();
    if (!docker_id.empty()) {
      const auto found = observe::tasks_with_container(all, docker_id);
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
  daemon_task_definitions daemon_tds_{store_.get(),
                                      "arn:aws:ecs:" + cfg_.region + ":" + cfg_.account_id + ":"};
  control::account_settings account_{cfg_, *store_};
  control::clusters clusters_{
      cfg_, *store_,
      [this] {
        control::clusters::counts n;
        n.instances = static_cast<std::int64_t>(fleet_.size());
        std::tie(n.running, n.pending) = count_tasks();
        return n;
      },
      [this] { return account_.effective("containerInsights", account_.root()); }};
  std::unique_ptr<dk::engine> docker_;
  ipc::ledger ledger_;
  // The tasks, shared with the engine. Its lock (mu_) also guards the placer's groups_,
  // holding_, published_, on_change_ and stopping_.
  state::task_table table_{*store_};
  // This instance; its lock is taken before mu_.
  instance inst_{cfg_, *store_, *docker_};
  // Every instance of the cluster, mirrored into the ledger.
  control::fleet fleet_{cfg_, *store_, ledger_, table_};
  std::mutex& mu_ = table_.mutex();
  std::condition_variable& cv_ = table_.changed();
  state::task_table::row_map& tasks_ = table_.rows();
  bool stopping_ = false;
  std::unique_ptr<engine::task_engine> engine_;
  std::thread heartbeat_;
  metrics& metrics_;
  event_bus& bus_;
  std::unordered_map<std::string, std::string> published_;  // task ARN -> the state last announced
  std::function<void(const state::task&)> on_change_;       // under mu_
  control::task_actions task_actions_{
      {cfg_, *store_, table_, inst_, fleet_, ledger_, tds_, daemon_tds_, metrics_,
       [this](const std::optional<std::string>& c) { return find_cluster(c); }}};
};

}  // namespace

result<std::unique_ptr<service>> make_service(const config& c, std::unique_ptr<store> s,
                                              std::unique_ptr<dk::engine> d, metrics& m,
                                              event_bus& events) {
  ipc::options lo;
  lo.cluster = c.ledger_name.empty() ? c.cluster : c.ledger_name;
  lo.slots = c.ledger_slots;
  auto l = ipc::ledger::open_or_create(lo);
  if (!l)
    return tl::unexpected(
        error{"ledger for cluster " + c.cluster + ": " + ipc::describe(l.error())});
  if (l->slot_count() != c.ledger_slots) {
    // Its size was fixed when an earlier berthd made it (/dev/shm/berth.<name>).
    spdlog::warn(
        "ledger {} has rows for {} instances, not the {} --ledger-slots asks for: it "
        "was made before; remove /dev/shm/berth.{} while no berthd uses it to remake it",
        lo.cluster, l->slot_count(), c.ledger_slots, lo.cluster);
  }
  auto svc =
      std::make_unique<service_impl>(c, std::move(s), std::move(d), std::move(*l), m, events);
  if (auto r = svc->start(); !r) return tl::unexpected(r.error());
  return std::unique_ptr<service>(std::move(svc));
}

}  // namespace berth::agent
