// fleet: the ledger row of an instance shows what this agent placed there and has not seen in
// the instance's capacity document yet (a hold), whatever document events arrive meanwhile (a
// peer's claim); a committed hold is let go once the document at its revision arrives, and an
// undone one at once. Over a real SQLite store and ledger.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "capacity.hpp"
#include "fleet.hpp"
#include "task_table.hpp"
#include "temp_dir.hpp"

namespace berth::agent::control {
namespace {

using namespace std::chrono_literals;

constexpr const char* id = "0123456789abcdef0123456789abcdef";

class FleetHoldsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cfg_.cluster = "holds" + std::to_string(::getpid());
    auto s = open_sqlite_store(dir_.path.string());
    ASSERT_TRUE(s) << s.error().message;
    store_ = std::move(*s);
    auto l = ipc::ledger::open_or_create({cfg_.cluster});
    ASSERT_TRUE(l);
    ledger_.emplace(std::move(*l));
    table_.emplace(*store_);

    state::container_instance ci;
    ci.container_instance_arn =
        "arn:aws:ecs:us-east-1:000000000000:container-instance/" + cfg_.cluster + "/" + id;
    ci.ec2_instance_id = "i-0123456789abcdef0";
    ci.status = "ACTIVE";
    ci.registered_cpu = 4096;
    ci.registered_mib = 8192;
    ASSERT_TRUE(store_->transaction([&](store& tx) -> result<void> {
      return tx.put("instance", record_key(cfg_.cluster, id), state::to_json(ci).dump());
    }));
    ASSERT_TRUE(write_capacity(4096));
    fleet_.emplace(cfg_, *store_, *ledger_, *table_);
    ASSERT_TRUE(fleet_->open());
    const auto m = fleet_->find(id);
    ASSERT_TRUE(m);
    slot_ = m->slot;
  }
  void TearDown() override {
    fleet_.reset();
    ledger_.reset();
    (void)ipc::ledger::remove(cfg_.cluster);
  }

  // The instance's capacity document with `cpu` free (memory as registered): its revision.
  result<std::int64_t> write_capacity(std::int64_t cpu) {
    capacity c;
    c.cpu = cpu;
    c.mib = 8192;
    c.dynamic = dynamic_port_count;
    return store_->transaction([&](store& tx) -> result<void> {
      return tx.put("instance", capacity_key(cfg_.cluster, id), c.dump());
    });
  }
  std::uint32_t free_cpu() const {
    auto r = ledger_->read(slot_);
    return r ? r->free.cpu : 0;
  }
  // Whether the row shows `cpu` free within 10 s.
  bool row_shows(std::uint32_t cpu) const {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (free_cpu() != cpu) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::yield();  // the ledger is shared memory: nothing to wait on
    }
    return true;
  }
  // A placement of `cpu` on the instance: its ledger reservation and its hold.
  void place(const std::string& task, std::uint32_t cpu) {
    ASSERT_TRUE(ledger_->reserve(slot_, ipc::demand{{cpu, 0, 0, 0}, {}}));
    state::task_need n;
    n.cpu = cpu;
    fleet_->hold(id, task, n);
  }

  config cfg_;
  testing::temp_dir dir_;
  std::unique_ptr<store> store_;
  std::optional<ipc::ledger> ledger_;
  std::optional<state::task_table> table_;
  std::optional<fleet> fleet_;
  std::uint32_t slot_ = 0;
};

TEST_F(FleetHoldsTest, APeersClaimDoesNotEraseAPlacementInFlight) {
  ASSERT_TRUE(row_shows(4096));
  place("t1", 1000);
  EXPECT_EQ(free_cpu(), 3096u);
  // A peer claims 500: the document says 3596, the row 3596 less the placement in flight.
  ASSERT_TRUE(write_capacity(3596));
  EXPECT_TRUE(row_shows(2596)) << free_cpu();
  // The claim commits (the document has it from then on) and a peer gives 500 back: the row
  // is the document, the hold no longer taken off it.
  auto rev = write_capacity(2596);
  ASSERT_TRUE(rev);
  fleet_->committed(id, "t1", *rev);
  ASSERT_TRUE(write_capacity(3096));
  EXPECT_TRUE(row_shows(3096)) << free_cpu();
}

TEST_F(FleetHoldsTest, ACommitAnsweredAfterItsDocumentArrivedLetsTheHoldGo) {
  ASSERT_TRUE(row_shows(4096));
  place("t1", 1000);
  // The watch brings the claim's document before the commit's answer: held twice for now.
  auto rev = write_capacity(3096);
  ASSERT_TRUE(rev);
  EXPECT_TRUE(row_shows(2096)) << free_cpu();
  fleet_->committed(id, "t1", *rev);
  EXPECT_EQ(free_cpu(), 3096u);
}

TEST_F(FleetHoldsTest, AnUndonePlacementIsNoLongerHeld) {
  ASSERT_TRUE(row_shows(4096));
  place("t1", 1000);
  place("t2", 200);
  // t1 refused: its reservation given back and its hold let go; t2 stays held.
  ASSERT_TRUE(ledger_->release(slot_, ipc::demand{{1000, 0, 0, 0}, {}}));
  fleet_->unhold(id, "t1");
  ASSERT_TRUE(write_capacity(4000));
  EXPECT_TRUE(row_shows(3800)) << free_cpu();
  // What a refused claim read: the row is it, less t2.
  capacity seen;
  seen.cpu = 3900;
  seen.mib = 8192;
  seen.dynamic = dynamic_port_count;
  fleet_->saw_capacity(id, seen);
  EXPECT_EQ(free_cpu(), 3700u);
}

}  // namespace
}  // namespace berth::agent::control
