// berth::placement — where tasks go: filters, constraints, strategies over the ledger's columns.
// TODO(issue 4): the engine, its SIMD kernels and the scalar reference.
#pragma once

#include "berth/ipc.hpp"

namespace berth::placement {}  // namespace berth::placement
