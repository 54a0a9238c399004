// The EC2 instance metadata service, asked only when --imds-endpoint names it (IMDSv2 token
// first, IMDSv1 if the endpoint gives none).
#pragma once

#include <chrono>
#include <string>

#include "berth/agent/common.hpp"
#include "instance.hpp"

namespace berth::agent {

// What the instance's registration takes (control's instance.hpp).
using control::instance_metadata;

result<instance_metadata> read_imds(const std::string& endpoint,
                                    std::chrono::milliseconds timeout = std::chrono::seconds(2));

}  // namespace berth::agent
