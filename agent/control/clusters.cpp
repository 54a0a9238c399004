// Clusters: see clusters.hpp.
#include "clusters.hpp"

#include <algorithm>
#include <set>
#include <utility>

#include "berth/agent/util.hpp"
#include "task_definitions.hpp"

namespace berth::agent::control {

namespace {

// containerInsights is the one cluster setting ECS has; its values as ECS takes them.
tl::expected<void, api_error> check_settings(const std::vector<ecs::cluster_setting>& settings) {
  for (const auto& s : settings) {
    if (s.name.value_or("") != "containerInsights") {
      return tl::unexpected(
          invalid("Cluster setting name must be containerInsights: '" + s.name.value_or("") + "'"));
    }
    const std::string v = s.value.value_or("");
    if (v != "enabled" && v != "disabled" && v != "enhanced") {
      return tl::unexpected(
          invalid("containerInsights must be enabled, disabled or enhanced: '" + v + "'"));
    }
  }
  return {};
}

// `changes` over `settings`, by name.
void merge_settings(std::vector<ecs::cluster_setting>& settings,
                    const std::vector<ecs::cluster_setting>& changes) {
  for (const auto& c : changes) {
    const auto it = std::find_if(settings.begin(), settings.end(),
                                 [&](const ecs::cluster_setting& s) { return s.name == c.name; });
    if (it == settings.end()) {
      settings.push_back(c);
    } else {
      it->value = c.value;
    }
  }
}

// A default strategy names only providers of the cluster, each once, with weight 0-1000 and
// base 0-100000, at most one of them with a base, as ECS checks.
tl::expected<void, api_error> check_strategy(
    const std::vector<std::string>& providers,
    const std::vector<ecs::capacity_provider_strategy_item>& strategy) {
  std::set<std::string> seen;
  int with_base = 0;
  for (const auto& item : strategy) {
    if (std::find(providers.begin(), providers.end(), item.capacity_provider) == providers.end()) {
      return tl::unexpected(
          invalid("The specified capacity provider strategy cannot contain a capacity provider "
                  "that is not associated with the cluster: '" +
                  item.capacity_provider + "'"));
    }
    if (!seen.insert(item.capacity_provider).second) {
      return tl::unexpected(
          invalid("The capacity provider strategy names '" + item.capacity_provider + "' twice"));
    }
    const std::int32_t weight = item.weight.value_or(0), base = item.base.value_or(0);
    if (weight < 0 || weight > 1000) return tl::unexpected(invalid("weight must be 0 to 1000"));
    if (base < 0 || base > 100000) return tl::unexpected(invalid("base must be 0 to 100000"));
    if (base > 0 && ++with_base > 1) {
      return tl::unexpected(invalid("Only one capacity provider in a strategy can have a base"));
    }
  }
  return {};
}

tl::expected<void, api_error> check_providers(const std::vector<std::string>& providers) {
  if (providers.size() > 20) return tl::unexpected(invalid("capacityProviders holds at most 20"));
  for (const auto& p : providers) {
    if (p.empty() || p.size() > 255) {
      return tl::unexpected(invalid("A capacity provider name is 1 to 255 characters"));
    }
  }
  return {};
}

}  // namespace

clusters::clusters(const config& c, store& s, std::function<counts()> own_counts,
                   std::function<tl::expected<std::string, api_error>()> insights_default)
    : cfg_(c),
      store_(s),
      own_counts_(std::move(own_counts)),
      insights_default_(std::move(insights_default)) {}

std::string clusters::arn_of(const std::string& name) const {
  return "arn:aws:ecs:" + cfg_.region + ":" + cfg_.account_id + ":cluster/" + name;
}

namespace {

// The cluster stored under `name` as `s` reads it: the store, or a transaction's view of it.
result<std::optional<state::cluster>> read_cluster(store& s, const std::string& name) {
  auto doc = s.get("cluster", name);
  if (!doc) return tl::unexpected(doc.error());
  if (!*doc) return std::optional<state::cluster>();
  auto c = state::parse<state::cluster>(**doc, name);
  if (!c) return tl::unexpected(error{c.error().detail});
  return std::optional<state::cluster>(std::move(*c));
}

}  // namespace

tl::expected<std::optional<state::cluster>, api_error> clusters::stored(const std::string& name) {
  auto c = read_cluster(store_, name);
  if (!c) return tl::unexpected(server(c.error().message));
  return std::move(*c);
}

tl::expected<state::cluster, api_error> clusters::find(const std::optional<std::string>& ref) {
  BERTH_TRY(found, stored(name_of(ref.value_or("default"))));
  if (!found || found->status != "ACTIVE") return tl::unexpected(cluster_not_found());
  return std::move(*found);
}

result<void> clusters::ensure(const std::string& name) {
  auto found = stored(name);
  if (!found) return tl::unexpected(error{found.error().message});
  if (*found && (*found)->status == "ACTIVE") return {};
  state::cluster c;
  c.cluster_arn = arn_of(name);
  c.cluster_name = name;
  c.status = "ACTIVE";
  return store_.put("cluster", name, state::to_json(c).dump());
}

json clusters::view(const state::cluster& cluster, const std::vector<std::string>& include,
                    bool all) {
  const auto asked = [&](const char* what) {
    return all || std::find(include.begin(), include.end(), what) != include.end();
  };
  json c = state::response(cluster);
  counts n;
  if (cluster.cluster_name == cfg_.cluster) n = own_counts_();
  c["registeredContainerInstancesCount"] = n.instances;
  c["runningTasksCount"] = n.running;
  c["pendingTasksCount"] = n.pending;
  c["activeServicesCount"] = 0;
  if (asked("STATISTICS")) c["statistics"] = json::array();
  if (!asked("TAGS")) c.erase("tags");
  if (!asked("SETTINGS")) c.erase("settings");
  if (!asked("CONFIGURATIONS")) c.erase("configuration");
  return c;
}

tl::expected<state::cluster, api_error> clusters::change(
    const std::string& ref,
    const std::function<tl::expected<void, api_error>(state::cluster&)>& fn) {
  if (auto ok = not_empty(ref, "cluster"); !ok) return tl::unexpected(ok.error());
  const std::string name = name_of(ref);
  std::optional<api_error> refused;
  state::cluster out;
  auto w = store_.transaction([&](store& tx) -> result<void> {
    refused.reset();
    auto read = read_cluster(tx, name);
    if (!read) return tl::unexpected(read.error());
    std::optional<state::cluster>& c = *read;
    if (!c || c->status != "ACTIVE") {
      refused = cluster_not_found();
      return tl::unexpected(error{refused->message});
    }
    if (auto ok = fn(*c); !ok) {
      refused = ok.error();
      return tl::unexpected(error{refused->message});
    }
    out = *c;
    return tx.put("cluster", name, state::to_json(*c).dump());
  });
  if (refused) return tl::unexpected(*refused);
  if (!w) return tl::unexpected(server("The cluster could not be stored: " + w.error().message));
  return out;
}

// ---- the actions ----

outcome clusters::create(const json& req) {
  BERTH_TRY(r, decode_request<ecs::create_cluster_request>(req));
  const std::string n = r.cluster_name.value_or("default");
  if (n.empty() || n.size() > 255 || !std::all_of(n.begin(), n.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '_';
      })) {
    return tl::unexpected(invalid(
        "Cluster name must be 1-255 letters, numbers, hyphens and underscores: '" + n + "'"));
  }
  BERTH_TRY(tags, tags_of(r.tags));
  auto settings = r.settings.value_or(std::vector<ecs::cluster_setting>{});
  if (auto ok = check_settings(settings); !ok) return tl::unexpected(ok.error());
  // As ECS: a cluster always says whether Container Insights is on, the account's default
  // when the request does not.
  if (settings.empty() && insights_default_) {
    BERTH_TRY(insights, insights_default_());
    settings.push_back({std::string("containerInsights"), insights});
  }
  const auto providers = r.capacity_providers.value_or(std::vector<std::string>{});
  const auto strategy = r.default_capacity_provider_strategy.value_or(
      std::vector<ecs::capacity_provider_strategy_item>{});
  if (auto ok = check_providers(providers); !ok) return tl::unexpected(ok.error());
  if (auto ok = check_strategy(providers, strategy); !ok) return tl::unexpected(ok.error());
  state::cluster c;
  c.cluster_arn = arn_of(n);
  c.cluster_name = n;
  c.status = "ACTIVE";
  c.tags = std::move(tags);
  c.settings = settings;
  c.configuration = r.configuration;
  c.capacity_providers = providers;
  c.default_strategy = strategy;
  if (r.service_connect_defaults)
    c.service_connect_namespace = r.service_connect_defaults->namespace_;
  // Read in the transaction, not from memory (store.hpp, remembering): another agent's cluster
  // made a moment ago is kept, not written over.
  std::optional<state::cluster> found;
  auto w = store_.transaction([&](store& tx) -> result<void> {
    found.reset();
    auto read = read_cluster(tx, n);
    if (!read) return tl::unexpected(read.error());
    if (*read && (*read)->status == "ACTIVE") {
      found = std::move(*read);
      return {};
    }
    return tx.put("cluster", n, state::to_json(c).dump());
  });
  if (!w) return tl::unexpected(server(w.error().message));
  if (found) return json{{"cluster", view(*found, {}, true)}};  // idempotent, as ECS
  return json{{"cluster", view(c, {}, true)}};
}

outcome clusters::list(const json& req) {
  BERTH_TRY(r, decode_request<ecs::list_clusters_request>(req));
  auto all = store_.list("cluster", "");
  if (!all) return tl::unexpected(server(all.error().message));
  std::vector<std::string> arns;
  for (const auto& [k, v] : *all) {
    auto c = state::parse<state::cluster>(v, k);
    if (!c) return tl::unexpected(server(c.error().detail));
    if (c->status == "ACTIVE") arns.push_back(std::move(c->cluster_arn));
  }
  BERTH_TRY(range, page(r.next_token, r.max_results, arns.size(), 100));
  json out = {{"clusterArns", json::array()}};
  for (std::size_t i = range.first; i < range.second; ++i) out["clusterArns"].push_back(arns[i]);
  add_token(out, range.second, arns.size());
  return out;
}

outcome clusters::describe(const json& req) {
  BERTH_TRY(r, decode_request<ecs::describe_clusters_request>(req));
  std::vector<std::string> names = r.clusters.value_or(std::vector<std::string>{});
  if (names.empty()) names.push_back("default");
  if (names.size() > 100) return tl::unexpected(invalid("clusters can list at most 100"));
  const auto include = r.include.value_or(std::vector<std::string>{});
  json out = {{"clusters", json::array()}, {"failures", json::array()}};
  for (const auto& n : names) {
    BERTH_TRY(found, stored(name_of(n)));
    if (!found) {
      out["failures"].push_back(
          {{"arn", n.starts_with("arn:") ? n : arn_of(n)}, {"reason", "MISSING"}});
      continue;
    }
    out["clusters"].push_back(view(*found, include, false));
  }
  return out;
}

outcome clusters::remove(const json& req) {
  BERTH_TRY(r, decode_request<ecs::delete_cluster_request>(req));
  if (auto ok = not_empty(r.cluster, "cluster"); !ok) return tl::unexpected(ok.error());
  const std::string name = name_of(r.cluster);
  BERTH_TRY(c, change(r.cluster, [&](state::cluster& c) -> tl::expected<void, api_error> {
              if (name == cfg_.cluster) {
                return tl::unexpected(api_error{"ClusterContainsContainerInstancesException",
                                                "The Cluster cannot be deleted while Container "
                                                "Instances are active or draining."});
              }
              c.status = "INACTIVE";
              return {};
            }));
  return json{{"cluster", view(c, {}, true)}};
}

outcome clusters::update(const json& req) {
  BERTH_TRY(r, decode_request<ecs::update_cluster_request>(req));
  if (r.settings) {
    if (auto ok = check_settings(*r.settings); !ok) return tl::unexpected(ok.error());
  }
  BERTH_TRY(c, change(r.cluster, [&](state::cluster& c) -> tl::expected<void, api_error> {
              if (r.settings) merge_settings(c.settings, *r.settings);
              if (r.configuration) c.configuration = r.configuration;
              if (r.service_connect_defaults) {
                c.service_connect_namespace = r.service_connect_defaults->namespace_;
              }
              return {};
            }));
  return json{{"cluster", view(c, {}, true)}};
}

outcome clusters::update_settings(const json& req) {
  BERTH_TRY(r, decode_request<ecs::update_cluster_settings_request>(req));
  if (r.settings.empty()) return tl::unexpected(invalid("settings must name at least one"));
  if (auto ok = check_settings(r.settings); !ok) return tl::unexpected(ok.error());
  BERTH_TRY(c, change(r.cluster, [&](state::cluster& c) -> tl::expected<void, api_error> {
              merge_settings(c.settings, r.settings);
              return {};
            }));
  return json{{"cluster", view(c, {}, true)}};
}

outcome clusters::put_capacity_providers(const json& req) {
  BERTH_TRY(r, decode_request<ecs::put_cluster_capacity_providers_request>(req));
  if (auto ok = check_providers(r.capacity_providers); !ok) return tl::unexpected(ok.error());
  if (auto ok = check_strategy(r.capacity_providers, r.default_capacity_provider_strategy); !ok) {
    return tl::unexpected(ok.error());
  }
  BERTH_TRY(c, change(r.cluster, [&](state::cluster& c) -> tl::expected<void, api_error> {
              c.capacity_providers = r.capacity_providers;
              c.default_strategy = r.default_capacity_provider_strategy;
              return {};
            }));
  return json{{"cluster", view(c, {}, true)}};
}

}  // namespace berth::agent::control
