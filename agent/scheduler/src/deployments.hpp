// A service's deployment history as ECS's service deployments and service revisions: every
// deployment the record lists, then its history (state::service_bookkeeping::history), newest
// first, each read as a ServiceDeployment (its status from its rollout and what followed it)
// and a ServiceRevision (the task definition it deploys). ARNs:
//   arn:aws:ecs:<region>:<account>:service-deployment/<cluster>/<service>/<digits>
//   arn:aws:ecs:<region>:<account>:service-revision/<cluster>/<service>/<digits>
// where <digits> are the deployment id's ("ecs-svc/<digits>").
//
// StopServiceDeployment (stopType ROLLBACK, the default) fails the service's deployment in
// progress and starts one of the revision before it, as the circuit breaker's rollback does.
#pragma once

#include "records.hpp"

namespace berth::agent::sched {

// The record's deployments and its history, newest first (by creation: the history has them
// in the order they ended).
std::vector<const state::deployment*> all_of(const state::service& s);
// ECS's status of deployment `d` (IN_PROGRESS, SUCCESSFUL, STOPPED, ROLLBACK_…), `newer` the one
// that followed it (nullptr: none yet).
std::string status_of(const state::deployment& d, const state::deployment* newer);
// Whether a deployment of that status has finished.
bool finished(const std::string& status);

// Whether a deployment as a list has it (`d`, created at `at`) passes the list's filters: its
// status among `statuses` (any, when there are none) and its creation within `created`.
bool listed(const json& d, double at, const std::vector<std::string>& statuses,
            const std::optional<ecs::created_at>& created);

tl::expected<json, api_error> list_service_deployments(
    const state::service& s, const ecs::list_service_deployments_request& r);
// Each ARN's service is read through `recs`; an ARN that names none is a MISSING failure.
tl::expected<json, api_error> describe_service_deployments(records& recs,
                                                           const std::vector<std::string>& arns,
                                                           bool revisions);

// The service an ARN (of either kind) is of: cluster and service name; nothing when it is not
// such an ARN.
std::optional<std::pair<std::string, std::string>> service_of_deployment(const std::string& arn);

// StopServiceDeployment's change to the record: ConflictException when the deployment is not
// the one in progress, InvalidParameterException when there is no revision to go back to.
// `next_id`: the rollback's deployment id.
tl::expected<void, api_error> stop_deployment(state::service& s, const std::string& arn,
                                              const std::string& next_id);

}  // namespace berth::agent::sched
