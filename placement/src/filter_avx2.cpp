// The block filters compiled for avx2.
#include <immintrin.h>  // intrinsics only: nothing that could be emitted out of line

#include "kernels.hpp"
#define BERTH_PACK_MOVEMASK

namespace berth::placement::detail::avx2 {
#include "filter_body.hpp"
}  // namespace berth::placement::detail::avx2
