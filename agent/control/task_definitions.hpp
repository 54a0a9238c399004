// Task definitions: RegisterTaskDefinition's checks, as ECS words their errors; revisions per
// family in the store; DescribeTaskDefinition, ListTaskDefinitions, ListTaskDefinitionFamilies
// and DeregisterTaskDefinition. Also the checks the task engine relies on (overrides, the
// containers' start order).
//
// Thread-safe as far as the store is: it keeps no state of its own.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "ecs_request.hpp"
#include "records.hpp"
#include "store.hpp"

namespace berth::agent::control {

// A list of objects whose members named in `strings` are strings, in `integers` integers and in
// `booleans` booleans (each optional unless listed in `required`).
tl::expected<void, api_error> check_objects(const json& j, const std::string& what,
                                            std::initializer_list<const char*> strings,
                                            std::initializer_list<const char*> integers = {},
                                            std::initializer_list<const char*> required = {},
                                            std::initializer_list<const char*> booleans = {});
// RunTask's overrides: the members the task engine reads, of the types it reads them as.
tl::expected<void, api_error> check_overrides(const json& o);

// The store key of a revision: "family:0000000003", so keys sort by revision.
std::string td_key(const std::string& family, std::uint64_t revision);
// The request's `tags`, checked, as [{key, value}].
tl::expected<json, api_error> tags_of(const json& req);

class task_definitions {
 public:
  // `arn_prefix`: "arn:aws:ecs:<region>:<account>:". `s` outlives this.
  task_definitions(store* s, std::string arn_prefix);

  outcome register_task_definition(const json& req);
  outcome describe_task_definition(const json& req);
  outcome list_task_definitions(const json& req);
  outcome list_task_definition_families(const json& req);
  outcome deregister_task_definition(const json& req);
  // "family", "family:3" or an ARN; the family's latest ACTIVE revision when none is given.
  // ClientException when there is none (or, with active_only, it is INACTIVE).
  tl::expected<state::task_definition, api_error> find_task_definition(const std::string& ref,
                                                                       bool active_only);

 private:
  tl::expected<void, api_error> check_container(const json& c, bool task_memory);
  std::string arn(const std::string& rest) const { return arn_prefix_ + rest; }

  store* store_;
  std::string arn_prefix_;
};

}  // namespace berth::agent::control
