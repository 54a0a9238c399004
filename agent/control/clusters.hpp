// Clusters: their records in the store (kind "cluster", key the name) and the ECS actions on
// them: CreateCluster (keeping what the request set: settings, configuration, capacity
// providers and the default strategy, Service Connect's default namespace), ListClusters,
// DescribeClusters (with `include` as ECS reads it), DeleteCluster, UpdateCluster,
// UpdateClusterSettings and PutClusterCapacityProviders. Berth places on container instances
// whatever a cluster's capacity providers say: they are kept and shown, as a client set them.
//
// Thread-safe as far as the store is: changes are read-modify-write transactions.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "berth/agent/common.hpp"
#include "ecs_request.hpp"
#include "records.hpp"
#include "store.hpp"

namespace berth::agent::control {

class clusters {
 public:
  // What DescribeClusters counts in this agent's cluster (no other has instances here).
  struct counts {
    std::int64_t instances = 0, running = 0, pending = 0;
  };
  // `c`, `s` outlive this; `own_counts` is called for this agent's cluster's views;
  // `insights_default` gives containerInsights' value for a cluster created without one (the
  // account setting's).
  clusters(const config& c, store& s, std::function<counts()> own_counts,
           std::function<tl::expected<std::string, api_error>()> insights_default);

  std::string arn_of(const std::string& name) const;
  // The record stored under `name`, if any.
  tl::expected<std::optional<state::cluster>, api_error> stored(const std::string& name);
  // The ACTIVE cluster a request names or ARNs (`ref`; "default" without one).
  tl::expected<state::cluster, api_error> find(const std::optional<std::string>& ref);
  // This agent's cluster, made ACTIVE at start when it is not.
  result<void> ensure(const std::string& name);

  outcome create(const json& req);
  outcome list(const json& req);
  outcome describe(const json& req);
  outcome remove(const json& req);
  outcome update(const json& req);
  outcome update_settings(const json& req);
  outcome put_capacity_providers(const json& req);

 private:
  // The cluster as an ECS response: counts, and the members `include` asks for (ECS's
  // DescribeClusters: TAGS, SETTINGS, CONFIGURATIONS, STATISTICS; `all` for the other actions,
  // which return the whole cluster).
  json view(const state::cluster& c, const std::vector<std::string>& include, bool all);
  // Changes the ACTIVE cluster `ref` names by `fn` in one transaction: the record as stored.
  tl::expected<state::cluster, api_error> change(
      const std::string& ref,
      const std::function<tl::expected<void, api_error>(state::cluster&)>& fn);

  const config& cfg_;
  store& store_;
  std::function<counts()> own_counts_;
  std::function<tl::expected<std::string, api_error>()> insights_default_;
};

}  // namespace berth::agent::control
