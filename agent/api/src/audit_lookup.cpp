// CloudTrail's LookupEvents over the audit log: see audit.hpp.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "berth/api/audit.hpp"

namespace berth::agent {

namespace {

using nlohmann::json;

// The attribute keys a lookup may name, and the record member each compares with.
struct attribute_key {
  const char* key;
  const char* pointer;  // in the CloudTrail record
};
constexpr attribute_key keys[] = {
    {"EventName", "/eventName"},
    {"EventId", "/eventID"},
    {"EventSource", "/eventSource"},
    {"ReadOnly", "/readOnly"},
    {"Username", "/userIdentity/userName"},
    {"AccessKeyId", "/userIdentity/accessKeyId"},
    {"ErrorCode", "/errorCode"},
};

struct query {
  std::vector<std::pair<std::string, std::string>> attributes;  // pointer, value
  double start = 0, end = 1e18;
  std::size_t max = 50;
  unsigned file = 0;       // where the page starts: the file (0: the current one) …
  std::int64_t from = -1;  // … and the offset its lines end before (-1: the file's end)
};

// "2026-12-02T22:44:48Z" -> epoch seconds (CloudTrail's eventTime, UTC, whole seconds).
double epoch_of(const std::string& t) {
  std::tm tm{};
  if (::strptime(t.c_str(), "%Y-%m-%dT%H:%M:%S", &tm) == nullptr) return 0;
  return static_cast<double>(::timegm(&tm));
}

std::string text_of(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  return v.is_null() ? std::string() : v.dump();
}

result<query> read_query(const json& r) {
  query q;
  if (!r.is_object()) return tl::unexpected(error{"The request body must be a JSON object"});
  if (const auto a = r.find("LookupAttributes"); a != r.end() && !a->is_null()) {
    if (!a->is_array()) return tl::unexpected(error{"LookupAttributes must be a list"});
    for (const auto& item : *a) {
      const json k = item.is_object() ? item.value("AttributeKey", json()) : json();
      const json v = item.is_object() ? item.value("AttributeValue", json()) : json();
      if (!k.is_string() || !v.is_string()) {
        return tl::unexpected(error{
            "Each of LookupAttributes needs an AttributeKey and an AttributeValue (strings)"});
      }
      const auto* found = std::find_if(std::begin(keys), std::end(keys), [&](const auto& x) {
        return k.get<std::string>() == x.key;
      });
      if (found == std::end(keys)) {
        return tl::unexpected(error{"Unknown AttributeKey '" + k.get<std::string>() +
                                    "': EventName, EventId, EventSource, ReadOnly, Username, "
                                    "AccessKeyId or ErrorCode"});
      }
      q.attributes.emplace_back(found->pointer, v.get<std::string>());
    }
  }
  for (const auto& [member, to] : {std::pair{"StartTime", &q.start}, {"EndTime", &q.end}}) {
    const auto t = r.find(member);
    if (t == r.end() || t->is_null()) continue;
    if (!t->is_number()) return tl::unexpected(error{std::string(member) + " must be a number"});
    *to = t->get<double>();
  }
  if (const auto m = r.find("MaxResults"); m != r.end() && !m->is_null()) {
    if (!m->is_number_integer() || m->get<std::int64_t>() < 1 || m->get<std::int64_t>() > 50) {
      return tl::unexpected(error{"MaxResults must be a whole number from 1 to 50"});
    }
    q.max = m->get<std::size_t>();
  }
  if (const auto t = r.find("NextToken"); t != r.end() && !t->is_null()) {
    const std::string s = t->is_string() ? t->get<std::string>() : "";
    const auto colon = s.find(':');
    const bool ok =
        colon != std::string::npos &&
        std::from_chars(s.data(), s.data() + colon, q.file).ec == std::errc() &&
        std::from_chars(s.data() + colon + 1, s.data() + s.size(), q.from).ec == std::errc() &&
        q.from >= 0;
    if (!ok) return tl::unexpected(error{"NextToken is not one this lookup gave"});
  }
  return q;
}

bool matches(const query& q, const json& record) {
  const double at = epoch_of(record.value("eventTime", ""));
  if (at < q.start || at > q.end) return false;
  for (const auto& [pointer, want] : q.attributes) {
    const json::json_pointer p(pointer);
    const json v = record.contains(p) ? record.at(p) : json();
    if (pointer == "/errorCode" && want == "*") {
      if (v.is_null()) return false;
      continue;
    }
    if (text_of(v) != want) return false;
  }
  return true;
}

json event_of(const json& record, const std::string& line) {
  const json& who = record.value("userIdentity", json::object());
  json e = {{"EventId", record.value("eventID", "")},
            {"EventName", record.value("eventName", "")},
            {"ReadOnly", text_of(record.value("readOnly", json(false)))},
            {"EventTime", epoch_of(record.value("eventTime", ""))},
            {"EventSource", record.value("eventSource", "")},
            {"Resources", json::array()},
            {"CloudTrailEvent", line}};
  if (who.is_object()) {
    if (who.contains("accessKeyId")) e["AccessKeyId"] = text_of(who["accessKeyId"]);
    if (who.contains("userName")) e["Username"] = text_of(who["userName"]);
  }
  return e;
}

}  // namespace

result<json> lookup_events(const std::string& path, unsigned keep, const json& request) {
  auto q = read_query(request);
  if (!q) return tl::unexpected(q.error());
  json out = {{"Events", json::array()}};
  constexpr std::size_t block = 64 * 1024;
  for (unsigned f = q->file; f <= keep; ++f) {
    const std::string name = f == 0 ? path : path + "." + std::to_string(f);
    const int fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) continue;
      return tl::unexpected(error{"cannot read " + name + ": " + std::strerror(errno)});
    }
    struct stat st {};
    ::fstat(fd, &st);
    std::int64_t end =
        f == q->file && q->from >= 0 ? std::min<std::int64_t>(q->from, st.st_size) : st.st_size;
    // Lines end before `end`; `carry` is the start of a line whose beginning is in an earlier
    // block.
    std::string carry;
    while (end > 0 || !carry.empty()) {
      const std::int64_t begin = std::max<std::int64_t>(0, end - static_cast<std::int64_t>(block));
      std::string chunk(static_cast<std::size_t>(end - begin), '\0');
      if (::pread(fd, chunk.data(), chunk.size(), begin) != static_cast<ssize_t>(chunk.size())) {
        break;
      }
      chunk += carry;
      // Each complete line, newest (last) first; the part before the first newline waits for
      // the block before (unless this is the file's start).
      std::size_t stop = chunk.size();
      while (true) {
        const std::size_t nl = stop == 0 ? std::string::npos : chunk.rfind('\n', stop - 1);
        if (nl == std::string::npos && begin > 0) break;
        const std::size_t from = nl == std::string::npos ? 0 : nl + 1;
        const std::string line = chunk.substr(from, stop - from);
        const std::int64_t line_start = begin + static_cast<std::int64_t>(from);
        if (!line.empty()) {
          const json record = json::parse(line, nullptr, false);
          if (record.is_object() && matches(*q, record)) {
            if (out["Events"].size() == q->max) {
              out["NextToken"] =
                  std::to_string(f) + ":" +
                  std::to_string(line_start + static_cast<std::int64_t>(line.size()) + 1);
              ::close(fd);
              return out;
            }
            out["Events"].push_back(event_of(record, line));
          }
        }
        if (nl == std::string::npos) {
          stop = 0;
          break;
        }
        stop = nl;
      }
      carry = chunk.substr(0, stop);
      if (begin == 0) break;
      end = begin;
    }
    ::close(fd);
  }
  return out;
}

}  // namespace berth::agent
