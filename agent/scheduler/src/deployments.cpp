// Service deployments and revisions: see deployments.hpp.
#include "deployments.hpp"

#include <algorithm>

#include "berth/agent/util.hpp"

namespace berth::agent::sched {

namespace {

using control::invalid;

// "<kind>/<cluster>/<service>/<digits>" of the service's deployment `id`.
std::string arn_of(const state::service& s, const std::string& kind, const std::string& id) {
  const std::string prefix = s.service_arn.substr(0, s.service_arn.find(":service/") + 1);
  return prefix + kind + "/" + name_of(s.cluster_arn) + "/" + s.service_name + "/" +
         id.substr(id.rfind('/') + 1);
}

json revision_summary(const state::service& s, const state::deployment& d) {
  return {{"arn", arn_of(s, "service-revision", d.id)},
          {"requestedTaskCount", d.desired_count},
          {"runningTaskCount", d.running_count},
          {"pendingTaskCount", d.pending_count}};
}

// ECS's ServiceDeployment (`brief`: ServiceDeploymentBrief) of the i-th of `all`.
json deployment_json(const state::service& s, const std::vector<const state::deployment*>& all,
                     std::size_t i, bool brief) {
  const state::deployment& d = *all[i];
  const state::deployment* newer = i > 0 ? all[i - 1] : nullptr;
  const std::string status = status_of(d, newer);
  json out = {{"serviceDeploymentArn", arn_of(s, "service-deployment", d.id)},
              {"serviceArn", s.service_arn},
              {"clusterArn", s.cluster_arn},
              {"createdAt", d.created_at},
              {"startedAt", d.created_at},
              {"status", status}};
  if (finished(status)) out["finishedAt"] = d.updated_at;
  std::string reason = d.rollout_state_reason;
  if (d.rollout_state == "IN_PROGRESS" && newer != nullptr) {
    reason = "Superseded by deployment " + newer->id + ".";
  }
  if (!reason.empty()) out["statusReason"] = reason;
  if (brief) {
    out["targetServiceRevisionArn"] = arn_of(s, "service-revision", d.id);
    return out;
  }
  out["updatedAt"] = d.updated_at;
  out["targetServiceRevision"] = revision_summary(s, d);
  out["sourceServiceRevisions"] = json::array();
  if (i + 1 < all.size()) out["sourceServiceRevisions"].push_back(revision_summary(s, *all[i + 1]));
  out["deploymentConfiguration"] = ecs::to_json(s.deployment_configuration);
  if (status.starts_with("ROLLBACK")) {
    out["rollback"] = {{"reason", d.rollout_state_reason},
                       {"startedAt", newer->created_at},
                       {"serviceRevisionArn", arn_of(s, "service-revision", newer->id)}};
  }
  return out;
}

// ECS's ServiceRevision of deployment `d`.
json revision_json(const state::service& s, const state::deployment& d) {
  json lbs = json::array();
  for (const auto& lb : s.load_balancers) lbs.push_back(ecs::to_json(lb));
  return {{"serviceRevisionArn", arn_of(s, "service-revision", d.id)},
          {"serviceArn", s.service_arn},
          {"clusterArn", s.cluster_arn},
          {"taskDefinition", d.task_definition},
          {"launchType", d.launch_type},
          {"loadBalancers", lbs},
          {"createdAt", d.created_at}};
}

// The deployment whose id ends in `digits`, its index in all_of(s).
std::optional<std::size_t> find(const std::vector<const state::deployment*>& all,
                                const std::string& digits) {
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (all[i]->id == "ecs-svc/" + digits) return i;
  }
  return std::nullopt;
}

}  // namespace

std::vector<const state::deployment*> all_of(const state::service& s) {
  std::vector<const state::deployment*> out;
  for (const auto& d : s.deployments) out.push_back(&d);
  for (const auto& d : s.berth.history) out.push_back(&d);
  std::stable_sort(out.begin(), out.end(),
                   [](const auto* a, const auto* b) { return a->created_at > b->created_at; });
  return out;
}

std::string status_of(const state::deployment& d, const state::deployment* newer) {
  if (d.rollout_state == "COMPLETED") return "SUCCESSFUL";
  if (d.rollout_state == "FAILED") {
    if (newer == nullptr) return "STOPPED";
    if (newer->rollout_state == "COMPLETED") return "ROLLBACK_SUCCESSFUL";
    return newer->rollout_state == "FAILED" ? "ROLLBACK_FAILED" : "ROLLBACK_IN_PROGRESS";
  }
  return newer == nullptr ? "IN_PROGRESS" : "STOPPED";
}

bool finished(const std::string& status) {
  return status != "IN_PROGRESS" && status != "ROLLBACK_IN_PROGRESS" && status != "PENDING";
}

std::optional<std::pair<std::string, std::string>> service_of_deployment(const std::string& arn) {
  for (const char* kind : {":service-deployment/", ":service-revision/"}) {
    const auto at = arn.find(kind);
    if (!arn.starts_with("arn:") || at == std::string::npos) continue;
    const std::string rest = arn.substr(at + std::char_traits<char>::length(kind));
    const auto a = rest.find('/'), b = rest.rfind('/');
    if (a == std::string::npos || a == b || a == 0 || b + 1 == rest.size()) return std::nullopt;
    return std::pair{rest.substr(0, a), rest.substr(a + 1, b - a - 1)};
  }
  return std::nullopt;
}

tl::expected<json, api_error> list_service_deployments(
    const state::service& s, const ecs::list_service_deployments_request& r) {
  const auto all = all_of(s);
  std::vector<json> found;
  for (std::size_t i = 0; i < all.size(); ++i) {
    json d = deployment_json(s, all, i, true);
    if (listed(d, all[i]->created_at, items(r.status), r.created_at)) found.push_back(std::move(d));
  }
  return control::paged(std::move(found), r.next_token, r.max_results.value_or(20), 100,
                        "serviceDeployments");
}

bool listed(const json& d, double at, const std::vector<std::string>& statuses,
            const std::optional<ecs::created_at>& created) {
  if (!statuses.empty() && std::find(statuses.begin(), statuses.end(),
                                     d["status"].get<std::string>()) == statuses.end()) {
    return false;
  }
  if (created && created->before && at >= *created->before) return false;
  return !(created && created->after && at <= *created->after);
}

tl::expected<json, api_error> describe_service_deployments(records& recs,
                                                           const std::vector<std::string>& arns,
                                                           bool revisions) {
  const char* what = revisions ? "serviceRevisionArns" : "serviceDeploymentArns";
  if (arns.empty() || arns.size() > 20) {
    return tl::unexpected(invalid(std::string(what) + " must name between 1 and 20 ARNs"));
  }
  json out = {{revisions ? "serviceRevisions" : "serviceDeployments", json::array()},
              {"failures", json::array()}};
  json& list = out[revisions ? "serviceRevisions" : "serviceDeployments"];
  for (const auto& arn : arns) {
    const auto of = service_of_deployment(arn);
    std::optional<state::service> s;
    if (of) {
      auto read = recs.load(of->first, of->second);
      if (!read) {
        return tl::unexpected(api_error{
            "ServerException", "The service could not be read: " + read.error().message, 500});
      }
      s = std::move(*read);
    }
    if (s && is_daemon(*s)) s.reset();  // a daemon's: DescribeDaemonDeployments has it
    const auto all = s ? all_of(*s) : std::vector<const state::deployment*>{};
    const auto i = find(all, arn.substr(arn.rfind('/') + 1));
    if (!i) {
      out["failures"].push_back({{"arn", arn}, {"reason", "MISSING"}});
      continue;
    }
    list.push_back(revisions ? revision_json(*s, *all[*i]) : deployment_json(*s, all, *i, false));
  }
  return out;
}

tl::expected<void, api_error> stop_deployment(state::service& s, const std::string& arn,
                                              const std::string& next_id) {
  const auto all = all_of(s);
  const auto i = find(all, arn.substr(arn.rfind('/') + 1));
  if (!i) {
    return tl::unexpected(api_error{"ServiceDeploymentNotFoundException",
                                    "The service deployment does not exist: " + arn});
  }
  if (*i != 0 || s.deployments.empty() || s.deployments.front().rollout_state != "IN_PROGRESS") {
    return tl::unexpected(
        api_error{"ConflictException", "The service deployment is not in progress: " + arn});
  }
  // Where it goes back to: the last revision that completed, else the one it replaces.
  std::optional<std::string> to = s.berth.last_good;
  if (!to && s.deployments.size() > 1) to = s.deployments[1].task_definition;
  if (!to || *to == s.deployments.front().task_definition) {
    return tl::unexpected(invalid("The service has no earlier revision to roll back to."));
  }
  state::deployment& stopped = s.deployments.front();
  const double now = now_seconds();
  stopped.status = "ACTIVE";
  stopped.rollout_state = "FAILED";
  stopped.rollout_state_reason = "Stopped by StopServiceDeployment: rolling back.";
  stopped.updated_at = now;
  records::event(s, "deployment " + stopped.id + " was stopped: rolling back to " +
                        to->substr(to->rfind('/') + 1) + ".");
  // (`stopped` is not used past here: the insert moves it.)
  const auto dep = rc::new_deployment(next_id, *to, s.desired_count, now);
  s.deployments.insert(s.deployments.begin(), deployment_of(dep));
  s.task_definition = *to;
  s.berth.steady = false;
  records::event(s, rc::started_message(dep));
  return {};
}

}  // namespace berth::agent::sched
