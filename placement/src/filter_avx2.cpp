// The block filters compiled for avx2.
#include "kernels.hpp"

namespace berth::placement::detail::avx2 {
#include "filter_body.hpp"
}  // namespace berth::placement::detail::avx2
