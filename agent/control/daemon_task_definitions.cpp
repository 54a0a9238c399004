// Daemon task definitions: see daemon_task_definitions.hpp.
#include "daemon_task_definitions.hpp"

#include <algorithm>
#include <vector>

#include "berth/agent/util.hpp"
#include "task_definitions.hpp"

namespace berth::agent::control {

namespace {

constexpr const char* kind = "daemontd";
constexpr std::string_view resource = ":daemon-task-definition/";

api_error unable() { return client("Unable to describe daemon task definition."); }

// A stored revision: ECS's DaemonTaskDefinition, and its registration's tags as "tags".
tl::expected<ecs::daemon_task_definition, api_error> parse(const std::string& key,
                                                           const std::string& text) {
  const json j = json::parse(text, nullptr, false);
  auto d = ecs::decode<ecs::daemon_task_definition>(j);
  if (j.is_discarded() || !d || !d->family || !d->revision || !d->status) {
    return tl::unexpected(server("daemon task definition " + key + " does not parse"));
  }
  return std::move(*d);
}

std::string key_of(const ecs::daemon_task_definition& d) {
  return td_key(*d.family, static_cast<std::uint64_t>(*d.revision));
}

// pidMode and ipcMode as a task definition has them: "shared" is the host's namespace.
tl::expected<void, api_error> namespaces(const ecs::register_daemon_task_definition_request& r,
                                         json& as_task_definition) {
  for (const auto& [member, value] :
       {std::pair{"pidMode", &r.pid_mode}, {"ipcMode", &r.ipc_mode}}) {
    as_task_definition.erase(member);
    if (!*value) continue;
    if (**value != "none" && **value != "shared") {
      return tl::unexpected(
          invalid(std::string(member) + " must be none or shared, not '" + **value + "'"));
    }
    if (**value == "shared") {
      as_task_definition[member] = "host";
    } else if (std::string_view(member) == "ipcMode") {
      as_task_definition[member] = "none";
    }
  }
  return {};
}

}  // namespace

daemon_task_definitions::daemon_task_definitions(store* s, std::string arn_prefix)
    : store_(s), arn_prefix_(std::move(arn_prefix)) {}

outcome daemon_task_definitions::register_daemon_task_definition(const json& req) {
  if (const auto size = req.dump().size(); size > 65536) {
    return tl::unexpected(client("Actual length: '" + std::to_string(size) +
                                 "'. Max allowed length is '65536' bytes."));
  }
  BERTH_TRY(r, decode_request<ecs::register_daemon_task_definition_request>(
                   req, "containerDefinitions", client("Container list cannot be empty.")));
  // Checked as a task definition in host network mode, which also gives the containers ECS's
  // defaults and the task's cpu and memory in units.
  json as_td = ecs::to_json(r);
  as_td["networkMode"] = "host";
  if (auto ok = namespaces(r, as_td); !ok) return tl::unexpected(ok.error());
  BERTH_TRY(td_req, decode_request<ecs::register_task_definition_request>(as_td));
  BERTH_TRY(td, checked_task_definition(std::move(td_req)));

  ecs::daemon_task_definition d;
  d.family = r.family;
  d.task_role_arn = std::move(r.task_role_arn);
  d.execution_role_arn = std::move(r.execution_role_arn);
  d.container_definitions.emplace();
  for (const auto& c :
       td.def.container_definitions.value_or(std::vector<ecs::container_definition>{})) {
    auto dc = ecs::decode<ecs::daemon_container_definition>(ecs::to_json(c));
    if (!dc)
      return tl::unexpected(server("a checked container lost its shape: " + dc.error().message));
    d.container_definitions->push_back(std::move(*dc));
  }
  d.volumes = std::move(r.volumes);
  d.cpu = td.def.cpu;
  d.memory = td.def.memory;
  d.pid_mode = std::move(r.pid_mode);
  d.ipc_mode = std::move(r.ipc_mode);
  d.status = "ACTIVE";
  d.registered_at = now_seconds();
  d.registered_by = "berth";
  auto rev = store_->next(std::string(kind) + ":" + r.family);
  if (!rev) return tl::unexpected(server(rev.error().message));
  d.revision = static_cast<std::int32_t>(*rev);
  d.daemon_task_definition_arn =
      arn_prefix_ + std::string(resource.substr(1)) + r.family + ":" + std::to_string(*rev);
  if (auto w = write(d, state::to_json(td.tags)); !w) return tl::unexpected(w.error());
  return json{{"daemonTaskDefinitionArn", *d.daemon_task_definition_arn}};
}

tl::expected<void, api_error> daemon_task_definitions::write(const ecs::daemon_task_definition& d,
                                                             const json& tags) {
  json doc = ecs::to_json(d);
  doc["tags"] = tags;
  if (auto w = store_->put(kind, key_of(d), doc.dump()); !w) {
    return tl::unexpected(server(w.error().message));
  }
  return {};
}

tl::expected<ecs::daemon_task_definition, api_error> daemon_task_definitions::find(
    const std::string& ref) {
  std::string fr = ref;
  if (ref.starts_with("arn:")) {
    const auto at = ref.find(resource);
    if (at == std::string::npos) return tl::unexpected(unable());
    fr = ref.substr(at + resource.size());
  }
  if (const auto colon = fr.rfind(':'); colon != std::string::npos) {
    std::uint64_t rev = 0;
    try {
      rev = std::stoull(fr.substr(colon + 1));
    } catch (...) {
      return tl::unexpected(unable());
    }
    const std::string key = td_key(fr.substr(0, colon), rev);
    auto doc = store_->get(kind, key);
    if (!doc) return tl::unexpected(server(doc.error().message));
    if (!*doc) return tl::unexpected(unable());
    return parse(key, **doc);
  }
  auto all = store_->list(kind, fr + ":");
  if (!all) return tl::unexpected(server(all.error().message));
  for (auto it = all->rbegin(); it != all->rend(); ++it) {
    BERTH_TRY(d, parse(it->first, it->second));
    if (d.status == "ACTIVE") return d;
  }
  return tl::unexpected(unable());
}

tl::expected<ecs::task_definition, api_error> daemon_task_definitions::as_task_definition(
    const std::string& ref) {
  BERTH_TRY(d, find(ref));
  json j = ecs::to_json(d);
  j["taskDefinitionArn"] = j["daemonTaskDefinitionArn"];
  j.erase("daemonTaskDefinitionArn");
  j.erase("deleteRequestedAt");
  j["networkMode"] = "host";
  j["requiresCompatibilities"] = j["compatibilities"] = {"EC2"};
  for (const char* member : {"pidMode", "ipcMode"}) {
    const std::string mode = j.value(member, "");
    j.erase(member);
    if (mode == "shared") j[member] = "host";
    if (mode == "none" && std::string_view(member) == "ipcMode") j[member] = "none";
  }
  auto td = ecs::decode<ecs::task_definition>(j);
  if (!td)
    return tl::unexpected(server("a daemon task definition lost its shape: " + td.error().message));
  return std::move(*td);
}

outcome daemon_task_definitions::describe_daemon_task_definition(const json& req) {
  BERTH_TRY(r, decode_request<ecs::describe_daemon_task_definition_request>(req));
  if (auto ok = not_empty(r.daemon_task_definition, "daemonTaskDefinition"); !ok) {
    return tl::unexpected(ok.error());
  }
  BERTH_TRY(d, find(r.daemon_task_definition));
  return json{{"daemonTaskDefinition", ecs::to_json(d)}};
}

outcome daemon_task_definitions::list_daemon_task_definitions(const json& req) {
  BERTH_TRY(r, decode_request<ecs::list_daemon_task_definitions_request>(req));
  const std::string status = r.status.value_or("ACTIVE");
  if (status != "ACTIVE" && status != "DELETE_IN_PROGRESS" && status != "ALL") {
    return tl::unexpected(invalid("status must be ACTIVE, DELETE_IN_PROGRESS or ALL"));
  }
  if (r.revision && *r.revision != "LAST_REGISTERED") {
    return tl::unexpected(invalid("revision must be LAST_REGISTERED"));
  }
  if (r.sort && *r.sort != "ASC" && *r.sort != "DESC") {
    return tl::unexpected(invalid("sort must be ASC or DESC"));
  }
  // The store lists by key: by family, then revision.
  auto all = store_->list(kind, r.family ? *r.family + ":" : r.family_prefix.value_or(""));
  if (!all) return tl::unexpected(server(all.error().message));
  std::vector<ecs::daemon_task_definition> listed;
  for (const auto& [k, v] : *all) {
    BERTH_TRY(d, parse(k, v));
    if (r.family_prefix && !d.family->starts_with(*r.family_prefix)) continue;
    if (r.family && *d.family != *r.family) continue;
    if (status != "ALL" && *d.status != status) continue;
    // LAST_REGISTERED: a family's later revision replaces its earlier one.
    if (r.revision && !listed.empty() && *listed.back().family == *d.family) listed.pop_back();
    listed.push_back(std::move(d));
  }
  if (r.sort == "DESC") std::reverse(listed.begin(), listed.end());
  BERTH_TRY(range, page(r.next_token, r.max_results, listed.size(), 100));
  json out = {{"daemonTaskDefinitions", json::array()}};
  for (std::size_t i = range.first; i < range.second; ++i) {
    const auto& d = listed[i];
    ecs::daemon_task_definition_summary s;
    s.arn = d.daemon_task_definition_arn;
    s.registered_at = d.registered_at;
    s.registered_by = d.registered_by;
    s.delete_requested_at = d.delete_requested_at;
    s.status = d.status;
    out["daemonTaskDefinitions"].push_back(ecs::to_json(s));
  }
  add_token(out, range.second, listed.size());
  return out;
}

outcome daemon_task_definitions::delete_daemon_task_definition(const json& req) {
  BERTH_TRY(r, decode_request<ecs::delete_daemon_task_definition_request>(req));
  const std::string& ref = r.daemon_task_definition;
  if (auto ok = not_empty(ref, "daemonTaskDefinition"); !ok) return tl::unexpected(ok.error());
  if (!names_revision(ref)) return tl::unexpected(client("Revision is missing."));
  BERTH_TRY(found, find(ref));
  const std::string& arn = *found.daemon_task_definition_arn;
  std::optional<api_error> refused;
  auto w = store_->transaction([&](store& tx) -> result<void> {
    refused.reset();
    auto doc = tx.get(kind, key_of(found));
    if (!doc) return tl::unexpected(doc.error());
    json j = json::parse(doc->value_or(""), nullptr, false);
    if (j.value("status", "") != "ACTIVE") {
      refused = client("The daemon task definition is not ACTIVE: " + arn);
      return tl::unexpected(error{refused->message});
    }
    // Deleted at once: a daemon running it keeps its tasks (as_task_definition reads any
    // status), and CreateDaemon or UpdateDaemon refuse it from now on.
    j["status"] = "DELETED";
    j["deleteRequestedAt"] = now_seconds();
    return tx.put(kind, key_of(found), j.dump());
  });
  if (refused) return tl::unexpected(*refused);
  if (!w) return tl::unexpected(server(w.error().message));
  return json{{"daemonTaskDefinitionArn", arn}};
}

}  // namespace berth::agent::control
