// The audit log: one JSON object per line, CloudTrail's record shape, appended for every API
// call, allowed or refused. Rotated by size (audit.log.1 is the newest old file).
//
// A record is written with one write(2) on an O_APPEND descriptor: lines never interleave, and
// a crash leaves at most one unfinished last line, which open() cuts off before appending.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "berth/agent/common.hpp"

namespace berth::agent {

class audit_log {
 public:
  audit_log() = default;
  audit_log(const audit_log&) = delete;
  audit_log& operator=(const audit_log&) = delete;
  ~audit_log();

  // Opens (creating; mode 0600 however created) `path`, cutting a torn last line off. `max_bytes`
  // 0: no rotation.
  result<void> open(const std::string& path, std::uint64_t max_bytes, unsigned keep);

  // Appends one record. A failed write is logged once per failure run and never throws.
  void append(const nlohmann::json& record);
  // The same for a record already written as text: one JSON object, without a newline.
  void append_line(std::string record);

  // A refused call's record (denied, or not authenticated). Rate-limited per principal so that
  // nobody can rotate the trail away by being refused: the first refusal in each second is
  // written; later ones in that second are counted and written as one record (the last of them,
  // with additionalEventData.coalescedCount) once the second is over, at the next append or
  // flush_refused(). `now_second`: seconds since the epoch.
  void append_refused(const std::string& principal, const nlohmann::json& record,
                      std::int64_t now_second);
  // Writes what append_refused() holds back from seconds before `now_second`.
  void flush_refused(std::int64_t now_second);

  const std::string& path() const noexcept { return path_; }

 private:
  void rotate();
  void write_locked(std::string line);
  void flush_locked(std::int64_t now_second);

  struct refusals {
    std::int64_t second = 0;
    std::uint64_t suppressed = 0;
    nlohmann::json last;
  };
  std::map<std::string, refusals> refused_;

  std::mutex mu_;
  std::string path_;
  int fd_ = -1;
  std::uint64_t size_ = 0, max_bytes_ = 0;
  unsigned keep_ = 0;
  bool failing_ = false;
};

// CloudTrail's LookupEvents over the audit log `path` and its rotated files (path.1 … path.keep),
// newest first: `request` is LookupEvents' (LookupAttributes, each one of EventName, Username,
// AccessKeyId, ReadOnly, EventId, EventSource and Berth's ErrorCode ("*": any error), all of them
// matched; StartTime, EndTime in epoch seconds; MaxResults 1 to 50, 50 by default; NextToken),
// the answer its response (Events: EventId, EventName, ReadOnly, AccessKeyId, EventTime,
// EventSource, Username, Resources, CloudTrailEvent as text; NextToken). Reads each file from its
// end, a block at a time, and stops once the page is full. An error names a bad request member.
result<nlohmann::json> lookup_events(const std::string& path, unsigned keep,
                                     const nlohmann::json& request);

// What CloudTrail hides: environment values, anything named like a secret or a password.
// The request is copied, then trimmed to at most `limit` bytes (replaced by a note if longer).
nlohmann::json redact(const nlohmann::json& request, std::size_t limit = 64 * 1024);
// redact()'s result as JSON text, copying the request only when something in it is hidden.
std::string redact_text(const nlohmann::json& request, std::size_t limit = 64 * 1024);

// Appends the JSON text json::dump(-1, ' ', false, error_handler_t::replace) gives, the cheap
// way: a string with nothing to escape (most are) is copied as it is.
void append_json(std::string& out, const nlohmann::json& j);
void append_json_string(std::string& out, std::string_view s);

}  // namespace berth::agent
