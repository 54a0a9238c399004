// The agent's parts on their own: configuration, the SQLite store, SigV4.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "berth/agent.hpp"
#include "sigv4.hpp"
#include "store.hpp"

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
  auto ok = ag::verify_sigv4(r, keys, now);
  ASSERT_TRUE(ok) << ok.error().type << ": " << ok.error().message;
  EXPECT_EQ(*ok, "AKIDEXAMPLE");

  auto tampered = r;
  tampered.target = "/?Action=DeleteUser&Version=2010-05-08";
  auto bad = ag::verify_sigv4(tampered, keys, now);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().type, "InvalidSignatureException");

  auto late = ag::verify_sigv4(r, keys, now + std::chrono::minutes(30));
  ASSERT_FALSE(late);
  EXPECT_NE(late.error().message.find("Signature expired"), std::string::npos);

  auto none = r;
  none.headers.erase("authorization");
  EXPECT_EQ(ag::verify_sigv4(none, keys, now).error().type, "MissingAuthenticationTokenException");
  auto stranger = r;
  stranger.headers["authorization"].replace(stranger.headers["authorization"].find("AKIDEXAMPLE"),
                                            11, "AKIDSTRANGE");
  EXPECT_EQ(ag::verify_sigv4(stranger, keys, now).error().type, "UnrecognizedClientException");
  auto partial = r;
  partial.headers["authorization"] =
      "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request";
  EXPECT_EQ(ag::verify_sigv4(partial, keys, now).error().type, "IncompleteSignatureException");
}

}  // namespace
