// The block filters compiled for generic (the build's baseline: SSE2 on x86-64).
#include "kernels.hpp"

namespace berth::placement::detail::generic {
#include "filter_body.hpp"
}  // namespace berth::placement::detail::generic
