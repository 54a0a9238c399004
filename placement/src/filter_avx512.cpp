// The block filters compiled for avx512.
#include "kernels.hpp"

namespace berth::placement::detail::avx512 {
#include "filter_body.hpp"
}  // namespace berth::placement::detail::avx512
