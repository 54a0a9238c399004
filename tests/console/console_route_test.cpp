#include "console_route.hpp"

#include <gtest/gtest.h>

#include <string>

#include "berth/console.hpp"

namespace berth::agent {
namespace {

http_request get(const std::string& target, std::map<std::string, std::string> headers = {}) {
  http_request r;
  r.method = "GET";
  r.target = target;
  r.headers = std::move(headers);
  r.tcp = true;
  r.peer = "192.0.2.7";  // not loopback: the console is served to anyone, unsigned
  return r;
}

TEST(ConsoleRouteTest, ServesTheBundleWithItsTypes) {
  const auto page = console_response(get("/console/"), "us-east-1");
  EXPECT_EQ(page.status, 200);
  EXPECT_EQ(page.content_type, "text/html; charset=utf-8");
  EXPECT_NE(page.body.find("<script type=\"module\" src=\"app.js\">"), std::string::npos);
  EXPECT_EQ(console_response(get("/console/index.html"), "us-east-1").body, page.body);
  EXPECT_EQ(console_response(get("/console/app.js?v=1"), "x").content_type,
            "text/javascript; charset=utf-8");
  EXPECT_EQ(console_response(get("/console/app.css"), "x").content_type, "text/css; charset=utf-8");
}

TEST(ConsoleRouteTest, EveryAnswerCarriesTheStrictPolicy) {
  for (const char* target :
       {"/console/", "/console/app.js", "/console/nope", "/console", "/console/config.json"}) {
    const auto r = console_response(get(target), "us-east-1");
    EXPECT_EQ(r.headers.at("Content-Security-Policy"), console::content_security_policy) << target;
    EXPECT_EQ(r.headers.at("X-Content-Type-Options"), "nosniff") << target;
    EXPECT_EQ(r.headers.at("X-Frame-Options"), "DENY") << target;
  }
  EXPECT_EQ(std::string(console::content_security_policy).find("unsafe"), std::string::npos);
}

TEST(ConsoleRouteTest, GzipOnlyWhenAccepted) {
  const auto plain = console_response(get("/console/app.js"), "x");
  EXPECT_FALSE(plain.headers.contains("Content-Encoding"));
  const auto gz = console_response(get("/console/app.js", {{"accept-encoding", "gzip, br"}}), "x");
  EXPECT_EQ(gz.headers.at("Content-Encoding"), "gzip");
  EXPECT_EQ(gz.headers.at("Vary"), "Accept-Encoding");
  ASSERT_GE(gz.body.size(), 2u);
  EXPECT_EQ(static_cast<unsigned char>(gz.body[0]), 0x1f);  // gzip's magic number
  EXPECT_LT(gz.body.size(), plain.body.size());
  for (const char* refused : {"gzip;q=0", "gzip; q=0.000", "deflate", "br, identity"}) {
    EXPECT_FALSE(console_response(get("/console/app.js", {{"accept-encoding", refused}}), "x")
                     .headers.contains("Content-Encoding"))
        << refused;
  }
  EXPECT_TRUE(console_response(get("/console/app.js", {{"accept-encoding", "*;q=0.5"}}), "x")
                  .headers.contains("Content-Encoding"));
}

TEST(ConsoleRouteTest, NotModifiedWhenTheEtagMatches) {
  const auto first = console_response(get("/console/app.js"), "x");
  const std::string etag = first.headers.at("ETag");
  ASSERT_GE(etag.size(), 3u);
  const auto again = console_response(get("/console/app.js", {{"if-none-match", etag}}), "x");
  EXPECT_EQ(again.status, 304);
  EXPECT_TRUE(again.body.empty());
  EXPECT_EQ(console_response(get("/console/app.js", {{"if-none-match", "\"old\""}}), "x").status,
            200);
}

TEST(ConsoleRouteTest, PathsOutsideTheBundleLeadNowhere) {
  for (const char* target :
       {"/console/../v1/metadata", "/console/%2e%2e/v1/metadata", "/console/..%2f..%2fetc%2fpasswd",
        "/console//etc/passwd", "/console/./app.js", "/console/app.js.gz", "/console/APP.JS",
        "/console/app.js/", "/console/dist/app.js", "/console/%61pp.js"}) {
    const auto r = console_response(get(target), "x");
    EXPECT_EQ(r.status, 404) << target;
    EXPECT_EQ(r.content_type, "text/plain; charset=utf-8") << target;
  }
  EXPECT_TRUE(console_path("/console"));
  EXPECT_TRUE(console_path("/console/x"));
  EXPECT_FALSE(console_path("/consoles"));
  EXPECT_FALSE(console_path("/"));
}

TEST(ConsoleRouteTest, RedirectsTheBareNameAndTellsTheRegion) {
  const auto r = console_response(get("/console"), "eu-west-3");
  EXPECT_EQ(r.status, 301);
  EXPECT_EQ(r.headers.at("Location"), "/console/");
  const auto c = console_response(get("/console/config.json"), "eu-west-3");
  EXPECT_EQ(c.status, 200);
  EXPECT_EQ(c.content_type, "application/json");
  EXPECT_EQ(c.body, R"({"region":"eu-west-3"})");
}

TEST(ConsoleAssetsTest, TheBundleIsEmbeddedWhole) {
  const auto t = console::sizes();
  EXPECT_EQ(t.files, 3u);
  EXPECT_GT(t.bytes, t.gzip_bytes);
  EXPECT_EQ(console::content_type_of("a.svg"), "image/svg+xml");
  EXPECT_EQ(console::content_type_of("README"), "application/octet-stream");
  EXPECT_FALSE(console::find("/v1/metadata"));
}

}  // namespace
}  // namespace berth::agent
