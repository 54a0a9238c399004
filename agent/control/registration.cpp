// RegisterContainerInstance and DeregisterContainerInstance: see registration.hpp.
#include "registration.hpp"

#include <map>

#include "berth/agent/util.hpp"
#include "capacity.hpp"
#include "lost_instances.hpp"
#include "task_definitions.hpp"

namespace berth::agent::control {

outcome deregister_container_instance(fleet& instances, state::task_table& table, const member& m,
                                      bool force) {
  const std::string& arn = m.record.container_instance_arn;
  std::size_t live = 0;
  for (const auto& [task_arn, row] : table.rows()) {
    live += row.ecs.container_instance_arn == arn && row.ecs.last_status != "STOPPED";
  }
  if (live > 0 && !force) {
    return tl::unexpected(
        client("The container instance has " + std::to_string(live) +
               " tasks that are not stopped: stop them first, or deregister it with force "
               "(its tasks are stopped and services replace them elsewhere)."));
  }
  // INACTIVE first: no claim lands there once its tasks are stopped.
  auto ci = instances.change(m.id, [](state::container_instance& c) {
    c.status = "INACTIVE";
    ++c.version;
  });
  if (!ci) return tl::unexpected(server(ci.error().message));
  if (live > 0) {
    stop_tasks_on(table, arn, "UserInitiated",
                  "Container instance " + m.id + " was deregistered (force).");
  }
  member gone = m;
  gone.record = std::move(*ci);
  return json{{"containerInstance", instances.describe(gone)}};
}

namespace {

// A resource of totalResources as a whole number (INTEGER or LONG), when given.
std::optional<std::int64_t> amount(const std::vector<ecs::resource>& all, const char* name) {
  for (const auto& r : all) {
    if (r.name != name) continue;
    if (r.integer_value) return *r.integer_value;
    if (r.long_value) return *r.long_value;
    if (r.double_value) return static_cast<std::int64_t>(*r.double_value);
  }
  return std::nullopt;
}

}  // namespace

outcome register_container_instance(fleet& instances, store& st, const std::string& cluster,
                                    const std::string& arn_prefix,
                                    const ecs::register_container_instance_request& r) {
  if (r.cluster && name_of(*r.cluster) != cluster) {
    return tl::unexpected(client("This berthd serves cluster '" + cluster +
                                 "': register the instance through an agent of '" +
                                 name_of(*r.cluster) + "'."));
  }
  const auto& res = r.total_resources.value_or(std::vector<ecs::resource>{});
  const auto cpu = amount(res, "CPU"), mib = amount(res, "MEMORY");
  if (!cpu || !mib || *cpu <= 0 || *mib <= 0 || *cpu > 1'000'000 || *mib > 100'000'000) {
    return tl::unexpected(invalid(
        "totalResources must give CPU (units) and MEMORY (MiB), each a positive whole number"));
  }
  // The identity document (EC2's, JSON) names the instance, its type and zone.
  json doc = json::object();
  if (r.instance_identity_document) {
    doc = json::parse(*r.instance_identity_document, nullptr, false);
    if (!doc.is_object()) {
      return tl::unexpected(invalid("instanceIdentityDocument must be a JSON object"));
    }
  }
  const auto text = [&](const char* k, const std::string& otherwise) {
    const auto it = doc.find(k);
    return it != doc.end() && it->is_string() ? it->get<std::string>() : otherwise;
  };
  std::string id = random_hex(32);
  state::container_instance ci;
  if (r.container_instance_arn) {
    // Registered before: the same record, its resources and attributes as given now.
    auto known = instances.find(*r.container_instance_arn);
    if (!known) {
      return tl::unexpected(
          invalid("containerInstanceArn names no instance of cluster '" + cluster + "'"));
    }
    id = known->id;
    ci = known->record;
  } else {
    ci.container_instance_arn = arn_prefix + "container-instance/" + cluster + "/" + id;
    ci.registered_at = now_seconds();
  }
  ci.ec2_instance_id = text("instanceId", "i-" + id.substr(0, 17));
  ci.status = "ACTIVE";
  ++ci.version;
  if (r.version_info) ci.version_info = *r.version_info;
  ci.registered_cpu = static_cast<std::uint32_t>(*cpu);
  ci.registered_mib = static_cast<std::uint32_t>(*mib);
  std::map<std::string, std::optional<std::string>> attrs;
  attrs["ecs.os-type"] = "linux";
  attrs["ecs.availability-zone"] = text("availabilityZone", "");
  attrs["ecs.instance-type"] = text("instanceType", "");
  for (const auto& a : r.attributes.value_or(std::vector<ecs::attribute>{})) {
    attrs[a.name] = a.value;
  }
  ci.attributes.clear();
  for (auto& [k, v] : attrs) {
    if (!k.starts_with("ecs.") || (v && !v->empty())) ci.attributes.push_back({k, std::move(v)});
  }
  BERTH_TRY(tags, tags_of(r.tags));
  if (r.tags) ci.tags = std::move(tags);
  if (auto w = st.put("instance", record_key(cluster, id), state::to_json(ci).dump()); !w) {
    return tl::unexpected(server(w.error().message));
  }
  member m;
  m.id = id;
  m.record = std::move(ci);
  return json{{"containerInstance", instances.describe(m)}};
}

}  // namespace berth::agent::control
