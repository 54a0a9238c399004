#include "berth/api/sigv4.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <charconv>
#include <ctime>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <vector>

namespace berth::agent {

namespace {

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  const auto e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

// Trims and squeezes runs of spaces, as SigV4's canonical header values are.
std::string canonical_value(const std::string& v) {
  std::string out;
  bool space = false;
  for (const char c : trim(v)) {
    if (c == ' ' || c == '\t') {
      space = true;
      continue;
    }
    if (space && !out.empty()) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

std::string uri_encode(const std::string& s, bool keep_slash) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  for (const unsigned char c : s) {
    if (std::isalnum(c) != 0 || c == '-' || c == '_' || c == '.' || c == '~' ||
        (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string uri_decode(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    unsigned v = 0;
    if (s[i] == '%' && i + 2 < s.size() &&
        std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16).ptr == s.data() + i + 3) {
      out += static_cast<char>(v);
      i += 2;
    } else {
      out += s[i] == '+' ? ' ' : s[i];
    }
  }
  return out;
}

std::string canonical_query(const std::string& q) {
  std::vector<std::pair<std::string, std::string>> params;
  std::stringstream in(q);
  std::string part;
  while (std::getline(in, part, '&')) {
    if (part.empty()) continue;
    const auto eq = part.find('=');
    const std::string k = uri_decode(part.substr(0, eq));
    const std::string v = eq == std::string::npos ? "" : uri_decode(part.substr(eq + 1));
    params.emplace_back(uri_encode(k, false), uri_encode(v, false));
  }
  std::sort(params.begin(), params.end());
  std::string out;
  for (const auto& [k, v] : params) {
    if (!out.empty()) out += '&';
    out += k + "=" + v;
  }
  return out;
}

// "20261125T120000Z" -> time point; nullopt when malformed.
std::optional<std::chrono::system_clock::time_point> parse_amz_date(const std::string& s) {
  std::tm tm{};
  std::istringstream in(s);
  in >> std::get_time(&tm, "%Y%m%dT%H%M%SZ");
  if (in.fail() || s.size() != 16) return std::nullopt;
  // A year past what a time_point holds (2262, in nanoseconds) is malformed: from_time_t would
  // overflow.
  const std::time_t t = timegm(&tm);
  constexpr auto limit =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::duration::max())
          .count();
  if (t > limit || t < -limit) return std::nullopt;
  return std::chrono::system_clock::from_time_t(t);
}

std::string format_amz_date(std::chrono::system_clock::time_point t) {
  const std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

}  // namespace

std::string to_hex(const std::string& bytes) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (const unsigned char c : bytes) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  return out;
}

std::string sha256_hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr);
  return to_hex(std::string(reinterpret_cast<char*>(md), n));
}

std::string hmac_sha256(const std::string& key, const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), md, &n);
  return std::string(reinterpret_cast<char*>(md), n);
}

result<credentials> load_credentials(const std::string& path) {
  std::ifstream in(path);
  if (!in) return tl::unexpected(error{"cannot read credentials file " + path});
  credentials out;
  std::map<std::string, std::map<std::string, std::string>> sections;
  std::string line, section;
  while (std::getline(in, line)) {
    line = trim(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      section = trim(line.substr(1, line.size() - 2));
      continue;
    }
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    sections[section][trim(line.substr(0, eq))] = trim(line.substr(eq + 1));
  }
  for (auto& [name, kv] : sections) {
    if (!kv.contains("aws_access_key_id") || !kv.contains("aws_secret_access_key")) continue;
    credential c{name, kv["aws_secret_access_key"], kv["berth_access"] == "read-only"};
    out[kv["aws_access_key_id"]] = c;
  }
  if (out.empty()) {
    return tl::unexpected(error{"no aws_access_key_id/aws_secret_access_key pair in " + path});
  }
  return out;
}

tl::expected<std::string, auth_failure> verify_sigv4(const signed_request& r, const credentials& c,
                                                     std::chrono::system_clock::time_point now,
                                                     const sigv4_scope& expect) {
  const auto header = [&](const std::string& name) -> std::string {
    const auto it = r.headers.find(name);
    return it == r.headers.end() ? std::string() : it->second;
  };
  const std::string auth = header("authorization");
  if (auth.empty()) {
    return tl::unexpected(
        auth_failure{"MissingAuthenticationTokenException", "Missing Authentication Token"});
  }
  const std::string algorithm = "AWS4-HMAC-SHA256";
  if (!auth.starts_with(algorithm + " ")) {
    return tl::unexpected(auth_failure{
        "IncompleteSignatureException",
        "Unsupported signing algorithm in Authorization header: only AWS4-HMAC-SHA256"});
  }
  std::map<std::string, std::string> fields;
  std::stringstream in(auth.substr(algorithm.size() + 1));
  std::string part;
  while (std::getline(in, part, ',')) {
    part = trim(part);
    const auto eq = part.find('=');
    if (eq != std::string::npos) fields[part.substr(0, eq)] = part.substr(eq + 1);
  }
  for (const char* f : {"Credential", "SignedHeaders", "Signature"}) {
    if (!fields.contains(f)) {
      return tl::unexpected(
          auth_failure{"IncompleteSignatureException",
                       std::string("Authorization header requires '") + f +
                           "' parameter. Authorization=" + auth.substr(0, auth.find(' '))});
    }
  }
  // AKID/date/region/service/aws4_request
  std::vector<std::string> scope;
  {
    std::stringstream cs(fields["Credential"]);
    std::string p;
    while (std::getline(cs, p, '/')) scope.push_back(p);
  }
  if (scope.size() != 5 || scope[4] != "aws4_request") {
    return tl::unexpected(auth_failure{"IncompleteSignatureException",
                                       "Credential should be scoped to a valid region, service "
                                       "and aws4_request: " +
                                           fields["Credential"]});
  }
  const auto key = c.find(scope[0]);
  if (key == c.end()) {
    return tl::unexpected(auth_failure{"UnrecognizedClientException",
                                       "The security token included in the request is invalid."});
  }
  const std::string amz_date = header("x-amz-date");
  const auto when = parse_amz_date(amz_date);
  if (!when) {
    return tl::unexpected(auth_failure{
        "IncompleteSignatureException",
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."});
  }
  if (amz_date.substr(0, 8) != scope[1]) {
    return tl::unexpected(auth_failure{
        "InvalidSignatureException",
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
        "HTTP: '" +
            scope[1] + "' != '" + amz_date.substr(0, 8) + "'"});
  }
  // A signature for another region or service is refused as AWS refuses it, even when the key
  // is right: it was made for somewhere else.
  if (scope[2] != expect.region) {
    return tl::unexpected(auth_failure{
        "InvalidSignatureException", "Credential should be scoped to a valid region, not '" +
                                         scope[2].substr(0, 64) + "'. Expected '" + expect.region +
                                         "'."});
  }
  if (scope[3] != expect.service) {
    return tl::unexpected(
        auth_failure{"InvalidSignatureException",
                     "Credential should be scoped to correct service: '" + expect.service + "'. "});
  }
  constexpr auto skew = std::chrono::minutes(15);
  if (*when < now - skew || *when > now + skew) {
    const bool early = *when < now - skew;
    return tl::unexpected(
        auth_failure{"InvalidSignatureException",
                     "Signature expired: " + amz_date + " is now " + (early ? "earlier" : "later") +
                         " than " + format_amz_date(early ? now - skew : now + skew) + " (" +
                         format_amz_date(now) + (early ? " - 15 min.)" : " + 15 min.)")});
  }
  // The canonical request.
  const std::string target = r.target.empty() ? "/" : r.target;
  const auto q = target.find('?');
  const std::string path = target.substr(0, q);
  const std::string query = q == std::string::npos ? "" : target.substr(q + 1);
  std::string canonical =
      r.method + "\n" + uri_encode(uri_decode(path), true) + "\n" + canonical_query(query) + "\n";
  std::stringstream sh(fields["SignedHeaders"]);
  std::string name;
  while (std::getline(sh, name, ';')) {
    const auto it = r.headers.find(name);
    if (it == r.headers.end()) {
      return tl::unexpected(auth_failure{
          "InvalidSignatureException",
          "The request signature we calculated does not match the signature you provided: "
          "signed header '" +
              name + "' is missing."});
    }
    canonical += name + ":" + canonical_value(it->second) + "\n";
  }
  // The headers that make a request what it is must be among those signed.
  for (const char* must : {"host", "x-amz-date"}) {
    const std::string& signed_list = fields["SignedHeaders"];
    bool found = false;
    std::stringstream names(signed_list);
    std::string n;
    while (std::getline(names, n, ';')) found |= n == must;
    if (!found) {
      return tl::unexpected(auth_failure{
          "InvalidSignatureException", std::string("The '") + must +
                                           "' header must be signed (SignedHeaders=" + signed_list +
                                           ")"});
    }
  }
  if (r.headers.contains("x-amz-target") &&
      (";" + fields["SignedHeaders"] + ";").find(";x-amz-target;") == std::string::npos) {
    return tl::unexpected(
        auth_failure{"InvalidSignatureException", "The 'x-amz-target' header must be signed"});
  }
  canonical += "\n" + fields["SignedHeaders"] + "\n";
  const std::string payload = header("x-amz-content-sha256");
  canonical += payload.empty() || payload == "UNSIGNED-PAYLOAD" ? sha256_hex(r.body) : payload;
  if (!payload.empty() && payload != "UNSIGNED-PAYLOAD" && payload != sha256_hex(r.body)) {
    return tl::unexpected(auth_failure{"InvalidSignatureException",
                                       "The provided 'x-amz-content-sha256' header does not match "
                                       "what was computed."});
  }
  const std::string scope_str = scope[1] + "/" + scope[2] + "/" + scope[3] + "/aws4_request";
  const std::string to_sign =
      algorithm + "\n" + amz_date + "\n" + scope_str + "\n" + sha256_hex(canonical);
  std::string k = hmac_sha256("AWS4" + key->second.secret, scope[1]);
  k = hmac_sha256(k, scope[2]);
  k = hmac_sha256(k, scope[3]);
  k = hmac_sha256(k, "aws4_request");
  const std::string expected = to_hex(hmac_sha256(k, to_sign));
  const std::string& given = fields["Signature"];
  // Constant time, so the comparison does not leak how much of a forged signature was right.
  bool same = expected.size() == given.size();
  unsigned char diff = 0;
  for (std::size_t i = 0; same && i < expected.size(); ++i) {
    diff |= static_cast<unsigned char>(expected[i] ^ given[i]);
  }
  if (!same || diff != 0) {
    return tl::unexpected(auth_failure{
        "InvalidSignatureException",
        "The request signature we calculated does not match the signature you provided. Check "
        "your AWS Secret Access Key and signing method. Consult the service documentation for "
        "details."});
  }
  return scope[0];
}

}  // namespace berth::agent
