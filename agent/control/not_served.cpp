// The ECS actions Berth does not serve: see not_served.hpp.
#include "not_served.hpp"

#include <string>
#include <vector>

namespace berth::agent::control {

namespace {

constexpr std::string_view capacity_providers =
    "Berth has no capacity providers (they scale Auto Scaling groups): a cluster's capacity is "
    "the container instances its agents register. Start berthd on another machine to add one.";
constexpr std::string_view express =
    "Express Gateway services provision Application Load Balancers and auto scaling in AWS; "
    "Berth has neither: create a service (CreateService) with a load balancer (HAProxy) instead.";
constexpr std::string_view hooks =
    "Berth's service deployments have no lifecycle hooks to pause at, so none waits to be "
    "continued: StopServiceDeployment rolls one back.";
constexpr std::string_view agent_calls =
    "This is the ECS container agent's call; Berth's agent, berthd, reports its instance's and "
    "tasks' state to the cluster itself.";

}  // namespace

// Each group of actions with the error its members answer.
struct group {
  std::vector<std::string_view> actions;
  api_error answer;
};

std::optional<api_error> not_served(std::string_view action) {
  const auto unsupported = [](std::string_view why) {
    return api_error{"UnsupportedFeatureException", std::string(why)};
  };
  static const std::vector<group> groups = {
      {{"CreateCapacityProvider", "UpdateCapacityProvider", "DeleteCapacityProvider"},
       client(std::string(capacity_providers))},
      {{"ExecuteCommand"},
       client("Berth does not serve ExecuteCommand: it needs AWS's Session Manager in each task. "
              "Use berthctl execute-command on the instance that runs the task (DescribeTasks "
              "names it); the task must have been started with enableExecuteCommand.")},
      {{"ListServicesByNamespace"},
       {"NamespaceNotFoundException",
        "Berth has no Service Connect namespaces (AWS Cloud Map): services are reached through "
        "their load balancer (HAProxy)."}},
      {{"CreateExpressGatewayService", "UpdateExpressGatewayService", "DeleteExpressGatewayService",
        "DescribeExpressGatewayService"},
       unsupported(express)},
      {{"ContinueServiceDeployment"}, unsupported(hooks)},
      {{"DiscoverPollEndpoint", "SubmitTaskStateChange", "SubmitContainerStateChange",
        "SubmitAttachmentStateChanges"},
       client(std::string(agent_calls))},
      {{"UpdateContainerAgent"},
       client("Berth's agent is berthd: update it as a package on each instance (its systemd "
              "unit restarts it; tasks keep running).")},
  };
  for (const auto& g : groups) {
    for (const auto a : g.actions) {
      if (a == action) return g.answer;
    }
  }
  return std::nullopt;
}

tl::expected<json, api_error> describe_capacity_providers(const json& req) {
  BERTH_TRY(r, decode_request<ecs::describe_capacity_providers_request>(req));
  json out = {{"capacityProviders", json::array()}, {"failures", json::array()}};
  for (const auto& name : r.capacity_providers.value_or(std::vector<std::string>{})) {
    out["failures"].push_back({{"arn", name}, {"reason", "MISSING"}});
  }
  return out;
}

}  // namespace berth::agent::control
