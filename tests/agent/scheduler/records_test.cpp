// Service records written by compare-and-swap, against the real SQLite store: the loop and the
// API actions never hold a lock across the store, so a writer that read an older revision must
// lose, and the events a record gains are published once, when it is written.
#include "records.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

namespace {

namespace fs = std::filesystem;
using berth::agent::json;
using namespace std::chrono_literals;

class RecordsTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        fs::temp_directory_path() / ("berth-records-" + std::to_string(::getpid()) + "-" +
                                     testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    auto st = berth::agent::open_sqlite_store(dir_.string());
    ASSERT_TRUE(st) << st.error().message;
    store_ = std::move(*st);
    recs_.emplace(cfg_, *store_, bus_);
    events_ = bus_.subscribe();
  }
  void TearDown() override {
    recs_.reset();
    store_.reset();
    fs::remove_all(dir_);
  }

  static json web() {
    return {{"serviceArn", "arn:aws:ecs:us-east-1:000000000000:service/default/web"},
            {"serviceName", "web"},
            {"clusterArn", "arn:aws:ecs:us-east-1:000000000000:cluster/default"},
            {"status", "ACTIVE"},
            {"events", json::array()}};
  }

  berth::agent::config cfg_;
  fs::path dir_;
  std::unique_ptr<berth::agent::store> store_;
  berth::agent::event_bus bus_;
  std::optional<berth::agent::sched::records> recs_;
  std::shared_ptr<berth::agent::event_bus::subscriber> events_;
};

TEST_F(RecordsTest, AWriterThatReadAnOlderRevisionLoses) {
  json s = web();
  auto w = recs_->commit(s);
  ASSERT_TRUE(w && *w);
  auto a = recs_->load("default", "web");
  auto b = recs_->load("default", "web");
  ASSERT_TRUE(a && b);
  (*a)["desiredCount"] = 2;
  auto first = recs_->commit(*a);
  ASSERT_TRUE(first && *first);
  (*b)["desiredCount"] = 5;
  auto second = recs_->commit(*b);
  ASSERT_TRUE(second);
  EXPECT_FALSE(*second) << "a stale copy overwrote a newer record";
  EXPECT_EQ((*recs_->load("default", "web"))["desiredCount"], 2);
  // Read again, it wins.
  auto fresh = recs_->load("default", "web");
  (*fresh)["desiredCount"] = 5;
  auto third = recs_->commit(*fresh);
  ASSERT_TRUE(third && *third);
  EXPECT_EQ((*recs_->load("default", "web"))["desiredCount"], 5);
}

TEST_F(RecordsTest, EventsArePublishedOnceTheRecordIsWritten) {
  json s = web();
  berth::agent::sched::records::event(s, "has started 1 tasks: (task a).");
  json stale = s;
  ASSERT_TRUE(*recs_->commit(s));
  auto e = events_->next(5s);
  ASSERT_TRUE(e);
  EXPECT_NE(e->find("(service web) has started 1 tasks: (task a)."), std::string::npos) << *e;
  // Written again without new events: nothing more is published.
  ASSERT_TRUE(*recs_->commit(s));
  // A writer that lost publishes nothing.
  berth::agent::sched::records::event(stale, "has reached a steady state.");
  ASSERT_FALSE(*recs_->commit(stale));
  berth::agent::sched::records::event(s, "has reached a steady state.");
  ASSERT_TRUE(*recs_->commit(s));
  auto next = events_->next(5s);
  ASSERT_TRUE(next);
  EXPECT_NE(next->find("has reached a steady state."), std::string::npos) << *next;
  EXPECT_FALSE(events_->next(0ms)) << "an event was published twice";
  EXPECT_EQ((*recs_->load("default", "web"))["events"].size(), 2u);
}

}  // namespace
