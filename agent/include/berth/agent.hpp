// berth::agent — berthd: config, ECS API server, store, task engine, services.
// TODO(issue 6): the daemon.
#pragma once

namespace berth::agent {}  // namespace berth::agent
