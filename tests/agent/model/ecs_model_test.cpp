#include "berth/ecs_model.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <vector>

namespace berth::ecs {
namespace {

using json = nlohmann::json;

const json register_task_definition_doc = json::parse(R"({
  "family": "web",
  "taskRoleArn": "arn:aws:iam::123456789012:role/web-task",
  "networkMode": "bridge",
  "requiresCompatibilities": ["EC2"],
  "cpu": "1024",
  "memory": "2048",
  "tags": [{"key": "team", "value": "payments"}],
  "volumes": [{"name": "scratch", "host": {"sourcePath": "/var/scratch"}}],
  "containerDefinitions": [
    {
      "name": "app",
      "image": "registry.local/web:1.4.2",
      "cpu": 512,
      "memory": 1024,
      "memoryReservation": 768,
      "essential": true,
      "command": ["serve", "--port", "8080"],
      "portMappings": [
        {"containerPort": 8080, "hostPort": 0, "protocol": "tcp", "name": "http"},
        {"containerPort": 9090, "hostPort": 9090, "protocol": "udp"}
      ],
      "environment": [{"name": "MODE", "value": "production"}, {"name": "LOG_LEVEL", "value": "info"}],
      "mountPoints": [{"sourceVolume": "scratch", "containerPath": "/scratch", "readOnly": false}],
      "healthCheck": {
        "command": ["CMD-SHELL", "wget -q -O- localhost:8080/health || exit 1"],
        "interval": 10, "timeout": 3, "retries": 3, "startPeriod": 15
      },
      "linuxParameters": {
        "capabilities": {"add": ["NET_ADMIN"], "drop": ["MKNOD"]},
        "initProcessEnabled": true,
        "sharedMemorySize": 64,
        "tmpfs": [{"containerPath": "/tmp", "size": 128, "mountOptions": ["noexec"]}]
      },
      "dependsOn": [{"containerName": "migrate", "condition": "SUCCESS"},
                    {"containerName": "sidecar", "condition": "START"}],
      "logConfiguration": {
        "logDriver": "json-file",
        "options": {"max-size": "10m", "max-file": "3"}
      },
      "ulimits": [{"name": "nofile", "softLimit": 65536, "hardLimit": 65536}],
      "dockerLabels": {"com.example.tier": "front"},
      "stopTimeout": 30
    },
    {
      "name": "migrate",
      "image": "registry.local/web:1.4.2",
      "memory": 256,
      "essential": false,
      "entryPoint": ["/bin/sh", "-c"],
      "command": ["./migrate up"]
    },
    {
      "name": "sidecar",
      "image": "registry.local/proxy:2",
      "memory": 128,
      "essential": true,
      "portMappings": [{"containerPort": 15000}],
      "ulimits": [{"name": "nproc", "softLimit": 1024, "hardLimit": 2048}],
      "logConfiguration": {"logDriver": "syslog"}
    }
  ]
})");

const json run_task_doc = json::parse(R"({
  "cluster": "prod",
  "taskDefinition": "web:7",
  "count": 3,
  "launchType": "EC2",
  "startedBy": "deployer",
  "group": "family:web",
  "enableECSManagedTags": true,
  "overrides": {
    "containerOverrides": [
      {"name": "app", "command": ["serve", "--debug"], "memory": 1536,
       "environment": [{"name": "MODE", "value": "canary"}]}
    ],
    "cpu": "2048"
  },
  "placementConstraints": [
    {"type": "distinctInstance"},
    {"type": "memberOf", "expression": "attribute:ecs.availability-zone in [eu-west-1a, eu-west-1b]"}
  ],
  "placementStrategy": [
    {"type": "spread", "field": "attribute:ecs.availability-zone"},
    {"type": "binpack", "field": "memory"}
  ],
  "tags": [{"key": "release", "value": "2026.12"}]
})");

const json task_doc = json::parse(R"({
  "taskArn": "arn:aws:ecs:eu-west-1:123456789012:task/prod/0f4c3e",
  "clusterArn": "arn:aws:ecs:eu-west-1:123456789012:cluster/prod",
  "taskDefinitionArn": "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:7",
  "containerInstanceArn": "arn:aws:ecs:eu-west-1:123456789012:container-instance/prod/i-01",
  "lastStatus": "RUNNING",
  "desiredStatus": "RUNNING",
  "launchType": "EC2",
  "cpu": "1024",
  "memory": "2048",
  "group": "family:web",
  "startedBy": "deployer",
  "version": 4,
  "createdAt": 1764600000.125,
  "pullStartedAt": 1764600001,
  "pullStoppedAt": 1764600002.5,
  "startedAt": 1764600003.75,
  "availabilityZone": "eu-west-1a",
  "attributes": [{"name": "ecs.cpu-architecture", "value": "x86_64"}],
  "overrides": {"containerOverrides": [{"name": "app"}]},
  "containers": [
    {
      "containerArn": "arn:aws:ecs:eu-west-1:123456789012:container/prod/0f4c3e/app",
      "taskArn": "arn:aws:ecs:eu-west-1:123456789012:task/prod/0f4c3e",
      "name": "app",
      "image": "registry.local/web:1.4.2",
      "runtimeId": "5d1e0c",
      "lastStatus": "RUNNING",
      "healthStatus": "HEALTHY",
      "memory": "1024",
      "networkBindings": [
        {"bindIP": "0.0.0.0", "containerPort": 8080, "hostPort": 32768, "protocol": "tcp"},
        {"bindIP": "::", "containerPort": 8080, "hostPort": 32768, "protocol": "tcp"}
      ]
    },
    {
      "containerArn": "arn:aws:ecs:eu-west-1:123456789012:container/prod/0f4c3e/migrate",
      "name": "migrate",
      "lastStatus": "STOPPED",
      "exitCode": 0,
      "reason": "done"
    }
  ],
  "tags": [{"key": "release", "value": "2026.12"}]
})");

const json service_doc = json::parse(R"({
  "serviceArn": "arn:aws:ecs:eu-west-1:123456789012:service/prod/web",
  "serviceName": "web",
  "clusterArn": "arn:aws:ecs:eu-west-1:123456789012:cluster/prod",
  "status": "ACTIVE",
  "desiredCount": 4,
  "runningCount": 3,
  "pendingCount": 1,
  "launchType": "EC2",
  "taskDefinition": "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:7",
  "schedulingStrategy": "REPLICA",
  "healthCheckGracePeriodSeconds": 30,
  "createdAt": 1764500000,
  "loadBalancers": [
    {"targetGroupArn": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/1",
     "containerName": "app", "containerPort": 8080}
  ],
  "deploymentConfiguration": {
    "deploymentCircuitBreaker": {"enable": true, "rollback": true},
    "maximumPercent": 200,
    "minimumHealthyPercent": 50
  },
  "deploymentController": {"type": "ECS"},
  "deployments": [
    {"id": "ecs-svc/2", "status": "PRIMARY", "taskDefinition": "web:7", "desiredCount": 4,
     "pendingCount": 1, "runningCount": 1, "failedTasks": 0, "createdAt": 1764600000,
     "updatedAt": 1764600050.5, "launchType": "EC2", "rolloutState": "IN_PROGRESS",
     "rolloutStateReason": "ECS deployment ecs-svc/2 in progress."},
    {"id": "ecs-svc/1", "status": "ACTIVE", "taskDefinition": "web:6", "desiredCount": 2,
     "pendingCount": 0, "runningCount": 2, "failedTasks": 1, "createdAt": 1764500000,
     "updatedAt": 1764600050.5, "rolloutState": "COMPLETED"}
  ],
  "events": [
    {"id": "e-2", "createdAt": 1764600050.5, "message": "(service web) has started 1 tasks: (task 0f4c3e)."},
    {"id": "e-1", "createdAt": 1764500100, "message": "(service web) has reached a steady state."}
  ],
  "placementConstraints": [{"type": "distinctInstance"}],
  "placementStrategy": [{"type": "spread", "field": "instanceId"}],
  "tags": [{"key": "team", "value": "payments"}],
  "enableECSManagedTags": false,
  "propagateTags": "SERVICE"
})");

const json container_instance_doc = json::parse(R"({
  "containerInstanceArn": "arn:aws:ecs:eu-west-1:123456789012:container-instance/prod/i-01",
  "ec2InstanceId": "i-01",
  "version": 42,
  "versionInfo": {"agentVersion": "0.8.0", "agentHash": "01364b6", "dockerVersion": "20.10.24"},
  "status": "ACTIVE",
  "agentConnected": true,
  "runningTasksCount": 3,
  "pendingTasksCount": 0,
  "registeredAt": 1764400000.5,
  "registeredResources": [
    {"name": "CPU", "type": "INTEGER", "integerValue": 4096},
    {"name": "MEMORY", "type": "INTEGER", "integerValue": 15800},
    {"name": "PORTS", "type": "STRINGSET", "stringSetValue": ["22", "2375", "2376", "51678"]}
  ],
  "remainingResources": [
    {"name": "CPU", "type": "INTEGER", "integerValue": 2048},
    {"name": "MEMORY", "type": "INTEGER", "integerValue": 11704},
    {"name": "PORTS", "type": "STRINGSET", "stringSetValue": ["22", "2375", "2376", "51678", "9090"]},
    {"name": "GPU", "type": "LONG", "longValue": 0},
    {"name": "WEIGHT", "type": "DOUBLE", "doubleValue": 0.75}
  ],
  "attributes": [
    {"name": "ecs.availability-zone", "value": "eu-west-1a"},
    {"name": "ecs.instance-type", "value": "m5.xlarge"},
    {"name": "stack", "value": "blue", "targetType": "container-instance", "targetId": "i-01"}
  ]
})");

const json cluster_doc = json::parse(R"({
  "clusterArn": "arn:aws:ecs:eu-west-1:123456789012:cluster/prod",
  "clusterName": "prod",
  "status": "ACTIVE",
  "registeredContainerInstancesCount": 3,
  "runningTasksCount": 11,
  "pendingTasksCount": 1,
  "activeServicesCount": 2,
  "statistics": [{"name": "runningEC2TasksCount", "value": "11"}],
  "tags": [{"key": "env", "value": "prod"}],
  "settings": [{"name": "containerInsights", "value": "disabled"}],
  "capacityProviders": [],
  "defaultCapacityProviderStrategy": [],
  "configuration": {
    "executeCommandConfiguration": {"logging": "DEFAULT"}
  }
})");

// The whole round trip, both ways, for one type and one document.
template <class T>
void expect_round_trip(const json& doc) {
  const decoded<T> x = decode<T>(doc);
  ASSERT_TRUE(x) << x.error().message;
  EXPECT_EQ(to_json(*x), doc);
  const decoded<T> again = decode<T>(to_json(*x));
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_EQ(*again, *x);
}

TEST(EcsModelTest, RegisterTaskDefinitionRoundTrips) {
  expect_round_trip<register_task_definition_request>(register_task_definition_doc);
  const auto r = decode<register_task_definition_request>(register_task_definition_doc);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->family, "web");
  ASSERT_EQ(r->container_definitions.size(), 3u);
  const container_definition& app = r->container_definitions[0];
  EXPECT_EQ(app.memory, 1024);
  EXPECT_EQ(app.port_mappings->at(1).host_port, 9090);
  EXPECT_EQ(app.health_check->command.at(0), "CMD-SHELL");
  EXPECT_EQ(app.health_check->start_period, 15);
  EXPECT_EQ(app.linux_parameters->capabilities->add->at(0), "NET_ADMIN");
  EXPECT_EQ(app.depends_on->at(0).condition, "SUCCESS");
  EXPECT_EQ(app.log_configuration->options->at("max-size"), "10m");
  EXPECT_EQ(app.ulimits->at(0).hard_limit, 65536);
  EXPECT_EQ(app.docker_labels->at("com.example.tier"), "front");
  EXPECT_FALSE(r->container_definitions[1].port_mappings.has_value());
}

TEST(EcsModelTest, RunTaskRequestRoundTrips) {
  expect_round_trip<run_task_request>(run_task_doc);
  const auto r = decode<run_task_request>(run_task_doc);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->enable_ecs_managed_tags, true);
  EXPECT_EQ(r->overrides->container_overrides->at(0).memory, 1536);
  EXPECT_EQ(r->placement_constraints->at(1).expression->substr(0, 9), "attribute");
  EXPECT_EQ(r->placement_strategy->at(1).type, "binpack");
}

TEST(EcsModelTest, TaskRoundTrips) {
  expect_round_trip<task>(task_doc);
  const auto t = decode<task>(task_doc);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->version, 4);
  EXPECT_DOUBLE_EQ(*t->created_at, 1764600000.125);
  EXPECT_DOUBLE_EQ(*t->pull_started_at, 1764600001.0);
  EXPECT_EQ(t->containers->at(0).network_bindings->at(1).bind_ip, "::");
  EXPECT_EQ(t->containers->at(1).exit_code, 0);
}

TEST(EcsModelTest, ServiceRoundTrips) {
  expect_round_trip<service>(service_doc);
  const auto s = decode<service>(service_doc);
  ASSERT_TRUE(s);
  EXPECT_TRUE(s->deployment_configuration->deployment_circuit_breaker->rollback);
  EXPECT_EQ(s->deployments->at(1).failed_tasks, 1);
  EXPECT_EQ(s->events->size(), 2u);
  EXPECT_EQ(s->load_balancers->at(0).container_port, 8080);
}

TEST(EcsModelTest, ContainerInstanceRoundTrips) {
  expect_round_trip<container_instance>(container_instance_doc);
  const auto ci = decode<container_instance>(container_instance_doc);
  ASSERT_TRUE(ci);
  EXPECT_EQ(ci->remaining_resources->at(1).integer_value, 11704);
  EXPECT_EQ(ci->remaining_resources->at(3).long_value, 0);
  EXPECT_EQ(ci->attributes->at(2).target_id, "i-01");
}

TEST(EcsModelTest, ClusterRoundTrips) {
  expect_round_trip<cluster>(cluster_doc);
  // The response that carries it, too: the records nest in the action's shapes.
  expect_round_trip<describe_clusters_response>(
      json{{"clusters", json::array({cluster_doc})},
           {"failures", json::array({{{"arn", "arn:x"}, {"reason", "MISSING"}}})}});
}

TEST(EcsModelTest, BuiltRecordsEncodeAsEcsWrites) {
  container_definition c;
  c.name = "app";
  c.memory = 512;
  c.port_mappings = std::vector<port_mapping>{{.container_port = 80, .protocol = "tcp"}};
  register_task_definition_request r;
  r.family = "web";
  r.container_definitions = {c};
  EXPECT_EQ(to_json(r), json::parse(R"({"family": "web", "containerDefinitions": [
    {"name": "app", "memory": 512, "portMappings": [{"containerPort": 80, "protocol": "tcp"}]}]})"));
  EXPECT_EQ(decode<register_task_definition_request>(to_json(r)), r);

  // A member named like a C++ keyword keeps its model name on the wire.
  const list_services_by_namespace_request by_ns{.namespace_ = "prod.local"};
  EXPECT_EQ(to_json(by_ns), json({{"namespace", "prod.local"}}));
}

TEST(EcsModelTest, WrongTypeNamesTheMemberPath) {
  json doc = register_task_definition_doc;
  doc["containerDefinitions"][2]["memory"] = "512";
  const auto r = decode<register_task_definition_request>(doc);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, decode_errc::wrong_type);
  EXPECT_EQ(r.error().path, "containerDefinitions[2].memory");
  EXPECT_EQ(r.error().message,
            "Expected 'containerDefinitions[2].memory' to be a whole number, got a string");

  doc = register_task_definition_doc;
  doc["containerDefinitions"][0]["logConfiguration"]["options"]["max-file"] = 3;
  EXPECT_EQ(decode<register_task_definition_request>(doc).error().path,
            "containerDefinitions[0].logConfiguration.options.max-file");

  doc = register_task_definition_doc;
  doc["containerDefinitions"][0]["cpu"] = 1.5;
  EXPECT_EQ(decode<register_task_definition_request>(doc).error().message,
            "Expected 'containerDefinitions[0].cpu' to be a whole number, got a number with a "
            "fraction");

  EXPECT_STREQ(json_type_name(json(1.5)), "a number with a fraction");
  EXPECT_STREQ(json_type_name(json(2)), "a number");

  const auto top = decode<cluster>(json::array());
  ASSERT_FALSE(top);
  EXPECT_EQ(top.error().path, "");
  EXPECT_EQ(top.error().message, "Expected the document to be an object, got a list");
}

// Visits every value below `j`, with its ECS-style path.
void each_value(const json& j, const std::string& path,
                const std::function<void(const std::string&, const json&)>& fn) {
  if (j.is_object()) {
    for (const auto& [k, v] : j.items()) {
      const std::string p = path.empty() ? k : path + "." + k;
      fn(p, v);
      each_value(v, p, fn);
    }
  } else if (j.is_array()) {
    for (std::size_t i = 0; i < j.size(); ++i) {
      const std::string p = path + "[" + std::to_string(i) + "]";
      fn(p, j[i]);
      each_value(j[i], p, fn);
    }
  }
}

// The pointer of an ECS-style path (a[2].b.c -> /a/2/b/c); no key here holds '.' or '[' except
// map keys, which the documents below keep plain.
json::json_pointer pointer_of(const std::string& path) {
  std::string p = "/";
  for (char c : path) {
    if (c == '.' || c == '[') {
      p += '/';
    } else if (c != ']') {
      p += c;
    }
  }
  return json::json_pointer(p.size() > 1 && p[1] == '/' ? p.substr(1) : p);
}

// Every member of every document, given a value of the wrong JSON type, is refused with its
// own path, and nothing throws: the readers check before they get.
template <class T>
void expect_every_member_checked(const json& doc) {
  int checked = 0;
  each_value(doc, "", [&](const std::string& path, const json& v) {
    json wrong = doc;
    // true fits only booleans; a string fits only strings: one of them is always wrong.
    wrong[pointer_of(path)] = v.is_boolean() ? json("x") : json(true);
    decoded<T> r = decode<T>(json{});
    EXPECT_NO_THROW(r = decode<T>(wrong)) << path;
    ASSERT_FALSE(r) << path;
    EXPECT_EQ(r.error().code, decode_errc::wrong_type) << path;
    EXPECT_EQ(r.error().path, path);
    ++checked;
  });
  EXPECT_GT(checked, 10);
}

TEST(EcsModelTest, EveryMemberOfEveryDocumentIsTypeChecked) {
  json doc = register_task_definition_doc;
  // Map keys with dots would make the paths ambiguous to pointer_of.
  doc["containerDefinitions"][0].erase("dockerLabels");
  expect_every_member_checked<register_task_definition_request>(doc);
  expect_every_member_checked<run_task_request>(run_task_doc);
  expect_every_member_checked<task>(task_doc);
  expect_every_member_checked<service>(service_doc);
  expect_every_member_checked<container_instance>(container_instance_doc);
  expect_every_member_checked<cluster>(cluster_doc);
}

TEST(EcsModelTest, NullReadsAsAbsent) {
  json doc = register_task_definition_doc;
  doc["taskRoleArn"] = nullptr;
  doc["containerDefinitions"][1]["memory"] = nullptr;
  doc["containerDefinitions"][0]["logConfiguration"]["options"]["max-file"] = nullptr;
  const auto r = decode<register_task_definition_request>(doc);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_FALSE(r->task_role_arn.has_value());
  EXPECT_FALSE(r->container_definitions[1].memory.has_value());
  EXPECT_EQ(r->container_definitions[0].log_configuration->options->count("max-file"), 0u);
  const json out = to_json(*r);
  EXPECT_FALSE(out.contains("taskRoleArn"));
  EXPECT_FALSE(out["containerDefinitions"][1].contains("memory"));

  // A required member that is null is missing.
  doc["family"] = nullptr;
  const auto missing = decode<register_task_definition_request>(doc);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, decode_errc::missing);
  EXPECT_EQ(missing.error().message, "'family' is required");
}

TEST(EcsModelTest, MissingRequiredMemberNamesItsPath) {
  json doc = register_task_definition_doc;
  doc["containerDefinitions"][2]["ulimits"][0].erase("hardLimit");
  const auto r = decode<register_task_definition_request>(doc);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, decode_errc::missing);
  EXPECT_EQ(r.error().path, "containerDefinitions[2].ulimits[0].hardLimit");
  EXPECT_EQ(r.error().message, "'containerDefinitions[2].ulimits[0].hardLimit' is required");
}

TEST(EcsModelTest, UnknownMembersAreIgnored) {
  json doc = run_task_doc;
  doc["berthExtension"] = {{"anything", 1}};
  doc["overrides"]["containerOverrides"][0]["futureMember"] = json::array({1, 2});
  const auto r = decode<run_task_request>(doc);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(to_json(*r), run_task_doc);
  EXPECT_EQ(find_action("RunTask")->normalize_request(doc), run_task_doc);
}

TEST(EcsModelTest, WholeNumbersOutsideTheirTypeAreRefused) {
  json doc = register_task_definition_doc;
  doc["containerDefinitions"][0]["memory"] = 2147483647;
  doc["containerDefinitions"][1]["memory"] = -2147483648LL;
  ASSERT_TRUE(decode<register_task_definition_request>(doc));

  doc["containerDefinitions"][0]["memory"] = 2147483648LL;
  auto r = decode<register_task_definition_request>(doc);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, decode_errc::out_of_range);
  EXPECT_EQ(r.error().message,
            "'containerDefinitions[0].memory' must be at most 2147483647 (a 32-bit integer), got "
            "2147483648");

  doc["containerDefinitions"][0]["memory"] = -2147483649LL;
  r = decode<register_task_definition_request>(doc);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message,
            "'containerDefinitions[0].memory' must be at least -2147483648 (a 32-bit integer), "
            "got -2147483649");

  doc["containerDefinitions"][0]["memory"] = 18446744073709551615ULL;
  EXPECT_EQ(decode<register_task_definition_request>(doc).error().code, decode_errc::out_of_range);

  json ci = container_instance_doc;
  ci["version"] = 9223372036854775807LL;
  ASSERT_TRUE(decode<container_instance>(ci));
  ci["version"] = 9223372036854775808ULL;
  const auto big = decode<container_instance>(ci);
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().message,
            "'version' must be at most 9223372036854775807 (a 64-bit integer), got "
            "9223372036854775808");
}

std::string model_text() {
  std::ifstream in(BERTH_ECS_MODEL);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(EcsModelTest, EveryActionOfTheModelHasARequestAndAResponse) {
  const std::string text = model_text();
  if (text.empty()) GTEST_SKIP() << "no ECS model at " << BERTH_ECS_MODEL;
  const json model = json::parse(text);
  const json& ops = model["operations"];
  // The model is an object; its order is the file's, which nlohmann sorts: compare as sets.
  ASSERT_EQ(actions().size(), ops.size());
  for (const auto& [name, op] : ops.items()) {
    const action* a = find_action(name);
    ASSERT_NE(a, nullptr) << name;
    EXPECT_EQ(a->request_shape, op["input"]["shape"].get<std::string>());
    EXPECT_EQ(a->response_shape, op["output"]["shape"].get<std::string>());
  }
  for (const action& a : actions()) {
    // {} is each request's smallest document: it decodes, or names a missing required member.
    for (auto normalize : {a.normalize_request, a.normalize_response}) {
      const auto r = normalize(json::object());
      if (!r) {
        EXPECT_EQ(r.error().code, decode_errc::missing) << a.name << ": " << r.error().message;
      }
      const auto refused = normalize(json::array());
      ASSERT_FALSE(refused) << a.name;
      EXPECT_EQ(refused.error().code, decode_errc::wrong_type) << a.name;
    }
  }
  EXPECT_EQ(find_action("NoSuchAction"), nullptr);
}

TEST(EcsModelTest, ActionTraitsPairRequestsWithResponses) {
  static_assert(action_traits<run_task_request>::name == "RunTask");
  static_assert(std::is_same_v<action_traits<run_task_request>::response, run_task_response>);
  static_assert(std::is_same_v<action_traits<describe_clusters_request>::response,
                               describe_clusters_response>);
  EXPECT_EQ(find_action("RegisterTaskDefinition")->request_shape, "RegisterTaskDefinitionRequest");
}

}  // namespace
}  // namespace berth::ecs
