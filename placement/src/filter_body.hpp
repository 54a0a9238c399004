// One generic body of the block filters, compiled once per ISA inside that ISA's namespace
// (filter_generic.cpp, filter_avx2.cpp, filter_avx512.cpp). Loops are branch-free over plain
// arrays so that GCC vectorizes them (check with -fopt-info-vec); results are bytes of 0/1,
// packed to bits by a mask test (avx512), a movemask (avx2, sse2), or eight at a time.
//
// No include guard: included once per namespace. Include kernels.hpp first.

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "pack() reads bytes little-endian");

namespace {

inline std::uint64_t pack(const std::uint8_t* ok, std::uint32_t n) {
  std::uint64_t bits = 0;
  std::uint32_t i = 0;
#if defined(BERTH_PACK_AVX512)
  const __mmask64 lanes = n >= 64 ? ~__mmask64{0} : (__mmask64{1} << n) - 1;
  bits = _mm512_test_epi8_mask(_mm512_maskz_loadu_epi8(lanes, ok), _mm512_set1_epi8(1));
  return bits;
#elif defined(BERTH_PACK_MOVEMASK)
  for (; i + 16 <= n; i += 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(ok + i));
    // 0/1 bytes to 0/0xff, then one bit per byte.
    bits |= std::uint64_t{static_cast<std::uint16_t>(
                _mm_movemask_epi8(_mm_sub_epi8(_mm_setzero_si128(), v)))}
            << i;
  }
#endif
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w;
    __builtin_memcpy(&w, ok + i, 8);  // little-endian: byte k is bits 8k..8k+7
    // Gathers the low bit of each byte into the top byte.
    bits |= ((w * 0x0102'0408'1020'4080ull) >> 56) << i;
  }
  for (; i < n; ++i) bits |= std::uint64_t{ok[i]} << i;
  return bits;
}

std::uint64_t fit(const fit_args& a, std::uint32_t n) {
  alignas(64) std::uint8_t ok[64];
  const std::uint64_t cpu = a.cpu, mib = a.mib;
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::uint64_t f = a.free[i];
    ok[i] = static_cast<std::uint8_t>(((f >> 32) >= cpu) & ((f & 0xffff'ffffu) >= mib));
  }
  for (std::uint32_t i = 0; i < n; ++i) {
    ok[i] &= static_cast<std::uint8_t>((a.state[i] == 1u) & (a.gpus[i] >= a.gpu_count) &
                                       (a.dynamic_ports[i] >= a.dynamic_count));
  }
  return pack(ok, n);
}

room_masks room(const std::uint64_t* free, std::uint32_t cpu, std::uint32_t mib, std::uint32_t n) {
  alignas(64) std::uint8_t ok_cpu[64], ok_mib[64];
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::uint64_t f = free[i];
    ok_cpu[i] = static_cast<std::uint8_t>((f >> 32) >= cpu);
    ok_mib[i] = static_cast<std::uint8_t>((f & 0xffff'ffffu) >= mib);
  }
  return {pack(ok_cpu, n), pack(ok_mib, n)};
}

std::uint64_t attr(const std::uint64_t* const* cols, const std::uint64_t* mask, std::uint32_t n) {
  alignas(64) std::uint64_t acc[64] = {};
  for (std::uint32_t w = 0; w < 8; ++w) {
    const std::uint64_t m = mask[w];
    if (m == 0) continue;
    const std::uint64_t* col = cols[w];
    for (std::uint32_t i = 0; i < n; ++i) acc[i] |= col[i] & m;
  }
  alignas(64) std::uint8_t ok[64];
  for (std::uint32_t i = 0; i < n; ++i) ok[i] = static_cast<std::uint8_t>(acc[i] != 0);
  return pack(ok, n);
}

template <class T>
std::uint64_t compare(const T* col, std::uint32_t n, cmp o, T v) {
  alignas(64) std::uint8_t ok[64];
  switch (o) {
    case cmp::eq:
      for (std::uint32_t i = 0; i < n; ++i) ok[i] = col[i] == v;
      break;
    case cmp::gt:
      for (std::uint32_t i = 0; i < n; ++i) ok[i] = col[i] > v;
      break;
    case cmp::ge:
      for (std::uint32_t i = 0; i < n; ++i) ok[i] = col[i] >= v;
      break;
    case cmp::lt:
      for (std::uint32_t i = 0; i < n; ++i) ok[i] = col[i] < v;
      break;
    case cmp::le:
      for (std::uint32_t i = 0; i < n; ++i) ok[i] = col[i] <= v;
      break;
  }
  return pack(ok, n);
}

std::uint64_t cmp32(const std::uint32_t* col, std::uint32_t n, cmp o, std::uint32_t v) {
  return compare(col, n, o, v);
}

std::uint64_t cmp64(const std::uint64_t* col, std::uint32_t n, cmp o, std::uint64_t v) {
  return compare(col, n, o, v);
}

block_stats summarize(const summary_args& a, std::uint32_t n) {
  alignas(64) std::uint64_t f[64];
  alignas(64) std::uint8_t moved[64], on[64], empty[64];
  // One read of the live column: what is compared, cached and summarized is the same value.
  // One loop, not three: a bare copy loop becomes a call to memcpy.
  for (std::uint32_t i = 0; i < n; ++i) {
    f[i] = a.free[i];
    moved[i] = a.cached[i] != f[i];
    a.cached[i] = f[i];
  }
  for (std::uint32_t i = 0; i < n; ++i) {
    on[i] = a.state[i] == 1u;
    empty[i] = a.state[i] == 0u;
  }
  std::uint32_t max_cpu = 0, max_mib = 0, max_gpus = 0, max_dyn = 0, active = 0;
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::uint32_t on = a.state[i] == 1u ? ~0u : 0u;
    const std::uint32_t cpu = static_cast<std::uint32_t>(f[i] >> 32) & on;
    const std::uint32_t mib = static_cast<std::uint32_t>(f[i]) & on;
    max_cpu = max_cpu > cpu ? max_cpu : cpu;
    max_mib = max_mib > mib ? max_mib : mib;
    const std::uint32_t g = a.gpus[i] & on, d = a.dynamic_ports[i] & on;
    max_gpus = max_gpus > g ? max_gpus : g;
    max_dyn = max_dyn > d ? max_dyn : d;
    active |= on;
  }
  return {max_cpu,     max_mib,        max_gpus,    max_dyn,
          active != 0, pack(moved, n), pack(on, n), pack(empty, n)};
}

// The slot of each rank is computed in every lane (the permutation's inverse is multiplies and
// xor-shifts), the columns are gathered at it, and lanes past the slots read slot 0 and fail.
std::uint64_t probe(const probe_args& a, std::uint32_t n) {
  alignas(64) std::uint32_t slot[64];
  alignas(64) std::uint8_t ok[64];
  // shift 0 only with mask 0, where every value is 0 whatever the shift.
  const std::uint32_t sh = a.shift == 0 ? 31 : a.shift;
  for (std::uint32_t i = 0; i < n; ++i) {
    std::uint32_t x = a.first + i;
    x ^= x >> sh;
    x = ((x - a.s2) * a.b_inv) & a.mask;
    x ^= x >> sh;
    x = ((x - a.s1) * a.a_inv) & a.mask;
    const std::uint32_t in = x < a.count;
    ok[i] = static_cast<std::uint8_t>(in);
    slot[i] = x & (0u - in);  // a mask, not a select: GCC then gathers
  }
  const std::uint32_t cpu = a.cpu, mib = a.mib;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t f = a.free[slot[i]];
    ok[i] &= static_cast<std::uint8_t>((static_cast<std::uint32_t>(f >> 32) >= cpu) &
                                       (static_cast<std::uint32_t>(f) >= mib));
  }
  if (a.value != nullptr) {
    const std::uint32_t* value = a.value;
    const std::uint32_t lo = static_cast<std::uint32_t>(a.values);
    const std::uint32_t hi = static_cast<std::uint32_t>(a.values >> 32);
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t v = value[slot[i]];
      const std::uint32_t word = v < 32 ? lo : hi;
      ok[i] &= static_cast<std::uint8_t>((word >> (v & 31)) & 1);
    }
  }
  return pack(ok, n);
}

// For the argmin kernels: a chunk's lowest key, when below `low`, becomes `low` and its index
// (base + i) `found`. Two passes: a min reduction, then the search for it; both vectorize.
template <class T>
void take_lowest(const T* key, std::size_t m, std::uint32_t base, T& low, std::uint32_t& found) {
  T least = low;
  for (std::size_t i = 0; i < m; ++i) least = key[i] < least ? key[i] : least;
  if (least == low) return;
  low = least;
  for (std::size_t i = 0; i < m; ++i) {
    if (key[i] == least) found = base + static_cast<std::uint32_t>(i);
  }
}

std::uint32_t rank_min(const rank_args& a, std::uint32_t n) {
  constexpr std::uint32_t none = 0xffff'ffffu;  // never a rank in range
  const std::uint32_t sh = a.shift == 0 ? 31 : a.shift;
  const std::uint32_t mask = a.mask, s1 = a.s1, s2 = a.s2, cpu = a.cpu, mib = a.mib;
  const std::uint32_t lo = a.lo, hi = a.hi < none ? a.hi : none - 1;
  const std::uint32_t* e = a.entries;
  alignas(64) std::uint32_t key[64];
  std::uint32_t found = n, low = none;
  for (std::uint32_t base = 0; base < n; base += 64) {
    const std::size_t m = n - base < 64 ? n - base : 64;
    const std::uint32_t* p = e + 3 * std::size_t{base};
    for (std::size_t i = 0; i < m; ++i) {
      std::uint32_t x = (p[3 * i] * permutation_a + s1) & mask;
      x ^= x >> sh;
      x = (x * permutation_b + s2) & mask;
      x ^= x >> sh;
      const bool ok = (p[3 * i + 1] >= cpu) & (p[3 * i + 2] >= mib) & (x >= lo) & (x <= hi);
      key[i] = ok ? x : none;
    }
    take_lowest(key, m, base, low, found);
  }
  return found;
}

std::uint32_t key_min(const key_args& a, std::uint32_t n) {
  constexpr std::uint64_t none = ~std::uint64_t{0};  // a key no host has
  const std::uint64_t lo = a.lo;
  const std::uint32_t need = a.other_need;
  alignas(64) std::uint64_t key[64];
  std::uint32_t found = n;
  std::uint64_t low = none;
  for (std::uint32_t base = 0; base < n; base += 64) {
    const std::size_t m = n - base < 64 ? n - base : 64;
    const std::uint64_t* k = a.key + base;
    const std::uint32_t* o = a.other + base;
    for (std::size_t i = 0; i < m; ++i) key[i] = ((k[i] >= lo) & (o[i] >= need)) ? k[i] : none;
    take_lowest(key, m, base, low, found);
  }
  return found;
}

std::uint64_t differ32(const std::uint32_t* a, const std::uint32_t* b, std::uint32_t n) {
  alignas(64) std::uint8_t ok[64];
  for (std::uint32_t i = 0; i < n; ++i) ok[i] = a[i] != b[i];
  return pack(ok, n);
}

}  // namespace

extern const kernel_fns fns;
const kernel_fns fns = {fit,       room,  attr,     cmp32,   cmp64,
                        summarize, probe, rank_min, key_min, differ32};
