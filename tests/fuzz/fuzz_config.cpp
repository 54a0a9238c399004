// berth.conf (KEY=VALUE lines) through the file parser and every setting's checks, as
// load_config applies a file's settings over the defaults.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto settings = berth::agent::parse_config_text(text, "berth.conf");
  if (!settings) return 0;
  berth::agent::config c;
  (void)berth::agent::apply_settings(c, *settings);
  return 0;
}
