// The block filters compiled for generic (the build's baseline: SSE2 on x86-64).
#include "kernels.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>  // intrinsics only: nothing that could be emitted out of line
#define BERTH_PACK_MOVEMASK
#endif

namespace berth::placement::detail::generic {
#include "filter_body.hpp"
}  // namespace berth::placement::detail::generic
