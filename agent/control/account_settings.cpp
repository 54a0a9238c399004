// ECS's account settings: see account_settings.hpp.
#include "account_settings.hpp"

#include <array>
#include <map>
#include <optional>

namespace berth::agent::control {

namespace {

// Every setting ECS's model names, with ECS's value when nobody set one.
constexpr std::array<std::pair<std::string_view, std::string_view>, 5> known = {{
    {"serviceLongArnFormat", "enabled"},
    {"taskLongArnFormat", "enabled"},
    {"containerInstanceLongArnFormat", "enabled"},
    {"awsvpcTrunking", "disabled"},
    {"containerInsights", "disabled"},
}};

std::optional<std::string_view> builtin(std::string_view name) {
  for (const auto& [n, v] : known) {
    if (n == name) return v;
  }
  return std::nullopt;
}

std::string key_of(const std::string& principal, const std::string& name) {
  return principal + "#" + name;
}

json setting(const std::string& name, const std::string& value, const std::string& principal) {
  return {{"name", name}, {"value", value}, {"principalArn", principal}};
}

tl::expected<void, api_error> check(const std::string& name, const std::string& value) {
  if (!builtin(name)) {
    return tl::unexpected(invalid("Unknown account setting name '" + name +
                                  "'. Valid names: serviceLongArnFormat, taskLongArnFormat, "
                                  "containerInstanceLongArnFormat, awsvpcTrunking, "
                                  "containerInsights."));
  }
  if (value != "enabled" && value != "disabled" &&
      !(name == "containerInsights" && value == "enhanced")) {
    return tl::unexpected(
        invalid("The value of " + name + " must be enabled or disabled: '" + value + "'"));
  }
  if (name.ends_with("LongArnFormat") && value != "enabled") {
    return tl::unexpected(
        invalid("Berth names every resource in the long ARN format: " + name + " is enabled"));
  }
  return {};
}

}  // namespace

account_settings::account_settings(const config& c, store& s) : cfg_(c), store_(s) {}

bool account_settings::serves(std::string_view action) {
  return action == "PutAccountSetting" || action == "PutAccountSettingDefault" ||
         action == "DeleteAccountSetting" || action == "ListAccountSettings";
}

std::string account_settings::root() const { return "arn:aws:iam::" + cfg_.account_id + ":root"; }

outcome account_settings::call(const std::string& action, const json& req,
                               const std::string& caller) {
  if (action == "PutAccountSetting") return put(req, caller, false);
  if (action == "PutAccountSettingDefault") return put(req, caller, true);
  if (action == "DeleteAccountSetting") return remove(req, caller);
  return list(req, caller);
}

tl::expected<std::optional<std::string>, api_error> account_settings::own(
    const std::string& name, const std::string& principal) {
  auto doc = store_.get("account-setting", key_of(principal, name));
  if (!doc) return tl::unexpected(server(doc.error().message));
  if (!*doc) return std::optional<std::string>();
  const json j = json::parse(**doc, nullptr, false);
  if (!j.is_object() || !j.contains("value") || !j["value"].is_string()) {
    return tl::unexpected(server("account setting " + key_of(principal, name) + " is damaged"));
  }
  return std::optional<std::string>(j["value"].get<std::string>());
}

tl::expected<std::string, api_error> account_settings::effective(const std::string& name,
                                                                 const std::string& principal) {
  BERTH_TRY(mine, own(name, principal));
  if (mine) return *mine;
  BERTH_TRY(fallback, own(name, root()));
  if (fallback) return *fallback;
  const auto b = builtin(name);
  return b ? std::string(*b) : std::string();
}

outcome account_settings::put(const json& req, const std::string& caller, bool as_default) {
  std::string name, value, principal;
  if (as_default) {
    BERTH_TRY(r, decode_request<ecs::put_account_setting_default_request>(req));
    name = r.name;
    value = r.value;
    principal = root();
  } else {
    BERTH_TRY(r, decode_request<ecs::put_account_setting_request>(req));
    name = r.name;
    value = r.value;
    principal = r.principal_arn.value_or(caller);
  }
  if (auto ok = check(name, value); !ok) return tl::unexpected(ok.error());
  if (principal.empty() || principal.size() > 2048) {
    return tl::unexpected(invalid("principalArn must be 1 to 2048 characters"));
  }
  const json s = setting(name, value, principal);
  if (auto w = store_.put("account-setting", key_of(principal, name), s.dump()); !w) {
    return tl::unexpected(server("The account setting could not be stored: " + w.error().message));
  }
  return json{{"setting", s}};
}

outcome account_settings::remove(const json& req, const std::string& caller) {
  BERTH_TRY(r, decode_request<ecs::delete_account_setting_request>(req));
  const std::string principal = r.principal_arn.value_or(caller);
  if (!builtin(r.name))
    return tl::unexpected(invalid("Unknown account setting name '" + r.name + "'"));
  BERTH_TRY(was, own(r.name, principal));
  if (!was) {
    return tl::unexpected(invalid("No account setting " + r.name + " is set for " + principal));
  }
  if (auto w = store_.erase("account-setting", key_of(principal, r.name)); !w) {
    return tl::unexpected(server("The account setting could not be deleted: " + w.error().message));
  }
  return json{{"setting", setting(r.name, *was, principal)}};
}

outcome account_settings::list(const json& req, const std::string& caller) {
  BERTH_TRY(r, decode_request<ecs::list_account_settings_request>(req));
  const std::string principal = r.principal_arn.value_or(caller);
  if (r.value && !r.name) {
    return tl::unexpected(invalid("value can only be given with name"));
  }
  std::vector<json> out;
  for (const auto& [n, builtin_value] : known) {
    const std::string name(n);
    if (r.name && *r.name != name) continue;
    std::optional<json> s;
    if (r.effective_settings.value_or(false)) {
      BERTH_TRY(mine, own(name, principal));
      BERTH_TRY(fallback, own(name, root()));
      s = mine       ? setting(name, *mine, principal)
          : fallback ? setting(name, *fallback, root())
                     : setting(name, std::string(builtin_value), root());
    } else {
      BERTH_TRY(mine, own(name, principal));
      if (mine) s = setting(name, *mine, principal);
    }
    if (!s) continue;
    if (r.value && (*s)["value"] != *r.value) continue;
    out.push_back(std::move(*s));
  }
  BERTH_TRY(range, page(r.next_token, r.max_results, out.size(), 10));
  json body = {{"settings", json::array()}};
  for (std::size_t i = range.first; i < range.second; ++i) body["settings"].push_back(out[i]);
  add_token(body, range.second, out.size());
  return body;
}

}  // namespace berth::agent::control
