// GET /console/…: the web console (berth::console's embedded assets) on berthd's listeners.
// Served unsigned, to any peer: the assets are the same for everyone and hold no secret; every
// call the console then makes is an API call signed with the user's key. config.json tells the
// console the region berthd verifies signatures for.
#pragma once

#include <string>
#include <string_view>

#include "berth/api/server.hpp"

namespace berth::agent {

// "/console" or anything under "/console/" (without the query).
[[nodiscard]] bool console_path(std::string_view path);

// The asset (gzip-compressed when the client accepts it; 304 when its ETag matches), the
// redirect from "/console", config.json, or a 404; every answer with the console's strict
// Content-Security-Policy and no-sniff, no-frame, no-referrer headers.
[[nodiscard]] http_response console_response(const http_request& r, const std::string& region);

}  // namespace berth::agent
