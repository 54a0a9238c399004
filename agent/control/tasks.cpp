// The task actions: see tasks.hpp.
#include "tasks.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <map>
#include <set>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "berth/agent/util.hpp"
#include "berth/placement.hpp"
#include "ecs_request.hpp"
#include "group_commit.hpp"
#include "launch_rules.hpp"
#include "task_views.hpp"

namespace berth::agent::control {

struct task_actions::impl {
  explicit impl(deps d)
      : cfg_(d.cfg),
        store_(&d.st),
        table_(d.table),
        inst_(d.inst),
        fleet_(d.instances),
        ledger_(d.ledger),
        tds_(d.tds),
        daemon_tds_(d.daemon_tds),
        metrics_(d.m),
        find_cluster(std::move(d.find_cluster)),
        placer_(ledger_) {}

  std::string arn(const std::string& rest) const {
    return "arn:aws:ecs:" + cfg_.region + ":" + cfg_.account_id + ":" + rest;
  }
  // `daemon`: the task is a daemon's, which runs a daemon task definition (and only it does).
  tl::expected<ecs::task_definition, api_error> find_task_definition(const std::string& ref,
                                                                     bool active_only,
                                                                     bool daemon) {
    const bool daemon_td = ref.find(":daemon-task-definition/") != std::string::npos;
    if (daemon_td && !daemon) {
      return tl::unexpected(
          invalid("A daemon task definition runs only in a daemon (CreateDaemon): " + ref));
    }
    if (daemon_td) return daemon_tds_.as_task_definition(ref);
    auto td = tds_.find_task_definition(ref, active_only);
    if (!td) return tl::unexpected(td.error());
    return std::move(td->def);
  }

  tl::expected<std::vector<std::uint32_t>, api_error> instances_matching(
      const std::string& filter) {
    // One check per instance: a dry-run placement of one task per instance was quadratic (no
    // answer in 60 s at 50,000).
    auto q = pl::compile({{}, "", {{"memberOf", filter}}, {}});
    if (!q) return tl::unexpected(invalid(q.error().message));
    std::lock_guard lock(mu_);
    // Every instance the expression holds for: DRAINING and disconnected ones too, as ECS lists
    // them (the status parameter filters by status).
    // agentConnected is read from each row's heartbeat, fresh only while its agent is connected.
    pl::place_options o;
    o.now_ns = now_ns();
    o.heartbeat_timeout_ns = 10'000'000'000;
    return placer_.matching(*q, o, pl::placer::rows::registered);
  }

  // ---- the records ----

  // A record's change, under mu_: a task that reached STOPPED gives its capacity back (once:
  // holding_ says whose capacity is still held).
  void on_record(const state::task_table::change& c) {
    const state::task& t = c.task;
    const std::string& a = t.arn();
    const std::string on = t.ecs.container_instance_arn.value_or("");
    const bool stopped = c.erased || t.ecs.last_status == "STOPPED";
    if (!stopped) {
      // A task a peer placed: counted in its group here too, and, on this instance, held.
      if (!grouped_.contains(a)) {
        if (auto m = fleet_.find(on)) {
          groups_.add(t.ecs.group.value_or(""), m->slot, placed_attributes(t));
          grouped_[a] = m->slot;
        }
      }
      if (on == inst_.arn()) holding_.insert(a);
      return;
    }
    ungroup(t);
    // This instance's capacity in state, given back once (behind: instance.hpp).
    if (holding_.erase(a) == 0) return;
    inst_.give_back(t.berth.need);
  }

  // A task leaves its group's count.
  void ungroup(const state::task& t) {
    const auto g = grouped_.find(t.arn());
    if (g == grouped_.end()) return;
    groups_.remove(t.ecs.group.value_or(""), g->second, placed_attributes(t));
    grouped_.erase(g);
  }

  // The instance's attribute words when the task was placed: what task_groups counted it under.
  static std::array<std::uint64_t, ipc::attribute_words> placed_attributes(const state::task& t) {
    std::array<std::uint64_t, ipc::attribute_words> a{};
    const auto& words = t.berth.attributes;
    for (std::size_t w = 0; w < a.size() && w < words.size(); ++w) a[w] = words[w];
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

  outcome run_task(const json& json_req) {
    BERTH_TRY(req, decode_request<ecs::run_task_request>(json_req));
    return launch(req, nullptr);
  }

  // StartTask's request is RunTask's without placement: one task on each instance it names.
  outcome start_task(const json& json_req) {
    BERTH_TRY(req, decode_request<ecs::start_task_request>(json_req));
    ecs::run_task_request run;
    run.cluster = std::move(req.cluster);
    run.task_definition = std::move(req.task_definition);
    run.group = std::move(req.group);
    run.overrides = std::move(req.overrides);
    run.started_by = std::move(req.started_by);
    run.tags = std::move(req.tags);
    run.enable_execute_command = req.enable_execute_command;
    return launch(run, &req.container_instances);
  }

  // What RunTask, StartTask and the placement query read alike, checked.
  struct launch_request {
    state::cluster cluster;
    ecs::task_definition td;
    ecs::task_override overrides;
    std::int64_t count = 1;
    std::string group;
    task_need need;
    bool execute_command = false;  // enableExecuteCommand: berthctl execute-command may enter
    std::vector<pl::constraint> constraints;
    std::vector<pl::strategy> strategies;
  };

  tl::expected<launch_request, api_error> read_launch(const ecs::run_task_request& req) {
    launch_request l;
    // The launch type before the cluster, as ECS checks them.
    const bool providers =
        req.capacity_provider_strategy && !req.capacity_provider_strategy->empty();
    if (auto ok = check_launch_type(req.launch_type, providers); !ok) {
      return tl::unexpected(ok.error());
    }
    BERTH_TRY(cluster, find_cluster(req.cluster));
    if (req.task_definition.empty()) {
      return tl::unexpected(invalid("'taskDefinition' is required and must not be empty"));
    }
    // The request's own values first, then what they refer to.
    l.count = req.count.value_or(1);
    if (l.count < 1 || l.count > 10) {
      return tl::unexpected(invalid("count must be between 1 and 10"));
    }
    // A service's own tasks may use a revision deregistered since (ECS: existing services scale
    // on an INACTIVE or DELETE_IN_PROGRESS one); everything else needs an ACTIVE one. A
    // daemon's (group "daemon:<name>") run its daemon task definition.
    const bool daemon = req.group && req.group->starts_with("daemon:");
    const bool for_service = req.started_by && req.started_by->starts_with("ecs-svc/") &&
                             req.group && (req.group->starts_with("service:") || daemon);
    BERTH_TRY(td, find_task_definition(req.task_definition, !for_service, daemon && for_service));
    l.overrides = req.overrides.value_or(ecs::task_override{});
    l.execute_command = req.enable_execute_command.value_or(false);
    // What the model's types cannot say: amounts, sizes and limits.
    if (auto ok = check_overrides(l.overrides); !ok) {
      return tl::unexpected(ok.error());
    }
    const auto& defs = td.container_definitions.value_or(std::vector<ecs::container_definition>{});
    for (const auto& co :
         l.overrides.container_overrides.value_or(std::vector<ecs::container_override>{})) {
      const bool known =
          std::any_of(defs.begin(), defs.end(), [&](const auto& c) { return c.name == co.name; });
      if (!known) {
        return tl::unexpected(
            invalid("containerOverrides names no container of the task "
                    "definition: '" +
                    co.name.value_or("") + "'"));
      }
    }
    l.group = req.group.value_or("family:" + td.family.value_or(""));
    BERTH_TRY(rules, placement_of(req, td));
    l.constraints = std::move(rules.first);
    l.strategies = std::move(rules.second);
    l.need = need_of(td, l.overrides);
    l.cluster = std::move(cluster);
    l.td = std::move(td);
    return l;
  }

  // The request's tags, checked as ECS checks them (tags_of), as the record keeps them.
  static tl::expected<std::vector<ecs::tag>, api_error> checked_tags(
      const std::optional<std::vector<ecs::tag>>& tags) {
    BERTH_TRY(checked, tags_of(tags));
    std::vector<ecs::tag> out;
    out.reserve(checked.size());
    for (auto& t : checked) out.push_back({std::move(t.key), std::move(t.value)});
    return out;
  }

  // `instances`: StartTask's containerInstances (the custom scheduler's choice), or null for
  // RunTask's placement.
  outcome launch(const ecs::run_task_request& req, const std::vector<std::string>* instances) {
    BERTH_TRY(l, read_launch(req));
    const bool explicit_instances = instances != nullptr;
    const std::optional<std::string>& started_by = req.started_by;
    if (started_by && started_by->size() > 128)
      return tl::unexpected(invalid("startedBy is at most 128 characters"));
    BERTH_TRY(tags, checked_tags(req.tags));
    const state::cluster& cluster = l.cluster;
    const std::string& group = l.group;
    const std::int64_t count = l.count;
    const task_need& need = l.need;
    const ipc::demand dm{{need.req.cpu, need.req.mib, need.req.gpus, need.req.dynamic_ports},
                         need.req.static_ports};
    const bool mine = cluster.cluster_name == cfg_.cluster;
    json out = {{"tasks", json::array()}, {"failures", json::array()}};
    const auto fail = [&](const std::string& arn, const std::string& reason) {
      const json f = {{"arn", arn}, {"reason", reason}};
      if (std::find(out["failures"].begin(), out["failures"].end(), f) == out["failures"].end()) {
        out["failures"].push_back(f);
      }
    };
    std::vector<member> targets;
    if (explicit_instances) {
      const std::vector<std::string>& refs = *instances;
      if (refs.empty()) return tl::unexpected(client("Container Instances cannot be empty."));
      if (refs.size() > 10) {
        return tl::unexpected(invalid("containerInstances must name 1 to 10 instances"));
      }
      for (const auto& ci : refs) {
        auto m = mine ? fleet_.find(ci) : std::nullopt;
        if (!m) {
          fail(ci, "MISSING");
        } else {
          targets.push_back(std::move(*m));
        }
      }
      if (!out["failures"].empty()) return out;
    } else if (!mine) {
      return tl::unexpected(no_instances_found());
    }
    pl::request preq{need.req, group,
                     explicit_instances ? std::vector<pl::constraint>{} : l.constraints,
                     explicit_instances ? std::vector<pl::strategy>{} : l.strategies};
    auto q = pl::compile(preq);
    if (!q) return tl::unexpected(invalid(q.error().message));
    std::unique_lock lock(mu_);
    if (stopping_) return tl::unexpected(server("berthd is shutting down"));
    // Each new task and the instance it goes to.
    std::vector<std::pair<state::task, member>> made;
    if (explicit_instances) {
      // The custom scheduler chose: reserve there or fail, no placement.
      for (const member& m : targets) {
        if (!m.connected) {
          fail(m.record.container_instance_arn, "AGENT");
          continue;
        }
        if (auto rv = ledger_.reserve(m.slot, dm); !rv) {
          fail(m.record.container_instance_arn, reserve_reason(rv.error()));
          continue;
        }
        groups_.add(group, m.slot, attributes_of(m.slot));
        made.emplace_back(state::task{}, m);
      }
      BERTH_TRY(refused, commit_claims(lock, made, l, tags, req.started_by, dm));
      for (const auto& [id, why] : refused) fail(id, why);
    } else {
      // Placed, claimed; tasks whose instance was claimed first by a peer are placed again, on
      // the capacity the refused claim read. Each refusal is a peer's claim that succeeded, so
      // the cluster makes progress; the bound keeps one caller from losing for long. Binpack
      // sends every agent to the same fullest instances: with 24 concurrent RunTask clients
      // over three agents at 1,000 instances, 4 rounds answered 49 RESOURCE:CPU failures in
      // 1,790 calls, 12 rounds none.
      constexpr int rounds = 12;
      std::int64_t left = count;
      for (int round = 0; left > 0 && round < rounds; ++round) {
        out["failures"] = json::array();
        pl::place_options o;
        o.count = static_cast<std::uint32_t>(left);
        o.seed = now_ns();
        o.now_ns = now_ns();
        o.heartbeat_timeout_ns = 10'000'000'000;  // a row not refreshed for 10 s is not placed on
        o.explain = true;
        auto placed = placer_.place(*q, need.req, groups_, o);
        if (!placed) return tl::unexpected(invalid(placed.error().message));
        if (round == 0) count_placement(*placed, static_cast<std::size_t>(count));
        made.clear();
        for (const std::uint32_t slot : placed->slots) {
          auto m = fleet_.at_slot(slot);
          if (!m) {  // gone from state since the row was read
            spdlog::warn("placement chose ledger slot {}, which no instance of the cluster has",
                         slot);
            (void)ledger_.release(slot, dm);
            groups_.remove(group, slot, attributes_of(slot));
            fail(cluster.cluster_arn, "MISSING");
            continue;
          }
          made.emplace_back(state::task{}, std::move(*m));
        }
        if (placed->slots.size() < static_cast<std::size_t>(left)) {
          // Why the first task that did not fit was refused, instance by instance.
          for (const auto& [slot, why] : placed->rejected) {
            if (out["failures"].size() >= 100) break;
            if (auto m = fleet_.at_slot(slot)) {
              fail(m->record.container_instance_arn, std::string(pl::to_string(why)));
            }
          }
          for (std::size_t why = 0; out["failures"].empty() && why < pl::reason_count; ++why) {
            if (placed->failures[why] == 0) continue;
            fail(cluster.cluster_arn, std::string(pl::to_string(static_cast<pl::reason>(why))));
          }
          if (out["failures"].empty()) fail(cluster.cluster_arn, "RESOURCE:CPU");
        }
        BERTH_TRY(refused, commit_claims(lock, made, l, tags, req.started_by, dm));
        for (const auto& [t, m] : made) out["tasks"].push_back(state::response(t));
        left -= static_cast<std::int64_t>(made.size());
        if (refused.empty() || left == 0 || round == rounds - 1) {
          for (const auto& [arn, why] : refused) fail(arn, why);
          break;
        }
      }
      return out;
    }
    // The engine of each task's instance, watching the table, starts them.
    for (const auto& [t, m] : made) out["tasks"].push_back(state::response(t));
    return out;
  }

  // Makes the records of `made` (each new task and its instance) and commits them with the
  // claims on the capacity in state of every instance they go to (compared and swapped: the
  // ledger's reservation was a pre-check). An instance that no longer has room, because a peer
  // claimed it first, loses its tasks (their placement undone, its ledger row set to the
  // capacity the claim read) and the others are committed without them. Returns the refused
  // instances' ARNs and reasons; `made` keeps what was committed. `lock` holds mu_; it is let
  // go while the claims wait for the store (group commit, below).
  tl::expected<std::vector<std::pair<std::string, std::string>>, api_error> commit_claims(
      std::unique_lock<std::mutex>& lock, std::vector<std::pair<state::task, member>>& made,
      const launch_request& l, const std::vector<ecs::tag>& tags,
      const std::optional<std::string>& started_by, const ipc::demand& dm) {
    // A hold left behind by an exception would take its room off the row for good; one let go
    // after its commit only shows the document a moment early.
    const auto unhold_all = [&] {
      for (const auto& [t, m] : made) {
        if (t.ecs.task_arn) fleet_.unhold(m.id, *t.ecs.task_arn);
      }
    };
    try {
      for (auto& [t, m] : made) {
        t = new_task(l.td, l.cluster, l.group, started_by, l.overrides, tags, l.need, m);
        t.ecs.enable_execute_command = l.execute_command;
        grouped_[t.arn()] = m.slot;
        fleet_.hold(m.id, t.arn(), t.berth.need);
      }
    } catch (...) {
      unhold_all();
      throw;
    }
    if (made.empty()) return {};
    // With the launches waiting beside it, in one store transaction (group_commit.hpp).
    claims mine{&made, &l.group, dm, {}, std::nullopt};
    try {
      claim_commits_.join(lock, mine, made.size(), [&](auto& held, std::vector<claims*>& batch) {
        // Every launch of the batch learns its outcome, whatever happens here.
        const auto fail = [&](claims& c, const std::string& why) {
          unplace(c, "");
          c.failed = server("The task could not be stored: " + why);
        };
        try {
          if (auto failed = commit_batch(held, batch)) {
            // The transaction as a whole failed (too large, say): each launch on its own then,
            // so that none fails for what it was committed with.
            for (claims* c : batch) {
              auto again = batch.size() > 1 ? commit_batch(held, {c}) : failed;
              if (again) fail(*c, *again);
            }
          }
        } catch (const std::exception& e) {
          for (claims* c : batch) fail(*c, e.what());
        }
      });
    } catch (...) {
      unhold_all();
      throw;
    }
    if (mine.failed) return tl::unexpected(*mine.failed);
    return std::move(mine.refusals);
  }

  // One launch round's new tasks in the group commit.
  struct claims {
    std::vector<std::pair<state::task, member>>* made;  // what is committed stays in it
    const std::string* group;
    ipc::demand dm;
    std::vector<std::pair<std::string, std::string>> refusals;  // instance ARN, reason
    std::optional<api_error> failed;
  };

  // Gives back what placement took for c's tasks on instance `on` (all of them when empty),
  // past the first `*keep` there (counted down) when given; true if it gave any back. Under mu_.
  bool unplace(claims& c, const std::string& on, std::size_t* keep = nullptr) {
    bool any = false;
    for (auto it = c.made->begin(); it != c.made->end();) {
      if (!on.empty() && it->second.id != on) {
        ++it;
        continue;
      }
      if (keep != nullptr && *keep > 0) {
        --*keep;
        ++it;
        continue;
      }
      (void)ledger_.release(it->second.slot, c.dm);
      fleet_.unhold(it->second.id, it->first.arn());
      groups_.remove(*c.group, it->second.slot, attributes_of(it->second.slot));
      grouped_.erase(it->first.arn());
      it = c.made->erase(it);
      any = true;
    }
    return any;
  }

  // The records and claims of `batch` in one store transaction, each instance's claims taken
  // together; an instance refused is left out (its tasks unplaced, a refusal for each launch
  // that had tasks there) and the rest committed again. Returns why the transaction failed
  // as a whole, with nothing more unplaced. Under mu_ (let go for the store).
  std::optional<std::string> commit_batch(std::unique_lock<std::mutex>& lock,
                                          const std::vector<claims*>& batch) {
    for (;;) {
      struct instance_claims {
        std::vector<const state::task_need*> needs;
        std::string arn;
      };
      std::map<std::string, instance_claims> per_instance;  // by instance id
      std::vector<state::task> records;
      for (const claims* c : batch) {
        for (const auto& [t, m] : *c->made) {
          auto& on = per_instance[m.id];
          on.needs.push_back(&t.berth.need);
          on.arn = m.record.container_instance_arn;
          records.push_back(t);
        }
      }
      if (records.empty()) return std::nullopt;
      struct refusal {
        std::string id, reason;
        std::size_t fitting = 0;  // the first tasks on it that fit: kept
        std::optional<capacity> seen;
      };
      std::optional<refusal> refused;
      // What this instance's stopped tasks gave back is in state before a claim on it reads it.
      if (per_instance.contains(inst_.id())) {
        result<void> s;
        {
          const unlocked during(lock);
          s = inst_.settle();
        }
        if (!s) return s.error().message;
      }
      auto claim_all = [&](store& tx) -> result<void> {
        refused.reset();
        // Every instance's record and capacity in one round trip, not two per instance.
        std::vector<std::pair<std::string, std::string>> docs;
        for (const auto& [id, on] : per_instance) {
          docs.emplace_back("instance", record_key(cfg_.cluster, id));
          docs.emplace_back("instance", capacity_key(cfg_.cluster, id));
        }
        if (auto p = tx.prefetch(docs); !p) return p;
        for (const auto& [id, on] : per_instance) {
          std::size_t fitting = 0;
          auto c = claim(tx, cfg_.cluster, id, on.needs, fitting);
          if (!c) return tl::unexpected(c.error());
          if (*c) {
            refused = refusal{id, **c, fitting, std::nullopt};
            if (auto cur = tx.get("instance", capacity_key(cfg_.cluster, id)); cur && *cur) {
              refused->seen = capacity::parse(**cur);
            }
            return tl::unexpected(error{"refused: " + **c});
          }
        }
        return {};
      };
      auto w = table_.commit_all(lock, records, claim_all);
      if (w) {
        for (const claims* c : batch) {
          for (const auto& [t, m] : *c->made) fleet_.committed(m.id, t.arn(), *w);
        }
        metrics_.add("berth_claim_commits_total", {});
        metrics_.observe("berth_claim_commit_launches", {}, static_cast<double>(batch.size()));
        return std::nullopt;
      }
      if (!refused) {
        spdlog::error("store: new tasks not written: {}", w.error().message);
        return w.error().message;
      }
      metrics_.add("berth_claim_refusals_total", {});
      spdlog::info("claim on instance {} refused ({}): placed again", refused->id, refused->reason);
      // The launches whose tasks there did not fit (in the batch's order, as claimed) lose
      // them; those before keep theirs.
      const std::string arn = per_instance[refused->id].arn;
      std::size_t keep = refused->fitting;
      for (claims* c : batch) {
        if (unplace(*c, refused->id, &keep)) c->refusals.emplace_back(arn, refused->reason);
      }
      if (refused->seen) fleet_.saw_capacity(refused->id, *refused->seen);
    }
  }

  state::task new_task(const ecs::task_definition& td, const state::cluster& cluster,
                       const std::string& group, const std::optional<std::string>& started_by,
                       const ecs::task_override& overrides, const std::vector<ecs::tag>& tags,
                       const task_need& need, const member& on) {
    const std::string id = random_hex(32);
    const std::string& cname = cluster.cluster_name;
    const std::string task_arn = arn("task/" + cname + "/" + id);
    state::task t;
    ecs::task& e = t.ecs;
    e.task_arn = task_arn;
    e.cluster_arn = cluster.cluster_arn;
    e.task_definition_arn = td.task_definition_arn;
    e.container_instance_arn = on.record.container_instance_arn;
    e.overrides = overrides;
    if (!e.overrides->container_overrides) e.overrides->container_overrides.emplace();
    e.last_status = "PROVISIONING";
    e.desired_status = "RUNNING";
    e.cpu = std::to_string(need.req.cpu);
    e.memory = std::to_string(need.req.mib);
    e.version = 1;
    e.created_at = now_seconds();
    e.group = group;
    e.launch_type = "EC2";
    e.attachments.emplace();
    for (const state::attribute& a : on.record.attributes) {
      if (a.name == "ecs.availability-zone") e.availability_zone = a.value;
    }
    e.tags = tags;
    e.health_status = "UNKNOWN";
    e.started_by = started_by;
    for (const auto& c :
         td.container_definitions.value_or(std::vector<ecs::container_definition>{})) {
      ecs::container ct;
      ct.container_arn = arn("container/" + cname + "/" + id + "/" + random_hex(32));
      ct.task_arn = task_arn;
      ct.name = c.name;
      ct.image = c.image;
      ct.last_status = "PENDING";
      ct.network_bindings.emplace();
      ct.network_interfaces.emplace();
      ct.health_status = "UNKNOWN";
      ct.cpu = std::to_string(c.cpu.value_or(0));
      if (c.memory) ct.memory = std::to_string(*c.memory);
      if (c.memory_reservation) ct.memory_reservation = std::to_string(*c.memory_reservation);
      t.containers().push_back(std::move(ct));
    }
    t.containers();  // a task definition without containers still shows an empty list
    const auto words = attributes_of(on.slot);
    t.berth.need = {need.req.cpu, need.req.mib, need.req.dynamic_ports, need.ports};
    t.berth.task_definition = td;
    t.berth.attributes.assign(words.begin(), words.end());
    return t;
  }

  // ---- recovery after a restart ----

  // The records as the store has them, and the capacity their tasks hold; the engine resumes
  // them (engine::task_engine::start).
  result<void> recover() {
    // From here on the table follows the store: records others write reach it too.
    auto all = table_.open(cfg_.cluster);
    if (!all) return tl::unexpected(all.error());
    std::vector<state::task_need> needs;
    {
      std::lock_guard lock(mu_);
      for (const state::task& t : *all) {
        if (t.ecs.last_status == "STOPPED") continue;
        const std::string on = t.ecs.container_instance_arn.value_or("");
        if (auto m = fleet_.find(on); m && !grouped_.contains(t.arn())) {
          groups_.add(t.ecs.group.value_or(""), m->slot, placed_attributes(t));
          grouped_[t.arn()] = m->slot;
        }
        // Another instance's task takes nothing here, and this engine does not drive it.
        if (on != inst_.arn()) continue;
        holding_.insert(t.arn());
        needs.push_back(t.berth.need);
      }
    }
    // The capacity in state, counted again from the records: a give-back lost to a crash is
    // mended here.
    return inst_.reset_capacity(needs);
  }

  // ---- the other actions ----

  outcome stop_task(const json& json_req) {
    BERTH_TRY(req, decode_request<ecs::stop_task_request>(json_req));
    BERTH_TRY(cluster, find_cluster(req.cluster));
    if (req.task.empty()) {
      return tl::unexpected(invalid("'task' is required and must not be empty"));
    }
    if (req.reason && req.reason->size() > 255)
      return tl::unexpected(invalid("reason is at most 255 characters"));
    const std::string key = task_arn_in(cluster, req.task);
    std::lock_guard lock(mu_);
    const auto it = tasks_.find(key);
    if (it == tasks_.end()) return tl::unexpected(invalid("The referenced task was not found."));
    if (it->second.ecs.desired_status != "STOPPED") {
      state::task t = it->second;
      t.ecs.desired_status = "STOPPED";
      t.ecs.stop_code = "UserInitiated";
      t.ecs.stopped_reason = req.reason.value_or("Task stopped by user");
      t.ecs.stopping_at = now_seconds();
      t.ecs.version = t.ecs.version.value_or(0) + 1;
      if (auto w = table_.commit(t); !w) {
        return tl::unexpected(server("The task's stop could not be stored: " + w.error().message));
      }
    }
    return json{{"task", state::response(it->second)}};
  }

  outcome list_tasks(const json& json_req) {
    BERTH_TRY(req, decode_request<ecs::list_tasks_request>(json_req));
    BERTH_TRY(cluster, find_cluster(req.cluster));
    const auto& desired = req.desired_status;
    const auto& launch_type = req.launch_type;
    if (desired && *desired != "RUNNING" && *desired != "PENDING" && *desired != "STOPPED") {
      return tl::unexpected(invalid("desiredStatus must be RUNNING, PENDING or STOPPED"));
    }
    if (launch_type && *launch_type != "EC2" && *launch_type != "FARGATE" &&
        *launch_type != "EXTERNAL") {
      return tl::unexpected(invalid("launchType must be EC2, FARGATE or EXTERNAL"));
    }
    std::optional<std::string> on;
    if (req.container_instance) {
      auto m = fleet_.find(*req.container_instance);
      if (!m) return json{{"taskArns", json::array()}};
      on = m->record.container_instance_arn;
    }
    const std::string want = desired.value_or("RUNNING");
    const std::string group_wanted =
        req.service_name ? service_group(*req.service_name) : std::string();
    std::vector<std::pair<double, const std::string*>> found;
    // A service's tasks from the group index: the scheduler asks for each service every pass.
    const auto all = req.service_name ? table_.in_group(group_wanted) : table_.all();
    for (const auto& tp : all) {
      const ecs::task& t = tp->ecs;
      if (t.cluster_arn != cluster.cluster_arn) continue;
      const bool stopped = t.desired_status == "STOPPED";
      if (want == "STOPPED" ? !stopped : stopped) continue;
      if (req.family && tp->berth.task_definition.family != *req.family) continue;
      if (req.started_by && t.started_by.value_or("") != *req.started_by) continue;
      if (req.service_name && t.group.value_or("") != group_wanted) continue;
      if (launch_type && *launch_type != "EC2") continue;
      if (on && t.container_instance_arn != on) continue;
      found.emplace_back(t.created_at.value_or(0.0), &tp->arn());
    }
    std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
      return std::tie(a.first, *a.second) < std::tie(b.first, *b.second);
    });
    BERTH_TRY(range, page(req.next_token, req.max_results, found.size(), 100));
    json out = {{"taskArns", json::array()}};
    for (std::size_t i = range.first; i < range.second; ++i)
      out["taskArns"].push_back(*found[i].second);
    add_token(out, range.second, found.size());
    return out;
  }

  // A task named (ARN or id) in a cluster: its ARN.
  std::string task_arn_in(const state::cluster& cluster, const std::string& ref) const {
    return arn("task/" + cluster.cluster_name + "/" + name_of(ref));
  }

  // DescribeTasks' and DescribeTaskUsage's `cluster` and `tasks` (1 to 100), and whether
  // DescribeTasks' include asks for TAGS.
  struct task_refs {
    state::cluster cluster;
    std::vector<std::string> refs;
    bool with_tags = false;
  };
  tl::expected<task_refs, api_error> read_task_refs(const json& json_req) {
    BERTH_TRY(req, decode_request<ecs::describe_tasks_request>(json_req));
    BERTH_TRY(cluster, find_cluster(req.cluster));
    if (req.tasks.empty()) return tl::unexpected(invalid("Tasks cannot be empty."));
    if (req.tasks.size() > 100) return tl::unexpected(invalid("tasks can list at most 100"));
    const auto& include = req.include.value_or(std::vector<std::string>{});
    const bool with_tags = std::find(include.begin(), include.end(), "TAGS") != include.end();
    return task_refs{std::move(cluster), std::move(req.tasks), with_tags};
  }

  // DescribeTasks, written from each task's serialized view: no JSON is built per call.
  tl::expected<std::string, api_error> describe_tasks_text(const json& req) {
    BERTH_TRY(asked, read_task_refs(req));
    std::string out = "{\"tasks\":[";
    json failures = json::array();
    bool first = true;
    for (const auto& ref : asked.refs) {
      const auto t = table_.serialized(task_arn_in(asked.cluster, ref), asked.with_tags);
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
      json events = json::array();
      for (const state::task_event& e : t->berth.events) {
        events.push_back({{"createdAt", e.created_at}, {"message", e.message}});
      }
      json u = {{"taskArn", t->arn()},
                {"memoryAllocatedMiB", std::stoll(t->ecs.memory.value_or("0"))},
                {"containers", json::array()},
                {"events", std::move(events)}};
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
    if (auto m = fleet_.at_slot(slot)) i["containerInstanceArn"] = m->record.container_instance_arn;
    return i;
  }

  // BerthV1.Place's own members beside RunTask's.
  struct place_extras {
    bool dry_run = false;  // place and explain, reserving and starting nothing
  };
  static tl::expected<place_extras, api_error> read_place_extras(const json& req) {
    place_extras x;
    if (const auto dry = req.find("dryRun"); dry != req.end() && !dry->is_null()) {
      if (!dry->is_boolean()) {
        return tl::unexpected(serialization("Expected 'dryRun' to be a boolean"));
      }
      x.dry_run = dry->get<bool>();
    }
    return x;
  }

  outcome place(const json& json_req) {
    if (!json_req.is_object())
      return tl::unexpected(serialization("The request body must be a JSON object"));
    try {
      BERTH_TRY(extras, read_place_extras(json_req));
      BERTH_TRY(req, decode_request<ecs::run_task_request>(json_req));
      if (!extras.dry_run) return launch(req, nullptr);
      return place_dry_run(req);
    } catch (const std::exception& e) {
      spdlog::error("Place failed: {}", e.what());
      return tl::unexpected(server(std::string("Internal error: ") + e.what()));
    }
  }

  outcome place_dry_run(const ecs::run_task_request& req) {
    BERTH_TRY(l, read_launch(req));
    const task_need& need = l.need;
    const std::int64_t count = l.count;
    // The rules first: a malformed one is refused in any cluster.
    auto q = pl::compile({need.req, l.group, l.constraints, l.strategies});
    if (!q) return tl::unexpected(invalid(q.error().message));
    if (l.cluster.cluster_name != cfg_.cluster) {
      return tl::unexpected(no_instances_found());
    }
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
                {"taskDefinitionArn", l.td.task_definition_arn.value_or("")},
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
  fleet& fleet_;
  ipc::ledger& ledger_;
  task_definitions& tds_;
  daemon_task_definitions& daemon_tds_;
  metrics& metrics_;
  std::function<tl::expected<state::cluster, api_error>(const std::optional<std::string>&)>
      find_cluster;
  std::mutex& mu_ = table_.mutex();
  state::task_table::row_map& tasks_ = table_.rows();
  pl::placer placer_;
  pl::task_groups groups_;  // under mu_
  // Under mu_: this instance's tasks whose capacity is claimed, not yet STOPPED; and every task
  // counted in groups_, with the slot it is counted on.
  // Hashed: looked up at every task change, by ARNs that share their first 50 characters.
  std::unordered_set<std::string> holding_;
  std::unordered_map<std::string, std::uint32_t> grouped_;
  bool stopping_ = false;  // under mu_
  // Under mu_. etcd takes at most 128 operations per transaction by default: a task costs a
  // compare and a put, an instance two compares and a put; 40 tasks fit.
  group_commit<claims> claim_commits_{40};
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
tl::expected<std::vector<std::uint32_t>, api_error> task_actions::instances_matching(
    const std::string& filter) {
  return impl_->instances_matching(filter);
}

}  // namespace berth::agent::control
