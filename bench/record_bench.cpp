// A task record's costs in a berthd that follows the cluster's tasks: every record another agent
// writes is parsed (Record/parse) and its row published to readers as a copy (Record/copy).
// The record is one berth-hollow ran in bench/cluster_scale.py (2,120 bytes).
//
// Record/parse/* read it as parse<task> does, straight from the text (task_record_text.cpp);
// Record/parse/document reads it through the JSON document, as parse<task> did before and does
// for what the text reader leaves: the baseline, in the same process.
//
// Record/parse/shared reads the record again and again: its task definition is the one decoded
// before (task_record.hpp's placed_definition). Record/parse/fresh gives each read a task
// definition of its own (another ARN), as before they were shared: the baseline, in the same
// process. Record/copy/deep copies the definition too, as every copy did before. Record/parse/json
// is the JSON text to a document alone, before any record is decoded from it.
#include <benchmark/benchmark.h>

#include <stdexcept>
#include <string>
#include <utility>

#include "task_record.hpp"

namespace {

namespace st = berth::state;

const char* const sample =
    R"({"_berth":{"attributes":[29524,4096,0,0,0,0,0,0],"docker":{"app":"00003be100000000000000000000000000000000000000000000000000000058"},"events":[],"images":{"app":"sha256:613128687688195209"},"need":{"cpu":128,"dynamic":0,"mib":256,"ports":[]},"pids":{"app":0},"taskDefinition":{"compatibilities":["EC2"],"containerDefinitions":[{"cpu":128,"environment":[{"name":"REVISION","value":"1"}],"essential":true,"image":"berth-hollow/app:1","memoryReservation":256,"mountPoints":[],"name":"app","portMappings":[],"volumesFrom":[]}],"family":"scale","networkMode":"bridge","placementConstraints":[],"registeredAt":1796359166.049,"registeredBy":"berth","requiresAttributes":[],"revision":1,"status":"ACTIVE","taskDefinitionArn":"arn:aws:ecs:us-east-1:000000000000:task-definition/scale:1","volumes":[]}},"attachments":[],"availabilityZone":"us-east-1c","clusterArn":"arn:aws:ecs:us-east-1:000000000000:cluster/scale15194","connectivity":"CONNECTED","connectivityAt":1796359166.363,"containerInstanceArn":"arn:aws:ecs:us-east-1:000000000000:container-instance/scale15194/00000029b01100000000000000000000","containers":[{"containerArn":"arn:aws:ecs:us-east-1:000000000000:container/scale15194/0114591ab56f52dc66e874e7ae7a0e9d/cc18baac2ba65c5078482ac1b11d4803","cpu":"128","healthStatus":"UNKNOWN","image":"berth-hollow/app:1","lastStatus":"RUNNING","memoryReservation":"256","name":"app","networkBindings":[],"networkInterfaces":[],"runtimeId":"00003be100000000000000000000000000000000000000000000000000000058","taskArn":"arn:aws:ecs:us-east-1:000000000000:task/scale15194/0114591ab56f52dc66e874e7ae7a0e9d"}],"cpu":"128","createdAt":1796359166.186,"desiredStatus":"RUNNING","enableExecuteCommand":false,"group":"distinct-1-2","healthStatus":"UNKNOWN","lastStatus":"RUNNING","launchType":"EC2","memory":"256","overrides":{"containerOverrides":[]},"pullStartedAt":1796359166.26,"pullStoppedAt":1796359166.363,"startedAt":1796359166.363,"tags":[],"taskArn":"arn:aws:ecs:us-east-1:000000000000:task/scale15194/0114591ab56f52dc66e874e7ae7a0e9d","taskDefinitionArn":"arn:aws:ecs:us-east-1:000000000000:task-definition/scale:1","version":2})";

// The sample read once (its task definition shared with every other read of it): as in a
// follower, which holds the other records placed with the definition, the reads below find it
// decoded.
const st::task& sample_record() {
  static const st::task t = [] {
    auto r = st::parse<st::task>(sample, "bench/1");
    if (!r) throw std::runtime_error(r.error().detail);
    return std::move(*r);
  }();
  return t;
}

// `fresh`: the definition's ARN differs at each read ("scale:1" -> "scale:<n>", padded to one
// length), so that no read finds it decoded before.
void BM_parse(benchmark::State& state, bool fresh) {
  sample_record();
  std::string text = sample;
  const std::string mark = "task-definition/scale:1\",\"volumes\"";
  const std::size_t at = text.find(mark) + std::string("task-definition/scale:").size();
  if (fresh) text.replace(at, 1, "000000000");
  std::uint64_t n = 0;
  for (auto _ : state) {
    if (fresh) {
      const std::string digits = std::to_string(++n);
      text.replace(at + 9 - digits.size(), digits.size(), digits);
    }
    auto t = st::parse<st::task>(text, "bench/1");
    if (!t) state.SkipWithError("not parsed");
    benchmark::DoNotOptimize(t);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK_CAPTURE(BM_parse, shared, false)->Name("Record/parse/shared");
BENCHMARK_CAPTURE(BM_parse, fresh, true)->Name("Record/parse/fresh");

void BM_parse_document(benchmark::State& state) {
  sample_record();
  const std::string text = sample;
  for (auto _ : state) {
    auto t = st::detail::read_record_document(text, "bench/1");
    if (!t) state.SkipWithError("not parsed");
    benchmark::DoNotOptimize(t);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_parse_document)->Name("Record/parse/document");

// The JSON text to a document alone: what the parse costs before any record is decoded.
void BM_parse_json(benchmark::State& state) {
  const std::string text = sample;
  for (auto _ : state) {
    auto j = nlohmann::json::parse(text, nullptr, false);
    benchmark::DoNotOptimize(j);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_parse_json)->Name("Record/parse/json");

// `deep`: the copy as it was before the definition was shared, the definition copied too.
void BM_copy(benchmark::State& state, bool deep) {
  const st::task& t = sample_record();
  for (auto _ : state) {
    st::task copy = t;
    if (deep) copy.berth.task_definition = st::placed_definition(*t.berth.task_definition);
    benchmark::DoNotOptimize(copy);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK_CAPTURE(BM_copy, shared, false)->Name("Record/copy");
BENCHMARK_CAPTURE(BM_copy, deep, true)->Name("Record/copy/deep");

void BM_write(benchmark::State& state) {
  const st::task& t = sample_record();
  for (auto _ : state) {
    std::string text = st::to_json(t).dump();
    benchmark::DoNotOptimize(text);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_write)->Name("Record/write");

}  // namespace
