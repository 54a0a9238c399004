#!/usr/bin/python3
"""berthd driven by boto3 (Debian's python3-boto3): the SDK's own serializers, parsers,
paginators and waiters against a berthd of this test's own, on real Docker.

Usage: boto3_test.py BERTHD"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import boto3
import botocore.exceptions
import botocore.session

BERTHD = sys.argv.pop(1)
IMAGE = "berth-test/busybox:v2"  # imported by the C++ tests' setup (docker_testing)
# botocore's current ECS model, which Berth is built from (Debian's botocore has 55 of its 77
# actions): a folder botocore loads models from.
MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../agent/model/botocore")


def eventually(pred, within=30.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)  # polling a condition, bounded by the deadline
    return pred()


def ensure_image():
    """The C++ tests' image, imported here too when this test runs alone."""
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0:
        return
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(f"{root}/bin")
        os.makedirs(f"{root}/tmp")
        subprocess.run(["cp", "/bin/busybox", f"{root}/bin/busybox"], check=True)
        for applet in ["sh", "sleep", "true", "echo", "cat"]:
            os.symlink("busybox", f"{root}/bin/{applet}")
        subprocess.run(f"tar -C {root} -c . | docker import - {IMAGE}", shell=True, check=True,
                       capture_output=True)


class Boto3Test(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        ensure_image()
        cls.dir = tempfile.mkdtemp(prefix="berth-boto3-")
        cls.cluster = f"boto3-{os.getpid()}"
        creds = os.path.join(cls.dir, "credentials")
        with open(creds, "w") as f:
            f.write("[default]\naws_access_key_id = AKIDBOTO\naws_secret_access_key = boto-secret\n")
        cls.log = open(os.path.join(cls.dir, "berthd.log"), "w+")
        cls.proc = subprocess.Popen(
            [BERTHD, f"--cluster={cls.cluster}", f"--state-dir={cls.dir}/state",
             f"--socket={cls.dir}/berth.sock", "--listen-tcp=127.0.0.1:0",
             f"--credentials={creds}", "--host-ip=127.0.0.1", "--config=/dev/null",
             "--stop-timeout=1s"],
            stdout=cls.log, stderr=subprocess.STDOUT)
        # Registered at once: it runs even when setUpClass fails below (tearDownClass would not).
        cls.addClassCleanup(cls.cleanup)
        endpoint = []

        def served():
            cls.log.seek(0)
            m = re.search(r"serving the ECS API on .* and (127\.0\.0\.1:\d+)", cls.log.read())
            if m:
                endpoint.append(m.group(1))
            return bool(m)

        assert eventually(served), "berthd did not start"
        cls.ecs = boto3.client("ecs", endpoint_url=f"http://{endpoint[0]}", region_name="us-east-1",
                               aws_access_key_id="AKIDBOTO", aws_secret_access_key="boto-secret")
        # The same SDK with the current model: the actions Debian's botocore does not know yet.
        session = botocore.session.get_session()
        session.get_component("data_loader").search_paths.insert(0, MODELS)
        cls.current = boto3.Session(botocore_session=session).client(
            "ecs", endpoint_url=f"http://{endpoint[0]}", region_name="us-east-1",
            aws_access_key_id="AKIDBOTO", aws_secret_access_key="boto-secret")

    @classmethod
    def cleanup(cls):
        cls.proc.send_signal(signal.SIGTERM)
        cls.proc.wait(timeout=30)
        cls.log.close()
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.berth.cluster={cls.cluster}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        if os.path.exists(f"/dev/shm/berth.{cls.cluster}"):
            os.remove(f"/dev/shm/berth.{cls.cluster}")
        subprocess.run(["rm", "-rf", cls.dir])

    def test_register_run_wait_stop(self):
        td = self.ecs.register_task_definition(
            family="boto", containerDefinitions=[{
                "name": "app", "image": IMAGE, "memory": 32, "essential": True,
                "command": ["sleep", "300"], "environment": [{"name": "A", "value": "1"}]}])
        self.assertEqual(td["taskDefinition"]["revision"], 1)
        run = self.ecs.run_task(cluster=self.cluster, taskDefinition="boto", count=2,
                                startedBy="boto3")
        self.assertEqual(len(run["tasks"]), 2, run["failures"])
        arns = [t["taskArn"] for t in run["tasks"]]
        self.ecs.get_waiter("tasks_running").wait(cluster=self.cluster, tasks=arns,
                                                 WaiterConfig={"Delay": 1, "MaxAttempts": 30})
        desc = self.ecs.describe_tasks(cluster=self.cluster, tasks=arns)
        self.assertEqual({t["lastStatus"] for t in desc["tasks"]}, {"RUNNING"})
        self.assertIsNotNone(desc["tasks"][0]["createdAt"].year)  # parsed as a timestamp
        pages = self.ecs.get_paginator("list_tasks").paginate(
            cluster=self.cluster, PaginationConfig={"PageSize": 1})
        listed = [a for p in pages for a in p["taskArns"]]
        self.assertEqual(sorted(listed), sorted(arns))
        for a in arns:
            self.ecs.stop_task(cluster=self.cluster, task=a, reason="boto3 done")
        self.ecs.get_waiter("tasks_stopped").wait(cluster=self.cluster, tasks=arns,
                                                 WaiterConfig={"Delay": 1, "MaxAttempts": 30})
        stopped = self.ecs.describe_tasks(cluster=self.cluster, tasks=arns)["tasks"]
        self.assertEqual({t["stoppedReason"] for t in stopped}, {"boto3 done"})

    def test_errors_are_typed(self):
        with self.assertRaises(self.ecs.exceptions.ClusterNotFoundException):
            self.ecs.list_tasks(cluster="no-such-cluster")
        with self.assertRaises(self.ecs.exceptions.ClientException):
            self.ecs.describe_task_definition(taskDefinition="no-such-family")
        with self.assertRaises(self.ecs.exceptions.InvalidParameterException):
            self.ecs.run_task(cluster=self.cluster, taskDefinition="boto", count=11)
        bad = boto3.client("ecs", endpoint_url=self.ecs.meta.endpoint_url, region_name="us-east-1",
                           aws_access_key_id="AKIDBOTO", aws_secret_access_key="wrong")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            bad.list_clusters()
        self.assertEqual(e.exception.response["Error"]["Code"], "InvalidSignatureException")

    def test_container_instances_and_clusters(self):
        arns = self.ecs.list_container_instances(cluster=self.cluster)["containerInstanceArns"]
        self.assertEqual(len(arns), 1)
        ci = self.ecs.describe_container_instances(cluster=self.cluster, containerInstances=arns)
        inst = ci["containerInstances"][0]
        cpu = next(r for r in inst["registeredResources"] if r["name"] == "CPU")
        self.assertEqual(cpu["integerValue"] % 1024, 0)
        self.assertGreater(cpu["integerValue"], 0)
        clusters = self.ecs.describe_clusters(clusters=[self.cluster])["clusters"]
        self.assertEqual(clusters[0]["registeredContainerInstancesCount"], 1)

    def test_the_current_models_actions(self):
        ecs = self.current
        self.assertEqual(len(ecs.meta.service_model.operation_names), 77)
        ecs.register_task_definition(family="boto-gone", containerDefinitions=[{
            "name": "app", "image": IMAGE, "memory": 32, "command": ["sleep", "300"]}])
        ecs.deregister_task_definition(taskDefinition="boto-gone:1")
        gone = ecs.delete_task_definitions(taskDefinitions=["boto-gone:1"])
        self.assertEqual(gone["taskDefinitions"][0]["status"], "DELETE_IN_PROGRESS")
        self.assertEqual(gone["failures"], [])
        with self.assertRaises(ecs.exceptions.ClientException):
            ecs.describe_task_definition(taskDefinition="boto-gone:1")
        # A daemon, on a capacity provider of the cluster.
        td = ecs.register_daemon_task_definition(family="boto-mon", containerDefinitions=[{
            "name": "mon", "image": IMAGE, "memory": 32, "command": ["sleep", "300"]}])
        ecs.put_cluster_capacity_providers(cluster=self.cluster, capacityProviders=["local"],
                                           defaultCapacityProviderStrategy=[])
        made = ecs.create_daemon(daemonName="boto-mon", clusterArn=self.cluster,
                                 daemonTaskDefinitionArn=td["daemonTaskDefinitionArn"],
                                 capacityProviderArns=["local"])
        self.assertEqual(made["status"], "ACTIVE")
        detail = ecs.describe_daemon(daemonArn=made["daemonArn"])["daemon"]
        self.assertEqual(detail["deploymentArn"], made["deploymentArn"])
        listed = ecs.list_daemons(clusterArn=self.cluster)["daemonSummariesList"]
        self.assertEqual([d["daemonArn"] for d in listed], [made["daemonArn"]])
        self.assertEqual(ecs.delete_daemon(daemonArn=made["daemonArn"])["status"],
                         "DELETE_IN_PROGRESS")
        with self.assertRaises(ecs.exceptions.DaemonNotFoundException):
            ecs.describe_daemon(daemonArn=made["daemonArn"].replace("boto-mon", "none"))
        # What Berth does not serve raises the SDK's typed exception, saying what to do instead.
        with self.assertRaises(ecs.exceptions.ServiceNotFoundException):
            ecs.list_service_deployments(cluster=self.cluster, service="none")
        with self.assertRaises(ecs.exceptions.UnsupportedFeatureException):
            ecs.continue_service_deployment(
                serviceDeploymentArn="arn:aws:ecs:us-east-1:000000000000:service-deployment/x/y/1",
                hookId="h")
        with self.assertRaises(ecs.exceptions.UnsupportedFeatureException):
            ecs.create_express_gateway_service(
                infrastructureRoleArn="arn:aws:iam::000000000000:role/x",
                primaryContainer={"image": IMAGE})


if __name__ == "__main__":
    unittest.main(verbosity=2)
