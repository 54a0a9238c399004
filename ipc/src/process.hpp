// Which process this is, and whether another is alive: slots, the dictionary lock and a
// segment's initialization are held by pid, and a dead holder's are taken over.
#pragma once

#include <cstdint>

namespace berth::ipc::detail {

// getpid(), cached, and refreshed in children after fork().
std::uint32_t this_pid() noexcept;

// False for 0, a pid that is gone, and a zombie (dead, not yet reaped: it holds nothing).
bool process_alive(std::uint32_t pid) noexcept;

}  // namespace berth::ipc::detail
