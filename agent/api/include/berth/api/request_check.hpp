// The first reader of every ECS request: the body is checked against the action's input shape
// in the ECS model (scripts/gen-ecs-shapes) before any handler sees it, so a handler never meets
// a member of the wrong JSON type, an integer past its type's range, a value outside an enum,
// or a string or list past the model's length.
//
// Pure and allocation-bounded: no I/O, no locks (a fuzz target runs it on arbitrary input).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace berth::agent {

struct request_error {
  // SerializationException (a wrong type), else InvalidParameterException (ClientException for
  // RegisterTaskDefinition, as ECS answers it).
  std::string type;
  std::string message;
};

// Checks `request` (a parsed body) against `action`'s input shape, and removes members whose
// value is null (AWS's JSON protocol reads them as absent). Also refuses, anywhere: NUL
// characters; control characters in names and identifiers; strings longer than 64 KiB.
// Actions the model table does not list pass unchecked (their handler answers for them);
// BerthV1.Place is checked as RunTask (its extra members are Berth's).
// Returns an empty error type when the request passes.
request_error check_request(std::string_view action, nlohmann::json& request);

// The deepest nesting of JSON brackets outside strings. berthd refuses a body nesting deeper
// than 32 before parsing it: copying or printing it would recurse that deep.
int json_nesting(std::string_view body);

// True when the table knows the action (Place included).
bool known_action(std::string_view action);

// The ECS actions the table holds, in the model's order.
std::vector<std::string_view> modelled_actions();

}  // namespace berth::agent
