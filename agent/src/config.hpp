// The config file's parts of load_config, on their own so that tests and the fuzzer can feed
// text without a file.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "berth/agent/common.hpp"

namespace berth::agent {

// berth.conf's text: KEY=VALUE lines (ECS_* or BERTH_*), '#' comments, values optionally
// quoted. Keyed by BERTH_* names; the ECS agent's other keys are dropped, unknown BERTH_* ones
// refused. Errors name `path` and the line.
result<std::map<std::string, std::string>> parse_config_text(std::string_view text,
                                                             const std::string& path);

// Applies BERTH_* settings, as parse_config_text returns them, over `c`; the first bad value is
// the error, naming its key.
result<void> apply_settings(config& c, const std::map<std::string, std::string>& settings);

}  // namespace berth::agent
