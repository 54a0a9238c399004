// The block filters compiled for avx512.
#include <immintrin.h>  // intrinsics only: nothing that could be emitted out of line

#include "kernels.hpp"
#define BERTH_PACK_AVX512

namespace berth::placement::detail::avx512 {
#include "filter_body.hpp"
}  // namespace berth::placement::detail::avx512
