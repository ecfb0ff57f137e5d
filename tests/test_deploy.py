"""
Tests for the Kubernetes manifests in C{deploy/}: that they are manifests,
that the gateway configuration the ConfigMap holds loads and serves with
the environment the Deployment gives it, and that the pieces agree with one
another (the mounted path, the ports, the Secret's keys, the drain, the
Services' selectors).
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

import yaml
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from aigateway.build import buildGateway
from aigateway.config import Config, loadConfig
from aigateway.state import storeFor
from aigateway.state.memory import MemoryBuckets
from aigateway.testing.fakellm import FakeLLM
from tests.lab import CHAT
from tests.processes import REPO

__all__ = [
    "ConfigMapTests", "DeploymentTests", "DockerfileTests", "ManifestTests", "RedisTests",
    "SchemaTests", "ServiceTests",
]

DEPLOY = os.path.join(REPO, "deploy")

# The oldest Kubernetes release the manifests are checked against: every
# field they use must exist there.
KUBERNETES_VERSION = "1.30"


def _documents() -> dict[str, list[dict[str, Any]]]:
    """
    Every YAML document of every manifest in C{deploy/}, by file name.
    """
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(glob.glob(os.path.join(DEPLOY, "*.yaml"))):
        with open(path) as f:
            found[os.path.basename(path)] = [d for d in yaml.safe_load_all(f) if d is not None]
    return found


def _one(kind: str, name: str) -> dict[str, Any]:
    """
    The only document of C{kind} called C{name}.
    """
    matches = [d for documents in _documents().values() for d in documents
               if d.get("kind") == kind and d.get("metadata", {}).get("name") == name]
    if len(matches) != 1:
        raise AssertionError(f"{len(matches)} {kind} called {name!r} in deploy/")
    return matches[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _gatewayContainer() -> dict[str, Any]:
    return _container(_one("Deployment", "aigateway"))


def _configMapText() -> str:
    return _one("ConfigMap", "aigateway")["data"]["gateway.yaml"]


def _config() -> Config:
    return loadConfig(_configMapText())


def _secretData() -> dict[str, str]:
    return _one("Secret", "aigateway")["stringData"]


def _environ(container: dict[str, Any]) -> dict[str, str]:
    """
    The environment Kubernetes gives C{container}: each variable from the
    example Secret's value for its key, or the pod's CPU request in whole
    cores for a C{resourceFieldRef}.
    """
    environ: dict[str, str] = {}
    secret = _secretData()
    for variable in container.get("env", []):
        if "value" in variable:
            environ[variable["name"]] = variable["value"]
            continue
        source = variable["valueFrom"]
        if "secretKeyRef" in source:
            reference = source["secretKeyRef"]
            if reference["name"] != "aigateway":
                raise AssertionError(f"{variable['name']} is read from an unknown Secret {reference['name']!r}")
            if reference["key"] not in secret:
                raise AssertionError(f"{variable['name']}: the Secret has no key {reference['key']!r}")
            environ[variable["name"]] = secret[reference["key"]]
        elif "resourceFieldRef" in source:
            field = source["resourceFieldRef"]
            kind, resource = field["resource"].split(".")
            if field.get("divisor") != "1" or resource != "cpu":
                raise AssertionError(f"{variable['name']}: not a count of cores")
            environ[variable["name"]] = str(_cores(container["resources"][kind]["cpu"]))
        else:
            raise AssertionError(f"{variable['name']}: unknown source {source!r}")
    return environ


def _cores(quantity: str) -> int:
    """
    A CPU quantity (C{"2"}, C{"1500m"}) in whole cores, rounded up, as the
    downward API gives it with divisor 1.
    """
    if quantity.endswith("m"):
        return -(-int(quantity[:-1]) // 1000)
    return -(-int(float(quantity) * 1000) // 1000)


def _expand(argument: str, environ: dict[str, str]) -> str:
    """
    An argument with its C{$(NAME)} references replaced, as the kubelet
    does.
    """
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: environ[m.group(1)], argument)


def _optionValue(command: list[str], *names: str) -> str:
    """
    The value that follows one of C{names} in C{command}.
    """
    for i, argument in enumerate(command):
        if argument in names:
            return command[i + 1]
    raise AssertionError(f"no {' or '.join(names)} in {command!r}")


def _tcpPort(description: str) -> int:
    """
    The port of a C{tcp:PORT[:options]} endpoint description.
    """
    kind, port = description.split(":")[:2]
    if kind != "tcp":
        raise AssertionError(f"not a tcp: endpoint: {description!r}")
    return int(port)


def _containerPort(container: dict[str, Any], port: int | str) -> int:
    """
    A probe's or Service's port (a number, or a port's name) as a number,
    which must be one of the container's ports.
    """
    for declared in container["ports"]:
        if port in (declared["containerPort"], declared.get("name")):
            return declared["containerPort"]
    raise AssertionError(f"the container has no port {port!r}")


def _dockerfileCommand() -> list[str]:
    with open(os.path.join(DEPLOY, "Dockerfile")) as f:
        (line,) = [line for line in f if line.startswith("CMD ")]
    return json.loads(line[len("CMD "):])


class ManifestTests(SynchronousTestCase):
    """
    C{deploy/} holds Kubernetes manifests, and the README says what each
    file is.
    """

    def test_everyDocumentNamed(self) -> None:
        """
        Every YAML document in C{deploy/} is an object with an
        C{apiVersion}, a C{kind} and a C{metadata.name}, and together they
        are the gateway, its configuration, Redis and the Secret.
        """
        kinds = []
        for name, documents in _documents().items():
            self.assertTrue(documents, f"{name} holds no document")
            for document in documents:
                self.assertIsInstance(document, dict, name)
                for field in ("apiVersion", "kind"):
                    self.assertIsInstance(document.get(field), str, f"{name}: {field}")
                self.assertIsInstance(document.get("metadata", {}).get("name"), str, f"{name}: metadata.name")
                kinds.append((document["kind"], document["metadata"]["name"]))
        self.assertEqual(sorted(kinds), [
            ("ConfigMap", "aigateway"), ("Deployment", "aigateway"), ("Deployment", "redis"),
            ("PodDisruptionBudget", "aigateway"), ("Secret", "aigateway"), ("Service", "aigateway"),
            ("Service", "redis"),
        ])

    def test_readmeNamesEveryFile(self) -> None:
        """
        C{deploy/README.md} says what each file beside it is.
        """
        with open(os.path.join(DEPLOY, "README.md")) as f:
            readme = f.read()
        for name in sorted(os.listdir(DEPLOY)):
            if name != "README.md":
                self.assertIn(f"`{name}`", readme)


class ConfigMapTests(SynchronousTestCase):
    """
    The configuration in the ConfigMap is one the gateway loads, builds and
    serves with the environment the Deployment gives it.
    """

    def test_loadsAndBuilds(self) -> None:
        """
        The ConfigMap's C{gateway.yaml} loads and builds, its Redis bucket
        store finds its password in the Deployment's environment, and a
        chat request to C{/openai} reaches the provider with the Secret's
        key, not the caller's.
        """
        config = _config()
        environ = _environ(_gatewayContainer())
        clock = MemoryReactorClock()
        store = storeFor(config.state, clock, environ)
        self.assertNotIsInstance(store, MemoryBuckets)
        provider = FakeLLM(clock, key=_secretData()["OPENAI_API_KEY"])
        upstream = RequestTraversalAgent(provider)
        client = StubTreq(buildGateway(config, upstream, clock, environ=environ).root)
        d = client.post("http://gw/openai", json.dumps(CHAT).encode(),
                        headers={"content-type": "application/json", "authorization": "Bearer caller"})
        for _ in range(5):
            upstream.flush()
            client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.successResultOf(response.json())["object"], "chat.completion")
        self.assertEqual(provider.requests[-1].headers["authorization"],
                         f"Bearer {_secretData()['OPENAI_API_KEY']}")

    def test_environmentNamesGiven(self) -> None:
        """
        Every environment variable the configuration reads (backend keys,
        the Redis password) is one the Deployment sets.
        """
        config = _config()
        wanted = {backend.authToken.ref for backend in config.backends.values()
                  if backend.authToken is not None and backend.authToken.kind == "env"}
        assert config.state.redis is not None and config.state.redis.passwordFrom is not None
        wanted.add(config.state.redis.passwordFrom.ref)
        self.assertEqual(wanted, {"OPENAI_API_KEY", "REDIS_PASSWORD"})
        self.assertLessEqual(wanted, set(_environ(_gatewayContainer())))

    def test_limitsShared(self) -> None:
        """
        The example's rate limits live in Redis, behind the Service called
        C{redis} on the port it serves: every worker of every replica
        shares them.
        """
        config = _config()
        self.assertTrue(any(route.rateLimits for route in config.routes))
        assert config.state.redis is not None
        service = _one("Service", config.state.redis.host)
        self.assertIn(config.state.redis.port, [p["port"] for p in service["spec"]["ports"]])


class DeploymentTests(SynchronousTestCase):
    """
    The gateway's Deployment runs the configuration it mounts, probes the
    admin listener and lets the drain finish.
    """

    def command(self) -> list[str]:
        container = _gatewayContainer()
        environ = _environ(container)
        return [_expand(a, environ) for a in container.get("command", []) + container["args"]]

    def test_configMountedAsDirectory(self) -> None:
        """
        The file the container's command reads is a key of the ConfigMap,
        mounted as a whole directory (no C{subPath}, which never updates),
        so the config's directory watch sees the C{..data} swap.
        """
        path = _optionValue(self.command(), "-c", "--config")
        directory, name = os.path.split(path)
        container = _gatewayContainer()
        volumes = {v["name"]: v for v in _one("Deployment", "aigateway")["spec"]["template"]["spec"]["volumes"]}
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
        self.assertNotIn("subPath", mount)
        self.assertNotIn("subPathExpr", mount)
        configMap = volumes[mount["name"]]["configMap"]
        self.assertEqual(configMap["name"], "aigateway")
        self.assertNotIn("items", configMap)
        self.assertIn(name, _one("ConfigMap", "aigateway")["data"])
        for other in container["volumeMounts"]:
            self.assertFalse(path.startswith(other["mountPath"].rstrip("/") + "/") and other is not mount,
                             f"{other['mountPath']} hides {path}")

    def test_probesOnAdminPort(self) -> None:
        """
        Liveness asks C{/healthz} and readiness C{/readyz}, on the port the
        configuration's admin listener opens, which is also the one
        Prometheus is told to scrape.
        """
        config = _config()
        assert config.admin is not None
        (admin,) = config.admin.listen
        self.assertIn("interface=0.0.0.0", admin)
        port = _tcpPort(admin)
        container = _gatewayContainer()
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = container[probe]["httpGet"]
            self.assertEqual((get["path"], _containerPort(container, get["port"])), (path, port))
        annotations = _one("Deployment", "aigateway")["spec"]["template"]["metadata"]["annotations"]
        self.assertEqual(annotations["prometheus.io/scrape"], "true")
        self.assertEqual(int(annotations["prometheus.io/port"]), port)
        self.assertEqual(annotations["prometheus.io/path"], "/metrics")

    def test_drainFits(self) -> None:
        """
        The grace period covers the C{preStop} pause and the whole
        C{shutdownTimeout} drain, so SIGKILL never cuts a request short.
        """
        spec = _one("Deployment", "aigateway")["spec"]["template"]["spec"]
        preStop = _gatewayContainer()["lifecycle"]["preStop"]["exec"]["command"]
        self.assertEqual(preStop[0], "sleep")
        self.assertEqual(spec["terminationGracePeriodSeconds"], 45)
        self.assertGreater(spec["terminationGracePeriodSeconds"], _config().shutdownTimeout + float(preStop[1]))

    def test_workersFollowCpu(self) -> None:
        """
        The gateway starts one worker per core the pod requests (2), and
        is otherwise the image's own command.
        """
        command = self.command()
        self.assertEqual(_optionValue(command, "--workers"), "2")
        self.assertEqual(_gatewayContainer()["resources"]["requests"]["cpu"], "2")
        image = _dockerfileCommand()
        self.assertEqual(_optionValue(image, "--workers"), "auto")
        self.assertEqual(command[:-1], image[:-1])

    def test_replicas(self) -> None:
        """
        Two replicas, rolled one at a time without losing one that serves.
        """
        spec = _one("Deployment", "aigateway")["spec"]
        self.assertEqual(spec["replicas"], 2)
        self.assertEqual(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0)


class DockerfileTests(SynchronousTestCase):
    """
    The image runs the gateway as the manifests expect.
    """

    def test_image(self) -> None:
        """
        The image installs the package from the repository's root, runs as
        a non-root user, exposes the gateway's and the admin's ports and
        reads the configuration where the Deployment mounts it.
        """
        with open(os.path.join(DEPLOY, "Dockerfile")) as f:
            text = f.read()
        self.assertIn("FROM python:3.11-slim", text)
        self.assertRegex(text, r"(?m)^RUN pip install /src")
        (user,) = re.findall(r"(?m)^USER (\S+)", text)
        self.assertNotIn(user.split(":")[0], ("0", "root"))
        self.assertEqual(user.split(":")[0], str(_one("Deployment", "aigateway")["spec"]["template"]["spec"]
                                                 ["securityContext"]["runAsUser"]))
        self.assertRegex(text, r"(?m)^EXPOSE 8080 9090$")
        self.assertEqual(_dockerfileCommand(),
                         ["twistd", "-n", "--pidfile=", "aigateway", "-c", "/etc/aigateway/gateway.yaml",
                          "--workers", "auto"])
        for source in re.findall(r"(?m)^COPY (.+) /src/", text):
            for name in source.split():
                self.assertTrue(os.path.exists(os.path.join(REPO, name)), name)


class ServiceTests(SynchronousTestCase):
    """
    Each Service and the disruption budget select their Deployment's pods,
    on ports those pods serve.
    """

    def test_selectorsMatchPods(self) -> None:
        """
        A Service's selector, a Deployment's selector and the budget's
        selector are all satisfied by the pod template's labels.
        """
        for name in ("aigateway", "redis"):
            deployment = _one("Deployment", name)
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            selectors = [
                _one("Service", name)["spec"]["selector"],
                deployment["spec"]["selector"]["matchLabels"],
            ]
            if name == "aigateway":
                selectors.append(_one("PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"])
            for selector in selectors:
                self.assertTrue(selector)
                self.assertLessEqual(selector.items(), labels.items(), name)

    def test_gatewayPort(self) -> None:
        """
        The gateway's Service sends its port 8080 to the port the
        configuration listens on, and does not expose the admin port.
        """
        config = _config()
        (listen,) = config.listen
        container = _gatewayContainer()
        (port,) = _one("Service", "aigateway")["spec"]["ports"]
        self.assertEqual(port["port"], 8080)
        self.assertEqual(_containerPort(container, port["targetPort"]), _tcpPort(listen))

    def test_redisPort(self) -> None:
        """
        The Redis Service sends its port to the one Redis serves.
        """
        (port,) = _one("Service", "redis")["spec"]["ports"]
        self.assertEqual(_containerPort(_container(_one("Deployment", "redis")), port["targetPort"]), 6379)


class RedisTests(SynchronousTestCase):
    """
    Redis asks for the password the gateway gives, and keeps nothing on
    disk.
    """

    def test_passwordAndNoPersistence(self) -> None:
        """
        Redis's C{requirepass} is the Secret's C{REDIS_PASSWORD}, the one
        the gateway's configuration reads, and RDB snapshots and the
        append-only file are off.
        """
        container = _container(_one("Deployment", "redis"))
        environ = _environ(container)
        args = [_expand(a, environ) for a in container["args"]]
        gatewayEnviron = _environ(_gatewayContainer())
        redis = _config().state.redis
        assert redis is not None and redis.passwordFrom is not None
        self.assertEqual(_optionValue(args, "--requirepass"), gatewayEnviron[redis.passwordFrom.ref])
        self.assertEqual(_optionValue(args, "--save"), "")
        self.assertEqual(_optionValue(args, "--appendonly"), "no")
        volumes = _one("Deployment", "redis")["spec"]["template"]["spec"]["volumes"]
        self.assertEqual([v for v in volumes if "persistentVolumeClaim" in v], [])


class SchemaTests(SynchronousTestCase):
    """
    The manifests are valid Kubernetes objects.
    """

    def test_validAgainstSchema(self) -> None:
        """
        Every document validates, unknown fields refused, against the
        Kubernetes API schema of the oldest release the manifests target.
        """
        try:
            import kubernetes_validate  # type: ignore[import-untyped]
        except ImportError:
            raise SkipTest("kubernetes-validate is not installed (pip install kubernetes-validate)")
        for name, documents in _documents().items():
            for document in documents:
                try:
                    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
                except kubernetes_validate.ValidationError as e:
                    self.fail(f"{name}: {document['kind']} {document['metadata']['name']}: {e.message}")
