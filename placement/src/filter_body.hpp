// One generic body of the block filters, compiled once per ISA inside that ISA's namespace
// (filter_generic.cpp, filter_avx2.cpp, filter_avx512.cpp). Loops are branch-free over plain
// arrays so that GCC vectorizes them (check with -fopt-info-vec); results are bytes of 0/1,
// packed to bits eight at a time.
//
// No include guard: included once per namespace. Include kernels.hpp first.

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "pack() reads bytes little-endian");

namespace {

inline std::uint64_t pack(const std::uint8_t* ok, std::uint32_t n) {
  std::uint64_t bits = 0;
  std::uint32_t i = 0;
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
  for (std::uint32_t i = 0; i < n; ++i) f[i] = a.free[i];
  for (std::uint32_t i = 0; i < n; ++i) moved[i] = a.cached[i] != f[i];
  for (std::uint32_t i = 0; i < n; ++i) a.cached[i] = f[i];
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

}  // namespace

extern const kernel_fns fns;
const kernel_fns fns = {fit, room, attr, cmp32, cmp64, summarize};
