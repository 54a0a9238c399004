// Seqlock and atomic helpers over plain words in the shared segment.
//
// The segment holds plain integers (it is mapped by processes built apart, and PROT_READ for some),
// so every shared access goes through std::atomic_ref with a named order. The protocol is Boehm's
// ("Can seqlocks get along with programming language memory models?", MSPC 2012): the writer
// makes the counter odd, fences, stores the fields relaxed and releases the counter even; readers
// acquire the counter, load the fields relaxed, fence and recheck.
#pragma once

#include <atomic>
#include <cstdint>

namespace berth::ipc::detail {

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Loads through a const reference: an atomic load never writes, so this is sound on a PROT_READ
// mapping too (for the <= 8-byte types used here, a plain load on x86-64 and arm64).
template <class T>
T load(const T& word, std::memory_order order) noexcept {
  return std::atomic_ref<T>(const_cast<T&>(word)).load(order);
}

template <class T>
void store(T& word, T value, std::memory_order order) noexcept {
  std::atomic_ref<T>(word).store(value, order);
}

// Starts a publish and returns the odd counter value to hand to end_write. A counter already odd
// was left by a writer that died mid-publish: we continue from it, and end_write repairs the row.
inline std::uint32_t begin_write(std::uint32_t& seq) noexcept {
  std::atomic_ref<std::uint32_t> s(seq);
  std::uint32_t v = s.load(std::memory_order_relaxed);
  if ((v & 1u) == 0) {
    ++v;
    // relaxed: the release fence below orders this store before every field store that follows.
    s.store(v, std::memory_order_relaxed);
  }
  std::atomic_thread_fence(std::memory_order_release);
  return v;
}

inline void end_write(std::uint32_t& seq, std::uint32_t odd) noexcept {
  // release: a reader that sees the even value sees every field stored since begin_write.
  std::atomic_ref<std::uint32_t>(seq).store(odd + 1, std::memory_order_release);
}

// Calls copy() until it ran with no publish overlapping it, at most `attempts` times. copy() must
// only load the fields (relaxed) into private storage: its results are thrown away on a retry.
template <class Copy>
bool read_consistent(const std::uint32_t& seq, int attempts, Copy&& copy) noexcept {
  for (int i = 0; i < attempts; ++i) {
    // acquire: the fields loaded below are at least as new as this counter's publish.
    const std::uint32_t before = load(seq, std::memory_order_acquire);
    if ((before & 1u) != 0) {
      cpu_relax();
      continue;
    }
    copy();
    // acquire fence: the field loads above complete before the counter is read again.
    std::atomic_thread_fence(std::memory_order_acquire);
    if (load(seq, std::memory_order_relaxed) == before) return true;
    cpu_relax();
  }
  return false;
}

}  // namespace berth::ipc::detail
