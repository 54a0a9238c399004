// The ECS actions of the model that Berth does not serve: each answers an error the model
// declares for it (so an SDK raises its typed exception), whose message says what Berth does
// instead, never UnknownOperationException, which no ECS client expects for an action its
// model lists.
#pragma once

#include <optional>
#include <string_view>

#include "ecs_request.hpp"

namespace berth::agent::control {

// The answer to `action` when it is one of those, else nothing (served, or not ECS's).
std::optional<api_error> not_served(std::string_view action);

// DescribeCapacityProviders: Berth has none, so none are listed and each one named is MISSING.
tl::expected<json, api_error> describe_capacity_providers(const json& req);

}  // namespace berth::agent::control
