// The Engine API's JSON and the client's types: the bodies the client sends, the responses it
// reads into container_info, container_summary and image_info, and Docker's stream formats
// (multiplexed logs, progress lines). Pure functions over JSON: engine.cpp does the I/O.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "berth/docker.hpp"
#include "http.hpp"

namespace berth::docker::detail {

using nlohmann::json;

// Percent-encodes a query value or path segment.
std::string escape(std::string_view s);
// "1.41" < "1.43": compares dotted numbers.
int compare_versions(std::string_view a, std::string_view b);
// Invalid UTF-8 in a caller's strings becomes U+FFFD rather than an exception.
std::string dump(const json& j);
// A member, or null when absent: safe on const objects, unlike operator[].
const json& member(const json& j, const char* key);
result<json> parse(const response& r);
std::string str(const json& j, const char* key);
std::int64_t num(const json& j, const char* key);
// An object member's string members (Labels, Options): others are skipped.
std::map<std::string, std::string> string_map(const json& j, const char* key);
json label_filters(const std::map<std::string, std::string>& labels);
json create_body(const container_spec& s);
container_info read_info(const json& j);
container_summary read_summary(const json& j);
image_info read_image(const json& j);
// Splits Docker's multiplexed log stream (8-byte frame headers) into plain text.
std::string demultiplex(const std::string& raw);
// Reads a progress stream (import, load, pull): one JSON object per line; the first "error"
// ends it as a failure.
result<std::vector<json>> progress(const response& r);

}  // namespace berth::docker::detail
