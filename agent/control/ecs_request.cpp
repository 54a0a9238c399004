#include "ecs_request.hpp"

#include <algorithm>
#include <cmath>
#include <regex>

#include "berth/agent/util.hpp"

namespace berth::agent::control {

tl::expected<std::pair<std::size_t, std::size_t>, api_error> page(const reader& r,
                                                                  std::size_t total,
                                                                  std::int64_t max_limit) {
  BERTH_TRY(max, r.integer("maxResults"));
  BERTH_TRY(token, r.str("nextToken"));
  return page(token, max, total, max_limit);
}

tl::expected<std::pair<std::size_t, std::size_t>, api_error> page(
    const std::optional<std::string>& token, std::optional<std::int64_t> max, std::size_t total,
    std::int64_t max_limit) {
  std::size_t limit = static_cast<std::size_t>(max_limit);
  if (max) {
    if (*max < 1 || *max > max_limit) {
      return tl::unexpected(
          invalid("maxResults must be between 1 and " + std::to_string(max_limit)));
    }
    limit = static_cast<std::size_t>(*max);
  }
  std::size_t start = 0;
  if (token) {
    if (!token->starts_with("berth1.") || token->size() > 30) {
      return tl::unexpected(invalid("Invalid nextToken"));
    }
    try {
      start = std::stoul(token->substr(7));
    } catch (...) {
      return tl::unexpected(invalid("Invalid nextToken"));
    }
    if (start > total) return tl::unexpected(invalid("Invalid nextToken"));
  }
  return std::pair{start, std::min(total, start + limit)};
}
void add_token(json& out, std::size_t end, std::size_t total) {
  if (end < total) out["nextToken"] = "berth1." + std::to_string(end);
}

tl::expected<json, api_error> paged(std::vector<json> items,
                                    const std::optional<std::string>& token,
                                    std::optional<std::int64_t> max, std::int64_t max_limit,
                                    const char* list_name) {
  BERTH_TRY(range, page(token, max, items.size(), max_limit));
  json out = {{list_name, json::array()}};
  for (std::size_t i = range.first; i < range.second; ++i) {
    out[list_name].push_back(std::move(items[i]));
  }
  add_token(out, range.second, items.size());
  return out;
}

std::optional<std::uint32_t> units_of(const json& v, bool cpu) {
  constexpr double most = 1 << 24;
  if (v.is_number_unsigned()) {
    const std::uint64_t x = v.get<std::uint64_t>();
    if (x > static_cast<std::uint64_t>(most)) return std::nullopt;
    return static_cast<std::uint32_t>(x);
  }
  if (!v.is_string()) return std::nullopt;
  return units_of(v.get<std::string>(), cpu);
}

std::optional<std::uint32_t> units_of(const std::string& v, bool cpu) {
  constexpr double most = 1 << 24;
  std::string s = v;
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  double x = 0;
  std::size_t used = 0;
  try {
    x = std::stod(s, &used);
  } catch (...) {
    return std::nullopt;
  }
  std::string unit = s.substr(used);
  unit.erase(std::remove(unit.begin(), unit.end(), ' '), unit.end());
  if (!std::isfinite(x) || x < 0 || x * 1024 > most) return std::nullopt;
  if (unit.empty()) return static_cast<std::uint32_t>(x);
  if (cpu && unit == "vcpu") return static_cast<std::uint32_t>(x * 1024);
  if (!cpu && unit == "gb") return static_cast<std::uint32_t>(x * 1024);
  if (!cpu && unit == "mb") return static_cast<std::uint32_t>(x);
  return std::nullopt;
}

tl::expected<std::vector<attribute_change>, api_error> attribute_list(
    std::vector<ecs::attribute> list) {
  if (list.size() > 10) return tl::unexpected(invalid("at most 10 attributes per call"));
  std::vector<attribute_change> out;
  static const std::regex name_re("^[a-zA-Z0-9_.\\-/]{1,128}$");
  static const std::regex value_re("^[a-zA-Z0-9_.\\-/ :@]{1,128}$");
  for (auto& a : list) {
    if (!std::regex_match(a.name, name_re)) {
      return tl::unexpected(invalid("attribute name '" + a.name + "' is not valid"));
    }
    if (a.value && !std::regex_match(*a.value, value_re)) {
      return tl::unexpected(invalid("attribute value for '" + a.name + "' is not valid"));
    }
    if (a.target_type && *a.target_type != "container-instance") {
      return tl::unexpected(invalid("targetType must be container-instance"));
    }
    out.push_back({std::move(a.name), std::move(a.value), a.target_id.value_or("")});
  }
  return out;
}

}  // namespace berth::agent::control

namespace berth::agent {

tl::expected<void, api_error> check_launch_type(const std::optional<std::string>& launch_type,
                                                bool capacity_providers) {
  using namespace control;
  if (launch_type == "FARGATE" || launch_type == "EXTERNAL") {
    return tl::unexpected(invalid("Berth runs tasks on the EC2 launch type only: launchType " +
                                  *launch_type + " is not supported."));
  }
  if (launch_type && *launch_type != "EC2") {
    return tl::unexpected(invalid("Invalid launchType '" + *launch_type +
                                  "'. Valid values: EC2, FARGATE, EXTERNAL."));
  }
  if (capacity_providers) {
    return tl::unexpected(
        invalid("Berth has no capacity providers: it runs tasks on the EC2 launch type only, "
                "and capacityProviderStrategy is not supported."));
  }
  return {};
}

}  // namespace berth::agent
