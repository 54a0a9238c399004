// berth::docker — the Docker Engine API client over the Unix socket, and cgroup checks.
// TODO(issue 5): the client.
#pragma once

namespace berth::docker {}  // namespace berth::docker
