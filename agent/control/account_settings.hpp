// ECS's account settings, per principal: PutAccountSetting (the caller's, or the principal a
// request names), PutAccountSettingDefault (the account's root: the default of every
// principal), DeleteAccountSetting and ListAccountSettings (what a principal set, or with
// effectiveSettings each setting's value in effect: its own, else the account's default, else
// ECS's). Stored under kind "account-setting", key "<principal ARN>#<name>".
//
// Their effect where Berth has one: containerInsights is the default setting of a cluster
// created without one. ARNs are always in the long format: the *LongArnFormat settings take
// "enabled" only. awsvpcTrunking is kept and shown; Berth has no ENI trunking.
//
// Thread-safe as far as the store is: it keeps no state of its own.
#pragma once

#include <string>
#include <string_view>

#include "berth/agent/common.hpp"
#include "ecs_request.hpp"
#include "store.hpp"

namespace berth::agent::control {

class account_settings {
 public:
  // `c` and `s` outlive this.
  account_settings(const config& c, store& s);

  // Whether `action` is one of the four above.
  static bool serves(std::string_view action);
  // Runs it for `caller`, the ARN of the principal who asked.
  outcome call(const std::string& action, const json& req, const std::string& caller);

  // The account root's ARN: whose settings are every principal's defaults.
  std::string root() const;
  // The value of `name` in effect for `principal`.
  tl::expected<std::string, api_error> effective(const std::string& name,
                                                 const std::string& principal);

 private:
  outcome put(const json& req, const std::string& caller, bool as_default);
  outcome remove(const json& req, const std::string& caller);
  outcome list(const json& req, const std::string& caller);
  // What `principal` set for `name`, if anything.
  tl::expected<std::optional<std::string>, api_error> own(const std::string& name,
                                                          const std::string& principal);

  const config& cfg_;
  store& store_;
};

}  // namespace berth::agent::control
