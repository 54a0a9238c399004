// The record an ECS resource ARN names, for the tag actions (TagResource, UntagResource,
// ListTagsForResource): the store's kind and key. Clusters ("cluster", <name>), task
// definitions ("taskdef", family and revision), tasks ("task", <cluster>/<id>), services
// ("service", <cluster>/<name>), daemons (their service record: "service",
// <cluster>/daemon:<name>) and container instances ("instance", <cluster>/<id>).
#pragma once

#include <optional>
#include <string>
#include <utility>

namespace berth::agent::control {

// Nothing when `arn` is not a resource of the account and region `prefix`
// ("arn:aws:ecs:<region>:<account>:") names.
std::optional<std::pair<std::string, std::string>> resource_of(const std::string& arn,
                                                               const std::string& prefix);

}  // namespace berth::agent::control
