// The cluster's records as C++ values: see records.hpp. Reading goes through the ECS model's
// strict decoder (berth::ecs::decode), which checks every member's JSON type and names its
// path; what is left here is what the records require beyond ECS's optional members.
#include "records.hpp"

#include <algorithm>
#include <charconv>
#include <utility>

namespace berth::state {

namespace {

// `who` names the record: "cluster record", or "cluster record 'prod'" when read from the store.
error damaged(const std::string& who, const std::string& what) {
  return {errc::damaged, who + ": " + what};
}

error missing(const std::string& who, const std::string& path) {
  return damaged(who, "'" + path + "' is required");
}

// The model's decoder, its error (which names the member's path) as the record's.
template <class T>
result<T> decode(const json& j, const std::string& who) {
  auto d = ecs::decode<T>(j);
  if (!d) return tl::unexpected(damaged(who, d.error().message));
  return std::move(*d);
}

// `at` is the tag's path in the record ("tags[2]"), empty for a tag on its own.
result<tag> tag_of(const ecs::tag& t, const std::string& who, const std::string& at) {
  if (!t.key) return tl::unexpected(missing(who, at.empty() ? "key" : at + ".key"));
  return tag{*t.key, t.value};
}

result<std::vector<tag>> tags_of(const std::optional<std::vector<ecs::tag>>& list,
                                 const std::string& who, const std::string& path) {
  std::vector<tag> out;
  if (!list) return out;
  out.reserve(list->size());
  for (std::size_t i = 0; i < list->size(); ++i) {
    auto t = tag_of((*list)[i], who, path + "[" + std::to_string(i) + "]");
    if (!t) return tl::unexpected(t.error());
    out.push_back(std::move(*t));
  }
  return out;
}

result<cluster> read_cluster(const json& j, const std::string& who) {
  auto m = decode<ecs::cluster>(j, who);
  if (!m) return tl::unexpected(m.error());
  if (!m->cluster_arn) return tl::unexpected(missing(who, "clusterArn"));
  if (!m->cluster_name) return tl::unexpected(missing(who, "clusterName"));
  if (!m->status) return tl::unexpected(missing(who, "status"));
  auto tags = tags_of(m->tags, who, "tags");
  if (!tags) return tl::unexpected(tags.error());
  cluster c;
  c.cluster_arn = std::move(*m->cluster_arn);
  c.cluster_name = std::move(*m->cluster_name);
  c.status = std::move(*m->status);
  c.tags = std::move(*tags);
  c.settings = m->settings.value_or(std::vector<ecs::cluster_setting>{});
  c.configuration = std::move(m->configuration);
  c.capacity_providers = m->capacity_providers.value_or(std::vector<std::string>{});
  c.default_strategy = m->default_capacity_provider_strategy.value_or(
      std::vector<ecs::capacity_provider_strategy_item>{});
  if (m->service_connect_defaults)
    c.service_connect_namespace = m->service_connect_defaults->namespace_;
  return c;
}

result<container_instance> read_instance(const json& j, const std::string& who) {
  auto m = decode<ecs::container_instance>(j, who);
  if (!m) return tl::unexpected(m.error());
  if (!m->container_instance_arn) return tl::unexpected(missing(who, "containerInstanceArn"));
  if (!m->ec2_instance_id) return tl::unexpected(missing(who, "ec2InstanceId"));
  if (!m->status) return tl::unexpected(missing(who, "status"));
  auto tags = tags_of(m->tags, who, "tags");
  if (!tags) return tl::unexpected(tags.error());
  container_instance ci;
  ci.container_instance_arn = std::move(*m->container_instance_arn);
  ci.ec2_instance_id = std::move(*m->ec2_instance_id);
  ci.status = std::move(*m->status);
  ci.version = m->version.value_or(0);
  ci.version_info = m->version_info.value_or(ecs::version_info{});
  ci.agent_connected = m->agent_connected.value_or(false);
  ci.registered_at = m->registered_at.value_or(0.0);
  for (const auto& r : m->registered_resources.value_or(std::vector<ecs::resource>{})) {
    const auto units = static_cast<std::uint32_t>(std::max(0, r.integer_value.value_or(0)));
    if (r.name == "CPU") ci.registered_cpu = units;
    if (r.name == "MEMORY") ci.registered_mib = units;
    if (r.name != "PORTS") continue;
    for (const auto& p : r.string_set_value.value_or(std::vector<std::string>{})) {
      unsigned port = 0;
      const auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), port);
      if (ec != std::errc{} || end != p.data() + p.size() || port == 0 || port > 65535) {
        return tl::unexpected(damaged(who, "registeredResources: '" + p + "' is not a port"));
      }
      ci.reserved_ports.push_back(static_cast<std::uint16_t>(port));
    }
  }
  // The model requires an attribute's name: what is left of one is its value.
  for (auto& a : m->attributes.value_or(std::vector<ecs::attribute>{})) {
    ci.attributes.push_back({std::move(a.name), std::move(a.value)});
  }
  ci.tags = std::move(*tags);
  return ci;
}

result<task_definition> read_task_definition(const json& j, const std::string& who) {
  auto m = decode<ecs::task_definition>(j, who);
  if (!m) return tl::unexpected(m.error());
  if (!m->task_definition_arn) return tl::unexpected(missing(who, "taskDefinitionArn"));
  if (!m->family) return tl::unexpected(missing(who, "family"));
  if (!m->revision) return tl::unexpected(missing(who, "revision"));
  if (!m->status) return tl::unexpected(missing(who, "status"));
  std::vector<tag> tags;
  if (const auto it = j.find("tags"); it != j.end() && !it->is_null()) {
    auto t = from_json<std::vector<tag>>(*it);
    if (!t) return tl::unexpected(damaged(who, t.error().detail));
    tags = std::move(*t);
  }
  return task_definition{std::move(*m), std::move(tags)};
}

template <class T, class Read>
result<T> parse_with(std::string_view text, const std::string& who, Read read) {
  const json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) return tl::unexpected(damaged(who, "not JSON"));
  return read(j, who);
}

std::vector<ecs::tag> model_tags(const std::vector<tag>& tags) {
  std::vector<ecs::tag> out;
  out.reserve(tags.size());
  for (const tag& t : tags) out.push_back({t.key, t.value});
  return out;
}

ecs::cluster model_of(const cluster& c) {
  ecs::cluster m;
  m.cluster_arn = c.cluster_arn;
  m.cluster_name = c.cluster_name;
  m.status = c.status;
  m.tags = model_tags(c.tags);
  m.settings = c.settings;
  m.configuration = c.configuration;
  m.capacity_providers = c.capacity_providers;
  m.default_capacity_provider_strategy = c.default_strategy;
  if (c.service_connect_namespace) {
    m.service_connect_defaults.emplace();
    m.service_connect_defaults->namespace_ = c.service_connect_namespace;
  }
  return m;
}

ecs::container_instance model_of(const container_instance& ci) {
  ecs::container_instance m;
  m.container_instance_arn = ci.container_instance_arn;
  m.ec2_instance_id = ci.ec2_instance_id;
  m.status = ci.status;
  m.version = ci.version;
  m.version_info = ci.version_info;
  m.agent_connected = ci.agent_connected;
  m.registered_at = ci.registered_at;
  std::vector<std::string> ports;
  for (const std::uint16_t p : ci.reserved_ports) ports.push_back(std::to_string(p));
  const auto integer = [](const char* name, std::uint32_t v) {
    return ecs::resource{name, "INTEGER", 0.0, 0, static_cast<std::int32_t>(v), std::nullopt};
  };
  m.registered_resources = {integer("CPU", ci.registered_cpu),
                            integer("MEMORY", ci.registered_mib),
                            {"PORTS", "STRINGSET", 0.0, 0, 0, std::move(ports)}};
  m.attributes.emplace();
  for (const attribute& a : ci.attributes) m.attributes->push_back({a.name, a.value, {}, {}});
  m.tags = model_tags(ci.tags);
  return m;
}

}  // namespace

json to_json(const tag& t) { return ecs::to_json(ecs::tag{t.key, t.value}); }

json to_json(const attribute& a) { return ecs::to_json(ecs::attribute{a.name, a.value, {}, {}}); }

json to_json(const std::vector<tag>& tags) {
  json out = json::array();
  for (const tag& t : tags) out.push_back(to_json(t));
  return out;
}

// No bookkeeping yet: the store's form and the response's are the same ECS members.
json to_json(const cluster& c) { return ecs::to_json(model_of(c)); }
json to_json(const container_instance& ci) { return ecs::to_json(model_of(ci)); }
json to_json(const task_definition& td) {
  json out = ecs::to_json(td.def);
  out["tags"] = to_json(td.tags);
  return out;
}

json response(const task_definition& td) { return ecs::to_json(td.def); }
json response(const cluster& c) { return ecs::to_json(model_of(c)); }
json response(const container_instance& ci) { return ecs::to_json(model_of(ci)); }

json response(const attribute& a, const std::string& target_arn) {
  return ecs::to_json(ecs::attribute{a.name, a.value, "container-instance", target_arn});
}

template <>
result<tag> from_json<tag>(const json& j) {
  auto m = decode<ecs::tag>(j, "tag");
  if (!m) return tl::unexpected(m.error());
  return tag_of(*m, "tag", "");
}

template <>
result<std::vector<tag>> from_json<std::vector<tag>>(const json& j) {
  if (!j.is_array()) {
    return tl::unexpected(
        damaged("tags", std::string("Expected a list, got ") + ecs::json_type_name(j)));
  }
  std::optional<std::vector<ecs::tag>> list(std::in_place);
  for (std::size_t i = 0; i < j.size(); ++i) {
    auto m = ecs::decode<ecs::tag>(j[i]);
    if (!m) {
      // Appended, not concatenated from a literal: GCC 12's -Wrestrict misfires on the latter.
      std::string what = "item ";
      what += std::to_string(i);
      what += ": ";
      what += m.error().message;
      return tl::unexpected(damaged("tags", what));
    }
    list->push_back(std::move(*m));
  }
  return tags_of(list, "tags", "");
}

template <>
result<attribute> from_json<attribute>(const json& j) {
  auto m = decode<ecs::attribute>(j, "attribute");
  if (!m) return tl::unexpected(m.error());
  return attribute{std::move(m->name), std::move(m->value)};
}

template <>
result<cluster> from_json<cluster>(const json& j) {
  return read_cluster(j, "cluster record");
}

template <>
result<container_instance> from_json<container_instance>(const json& j) {
  return read_instance(j, "container instance record");
}

template <>
result<task_definition> from_json<task_definition>(const json& j) {
  return read_task_definition(j, "task definition record");
}

template <>
result<task_definition> parse<task_definition>(std::string_view text, std::string_view key) {
  return parse_with<task_definition>(text, "task definition record '" + std::string(key) + "'",
                                     read_task_definition);
}

template <>
result<cluster> parse<cluster>(std::string_view text, std::string_view key) {
  return parse_with<cluster>(text, "cluster record '" + std::string(key) + "'", read_cluster);
}

template <>
result<container_instance> parse<container_instance>(std::string_view text, std::string_view key) {
  return parse_with<container_instance>(
      text, "container instance record '" + std::string(key) + "'", read_instance);
}

}  // namespace berth::state
