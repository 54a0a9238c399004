// RunTask and StartTask: read, place, claim and commit (tasks_impl.hpp).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "berth/agent/util.hpp"
#include "task_views.hpp"
#include "tasks_impl.hpp"

namespace berth::agent::control {

outcome task_actions::impl::run_task(const json& json_req) {
  BERTH_TRY(req, decode_request<ecs::run_task_request>(json_req));
  return launch(req, nullptr);
}

outcome task_actions::impl::start_task(const json& json_req) {
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

tl::expected<task_actions::impl::launch_request, api_error> task_actions::impl::read_launch(
    const ecs::run_task_request& req) {
  launch_request l;
  // The launch type before the cluster, as ECS checks them.
  const bool providers = req.capacity_provider_strategy && !req.capacity_provider_strategy->empty();
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
  const bool for_service = req.started_by && req.started_by->starts_with("ecs-svc/") && req.group &&
                           (req.group->starts_with("service:") || daemon);
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

tl::expected<std::vector<ecs::tag>, api_error> task_actions::impl::checked_tags(
    const std::optional<std::vector<ecs::tag>>& tags) {
  BERTH_TRY(checked, tags_of(tags));
  std::vector<ecs::tag> out;
  out.reserve(checked.size());
  for (auto& t : checked) out.push_back({std::move(t.key), std::move(t.value)});
  return out;
}

outcome task_actions::impl::launch(const ecs::run_task_request& req,
                                   const std::vector<std::string>* instances) {
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

tl::expected<std::vector<std::pair<std::string, std::string>>, api_error>
task_actions::impl::commit_claims(std::unique_lock<std::mutex>& lock,
                                  std::vector<std::pair<state::task, member>>& made,
                                  const launch_request& l, const std::vector<ecs::tag>& tags,
                                  const std::optional<std::string>& started_by,
                                  const ipc::demand& dm) {
  // A hold left behind by an exception would take its room off the row for good; one let go
  // after its commit only shows the document a moment early.
  const auto unhold_all = [&] {
    for (const auto& [t, m] : made) {
      if (t.ecs.task_arn) fleet_.unhold(m.id, *t.ecs.task_arn);
    }
  };
  try {
    const state::placed_definition td(l.td);  // one copy for the launch's tasks
    for (auto& [t, m] : made) {
      t = new_task(td, l.cluster, l.group, started_by, l.overrides, tags, l.need, m);
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

bool task_actions::impl::unplace(claims& c, const std::string& on, std::size_t* keep) {
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

std::optional<std::string> task_actions::impl::commit_batch(std::unique_lock<std::mutex>& lock,
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
      // Stored: what follows only keeps books, and its failure must not report the launches
      // failed (and undo their placement). A hold not marked committed is let go: the row shows
      // the capacity document, which has the claim or soon will.
      try {
        for (const claims* c : batch) {
          for (const auto& [t, m] : *c->made) fleet_.committed(m.id, t.arn(), *w);
        }
        metrics_.add("berth_claim_commits_total", {});
        metrics_.observe("berth_claim_commit_launches", {}, static_cast<double>(batch.size()));
      } catch (const std::exception& e) {
        spdlog::error("claims stored; keeping their books failed: {}", e.what());
        for (const claims* c : batch) {
          for (const auto& [t, m] : *c->made) fleet_.unhold(m.id, t.arn());
        }
      }
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

state::task task_actions::impl::new_task(const state::placed_definition& td,
                                         const state::cluster& cluster, const std::string& group,
                                         const std::optional<std::string>& started_by,
                                         const ecs::task_override& overrides,
                                         const std::vector<ecs::tag>& tags, const task_need& need,
                                         const member& on) {
  const std::string id = random_hex(32);
  const std::string& cname = cluster.cluster_name;
  const std::string task_arn = arn("task/" + cname + "/" + id);
  state::task t;
  ecs::task& e = t.ecs;
  e.task_arn = task_arn;
  e.cluster_arn = cluster.cluster_arn;
  e.task_definition_arn = td->task_definition_arn;
  e.container_instance_arn = on.record.container_instance_arn;
  e.overrides = overrides;
  if (!e.overrides->container_overrides) e.overrides->container_overrides.emplace();
  // PENDING, as ECS places an EC2 task (PROVISIONING is for what must be made first, an
  // awsvpc task's network interface, which Berth has not): the instance's agent writes the
  // task next when it is RUNNING.
  e.last_status = "PENDING";
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
       td->container_definitions.value_or(std::vector<ecs::container_definition>{})) {
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

void task_actions::impl::count_placement(const pl::outcome& o, std::size_t wanted) {
  metrics_.add("berth_placements_total", {}, static_cast<double>(o.slots.size()));
  if (o.slots.size() >= wanted) return;
  for (std::size_t why = 0; why < pl::reason_count; ++why) {
    if (o.failures[why] == 0) continue;
    metrics_.add("berth_placement_failures_total",
                 {{"reason", std::string(pl::to_string(static_cast<pl::reason>(why)))}},
                 o.failures[why]);
  }
}

}  // namespace berth::agent::control
