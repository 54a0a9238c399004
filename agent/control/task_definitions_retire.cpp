// Task definitions at the end of their life: DeregisterTaskDefinition (INACTIVE),
// DeleteTaskDefinitions (DELETE_IN_PROGRESS) and the purge that erases those nothing uses any
// more (task_definitions.hpp). Each change reads the revision in the transaction that writes it.
#include <algorithm>

#include "berth/agent/util.hpp"
#include "task_definitions.hpp"

namespace berth::agent::control {

outcome task_definitions::deregister_task_definition(const json& req) {
  BERTH_TRY(r, decode_request<ecs::deregister_task_definition_request>(req));
  const std::string& ref = r.task_definition;
  if (auto ok = not_empty(ref, "taskDefinition"); !ok) return tl::unexpected(ok.error());
  if (!names_revision(ref)) {
    return tl::unexpected(client("Revision is missing."));  // ECS's words: a family alone
  }
  BERTH_TRY(found, find_task_definition(ref, false));
  const double at = now_seconds();
  BERTH_TRY(td, change_revision(found, [&](state::task_definition& t) {
              t.def.status = "INACTIVE";
              t.def.deregistered_at = at;
              return true;
            }));
  return json{{"taskDefinition", state::response(td)}};
}

tl::expected<state::task_definition, api_error> task_definitions::change_revision(
    const state::task_definition& td, const std::function<bool(state::task_definition&)>& fn) {
  const std::string key = td_key(*td.def.family, static_cast<std::uint64_t>(*td.def.revision));
  state::task_definition out;
  bool gone = false;
  auto w = store_->transaction([&](store& tx) -> result<void> {
    gone = false;
    auto doc = tx.get("taskdef", key);
    if (!doc) return tl::unexpected(doc.error());
    if (!*doc) {
      gone = true;
      return tl::unexpected(error{"erased"});
    }
    auto now = state::parse<state::task_definition>(**doc, key);
    if (!now) return tl::unexpected(error{now.error().detail});
    out = std::move(*now);
    if (!fn(out)) return {};
    return tx.put("taskdef", key, state::to_json(out).dump());
  });
  if (gone) return tl::unexpected(client("Unable to describe task definition."));
  if (!w) return tl::unexpected(server(w.error().message));
  return out;
}

outcome task_definitions::delete_task_definitions(const json& req) {
  BERTH_TRY(r, decode_request<ecs::delete_task_definitions_request>(req));
  if (r.task_definitions.empty()) {
    return tl::unexpected(invalid("taskDefinitions must name at least one task definition"));
  }
  if (r.task_definitions.size() > 10) {
    return tl::unexpected(invalid("taskDefinitions may name at most 10 task definitions"));
  }
  json out = {{"taskDefinitions", json::array()}, {"failures", json::array()}};
  for (const auto& ref : r.task_definitions) {
    if (!names_revision(ref)) {
      out["failures"].push_back(
          {{"arn", ref}, {"reason", "INVALID_PARAMETER"}, {"detail", "Revision is missing."}});
      continue;
    }
    auto found = find_task_definition(ref, false);
    bool active = false;
    auto td = found ? change_revision(*found,
                                      [&](state::task_definition& t) {
                                        active = t.def.status == "ACTIVE";
                                        if (active || t.def.status == "DELETE_IN_PROGRESS") {
                                          return false;
                                        }
                                        t.def.status = "DELETE_IN_PROGRESS";
                                        return true;
                                      })
                    : found;
    if (!td) {
      if (td.error().type != "ClientException") return tl::unexpected(td.error());
      out["failures"].push_back(
          {{"arn", ref}, {"reason", "MISSING"}, {"detail", "The task definition does not exist."}});
      continue;
    }
    if (active) {
      out["failures"].push_back(
          {{"arn", *td->def.task_definition_arn},
           {"reason", "TASK_DEFINITION_ACTIVE"},
           {"detail", "The task definition is ACTIVE: deregister it before you delete it."}});
      continue;
    }
    out["taskDefinitions"].push_back(state::response(*td));
  }
  // Those nothing uses go now; the rest when their tasks and services are gone.
  if (auto p = purge_deleted(); !p) return tl::unexpected(p.error());
  return out;
}

namespace {

// Whether a stored task or service document (JSON text) still uses task definition `arn`.
bool uses(const std::string& doc, const std::string& arn, bool is_task) {
  if (doc.find(arn) == std::string::npos) return false;  // most documents: no parse
  const json j = json::parse(doc, nullptr, false);
  if (!j.is_object()) return false;
  const auto str = [&](const json& o, const char* k) {
    const auto it = o.find(k);
    return it != o.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  if (is_task) return str(j, "taskDefinitionArn") == arn && str(j, "lastStatus") != "STOPPED";
  if (str(j, "status") == "INACTIVE") return false;
  if (str(j, "taskDefinition") == arn) return true;
  const auto d = j.find("deployments");
  if (d == j.end() || !d->is_array()) return false;
  for (const auto& dep : *d) {
    if (dep.is_object() && str(dep, "taskDefinition") == arn) return true;
  }
  return false;
}

}  // namespace

tl::expected<std::size_t, api_error> task_definitions::purge_deleted() {
  auto all = store_->list("taskdef", "");
  if (!all) return tl::unexpected(server(all.error().message));
  std::vector<std::pair<std::string, std::string>> doomed;  // key, ARN
  for (const auto& [k, v] : *all) {
    if (v.find("DELETE_IN_PROGRESS") == std::string::npos) continue;
    auto td = state::parse<state::task_definition>(v, k);
    if (!td) return tl::unexpected(server(td.error().detail));
    if (td->def.status == "DELETE_IN_PROGRESS") {
      doomed.emplace_back(k, *td->def.task_definition_arn);
    }
  }
  if (doomed.empty()) return 0;
  auto tasks = store_->list("task", "");
  if (!tasks) return tl::unexpected(server(tasks.error().message));
  auto services = store_->list("service", "");
  if (!services) return tl::unexpected(server(services.error().message));
  std::size_t erased = 0;
  for (const auto& [key, arn] : doomed) {
    const auto used_by = [&](const auto& docs, bool is_task) {
      return std::any_of(docs.begin(), docs.end(),
                         [&](const auto& d) { return uses(d.second, arn, is_task); });
    };
    if (used_by(*tasks, true) || used_by(*services, false)) continue;
    if (auto e = store_->erase("taskdef", key); !e) {
      return tl::unexpected(server(e.error().message));
    }
    ++erased;
  }
  return erased;
}

}  // namespace berth::agent::control
