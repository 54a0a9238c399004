// Kernel dispatch: the table in priority order, resolved once by CPU features, forceable by name.
#include "kernels.hpp"

#include <atomic>
#include <string>

#include "berth/placement.hpp"

namespace berth::placement::detail {

namespace generic {
extern const kernel_fns fns;
}
#if defined(__x86_64__)
namespace avx2 {
extern const kernel_fns fns;
}
namespace avx512 {
extern const kernel_fns fns;
}
#endif

namespace {

bool always() { return true; }

#if defined(__x86_64__)
bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}
bool has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#endif

}  // namespace

const kernel_entry kernel_table[] = {
#if defined(__x86_64__)
    {"avx512", has_avx512, &avx512::fns},
    {"avx2", has_avx2, &avx2::fns},
    {"sse2", always, &generic::fns},
#else
    {"generic", always, &generic::fns},
#endif
};
const std::uint32_t kernel_table_size = sizeof(kernel_table) / sizeof(kernel_table[0]);

namespace {

std::atomic<const kernel_entry*> chosen{nullptr};

const kernel_entry& best() {
  for (std::uint32_t i = 0; i < kernel_table_size; ++i) {
    if (kernel_table[i].supported()) return kernel_table[i];
  }
  return kernel_table[kernel_table_size - 1];
}

const kernel_entry& current() {
  const kernel_entry* e = chosen.load(std::memory_order_acquire);
  if (e == nullptr) {
    e = &best();
    // acq_rel: a racing use_kernel() wins; both values are valid entries of a static table.
    const kernel_entry* none = nullptr;
    if (!chosen.compare_exchange_strong(none, e, std::memory_order_acq_rel)) e = none;
  }
  return *e;
}

}  // namespace

const kernel_fns& active_kernel_fns() { return *current().fns; }

}  // namespace berth::placement::detail

namespace berth::placement {

std::vector<kernel_info> kernels() {
  std::vector<kernel_info> out;
  for (std::uint32_t i = 0; i < detail::kernel_table_size; ++i) {
    out.push_back({detail::kernel_table[i].name, detail::kernel_table[i].supported()});
  }
  return out;
}

std::string_view active_kernel() { return detail::current().name; }

result<void> use_kernel(std::string_view name) {
  for (std::uint32_t i = 0; i < detail::kernel_table_size; ++i) {
    const auto& e = detail::kernel_table[i];
    if (e.name == name) {
      if (!e.supported()) {
        return tl::unexpected(error{errc::unknown_kernel,
                                    "kernel '" + std::string(name) + "' is not supported here"});
      }
      detail::chosen.store(&e, std::memory_order_release);
      return {};
    }
  }
  return tl::unexpected(error{errc::unknown_kernel, "no kernel named '" + std::string(name) + "'"});
}

}  // namespace berth::placement
