// The cluster's records as C++ values: the cluster, the container instance, and the attributes
// and tags they carry. JSON is only their edge: to_json writes a record as the store keeps it,
// in ECS's shape (botocore's member names: clusterArn, registeredAt, versionInfo, ...), which
// the ECS responses start from; from_json reads a stored document back.
//
// from_json is strict and never throws: a document that is not an object, a member of the
// wrong JSON type, or a missing member the record cannot do without (a cluster's ARN, name and
// status; an instance's ARN, EC2 id and status; a tag's key; an attribute's name) is an error
// (errc::damaged) naming the record and the member's path (tags[2].key). Members ECS's model
// does not know are ignored and null reads as absent, so from_json(to_json(r)) == r.
//
// Berth's own bookkeeping, when a record has any, is a member of its struct too, written by
// to_json for the store under "_berth" and never copied into an ECS response: the response
// writers below leave it out. The cluster, instance and task definition records have none yet.
//
// Thread safety: plain values and free functions.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "berth/ecs_model.hpp"
#include "berth/state.hpp"

namespace berth::state {

using nlohmann::json;

// A resource's tag (ECS's Tag). Berth's writers always set the value.
struct tag {
  std::string key;
  std::optional<std::string> value;
  bool operator==(const tag&) const = default;
};

// An attribute as a container instance's record holds it (ECS's Attribute without the target,
// which is the record itself; responses add targetType and targetId).
struct attribute {
  std::string name;
  std::optional<std::string> value;
  bool operator==(const attribute&) const = default;
};

// A cluster's record: kind "cluster", key its name. The counts ECS's Cluster also has are
// computed for each response, never stored.
struct cluster {
  std::string cluster_arn;
  std::string cluster_name;
  std::string status;  // ACTIVE, or INACTIVE once deleted
  std::vector<tag> tags;
  std::vector<ecs::cluster_setting> settings;
  // As a client set them (CreateCluster, UpdateCluster, PutClusterCapacityProviders): shown,
  // without effect on placement, which is over the container instances.
  std::optional<ecs::cluster_configuration> configuration;
  std::vector<std::string> capacity_providers;
  std::vector<ecs::capacity_provider_strategy_item> default_strategy;
  std::optional<std::string> service_connect_namespace;
  bool operator==(const cluster&) const = default;
};

// A container instance's record: kind "instance", key "<cluster>/<instance id>". Its registered
// resources are stored; remaining resources and task counts are computed for each response
// (DescribeContainerInstances). Beside it, under the same kind: "<cluster>/<id>/capacity" (what
// is left, control/capacity.hpp) and "<cluster>/<id>/agent" (its agent's presence, leased).
struct container_instance {
  std::string container_instance_arn;
  std::string ec2_instance_id;
  std::string status;              // ACTIVE or DRAINING
  std::int64_t version = 0;        // one more at each registration and change of status
  ecs::version_info version_info;  // the agent's and Docker's versions
  bool agent_connected = false;
  double registered_at = 0;  // epoch seconds, when first registered
  // What the instance offers (ECS's registeredResources: CPU, MEMORY, PORTS reserved).
  std::uint32_t registered_cpu = 0, registered_mib = 0;
  std::vector<std::uint16_t> reserved_ports;
  std::vector<attribute> attributes;
  std::vector<tag> tags;
  bool operator==(const container_instance&) const = default;
};

// A task definition's record: kind "taskdef", key "<family>:<revision, ten digits>". ECS's
// TaskDefinition as registered (taskDefinitionArn, family, revision and status always set), and
// the tags it was registered with, which ECS keeps beside the definition rather than in it.
struct task_definition {
  ecs::task_definition def;
  std::vector<tag> tags;
  bool operator==(const task_definition&) const = default;
};

// The store's form (for these records, ECS's shape).
[[nodiscard]] json to_json(const tag& t);
[[nodiscard]] json to_json(const attribute& a);
[[nodiscard]] json to_json(const std::vector<tag>& tags);
[[nodiscard]] json to_json(const cluster& c);
[[nodiscard]] json to_json(const container_instance& ci);
// ECS's TaskDefinition with its registration's tags as "tags".
[[nodiscard]] json to_json(const task_definition& td);

// A stored document read strictly (see above); specialized for the records above and for a
// list of tags. Other types do not link.
template <class T>
[[nodiscard]] result<T> from_json(const json& j);
template <>
[[nodiscard]] result<tag> from_json<tag>(const json& j);
template <>
[[nodiscard]] result<std::vector<tag>> from_json<std::vector<tag>>(const json& j);
template <>
[[nodiscard]] result<attribute> from_json<attribute>(const json& j);
template <>
[[nodiscard]] result<cluster> from_json<cluster>(const json& j);
template <>
[[nodiscard]] result<container_instance> from_json<container_instance>(const json& j);
template <>
[[nodiscard]] result<task_definition> from_json<task_definition>(const json& j);

// A record from the store's text: not JSON, or refused by from_json, is an error (errc::damaged)
// naming the record by its store key ("cluster record 'prod': 'status' is required").
template <class T>
[[nodiscard]] result<T> parse(std::string_view text, std::string_view key);
template <>
[[nodiscard]] result<cluster> parse<cluster>(std::string_view text, std::string_view key);
template <>
[[nodiscard]] result<container_instance> parse<container_instance>(std::string_view text,
                                                                   std::string_view key);
template <>
[[nodiscard]] result<task_definition> parse<task_definition>(std::string_view text,
                                                             std::string_view key);

// ECS's Cluster and ContainerInstance as responses start them: the record's ECS members only.
[[nodiscard]] json response(const cluster& c);
[[nodiscard]] json response(const container_instance& ci);
// ECS's TaskDefinition: the definition without its tags.
[[nodiscard]] json response(const task_definition& td);
// ECS's Attribute, for the instance `target_arn` (PutAttributes, ListAttributes, ...).
[[nodiscard]] json response(const attribute& a, const std::string& target_arn);

}  // namespace berth::state
