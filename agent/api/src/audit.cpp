#include "berth/api/audit.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>

namespace berth::agent {

using nlohmann::json;

namespace {

constexpr const char* hidden = "HIDDEN_DUE_TO_SECURITY_REASONS";

bool secret_name(std::string name) {
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (name == "nexttoken") return false;
  for (const char* word : {"secret", "password", "passwd", "token", "credential", "privatekey"}) {
    if (name.find(word) != std::string::npos) return true;
  }
  return false;
}

void hide(json& j) {
  if (j.is_array()) {
    for (auto& x : j) hide(x);
    return;
  }
  if (!j.is_object()) return;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.value().is_string() && secret_name(it.key())) {
      it.value() = hidden;
    } else if (it.key() == "environment" && it.value().is_array()) {
      // Task definitions' and overrides' variables: names stay, values go.
      for (auto& e : it.value()) {
        if (e.is_object() && e.contains("value")) e["value"] = hidden;
      }
    } else {
      hide(it.value());
    }
  }
}

// Whether hide() would change anything in `j`: mirrors its walk.
bool hides_something(const json& j) {
  if (j.is_array()) return std::any_of(j.begin(), j.end(), hides_something);
  if (!j.is_object()) return false;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.value().is_string() && secret_name(it.key())) return true;
    if (it.key() == "environment" && it.value().is_array()) {
      for (const auto& e : it.value()) {
        if (e.is_object() && e.contains("value")) return true;
      }
    } else if (hides_something(it.value())) {
      return true;
    }
  }
  return false;
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// The truncation note redact() gives for a request whose text has `size` bytes.
json truncated(std::size_t size) {
  return json{{"berthTruncated", true}, {"originalSizeBytes", size}};
}

// Writes all of `s`, retrying short writes and EINTR.
bool write_all(int fd, const std::string& s) {
  std::size_t done = 0;
  while (done < s.size()) {
    const ssize_t n = ::write(fd, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace

json redact(const json& request, std::size_t limit) {
  json out = request;
  hide(out);
  const std::string text = dump(out);
  if (text.size() > limit) return truncated(text.size());
  return out;
}

std::string redact_text(const json& request, std::size_t limit) {
  std::string text;
  if (hides_something(request)) {
    json out = request;
    hide(out);
    append_json(text, out);
  } else {
    append_json(text, request);
  }
  if (text.size() > limit) return dump(truncated(text.size()));
  return text;
}

void append_json(std::string& out, const json& j) {
  switch (j.type()) {
    case json::value_t::object: {
      out += '{';
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (it != j.begin()) out += ',';
        append_json_string(out, it.key());
        out += ':';
        append_json(out, it.value());
      }
      out += '}';
      return;
    }
    case json::value_t::array: {
      out += '[';
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (it != j.begin()) out += ',';
        append_json(out, *it);
      }
      out += ']';
      return;
    }
    case json::value_t::string:
      append_json_string(out, j.get_ref<const std::string&>());
      return;
    default:  // numbers, booleans, null: dump()'s own formatting
      out += dump(j);
  }
}

void append_json_string(std::string& out, std::string_view s) {
  const bool plain = std::all_of(
      s.begin(), s.end(), [](char c) { return c >= 0x20 && c < 0x7f && c != '"' && c != '\\'; });
  if (!plain) {
    out += dump(json(s));
    return;
  }
  out += '"';
  out += s;
  out += '"';
}

audit_log::~audit_log() {
  if (fd_ >= 0) ::close(fd_);
}

result<void> audit_log::open(const std::string& path, std::uint64_t max_bytes, unsigned keep) {
  std::lock_guard lock(mu_);
  path_ = path;
  max_bytes_ = max_bytes;
  keep_ = keep;
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  fd_ = ::open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd_ < 0) {
    return tl::unexpected(error{"cannot open audit log " + path + ": " + std::strerror(errno)});
  }
  // Records carry who called what: berthd's user alone reads them, however the file was made.
  (void)::fchmod(fd_, 0600);
  struct stat st {};
  ::fstat(fd_, &st);
  size_ = static_cast<std::uint64_t>(st.st_size);
  // A crash mid-record leaves a last line without its newline: cut it off, back to the last
  // complete record, so that every line a reader sees parses.
  if (size_ > 0) {
    char c = 0;
    if (::pread(fd_, &c, 1, static_cast<off_t>(size_ - 1)) == 1 && c != '\n') {
      off_t end = static_cast<off_t>(size_);
      char buf[4096];
      off_t cut = 0;
      while (end > 0 && cut == 0) {
        const off_t from = std::max<off_t>(0, end - static_cast<off_t>(sizeof buf));
        const ssize_t n = ::pread(fd_, buf, static_cast<std::size_t>(end - from), from);
        if (n <= 0) break;
        for (ssize_t i = n - 1; i >= 0; --i) {
          if (buf[i] == '\n') {
            cut = from + i + 1;
            break;
          }
        }
        end = from;
      }
      if (::ftruncate(fd_, cut) == 0) {
        spdlog::warn("audit log {}: cut off a torn last record ({} bytes)", path,
                     static_cast<off_t>(size_) - cut);
        size_ = static_cast<std::uint64_t>(cut);
      }
    }
  }
  return {};
}

void audit_log::rotate() {
  ::close(fd_);
  fd_ = -1;
  std::error_code ec;
  if (keep_ == 0) {
    std::filesystem::remove(path_, ec);
  } else {
    for (unsigned i = keep_; i > 1; --i) {
      std::filesystem::rename(path_ + "." + std::to_string(i - 1), path_ + "." + std::to_string(i),
                              ec);
    }
    std::filesystem::rename(path_, path_ + ".1", ec);
  }
  fd_ = ::open(path_.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  size_ = 0;
}

void audit_log::append(const json& record) { append_line(dump(record)); }

void audit_log::append_line(std::string record) {
  std::lock_guard lock(mu_);
  if (!refused_.empty()) flush_locked(static_cast<std::int64_t>(std::time(nullptr)));
  write_locked(std::move(record));
}

void audit_log::append_refused(const std::string& principal, const json& record,
                               std::int64_t now_second) {
  std::lock_guard lock(mu_);
  flush_locked(now_second);
  auto [it, fresh] = refused_.try_emplace(principal);
  refusals& r = it->second;
  if (fresh || r.second != now_second) {
    r.second = now_second;
    write_locked(dump(record));
    return;
  }
  // The same principal refused again within its second: counted, and written as one record
  // once the second is over.
  ++r.suppressed;
  r.last = record;
}

void audit_log::flush_refused(std::int64_t now_second) {
  std::lock_guard lock(mu_);
  flush_locked(now_second);
}

void audit_log::flush_locked(std::int64_t now_second) {
  for (auto it = refused_.begin(); it != refused_.end();) {
    refusals& r = it->second;
    if (r.second >= now_second) {
      ++it;
      continue;
    }
    if (r.suppressed > 0) {
      json rec = std::move(r.last);
      rec["additionalEventData"] = {
          {"coalescedCount", r.suppressed},
          {"note",
           "refused calls of this principal past the first in one second, coalesced; "
           "this record is the last of them"}};
      write_locked(dump(rec));
    }
    it = refused_.erase(it);
  }
}

void audit_log::write_locked(std::string line) {
  line += '\n';
  if (max_bytes_ > 0 && size_ > 0 && size_ + line.size() > max_bytes_) rotate();
  if (fd_ < 0) {  // a failed rotation: tried again with every record
    fd_ = ::open(path_.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    struct stat st {};
    size_ = fd_ >= 0 && ::fstat(fd_, &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
  }
  const bool ok = fd_ >= 0 && write_all(fd_, line);
  const int err = errno;
  if (ok) {
    size_ += line.size();
    failing_ = false;
  } else {
    // A part written before the failure goes: the next record must start a line.
    if (fd_ >= 0) (void)::ftruncate(fd_, static_cast<off_t>(size_));
    if (failing_) return;
    failing_ = true;
    spdlog::error("audit log {}: write failed: {}", path_, std::strerror(err));
  }
}

}  // namespace berth::agent
