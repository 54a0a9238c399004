// The agent's parts on their own: configuration, the SQLite store, SigV4, the audit log's
// redaction and files, metrics' text format, the event bus.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "berth/agent.hpp"
#include "berth/agent/util.hpp"
#include "berth/api/audit.hpp"
#include "berth/api/sigv4.hpp"
#include "config.hpp"
#include "events.hpp"
#include "http_reader.hpp"
#include "metrics.hpp"
#include "store.hpp"
#include "task_views.hpp"

namespace {

namespace ag = berth::agent;
namespace fs = std::filesystem;

ag::result<ag::config> load(std::vector<std::string> args,
                            std::map<std::string, std::string> env = {}) {
  std::vector<const char*> argv = {"berthd"};
  for (const auto& a : args) argv.push_back(a.c_str());
  return ag::load_config(static_cast<int>(argv.size()), argv.data(), env);
}

struct temp {
  fs::path dir = fs::temp_directory_path() / ("berth-unit-" + std::to_string(::getpid()));
  temp() { fs::create_directories(dir); }
  ~temp() { fs::remove_all(dir); }
};

TEST(ConfigTest, DefaultsRunWithNoFlags) {
  auto c = load({"--config=/nonexistent-is-fine-when-defaulted"});
  ASSERT_FALSE(c) << "a config file named explicitly must exist";
  auto d = load({});
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(d->cluster, "default");
  EXPECT_EQ(d->socket, "/run/berth/berth.sock");
  EXPECT_EQ(d->state_dir, "/var/lib/berth");
  EXPECT_EQ(d->reserved_ports, (std::vector<std::uint16_t>{22, 2375, 2376, 51678, 51679}));
  EXPECT_TRUE(d->listen_tcp.empty());
}

TEST(ConfigTest, FlagsOverEnvironmentOverFile) {
  temp t;
  const fs::path f = t.dir / "berth.conf";
  std::ofstream(f) << "# ecs.config style\nECS_CLUSTER=from-file\nECS_RESERVED_MEMORY=256\n"
                      "ECS_RESERVED_PORTS=[22, 8080]\nECS_INSTANCE_ATTRIBUTES={\"tier\": \"web\"}\n"
                      "ECS_ENABLE_TASK_IAM_ROLE=true\nBERTH_INSTANCE_TYPE=\"m5.large\"\n";
  auto c = load({"--config=" + f.string()}, {{"BERTH_RESERVED_MEMORY", "512"}});
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->cluster, "from-file");
  EXPECT_EQ(c->reserved_memory_mib, 512u);
  EXPECT_EQ(c->reserved_ports, (std::vector<std::uint16_t>{22, 8080}));
  EXPECT_EQ(c->attributes.at("tier"), "web");
  EXPECT_EQ(c->instance_type, "m5.large");
  auto f2 = load({"--config=" + f.string(), "--cluster=from-flag"}, {{"ECS_CLUSTER", "from-env"}});
  ASSERT_TRUE(f2);
  EXPECT_EQ(f2->cluster, "from-flag");
  auto e = load({"--config=" + f.string()}, {{"ECS_CLUSTER", "from-env"}});
  EXPECT_EQ(e->cluster, "from-env");
}

TEST(ConfigTest, BadValuesAreNamed) {
  temp t;
  const auto bad = [&](const std::string& line, const std::string& says) {
    const fs::path f = t.dir / "bad.conf";
    std::ofstream(f) << line << "\n";
    auto c = load({"--config=" + f.string()});
    ASSERT_FALSE(c) << line;
    EXPECT_NE(c.error().message.find(says), std::string::npos) << c.error().message;
  };
  bad("BERTH_RESERVED_MEMORY=lots", "BERTH_RESERVED_MEMORY");
  bad("ECS_RESERVED_PORTS=[0]", "BERTH_RESERVED_PORTS");
  bad("ECS_RESERVED_PORTS=22", "JSON list");
  bad("BERTH_NO_SUCH_KEY=1", "unknown key BERTH_NO_SUCH_KEY");
  bad("ECS_CLUSTER=has space", "BERTH_CLUSTER");
  bad("ECS_CONTAINER_STOP_TIMEOUT=5 fortnights", "unit");
  bad("no equals sign", "expected KEY=VALUE");
  auto tcp = load({"--listen-tcp=127.0.0.1:0"});
  ASSERT_FALSE(tcp);
  EXPECT_NE(tcp.error().message.find("--credentials"), std::string::npos);
  auto help = load({"--help"});
  ASSERT_TRUE(help);
  EXPECT_TRUE(help->show_help);
  EXPECT_NE(help->help_text.find("ECS_RESERVED_MEMORY"), std::string::npos);
}

// The file's text on its own, as the fuzzer feeds it: lines numbered, ECS keys mapped.
TEST(ConfigTest, ParsesTextWithoutAFile) {
  auto kv = ag::parse_config_text("# c\r\n ECS_CLUSTER = 'q' \r\nECS_OTHER=x\n", "t.conf");
  ASSERT_TRUE(kv) << kv.error().message;
  EXPECT_EQ(*kv, (std::map<std::string, std::string>{{"BERTH_CLUSTER", "q"}}));
  auto bad = ag::parse_config_text("ECS_CLUSTER=a\nnope\n", "t.conf");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("t.conf:2: expected KEY=VALUE"), std::string::npos);
  ag::config c;
  ASSERT_TRUE(ag::apply_settings(c, *kv));
  EXPECT_EQ(c.cluster, "q");
  EXPECT_FALSE(ag::apply_settings(c, {{"BERTH_AUDIT_KEEP", "1001"}}));
}

// The ledger's rows bound the cluster's size on a host: 65,536 by default, 64 to 2^20.
TEST(ConfigTest, LedgerSlotsAreConfigurableWithinTheLedgersLimits) {
  auto d = load({});
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(d->ledger_slots, 65536u);
  auto c = load({"--ledger-slots=200000"});
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->ledger_slots, 200000u);
  for (const char* bad : {"--ledger-slots=63", "--ledger-slots=1048577", "--ledger-slots=x"}) {
    auto r = load({bad});
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().message.find("BERTH_LEDGER_SLOTS"), std::string::npos) << r.error().message;
  }
}

TEST(ConfigTest, HousekeepingTakesTheEcsAgentsKeysAndGoDurations) {
  auto c = load({}, {{"ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION", "1h30m"},
                     {"ECS_IMAGE_MINIMUM_CLEANUP_AGE", "90s"},
                     {"ECS_DISABLE_IMAGE_CLEANUP", "true"},
                     {"ECS_EXCLUDE_UNTRACKED_IMAGE", "a:1, b:2"},
                     {"ECS_NUM_IMAGES_DELETE_PER_CYCLE", "7"}});
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->task_cleanup_wait, std::chrono::minutes(90));
  EXPECT_EQ(c->image_minimum_age, std::chrono::seconds(90));
  EXPECT_FALSE(c->image_cleanup);
  EXPECT_EQ(c->image_cleanup_exclude, (std::vector<std::string>{"a:1", "b:2"}));
  EXPECT_EQ(c->images_per_cycle, 7u);
  auto d = load({});
  ASSERT_TRUE(d);
  EXPECT_EQ(d->task_cleanup_wait, std::chrono::hours(3));
  EXPECT_TRUE(d->image_cleanup);
  EXPECT_EQ(d->admin_group, "berth");
  for (const char* bad :
       {"--task-cleanup-wait=0s", "--task-cleanup-wait=3d", "--task-cleanup-wait=1h30",
        "--images-per-cycle=0", "--image-cleanup=maybe"}) {
    auto r = load({bad});
    EXPECT_FALSE(r) << bad;
  }
}

TEST(AuditTest, RedactionHidesValuesNotNames) {
  const nlohmann::json req = {
      {"family", "web"},
      {"nextToken", "abc"},
      {"containerDefinitions",
       {{{"name", "web"},
         {"environment", {{{"name", "DB_PASSWORD"}, {"value", "hunter2"}}}},
         {"repositoryCredentials", {{"credentialsParameter", "arn:secret"}}}}}}};
  const nlohmann::json out = ag::redact(req);
  const auto& c = out["containerDefinitions"][0];
  EXPECT_EQ(c["environment"][0]["name"], "DB_PASSWORD");
  EXPECT_EQ(c["environment"][0]["value"], "HIDDEN_DUE_TO_SECURITY_REASONS");
  EXPECT_EQ(c["repositoryCredentials"]["credentialsParameter"], "HIDDEN_DUE_TO_SECURITY_REASONS");
  EXPECT_EQ(out["nextToken"], "abc");
  EXPECT_EQ(out["family"], "web");
  const nlohmann::json big = {{"blob", std::string(100'000, 'x')}};
  EXPECT_EQ(ag::redact(big, 1000)["berthTruncated"], true);
}

TEST(AuditTest, TextIsWhatDumpWrites) {
  const auto dump = [](const nlohmann::json& j) {
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  };
  const nlohmann::json doc = {
      {"plain", "arn:aws:ecs:us-east-1:0:task/c/abc"},
      {"escaped", "quote \" backslash \\ tab \t nl \n del \x7f"},
      {"utf8", "caf\xc3\xa9 \xe2\x82\xac"},
      {"bad utf8 \xff", "cut \xe2\x82"},
      {"numbers", {0, -7, 18446744073709551615u, 1.5, -0.0, 1e300}},
      {"nested", {{"empty", nlohmann::json::object()}, {"list", nlohmann::json::array()}}},
      {"flags", {true, false, nullptr}}};
  std::string text;
  ag::append_json(text, doc);
  EXPECT_EQ(text, dump(doc));
  std::string quoted;
  ag::append_json_string(quoted, "bad \xc3");
  EXPECT_EQ(quoted, dump("bad \xc3"));

  const nlohmann::json req = {
      {"family", "web"},
      {"containerDefinitions", {{{"environment", {{{"name", "A"}, {"value", "secret"}}}}}}}};
  EXPECT_EQ(ag::redact_text(req), dump(ag::redact(req)));
  EXPECT_EQ(ag::redact_text(doc), dump(doc));
  const nlohmann::json big = {{"blob", std::string(100'000, 'x')}};
  EXPECT_EQ(ag::redact_text(big, 1000), dump(ag::redact(big, 1000)));
}

TEST(AuditTest, AppendsWholeLinesCutsATornOneAndRotates) {
  temp t;
  const fs::path file = t.dir / "audit.log";
  std::ofstream(file) << "{\"a\":1}\n{\"b\":";  // a crash mid-record
  {
    ag::audit_log log;
    ASSERT_TRUE(log.open(file.string(), 200, 2));
    EXPECT_EQ(fs::file_size(file), 8u);  // the torn record is gone
    for (int i = 0; i < 20; ++i) log.append({{"n", i}, {"pad", std::string(40, 'p')}});
  }
  EXPECT_LE(fs::file_size(file), 200u);
  EXPECT_TRUE(fs::exists(file.string() + ".1"));
  EXPECT_TRUE(fs::exists(file.string() + ".2"));
  EXPECT_FALSE(fs::exists(file.string() + ".3"));
  std::ifstream in(file);
  std::string line, last;
  while (std::getline(in, line)) {
    EXPECT_FALSE(nlohmann::json::parse(line, nullptr, false).is_discarded()) << line;
    last = line;
  }
  EXPECT_EQ(nlohmann::json::parse(last)["n"], 19);
}

// CloudTrail's LookupEvents over a rotated audit log: every kept record once, newest first, page
// by page (records of 1 KiB: a page crosses the 64-KiB blocks it reads and the files' ends);
// filters by name, user, error and time; bad requests named.
TEST(AuditTest, LookupEventsPagesNewestFirstAcrossRotatedFiles) {
  temp t;
  const fs::path file = t.dir / "audit.log";
  const double base = 1764633600;  // 2025-12-02T00:00:00Z
  const auto time_of = [&](int n) {
    const auto at = static_cast<std::time_t>(base + n);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&at));
    return std::string(buf);
  };
  {
    ag::audit_log log;
    ASSERT_TRUE(log.open(file.string(), 120 * 1024, 2));
    for (int n = 0; n < 400; ++n) {
      nlohmann::json r = {
          {"eventID", "id-" + std::to_string(n)},
          {"eventName", n % 3 == 0 ? "RunTask" : "ListTasks"},
          {"eventTime", time_of(n)},
          {"eventSource", "ecs.amazonaws.com"},
          {"readOnly", n % 3 != 0},
          {"userIdentity",
           {{"userName", n % 2 ? "ops" : "dev"}, {"accessKeyId", "AKID" + std::to_string(n % 2)}}},
          {"pad", std::string(1000, 'p')}};
      if (n % 7 == 0) r["errorCode"] = "InvalidParameterException";
      log.append(r);
    }
  }
  ASSERT_TRUE(fs::exists(file.string() + ".2"));
  const auto ids = [](const nlohmann::json& page) {
    std::vector<int> out;
    for (const auto& e : page["Events"])
      out.push_back(std::stoi(e["EventId"].get<std::string>().substr(3)));
    return out;
  };

  // Every page, newest first, until no NextToken: the kept records, each once.
  std::vector<int> all;
  nlohmann::json req = nlohmann::json::object();
  for (int pages = 0;; ++pages) {
    ASSERT_LT(pages, 20);
    auto page = ag::lookup_events(file.string(), 2, req);
    ASSERT_TRUE(page) << page.error().message;
    const auto got = ids(*page);
    EXPECT_LE(got.size(), 50u);
    all.insert(all.end(), got.begin(), got.end());
    if (!page->contains("NextToken")) break;
    req["NextToken"] = (*page)["NextToken"];
  }
  ASSERT_GT(all.size(), 150u);
  EXPECT_EQ(all.front(), 399);
  for (std::size_t i = 1; i < all.size(); ++i) EXPECT_EQ(all[i], all[i - 1] - 1) << i;
  // Each line's text is the record, and the members CloudTrail lifts out of it.
  auto one = ag::lookup_events(file.string(), 2, {{"MaxResults", 1}});
  ASSERT_TRUE(one);
  const auto& e = (*one)["Events"][0];
  EXPECT_EQ(e["EventName"], "RunTask");
  EXPECT_EQ(e["ReadOnly"], "false");
  EXPECT_EQ(e["Username"], "ops");
  EXPECT_EQ(e["AccessKeyId"], "AKID1");
  EXPECT_EQ(e["EventTime"], base + 399);
  EXPECT_EQ(nlohmann::json::parse(e["CloudTrailEvent"].get<std::string>())["eventID"], "id-399");

  // Filters, all of them matched.
  const auto only = [&](nlohmann::json attributes,
                        nlohmann::json extra = nlohmann::json::object()) {
    extra["LookupAttributes"] = std::move(attributes);
    auto page = ag::lookup_events(file.string(), 2, extra);
    EXPECT_TRUE(page) << page.error().message;
    return page ? ids(*page) : std::vector<int>{};
  };
  const auto attr = [](const char* k, const char* v) {
    return nlohmann::json{{"AttributeKey", k}, {"AttributeValue", v}};
  };
  for (int n : only({attr("EventName", "RunTask")})) EXPECT_EQ(n % 3, 0) << n;
  for (int n : only({attr("ErrorCode", "*"), attr("Username", "dev")})) {
    EXPECT_EQ(n % 7, 0) << n;
    EXPECT_EQ(n % 2, 0) << n;
  }
  EXPECT_EQ(only({attr("ReadOnly", "false"), attr("AccessKeyId", "AKID0")}).front(), 396);
  EXPECT_EQ(only(nlohmann::json::array(), {{"StartTime", base + 390}, {"EndTime", base + 392}}),
            (std::vector<int>{392, 391, 390}));

  // Bad requests: refused, naming the member.
  for (const auto& [bad, names] : std::vector<std::pair<nlohmann::json, std::string>>{
           {{{"MaxResults", 0}}, "MaxResults"},
           {{{"LookupAttributes", {attr("Colour", "red")}}}, "AttributeKey"},
           {{{"NextToken", "x"}}, "NextToken"},
           {{{"StartTime", "today"}}, "StartTime"}}) {
    auto r = ag::lookup_events(file.string(), 2, bad);
    ASSERT_FALSE(r) << bad.dump();
    EXPECT_NE(r.error().message.find(names), std::string::npos) << r.error().message;
  }
}

// A timestamp's JSON text is the shortest one for its value (what JavaScript's String(number)
// gives, ignoring a trailing ".0"): the AWS SDK for JavaScript reads any other text as a big
// decimal, and refuses it as a timestamp. Microsecond values fail this about once in a thousand.
TEST(TimeTest, TimestampsPrintAsTheirShortestText) {
  std::mt19937_64 r(7);
  int differing = 0;
  for (int i = 0; i < 200000; ++i) {
    double v = ag::now_seconds();
    if (i % 2) v = std::floor(v) + static_cast<double>(r() % 1000) / 1000.0;  // any millisecond
    char shortest[64];
    *std::to_chars(shortest, shortest + sizeof shortest - 1, v).ptr = '\0';
    std::string text = nlohmann::json(v).dump();
    if (text.ends_with(".0")) text.resize(text.size() - 2);
    if (text != shortest && ++differing < 5) ADD_FAILURE() << text << " is not " << shortest;
  }
  EXPECT_EQ(differing, 0);
}

TEST(MetricsTest, RendersPrometheusText) {
  ag::metrics m;
  m.counter("x_total", "Things");
  m.histogram("lat_seconds", "Latency", {0.1, 1});
  m.gauge("g", "A gauge");
  m.add("x_total", {{"code", "a\"b"}}, 2);
  m.observe("lat_seconds", {{"op", "get"}}, 0.05);
  m.observe("lat_seconds", {{"op", "get"}}, 0.5);
  m.observe("lat_seconds", {{"op", "get"}}, 5);
  m.on_collect([](ag::metrics& self) { self.set("g", {}, 7); });
  m.add("undeclared", {}, 1);  // dropped
  const std::string text = m.render();
  EXPECT_NE(text.find("# TYPE x_total counter\nx_total{code=\"a\\\"b\"} 2\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("lat_seconds_bucket{op=\"get\",le=\"0.1\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("lat_seconds_bucket{op=\"get\",le=\"1\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("lat_seconds_bucket{op=\"get\",le=\"+Inf\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("lat_seconds_count{op=\"get\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("\ng 7\n"), std::string::npos);
  EXPECT_EQ(text.find("undeclared"), std::string::npos);
}

TEST(EventBusTest, FansOutAndDropsASubscriberThatFallsBehind) {
  ag::event_bus bus(3);
  auto fast = bus.subscribe();
  auto slow = bus.subscribe();
  for (int i = 0; i < 3; ++i) {
    bus.publish(std::to_string(i));
    EXPECT_EQ(fast->next(std::chrono::milliseconds(0)), std::to_string(i));
  }
  EXPECT_EQ(bus.subscribers(), 2u);
  bus.publish("3");  // slow has 3 queued already: dropped, its queue still readable
  EXPECT_EQ(bus.subscribers(), 1u);
  EXPECT_EQ(fast->next(std::chrono::milliseconds(0)), "3");
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(slow->next(std::chrono::milliseconds(0)), std::to_string(i));
  EXPECT_TRUE(slow->closed());
  bus.close();
  EXPECT_TRUE(fast->closed());
  EXPECT_FALSE(fast->next(std::chrono::milliseconds(0)));
}

TEST(StoreTest, DocumentsCountersAndTransactionsSurviveReopen) {
  temp t;
  {
    auto s = ag::open_sqlite_store(t.dir.string());
    ASSERT_TRUE(s) << s.error().message;
    ASSERT_TRUE((*s)->put("taskdef", "web:1", "{\"a\":1}"));
    ASSERT_TRUE((*s)->put("taskdef", "web:2", "{\"a\":2}"));
    ASSERT_TRUE((*s)->put("taskdef", "webby:1", "{}"));
    ASSERT_TRUE((*s)->put("task", "web:1", "{}"));
    EXPECT_EQ(*(*s)->next("rev:web"), 1u);
    EXPECT_EQ(*(*s)->next("rev:web"), 2u);
    // A failed transaction leaves nothing behind.
    auto failed = (*s)->transaction([](ag::store& st) -> ag::result<void> {
      (void)st.put("taskdef", "web:3", "{}");
      return tl::unexpected(ag::error{"no"});
    });
    EXPECT_FALSE(failed);
    ASSERT_TRUE((*s)->transaction([](ag::store& st) { return st.put("taskdef", "web:4", "{}"); }));
  }
  auto s = ag::open_sqlite_store(t.dir.string());
  ASSERT_TRUE(s);
  auto web = (*s)->list("taskdef", "web:");
  ASSERT_TRUE(web);
  ASSERT_EQ(web->size(), 3u);
  EXPECT_EQ((*web)[0].first, "web:1");
  EXPECT_EQ((*web)[2].first, "web:4");
  EXPECT_EQ(*(*(*s)->get("taskdef", "web:2")), "{\"a\":2}");
  EXPECT_FALSE(*(*s)->get("taskdef", "web:3"));
  EXPECT_EQ(*(*s)->next("rev:web"), 3u);
  ASSERT_TRUE((*s)->erase("taskdef", "web:1"));
  EXPECT_FALSE(*(*s)->get("taskdef", "web:1"));
}

// The example in AWS's SigV4 documentation (IAM ListUsers), checked byte for byte.
TEST(SigV4Test, AcceptsTheDocumentedExampleAndRefusesTampering) {
  ag::credentials keys;
  keys["AKIDEXAMPLE"] = {"default", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", false};
  ag::signed_request r;
  r.method = "GET";
  r.target = "/?Action=ListUsers&Version=2010-05-08";
  r.headers = {{"content-type", "application/x-www-form-urlencoded; charset=utf-8"},
               {"host", "iam.amazonaws.com"},
               {"x-amz-date", "20150830T123600Z"},
               {"authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
                "SignedHeaders=content-type;host;x-amz-date, "
                "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"}};
  std::tm tm{};
  tm.tm_year = 115;
  tm.tm_mon = 7;
  tm.tm_mday = 30;
  tm.tm_hour = 12;
  tm.tm_min = 40;
  const auto now = std::chrono::system_clock::from_time_t(timegm(&tm));
  const ag::sigv4_scope iam{"us-east-1", "iam"};
  auto ok = ag::verify_sigv4(r, keys, now, iam);
  ASSERT_TRUE(ok) << ok.error().type << ": " << ok.error().message;
  EXPECT_EQ(*ok, "AKIDEXAMPLE");

  auto tampered = r;
  tampered.target = "/?Action=DeleteUser&Version=2010-05-08";
  auto bad = ag::verify_sigv4(tampered, keys, now, iam);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().type, "InvalidSignatureException");

  auto late = ag::verify_sigv4(r, keys, now + std::chrono::minutes(30), iam);
  ASSERT_FALSE(late);
  EXPECT_NE(late.error().message.find("Signature expired"), std::string::npos);

  auto none = r;
  none.headers.erase("authorization");
  EXPECT_EQ(ag::verify_sigv4(none, keys, now, iam).error().type,
            "MissingAuthenticationTokenException");
  auto stranger = r;
  stranger.headers["authorization"].replace(stranger.headers["authorization"].find("AKIDEXAMPLE"),
                                            11, "AKIDSTRANGE");
  EXPECT_EQ(ag::verify_sigv4(stranger, keys, now, iam).error().type, "UnrecognizedClientException");
  auto partial = r;
  partial.headers["authorization"] =
      "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request";
  EXPECT_EQ(ag::verify_sigv4(partial, keys, now, iam).error().type, "IncompleteSignatureException");

  // Issue 14: a correct signature scoped to another region or service is refused, as AWS does.
  auto elsewhere = ag::verify_sigv4(r, keys, now, {"eu-west-1", "iam"});
  ASSERT_FALSE(elsewhere);
  EXPECT_EQ(elsewhere.error().type, "InvalidSignatureException");
  EXPECT_NE(elsewhere.error().message.find("valid region"), std::string::npos);
  auto other_service = ag::verify_sigv4(r, keys, now, {"us-east-1", "ecs"});
  ASSERT_FALSE(other_service);
  EXPECT_NE(other_service.error().message.find("correct service: 'ecs'"), std::string::npos);
}

// Issue 14: refused calls of one principal cannot rotate the audit trail away: past the first
// in a second they are coalesced into one record with a count; allowed calls are all written.
TEST(AuditTest, RefusedCallsAreCoalescedPerPrincipalPerSecond) {
  temp t;
  const std::string path = (t.dir / "audit.log").string();
  {
    ag::audit_log log;
    ASSERT_TRUE(log.open(path, 0, 0));
    for (int i = 0; i < 1000; ++i) {
      log.append_refused("uid:65534", {{"eventName", "RunTask"}, {"n", i}}, 100);
    }
    for (int i = 0; i < 5; ++i) log.append_refused("uid:1000", {{"eventName", "RunTask"}}, 100);
    for (int i = 0; i < 3; ++i) log.append({{"eventName", "ListTasks"}});
    log.append_refused("uid:65534", {{"eventName", "RunTask"}, {"n", 1000}}, 101);
    log.flush_refused(102);
  }
  std::ifstream in(path);
  std::string line;
  std::uint64_t refused_nobody = 0, records_nobody = 0, refused_other = 0, allowed = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j["eventName"] == "ListTasks") {
      ++allowed;
      continue;
    }
    const std::uint64_t n = j.contains("additionalEventData")
                                ? j["additionalEventData"]["coalescedCount"].get<std::uint64_t>()
                                : 1;
    if (j.contains("n")) {
      ++records_nobody;
      refused_nobody += n;
    } else {
      refused_other += n;
    }
  }
  EXPECT_EQ(allowed, 3u);
  // Second 100: the first record, then one holding the 999 others; second 101: one record.
  EXPECT_EQ(records_nobody, 3u);
  EXPECT_EQ(refused_nobody, 1001u);
  EXPECT_EQ(refused_other, 1u + 4u);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

// A date past 2262 does not fit a time_point: refused as malformed (it overflowed; found by
// fuzz_sigv4).
TEST(SigV4Test, RefusesADatePastWhatATimePointHolds) {
  ag::credentials keys;
  keys["AKIDEXAMPLE"] = {"default", "secret", false};
  ag::signed_request r;
  r.method = "GET";
  r.target = "/";
  r.headers = {{"host", "h"},
               {"x-amz-date", "28150830T123600Z"},
               {"authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/28150830/us-east-1/ecs/aws4_request, "
                "SignedHeaders=host;x-amz-date, Signature=00"}};
  auto v = ag::verify_sigv4(r, keys, std::chrono::system_clock::now(), {"us-east-1", "ecs"});
  ASSERT_FALSE(v);
  EXPECT_EQ(v.error().type, "IncompleteSignatureException");
}

// The server's parser settings over bytes in memory: pipelined requests, partial input, limits.
TEST(HttpReaderTest, ReadsPipelinedRequestsAndRefusesLargeBodies) {
  const std::string two =
      "POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: A.B\r\nContent-Length: 2\r\n\r\n{}"
      "GET /metrics HTTP/1.0\r\n\r\n";
  auto first = ag::read_http_request(two, 16);
  ASSERT_TRUE(first && *first);
  EXPECT_EQ((*first)->request.method, "POST");
  EXPECT_EQ((*first)->request.headers.at("x-amz-target"), "A.B");
  EXPECT_EQ((*first)->request.body, "{}");
  EXPECT_TRUE((*first)->keep_alive);
  auto second = ag::read_http_request(std::string_view(two).substr((*first)->consumed), 16);
  ASSERT_TRUE(second && *second);
  EXPECT_EQ((*second)->request.target, "/metrics");
  EXPECT_EQ((*second)->version, 10u);

  auto partial = ag::read_http_request(std::string_view(two).substr(0, 20), 16);
  ASSERT_TRUE(partial);
  EXPECT_FALSE(*partial);
  auto large = ag::read_http_request("POST / HTTP/1.1\r\nContent-Length: 17\r\n\r\n", 16);
  ASSERT_FALSE(large);
  EXPECT_TRUE(large.error().body_too_large);
  auto junk = ag::read_http_request("GET / HTTP/1.1\r\nbad header\r\n\r\n", 16);
  ASSERT_FALSE(junk);
  EXPECT_FALSE(junk.error().body_too_large);
  EXPECT_FALSE(junk.error().message.empty());
}

// The ECS agent's introspection statuses: PENDING before RUNNING, RUNNING until STOPPED (a task
// whose containers are stopping is still RUNNING to it), and no desired status that goes back.
TEST(IntrospectionTest, KnownStatusIsTheEcsAgentsView) {
  using nlohmann::json;
  berth::state::task t;
  t.ecs.task_arn = "arn:aws:ecs:us-east-1:000000000000:task/c/0123456789abcdef";
  t.ecs.containers.emplace();
  berth::ecs::task_definition td;
  td.family = "web";
  td.revision = 3;
  t.berth.task_definition = berth::state::placed_definition(td);
  auto known = [&](const char* last, const char* desired) {
    t.ecs.last_status = last;
    t.ecs.desired_status = desired;
    const json i = berth::agent::observe::introspect(t);
    return i["KnownStatus"].get<std::string>() + "/" + i.value("DesiredStatus", "-");
  };
  EXPECT_EQ(known("PROVISIONING", "RUNNING"), "PENDING/RUNNING");
  EXPECT_EQ(known("PENDING", "RUNNING"), "PENDING/RUNNING");
  EXPECT_EQ(known("RUNNING", "RUNNING"), "RUNNING/RUNNING");
  EXPECT_EQ(known("RUNNING", "STOPPED"), "RUNNING/STOPPED");
  EXPECT_EQ(known("DEPROVISIONING", "STOPPED"), "RUNNING/STOPPED");
  EXPECT_EQ(known("STOPPED", "STOPPED"), "STOPPED/STOPPED");
}

}  // namespace
