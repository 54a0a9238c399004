// What the ECS actions share: errors in ECS's words, typed access to request members,
// pagination tokens, ECS's units, and the launch type check RunTask and CreateService make.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <tl/expected.hpp>
#include <utility>
#include <vector>

#include "berth/ecs_model.hpp"

namespace berth::agent {

using nlohmann::json;

// An ECS error: its __type, message and HTTP status.
struct api_error {
  std::string type;
  std::string message;
  int status = 400;
};

// RunTask's and CreateService's launchType and capacityProviderStrategy: Berth runs the EC2
// launch type only, so FARGATE and EXTERNAL (InvalidParameterException), any other value, and a
// capacity provider strategy (`capacity_providers`: one was given, not empty) are refused
// rather than run as EC2.
tl::expected<void, api_error> check_launch_type(const std::optional<std::string>& launch_type,
                                                bool capacity_providers);

}  // namespace berth::agent

namespace berth::agent::control {

using nlohmann::json;
using outcome = tl::expected<json, api_error>;

inline api_error invalid(std::string m) { return {"InvalidParameterException", std::move(m)}; }
// ECS's words for placing in a cluster without container instances: RunTask refuses with them
// (no_instances_found), and a service's scheduler, telling that refusal from others
// (is_no_instances), names them in its placement failure.
inline constexpr std::string_view no_instances =
    "No Container Instances were found in your cluster";
inline api_error no_instances_found() { return invalid(std::string(no_instances) + "."); }
inline bool is_no_instances(const api_error& e) {
  return e.type == "InvalidParameterException" && e.message.starts_with(no_instances);
}
inline api_error client(std::string m) { return {"ClientException", std::move(m)}; }
inline api_error serialization(std::string m) { return {"SerializationException", std::move(m)}; }
inline api_error cluster_not_found() { return {"ClusterNotFoundException", "Cluster not found."}; }
inline api_error server(std::string m) { return {"ServerException", std::move(m), 500}; }

// Typed access to request members, with ECS-style errors naming the member.
struct reader {
  const json& j;

  tl::expected<std::optional<std::string>, api_error> str(const char* k) const {
    const auto it = j.find(k);
    if (it == j.end() || it->is_null()) return std::optional<std::string>();
    if (!it->is_string()) {
      return tl::unexpected(serialization(std::string("Expected '") + k + "' to be a string"));
    }
    return std::optional<std::string>(it->get<std::string>());
  }
  tl::expected<std::string, api_error> required_str(const char* k) const {
    auto v = str(k);
    if (!v) return tl::unexpected(v.error());
    if (!*v || (*v)->empty()) {
      return tl::unexpected(invalid(std::string("'") + k + "' is required and must not be empty"));
    }
    return **v;
  }
  tl::expected<std::optional<std::int64_t>, api_error> integer(const char* k) const {
    const auto it = j.find(k);
    if (it == j.end() || it->is_null()) return std::optional<std::int64_t>();
    if (!it->is_number_integer()) {
      return tl::unexpected(serialization(std::string("Expected '") + k + "' to be an integer"));
    }
    return std::optional<std::int64_t>(it->get<std::int64_t>());
  }
  tl::expected<std::vector<std::string>, api_error> strings(const char* k) const {
    std::vector<std::string> out;
    const auto it = j.find(k);
    if (it == j.end() || it->is_null()) return out;
    if (!it->is_array()) {
      return tl::unexpected(serialization(std::string("Expected '") + k + "' to be a list"));
    }
    for (const auto& v : *it) {
      if (!v.is_string()) {
        return tl::unexpected(
            serialization(std::string("Expected every item of '") + k + "' to be a string"));
      }
      out.push_back(v.get<std::string>());
    }
    return out;
  }
  tl::expected<const json*, api_error> list(const char* k) const {
    const auto it = j.find(k);
    if (it == j.end() || it->is_null()) return nullptr;
    if (!it->is_array()) {
      return tl::unexpected(serialization(std::string("Expected '") + k + "' to be a list"));
    }
    return &*it;
  }
};

// The model decoder's refusal in ECS's words: a missing required member is invalid, anything else
// a SerializationException.
inline api_error refusal_of(const ecs::decode_error& e) {
  return e.code == ecs::decode_errc::missing ? invalid(e.message) : serialization(e.message);
}

// The action's request as ECS's model types it (ecs::run_task_request, ...): the one way a
// handler reads its request. A member of the wrong JSON type is a SerializationException, and a
// required member that is missing an InvalidParameterException, each naming the member's path
// (the API's request check refuses the first before a handler runs, not the second; both
// answer berthd's own callers, the service scheduler's). Members the model does not know are
// ignored.
template <class Request>
tl::expected<Request, api_error> decode_request(const json& j) {
  auto r = ecs::decode<Request>(j);
  if (r) return std::move(*r);
  return tl::unexpected(refusal_of(r.error()));
}
// The same, where the action has its own words for a request without `member` (one the model
// requires): "attributes must not be empty", whether the list is missing or empty.
template <class Request>
tl::expected<Request, api_error> decode_request(const json& j, std::string_view member,
                                                api_error if_missing) {
  auto r = ecs::decode<Request>(j);
  if (r) return std::move(*r);
  if (r.error().code == ecs::decode_errc::missing && r.error().path == member) {
    return tl::unexpected(std::move(if_missing));
  }
  return tl::unexpected(refusal_of(r.error()));
}

// A required string member that is empty ("cluster": ""): refused as a missing one always was.
inline tl::expected<void, api_error> not_empty(const std::string& v, const char* member) {
  if (!v.empty()) return {};
  return tl::unexpected(invalid(std::string("'") + member + "' is required and must not be empty"));
}

#define BERTH_TRY(var, expr)                            \
  auto var##_r = (expr);                                \
  if (!var##_r) return tl::unexpected(var##_r.error()); \
  auto var = std::move(*var##_r)

// Pagination: nextToken is the index of the next item, opaque to callers. The [begin, end) of
// this page, at most `max_limit` (or maxResults) long.
tl::expected<std::pair<std::size_t, std::size_t>, api_error> page(const reader& r,
                                                                  std::size_t total,
                                                                  std::int64_t max_limit);
// The same from a typed request's nextToken and maxResults.
tl::expected<std::pair<std::size_t, std::size_t>, api_error> page(
    const std::optional<std::string>& token, std::optional<std::int64_t> max, std::size_t total,
    std::int64_t max_limit);
// Sets nextToken when items are left after `end`.
void add_token(json& out, std::size_t end, std::size_t total);
// `items`, this page of them (page() of `token` and `max`), as `out[list_name]`, with nextToken
// when items are left after it.
tl::expected<json, api_error> paged(std::vector<json> items,
                                    const std::optional<std::string>& token,
                                    std::optional<std::int64_t> max, std::int64_t max_limit,
                                    const char* list_name);

// "512", "0.5 vCPU", "1 vcpu" -> CPU units; "1024", "1 GB", "2GB" -> MiB.
// Values beyond 2^24 (16 M units or MiB) or not finite are refused.
std::optional<std::uint32_t> units_of(const std::string& v, bool cpu);
// The same from a JSON string, or a whole number of units.
std::optional<std::uint32_t> units_of(const json& v, bool cpu);

// An attribute PutAttributes or DeleteAttributes names, and the instance it is on.
struct attribute_change {
  std::string name;
  std::optional<std::string> value;
  std::string target_id;
};
// Their attributes checked as ECS checks them (at most 10; names and values of its characters;
// container instances the only target type).
tl::expected<std::vector<attribute_change>, api_error> attribute_list(
    std::vector<ecs::attribute> list);

}  // namespace berth::agent::control
