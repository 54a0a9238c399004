// The task actions: see tasks.hpp.
#include "tasks.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <map>
#include <set>

#include "berth/agent/util.hpp"
#include "berth/placement.hpp"
#include "ecs_request.hpp"
#include "task_views.hpp"

namespace berth::agent::control {

namespace {
namespace pl = berth::placement;
}  // namespace

struct task_actions::impl {
  explicit impl(deps d)
      : cfg_(d.cfg),
        store_(&d.st),
        table_(d.table),
        inst_(d.inst),
        ledger_(d.ledger),
        tds_(d.tds),
        metrics_(d.m),
        find_cluster(std::move(d.find_cluster)),
        placer_(ledger_) {}

  std::string arn(const std::string& rest) const {
    return "arn:aws:ecs:" + cfg_.region + ":" + cfg_.account_id + ":" + rest;
  }
  // The stored document (with its tags) until RunTask reads the typed record.
  tl::expected<json, api_error> find_task_definition(const std::string& ref, bool active_only) {
    auto td = tds_.find_task_definition(ref, active_only);
    if (!td) return tl::unexpected(td.error());
    return state::to_json(*td);
  }

  tl::expected<bool, api_error> instance_matches(const std::string& filter) {
    auto q = pl::compile({{}, "", {{"memberOf", filter}}, {}});
    if (!q) return tl::unexpected(invalid(q.error().message));
    pl::task_groups g;
    pl::place_options o;
    o.dry_run = true;
    std::lock_guard lock(mu_);
    auto out = placer_.place(*q, {}, g, o);
    return out && !out->slots.empty();
  }

  // ---- placement ----

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

  // ---- the records ----

  // The client's view of a task: without Berth's own bookkeeping.
  static json view(json t) {
    t.erase("_berth");
    return t;
  }

  // A record's change, under mu_: a task that reached STOPPED gives its capacity back (once:
  // holding_ says whose capacity is still held).
  void on_record(const state::task_table::change& c) {
    if (c.erased || c.task["lastStatus"] != "STOPPED") return;
    if (holding_.erase(c.task["taskArn"].get<std::string>()) == 0) return;
    release(c.task);
    // And in state; a failure here is mended at the next start, which counts the capacity
    // again from the records.
    if (auto r = inst_.give_back(c.task["_berth"]["need"]); !r) {
      spdlog::error("task {}: capacity not given back in state: {}",
                    c.task["taskArn"].get<std::string>(), r.error().message);
    }
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
    // The ledger's reservation was a pre-check: the claim is the instance's capacity in state,
    // compared and swapped with the records in one transaction (retried on a race).
    std::optional<std::string> refused;
    auto claim = [&](store& tx) -> result<void> {
      if (made.empty()) return {};
      auto c = inst_.claim(tx, made.front()["_berth"]["need"], made.size());
      if (!c) return tl::unexpected(c.error());
      refused = *c;
      if (refused) return tl::unexpected(error{"refused: " + *refused});
      return {};
    };
    for (const json& t : made) holding_.insert(t["taskArn"].get<std::string>());
    if (auto w = table_.commit_all(made, claim); !w) {
      for (const json& t : made) holding_.erase(t["taskArn"].get<std::string>());
      for (const std::uint32_t slot : slots) {
        (void)ledger_.release(
            slot, ipc::demand{{need.req.cpu, need.req.mib, need.req.gpus, need.req.dynamic_ports},
                              need.req.static_ports});
        groups_.remove(group, slot, attributes_of(slot));
      }
      if (!refused) {
        return tl::unexpected(server("The task could not be stored: " + w.error().message));
      }
      out["failures"].push_back({{"arn", inst_.arn()}, {"reason", *refused}});
      return out;
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

  // ---- recovery after a restart ----

  // The records as the store has them, and the capacity their tasks hold; the engine resumes
  // them (engine::task_engine::start).
  result<void> recover() {
    // From here on the table follows the store: records others write reach it too.
    auto all = table_.open(cfg_.cluster);
    if (!all) return tl::unexpected(all.error());
    std::uint32_t cpu = 0, mib = 0, dyn = 0;
    std::vector<std::uint16_t> ports(cfg_.reserved_ports.begin(), cfg_.reserved_ports.end());
    std::vector<json> needs;
    {
      std::lock_guard lock(mu_);
      for (const json& t : *all) {
        const std::string a = t["taskArn"];
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
        needs.push_back(n);
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
    // The capacity in state, counted again from the records: a give-back lost to a crash is
    // mended here.
    return inst_.reset_capacity(needs);
  }

  // ---- the other actions ----

  outcome stop_task(const json& req) {
    BERTH_TRY(cluster, find_cluster(req));
    reader r{req};
    BERTH_TRY(ref, r.required_str("task"));
    BERTH_TRY(reason, r.str("reason"));
    if (reason && reason->size() > 255)
      return tl::unexpected(invalid("reason is at most 255 characters"));
    const std::string key = task_arn_in(cluster, ref);
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

  // A task named (ARN or id) in a cluster: its ARN.
  std::string task_arn_in(const json& cluster, const std::string& ref) const {
    return arn("task/" + cluster["clusterName"].get<std::string>() + "/" + name_of(ref));
  }

  // DescribeTasks' and DescribeTaskUsage's `cluster` and `tasks` (1 to 100).
  struct task_refs {
    json cluster;
    std::vector<std::string> refs;
  };
  tl::expected<task_refs, api_error> read_task_refs(const json& req) {
    BERTH_TRY(cluster, find_cluster(req));
    BERTH_TRY(refs, reader{req}.strings("tasks"));
    if (refs.empty()) return tl::unexpected(invalid("Tasks cannot be empty."));
    if (refs.size() > 100) return tl::unexpected(invalid("tasks can list at most 100"));
    return task_refs{std::move(cluster), std::move(refs)};
  }

  // DescribeTasks, written from each task's serialized view: no JSON is built per call.
  tl::expected<std::string, api_error> describe_tasks_text(const json& req) {
    BERTH_TRY(asked, read_task_refs(req));
    const auto& [cluster, refs] = asked;
    BERTH_TRY(include, reader{req}.strings("include"));
    const bool with_tags = std::find(include.begin(), include.end(), "TAGS") != include.end();
    std::string out = "{\"tasks\":[";
    json failures = json::array();
    bool first = true;
    for (const auto& ref : refs) {
      const auto t = table_.serialized(task_arn_in(cluster, ref), with_tags);
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

  // BerthV1.DescribeTaskUsage: Berth's own view of tasks beside DescribeTasks, which holds only
  // ECS's members: per container the memory and CPU used now, read from its cgroup, beside the
  // allocation, and the events Berth recorded (limits the kernel does not enforce).
  outcome task_usage(const json& req) {
    if (!req.is_object())
      return tl::unexpected(serialization("The request body must be a JSON object"));
    BERTH_TRY(asked, read_task_refs(req));
    json out = {{"tasks", json::array()}, {"failures", json::array()}};
    for (const auto& ref : asked.refs) {
      const auto t = table_.get(task_arn_in(asked.cluster, ref));
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

  outcome place(const json& req) {
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

  config& cfg_;
  store* store_;
  state::task_table& table_;
  instance& inst_;
  ipc::ledger& ledger_;
  task_definitions& tds_;
  metrics& metrics_;
  std::function<tl::expected<json, api_error>(const json&)> find_cluster;
  std::mutex& mu_ = table_.mutex();
  std::map<std::string, json>& tasks_ = table_.rows();
  pl::placer placer_;
  pl::task_groups groups_;         // under mu_
  std::set<std::string> holding_;  // under mu_: tasks whose capacity is claimed, not yet STOPPED
  bool stopping_ = false;          // under mu_
};

task_actions::task_actions(deps d) : impl_(std::make_unique<impl>(std::move(d))) {}
task_actions::~task_actions() = default;

result<void> task_actions::recover() { return impl_->recover(); }
void task_actions::on_record(const state::task_table::change& c) { impl_->on_record(c); }
void task_actions::stop() {
  std::lock_guard lock(impl_->mu_);
  impl_->stopping_ = true;
}
outcome task_actions::run_task(const json& req) { return impl_->run_task(req); }
outcome task_actions::start_task(const json& req) { return impl_->start_task(req); }
outcome task_actions::stop_task(const json& req) { return impl_->stop_task(req); }
outcome task_actions::list_tasks(const json& req) { return impl_->list_tasks(req); }
outcome task_actions::describe_tasks(const json& req) { return impl_->describe_tasks(req); }
tl::expected<std::string, api_error> task_actions::describe_tasks_text(const json& req) {
  return impl_->describe_tasks_text(req);
}
outcome task_actions::task_usage(const json& req) { return impl_->task_usage(req); }
outcome task_actions::place(const json& req) { return impl_->place(req); }
tl::expected<bool, api_error> task_actions::instance_matches(const std::string& filter) {
  return impl_->instance_matches(filter);
}

}  // namespace berth::agent::control
